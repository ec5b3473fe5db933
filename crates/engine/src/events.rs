//! Provider events, in whatever order they come: resolving updates to jobs, and the inbox.
//!
//! Updates from polls, streams and webhooks all go through [`apply_updates`], which finds each
//! update's job (by provider ref, poll key, correlation, or the job a verified callback was
//! addressed to), commits the changes, publishes them and drops terminal jobs from tracking.
//!
//! # The inbox, and the rule for answering a provider
//!
//! A provider may push an event before the gateway has recorded what the event refers to: a
//! webhook that outruns the submit's answer, a callback for a submit whose answer was lost, a
//! delivery that reaches one replica while another is still recording the job. Such an event
//! is *kept*: written to the store's inbox in the same transaction as its delivery id, then
//! applied by [`drain`] as soon as its job becomes known (the submit's answer recorded, a
//! restart resuming an attempt, another replica taking a job over — and on a short timer, so
//! every replica eventually sees events another one kept). Kept events expire after a bound
//! (`kept_event_ttl`, 24 h by default) with a WARN and a metric.
//!
//! The rule for the HTTP answer, so that a 2xx never means "accepted and forgotten": a
//! verified event is answered 2xx only once it is either applied or kept, both durably. When
//! the store cannot take it, the answer is a 5xx and the provider's retry brings it again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use adgate_generator::{JobError, JobState, Progress, ProviderUpdate, RemoteState, UpdateTarget};
use adgate_store::{EventWrite, JobPatch, JobRecord, StoreError};
use serde::{Deserialize, Serialize};

use crate::codes;
use crate::runtime::{ProviderRuntime, Shared};

/// Consecutive polls that must miss a job before it is failed as lost.
const NOT_FOUND_LIMIT: u32 = 3;

/// Candidates read per correlated event. An event whose job is further down the list than
/// this (more older unfinished jobs of the same template and variables) is kept and matched
/// again once older ones finish.
const CORRELATION_CANDIDATES: usize = 256;

/// Candidates read first; the full list is read only when none of these matches.
const CORRELATION_FIRST_READ: usize = 16;

/// Kept events one drain pass reads.
const DRAIN_BATCH: usize = 512;

/// Where a set of updates came from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// A poll or a push stream: an update that finds no job is stale and dropped.
    Observed,
    /// A verified webhook: an update that finds no job is kept.
    Webhook {
        delivery_id: Option<&'a str>,
        bound_job: Option<&'a str>,
    },
}

/// What applying a batch of updates did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Applied {
    /// Jobs changed.
    pub changed: usize,
    /// Updates kept in the inbox because they matched no job yet.
    pub kept: usize,
}

/// A kept event as stored: the update and the job its delivery was addressed to, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    update: ProviderUpdate,
    #[serde(default)]
    bound_job: Option<String>,
}

/// How one update resolved.
enum Resolution {
    /// Found its job(s); these patches (possibly none: nothing new) apply.
    Found(Vec<JobPatch>),
    /// No job is known for it (yet).
    NoJob,
}

/// What the correlated updates of one call took: outputs per job, and whether any of those
/// jobs expects several images (its outputs are rewritten whole, so the resolving lock is then
/// held through the commit).
#[derive(Default)]
struct Claims {
    per_job: HashMap<String, usize>,
    multi_image: bool,
}

