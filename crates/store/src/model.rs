//! Records the store returns and the inputs it takes.

use std::collections::BTreeMap;

use adgate_generator::{Custody, CustodyState, JobError, JobState, Output, Progress};
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
    /// Who submitted it: a caller name from the gateway's tokens, or `anonymous`.
    pub caller: String,
    /// Order among the caller's own queued jobs: 1 interactive, 2 normal, 3 bulk.
    pub priority: i64,
    /// What it costs in its provider's unit (`None` where nothing is priced).
    pub cost: Option<StoredCost>,
    /// The W3C `traceparent` of the Submit that created it, so later provider calls link back.
    pub traceparent: Option<String>,
}

/// The priority of a job without one (`normal`).
pub const DEFAULT_PRIORITY: i64 = 2;
/// The caller of a job submitted without authentication.
pub const ANONYMOUS: &str = "anonymous";

/// What a job costs, in its provider's unit: the estimate while it may still run (it is what
/// spend limits count as reserved), settled when it completes, zero once it failed or was
/// cancelled (the providers bill completed work only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCost {
    /// `USD`, or a provider's credits (`pictify_credit`).
    pub unit: String,
    pub micros: i64,
    /// Priced per produced output (credits per rendered item or format): settled at completion
    /// as this × the outputs. `None`: one fixed price per job.
    pub per_output_micros: Option<i64>,
}

impl StoredCost {
    /// The cost once the job is in `state` with `outputs` outputs.
    fn settled(&self, state: JobState, outputs: usize) -> StoredCost {
        let micros = match (state, self.per_output_micros) {
            (JobState::Failed | JobState::Cancelled, _) => 0,
            (JobState::Completed, Some(per)) => {
                per.saturating_mul(i64::try_from(outputs).unwrap_or(i64::MAX))
            }
            _ => self.micros,
        };
        StoredCost {
            micros,
            ..self.clone()
        }
    }
}

impl JobRecord {
    /// The job state machine, written once for every store: the job after `patch`, or `None`
    /// when the patch does not apply (terminal jobs never change again; a local cancel loses
    /// to an attempt that took the job) or changes nothing (no revision, no event). The
    /// revision and `updated_at` are the store's to set when it writes.
    pub fn patched(&self, patch: &JobPatch, now_ms: i64) -> Option<JobRecord> {
        if self.state.is_terminal() {
            return None;
        }
        if patch.unattempted_only && self.attempt_id.is_some() {
            return None; // an attempt took it first: it may be on its way to the provider
        }
        let mut next = self.clone();
        if let Some(state) = patch.state {
            next.state = state;
        }
        if let Some(provider_ref) = &patch.provider_ref {
            next.provider_ref = Some(provider_ref.clone());
        }
        if let Some(poll_key) = &patch.poll_key {
            next.poll_key = Some(poll_key.clone());
        }
        if let Some(progress) = &patch.progress {
            next.progress = Some(crate::codec::sanitize_progress(progress.clone()));
        }
        if let Some(outputs) = &patch.outputs {
            next.outputs = outputs.clone();
        }
        if let Some(error) = &patch.error {
            next.error = Some(error.clone());
        }
        if let Some(deadline) = patch.deadline_at_ms {
            next.deadline_at_ms = deadline;
        }
        if let Some(result) = &patch.provider_result {
            next.provider_result = Some(result.clone());
        }
        if next == *self {
            return None;
        }
        if next.state.is_terminal() {
            next.completed_at_ms = Some(now_ms);
            next.cost = next
                .cost
                .as_ref()
                .map(|c| c.settled(next.state, next.outputs.len()));
            if next.state == JobState::Completed && patch.keep_outputs {
                for output in &mut next.outputs {
                    if output.custody.is_off() {
                        output.custody.state = CustodyState::Pending;
                    }
                }
            }
        }
        Some(next)
    }

    /// Whether this change (from `before` to `self`) completed the job with outputs waiting
    /// for custody: the store then queues the copy in the same transaction.
    pub fn custody_queued_by(&self, before: &JobRecord) -> bool {
        before.state != JobState::Completed
            && self.state == JobState::Completed
            && self
                .outputs
                .iter()
                .any(|o| o.custody.state == CustodyState::Pending)
    }

    /// The job with a custody result applied: outputs still PENDING take their result; an
    /// output already settled (a late duplicate result) and an unknown index are left alone.
    /// `None` when nothing changes. This is the only change a terminal job accepts.
    pub fn with_custody(&self, results: &[(usize, Custody)]) -> Option<JobRecord> {
        let mut next = self.clone();
        for (index, custody) in results {
            if let Some(output) = next.outputs.get_mut(*index)
                && output.custody.state == CustodyState::Pending
            {
                output.custody = custody.clone();
            }
        }
        (next != *self).then_some(next)
    }
}

/// A completed job whose outputs wait for the gateway's copy (see [`crate::Store::claim_custody`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodyTask {
    pub job_id: String,
    /// Copy attempts already made and failed (0 for a fresh task).
    pub attempts: u32,
    /// When the job completed and its copy was queued.
    pub queued_at_ms: i64,
}

/// The outcome of one custody attempt on a job (see [`crate::Store::finish_custody`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustodyWrite {
    pub job_id: String,
    /// Settled outputs by index: STORED or FAILED. Outputs left out stay PENDING.
    pub results: Vec<(usize, Custody)>,
    /// Try the outputs still PENDING again at this time; `None` ends the task.
    pub retry_at_ms: Option<i64>,
}

/// A queued job as the fair-share order sees it (queue positions and start estimates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEntry {
    pub id: String,
    pub caller: String,
    pub priority: i64,
    pub created_at_ms: i64,
    pub group_key: Option<String>,
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
    /// 1 interactive, 2 normal, 3 bulk.
    pub priority: i64,
    /// The estimate (reserved against spend limits until the job ends).
    pub cost: Option<StoredCost>,
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewSubmission {
    pub batch_id: String,
    /// Who submitted it (recorded on the batch and every job).
    pub caller: String,
    /// AIP-155 request id; `None` means no deduplication.
    pub request_id: Option<String>,
    /// Hash of the request content, compared when `request_id` repeats.
    pub content_hash: String,
    pub jobs: Vec<NewJob>,
    pub now_ms: i64,
    /// Where the batch's events go; `None`: nowhere (no endpoint named, none configured for
    /// the caller), and finishing its jobs writes no outbox rows.
    pub notify: Option<crate::notify::BatchNotify>,
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
    /// Output custody is on: when this patch completes the job, its outputs become custody
    /// PENDING and the store queues their copy in the same transaction.
    pub keep_outputs: bool,
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
