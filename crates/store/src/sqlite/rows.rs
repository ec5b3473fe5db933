//! SQLite's view of the shared row mapping (`crate::rows`) and JSON encoding.

pub(crate) use crate::codec::to_json;
pub(crate) use crate::rows::{JOB_COLUMNS, job_from_row, sql_limit};
