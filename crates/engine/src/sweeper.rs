//! The deadline sweeper: every non-terminal job whose deadline has passed fails, with
//! `UNKNOWN_OUTCOME` when it was waiting to reconcile an unknown submit outcome.

use std::sync::Arc;
use std::time::Duration;

use adgate_generator::{JobError, JobState};
use adgate_store::{JobPatch, JobRecord};

use crate::runtime::Shared;
use crate::{codes, dispatcher};

/// Fail every non-terminal job whose deadline has passed.
pub(crate) async fn sweep_deadlines(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            let Ok(ids) = shared.store.expired(shared.now_ms(), 1000).await else {
                break;
            };
            if ids.is_empty() {
                break;
            }
            let n = ids.len();
            let Ok(jobs) = shared.store.get_jobs(&ids).await else {
                break;
            };
            let patches = jobs
                .into_iter()
                .filter(|j| !j.state.is_terminal())
                .map(|j| JobPatch {
                    state: Some(JobState::Failed),
                    error: Some(expiry_error(&j)),
                    ..JobPatch::new(j.id)
                })
                .collect();
            if shared.commit(patches).await.is_err() || n < 1000 {
                break;
            }
        }
    }
}

/// Why a job that reached its deadline failed. A job sent but never acknowledged (PROCESSING
/// without a provider reference) was waiting to reconcile an unknown submit outcome.
fn expiry_error(job: &JobRecord) -> JobError {
    if job.state == JobState::Processing && job.provider_ref.is_none() {
        dispatcher::unknown_outcome_error(
            "the submit's answer was lost and no callback for it arrived within the \
             reconciliation window",
        )
    } else {
        JobError::new(
            codes::DEADLINE_EXCEEDED,
            "the job did not finish before its deadline",
            true,
        )
    }
}
