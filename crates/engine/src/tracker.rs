//! Per provider: follow in-flight jobs until they are terminal.
//!
//! Jobs are tracked by *poll key* (a StaticAdsLab ad, a Pictify batch, an Abyssale request).
//! Due keys are polled together in calls of up to `max_keys_per_poll`; a round also takes keys
//! due within half a poll interval, so calls go out full instead of one key at a time. Keys
//! whose jobs are followed by a push stream are skipped until the stream ends, and then polled
//! once more (the final GET the StaticAdsLab documents require).
//!
//! Updates from polls and streams go through [`events::apply_updates`], as webhooks do.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adgate_generator::{GenError, JobState, Progress, RemoteState};
use adgate_store::JobRecord;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::budget::Priority;
use crate::engine::{ProviderRuntime, Shared};
use crate::error::EngineError;
use crate::events::{self, Source};

/// With signed webhooks configured, the provider pushes every completion, so polls are only a
/// backstop for a lost delivery. The first backstop poll waits for the provider's typical job
/// duration (a push usually arrives before it, costing no poll at all); the spacing then
/// doubles from there up to [`BACKSTOP_CAP_FACTOR`] × the provider's longest poll spacing
/// (Abyssale 30 s → 57 s), so a push that never comes costs at most about a minute beyond the
/// job's real completion. A webhook's poll hint still polls a key at once, and a restart polls
/// everything at once (deliveries may have been missed while down).
const BACKSTOP_CAP_FACTOR: f64 = 1.9;

/// The poll schedule used while webhooks are configured: `(first poll after, largest spacing)`.
/// `None` when the provider is polled on its normal schedule.
pub fn backstop_schedule(limits: &adgate_generator::Limits) -> Option<(Duration, Duration)> {
    limits.push.webhooks.then(|| {
        let cap = limits
            .max_poll_interval
            .unwrap_or(limits.poll_interval)
            .mul_f64(BACKSTOP_CAP_FACTOR)
            .max(limits.min_poll_interval);
        let first = limits
            .typical_job_duration
            .max(limits.first_poll_after)
            .max(limits.min_poll_interval);
        (first, cap)
    })
}

/// An interned id (job id, provider ref, poll key). One allocation shared by every map that
/// names it, 16 bytes per mention instead of a 24-byte `String` plus its own heap copy: with
/// 100,000 jobs in flight the tracker's maps are most of the gateway's steady-state heap.
type Id = Arc<str>;

/// provider ref → job id of one poll key. Most keys have exactly one job (StaticAdsLab,
/// Abyssale), so that case is inline rather than a one-entry map; Pictify's batch keys hold
/// up to 100, where a linear scan over a `Vec` is still cheap and far smaller than a map.
#[derive(Debug)]
enum Refs {
    One(Id, Id),
    Many(Vec<(Id, Id)>),
}

