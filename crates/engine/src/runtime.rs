//! The engine's shared state: per provider ([`ProviderRuntime`]: adapter, limits, budget,
//! tracker, health) and for the whole engine ([`Shared`]: store, bus, clock, tasks), with the
//! operations every module uses — acquiring budget, committing and publishing changes,
//! starting tracked tasks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adgate_generator::{Generator, Limits, PushHealth};
use adgate_store::{BudgetGrant, JobPatch, JobRecord, Store};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::{Budget, Priority};
use crate::bus::Bus;
use crate::cache::RecordCache;
use crate::clock::Clock;
use crate::metrics::EngineMetrics;
use crate::schedule::TrackerState;

#[derive(Debug, Default)]
pub(crate) struct Health {
    pub reachable: bool,
    pub last_error: Option<String>,
}

/// Everything the engine keeps per provider.
pub(crate) struct ProviderRuntime {
    pub name: String,
    pub generator: Arc<dyn Generator>,
    pub limits: Limits,
    pub prices: crate::pricing::PriceOverrides,
    /// Who added work since the dispatcher last read the queue (caller, most urgent
    /// priority): when it goes before what a pass still holds, the pass re-reads the queue.
    pub arrivals: Mutex<HashMap<String, i64>>,
    /// When the dispatcher's recent submit requests went while more were queued behind them:
    /// the throughput it really achieves (the budget minus what polls take, and its own
    /// per-request store work), which start estimates use when it is below the budget's.
    pub backlog_sends: Mutex<BacklogPace>,
    pub budget: Budget,
    /// The provider's daily request cap ([`Limits::daily_budget`]), taken before `budget`.
    pub daily: Option<Budget>,
    /// The last [`Generator::check_push`] reading; `None` until one succeeded.
    pub push: Mutex<Option<PushHealth>>,
    pub submit_slots: Arc<Semaphore>,
    pub wake_dispatcher: Notify,
    /// The dispatcher holds jobs that wait for another job (`awaiting`): a job ending must
    /// wake it.
    pub awaiting: AtomicBool,
    pub tracker: TrackerState,
    /// The Submits of the jobs `tracker` follows, for its spans' links (traces on only).
    pub(crate) links: crate::trace::JobLinks,
    /// Gateway batches that hit an empty wallet at this provider: their unsent jobs fail.
    pub stopped_batches: Mutex<HashSet<String>>,
    pub health: Mutex<Health>,
    /// Wakes the inbox when a job became known that a kept event may be waiting for.
    pub inbox_wake: Notify,
    /// Held while correlated events are resolved to jobs: two deliveries for identical
    /// variables resolved at once would otherwise both take the same job. Held through the
    /// commit only when a delivery adds an image to a multi-image job (its outputs are
    /// rewritten whole); otherwise released before the commit, so that concurrent deliveries
    /// share one store commit instead of queueing one fsync each behind the lock (a provider
    /// that waits a bounded time for its answer, like Pictify, would count the wait as a
    /// failed delivery).
    pub correlating: tokio::sync::Mutex<()>,
    /// Jobs that correlated deliveries took and whose commit is still running, with how many
    /// outputs each took. Changed only under `correlating`, so a resolver never sees a job
    /// neither as taken here nor as finished in the store.
    pub correlation_claims: Mutex<HashMap<String, usize>>,
    /// Unfinished jobs this process stored, by the fingerprint an event would echo.
    pub(crate) exact_correlation: crate::correlation::ExactIndex,
    /// How long a job whose submit outcome is unknown waits for a callback (see
    /// `dispatcher::reconcile`): the provider's longest documented job plus a fifth.
    pub reconcile_window: Duration,
}

/// Gaps between the dispatcher's consecutive backlogged sends (see `achieved_spacing`).
#[derive(Debug, Default)]
pub(crate) struct BacklogPace {
    previous: Option<tokio::time::Instant>,
    gaps: std::collections::VecDeque<Duration>,
}

impl ProviderRuntime {
    /// Wait for one request's worth of budget. A single process keeps the budget in memory
    /// (with submit-before-poll priority); replicas sharing a database take it from the store,
    /// because a provider's limit is per API key, not per process.
    pub async fn acquire(&self, shared: &Shared, priority: Priority) -> Duration {
        // A daily cap first: a request that fits the minute but not the day must wait for
        // the day, and then still fit the minute.
        let mut waited = Duration::ZERO;
        if !shared.store.is_shared() {
            if let Some(daily) = &self.daily {
                waited += daily.acquire(priority).await;
            }
            return waited + self.budget.acquire(priority).await;
        }
        if let (Some(daily), Some(cap)) = (&self.daily, self.limits.daily_budget) {
            // A separate fleet-wide window under its own name.
            let key = format!("{}@daily", self.name);
            waited += self
                .take_shared(shared, &key, cap.requests, daily.window())
                .await;
        }
        waited
            + self
                .take_shared(
                    shared,
                    &self.name,
                    self.limits.budget.requests,
                    self.budget.window(),
                )
                .await
    }

