//! SQLite connections driven by rusqlite on threads the store owns.
//!
//! - [`Conn`]: one rusqlite connection with its prepared-statement cache; implements the
//!   shared [`Exec`], so the store code written once for both backends runs on it. Its
//!   futures never wait: a statement runs on the calling thread, which is always one of the
//!   store's own threads (the writer, a reader, the checkpointer).
//! - [`block_on`]: runs a future to completion on the current thread. The store's threads use
//!   it to drive the shared async code, and the writer to wait for its command channel.
//! - [`Location`]: where a `sqlite:` URL points, and how to open it.
//!
//! Why not sqlx: its SQLite driver runs each connection on a worker thread of its own and
//! hands every statement over a channel, so a write group or a two-statement read crossed
//! threads twice per statement. Here a whole write group, or a whole read, is one hand-off.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{OpenFlags, ToSql};

use crate::exec::{Arg, Cols, Exec};
use crate::search::Dialect;
use crate::{Result, StoreError};

/// Prepared statements kept per connection: the writer's multi-row INSERT variants and every
/// other statement the store runs fit, so none is ever re-prepared.
const STATEMENT_CACHE: usize = 256;

/// Maps a rusqlite error to a store error. Every SQLite error is the database's answer about
/// a statement (a full disk and an I/O error included), as with the sqlx driver before.
pub(super) fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(Box::new(e))
}

/// Where a `sqlite:` URL points.
#[derive(Debug, Clone)]
pub(super) enum Location {
    File(PathBuf),
    /// An in-memory database shared by the store's connections under this URI name.
    Memory(String),
}

impl Location {
    /// Parses `sqlite://path`, `sqlite:path`, `sqlite:///abs/path` and `sqlite::memory:`
    /// (also `?mode=memory`). Other query parameters are refused rather than ignored, so a
    /// setting the store does not apply is never silently dropped.
    pub(super) fn parse(url: &str) -> Result<Location> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::InvalidUrl("expected a sqlite: URL".to_owned()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut memory = path == ":memory:";
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair {
                "mode=memory" => memory = true,
                // What opening with create-if-missing does anyway.
                "mode=rwc" => {}
                other => {
                    return Err(StoreError::InvalidUrl(format!(
                        "unsupported sqlite URL parameter {:?} (supported: mode=memory, mode=rwc)",
                        other.split('=').next().unwrap_or_default()
                    )));
                }
            }
        }
        if memory {
            // Each store gets its own database, as two `sqlite::memory:` stores in one
            // process (tests) must not see each other's jobs.
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let pid = std::process::id();
            return Ok(Location::Memory(format!(
                "file:adgate-memory-{pid}-{n}?mode=memory&cache=shared"
            )));
        }
        if path.is_empty() {
            return Err(StoreError::InvalidUrl(
                "the sqlite URL names no file".to_owned(),
            ));
        }
        Ok(Location::File(PathBuf::from(path)))
    }

    pub(super) fn in_memory(&self) -> bool {
        matches!(self, Location::Memory(_))
    }

    /// Opens a connection: created if missing, with foreign keys on and `busy` as the wait
    /// for a lock another process holds.
    pub(super) fn open(&self, busy: Duration) -> Result<Conn> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match self {
            Location::File(path) => rusqlite::Connection::open_with_flags(path, flags),
            Location::Memory(uri) => rusqlite::Connection::open_with_flags(
                uri,
                flags | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_SHARED_CACHE,
            ),
        }
        .map_err(db)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.busy_timeout(busy).map_err(db)?;
        let conn = Conn(conn);
        conn.pragma("foreign_keys", "ON")?;
        Ok(conn)
    }
}

/// One rusqlite connection (see the module docs).
pub(super) struct Conn(rusqlite::Connection);

