//! The deadline sweeper: every non-terminal job whose deadline has passed fails at that
//! deadline (see [`DeadlineAlarm`]), with `UNKNOWN_OUTCOME` when it was waiting to reconcile
//! an unknown submit outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use adgate_generator::{JobError, JobState};
use adgate_store::{JobPatch, JobRecord};

use crate::runtime::Shared;
use crate::{codes, dispatcher};

/// The earliest deadline the sweeper knows of, so that a job fails at its deadline rather
/// than at the next periodic pass (a 1 s deadline must not outlive a 1.5 s render because
/// the pass came late).
pub(crate) struct DeadlineAlarm {
    earliest_ms: AtomicI64,
    wake: Notify,
}

impl Default for DeadlineAlarm {
    fn default() -> Self {
        Self {
            earliest_ms: AtomicI64::new(i64::MAX),
            wake: Notify::new(),
        }
    }
}

impl DeadlineAlarm {
    /// Jobs with a deadline at `at_ms` were just stored: wake the sweeper if that is sooner
    /// than what it waits for.
    pub(crate) fn arm(&self, at_ms: i64) {
        if self.earliest_ms.fetch_min(at_ms, Ordering::AcqRel) > at_ms {
            self.wake.notify_one();
        }
    }
}

/// Passes closer together than this are merged: when many deadlines fall in a short span
/// (a provider outage fails a whole queue), one pass fails them together.
const MIN_GAP: Duration = Duration::from_millis(20);

/// Fail every non-terminal job whose deadline has passed: at the earliest stored deadline,
/// and at least every `every` (jobs another replica stored, a read that failed).
pub(crate) async fn sweep_deadlines(shared: Arc<Shared>, every: Duration) {
    let alarm = &shared.deadline_alarm;
    loop {
        let passed_at = tokio::time::Instant::now();
        let swept = sweep_due(&shared).await;
        // Reset before reading the store: a submit that stores an earlier deadline after the
        // read arms the alarm again, one stored before it is in the read.
        alarm.earliest_ms.store(i64::MAX, Ordering::Release);
        // After a failed pass the next one waits for the periodic tick: the due deadline is
        // still due, and retrying it every MIN_GAP would only hammer a failing store.
        if swept && let Ok(Some(next)) = shared.store.next_deadline().await {
            alarm.earliest_ms.fetch_min(next, Ordering::AcqRel);
        }
        loop {
            let earliest = alarm.earliest_ms.load(Ordering::Acquire);
            // Capped at `every`, which bounds the wait anyway (no instant far in the future).
            let until_earliest = Duration::from_millis(
                u64::try_from(earliest.saturating_sub(shared.now_ms())).unwrap_or(0),
            )
            .min(every);
            let at_earliest =
                (tokio::time::Instant::now() + until_earliest).max(passed_at + MIN_GAP);
            let wake_at = at_earliest.min(passed_at + every);
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake_at) => break,
                // An earlier deadline arrived: wait for it instead.
                _ = alarm.wake.notified() => {}
            }
        }
    }
}

/// Fails every job due now. False when a read or the commit failed.
async fn sweep_due(shared: &Shared) -> bool {
    loop {
        let Ok(ids) = shared.store.expired(shared.now_ms(), 1000).await else {
            return false;
        };
        if ids.is_empty() {
            return true;
        }
        let n = ids.len();
        let Ok(jobs) = shared.store.get_jobs(&ids).await else {
            return false;
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
        if shared.commit(patches).await.is_err() {
            return false;
        }
        if n < 1000 {
            return true;
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
