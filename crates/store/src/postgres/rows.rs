//! Mapping between `jobs` rows and [`JobRecord`], the JSON encoding of stored columns, and
//! error mapping — the PostgreSQL twin of `sqlite/rows.rs`.

use std::collections::BTreeMap;

use adgate_generator::{JobError, JobState, Output, Progress};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::model::JobRecord;
use crate::{Result, StoreError};

/// The columns [`job_from_row`] expects, in this order. Every query that returns jobs selects
/// exactly this list.
pub(super) const JOB_COLUMNS: &str = "id, batch_id, provider, spec, state, provider_ref, poll_key, \
     group_key, correlation_key, attempt_id, progress, outputs, error, client_ref, labels, \
     created_at, updated_at, completed_at, deadline_at, revision, provider_result";

/// [`JOB_COLUMNS`] qualified with `j.`, for joins and `UPDATE … FROM`.
pub(super) const J_JOB_COLUMNS: &str = "j.id, j.batch_id, j.provider, j.spec, j.state, \
     j.provider_ref, j.poll_key, j.group_key, j.correlation_key, j.attempt_id, j.progress, \
     j.outputs, j.error, j.client_ref, j.labels, j.created_at, j.updated_at, j.completed_at, \
     j.deadline_at, j.revision, j.provider_result";

/// Maps an sqlx error to a store error. A closed pool means the store was closed.
pub(super) fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolClosed => StoreError::Closed,
        other => StoreError::Database(Box::new(other)),
    }
}

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

use crate::codec::{from_json, opt_from_json};
pub(super) use crate::codec::{sanitize_progress, to_json};

/// Decodes one row selected with [`JOB_COLUMNS`].
pub(super) fn job_from_row(row: &PgRow) -> Result<JobRecord> {
    let id: String = row.try_get(0).map_err(db)?;
    let state_raw: i64 = row.try_get(4).map_err(db)?;
    let state = JobState::from_i64(state_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("job {id}: unknown state {state_raw}")))?;
    let spec_text: String = row.try_get(3).map_err(db)?;
    let progress: Option<Progress> = opt_from_json(row.try_get(10).map_err(db)?, &id, "progress")?;
    let outputs_text: String = row.try_get(11).map_err(db)?;
    let outputs: Vec<Output> = from_json(&outputs_text, &id, "outputs")?;
    let error: Option<JobError> = opt_from_json(row.try_get(12).map_err(db)?, &id, "error")?;
    let labels_text: String = row.try_get(14).map_err(db)?;
    let labels: BTreeMap<String, String> = from_json(&labels_text, &id, "labels")?;
    // NULL for rows stored before migration `provider_result` and for jobs without one.
    let provider_result: Option<serde_json::Value> =
        opt_from_json(row.try_get(20).map_err(db)?, &id, "provider_result")?;
    Ok(JobRecord {
        spec: from_json(&spec_text, &id, "spec")?,
        batch_id: row.try_get(1).map_err(db)?,
        provider: row.try_get(2).map_err(db)?,
        state,
        provider_ref: row.try_get(5).map_err(db)?,
        poll_key: row.try_get(6).map_err(db)?,
        group_key: row.try_get(7).map_err(db)?,
        correlation_key: row.try_get(8).map_err(db)?,
        attempt_id: row.try_get(9).map_err(db)?,
        progress,
        outputs,
        error,
        client_ref: row.try_get(13).map_err(db)?,
        labels,
        created_at_ms: row.try_get(15).map_err(db)?,
        updated_at_ms: row.try_get(16).map_err(db)?,
        completed_at_ms: row.try_get(17).map_err(db)?,
        deadline_at_ms: row.try_get(18).map_err(db)?,
        revision: row.try_get(19).map_err(db)?,
        provider_result,
        id,
    })
}

/// Decodes every row, failing on the first corrupt one.
pub(super) fn jobs_from_rows(rows: &[PgRow]) -> Result<Vec<JobRecord>> {
    rows.iter().map(job_from_row).collect()
}

/// Converts a caller's `limit` to a signed LIMIT.
pub(super) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
