//! Per provider: turn QUEUED jobs into submit calls.
//!
//! Order of operations for every call, so that a crash at any point is recoverable:
//! 1. record the attempt and its idempotency key in the store (the outbox);
//! 2. wait for the request budget and a concurrency slot;
//! 3. call the provider;
//! 4. store the provider references (jobs become PROCESSING) and hand them to the tracker.
//!
//! At start-up an attempt left open by a crash is resent with the same key when the provider
//! honours idempotency keys; otherwise it may already have created (and billed) work, so it is
//! never resent. Such a job, and one whose submit answer was lost, is *reconciled* when a push
//! channel can still tell the truth (webhooks configured): it waits visibly (PROCESSING, progress
//! step `reconciling`) for the provider's callback, which binds to it by the identity the
//! adapter put into the callback, for a bounded window; only when the window passes with nothing
//! does it fail `UNKNOWN_OUTCOME`. Without webhooks it fails at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use adgate_generator::{GenError, JobError, JobState, Progress, SubmitBatch, SubmitItem};
use adgate_store::{JobPatch, JobRecord};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use crate::awaiting;
use crate::budget::Priority;
use crate::error::EngineError;
use crate::runtime::{ProviderRuntime, Shared};
use crate::{codes, fair, trace, tracker};

/// How many queued jobs one dispatcher pass reads.
const PASS_SIZE: usize = 1000;
/// A partly filled multi-item call waits this long for more jobs of its group.
const LINGER: Duration = Duration::from_millis(200);

/// Resend or fail the attempts a previous process (or a dead replica) left open. With `only`,
/// just the attempts whose jobs this replica has taken over.
pub(crate) async fn resume(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
    only: Option<&HashSet<String>>,
) -> Result<(), EngineError> {
    let open = shared.store.open_attempts(&rt.name).await?;
    for mut attempt in open {
        if let Some(only) = only {
            attempt.job_ids.retain(|id| only.contains(id));
        }
        let mut jobs: HashMap<String, JobRecord> = shared
            .store
            .get_jobs(&attempt.job_ids)
            .await?
            .into_iter()
            .map(|j| (j.id.clone(), j))
            .collect();
        // `get_jobs` answers in no particular order, but a resend must repeat the original
        // request body exactly (a provider refuses a reused idempotency key with a different
        // body), so keep the attempt's own order.
        let jobs: Vec<JobRecord> = attempt
            .job_ids
            .iter()
            .filter_map(|id| jobs.remove(id))
            .filter(|j| j.state == JobState::Queued)
            .collect();
        if jobs.is_empty() {
            continue;
        }
        if rt.limits.idempotency {
            let (s, rt) = (shared.clone(), rt.clone());
            shared.spawn(async move {
                let Ok(permit) = rt.submit_slots.clone().acquire_owned().await else {
                    return;
                };
                send_attempt(s, rt, attempt.idempotency_key, jobs, permit, false).await;
            });
        } else {
            settle_unknown(
                shared,
                rt,
                &jobs,
                "the gateway stopped while this job was being submitted",
            )
            .await;
        }
    }
    Ok(())
}

/// The unknown-outcome rule for a provider without idempotency keys: never resend; reconcile
/// through the provider's callback when one can come, otherwise fail `UNKNOWN_OUTCOME` now.
async fn settle_unknown(shared: &Shared, rt: &ProviderRuntime, jobs: &[JobRecord], why: &str) {
    if !rt.limits.push.webhooks {
        fail(
            shared,
            jobs.iter().map(|j| j.id.clone()).collect(),
            unknown_outcome_error(why),
        )
        .await;
        return;
    }
    let until =
        shared.now_ms() + i64::try_from(rt.reconcile_window.as_millis()).unwrap_or(i64::MAX);
    let patches = jobs
        .iter()
        .map(|j| JobPatch {
            state: Some(JobState::Processing),
            progress: Some(Progress {
                step: "reconciling".to_owned(),
                message: format!(
                    "{why}; the provider takes no idempotency key, so the job is not resent. \
                     Waiting up to {} s for the provider's callback before failing \
                     UNKNOWN_OUTCOME",
                    rt.reconcile_window.as_secs()
                ),
                percentage: 0.0,
            }),
            deadline_at_ms: Some(until.min(j.deadline_at_ms)),
            ..JobPatch::new(j.id.clone())
        })
        .collect();
    match shared.commit(patches).await {
        Ok(changed) => {
            tracing::warn!(provider = %rt.name, jobs = changed.len(),
                window_s = rt.reconcile_window.as_secs(),
                "submit outcome unknown; waiting for the provider's callback");
            // A callback may have come (and been kept) before this was recorded.
            rt.inbox_wake.notify_one();
        }
        Err(e) => tracing::error!(error = %e, "recording reconciling jobs failed"),
    }
}