/// Resolve, commit and publish updates. `Ok(None)` means the webhook delivery was seen before
/// and nothing was applied.
pub(crate) async fn apply_updates(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
    updates: Vec<ProviderUpdate>,
    source: Source<'_>,
) -> Result<Option<Applied>, StoreError> {
    let (delivery_id, bound_job) = match source {
        Source::Observed => (None, None),
        Source::Webhook {
            delivery_id,
            bound_job,
        } => (delivery_id, bound_job),
    };
    let correlated = updates.iter().any(|u| is_correlated(&u.target));
    let mut serial = if correlated {
        Some(rt.correlating.lock().await)
    } else {
        None
    };
    let mut patches = Vec::new();
    let mut keep = Vec::new();
    // Outputs earlier correlated updates of this batch gave each job: two events for
    // identical variables must land on two different jobs (or on one that expects both).
    let mut claims = Claims::default();
    let expires_at = shared.now_ms() + ms(shared.kept_event_ttl);
    for update in updates {
        match resolve(shared, rt, &update, bound_job, shared.now_ms(), &mut claims).await? {
            Resolution::Found(p) => patches.extend(p),
            Resolution::NoJob if matches!(source, Source::Webhook { .. }) => {
                let kept = Kept {
                    update,
                    bound_job: bound_job.map(str::to_owned),
                };
                let value = serde_json::to_value(&kept)
                    .map_err(|e| StoreError::Corrupt(format!("cannot encode an event: {e}")))?;
                keep.push((value, expires_at));
            }
            Resolution::NoJob => {}
        }
    }
    // Release the resolving lock before the commit unless a multi-image job was touched;
    // what this call took stays visible to other resolvers as in-flight claims until its
    // commit is over (taken back under the lock, see `ProviderRuntime::correlation_claims`).
    let in_flight = serial.is_some() && !claims.multi_image && !claims.per_job.is_empty();
    if in_flight {
        let mut held = lock(&rt.correlation_claims);
        for (job, n) in &claims.per_job {
            *held.entry(job.clone()).or_default() += n;
        }
    }
    if !claims.multi_image {
        serial = None;
    }
    let result = commit_updates(shared, rt, patches, keep, delivery_id).await;
    if in_flight {
        let _serial = rt.correlating.lock().await;
        let mut held = lock(&rt.correlation_claims);
        for (job, n) in &claims.per_job {
            if let Some(c) = held.get_mut(job) {
                *c = c.saturating_sub(*n);
                if *c == 0 {
                    held.remove(job);
                }
            }
        }
    }
    drop(serial);
    result
}

/// Commit what resolving a set of updates produced (with its delivery id and kept events,
/// all or nothing) and publish it.
async fn commit_updates(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
    patches: Vec<JobPatch>,
    keep: Vec<(serde_json::Value, i64)>,
    delivery_id: Option<&str>,
) -> Result<Option<Applied>, StoreError> {
    let kept = keep.len();
    let bound = binding(&patches);
    let terminal: Vec<String> = patches
        .iter()
        .filter(|p| p.state.is_some_and(|s| s.is_terminal()))
        .map(|p| p.job_id.clone())
        .collect();
    let committed = if delivery_id.is_none() && keep.is_empty() {
        if patches.is_empty() {
            Vec::new()
        } else {
            let changed = shared
                .store
                .apply(shared.keep_outputs(patches), shared.now_ms())
                .await?;
            shared.publish(&changed);
            changed
        }
    } else {
        let write = EventWrite {
            delivery_id: delivery_id.map(str::to_owned),
            patches: shared.keep_outputs(patches),
            keep,
            consumed: Vec::new(),
        };
        let Some(changed) = shared
            .store
            .apply_event(&rt.name, write, shared.now_ms())
            .await?
        else {
            return Ok(None);
        };
        shared.publish(&changed);
        changed
    };
    forget_stale(shared, rt, terminal, &committed).await?;
    track_bound(rt, &bound, &committed);
    if kept > 0 {
        rt.inbox_wake.notify_one();
    }
    Ok(Some(Applied {
        changed: committed.len(),
        kept,
    }))
}

/// A job that got its provider reference from an event (a callback bound to a job whose submit
/// answer was lost or is late) and is still running is tracked from here: the dispatcher that
/// would have tracked it never saw the reference.
///
/// Only jobs whose reference this very write bound: any other record here may already be
/// stale (a poll's "still processing" committed just before a push finished the job).
fn track_bound(rt: &ProviderRuntime, bound: &HashSet<String>, committed: &[JobRecord]) {
    for rec in committed {
        if bound.contains(&rec.id)
            && !rec.state.is_terminal()
            && rec.provider_ref.is_some()
            && !rt.tracker.has_job(&rec.id)
        {
            rt.tracker.add(rec, rt.limits.first_poll_after);
        }
    }
}

/// A terminal report for a job the store did not change means it was already terminal (a
/// webhook, another replica, a deadline got there first): stop tracking it here too.
async fn forget_stale(
    shared: &Arc<Shared>,
    rt: &ProviderRuntime,
    terminal: Vec<String>,
    committed: &[JobRecord],
) -> Result<(), StoreError> {
    let done: HashSet<&str> = committed.iter().map(|r| r.id.as_str()).collect();
    let stale: Vec<String> = terminal
        .into_iter()
        .filter(|id| !done.contains(id.as_str()))
        .collect();
    if !stale.is_empty() {
        for job in shared.store.get_jobs(&stale).await? {
            if job.state.is_terminal() {
                rt.tracker.remove_job(&job);
            }
        }
    }
    Ok(())
}

