//! Records the store returns and the inputs it takes.

use std::collections::BTreeMap;

use adgate_generator::{JobError, JobState, Output, Progress};
use serde_json::Value;

/// One job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub batch_id: String,
    pub provider: String,
    pub spec: Value,
    pub state: JobState,
    pub provider_ref: Option<String>,
    pub poll_key: Option<String>,
    pub group_key: Option<String>,
    pub correlation_key: Option<String>,
    pub attempt_id: Option<i64>,
    pub progress: Option<Progress>,
    pub outputs: Vec<Output>,
    pub error: Option<JobError>,
    pub client_ref: String,
    pub labels: BTreeMap<String, String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    pub deadline_at_ms: i64,
    /// Increases by one on every change; starts at 1.
    pub revision: i64,
    /// The provider's own fields about the whole job, verbatim, minus those mapped to typed
    /// fields (a JSON object); `None` for jobs whose provider said nothing more, and for rows
    /// stored before the `provider_result` column existed.
    pub provider_result: Option<Value>,
}

/// A job to create. `id` is chosen by the caller (the engine mints `job_…` ids).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: String,
    pub provider: String,
    pub spec: Value,
    pub group_key: Option<String>,
    pub correlation_key: Option<String>,
    pub client_ref: String,
    pub labels: BTreeMap<String, String>,
    pub deadline_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewSubmission {
    pub batch_id: String,
    /// AIP-155 request id; `None` means no deduplication.
    pub request_id: Option<String>,
    /// Hash of the request content, compared when `request_id` repeats.
    pub content_hash: String,
    pub jobs: Vec<NewJob>,
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Stored now.
    Created {
        batch_id: String,
        job_ids: Vec<String>,
    },
    /// The same request id and content were stored before: nothing new was written.
    Replayed {
        batch_id: String,
        job_ids: Vec<String>,
    },
    /// The request id was used before with different content: nothing was written.
    Conflict,
}

/// A change to one job. `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPatch {
    pub job_id: String,
    pub state: Option<JobState>,
    pub provider_ref: Option<String>,
    pub poll_key: Option<String>,
    pub progress: Option<Progress>,
    pub outputs: Option<Vec<Output>>,
    pub error: Option<JobError>,
    /// A new deadline (the engine shortens it to bound an unknown outcome's reconciliation).
    pub deadline_at_ms: Option<i64>,
    /// Apply only while no submit attempt covers the job (a local cancel): decided in the
    /// write, so a cancel and an attempt racing for one job never both win.
    pub unattempted_only: bool,
    /// Replaces the job's provider result when set.
    pub provider_result: Option<Value>,
}

impl JobPatch {
    pub fn new(job_id: impl Into<String>) -> Self {
        Self {
            job_id: job_id.into(),
            ..Self::default()
        }
    }
}

/// A submit attempt from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: i64,
    pub provider: String,
    pub idempotency_key: String,
    /// The attempt's jobs that are still QUEUED, in the order they were attempted.
    pub job_ids: Vec<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    pub provider: String,
    pub state: JobState,
    pub count: u64,
}

/// A verified provider event that matched no job when it arrived (the inbox): kept so that it
/// can be applied once its job becomes known, instead of being answered 2xx and forgotten.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptEvent {
    pub id: i64,
    pub provider: String,
    /// The delivery that carried it (several events may share one), for logs.
    pub delivery_id: Option<String>,
    /// The event as the engine serialised it; the store does not interpret it.
    pub event: Value,
    pub kept_at_ms: i64,
    pub expires_at_ms: i64,
}

/// The writes one provider event causes, committed in one transaction: its delivery id (so a
/// retry of it is a duplicate exactly when its effects are on record), the job changes it
/// makes, the parts of it kept for later, and kept events it has now consumed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventWrite {
    /// `None`: no dedupe (the provider sent no id, or this is the engine applying kept events).
    pub delivery_id: Option<String>,
    pub patches: Vec<JobPatch>,
    /// Serialised events to keep, each with its expiry time.
    pub keep: Vec<(Value, i64)>,
    /// Ids of kept events to delete.
    pub consumed: Vec<i64>,
}