pub(crate) fn unknown_outcome_error(why: &str) -> JobError {
    JobError::new(
        codes::UNKNOWN_OUTCOME,
        format!(
            "{why}; the provider takes no idempotency key, so the job was not resent to avoid \
             a double charge. Check the provider before submitting it again"
        ),
        true,
    )
}

pub(crate) async fn run(shared: Arc<Shared>, rt: Arc<ProviderRuntime>) {
    let mut fair_state = fair::FairState::default();
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        rt.take_arrivals();
        let jobs = match shared
            .store
            .claim_queued(
                &rt.name,
                &shared.replica_id,
                shared.now_ms(),
                shared.lease_ms(),
                PASS_SIZE,
            )
            .await
        {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(provider = %rt.name, error = %e, "reading queued jobs failed");
                idle(&shared, &rt, Duration::from_secs(1)).await;
                continue;
            }
        };
        if jobs.is_empty() {
            idle(&shared, &rt, Duration::from_secs(5)).await;
            continue;
        }
        let stopped: HashSet<String> = rt
            .stopped_batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (dead, jobs): (Vec<JobRecord>, Vec<JobRecord>) = jobs
            .into_iter()
            .partition(|j| stopped.contains(&j.batch_id));
        if !dead.is_empty() {
            fail(
                &shared,
                dead.into_iter().map(|j| j.id).collect(),
                balance_error(),
            )
            .await;
        }
        let claimed = jobs.len();
        let jobs = awaiting::screen(&shared, &rt, jobs).await;
        if jobs.is_empty() && claimed > 0 {
            // Everything claimed waits for another job: sleep until a job ends.
            idle(&shared, &rt, Duration::from_secs(5)).await;
            continue;
        }
        let mut lingering = false;
        let now_ms = shared.now_ms();
        let max = rt.limits.max_items_per_submit.max(1);
        let entries: Vec<fair::Entry<'_>> = jobs.iter().map(fair::Entry::of).collect();
        let plan = fair::FairOrder::plan(&entries, max, &shared.callers, Some(&fair_state));
        // Per caller in this pass, its least urgent priority.
        let mut least: HashMap<&str, i64> = HashMap::new();
        for j in &jobs {
            let p = least.entry(j.caller.as_str()).or_insert(j.priority);
            *p = (*p).max(j.priority);
        }
        for (n, indices) in plan.iter().enumerate() {
            // A Submit since this pass read the queue has jobs that go before what is left
            // of it: read the queue again, so they take their fair place now.
            if n > 0 && rt.arrivals_jump_queue(&least) {
                break;
            }
            let chunk: Vec<JobRecord> = indices.iter().map(|&i| jobs[i].clone()).collect();
            let chunk = chunk.as_slice();
            let young = now_ms - chunk[0].created_at_ms < LINGER.as_millis() as i64;
            if chunk.len() < max && max > 1 && young {
                lingering = true;
                continue;
            }
            let permit = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                p = rt.submit_slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            if let Some(cap) = rt.limits.max_running_poll_keys
                && !wait_for_running_slot(&shared, &rt, cap, chunk).await
            {
                return;
            }
            // The request budget is taken here, in fair-share order, before the attempt is
            // recorded: the next request always goes to the chunk this order chose (a
            // caller's job waits behind at most the one chunk already waiting for budget,
            // not behind every spawned send), and for a provider without idempotency keys
            // an attempt on record counts as "maybe sent" after a restart, so it is
            // recorded only right before the call (a drain never leaves unsent attempts).
            let budget_held = true;
            let waited = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                w = rt.acquire(&shared, Priority::Submit) => w,
            };
            shared.metrics.budget_wait(&rt.name, waited.as_secs_f64());
            rt.record_backlog_send(n + 1 < plan.len());
            // Stable across retries and restarts: the first job id is unique to this call.
            let key = format!("adgate-{}-{}", chunk[0].id, chunk.len());
            let ids: Vec<String> = chunk.iter().map(|j| j.id.clone()).collect();
            let attempt = match shared
                .store
                .create_attempt(&rt.name, &key, &ids, shared.now_ms())
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(provider = %rt.name, error = %e, "recording an attempt failed");
                    continue;
                }
            };
            // Send exactly the jobs the attempt took: one cancelled while this pass waited
            // for a slot was left out by the store, and must not reach the provider.
            let linked = match linked_jobs(&shared, chunk, attempt).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(provider = %rt.name, error = %e, "reading an attempt failed");
                    continue;
                }
            };
            if linked.is_empty() {
                continue;
            }
            fair_state.served(&linked[0].caller, &shared.callers);
            shared.spawn(send_attempt(
                shared.clone(),
                rt.clone(),
                key,
                linked,
                permit,
                budget_held,
            ));
        }
        if lingering {
            idle(&shared, &rt, LINGER).await;
        }
    }
}