/// Find the job(s) an update is about and turn it into patches.
async fn resolve(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
    update: &ProviderUpdate,
    bound_job: Option<&str>,
    arrived_ms: i64,
    claims: &mut Claims,
) -> Result<Resolution, StoreError> {
    let ids = match &update.target {
        UpdateTarget::ProviderRef(r) => {
            if let Some(id) = rt.tracker.job_for_ref(r) {
                vec![id]
            } else if let Some(job) = shared.store.find_by_ref(&rt.name, r).await? {
                vec![job.id]
            } else if let Some(job) = bindable(shared, rt, bound_job, r).await? {
                // The callback names its job and the job has no reference yet (the submit's
                // answer is late, lost, or was never read): bind the reference with the
                // update, in one change.
                let mut patch = to_patch(rt, job.id.clone(), update).unwrap_or_else(|| {
                    let mut p = JobPatch::new(job.id.clone());
                    p.state = Some(JobState::Processing);
                    p
                });
                patch.provider_ref = Some(r.clone());
                patch.poll_key = Some(rt.generator.poll_key(r));
                return Ok(Resolution::Found(vec![patch]));
            } else {
                Vec::new()
            }
        }
        UpdateTarget::PollKey(key) => {
            let mut ids = rt.tracker.jobs_of_key(key);
            if ids.is_empty() {
                ids = shared
                    .store
                    .jobs_by_poll_key(&rt.name, key)
                    .await?
                    .into_iter()
                    .filter(|j| !j.state.is_terminal())
                    .map(|j| j.id)
                    .collect();
            }
            ids
        }
        UpdateTarget::Correlation(key) => {
            return correlated_patch(shared, rt, update, key, None, arrived_ms, claims).await;
        }
        UpdateTarget::Correlated { key, fields } => {
            return correlated_patch(shared, rt, update, key, Some(fields), arrived_ms, claims)
                .await;
        }
    };
    if ids.is_empty() {
        return Ok(Resolution::NoJob);
    }
    Ok(Resolution::Found(
        ids.into_iter()
            .filter_map(|id| to_patch(rt, id, update))
            .collect(),
    ))
}

/// The job a verified callback was addressed to, when it may take this provider reference:
/// same provider, unfinished, and no other reference recorded.
async fn bindable(
    shared: &Shared,
    rt: &ProviderRuntime,
    bound_job: Option<&str>,
    provider_ref: &str,
) -> Result<Option<JobRecord>, StoreError> {
    let Some(id) = bound_job else {
        return Ok(None);
    };
    let job = shared.store.get_jobs(&[id.to_owned()]).await?.pop();
    Ok(job.filter(|j| {
        j.provider == rt.name
            && !j.state.is_terminal()
            && j.attempt_id.is_some()
            && j.provider_ref.as_deref().is_none_or(|r| r == provider_ref)
    }))
}

