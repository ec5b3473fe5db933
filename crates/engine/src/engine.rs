//! The [`Engine`] handle: what the server calls, plus start-up and the deadline sweeper.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adgate_generator::{FieldViolation, Generator, Limits};
use adgate_store::{JobRecord, NewJob, NewSubmission, Store, SubmitOutcome};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::Budget;
use crate::bus::{Bus, Watch};
use crate::cache::RecordCache;
use crate::clock::Clock;
use crate::error::EngineError;
use crate::events;
use crate::metrics::{EngineMetrics, ProviderLabels, StateLabels};
use crate::pricing::{self, CallerPolicies, PriceOverrides, SpendLocks};
use crate::runtime::{Health, ProviderRuntime, Shared, reconcile_window};
use crate::schedule::TrackerState;
use crate::sweeper::sweep_deadlines;
use crate::{dispatcher, replica, tracker};

/// One configured provider: its adapter and the limits to drive it by (the adapter's
/// documented defaults with configuration overrides applied).
pub struct ProviderSetup {
    pub generator: Arc<dyn Generator>,
    pub limits: Limits,
    /// The operator's price settings (TOML); default = the adapter's documented prices.
    pub prices: PriceOverrides,
}

pub struct EngineConfig {
    pub providers: Vec<ProviderSetup>,
    /// How often the deadline sweeper runs.
    pub sweep_interval: Duration,
    /// Cap on jobs one Submit may carry.
    pub max_jobs_per_submit: usize,
    /// Lease on claimed jobs when replicas share the store: a replica that dies loses its
    /// jobs to the others this long after its last renewal.
    pub lease: Duration,
    /// A stable identity among replicas (e.g. a StatefulSet pod name): restarted under it, a
    /// replica takes its own jobs back at once. `None` = a fresh random id per start.
    pub replica_id: Option<String>,
    /// How long a provider event that matched no job is kept for its job to become known.
    pub kept_event_ttl: Duration,
    /// How often each provider's inbox of kept events is looked at without being woken.
    pub inbox_interval: Duration,
    /// How long the store keeps terminal jobs, request ids and delivery ids.
    pub retention: crate::Retention,
    /// Weights and spend limits of named callers.
    pub callers: CallerPolicies,
    /// Links the engine's spans to the Submit that created a job (see [`crate::trace`]);
    /// `None`: no links.
    pub span_link: Option<crate::SpanLink>,
    /// Outbound webhooks (endpoints, secrets, retries).
    pub notify: crate::notify::NotifyConfig,
    /// Output custody (copies of completed outputs); `None`: off.
    pub custody: Option<crate::CustodyConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            sweep_interval: Duration::from_secs(1),
            max_jobs_per_submit: 10_000,
            lease: Duration::from_secs(10),
            replica_id: None,
            kept_event_ttl: Duration::from_secs(24 * 3600),
            inbox_interval: Duration::from_secs(1),
            retention: crate::Retention::default(),
            callers: CallerPolicies::default(),
            span_link: None,
            notify: crate::notify::NotifyConfig::default(),
            custody: None,
        }
    }
}

/// One job in a Submit.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub provider: String,
    pub spec: Value,
    pub client_ref: String,
    pub labels: BTreeMap<String, String>,
    /// Overrides the provider's default deadline.
    pub deadline: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubmitCommand {
    pub request_id: Option<String>,
    pub jobs: Vec<JobRequest>,
    /// Who submits (recorded on the batch and its jobs; fair share and spend limits).
    pub caller: String,
    /// 1 interactive, 2 normal, 3 bulk: order among the caller's own queued jobs.
    pub priority: i64,
    /// The caller's W3C trace context, kept so later provider calls link back to it.
    pub traceparent: Option<String>,
    /// AIP-163: validate and estimate only; store and send nothing.
    pub validate_only: bool,
    /// An endpoint named in the Submit and its event filter, as [`Engine::check_notify`]
    /// accepted them.
    pub notify: Option<(String, i64)>,
}