impl Refs {
    fn iter(&self) -> impl Iterator<Item = (&Id, &Id)> {
        let (one, many) = match self {
            Self::One(r, j) => (Some((r, j)), None),
            Self::Many(v) => (None, Some(v.iter().map(|(r, j)| (r, j)))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn jobs(&self) -> impl Iterator<Item = &Id> {
        self.iter().map(|(_, j)| j)
    }

    fn insert(&mut self, r: Id, job: Id) {
        match self {
            Self::One(r0, j0) if *r0 == r => *j0 = job,
            Self::One(r0, j0) => *self = Self::Many(vec![(r0.clone(), j0.clone()), (r, job)]),
            Self::Many(v) => match v.iter_mut().find(|(r0, _)| *r0 == r) {
                Some(e) => e.1 = job,
                None => v.push((r, job)),
            },
        }
    }

    /// Drop every ref of `job`; true when none is left.
    fn remove_job(&mut self, job: &str) -> bool {
        match self {
            Self::One(_, j) => &**j == job,
            Self::Many(v) => {
                v.retain(|(_, j)| &**j != job);
                v.is_empty()
            }
        }
    }
}

#[derive(Debug)]
struct KeyState {
    refs: Refs,
    interval: Duration,
    generation: u64,
}

/// One tracked job (one entry instead of one per map as before).
#[derive(Debug)]
struct Tracked {
    key: Id,
    /// Last progress committed: lets a poll that reports "still processing, same progress"
    /// skip the store entirely (the common case on every poll round). `None`: nothing yet.
    progress: Option<Option<Progress>>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<Id, KeyState>,
    jobs: HashMap<Id, Tracked>,
    ref_job: HashMap<Id, Id>,
    // Min-heap of (due, generation, key); entries whose generation is stale are skipped.
    due: BinaryHeap<Reverse<(Instant, u64, Id)>>,
    next_generation: u64,
    streaming: HashSet<String>,
    // Jobs that already had a push stream: a dropped stream falls back to polling for good,
    // so a stream of new watchers never reopens it.
    streamed: HashSet<String>,
    cancel_requested: HashSet<String>,
    not_found: HashMap<String, u32>,
}

impl Inner {
    /// The interned copy of `s` if some map already holds it, else a new one.
    fn intern_key(&self, s: &str) -> Id {
        self.keys
            .get_key_value(s)
            .map_or_else(|| Id::from(s), |(k, _)| k.clone())
    }
}

/// In-memory tracking state of one provider.
#[derive(Debug)]
pub(crate) struct TrackerState {
    // A std Mutex: every operation is a few map/heap updates and never awaits.
    inner: Mutex<Inner>,
    wake: Notify,
    /// For batch-pollable providers, polls are aligned to a grid of poll intervals so that
    /// keys submitted at different moments share rounds and calls go out full.
    grid: Option<(Instant, Duration)>,
    /// The poll schedule when webhooks deliver completions (see [`backstop_schedule`]).
    backstop: Option<(Duration, Duration)>,
}

impl TrackerState {
    pub fn new(limits: &adgate_generator::Limits) -> Self {
        let grid = (limits.max_keys_per_poll > 1 && limits.poll_interval > Duration::ZERO)
            .then(|| (Instant::now(), limits.poll_interval));
        let backstop = backstop_schedule(limits);
        Self {
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            grid,
            backstop,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Round `at` to the nearest grid tick (unchanged for providers polled key by key).
    /// Nearest, not up: a key polled just after tick T and rescheduled one interval later must
    /// land on T + interval, not on the tick after.
    fn align(&self, at: Instant) -> Instant {
        let Some((anchor, step)) = self.grid else {
            return at;
        };
        let since = at.saturating_duration_since(anchor).as_nanos();
        let step_ns = step.as_nanos().max(1);
        let ticks = (since + step_ns / 2) / step_ns;
        anchor + step.saturating_mul(ticks.min(u128::from(u32::MAX)) as u32)
    }

    fn schedule(inner: &mut Inner, key: &str, at: Instant) {
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let Some(k) = inner.keys.get_key_value(key).map(|(k, _)| k.clone()) else {
            return;
        };
        if let Some(state) = inner.keys.get_mut(key) {
            state.generation = generation;
        }
        inner.due.push(Reverse((at, generation, k)));
    }

    /// Start tracking a submitted job; its key is first polled after `first_after`.
    pub fn add(&self, job: &JobRecord, first_after: Duration) {
        let (Some(r), Some(key)) = (&job.provider_ref, &job.poll_key) else {
            return;
        };
        self.add_ref(&job.id, r, key, first_after);
    }

    /// [`TrackerState::add`] from the three strings the tracker keeps.
    pub fn add_ref(&self, job_id: &str, provider_ref: &str, key: &str, first_after: Duration) {
        let mut inner = self.lock();
        let job: Id = Id::from(job_id);
        let r: Id = Id::from(provider_ref);
        let key_id = inner.intern_key(key);
        let fresh = match inner.keys.get_mut(key) {
            Some(k) => {
                k.refs.insert(r.clone(), job.clone());
                false
            }
            None => {
                inner.keys.insert(
                    key_id.clone(),
                    KeyState {
                        refs: Refs::One(r.clone(), job.clone()),
                        interval: Duration::ZERO,
                        generation: 0,
                    },
                );
                true
            }
        };
        inner.jobs.insert(
            job.clone(),
            Tracked {
                key: key_id,
                progress: None,
            },
        );
        inner.ref_job.insert(r, job);
        if fresh {
            // A zero first wait (resume) polls at once; otherwise webhooks make it a backstop.
            let first_after = match self.backstop {
                Some((first, _)) if !first_after.is_zero() => first.max(first_after),
                _ => first_after,
            };
            let at = self.align(Instant::now() + first_after);
            Self::schedule(&mut inner, key, at);
            drop(inner);
            self.wake.notify_one();
        }
    }

    pub fn remove_job(&self, job: &JobRecord) {
        let mut inner = self.lock();
        inner.not_found.remove(&job.id);
        inner.cancel_requested.remove(&job.id);
        inner.streamed.remove(&job.id);
        if let Some(r) = &job.provider_ref {
            inner.ref_job.remove(r.as_str());
        }
        let Some(tracked) = inner.jobs.remove(job.id.as_str()) else {
            return;
        };
        let empty = match inner.keys.get_mut(&tracked.key) {
            Some(k) => k.refs.remove_job(&job.id),
            None => false,
        };
        if empty {
            inner.keys.remove(&tracked.key);
        }
    }

    /// Poll this key as soon as the budget allows.
    pub fn mark_due(&self, key: &str) {
        let mut inner = self.lock();
        Self::schedule(&mut inner, key, Instant::now());
        drop(inner);
        self.wake.notify_one();
    }

    pub fn has_job(&self, job_id: &str) -> bool {
        self.lock().jobs.contains_key(job_id)
    }

    pub fn job_count(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn request_cancel(&self, job_id: &str) {
        self.lock().cancel_requested.insert(job_id.to_owned());
    }

    pub fn cancel_requested(&self, job_id: &str) -> bool {
        self.lock().cancel_requested.contains(job_id)
    }

    pub(crate) fn job_for_ref(&self, provider_ref: &str) -> Option<String> {
        self.lock().ref_job.get(provider_ref).map(|j| j.to_string())
    }

    pub(crate) fn jobs_of_key(&self, key: &str) -> Vec<String> {
        self.lock()
            .keys
            .get(key)
            .map(|k| k.refs.jobs().map(|j| j.to_string()).collect())
            .unwrap_or_default()
    }

    fn next_due(&self) -> Option<Instant> {
        let mut inner = self.lock();
        while let Some(Reverse((at, generation, key))) = inner.due.peek().cloned() {
            let live = inner
                .keys
                .get(&*key)
                .is_some_and(|k| k.generation == generation);
            if live {
                return Some(at);
            }
            inner.due.pop();
        }
        None
    }

    /// Take every key due by `now + coalesce`, skipping keys fully covered by streams.
    fn take_due(&self, now: Instant, coalesce: Duration) -> Vec<String> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        let horizon = now + coalesce;
        let mut any_due_now = false;
        while let Some(Reverse((at, generation, key))) = inner.due.peek().cloned() {
            if at > horizon || (at > now && !any_due_now) {
                break;
            }
            inner.due.pop();
            let Some(k) = inner.keys.get(&*key) else {
                continue;
            };
            if k.generation != generation {
                continue;
            }
            if k.refs.jobs().all(|id| inner.streaming.contains(&**id)) {
                continue;
            }
            any_due_now |= at <= now;
            out.push(key.to_string());
        }
        out
    }

    /// Schedule the next poll of `key` after a poll (in the round that started at `round`)
    /// that found it still running.
    fn reschedule(&self, key: &str, limits: &adgate_generator::Limits, round: Instant) {
        let mut inner = self.lock();
        let Some(k) = inner.keys.get_mut(key) else {
            return;
        };
        let next = match (self.backstop, limits.max_poll_interval) {
            // Growing from the typical job duration: a job that outlives it is probably long,
            // and its push will most likely come.
            (Some((_, cap)), _) if k.interval > Duration::ZERO => (k.interval * 2).min(cap),
            (Some((first, cap)), _) => first.min(cap),
            (None, Some(max)) if k.interval > Duration::ZERO => (k.interval * 2).min(max),
            (None, _) => limits.poll_interval,
        };
        k.interval = next.max(limits.min_poll_interval);
        let spacing = k.interval;
        // Jitter (up to 10%, at most 500 ms) spreads keys submitted together.
        let jitter = spacing
            .mul_f64(0.1 * fastrand::f64())
            .min(Duration::from_millis(500));
        let at = match self.grid {
            // On the grid, jitter would only split rounds.
            // Counted from the round's start, so a slow round does not slip to the next tick.
            Some(_) => self.align(round + spacing),
            None => Instant::now() + spacing + jitter,
        };
        Self::schedule(&mut inner, key, at);
    }

    /// Mark a job as followed by a stream. False when it has (or had) one already.
    fn set_streaming(&self, job_id: &str, on: bool) -> bool {
        let mut inner = self.lock();
        if on {
            inner.streamed.insert(job_id.to_owned()) && inner.streaming.insert(job_id.to_owned())
        } else {
            inner.streaming.remove(job_id)
        }
    }

    fn streaming_count(&self) -> usize {
        self.lock().streaming.len()
    }

    pub(crate) fn count_not_found(&self, job_id: &str) -> u32 {
        let mut inner = self.lock();
        let n = inner.not_found.entry(job_id.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// True when `progress` is what was last committed for a tracked, processing job.
    /// Otherwise remembers it and returns false.
    pub(crate) fn unchanged_progress(&self, job_id: &str, progress: &Option<Progress>) -> bool {
        let mut inner = self.lock();
        let Some(tracked) = inner.jobs.get_mut(job_id) else {
            return false;
        };
        match &tracked.progress {
            Some(last) if last == progress => true,
            _ => {
                tracked.progress = Some(progress.clone());
                false
            }
        }
    }

    pub(crate) fn clear_not_found(&self, job_id: &str) {
        self.lock().not_found.remove(job_id);
    }
}

/// Track every job a previous process left in flight.
pub(crate) async fn resume(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
) -> Result<(), EngineError> {
    // Only (id, ref, key) per job: loading full records here (specs and all) made the
    // start-up heap peak several times the steady state, and glibc keeps such a peak.
    let jobs = shared.store.active_refs(&rt.name).await?;
    for job in &jobs {
        if let Some(key) = &job.poll_key {
            // Due now: the state may have moved on while we were down.
            rt.tracker
                .add_ref(&job.job_id, &job.provider_ref, key, Duration::ZERO);
        }
    }
    if !jobs.is_empty() {
        tracing::info!(provider = %rt.name, jobs = jobs.len(), "resumed tracking");
    }
    Ok(())
}

pub(crate) async fn run(shared: Arc<Shared>, rt: Arc<ProviderRuntime>) {
    let coalesce = rt.limits.poll_interval / 2;
    loop {
        let sleep_until = rt
            .tracker
            .next_due()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = rt.tracker.wake.notified() => continue,
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
        let round = Instant::now();
        let keys = rt.tracker.take_due(round, coalesce);
        for chunk in keys.chunks(rt.limits.max_keys_per_poll.max(1)) {
            let waited = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                w = rt.acquire(&shared, Priority::Poll) => w,
            };
            shared.metrics.budget_wait(&rt.name, waited.as_secs_f64());
            // When polls had to wait for budget, the provider's limit is the bottleneck: count
            // the next interval from after the wait, so a saturated provider is polled less
            // and its budget goes to submits, which polls cannot make faster.
            let base = if waited > rt.limits.poll_interval / 2 {
                Instant::now()
            } else {
                round
            };
            poll_chunk(&shared, &rt, chunk, base).await;
        }
    }
}

async fn poll_chunk(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
    chunk: &[String],
    round: Instant,
) {
    let started = Instant::now();
    let result = rt.generator.poll(chunk).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.class(),
    };
    shared
        .metrics
        .request(&rt.name, "poll", outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(observed) => {
            rt.observe(shared, observed.rate);
            rt.set_health(true, None);
            if let Err(e) =
                events::apply_updates(shared, rt, observed.value, Source::Observed).await
            {
                tracing::warn!(provider = %rt.name, error = %e, "applying poll results failed");
            }
        }
        Err(GenError::RateLimited { retry_after }) => {
            rt.block(shared, retry_after.unwrap_or(rt.limits.default_retry_after));
            shared.metrics.retry(&rt.name, "rate_limited");
        }
        Err(e) => {
            rt.set_health(false, Some(e.to_string()));
            shared.metrics.retry(&rt.name, e.class());
        }
    }
    for key in chunk {
        rt.tracker.reschedule(key, &rt.limits, round);
    }
}

/// Open push streams for watched jobs of providers that have them, one per job however many
/// watchers there are, and never more than a tenth of the provider's request budget at once.
pub(crate) async fn stream_watched(shared: &Arc<Shared>, job_ids: &[String]) {
    if !shared.providers.values().any(|rt| rt.limits.push.sse) {
        return;
    }
    let Ok(jobs) = shared.store.get_jobs(job_ids).await else {
        return;
    };
    for job in jobs {
        let Some(rt) = shared.providers.get(&job.provider) else {
            continue;
        };
        if !rt.limits.push.sse || job.state != JobState::Processing {
            continue;
        }
        let (Some(provider_ref), Some(key)) = (job.provider_ref.clone(), job.poll_key.clone())
        else {
            continue;
        };
        let cap = (rt.limits.budget.requests as usize / 10).max(1);
        if rt.tracker.streaming_count() >= cap || !rt.tracker.set_streaming(&job.id, true) {
            continue;
        }
        shared.spawn(follow_stream(
            shared.clone(),
            rt.clone(),
            job.id,
            provider_ref,
            key,
        ));
    }
}

async fn follow_stream(
    shared: Arc<Shared>,
    rt: Arc<ProviderRuntime>,
    job_id: String,
    provider_ref: String,
    key: String,
) {
    let waited = tokio::select! {
        _ = shared.shutdown.cancelled() => {
            rt.tracker.set_streaming(&job_id, false);
            return;
        }
        w = rt.acquire(&shared, Priority::Poll) => w,
    };
    shared.metrics.budget_wait(&rt.name, waited.as_secs_f64());
    let started = Instant::now();
    let opened = rt.generator.stream_updates(&provider_ref).await;
    let outcome = if opened.is_ok() { "ok" } else { "error" };
    shared
        .metrics
        .request(&rt.name, "stream", outcome, started.elapsed().as_secs_f64());
    if let Ok(mut stream) = opened {
        loop {
            let item = tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(update)) => {
                    let terminal =
                        matches!(update.state, RemoteState::Failed | RemoteState::Cancelled);
                    if let Err(e) =
                        events::apply_updates(&shared, &rt, vec![update], Source::Observed).await
                    {
                        tracing::warn!(provider = %rt.name, error = %e, "applying a stream update failed");
                    }
                    if terminal {
                        break;
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
    }
    rt.tracker.set_streaming(&job_id, false);
    // The stream ended (complete, error or drop): one final poll reads the outcome.
    rt.tracker.mark_due(&key);
}