/// The oldest unfinished, sent job with this correlation key that the event's fields match
/// and that still expects outputs (counting what earlier updates of this batch gave it), and
/// the patch the update makes to it. A push that delivers one image of a job that expects
/// several (Pictify layouts) adds it to the job's outputs; the job completes with the last.
async fn correlated_patch(
    shared: &Shared,
    rt: &ProviderRuntime,
    update: &ProviderUpdate,
    key: &str,
    fields: Option<&serde_json::Map<String, serde_json::Value>>,
    arrived_ms: i64,
    claims: &mut Claims,
) -> Result<Resolution, StoreError> {
    let eligible = |job: &JobRecord, claims: &Claims, in_flight: &HashMap<String, usize>| {
        let expected = rt.generator.expected_outputs(&job.spec).max(1);
        let have = job.outputs.len()
            + claims.per_job.get(&job.id).copied().unwrap_or(0)
            + in_flight.get(&job.id).copied().unwrap_or(0);
        // A job submitted after the event arrived cannot have produced it: a kept event
        // must never complete a later job with the same template and variables.
        job.created_at_ms <= arrived_ms
            && have < expected
            && fields.is_none_or(|f| rt.generator.correlates(&job.spec, f))
    };
    let mut found = None;
    // An event that echoes everything a job of this process was submitted with: one lookup
    // (see the `correlation` module), the oldest such job first, as the scan would pick.
    let exact = fields
        .and_then(|f| rt.generator.event_fingerprint(key, f))
        .map(|fingerprint| rt.exact_correlation.get(fingerprint))
        .unwrap_or_default();
    if !exact.is_empty() {
        let mut jobs = shared.store.get_jobs(&exact).await?;
        jobs.retain(|j| !j.state.is_terminal() && j.attempt_id.is_some());
        jobs.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        let in_flight = lock(&rt.correlation_claims);
        found = jobs
            .into_iter()
            .find(|job| eligible(job, claims, &in_flight));
    }
    // Otherwise events mostly name one of the oldest unfinished jobs: read a few candidates
    // first and the full list only when none of them matches.
    for limit in [CORRELATION_FIRST_READ, CORRELATION_CANDIDATES] {
        if found.is_some() {
            break;
        }
        let candidates = shared
            .store
            .correlation_candidates(&rt.name, key, limit)
            .await?;
        let read = candidates.len();
        let in_flight = lock(&rt.correlation_claims);
        found = candidates
            .into_iter()
            .find(|job| eligible(job, claims, &in_flight));
        if read < limit {
            break;
        }
    }
    let Some(job) = found else {
        return Ok(Resolution::NoJob);
    };
    let expected = rt.generator.expected_outputs(&job.spec).max(1);
    claims.multi_image |= expected > 1;
    let added = claims.per_job.entry(job.id.clone()).or_default();
    if update.state == RemoteState::Completed && !update.outputs.is_empty() && expected > 1 {
        let mut outputs = job.outputs.clone();
        outputs.extend(update.outputs.iter().cloned());
        *added += update.outputs.len();
        let mut p = JobPatch::new(job.id.clone());
        if outputs.len() >= expected {
            p.state = Some(JobState::Completed);
            p.progress = Some(Progress {
                step: "completed".to_owned(),
                message: String::new(),
                percentage: 100.0,
            });
        } else {
            p.state = Some(JobState::Processing);
            p.progress = Some(Progress {
                step: "rendered".to_owned(),
                message: format!("{} of {expected} images delivered", outputs.len()),
                percentage: 100.0 * outputs.len() as f64 / expected as f64,
            });
        }
        p.outputs = Some(outputs);
        return Ok(Resolution::Found(vec![p]));
    }
    *added += expected;
    Ok(Resolution::Found(
        to_patch(rt, job.id, update).into_iter().collect(),
    ))
}

pub(crate) fn to_patch(
    rt: &ProviderRuntime,
    job_id: String,
    u: &ProviderUpdate,
) -> Option<JobPatch> {
    if u.state != RemoteState::NotFound {
        rt.tracker.clear_not_found(&job_id);
    }
    if u.state == RemoteState::Processing && rt.tracker.unchanged_progress(&job_id, &u.progress) {
        return None;
    }
    let mut p = JobPatch::new(job_id);
    match u.state {
        RemoteState::Processing => {
            p.state = Some(JobState::Processing);
            p.progress = u.progress.clone();
        }
        RemoteState::Completed if u.outputs.is_empty() && !u.without_outputs => {
            // Never COMPLETED without output: wait for the URL to arrive.
            p.state = Some(JobState::Processing);
            p.progress = u.progress.clone();
        }
        RemoteState::Completed => {
            p.state = Some(JobState::Completed);
            p.outputs = Some(u.outputs.clone());
            p.error = u.error.clone();
            p.progress = Some(Progress {
                step: "completed".to_owned(),
                message: String::new(),
                percentage: 100.0,
            });
        }
        RemoteState::Failed => {
            p.state = Some(JobState::Failed);
            p.error = Some(u.error.clone().unwrap_or_else(|| {
                JobError::new(
                    codes::PROVIDER_JOB_FAILED,
                    "the provider reported a failure",
                    true,
                )
            }));
        }
        RemoteState::Cancelled => {
            p.state = Some(JobState::Cancelled);
            p.error = u.error.clone().or_else(|| {
                rt.tracker.cancel_requested(&p.job_id).then(|| {
                    JobError::new(codes::CANCELLED_BY_CALLER, "cancelled by the caller", false)
                })
            });
        }
        RemoteState::NotFound => {
            if rt.tracker.count_not_found(&p.job_id) < NOT_FOUND_LIMIT {
                return None;
            }
            p.state = Some(JobState::Failed);
            p.error = Some(JobError::new(
                codes::PROVIDER_JOB_NOT_FOUND,
                format!("{} no longer knows this job", rt.name),
                true,
            ));
        }
    }
    // The provider's own job-level fields, verbatim (issue 20); an update without them keeps
    // what the job has.
    if let Some(result) = &u.provider_result {
        p.provider_result = Some(serde_json::Value::Object(result.clone()));
    }
    Some(p)
}

