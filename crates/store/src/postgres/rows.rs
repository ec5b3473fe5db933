//! PostgreSQL's view of the shared row mapping (`crate::rows`), and SQLSTATE inspection.

use crate::StoreError;
pub(crate) use crate::codec::to_json;
pub(crate) use crate::rows::{
    J_JOB_COLUMNS, JOB_COLUMNS, db, job_from_row, jobs_from_rows, sql_limit,
};

/// The SQLSTATE of a database error, if `e` is one.
pub(super) fn sqlstate(e: &StoreError) -> Option<String> {
    match e {
        StoreError::Database(inner) => inner
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|e| e.code())
            .map(|c| c.into_owned()),
        _ => None,
    }
}
