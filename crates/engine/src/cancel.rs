//! `CancelJob`: locally while a job is queued and unsent, at the provider where it can cancel
//! (Pictify per batch, with the rule that every sibling in the batch must be cancelled too),
//! refused otherwise.

use std::sync::Arc;

use adgate_generator::{CancelSupport, JobError, JobState};
use adgate_store::{JobPatch, JobRecord};

use crate::codes;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::events::{self, Source};
use crate::runtime::ProviderRuntime;

/// How long a batch cancel waits for submits already on their way to be answered.
const SUBMIT_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);
/// How often it looks.
const SETTLE_CHECK: std::time::Duration = std::time::Duration::from_millis(25);

impl Engine {
    /// Cancel one job: locally while it is queued and unsent; at the provider where the
    /// provider supports it; otherwise refused with a precondition error.
    pub async fn cancel(&self, job_id: &str) -> Result<JobRecord, EngineError> {
        let Some(job) = self
            .shared
            .store
            .get_jobs(std::slice::from_ref(&job_id.to_owned()))
            .await?
            .pop()
        else {
            return Err(EngineError::NotFound(job_id.to_owned()));
        };
        if job.state.is_terminal() {
            return Err(EngineError::FailedPrecondition(format!(
                "job {job_id} is already {}",
                job.state.name()
            )));
        }
        let rt = self
            .shared
            .providers
            .get(&job.provider)
            .ok_or_else(|| EngineError::ProviderNotConfigured(job.provider.clone()))?;
        if job.state == JobState::Queued && job.attempt_id.is_none() {
            return self
                .mark_cancelled(vec![job.id.clone()], true)
                .await?
                .pop()
                .ok_or_else(|| {
                    EngineError::FailedPrecondition(format!("job {job_id} changed state; retry"))
                });
        }
        let Some(poll_key) = job.poll_key.clone() else {
            return Err(EngineError::FailedPrecondition(format!(
                "job {job_id} is being submitted to {}; cancel it once it is PROCESSING",
                job.provider
            )));
        };
        match rt.limits.cancel {
            adgate_generator::CancelSupport::None => Err(EngineError::FailedPrecondition(format!(
                "{} has no cancel operation; job {job_id} will run to completion",
                job.provider
            ))),
            adgate_generator::CancelSupport::PerPollKey => {
                let siblings = self
                    .shared
                    .store
                    .jobs_by_poll_key(&job.provider, &poll_key)
                    .await?;
                let others: Vec<String> = siblings
                    .iter()
                    .filter(|s| s.id != job.id && !s.state.is_terminal())
                    .filter(|s| !rt.tracker.cancel_requested(&s.id))
                    .map(|s| s.id.clone())
                    .collect();
                if !others.is_empty() {
                    rt.tracker.request_cancel(&job.id);
                    return Err(EngineError::FailedPrecondition(format!(
                        "{} cancels whole provider batches; job {job_id} shares one with {} \
                         unfinished job(s) that have not been cancelled: {}",
                        job.provider,
                        others.len(),
                        others.join(",")
                    )));
                }
                self.cancel_at_provider(rt, &poll_key, siblings).await?;
                self.refreshed(job_id).await
            }
            adgate_generator::CancelSupport::PerJob => {
                self.cancel_at_provider(rt, &poll_key, vec![job.clone()])
                    .await?;
                self.refreshed(job_id).await
            }
        }
    }

    async fn cancel_at_provider(
        &self,
        rt: &Arc<ProviderRuntime>,
        poll_key: &str,
        jobs: Vec<JobRecord>,
    ) -> Result<(), EngineError> {
        rt.acquire(&self.shared, crate::budget::Priority::Submit)
            .await;
        rt.generator.cancel(poll_key).await.map_err(|e| match e {
            // Nothing to do later either: the provider cannot cancel this.
            adgate_generator::GenError::Unsupported(_)
            | adgate_generator::GenError::Invalid { .. }
            | adgate_generator::GenError::Permanent { .. } => {
                EngineError::FailedPrecondition(format!("{} refused the cancel: {e}", rt.name))
            }
            // Unreachable, rate-limited, refused for now: the caller may simply retry.
            other => EngineError::ProviderUnavailable(format!(
                "{} could not cancel now: {other}; retry",
                rt.name
            )),
        })?;
        match rt.limits.cancel {
            // A provider batch keeps the results of items already finished [PX-LIVE:…/batch/
            // cancel]: ask it which, right away, instead of cancelling every unfinished job.
            // Rendered items stay PROCESSING until their URL arrives (Pictify sends it in
            // `render.completed`), the rest settle CANCELLED.
            CancelSupport::PerPollKey => {
                rt.acquire(&self.shared, crate::budget::Priority::Poll)
                    .await;
                match rt.generator.poll(&[poll_key.to_owned()]).await {
                    Ok(observed) => {
                        events::apply_updates(&self.shared, rt, observed.value, Source::Observed)
                            .await?;
                    }
                    Err(e) => {
                        // Cancelled at the provider; the tracker's next poll settles them.
                        tracing::warn!(provider = %rt.name, error = %e,
                            "reading a cancelled batch failed; the next poll settles it");
                    }
                }
            }
            _ => {
                let ids = jobs
                    .into_iter()
                    .filter(|j| !j.state.is_terminal())
                    .map(|j| j.id)
                    .collect();
                self.mark_cancelled(ids, false).await?;
            }
        }
        rt.tracker.mark_due(poll_key);
        Ok(())
    }

