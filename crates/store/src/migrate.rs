//! The migration runner, written once for both backends ([`apply_pending`]). Each backend
//! keeps its embedded list of migrations and what makes applying them exclusive (SQLite's
//! single writer, PostgreSQL's advisory lock).

#![expect(
    clippy::manual_async_fn,
    reason = "an `async fn` generic over `Exec` makes each caller prove its future `Send` for every lifetime, which rustc cannot (rust-lang/rust#100013); a declared `impl Future + Send` is proven here once"
)]

use std::future::Future;

use crate::Result;
use crate::exec::{Exec, args};

/// A connection that can also run a migration: a script of several statements, which
/// [`Exec`] (one statement, bound parameters) cannot run on PostgreSQL.
pub(crate) trait Script: Exec {
    /// Runs every statement of `sql`, in order.
    fn script<'a>(&'a mut self, sql: &'a str) -> impl Future<Output = Result<()>> + Send + 'a;
}

/// Applies, in order, the migrations newer than the database's latest recorded version and
/// records each. The caller holds the transaction.
pub(crate) fn apply_pending<E: Script>(
    conn: &mut E,
    migrations: &[(i64, &str)],
) -> impl Future<Output = Result<()>> + Send {
    async move {
        let current = conn
            .one(
                "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations",
                &[],
                |row| row.int(0),
            )
            .await?;
        let latest = migrations.last().map_or(0, |(v, _)| *v);
        if current > latest {
            // Opened by an older binary than the one that last migrated it: the tables may hold
            // columns this code does not know. Reading and writing the known ones still works.
            tracing::warn!(current, latest, "database schema is newer than this build");
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let record =
            E::DIALECT.params("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)");
        for (version, sql) in migrations.iter().filter(|(v, _)| *v > current) {
            conn.script(sql).await?;
            conn.execute(&record, &args![*version, now_ms]).await?;
            tracing::info!(version, "store: applied migration");
        }
        Ok(())
    }
}