/// Wait until fewer than `cap` poll keys run at the provider (Pictify: concurrent batches per
/// plan, 1 / 3 / 10 [PX-LIVE:api-reference/batch]); a new batch would otherwise be refused or
/// queued behind the running one. Running = tracked keys (submitted, not yet terminal) plus
/// the other submits in flight (each is a batch about to run). While waiting, the jobs stay
/// QUEUED and their progress says why. Returns false on shutdown.
///
/// The count is this process's: replicas on a shared store each keep their own, so a fleet
/// can run up to `cap` per replica (documented in the README).
async fn wait_for_running_slot(
    shared: &Shared,
    rt: &ProviderRuntime,
    cap: usize,
    chunk: &[JobRecord],
) -> bool {
    let mut told = false;
    loop {
        // This pass holds one submit permit itself.
        let others_in_flight = rt
            .limits
            .max_concurrent_submits
            .max(1)
            .saturating_sub(rt.submit_slots.available_permits())
            .saturating_sub(1);
        let running = rt.tracker.key_count() + others_in_flight;
        if running < cap.max(1) {
            return true;
        }
        if !told {
            told = true;
            let message = format!(
                "waiting for a running {} batch to finish: the plan allows {cap} at once and \
                 {running} are running",
                rt.name
            );
            let patches = chunk
                .iter()
                .map(|j| JobPatch {
                    progress: Some(Progress {
                        step: "waiting_for_running_batch".to_owned(),
                        message: message.clone(),
                        percentage: 0.0,
                    }),
                    ..JobPatch::new(j.id.clone())
                })
                .collect();
            if let Err(e) = shared.commit(patches).await {
                tracing::warn!(provider = %rt.name, error = %e, "recording a wait failed");
            }
        }
        // Woken when a job ends (`Shared::publish`); the bounded re-check covers a submit that
        // failed and so freed its slot without ending a job.
        tokio::select! {
            _ = shared.shutdown.cancelled() => return false,
            _ = rt.wake_dispatcher.notified() => {}
            _ = tokio::time::sleep(rt.limits.poll_interval.max(Duration::from_millis(50))) => {}
        }
    }
}

/// The jobs of `chunk` that attempt `attempt` covers and that are still QUEUED, in order.
async fn linked_jobs(
    shared: &Shared,
    chunk: &[JobRecord],
    attempt: i64,
) -> Result<Vec<JobRecord>, adgate_store::StoreError> {
    let ids: Vec<String> = chunk.iter().map(|j| j.id.clone()).collect();
    let mut now: HashMap<String, JobRecord> = shared
        .store
        .get_jobs(&ids)
        .await?
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
    Ok(ids
        .iter()
        .filter_map(|id| now.remove(id))
        .filter(|j| j.attempt_id == Some(attempt) && j.state == JobState::Queued)
        .collect())
}

async fn idle(shared: &Shared, rt: &ProviderRuntime, max: Duration) {
    tokio::select! {
        _ = shared.shutdown.cancelled() => {}
        _ = rt.wake_dispatcher.notified() => {}
        _ = tokio::time::sleep(max) => {}
    }
}