    /// Cancel every unfinished job of a gateway batch in one call: queued ones locally,
    /// provider batches (Pictify) once every one of their unfinished jobs is being cancelled,
    /// per-job cancels where the provider has them. Jobs at providers without a cancel
    /// operation run to completion. Returns the batch's jobs afterwards.
    pub async fn cancel_batch(&self, batch_id: &str) -> Result<Vec<JobRecord>, EngineError> {
        let Some(jobs) = self.shared.store.batch_jobs(batch_id).await? else {
            return Err(EngineError::NotFound(batch_id.to_owned()));
        };
        // Locally first: a job an attempt takes meanwhile is skipped by the store (the attempt
        // wins) and is then cancelled at the provider below, once its submit is answered.
        let local: Vec<String> = jobs
            .iter()
            .filter(|j| j.state == JobState::Queued && j.attempt_id.is_none())
            .map(|j| j.id.clone())
            .collect();
        self.mark_cancelled(local, true).await?;
        let jobs = self
            .shared
            .store
            .batch_jobs(batch_id)
            .await?
            .unwrap_or_default();
        let jobs = self.after_submits_settle(jobs).await?;
        let open: Vec<JobRecord> = jobs
            .into_iter()
            .filter(|j| !j.state.is_terminal())
            .collect();
        let mut keys: Vec<(Arc<ProviderRuntime>, String)> = Vec::new();
        for job in &open {
            let (Some(rt), Some(key)) = (self.shared.providers.get(&job.provider), &job.poll_key)
            else {
                continue;
            };
            if rt.limits.cancel == CancelSupport::None {
                continue;
            }
            rt.tracker.request_cancel(&job.id);
            if !keys.iter().any(|(r, k)| r.name == rt.name && k == key) {
                keys.push((rt.clone(), key.clone()));
            }
        }
        for (rt, key) in keys {
            let siblings = self.shared.store.jobs_by_poll_key(&rt.name, &key).await?;
            let all_requested = siblings
                .iter()
                .filter(|s| !s.state.is_terminal())
                .all(|s| rt.tracker.cancel_requested(&s.id));
            if !all_requested {
                // The provider batch also holds jobs of other gateway batches still running.
                continue;
            }
            if let Err(e) = self.cancel_at_provider(&rt, &key, siblings).await {
                tracing::warn!(provider = %rt.name, error = %e, batch = batch_id,
                    "cancelling a provider batch failed");
            }
        }
        Ok(self
            .shared
            .store
            .batch_jobs(batch_id)
            .await?
            .unwrap_or_default())
    }

    /// Jobs whose submit is on its way to a provider that can cancel have no provider
    /// reference to cancel by yet: wait (bounded) for those submits to be answered, so that a
    /// batch cancel right after Submit reaches them too. Returns the batch re-read.
    async fn after_submits_settle(
        &self,
        jobs: Vec<JobRecord>,
    ) -> Result<Vec<JobRecord>, EngineError> {
        let in_flight = |jobs: &[JobRecord]| -> Vec<String> {
            jobs.iter()
                .filter(|j| j.state == JobState::Queued && j.attempt_id.is_some())
                .filter(|j| {
                    self.shared
                        .providers
                        .get(&j.provider)
                        .is_some_and(|rt| rt.limits.cancel != CancelSupport::None)
                })
                .map(|j| j.id.clone())
                .collect()
        };
        let mut pending = in_flight(&jobs);
        if pending.is_empty() {
            return Ok(jobs);
        }
        let until = tokio::time::Instant::now() + SUBMIT_SETTLE;
        while !pending.is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(SETTLE_CHECK).await;
            let now = self.shared.store.get_jobs(&pending).await?;
            pending = in_flight(&now);
        }
        let Some(batch) = jobs.first().map(|j| j.batch_id.clone()) else {
            return Ok(jobs);
        };
        Ok(self.shared.store.batch_jobs(&batch).await?.unwrap_or(jobs))
    }

    async fn refreshed(&self, job_id: &str) -> Result<JobRecord, EngineError> {
        self.shared
            .store
            .get_jobs(std::slice::from_ref(&job_id.to_owned()))
            .await?
            .pop()
            .ok_or_else(|| EngineError::NotFound(job_id.to_owned()))
    }

    /// `unattempted_only`: a local cancel, which must lose to an attempt that took the job
    /// first (it may be on its way to the provider).
    async fn mark_cancelled(
        &self,
        ids: Vec<String>,
        unattempted_only: bool,
    ) -> Result<Vec<JobRecord>, EngineError> {
        let patches = ids
            .into_iter()
            .map(|id| JobPatch {
                state: Some(JobState::Cancelled),
                unattempted_only,
                error: Some(JobError::new(
                    codes::CANCELLED_BY_CALLER,
                    "cancelled by the caller",
                    false,
                )),
                ..JobPatch::new(id)
            })
            .collect();
        Ok(self.shared.commit(patches).await?)
    }
}
