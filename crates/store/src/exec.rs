//! One way to run a statement, so the code both backends share is written once as ordinary
//! generic functions rather than once per database driver.
//!
//! - [`Arg`]: a bound parameter (the store binds only text and integers, either nullable).
//! - [`Cols`]: the columns of one result row, read by index; the row decoders (`rows.rs`,
//!   `search.rs`) take a `&dyn Cols`, so they are the same for every driver.
//! - [`Exec`]: runs one statement on one connection and decodes its rows. Each backend
//!   implements it for its connection type; the shared reads, writer statements, custody,
//!   retention, outbox and migration steps are generic over it.
//!
//! The statements given to [`Exec`] are already in the backend's dialect (see
//! `Dialect::params`); an implementation caches their prepared form per connection.

use std::future::Future;

use crate::rows::db;
use crate::search::Dialect;
use crate::{Result, StoreError};

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::OptText(v)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::OptText(v.as_deref())
    }
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}

impl<'a> From<&'a crate::search::Arg> for Arg<'a> {
    fn from(v: &'a crate::search::Arg) -> Self {
        match v {
            crate::search::Arg::Text(t) => Arg::Text(t),
            crate::search::Arg::Int(i) => Arg::Int(*i),
        }
    }
}

/// `args![a, b, c]`: a parameter array, each converted with `Arg::from`.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        [$($crate::exec::Arg::from($arg)),*]
    };
}
pub(crate) use args;

/// The columns of one result row, by index. A NULL read as a non-optional value, or a value
/// of another type, is an error (the schema and the statement disagree).
pub(crate) trait Cols {
    fn text(&self, index: usize) -> Result<String>;
    fn opt_text(&self, index: usize) -> Result<Option<String>>;
    fn int(&self, index: usize) -> Result<i64>;
    fn opt_int(&self, index: usize) -> Result<Option<i64>>;
}

/// A connection the shared store code runs statements on (see the module docs).
///
/// The futures are `Send` so that generic code over any `Exec` can run inside the backends'
/// tasks; an implementation that never waits (a connection owned by the current thread)
/// returns futures that complete on their first poll.
pub(crate) trait Exec: Send {
    /// The SQL dialect of this connection's database.
    const DIALECT: Dialect;

    /// Runs `sql` and decodes every row it returns with `decode`, in order.
    fn rows<'a, T, F>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
        decode: F,
    ) -> impl Future<Output = Result<Vec<T>>> + Send + 'a
    where
        T: Send + 'a,
        F: FnMut(&dyn Cols) -> Result<T> + Send + 'a;

    /// Runs `sql` for its effect; the number of rows it changed.
    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> impl Future<Output = Result<u64>> + Send + 'a;

    /// The first row `sql` returns, if any.
    fn optional<'a, T, F>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
        decode: F,
    ) -> impl Future<Output = Result<Option<T>>> + Send + 'a
    where
        Self: Sized,
        T: Send + 'a,
        F: FnMut(&dyn Cols) -> Result<T> + Send + 'a,
    {
        async move { Ok(self.rows(sql, args, decode).await?.into_iter().next()) }
    }

    /// The first row `sql` returns; an error when it returns none.
    fn one<'a, T, F>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
        decode: F,
    ) -> impl Future<Output = Result<T>> + Send + 'a
    where
        Self: Sized,
        T: Send + 'a,
        F: FnMut(&dyn Cols) -> Result<T> + Send + 'a,
    {
        async move {
            self.optional(sql, args, decode)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("no row returned by: {sql}")))
        }
    }
}

// PostgreSQL's connection (sqlx). SQLite's is `sqlite::conn::Conn` (rusqlite).
impl Cols for sqlx::postgres::PgRow {
    fn text(&self, index: usize) -> Result<String> {
        sqlx::Row::try_get(self, index).map_err(db)
    }
    fn opt_text(&self, index: usize) -> Result<Option<String>> {
        sqlx::Row::try_get(self, index).map_err(db)
    }
    fn int(&self, index: usize) -> Result<i64> {
        sqlx::Row::try_get(self, index).map_err(db)
    }
    fn opt_int(&self, index: usize) -> Result<Option<i64>> {
        sqlx::Row::try_get(self, index).map_err(db)
    }
}

/// `args` bound to `sql`, in order.
fn pg_query<'a>(
    sql: &'a str,
    args: &'a [Arg<'a>],
) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
    args.iter().fold(sqlx::query(sql), |q, a| match *a {
        Arg::Text(v) => q.bind(v),
        Arg::OptText(v) => q.bind(v),
        Arg::Int(v) => q.bind(v),
        Arg::OptInt(v) => q.bind(v),
    })
}

impl Exec for sqlx::PgConnection {
    const DIALECT: Dialect = Dialect::Postgres;

    async fn rows<'a, T, F>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
        mut decode: F,
    ) -> Result<Vec<T>>
    where
        T: Send + 'a,
        F: FnMut(&dyn Cols) -> Result<T> + Send + 'a,
    {
        let rows = pg_query(sql, args)
            .fetch_all(&mut *self)
            .await
            .map_err(db)?;
        rows.iter().map(|row| decode(row)).collect()
    }

    async fn execute<'a>(&'a mut self, sql: &'a str, args: &'a [Arg<'a>]) -> Result<u64> {
        let done = pg_query(sql, args).execute(&mut *self).await.map_err(db)?;
        Ok(done.rows_affected())
    }
}

impl crate::migrate::Script for sqlx::PgConnection {
    async fn script(&mut self, sql: &str) -> Result<()> {
        sqlx::Executor::execute(&mut *self, sqlx::raw_sql(sql))
            .await
            .map_err(db)?;
        Ok(())
    }
}