    async fn take_shared(
        &self,
        shared: &Shared,
        key: &str,
        requests: u32,
        window: Duration,
    ) -> Duration {
        let started = tokio::time::Instant::now();
        let window_ms = window.as_millis() as i64;
        // One id for this request across its retries: its place in the fleet's line.
        let waiter = format!("{}-{:016x}", shared.replica_id, fastrand::u64(..));
        loop {
            let grant = shared
                .store
                .take_budget(key, requests, window_ms, shared.now_ms(), &waiter)
                .await;
            let wait = match grant {
                Ok(BudgetGrant::Granted) => {
                    if key == self.name {
                        shared
                            .metrics
                            .budget_granted(&self.name, &shared.replica_id);
                    }
                    return started.elapsed();
                }
                Ok(BudgetGrant::Wait(ms)) => Duration::from_millis(ms.clamp(1, 60_000) as u64),
                Err(e) => {
                    tracing::warn!(provider = %self.name, error = %e, "shared budget unavailable");
                    Duration::from_millis(500)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Stop every request to this provider for `wait` (fleet-wide on a shared store).
    pub fn block(&self, shared: &Arc<Shared>, wait: Duration) {
        self.budget.block_for(wait);
        if shared.store.is_shared() {
            let (store, name) = (shared.store.clone(), self.name.clone());
            let until = shared.now_ms() + wait.as_millis() as i64;
            shared.spawn(async move {
                if let Err(e) = store.block_budget(&name, until).await {
                    tracing::warn!(provider = %name, error = %e, "sharing a rate-limit block failed");
                }
            });
        }
    }

    /// Apply rate-limit headers: an exhausted window blocks until its reset.
    pub fn observe(&self, shared: &Arc<Shared>, rate: Option<adgate_generator::RateLimitSnapshot>) {
        if let Some(r) = rate
            && r.remaining == 0
        {
            self.block(shared, r.reset_after);
        }
    }

    /// A Submit stored jobs of `caller` at `priority` here.
    pub fn note_arrival(&self, caller: &str, priority: i64) {
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        let p = arrivals.entry(caller.to_owned()).or_insert(priority);
        *p = (*p).min(priority);
    }

    /// Whether work that arrived since `take_arrivals` would be served before what the
    /// current pass still holds: a caller the pass does not serve, or one of its callers at a
    /// more urgent priority than the pass's least urgent job of that caller. Jobs of a caller
    /// already served at no higher priority join the end of its queue anyway, so a stream of
    /// Submits from one caller never makes the dispatcher re-read the queue per request.
    pub fn arrivals_jump_queue(&self, pass: &HashMap<&str, i64>) -> bool {
        let arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        arrivals
            .iter()
            .any(|(caller, p)| pass.get(caller.as_str()).is_none_or(|least| p < least))
    }

    /// Forget arrivals: the dispatcher is about to read the queue.
    pub fn take_arrivals(&self) {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// A submit request got its budget; `backlogged` when more were queued behind it. Only
    /// the gaps between two sends of one backlog count (an idle gap says nothing of pace).
    pub fn record_backlog_send(&self, backlogged: bool) {
        let mut pace = self.backlog_sends.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        if let Some(previous) = pace.previous.take() {
            pace.gaps.push_back(now.duration_since(previous));
            // The recent pace only: the start of a backlog goes in a burst (see `budget`).
            while pace.gaps.len() > 64 {
                pace.gaps.pop_front();
            }
        }
        pace.previous = backlogged.then_some(now);
    }

    /// The mean spacing of submit requests the dispatcher achieved over recent backlogs, once
    /// there are enough of them to tell.
    pub fn achieved_spacing(&self) -> Option<Duration> {
        let pace = self.backlog_sends.lock().unwrap_or_else(|e| e.into_inner());
        if pace.gaps.len() < 16 {
            return None;
        }
        let sum: Duration = pace.gaps.iter().sum();
        Some(sum / u32::try_from(pace.gaps.len()).ok()?)
    }

    pub fn set_health(&self, reachable: bool, error: Option<String>) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.reachable = reachable;
        if error.is_some() || reachable {
            h.last_error = error;
        }
    }
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub bus: Bus,
    pub clock: Clock,
    pub providers: HashMap<String, Arc<ProviderRuntime>>,
    pub metrics: EngineMetrics,
    pub shutdown: CancellationToken,
    pub max_jobs_per_submit: usize,
    /// This process's identity among replicas sharing a database.
    pub replica_id: String,
    /// How long a replica's claim on a job lasts without renewal (shared stores only).
    pub lease: Duration,
    /// Wakes the takeover loop before its next pass (another replica released its lease).
    pub wake_takeover: Notify,
    /// False while the store cannot be reached; health reports NOT_SERVING.
    pub store_ok: AtomicBool,
    /// Recent records for `get_jobs` (off with a shared store: see the `cache` module).
    pub(crate) cache: RecordCache,
    /// See [`EngineConfig::kept_event_ttl`].
    pub kept_event_ttl: Duration,
    /// Every task the engine starts: shutdown waits for them before the store closes, so no
    /// commit is cut off by a closing store.
    pub(crate) tasks: TaskTracker,
    pub callers: crate::pricing::CallerPolicies,
    pub(crate) spend_locks: crate::pricing::SpendLocks,
    pub(crate) queue_plans: crate::eta::QueuePlans,
    /// See [`crate::EngineConfig::span_link`].
    pub span_link: Option<crate::SpanLink>,
    pub notify: Arc<crate::notify::NotifyConfig>,
    /// Wakes the outbound-webhook deliverer: a job finished, its events may be due.
    pub notify_wake: Arc<Notify>,
    /// Set by a redelivery: the deliverer re-reads which endpoints are disabled.
    pub notify_reload: AtomicBool,
    /// When the deadline sweeper should next look.
    pub(crate) deadline_alarm: crate::sweeper::DeadlineAlarm,
    /// Output custody, when on.
    pub(crate) custody: Option<Arc<crate::custody::CustodyRuntime>>,
}

impl Shared {
    /// Now, in the engine clock's Unix milliseconds (what the store records).
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The replica lease in milliseconds (shared stores).
    pub(crate) fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Commit patches, publish every change, and drop terminal jobs from their tracker.
    pub(crate) async fn commit(
        &self,
        patches: Vec<JobPatch>,
    ) -> Result<Vec<JobRecord>, adgate_store::StoreError> {
        if patches.is_empty() {
            return Ok(Vec::new());
        }
        let changed = self
            .store
            .apply(self.keep_outputs(patches), self.now_ms())
            .await?;
        self.publish(&changed);
        Ok(changed)
    }

    /// With custody on, patches that complete a job queue its outputs' copies (in the same
    /// transaction: see `JobPatch::keep_outputs`).
    pub(crate) fn keep_outputs(&self, mut patches: Vec<JobPatch>) -> Vec<JobPatch> {
        if self.custody.is_some() {
            for patch in &mut patches {
                patch.keep_outputs = true;
            }
        }
        patches
    }

    /// Publish committed changes (to watchers and the read cache) and drop terminal jobs from
    /// their tracker.
    pub(crate) fn publish(&self, changed: &[JobRecord]) {
        crate::trace::jobs_changed(self.span_link, changed);
        for rec in changed {
            if rec.state == adgate_generator::JobState::Completed
                && let Some(cost) = &rec.cost
            {
                self.metrics
                    .spend_micros
                    .get_or_create(&crate::metrics::SpendLabels {
                        provider: rec.provider.clone(),
                        caller: rec.caller.clone(),
                        unit: cost.unit.clone(),
                    })
                    .inc_by(u64::try_from(cost.micros).unwrap_or(0));
            }
            if rec.state.is_terminal() {
                self.notify_wake.notify_one();
            }
            if rec.state.is_terminal()
                && let Some(rt) = self.providers.get(&rec.provider)
            {
                rt.tracker.remove_job(rec);
                if rt.exact_correlation.enabled()
                    && let Some(fingerprint) = rt.generator.job_fingerprint(&rec.spec)
                {
                    rt.exact_correlation.remove(fingerprint, &rec.id);
                }
                rt.links.forget(&rec.id);
                // A batch may have ended: a submit waiting for a running slot re-checks; a
                // held job may wait for this one.
                if rt.limits.max_running_poll_keys.is_some()
                    || rt.awaiting.load(std::sync::atomic::Ordering::Relaxed)
                {
                    rt.wake_dispatcher.notify_one();
                }
            }
            if let Some(custody) = &self.custody
                && rec.state == adgate_generator::JobState::Completed
                && rec
                    .outputs
                    .iter()
                    .any(|o| o.custody.state == adgate_generator::CustodyState::Pending)
            {
                custody.wake.notify_one();
            }
            let rec = Arc::new(rec.clone());
            self.cache.changed(&rec);
            self.bus.publish(rec);
        }
    }

    /// Start an engine task, tracked so that [`Engine::stopped`] waits for it.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }
}

/// How long a job with an unknown submit outcome waits for its callback: the provider's longest
/// documented job plus a fifth for delivery retries and clock skew.
pub(crate) fn reconcile_window(limits: &Limits) -> Duration {
    limits.longest_job_duration + limits.longest_job_duration / 5
}
