//! The poll schedule of one provider ([`TrackerState`]): which jobs are in flight under which
//! poll key, when each key is due (on a shared grid for batch-pollable providers, with the
//! webhook backstop when pushes deliver completions), which jobs have a push stream, and the
//! small per-job memory that lets a poll round skip the store (unchanged progress, not-found
//! counts).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adgate_generator::Progress;
use adgate_store::JobRecord;
use tokio::sync::Notify;
use tokio::time::Instant;

/// With signed webhooks configured, the provider pushes every completion, so polls are only a
/// backstop for a lost delivery. The first backstop poll waits for the provider's typical job
/// duration (a push usually arrives before it, costing no poll at all); the spacing then
/// doubles from there up to the provider's `lost_push_bound` (a minute), or
/// [`BACKSTOP_CAP_FACTOR`] × its longest poll spacing if that is longer, so a push that never
/// comes costs at most about a minute beyond the job's real completion. A webhook's poll hint
/// still polls a key at once, and a restart polls everything at once (deliveries may have been
/// missed while down).
const BACKSTOP_CAP_FACTOR: f64 = 1.9;

/// How long a finished job is remembered (see `Inner::finished`).
const FINISHED_TTL: Duration = Duration::from_secs(120);

/// The poll schedule used while webhooks are configured: `(first poll after, largest spacing)`.
/// `None` when the provider is polled on its normal schedule.
pub fn backstop_schedule(limits: &adgate_generator::Limits) -> Option<(Duration, Duration)> {
    limits.push.webhooks.then(|| {
        let cap = limits
            .max_poll_interval
            .unwrap_or(limits.poll_interval)
            .mul_f64(BACKSTOP_CAP_FACTOR)
            .max(limits.lost_push_bound)
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
    // Jobs with a provider reference that ended recently. An `add` may be on its way with an
    // older, unfinished copy of the record: a push can complete a job between the commit of
    // its submit answer and the dispatcher's `add`, or between a poll's commit of "still
    // processing" and that poll's follow-up. Adding a finished job would keep its poll key
    // alive for ever (and Pictify's running-batch count with it, which then blocks every
    // new batch). Kept for `FINISHED_TTL`, far longer than any such window.
    finished: HashMap<Id, Instant>,
    finished_order: std::collections::VecDeque<(Instant, Id)>,
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
    pub(crate) wake: Notify,
    /// For batch-pollable providers, polls are aligned to a grid of poll intervals so that
    /// keys submitted at different moments share rounds and calls go out full.
    grid: Option<(Instant, Duration)>,
    /// The poll schedule when webhooks deliver completions (see [`backstop_schedule`]).
    backstop: Option<(Duration, Duration)>,
    /// Keys polled at `min_poll_interval` from the start, off the grid
    /// ([`adgate_generator::Generator::polled_fast`]).
    fast: Option<FastKeys>,
}

/// Which keys are polled fast, and how fast.
struct FastKeys {
    is_fast: Box<dyn Fn(&str) -> bool + Send + Sync>,
    spacing: Duration,
}

impl std::fmt::Debug for FastKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastKeys")
            .field("spacing", &self.spacing)
            .finish_non_exhaustive()
    }
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
            fast: None,
        }
    }

    /// Poll the keys `is_fast` names at `limits.min_poll_interval`, first poll included.
    pub fn with_fast_keys(
        mut self,
        limits: &adgate_generator::Limits,
        is_fast: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.fast = Some(FastKeys {
            is_fast: Box::new(is_fast),
            spacing: limits.min_poll_interval,
        });
        self
    }

    fn fast_spacing(&self, key: &str) -> Option<Duration> {
        self.fast
            .as_ref()
            .filter(|f| (f.is_fast)(key))
            .map(|f| f.spacing)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Round `at` to the nearest grid tick (unchanged for providers polled key by key).
    /// Nearest, not up: a key polled just after tick T and rescheduled one interval later must
    /// land on T + interval, not on the tick after.
    pub(crate) fn align(&self, at: Instant) -> Instant {
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
        if inner.finished.contains_key(job_id) {
            // It ended while this add was on its way (see `Inner::finished`).
            return;
        }
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
            let fast = self.fast_spacing(key);
            let first_after = match (fast, self.backstop) {
                (Some(spacing), _) if !first_after.is_zero() => spacing,
                (_, Some((first, _))) if !first_after.is_zero() => first.max(first_after),
                _ => first_after,
            };
            let at = if fast.is_some() {
                Instant::now() + first_after
            } else {
                self.align(Instant::now() + first_after)
            };
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
        if job.provider_ref.is_some() && job.state.is_terminal() {
            Self::remember_finished(&mut inner, &job.id);
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

    fn remember_finished(inner: &mut Inner, job_id: &str) {
        let now = Instant::now();
        let id = Id::from(job_id);
        inner.finished.insert(id.clone(), now);
        inner.finished_order.push_back((now, id));
        while let Some((at, id)) = inner.finished_order.front().cloned() {
            if now.duration_since(at) < FINISHED_TTL {
                break;
            }
            inner.finished_order.pop_front();
            if inner.finished.get(&id) == Some(&at) {
                inner.finished.remove(&id);
            }
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

    /// Poll keys with a job still tracked: for Pictify, batches not yet terminal.
    pub fn key_count(&self) -> usize {
        self.lock().keys.len()
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

    pub(crate) fn next_due(&self) -> Option<Instant> {
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
    pub(crate) fn take_due(&self, now: Instant, coalesce: Duration) -> Vec<String> {
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
    pub(crate) fn reschedule(&self, key: &str, limits: &adgate_generator::Limits, round: Instant) {
        if let Some(spacing) = self.fast_spacing(key) {
            let mut inner = self.lock();
            Self::schedule(&mut inner, key, round.max(Instant::now()) + spacing);
            return;
        }
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
    pub(crate) fn set_streaming(&self, job_id: &str, on: bool) -> bool {
        let mut inner = self.lock();
        if on {
            inner.streamed.insert(job_id.to_owned()) && inner.streaming.insert(job_id.to_owned())
        } else {
            inner.streaming.remove(job_id)
        }
    }

    pub(crate) fn streaming_count(&self) -> usize {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use adgate_generator::JobState;

    fn job(id: &str, state: JobState) -> JobRecord {
        JobRecord {
            id: id.to_owned(),
            batch_id: "batch_1".to_owned(),
            provider: "p".to_owned(),
            spec: serde_json::json!({}),
            state,
            provider_ref: Some(format!("b1:{id}")),
            poll_key: Some("b1".to_owned()),
            group_key: None,
            correlation_key: None,
            attempt_id: Some(1),
            progress: None,
            outputs: Vec::new(),
            error: None,
            client_ref: String::new(),
            labels: Default::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
            completed_at_ms: None,
            deadline_at_ms: i64::MAX,
            revision: 2,
            provider_result: None,
            caller: "anonymous".into(),
            priority: 2,
            cost: None,
            traceparent: None,
        }
    }

    /// A push completes a job between the commit of its submit answer and the dispatcher's
    /// `add`, or while a poll that read it as still running is committing: the late add must
    /// not bring the finished job (and its poll key) back.
    #[tokio::test]
    async fn a_finished_job_is_never_added_back() {
        let t = TrackerState {
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            grid: None,
            backstop: None,
            fast: None,
        };
        // Ended before it was ever tracked.
        t.add(&job("a", JobState::Processing), Duration::ZERO);
        t.remove_job(&job("b", JobState::Completed));
        t.add(&job("b", JobState::Processing), Duration::ZERO);
        assert!(!t.has_job("b"));
        assert!(t.has_job("a"));
        // Tracked, ended, then a stale add.
        t.remove_job(&job("a", JobState::Completed));
        t.add(&job("a", JobState::Processing), Duration::ZERO);
        assert!(!t.has_job("a"));
        assert_eq!(t.key_count(), 0, "the batch key must end with its last job");
    }

    /// A fast key (a StaticAdsLab design template) is first polled, and then polled again,
    /// `min_poll_interval` apart and off the grid; other keys keep the provider's schedule.
    #[tokio::test(start_paused = true)]
    async fn fast_keys_are_polled_at_the_minimum_spacing() {
        let limits = adgate_generator::Limits {
            max_items_per_submit: 1,
            max_keys_per_poll: 80,
            min_poll_interval: Duration::from_secs(2),
            poll_interval: Duration::from_secs(4),
            max_poll_interval: None,
            first_poll_after: Duration::from_secs(30),
            budget: adgate_generator::RequestBudget {
                requests: 100,
                per: Duration::from_secs(60),
            },
            default_retry_after: Duration::from_secs(10),
            max_concurrent_submits: 8,
            idempotency: true,
            push: adgate_generator::PushChannels::default(),
            cancel: adgate_generator::CancelSupport::None,
            default_deadline: Duration::from_secs(900),
            typical_job_duration: Duration::from_secs(30),
            longest_job_duration: Duration::from_secs(60),
            lost_push_bound: adgate_generator::LOST_PUSH_BOUND,
            max_running_poll_keys: None,
            daily_budget: None,
            push_check_interval: None,
        };
        let t = TrackerState::new(&limits).with_fast_keys(&limits, |k| k.starts_with("dt_"));
        let start = Instant::now();
        let mut template = job("t", JobState::Processing);
        template.provider_ref = Some("dt_1".to_owned());
        template.poll_key = Some("dt_1".to_owned());
        t.add(&template, limits.first_poll_after);
        let mut ad = job("a", JobState::Processing);
        ad.provider_ref = Some("ia_1".to_owned());
        ad.poll_key = Some("ia_1".to_owned());
        t.add(&ad, limits.first_poll_after);
        let first = t.next_due().unwrap();
        assert_eq!(first - start, Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(2)).await;
        let due = t.take_due(Instant::now(), Duration::ZERO);
        assert_eq!(due, ["dt_1"]);
        t.reschedule("dt_1", &limits, Instant::now());
        assert_eq!(t.next_due().unwrap() - start, Duration::from_secs(4));
    }

    /// With webhooks, backstop polls grow apart up to the lost-push bound (a minute) however
    /// short the provider's poll spacing (Pictify's 5 s gave 9.5 s before the bound); a longer
    /// spacing keeps 1.9 × its own.
    #[test]
    fn backstop_polls_grow_to_the_lost_push_bound() {
        let limits = |poll_secs: u64, max_poll_secs: Option<u64>| adgate_generator::Limits {
            max_items_per_submit: 100,
            max_keys_per_poll: 1,
            min_poll_interval: Duration::from_secs(2),
            poll_interval: Duration::from_secs(poll_secs),
            max_poll_interval: max_poll_secs.map(Duration::from_secs),
            first_poll_after: Duration::from_secs(2),
            budget: adgate_generator::RequestBudget {
                requests: 100,
                per: Duration::from_secs(60),
            },
            default_retry_after: Duration::from_secs(60),
            max_concurrent_submits: 1,
            idempotency: true,
            push: adgate_generator::PushChannels {
                sse: false,
                webhooks: true,
            },
            cancel: adgate_generator::CancelSupport::None,
            default_deadline: Duration::from_secs(900),
            typical_job_duration: Duration::from_secs(10),
            longest_job_duration: Duration::from_secs(600),
            lost_push_bound: adgate_generator::LOST_PUSH_BOUND,
            max_running_poll_keys: None,
            daily_budget: None,
            push_check_interval: None,
        };
        let s = Duration::from_secs;
        assert_eq!(backstop_schedule(&limits(5, None)), Some((s(10), s(60))));
        assert_eq!(
            backstop_schedule(&limits(5, Some(30))),
            Some((s(10), s(60)))
        );
        assert_eq!(
            backstop_schedule(&limits(5, Some(60))),
            Some((s(10), s(114)))
        );
        let mut off = limits(5, None);
        off.push.webhooks = false;
        assert_eq!(backstop_schedule(&off), None);
        // A key found still running: 10 s, then doubling to the bound and staying there.
        let pictify = limits(5, None);
        let t = TrackerState::new(&pictify);
        let mut j = job("p", JobState::Processing);
        j.provider_ref = Some("b_1".to_owned());
        j.poll_key = Some("b_1".to_owned());
        t.add(&j, pictify.first_poll_after);
        let mut gaps = Vec::new();
        for _ in 0..5 {
            t.reschedule("b_1", &pictify, Instant::now());
            let interval = t.lock().keys.get("b_1").map(|k| k.interval);
            gaps.push(interval.unwrap_or_default().as_secs());
        }
        assert_eq!(gaps, [10, 20, 40, 60, 60]);
    }
}
