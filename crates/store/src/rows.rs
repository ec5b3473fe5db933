//! Mapping between `jobs` rows and [`JobRecord`], written once for both backends: the column
//! list every job query selects and the decoder, over any driver's row ([`Cols`]).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::codec::{from_json, opt_from_json};
use crate::exec::Cols;
use crate::model::{JobRecord, StoredCost};
use crate::{Result, StoreError};
use adgate_generator::{JobError, JobState, Output, Progress};

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

/// Maps an sqlx (PostgreSQL) error to a store error. A closed pool means the store was closed; a
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

/// Decodes one row selected with [`JOB_COLUMNS`] (SQLite's or PostgreSQL's).
pub(crate) fn job_from_row(row: &dyn Cols) -> Result<JobRecord> {
    let id: String = row.text(0)?;
    let state_raw: i64 = row.int(4)?;
    let state = JobState::from_i64(state_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("job {id}: unknown state {state_raw}")))?;
    let spec_text: String = row.text(3)?;
    let progress: Option<Progress> = opt_from_json(row.opt_text(10)?, &id, "progress")?;
    let outputs_text: String = row.text(11)?;
    let outputs: Vec<Output> = from_json(&outputs_text, &id, "outputs")?;
    let error: Option<JobError> = opt_from_json(row.opt_text(12)?, &id, "error")?;
    let labels_text: String = row.text(14)?;
    let labels: BTreeMap<String, String> = from_json(&labels_text, &id, "labels")?;
    // NULL for rows stored before migration `provider_result` and for jobs without one.
    let provider_result: Option<serde_json::Value> =
        opt_from_json(row.opt_text(20)?, &id, "provider_result")?;
    let cost_unit: Option<String> = row.opt_text(23)?;
    let cost_micros: Option<i64> = row.opt_int(24)?;
    let cost = match (cost_unit, cost_micros) {
        (Some(unit), Some(micros)) => Some(StoredCost {
            unit,
            micros,
            per_output_micros: row.opt_int(25)?,
        }),
        _ => None,
    };
    Ok(JobRecord {
        spec: from_json(&spec_text, &id, "spec")?,
        batch_id: row.text(1)?,
        provider: row.text(2)?,
        state,
        provider_ref: row.opt_text(5)?,
        poll_key: row.opt_text(6)?,
        group_key: row.opt_text(7)?,
        correlation_key: row.opt_text(8)?,
        attempt_id: row.opt_int(9)?,
        progress,
        outputs,
        error,
        client_ref: row.text(13)?,
        labels,
        created_at_ms: row.int(15)?,
        updated_at_ms: row.int(16)?,
        completed_at_ms: row.opt_int(17)?,
        deadline_at_ms: row.int(18)?,
        revision: row.int(19)?,
        provider_result,
        caller: row.text(21)?,
        priority: row.int(22)?,
        cost,
        traceparent: row.opt_text(26)?,
        id,
    })
}

/// Decodes every row, failing on the first corrupt one.
pub(crate) fn jobs_from_rows<R: Cols>(rows: &[R]) -> Result<Vec<JobRecord>> {
    rows.iter().map(|row| job_from_row(row)).collect()
}

/// Converts a caller's `limit` to a signed LIMIT.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Decodes one row of `SELECT id, caller, priority, created_at, group_key` (a queued job
/// without its record), either backend's.
pub(crate) fn queued_entry_from_row(row: &dyn Cols) -> Result<crate::QueuedEntry> {
    Ok(crate::QueuedEntry {
        id: row.text(0)?,
        caller: row.text(1)?,
        priority: row.int(2)?,
        created_at_ms: row.int(3)?,
        group_key: row.opt_text(4)?,
    })
}