impl Conn {
    /// Sets a pragma; its answer, if any, is ignored.
    pub(super) fn pragma(&self, name: &str, value: &str) -> Result<()> {
        // Some pragmas (journal_mode) answer with a row, which `execute` refuses; run them
        // as queries and drop the answer.
        let sql = format!("PRAGMA {name} = {value}");
        let mut stmt = self.0.prepare(&sql).map_err(db)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while rows.next().map_err(db)?.is_some() {}
        Ok(())
    }

    /// Closes the connection (the last one to close a WAL database checkpoints it).
    pub(super) fn close(self) -> Result<()> {
        self.0.close().map_err(|(_, e)| db(e))
    }

    fn bound<'c>(&'c self, sql: &str, args: &[Arg<'_>]) -> Result<rusqlite::CachedStatement<'c>> {
        let mut stmt = self.0.prepare_cached(sql).map_err(db)?;
        for (i, arg) in args.iter().enumerate() {
            let value: &dyn ToSql = match arg {
                Arg::Text(v) => v,
                Arg::OptText(v) => v,
                Arg::Int(v) => v,
                Arg::OptInt(v) => v,
            };
            stmt.raw_bind_parameter(i + 1, value).map_err(db)?;
        }
        Ok(stmt)
    }

    fn rows_now<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        mut decode: impl FnMut(&dyn Cols) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.bound(sql, args)?;
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(db)? {
            out.push(decode(&SqliteRow(row))?);
        }
        Ok(out)
    }

    fn execute_now(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64> {
        let mut stmt = self.bound(sql, args)?;
        // Stepped to the end rather than `raw_execute`d, which refuses statements that return
        // rows: some pragmas answer with one, and `RETURNING` may be there for other callers.
        let mut rows = stmt.raw_query();
        while rows.next().map_err(db)?.is_some() {}
        drop(rows);
        Ok(self.0.changes())
    }
}

impl Exec for Conn {
    const DIALECT: Dialect = Dialect::Sqlite;

    fn rows<'a, T, F>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
        decode: F,
    ) -> impl Future<Output = Result<Vec<T>>> + Send + 'a
    where
        T: Send + 'a,
        F: FnMut(&dyn Cols) -> Result<T> + Send + 'a,
    {
        std::future::ready(self.rows_now(sql, args, decode))
    }

    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Arg<'a>],
    ) -> impl Future<Output = Result<u64>> + Send + 'a {
        std::future::ready(self.execute_now(sql, args))
    }
}

impl crate::migrate::Script for Conn {
    fn script<'a>(&'a mut self, sql: &'a str) -> impl Future<Output = Result<()>> + Send + 'a {
        std::future::ready(self.0.execute_batch(sql).map_err(db))
    }
}

/// A result row, read through [`Cols`].
struct SqliteRow<'r, 's>(&'r rusqlite::Row<'s>);

impl SqliteRow<'_, '_> {
    fn value(&self, index: usize) -> Result<ValueRef<'_>> {
        self.0.get_ref(index).map_err(db)
    }
}

fn mismatch(index: usize, wanted: &str, found: ValueRef<'_>) -> StoreError {
    StoreError::Corrupt(format!(
        "column {index}: expected {wanted}, found {:?}",
        found.data_type()
    ))
}

impl Cols for SqliteRow<'_, '_> {
    fn text(&self, index: usize) -> Result<String> {
        self.opt_text(index)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {index}: unexpected NULL")))
    }

    fn opt_text(&self, index: usize) -> Result<Option<String>> {
        match self.value(index)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("column {index}: text is not UTF-8"))),
            other => Err(mismatch(index, "text", other)),
        }
    }

    fn int(&self, index: usize) -> Result<i64> {
        self.opt_int(index)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {index}: unexpected NULL")))
    }

    fn opt_int(&self, index: usize) -> Result<Option<i64>> {
        match self.value(index)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(v) => Ok(Some(v)),
            other => Err(mismatch(index, "integer", other)),
        }
    }
}

/// Runs `future` to completion on the current thread, parking it while the future waits.
pub(super) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        // A wake between the poll and here leaves the token set, so this returns at once.
        std::thread::park();
    }
}
