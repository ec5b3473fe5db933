//! The migration runner, written once and expanded per backend by
//! [`same_migration_runner_on_both_backends!`]. Each backend keeps its embedded list of
//! migrations and what makes applying them exclusive (SQLite's single writer, PostgreSQL's
//! advisory lock).

/// `apply_pending(conn, migrations)`: applies, in order, the migrations newer than the
/// database's latest recorded version and records each. The caller holds the transaction.
macro_rules! same_migration_runner_on_both_backends {
    ($conn:ty, $dialect:expr) => {
        async fn apply_pending(conn: &mut $conn, migrations: &[(i64, &str)]) -> $crate::Result<()> {
            use sqlx::Row;
            use $crate::rows::db;
            let current: i64 = sqlx::query(
                "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
            let latest = migrations.last().map_or(0, |(v, _)| *v);
            if current > latest {
                // Opened by an older binary than the one that last migrated it: the tables may
                // hold columns this code does not know. Reading and writing the known ones
                // still works.
                tracing::warn!(current, latest, "database schema is newer than this build");
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let record = $dialect
                .params("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)");
            for (version, sql) in migrations.iter().filter(|(v, _)| *v > current) {
                sqlx::raw_sql(sql).execute(&mut *conn).await.map_err(db)?;
                sqlx::query(&record)
                    .bind(version)
                    .bind(now_ms)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
                tracing::info!(version, "store: applied migration");
            }
            Ok(())
        }
    };
}

pub(crate) use same_migration_runner_on_both_backends;