/// Apply the kept events of one provider whose jobs are now known, and drop expired ones.
/// Returns how many were applied.
pub(crate) async fn drain(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
) -> Result<usize, StoreError> {
    let kept = shared.store.kept_events(&rt.name, DRAIN_BATCH).await?;
    if kept.is_empty() {
        return Ok(0);
    }
    let now = shared.now_ms();
    let _serial = rt.correlating.lock().await;
    let mut patches = Vec::new();
    let mut consumed = Vec::new();
    let mut applied = 0;
    let mut expired = 0;
    // The inbox pass holds the lock through its commit: it is one write, and rare.
    let mut claims = Claims::default();
    for event in kept {
        let parsed: Option<Kept> = serde_json::from_value(event.event.clone()).ok();
        let Some(k) = parsed else {
            // Written by a build that encoded events differently: nothing can apply it.
            tracing::warn!(provider = %rt.name, delivery_id = event.delivery_id.as_deref().unwrap_or(""),
                "dropping a kept provider event this build cannot read");
            consumed.push(event.id);
            continue;
        };
        let arrived = event.kept_at_ms;
        match resolve(
            shared,
            rt,
            &k.update,
            k.bound_job.as_deref(),
            arrived,
            &mut claims,
        )
        .await?
        {
            Resolution::Found(p) => {
                patches.extend(p);
                consumed.push(event.id);
                applied += 1;
            }
            Resolution::NoJob if event.expires_at_ms <= now => {
                tracing::warn!(
                    provider = %rt.name,
                    delivery_id = event.delivery_id.as_deref().unwrap_or(""),
                    target = target_kind(&k.update.target),
                    kept_for_s = (now - event.kept_at_ms) / 1000,
                    "a kept provider event expired without matching any job"
                );
                consumed.push(event.id);
                expired += 1;
            }
            Resolution::NoJob => {}
        }
    }
    if consumed.is_empty() {
        return Ok(0);
    }
    let bound = binding(&patches);
    let terminal: Vec<String> = patches
        .iter()
        .filter(|p| p.state.is_some_and(|s| s.is_terminal()))
        .map(|p| p.job_id.clone())
        .collect();
    let write = EventWrite {
        delivery_id: None,
        patches: shared.keep_outputs(patches),
        keep: Vec::new(),
        consumed,
    };
    let changed = shared
        .store
        .apply_event(&rt.name, write, now)
        .await?
        .unwrap_or_default();
    shared.publish(&changed);
    forget_stale(shared, rt, terminal, &changed).await?;
    track_bound(rt, &bound, &changed);
    for _ in 0..applied {
        shared.metrics.webhook(&rt.name, "applied_from_inbox");
    }
    for _ in 0..expired {
        shared.metrics.webhook(&rt.name, "expired");
    }
    if applied > 0 {
        tracing::info!(provider = %rt.name, applied, "applied kept provider events");
    }
    Ok(applied)
}

/// Jobs whose provider reference these patches set (a callback bound to its job).
fn binding(patches: &[JobPatch]) -> HashSet<String> {
    patches
        .iter()
        .filter(|p| p.provider_ref.is_some())
        .map(|p| p.job_id.clone())
        .collect()
}

fn is_correlated(t: &UpdateTarget) -> bool {
    matches!(
        t,
        UpdateTarget::Correlation(_) | UpdateTarget::Correlated { .. }
    )
}

fn target_kind(t: &UpdateTarget) -> &'static str {
    match t {
        UpdateTarget::ProviderRef(_) => "provider_ref",
        UpdateTarget::PollKey(_) => "poll_key",
        UpdateTarget::Correlation(_) | UpdateTarget::Correlated { .. } => "correlation",
    }
}

/// Per provider: drain the inbox when woken (a job became known) and on a short timer (other
/// replicas keep events too; kept events must expire even when nothing wakes us).
pub(crate) async fn run_inbox(shared: Arc<Shared>, rt: Arc<ProviderRuntime>, every: Duration) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = rt.inbox_wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = drain(&shared, &rt).await {
            tracing::warn!(provider = %rt.name, error = %e, "applying kept provider events failed");
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
