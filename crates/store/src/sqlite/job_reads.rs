//! The read functions written once in `crate::reads`, on SQLite's read connections.

use sqlx::sqlite::SqliteConnection;

crate::reads::same_reads_on_both_backends!(
    sqlx::Sqlite,
    SqliteConnection,
    crate::search::Dialect::Sqlite
);
