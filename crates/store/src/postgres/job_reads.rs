//! The read functions written once in `crate::reads`, on a PostgreSQL pool connection.

use sqlx::postgres::PgConnection;

crate::reads::same_reads_on_both_backends!(
    sqlx::Postgres,
    PgConnection,
    crate::search::Dialect::Postgres
);
