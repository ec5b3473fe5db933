//! Mapping between `jobs` rows and [`JobRecord`], written once for both backends: the column
//! list every job query selects and the decoder, generic over the database's row type.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use adgate_generator::{JobError, JobState, Output, Progress};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::codec::{from_json, opt_from_json};
use crate::model::{JobRecord, StoredCost};
use crate::{Result, StoreError};

/// The columns [`job_from_row`] expects, in this order.
pub(crate) const JOB_COLUMNS: &str = "id, batch_id, provider, spec, state, provider_ref, poll_key, \
     group_key, correlation_key, attempt_id, progress, outputs, error, client_ref, labels, \
     created_at, updated_at, completed_at, deadline_at, revision, provider_result, caller, \
     priority, cost_unit, cost_micros, cost_per_output_micros, traceparent";

/// [`JOB_COLUMNS`] qualified with `j.`, for joins and `UPDATE … FROM`.
pub(crate) static J_JOB_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    JOB_COLUMNS
        .split(", ")
        .map(|c| format!("j.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
});

/// Maps an sqlx error to a store error. A closed pool means the store was closed; a
/// connection that broke (I/O, a pool that cannot connect in time, a backend the server
/// terminated: SQLSTATE 57P01..57P03) means the database is unreachable, which callers may
/// retry, unlike an error the database reported about the statement.
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolClosed => StoreError::Closed,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Database(ref d) if d.code().is_some_and(|c| c.starts_with("57P")) => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Database(Box::new(other)),
    }
}

/// Column `index` of `row`, decoded as `T`.
pub(crate) fn get<'r, R, T>(row: &'r R, index: usize) -> Result<T>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(index).map_err(db)
}

/// Decodes one row selected with [`JOB_COLUMNS`] (SQLite's or PostgreSQL's).
pub(crate) fn job_from_row<'r, R>(row: &'r R) -> Result<JobRecord>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = get(row, 0)?;
    let state_raw: i64 = get(row, 4)?;
    let state = JobState::from_i64(state_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("job {id}: unknown state {state_raw}")))?;
    let spec_text: String = get(row, 3)?;
    let progress: Option<Progress> = opt_from_json(get(row, 10)?, &id, "progress")?;
    let outputs_text: String = get(row, 11)?;
    let outputs: Vec<Output> = from_json(&outputs_text, &id, "outputs")?;
    let error: Option<JobError> = opt_from_json(get(row, 12)?, &id, "error")?;
    let labels_text: String = get(row, 14)?;
    let labels: BTreeMap<String, String> = from_json(&labels_text, &id, "labels")?;
    // NULL for rows stored before migration `provider_result` and for jobs without one.
    let provider_result: Option<serde_json::Value> =
        opt_from_json(get(row, 20)?, &id, "provider_result")?;
    let cost_unit: Option<String> = get(row, 23)?;
    let cost_micros: Option<i64> = get(row, 24)?;
    let cost = match (cost_unit, cost_micros) {
        (Some(unit), Some(micros)) => Some(StoredCost {
            unit,
            micros,
            per_output_micros: get(row, 25)?,
        }),
        _ => None,
    };
    Ok(JobRecord {
        spec: from_json(&spec_text, &id, "spec")?,
        batch_id: get(row, 1)?,
        provider: get(row, 2)?,
        state,
        provider_ref: get(row, 5)?,
        poll_key: get(row, 6)?,
        group_key: get(row, 7)?,
        correlation_key: get(row, 8)?,
        attempt_id: get(row, 9)?,
        progress,
        outputs,
        error,
        client_ref: get(row, 13)?,
        labels,
        created_at_ms: get(row, 15)?,
        updated_at_ms: get(row, 16)?,
        completed_at_ms: get(row, 17)?,
        deadline_at_ms: get(row, 18)?,
        revision: get(row, 19)?,
        provider_result,
        caller: get(row, 21)?,
        priority: get(row, 22)?,
        cost,
        traceparent: get(row, 26)?,
        id,
    })
}

/// Decodes every row, failing on the first corrupt one.
pub(crate) fn jobs_from_rows<'r, R>(rows: &'r [R]) -> Result<Vec<JobRecord>>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    rows.iter().map(job_from_row).collect()
}

/// Converts a caller's `limit` to a signed LIMIT.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Decodes one row of `SELECT id, caller, priority, created_at, group_key` (a queued job
/// without its record), either backend's.
pub(crate) fn queued_entry_from_row<'r, R>(row: &'r R) -> Result<crate::QueuedEntry>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(crate::QueuedEntry {
        id: get(row, 0)?,
        caller: get(row, 1)?,
        priority: get(row, 2)?,
        created_at_ms: get(row, 3)?,
        group_key: get(row, 4)?,
    })
}