fn balance_error() -> JobError {
    JobError::new(
        codes::INSUFFICIENT_BALANCE,
        "the provider account has no balance left for this job; it was not sent",
        true,
    )
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base·2^n)]. The unit is the
/// provider's minimum poll interval (StaticAdsLab 2 s → 0.5 s base, 30 s cap), so backoff
/// scales with the provider's own time scale.
fn backoff(failures: u32, unit: Duration) -> Duration {
    let base = unit / 4;
    let cap = unit * 15;
    let ceiling = base.saturating_mul(1u32 << failures.min(10)).min(cap);
    ceiling.mul_f64(fastrand::f64())
}

/// Send one attempt until it is accepted or definitively fails.
pub(crate) async fn send_attempt(
    shared: Arc<Shared>,
    rt: Arc<ProviderRuntime>,
    key: String,
    jobs: Vec<JobRecord>,
    permit: OwnedSemaphorePermit,
    mut budget_held: bool,
) {
    // Jobs that waited for another job get the spec their adapter completes from it.
    let jobs = loop {
        match awaiting::prepare(&shared, &rt, jobs.clone()).await {
            Ok(ready) => break ready,
            Err(e) => {
                tracing::warn!(provider = %rt.name, error = %e, "reading awaited jobs failed");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    if jobs.is_empty() {
        return;
    }
    let batch = SubmitBatch {
        idempotency_key: key,
        items: jobs
            .iter()
            .map(|j| SubmitItem {
                job_id: j.id.clone(),
                spec: j.spec.clone(),
            })
            .collect(),
    };
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let deadline_ms = jobs.iter().map(|j| j.deadline_at_ms).max().unwrap_or(0);
    let mut failures = 0u32;
    loop {
        // With the budget already taken the attempt is on record and the call goes out now,
        // even during a drain (which waits for in-flight submits): see `run`.
        if !budget_held && (shared.shutdown.is_cancelled() || shared.now_ms() > deadline_ms) {
            // Left open: resumed after a restart, or failed by the deadline sweeper.
            return;
        }
        let stopped = {
            let s = rt.stopped_batches.lock().unwrap_or_else(|e| e.into_inner());
            jobs.iter().any(|j| s.contains(&j.batch_id))
        };
        if stopped {
            fail(&shared, ids, balance_error()).await;
            return;
        }
        if !std::mem::take(&mut budget_held) {
            let waited = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                w = rt.acquire(&shared, Priority::Submit) => w,
            };
            shared.metrics.budget_wait(&rt.name, waited.as_secs_f64());
        }
        let span = trace::submit_call(shared.span_link, &rt.name, &jobs);
        let started = Instant::now();
        let result = rt
            .generator
            .submit(batch.clone())
            .instrument(span.clone())
            .await;
        let secs = started.elapsed().as_secs_f64();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.class(),
        };
        shared.metrics.request(&rt.name, "submit", outcome, secs);
        match result {
            Ok(observed) => {
                rt.observe(&shared, observed.rate);
                rt.set_health(true, None);
                accept(&shared, &rt, &jobs, observed.value)
                    .instrument(span)
                    .await;
                break;
            }
            Err(GenError::RateLimited { retry_after }) => {
                rt.set_health(true, None);
                rt.block(
                    &shared,
                    retry_after.unwrap_or(rt.limits.default_retry_after),
                );
                shared.metrics.retry(&rt.name, "rate_limited");
            }
            Err(e @ GenError::UnknownOutcome { .. }) if !rt.limits.idempotency => {
                // The call may have created billable work and the provider takes no key: never
                // send it again.
                rt.set_health(false, Some(e.to_string()));
                settle_unknown(&shared, &rt, &jobs, &format!("submit failed: {e}"))
                    .instrument(span.clone())
                    .await;
                break;
            }
            Err(e @ (GenError::Transient { .. } | GenError::UnknownOutcome { .. })) => {
                // Transient: nothing happened at the provider. Unknown outcome with an
                // idempotency key: resending replays instead of creating twice.
                rt.set_health(false, Some(e.to_string()));
                shared.metrics.retry(&rt.name, e.class());
                failures += 1;
                let wait = backoff(failures, rt.limits.min_poll_interval);
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(GenError::InsufficientBalance { message }) => {
                rt.set_health(true, None);
                stop_batches(&shared, &rt, &jobs).await;
                let mut err = balance_error();
                err.provider_code = codes::INSUFFICIENT_BALANCE.to_owned();
                err.message = format!("{}: {message}", err.message);
                fail(&shared, ids, err).await;
                break;
            }
            Err(e @ GenError::Unauthorized { .. }) => {
                rt.set_health(false, Some(e.to_string()));
                fail(
                    &shared,
                    ids,
                    JobError::new(codes::PROVIDER_AUTH_FAILED, e.to_string(), true),
                )
                .instrument(span.clone())
                .await;
                break;
            }
            Err(GenError::Invalid {
                message,
                provider_code,
                violations,
            }) => {
                let detail: Vec<String> = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect();
                let msg = if detail.is_empty() {
                    message
                } else {
                    format!("{message} ({})", detail.join("; "))
                };
                fail(
                    &shared,
                    ids,
                    JobError::new(codes::PROVIDER_REJECTED, msg, false)
                        .with_provider_code(provider_code),
                )
                .instrument(span.clone())
                .await;
                break;
            }
            Err(GenError::Permanent {
                message,
                provider_code,
            }) => {
                fail(
                    &shared,
                    ids,
                    JobError::new(codes::PROVIDER_REJECTED, message, false)
                        .with_provider_code(provider_code),
                )
                .instrument(span.clone())
                .await;
                break;
            }
            Err(e @ GenError::Unsupported(_)) => {
                fail(
                    &shared,
                    ids,
                    JobError::new(codes::PROVIDER_REJECTED, e.to_string(), false),
                )
                .instrument(span.clone())
                .await;
                break;
            }
        }
    }
    drop(permit);
}

/// Store the provider references and start tracking.
async fn accept(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
    jobs: &[JobRecord],
    accepted: Vec<adgate_generator::Accepted>,
) {
    let mut patches = Vec::with_capacity(accepted.len());
    for a in &accepted {
        patches.push(JobPatch {
            state: Some(JobState::Processing),
            provider_ref: Some(a.provider_ref.clone()),
            poll_key: Some(rt.generator.poll_key(&a.provider_ref)),
            ..JobPatch::new(a.job_id.clone())
        });
    }
    match shared.commit(patches).await {
        Ok(changed) => {
            for rec in &changed {
                rt.tracker.add(rec, rt.limits.first_poll_after);
            }
            rt.links.remember(&changed, &rt.tracker);
            // Pushes that outran this answer are kept until now: apply them.
            rt.inbox_wake.notify_one();
            let watched: Vec<String> = changed
                .iter()
                .filter(|r| shared.bus.is_watched(&r.id))
                .map(|r| r.id.clone())
                .collect();
            if !watched.is_empty() {
                tracker::stream_watched(shared, &watched).await;
            }
        }
        Err(e) => {
            // The provider has the jobs but we could not record it; the attempt stays open and
            // a restart resends it with the same key (a replay, not a second charge).
            tracing::error!(provider = %rt.name, error = %e, jobs = jobs.len(),
                "recording accepted jobs failed");
        }
    }
}

/// Remember that these jobs' batches ran out of money at this provider and fail their jobs
/// that no attempt has sent yet.
async fn stop_batches(shared: &Arc<Shared>, rt: &Arc<ProviderRuntime>, jobs: &[JobRecord]) {
    let batches: HashSet<String> = jobs.iter().map(|j| j.batch_id.clone()).collect();
    rt.stopped_batches
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(batches.iter().cloned());
    for batch in batches {
        let Ok(Some(all)) = shared.store.batch_jobs(&batch).await else {
            continue;
        };
        let unsent: Vec<String> = all
            .into_iter()
            .filter(|j| j.provider == rt.name && j.state == JobState::Queued)
            .filter(|j| j.attempt_id.is_none())
            .map(|j| j.id)
            .collect();
        fail(shared, unsent, balance_error()).await;
    }
}

pub(crate) async fn fail(shared: &Shared, ids: Vec<String>, error: JobError) {
    let patches = ids
        .into_iter()
        .map(|id| JobPatch {
            state: Some(JobState::Failed),
            error: Some(error.clone()),
            ..JobPatch::new(id)
        })
        .collect();
    if let Err(e) = shared.commit(patches).await {
        tracing::error!(error = %e, "recording failed jobs failed");
    }
}