impl SubmitCommand {
    /// A Submit of `jobs` by the anonymous caller at normal priority.
    pub fn new(request_id: Option<String>, jobs: Vec<JobRequest>) -> Self {
        Self {
            request_id,
            jobs,
            caller: adgate_store::ANONYMOUS.to_owned(),
            priority: adgate_store::DEFAULT_PRIORITY,
            traceparent: None,
            validate_only: false,
            notify: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitReply {
    /// Empty for `validate_only`.
    pub batch_id: String,
    pub job_ids: Vec<String>,
    /// True when this is the stored answer to an earlier identical request.
    pub replayed: bool,
    /// The jobs' estimated cost per unit (millionths).
    pub estimated_cost: Vec<(String, i64)>,
    /// The provider of each job in `job_ids`, for jobs this call created (all QUEUED when it
    /// returns): what their start estimates need, without reading them back. Empty when
    /// replayed or `validate_only`.
    pub created_providers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderStatus {
    pub name: String,
    pub limits: Limits,
    /// False after the last call failed to reach the provider or was refused for credentials.
    pub reachable: bool,
    pub last_error: Option<String>,
    /// Set when the provider works but cannot deliver everything (e.g. no webhooks).
    pub degraded_reason: Option<String>,
    pub in_flight: usize,
    /// With webhooks: (first backstop poll, largest backstop spacing) as really used.
    pub backstop: Option<(Duration, Duration)>,
    /// How long an unknown submit outcome is reconciled; `None` when it fails at once.
    pub reconcile_window: Option<Duration>,
    /// The last push-subscription check ([`adgate_generator::Generator::check_push`]).
    pub push: Option<adgate_generator::PushHealth>,
    /// Poll keys (Pictify batches) submitted and not yet terminal.
    pub running_poll_keys: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Applied now: `updated` jobs changed.
    Applied {
        updated: usize,
    },
    /// Some of it matched no job yet and is kept durably until its job becomes known.
    Kept {
        updated: usize,
        kept: usize,
    },
    Duplicate,
}

/// How long a start waits for a just-dead holder of its replica identity to be gone.
const IDENTITY_GRACE: Duration = Duration::from_secs(3);

/// Records the read API keeps in memory (single process): about 25 MB at most.
const READ_CACHE_JOBS: usize = 16_384;

/// Cheap-clone handle over the engine's shared state.
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field(
                "providers",
                &self.shared.providers.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Engine {
    /// Build the engine, resume every non-terminal job from the store, and start the
    /// per-provider dispatchers and trackers. Tasks stop when `shutdown` is cancelled.
    pub async fn start(
        store: Arc<dyn Store>,
        config: EngineConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, EngineError> {
        let shared_store = store.is_shared();
        let mut providers = HashMap::new();
        for setup in config.providers {
            let name = setup.generator.name().to_owned();
            let setup_limits = setup.limits.clone();
            let rt = ProviderRuntime {
                name: name.clone(),
                tracker: {
                    let g = setup.generator.clone();
                    TrackerState::new(&setup.limits)
                        .with_fast_keys(&setup.limits, move |k| g.polled_fast(k))
                },
                budget: Budget::new(setup.limits.budget),
                daily: setup.limits.daily_budget.map(Budget::unpaced),
                push: Mutex::new(None),
                submit_slots: Arc::new(Semaphore::new(setup.limits.max_concurrent_submits.max(1))),
                limits: setup.limits,
                generator: setup.generator,
                prices: setup.prices,
                wake_dispatcher: Notify::new(),
                arrivals: Mutex::new(HashMap::new()),
                backlog_sends: Mutex::new(Default::default()),
                stopped_batches: Mutex::new(HashSet::new()),
                health: Mutex::new(Health {
                    reachable: true,
                    last_error: None,
                }),
                inbox_wake: Notify::new(),
                correlating: tokio::sync::Mutex::new(()),
                correlation_claims: Mutex::new(HashMap::new()),
                exact_correlation: crate::correlation::ExactIndex::new(!shared_store),
                awaiting: AtomicBool::new(false),
                reconcile_window: reconcile_window(&setup_limits),
                links: crate::trace::JobLinks::default(),
            };
            providers.insert(name, Arc::new(rt));
        }
        let custody = match config.custody {
            Some(c) => Some(Arc::new(crate::custody::CustodyRuntime::new(c).map_err(
                |e| EngineError::Internal(format!("custody HTTP client: {e}")),
            )?)),
            None => None,
        };
        let engine = Self {
            shared: Arc::new(Shared {
                store,
                bus: Bus::default(),
                clock: Clock::new(),
                providers,
                metrics: EngineMetrics::default(),
                shutdown,
                max_jobs_per_submit: config.max_jobs_per_submit,
                replica_id: config.replica_id.unwrap_or_else(|| new_id("rep")),
                lease: config.lease,
                wake_takeover: Notify::new(),
                store_ok: AtomicBool::new(true),
                cache: RecordCache::new(if shared_store { 0 } else { READ_CACHE_JOBS }),
                kept_event_ttl: config.kept_event_ttl,
                tasks: TaskTracker::new(),
                callers: config.callers,
                spend_locks: SpendLocks::default(),
                queue_plans: Default::default(),
                span_link: config.span_link,
                notify: Arc::new(config.notify),
                notify_wake: Arc::new(Notify::new()),
                notify_reload: AtomicBool::new(false),
                deadline_alarm: Default::default(),
                custody,
            }),
        };
        // Before anything can finish: the transaction that finishes a job addresses these.
        engine
            .shared
            .store
            .set_notify_endpoints(engine.shared.notify.store_endpoints())
            .await?;
        if shared_store {
            // Replicas: claim nothing a live replica holds; orphans are taken over by lease.
            let s = &engine.shared;
            // Before anything is done under this identity: two live processes sharing one
            // would each take the other's jobs for its own.
            // A process that just died under this identity (kill -9, then a restart) may hold
            // its lock a moment longer, until the database has ended its session: retry,
            // bounded, before deciding that a live process holds it.
            let mut claimed = s.store.claim_identity(&s.replica_id).await?;
            let until = tokio::time::Instant::now() + IDENTITY_GRACE;
            while !claimed && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
                claimed = s.store.claim_identity(&s.replica_id).await?;
            }
            if !claimed {
                return Err(EngineError::ReplicaIdInUse(s.replica_id.clone()));
            }
            s.store
                .renew_leases(&s.replica_id, s.now_ms(), s.lease_ms())
                .await?;
            // A restart under a stable identity (after a crash) resumes its jobs now rather
            // than waiting for its old lease to lapse and another replica to take them.
            replica::adopt_own(s).await?;
            s.spawn(replica::renew_leases(s.clone()));
            s.spawn(replica::take_over_orphans(s.clone()));
            if let Some(feed) = s.store.change_feed().await? {
                s.spawn(replica::follow_feed(s.clone(), feed));
            }
        }
        for rt in engine.shared.providers.values() {
            if !shared_store {
                tracker::resume(&engine.shared, rt).await?;
                dispatcher::resume(&engine.shared, rt, None).await?;
            }
            engine
                .shared
                .spawn(dispatcher::run(engine.shared.clone(), rt.clone()));
            engine
                .shared
                .spawn(tracker::run(engine.shared.clone(), rt.clone()));
            if let Some(every) = rt.limits.push_check_interval {
                engine
                    .shared
                    .spawn(crate::push::run(engine.shared.clone(), rt.clone(), every));
            }
            // Events kept before a restart may be applicable now that jobs are resumed.
            rt.inbox_wake.notify_one();
            engine.shared.spawn(events::run_inbox(
                engine.shared.clone(),
                rt.clone(),
                config.inbox_interval,
            ));
        }
        engine.shared.spawn(crate::notify::run(
            engine.shared.clone(),
            engine.shared.notify.clone(),
            engine.shared.notify_wake.clone(),
        ));
        if let Some(custody) = &engine.shared.custody {
            engine
                .shared
                .spawn(crate::custody::run(engine.shared.clone(), custody.clone()));
        }
        engine.shared.spawn(sweep_deadlines(
            engine.shared.clone(),
            config.sweep_interval,
        ));
        engine.shared.spawn(crate::retention::run(
            engine.shared.clone(),
            config.retention,
        ));
        Ok(engine)
    }

    /// Resolves once no submit call is in flight. After shutdown began, a drain awaits this
    /// (bounded by its grace period) so that calls already on their way to a provider record
    /// the provider's answer before the store closes.
    pub async fn submits_idle(&self) {
        for rt in self.shared.providers.values() {
            let all = u32::try_from(rt.limits.max_concurrent_submits.max(1)).unwrap_or(u32::MAX);
            if let Ok(permits) = rt.submit_slots.acquire_many(all).await {
                drop(permits);
            }
        }
    }

    /// Hand this replica's jobs back to the fleet (a graceful stop): its lease lapses now, so
    /// live and starting replicas take them over at once. Call after shutdown was cancelled
    /// (the renewal loop has stopped) and submits are idle, before the store closes; a
    /// no-op on a single-process store.
    pub async fn release_leases(&self) -> Result<(), EngineError> {
        let s = &self.shared;
        if !s.store.is_shared() {
            return Ok(());
        }
        s.store.release_lease(&s.replica_id, s.now_ms()).await?;
        tracing::info!(replica = %s.replica_id, "released the lease on this replica's jobs");
        Ok(())
    }

    /// Resolves once every engine task has ended (after shutdown was cancelled): in-flight
    /// submits have recorded the provider's answer and no task will write to the store again,
    /// so it may be closed. Bounded by `within`; false when tasks were still running then.
    pub async fn stopped(&self, within: Duration) -> bool {
        self.shared.tasks.close();
        tokio::time::timeout(within, self.shared.tasks.wait())
            .await
            .is_ok()
    }

    /// The most jobs one Submit may carry.
    pub fn max_jobs_per_submit(&self) -> usize {
        self.shared.max_jobs_per_submit
    }

    /// False while the store cannot be reached (health reports NOT_SERVING).
    pub fn store_ok(&self) -> bool {
        self.shared.store_ok.load(Ordering::Relaxed)
    }

    pub fn replica_id(&self) -> &str {
        &self.shared.replica_id
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.shared.metrics
    }

    /// Where output custody keeps its copies; `None` while custody is off.
    pub fn output_store(&self) -> Option<&crate::OutputStore> {
        self.shared.custody.as_ref().map(|c| &c.config.store)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// What a job was billed by its provider's documented price: set once it COMPLETED (the
    /// documented providers bill only then); `None` otherwise or where no price is documented.
    pub fn cost(&self, rec: &JobRecord) -> Option<adgate_store::StoredCost> {
        if rec.state != adgate_generator::JobState::Completed {
            return None;
        }
        if let Some(cost) = &rec.cost {
            return Some(cost.clone());
        }
        // Stored before costs were: the provider's price now.
        let rt = self.shared.providers.get(&rec.provider)?;
        pricing::estimate(rt.generator.as_ref(), &rt.prices, &rec.spec)
    }

    /// The provider's grouping of a job (jobs of one group may share a submit request).
    pub fn group_key(&self, job: &JobRequest) -> Option<String> {
        self.shared
            .providers
            .get(&job.provider)?
            .generator
            .group_key(&job.spec)
    }

    /// The provider's typical job duration in milliseconds.
    pub fn typical_job_ms(&self, provider: &str) -> Option<i64> {
        let rt = self.shared.providers.get(provider)?;
        i64::try_from(rt.limits.typical_job_duration.as_millis()).ok()
    }

    /// Names of configured providers, sorted.
    pub fn provider_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.providers.keys().cloned().collect();
        v.sort();
        v
    }

    /// Check one job before anything is stored. Violations are relative to the provider spec.
    pub fn validate(&self, job: &JobRequest) -> Result<(), EngineError> {
        let rt = self
            .shared
            .providers
            .get(&job.provider)
            .ok_or_else(|| EngineError::ProviderNotConfigured(job.provider.clone()))?;
        rt.generator.validate(&job.spec).map_err(|v| {
            EngineError::Invalid(
                v.into_iter()
                    .map(|f| (0, job.provider.clone(), f))
                    .collect(),
            )
        })
    }

    /// Store the jobs durably (state QUEUED) and wake the dispatchers. Returns once the jobs
    /// are committed; provider calls happen in the background.
    /// Checks an endpoint named in a Submit by `caller`: the URL against the delivery policy
    /// (SSRF), the event names, and that a secret can sign for it. Violations are
    /// (field, description) under `notify`.
    pub fn check_notify(
        &self,
        caller: &str,
        url: &str,
        events: &[String],
    ) -> Result<(String, i64), Vec<(String, String)>> {
        let mut violations = Vec::new();
        let cfg = &self.shared.notify;
        if let Err(why) = crate::notify::target::check_url(url, cfg.policy) {
            violations.push(("notify.url".to_owned(), why));
        } else if cfg.url_secret(caller).is_none() {
            violations.push((
                "notify.url".to_owned(),
                "this gateway has no signing secret for outbound webhooks (notify.secret)"
                    .to_owned(),
            ));
        }
        let mask = match crate::notify::event_mask(events) {
            Ok(m) => m,
            Err(unknown) => {
                let i = events.iter().position(|e| *e == unknown).unwrap_or(0);
                violations.push((
                    format!("notify.events[{i}]"),
                    format!(
                        "unknown event {unknown:?}; expected one of job.completed, job.failed, \
                         job.cancelled, batch.completed"
                    ),
                ));
                0
            }
        };
        if violations.is_empty() {
            Ok((url.to_owned(), mask))
        } else {
            Err(violations)
        }
    }

    /// Queues every delivery of a batch's events again (same event ids) and switches their
    /// endpoints back on. How many deliveries were queued.
    pub async fn redeliver(&self, batch_id: &str) -> Result<u64, EngineError> {
        let queued = self
            .shared
            .store
            .redeliver_batch(batch_id, self.shared.now_ms())
            .await?
            .ok_or_else(|| EngineError::NotFound(batch_id.to_owned()))?;
        self.shared
            .notify_reload
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.notify_wake.notify_one();
        Ok(queued)
    }

    pub async fn submit(&self, cmd: SubmitCommand) -> Result<SubmitReply, EngineError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let mut violations: Vec<(usize, String, FieldViolation)> = Vec::new();
        for (i, job) in cmd.jobs.iter().enumerate() {
            match self.validate(job) {
                Ok(()) => {}
                Err(EngineError::Invalid(v)) => {
                    violations.extend(v.into_iter().map(|(_, p, f)| (i, p, f)));
                }
                Err(e) => return Err(e),
            }
        }
        if !violations.is_empty() {
            return Err(EngineError::Invalid(violations));
        }
        let mut cmd = cmd;
        self.bind_references(&mut cmd.jobs).await?;
        let now = self.shared.now_ms();
        // Only compared when a request id repeats: skip the hashing otherwise.
        let content_hash = match cmd.request_id {
            Some(_) => content_hash(&cmd),
            None => String::new(),
        };
        let ids: Vec<String> = cmd.jobs.iter().map(|_| new_id("job")).collect();
        self.bind_awaits(&mut cmd.jobs, &ids)?;
        let mut jobs = Vec::with_capacity(cmd.jobs.len());
        let mut touched = HashSet::new();
        for (job, id) in cmd.jobs.into_iter().zip(ids) {
            // validate() succeeded, so the provider exists.
            let Some(rt) = self.shared.providers.get(&job.provider) else {
                return Err(EngineError::ProviderNotConfigured(job.provider));
            };
            let deadline = job.deadline.unwrap_or(rt.limits.default_deadline);
            jobs.push(NewJob {
                id,
                group_key: rt.generator.group_key(&job.spec),
                correlation_key: rt.generator.correlation_key(&job.spec),
                deadline_at_ms: now.saturating_add(deadline.as_millis() as i64),
                cost: pricing::estimate(rt.generator.as_ref(), &rt.prices, &job.spec),
                provider: job.provider.clone(),
                spec: job.spec,
                client_ref: job.client_ref,
                labels: job.labels,
                priority: cmd.priority,
                traceparent: cmd.traceparent.clone(),
            });
            touched.insert(job.provider);
        }
        let mut per_provider: BTreeMap<String, u64> = BTreeMap::new();
        for j in &jobs {
            *per_provider.entry(j.provider.clone()).or_default() += 1;
        }
        let estimated_cost = pricing::sum_by_unit(
            jobs.iter()
                .filter_map(|j| j.cost.as_ref().map(|c| (c.unit.as_str(), c.micros))),
        );
        // Held from reading today's spend to committing the jobs that reserve more.
        let spend_lock = self.shared.spend_locks.of(&cmd.caller);
        let _spending = if self.has_limits(&cmd.caller) {
            Some(spend_lock.lock().await)
        } else {
            None
        };
        self.check_spend(&cmd.caller, &jobs, now).await?;
        if cmd.validate_only {
            return Ok(SubmitReply {
                batch_id: String::new(),
                job_ids: Vec::new(),
                replayed: false,
                estimated_cost,
                created_providers: Vec::new(),
            });
        }
        let created_providers: Vec<String> = jobs.iter().map(|j| j.provider.clone()).collect();
        let earliest_deadline = jobs.iter().map(|j| j.deadline_at_ms).min();
        // Computed before the jobs move into the store call, indexed once they are stored.
        let fingerprints: Vec<(&ProviderRuntime, u64, String)> = jobs
            .iter()
            .filter_map(|j| {
                let rt = self.shared.providers.get(&j.provider)?;
                if !rt.exact_correlation.enabled() {
                    return None;
                }
                Some((&**rt, rt.generator.job_fingerprint(&j.spec)?, j.id.clone()))
            })
            .collect();
        let outcome = self
            .shared
            .store
            .submit(NewSubmission {
                batch_id: new_id("bat"),
                caller: cmd.caller.clone(),
                content_hash,
                request_id: cmd.request_id,
                jobs,
                now_ms: now,
                notify: (cmd.notify.is_some() || self.shared.notify.has_endpoints(&cmd.caller))
                    .then(|| adgate_store::BatchNotify {
                        url: cmd.notify.clone(),
                    }),
            })
            .await?;
        match outcome {
            SubmitOutcome::Created { batch_id, job_ids } => {
                if let Some(at) = earliest_deadline {
                    self.shared.deadline_alarm.arm(at);
                }
                for (rt, fingerprint, id) in &fingerprints {
                    rt.exact_correlation.insert(*fingerprint, id);
                }
                for (provider, n) in &per_provider {
                    self.shared
                        .metrics
                        .submitted
                        .get_or_create(&crate::metrics::CallerLabels {
                            provider: provider.clone(),
                            caller: cmd.caller.clone(),
                        })
                        .inc_by(*n);
                }
                tracing::debug!(caller = %cmd.caller, batch = %batch_id, jobs = job_ids.len(),
                    "batch stored");
                crate::trace::jobs_submitted(&batch_id, &job_ids);
                for p in touched {
                    if let Some(rt) = self.shared.providers.get(&p) {
                        rt.note_arrival(&cmd.caller, cmd.priority);
                        rt.wake_dispatcher.notify_one();
                    }
                }
                Ok(SubmitReply {
                    batch_id,
                    job_ids,
                    replayed: false,
                    estimated_cost,
                    created_providers,
                })
            }
            SubmitOutcome::Replayed { batch_id, job_ids } => Ok(SubmitReply {
                batch_id,
                job_ids,
                replayed: true,
                estimated_cost,
                created_providers: Vec::new(),
            }),
            SubmitOutcome::Conflict => Err(EngineError::RequestIdConflict),
        }
    }

    fn has_limits(&self, caller: &str) -> bool {
        self.shared
            .callers
            .0
            .get(caller)
            .is_some_and(|p| !p.daily_limits.is_empty())
    }

    /// Refuses jobs that would take their caller past a daily spend limit at a provider.
    async fn check_spend(
        &self,
        caller: &str,
        jobs: &[NewJob],
        now: i64,
    ) -> Result<(), EngineError> {
        if !self.has_limits(caller) {
            return Ok(());
        }
        let mut wanted: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for job in jobs {
            if let Some(cost) = &job.cost {
                let e = wanted
                    .entry((job.provider.as_str(), cost.unit.as_str()))
                    .or_default();
                *e = e.saturating_add(cost.micros);
            }
        }
        for ((provider, unit), requested) in wanted {
            let Some(limit) = self.shared.callers.daily_limit(caller, provider) else {
                continue;
            };
            let spent = self
                .shared
                .store
                .spend_since(caller, provider, unit, pricing::day_start_ms(now))
                .await?;
            if spent.saturating_add(requested) > limit {
                tracing::info!(
                    caller,
                    provider,
                    unit,
                    limit_micros = limit,
                    spent_micros = spent,
                    requested_micros = requested,
                    "submit refused: daily spend limit"
                );
                return Err(EngineError::SpendLimit {
                    caller: caller.to_owned(),
                    provider: provider.to_owned(),
                    unit: unit.to_owned(),
                    limit_micros: limit,
                    spent_micros: spent,
                    requested_micros: requested,
                });
            }
        }
        Ok(())
    }

    /// Jobs in the order asked, plus the ids that are unknown: what the read API shows.
    /// Served from the read cache where it can be, from the store otherwise.
    pub async fn get_jobs(
        &self,
        ids: &[String],
    ) -> Result<(Vec<Arc<JobRecord>>, Vec<String>), EngineError> {
        let cache = &self.shared.cache;
        // Per-call maps over ids the gateway generated: foldhash, as in the cache.
        let mut found: HashMap<&str, Arc<JobRecord>, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(ids.len(), Default::default());
        let mut misses: Vec<String> = Vec::new();
        let mut epochs: HashMap<&str, u64, foldhash::fast::RandomState> = HashMap::default();
        for id in ids {
            if found.contains_key(id.as_str()) || epochs.contains_key(id.as_str()) {
                continue;
            }
            match cache.get(id) {
                Ok(r) => {
                    found.insert(id, r);
                }
                Err(epoch) => {
                    epochs.insert(id, epoch);
                    misses.push(id.clone());
                }
            }
        }
        if !misses.is_empty() {
            for r in self.shared.store.get_jobs(&misses).await? {
                let r = Arc::new(r);
                if let Some((id, epoch)) = epochs.get_key_value(r.id.as_str()) {
                    cache.fill(&r, *epoch);
                    found.insert(id, r);
                }
            }
        }
        let mut jobs = Vec::with_capacity(ids.len());
        let mut unknown = Vec::new();
        // A repeated id is answered once per occurrence.
        for id in ids {
            match found.get(id.as_str()) {
                Some(r) => jobs.push(Arc::clone(r)),
                None => unknown.push(id.clone()),
            }
        }
        Ok((jobs, unknown))
    }

    pub async fn batch_jobs(&self, batch_id: &str) -> Result<Option<Vec<JobRecord>>, EngineError> {
        Ok(self.shared.store.batch_jobs(batch_id).await?)
    }

    /// A page of jobs for ListJobs, straight from the store (the search needs its indexes;
    /// the read cache holds single jobs by id).
    pub async fn list_jobs(
        &self,
        filter: &adgate_store::JobFilter,
        after: Option<&adgate_store::PageKey>,
        limit: usize,
    ) -> Result<adgate_store::Page<JobRecord>, EngineError> {
        Ok(self.shared.store.list_jobs(filter, after, limit).await?)
    }

    /// A page of batches for ListBatches, with their counts per state and completed cost.
    pub async fn list_batches(
        &self,
        filter: &adgate_store::BatchFilter,
        after: Option<&adgate_store::PageKey>,
        limit: usize,
    ) -> Result<adgate_store::Page<adgate_store::BatchSummary>, EngineError> {
        Ok(self.shared.store.list_batches(filter, after, limit).await?)
    }

    /// Watch jobs: a snapshot first, then every change, ending when all are terminal.
    /// Watched jobs of a provider with a push stream get one (shared by all watchers).
    pub async fn watch(&self, job_ids: Vec<String>) -> Result<Watch, EngineError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let watch = self
            .shared
            .bus
            .watch(self.shared.store.clone(), job_ids.clone())
            .await?;
        tracker::stream_watched(&self.shared, &job_ids).await;
        Ok(watch)
    }

    /// Make every watcher re-read its jobs: changes may have been committed without passing
    /// through this process's bus (another replica, a reconnecting listener).
    pub fn resync_watchers(&self) {
        self.shared.bus.resync_all();
    }

    pub fn watcher_count(&self) -> usize {
        self.shared.bus.watcher_count()
    }

    pub fn providers(&self) -> Vec<ProviderStatus> {
        let mut out: Vec<ProviderStatus> = self
            .shared
            .providers
            .values()
            .map(|rt| {
                let h = rt.health.lock().unwrap_or_else(|e| e.into_inner());
                let push = rt.push.lock().unwrap_or_else(|e| e.into_inner()).clone();
                // A paused or missing subscription degrades the provider as much as a missing
                // secret does: its pushes stop and jobs finish only by polling.
                let degraded_reason = rt
                    .generator
                    .degraded_reason()
                    .or_else(|| push.as_ref().and_then(|p| p.degraded_reason()));
                ProviderStatus {
                    name: rt.name.clone(),
                    limits: rt.limits.clone(),
                    reachable: h.reachable,
                    last_error: h.last_error.clone(),
                    degraded_reason,
                    push,
                    running_poll_keys: rt.tracker.key_count(),
                    in_flight: rt.tracker.job_count(),
                    backstop: crate::schedule::backstop_schedule(&rt.limits),
                    reconcile_window: (!rt.limits.idempotency && rt.limits.push.webhooks)
                        .then_some(rt.reconcile_window),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Refresh the per-state job gauges from the store (called before a metrics scrape).
    pub async fn refresh_gauges(&self) {
        if let Ok(counts) = self.shared.store.count_by_state().await {
            self.shared.metrics.jobs.clear();
            for c in counts {
                self.shared
                    .metrics
                    .jobs
                    .get_or_create(&StateLabels {
                        provider: c.provider,
                        state: c.state.name().to_owned(),
                    })
                    .set(c.count as i64);
            }
        }
        for rt in self.shared.providers.values() {
            self.shared
                .metrics
                .in_flight
                .get_or_create(&ProviderLabels {
                    provider: rt.name.clone(),
                })
                .set(rt.tracker.job_count() as i64);
        }
        self.shared
            .metrics
            .watchers
            .set(self.shared.bus.watcher_count() as i64);
    }
}

/// `prefix_` + 28 lowercase hex characters: the creation time, then random.
pub(crate) fn new_id(prefix: &str) -> String {
    // Time first (milliseconds, 12 hex digits), then 64 random bits: ids created together sort
    // together, so a group of new jobs lands on a few B-tree pages of every index keyed by id
    // instead of one page per job (random ids made each commit write several pages per job to
    // the WAL). 64 random bits keep ids unguessable and collisions within one millisecond out
    // of reach (n^2 / 2^65: 3e-10 for 100,000 ids created in the same millisecond).
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        & 0xffff_ffff_ffff;
    format!("{prefix}_{ms:012x}{:016x}", fastrand::u64(..))
}

/// Hash of a Submit's content, compared when an AIP-155 request id repeats.
fn content_hash(cmd: &SubmitCommand) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for job in &cmd.jobs {
        // serde_json's Map is ordered (BTreeMap) without the preserve_order feature, so equal
        // specs serialise identically.
        for part in [
            cmd.caller.as_str(),
            job.provider.as_str(),
            &job.spec.to_string(),
            &job.client_ref,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        for (k, v) in &job.labels {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        h.update(
            job.deadline
                .map_or(u128::MAX, |d| d.as_millis())
                .to_le_bytes(),
        );
    }
    // Only when set, so requests stored before notify existed hash as they did.
    if let Some((url, events)) = &cmd.notify {
        h.update(b"notify");
        h.update((url.len() as u64).to_le_bytes());
        h.update(url.as_bytes());
        h.update(events.to_le_bytes());
    }
    hex::encode(h.finalize())
}
