//! Queue positions and start estimates for QUEUED jobs, and completion estimates for
//! batches.
//!
//! A queued job's position is where the dispatcher's own fair-share order
//! ([`crate::fair::FairOrder`]) puts it among its provider's queued jobs: the jobs in the
//! requests before its request. Its start estimate is when that request fits the provider's
//! rolling request budget, replayed forward from the requests the window already holds
//! ([`crate::budget::Budget::projected_slots`]). Polls share the budget but yield to submits
//! (see `budget`), so they shift estimates only slightly; the daily cap of a provider that has
//! one is not modelled. Replicas on one PostgreSQL store share the budget through the store:
//! each replica projects from the steady rate (its own window is empty), which is exact while
//! the fleet is busy with this queue.
//!
//! The order is computed from a snapshot of the queue (ids, callers, priorities, ages; at most
//! [`MAX_QUEUE_SNAPSHOT`] jobs) taken at most once per [`SNAPSHOT_TTL`] per provider, however
//! many Submits and reads come meanwhile (jobs newer than the snapshot are placed after it), so
//! estimates cost a Submit no queue scan of its own. The budget's slots are projected with the
//! snapshot too: projecting them is linear in the queue's length, and a Submit that did it
//! itself cost O(backlog) (a 50,000-job backlog made each 1-job Submit replay 50,000 slots).
//! A snapshot that took long to build is kept longer ([`TTL_PER_BUILD`]), so snapshots of a
//! large backlog stay a small share of the CPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adgate_store::{JobRecord, QueuedEntry};
use tokio::time::Instant;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::fair::{Entry, FairOrder};
use crate::runtime::ProviderRuntime;

/// Queued jobs per provider that positions are computed over; jobs beyond are reported at
/// the end of this range.
pub const MAX_QUEUE_SNAPSHOT: usize = 200_000;
/// How long one snapshot of a provider's queue serves reads, at least.
const SNAPSHOT_TTL: Duration = Duration::from_millis(500);
/// A snapshot serves reads for this many times as long as it took to build, when that is
/// longer than [`SNAPSHOT_TTL`] (at most 1/40 of the time goes to rebuilding).
const TTL_PER_BUILD: u32 = 40;
/// Budget slots projected beyond the snapshot's own requests, for the jobs submitted while it
/// serves (further ones are extrapolated at the budget's steady rate).
const SLOTS_AFTER_SNAPSHOT: usize = 1024;

/// Estimates by job id. foldhash: BatchStatus looks up every job of the call here, and the
/// ids are the gateway's own, so SipHash's DoS resistance buys nothing.
pub type Estimates = HashMap<String, QueueEstimate, foldhash::fast::RandomState>;

/// Where a queued job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEstimate {
    /// Jobs of the provider the dispatcher sends before this one.
    pub position: i64,
    /// When the job is expected to be sent, in the engine clock's Unix milliseconds.
    pub start_ms: i64,
}

/// One provider's queue in fair-share order.
#[derive(Debug)]
struct Plan {
    /// Job id → (jobs ahead, requests ahead).
    at: HashMap<String, (i64, usize), foldhash::fast::RandomState>,
    /// The requests the queue needs in all.
    requests: usize,
    /// Offsets from `taken` of the provider's next request slots (`slot_offsets`).
    slots: Vec<Duration>,
    taken: Instant,
    /// How long this snapshot serves reads.
    ttl: Duration,
}

/// The engine's cache of per-provider plans.
#[derive(Debug, Default)]
pub(crate) struct QueuePlans {
    plans: Mutex<HashMap<String, Arc<Plan>>>,
    /// Held while a snapshot is rebuilt, so that the calls arriving when one expires (10,000
    /// watch streams opening, a burst of Submits) read the queue once, not once each.
    rebuild: tokio::sync::Mutex<()>,
    /// Snapshots built so far.
    built: AtomicU64,
}

impl Engine {
    /// Estimates for the QUEUED jobs among `records` (others are absent from the answer).
    pub async fn queue_estimates(&self, records: &[&JobRecord]) -> Result<Estimates, EngineError> {
        let queued: Vec<(&str, &str)> = records
            .iter()
            .filter(|r| r.state == adgate_generator::JobState::Queued)
            .map(|r| (r.id.as_str(), r.provider.as_str()))
            .collect();
        self.estimates_of_queued(&queued).await
    }

    /// The start and completion estimates of the jobs a Submit just created (`reply.job_ids`
    /// with `reply.created_providers`): all QUEUED, so nothing is read back from the store.
    pub async fn created_estimates(
        &self,
        reply: &crate::engine::SubmitReply,
    ) -> Result<(Option<i64>, Option<i64>), EngineError> {
        let queued: Vec<(&str, &str)> = reply
            .job_ids
            .iter()
            .zip(&reply.created_providers)
            .map(|(id, provider)| (id.as_str(), provider.as_str()))
            .collect();
        let estimates = self.estimates_of_queued(&queued).await?;
        let now = self.shared.now_ms();
        let start = estimates.values().map(|e| e.start_ms).max();
        let completion = queued
            .iter()
            .filter_map(|(id, provider)| {
                let start = estimates.get(*id).map_or(now, |e| e.start_ms);
                self.done_by(provider, start, now)
            })
            .max();
        Ok((start, completion))
    }

    /// Estimates for QUEUED jobs given as (id, provider).
    async fn estimates_of_queued(&self, jobs: &[(&str, &str)]) -> Result<Estimates, EngineError> {
        let mut out = Estimates::with_capacity_and_hasher(jobs.len(), Default::default());
        let mut providers: Vec<&str> = jobs.iter().map(|(_, p)| *p).collect();
        providers.sort_unstable();
        providers.dedup();
        for provider in providers {
            let Some(rt) = self.shared.providers.get(provider) else {
                continue;
            };
            let plan = self.plan(rt).await?;
            let now = self.shared.now_ms();
            let queued: Vec<&str> = jobs
                .iter()
                .filter(|(_, p)| *p == provider)
                .map(|(id, _)| *id)
                .collect();
            let per_request = rt.limits.max_items_per_submit.max(1);
            let since_snapshot = plan.taken.elapsed();
            // Once per call, not per job: it takes the provider's pace lock.
            let achieved = rt.achieved_spacing();
            let mut appended = 0usize;
            for id in queued {
                // A job newer than the snapshot goes after it, in the order asked (what a
                // Submit's own jobs are); for a caller not in the snapshot that is the
                // pessimistic side of its fair place.
                let (position, requests_ahead) = match plan.at.get(id) {
                    Some(at) => *at,
                    None => {
                        let at = (
                            i64::try_from(plan.at.len() + appended).unwrap_or(i64::MAX),
                            plan.requests + appended / per_request,
                        );
                        appended += 1;
                        at
                    }
                };
                let offset = slot_at(&plan.slots, rt, achieved, requests_ahead)
                    .saturating_sub(since_snapshot);
                out.insert(
                    id.to_owned(),
                    QueueEstimate {
                        position,
                        start_ms: now
                            .saturating_add(i64::try_from(offset.as_millis()).unwrap_or(i64::MAX)),
                    },
                );
            }
        }
        Ok(out)
    }

    /// When the jobs of a Submit not yet stored would start at the latest (validate_only):
    /// `jobs` as (provider, caller, priority, group), placed after everything queued.
    pub async fn estimate_unstored(
        &self,
        jobs: &[(String, String, i64, Option<String>)],
    ) -> Result<Option<i64>, EngineError> {
        let mut latest: Option<i64> = None;
        let mut providers: Vec<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
        providers.sort_unstable();
        providers.dedup();
        for provider in providers {
            let Some(rt) = self.shared.providers.get(provider) else {
                continue;
            };
            let mut queued = self
                .shared
                .store
                .queued_entries(provider, MAX_QUEUE_SNAPSHOT)
                .await?;
            let now = self.shared.now_ms();
            let first_new = queued.len();
            queued.extend(jobs.iter().filter(|j| j.0 == provider).enumerate().map(
                |(i, (_, caller, priority, group))| QueuedEntry {
                    id: format!("new-{i}"),
                    caller: caller.clone(),
                    priority: *priority,
                    created_at_ms: now,
                    group_key: group.clone(),
                },
            ));
            let plan = plan_of(&queued, rt, &self.shared.callers);
            let last = queued[first_new..]
                .iter()
                .filter_map(|e| plan.at.get(&e.id).map(|(_, req)| *req))
                .max()
                .unwrap_or(0);
            let slots = slot_offsets(rt, last + 1);
            let offset = slot_at(&slots, rt, rt.achieved_spacing(), last);
            let start = now.saturating_add(i64::try_from(offset.as_millis()).unwrap_or(i64::MAX));
            latest = Some(latest.map_or(start, |l: i64| l.max(start)));
        }
        Ok(latest)
    }

    /// When every job of `records` is expected to be terminal: queued jobs at their start
    /// plus the provider's typical job duration, running jobs at their start plus the same.
    /// `None` when all are terminal.
    pub fn completion_estimate(
        &self,
        records: &[&JobRecord],
        estimates: &Estimates,
    ) -> Option<i64> {
        let now = self.shared.now_ms();
        records
            .iter()
            .filter(|r| !r.state.is_terminal())
            .filter_map(|r| {
                let start = match estimates.get(&r.id) {
                    Some(e) => e.start_ms,
                    None => r.updated_at_ms.min(now),
                };
                self.done_by(&r.provider, start, now)
            })
            .max()
    }

    /// When a job of `provider` that starts at `start_ms` is expected to be done: its start
    /// plus the provider's typical job duration, never before `now_ms`.
    fn done_by(&self, provider: &str, start_ms: i64, now_ms: i64) -> Option<i64> {
        let typical = self.typical_job_ms(provider)?;
        Some(start_ms.saturating_add(typical).max(now_ms))
    }

    /// The provider's queue plan, from the cache when fresh.
    ///
    /// One call at a time rebuilds an expired snapshot. The others meanwhile get the expired
    /// one (estimates from it allow for its age, see `estimates_of_queued`), or, when there is
    /// none yet, wait for the rebuild and take its result.
    async fn plan(&self, rt: &ProviderRuntime) -> Result<Arc<Plan>, EngineError> {
        let cached = self.cached_plan(&rt.name);
        if let Some(p) = &cached
            && p.taken.elapsed() < p.ttl
        {
            return Ok(Arc::clone(p));
        }
        let plans = &self.shared.queue_plans;
        let _rebuilding = match (plans.rebuild.try_lock(), cached) {
            (Ok(guard), _) => guard,
            (Err(_), Some(stale)) => return Ok(stale),
            (Err(_), None) => {
                let guard = plans.rebuild.lock().await;
                if let Some(p) = self.cached_plan(&rt.name)
                    && p.taken.elapsed() < p.ttl
                {
                    return Ok(p);
                }
                guard
            }
        };
        let started = Instant::now();
        let queued = self
            .shared
            .store
            .queued_entries(&rt.name, MAX_QUEUE_SNAPSHOT)
            .await?;
        let mut plan = plan_of(&queued, rt, &self.shared.callers);
        plan.slots = slot_offsets(rt, plan.requests + SLOTS_AFTER_SNAPSHOT);
        plan.ttl = SNAPSHOT_TTL.max(started.elapsed().saturating_mul(TTL_PER_BUILD));
        let plan = Arc::new(plan);
        plans
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rt.name.clone(), plan.clone());
        plans.built.fetch_add(1, Ordering::Relaxed);
        Ok(plan)
    }

    fn cached_plan(&self, provider: &str) -> Option<Arc<Plan>> {
        self.shared
            .queue_plans
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(provider)
            .cloned()
    }

    /// How many queue snapshots (the reads behind start estimates) have been built.
    pub fn queue_snapshots_built(&self) -> u64 {
        self.shared.queue_plans.built.load(Ordering::Relaxed)
    }
}

fn plan_of(
    queued: &[QueuedEntry],
    rt: &ProviderRuntime,
    callers: &crate::pricing::CallerPolicies,
) -> Plan {
    let entries: Vec<Entry<'_>> = queued
        .iter()
        .map(|q| Entry {
            caller: &q.caller,
            priority: q.priority,
            created_at_ms: q.created_at_ms,
            group: q.group_key.as_deref(),
        })
        .collect();
    let order = FairOrder::plan(&entries, rt.limits.max_items_per_submit, callers, None);
    let mut at = HashMap::with_capacity_and_hasher(queued.len(), Default::default());
    let mut ahead: i64 = 0;
    for (request, chunk) in order.iter().enumerate() {
        for &i in chunk {
            at.insert(queued[i].id.clone(), (ahead, request));
        }
        ahead += i64::try_from(chunk.len()).unwrap_or(i64::MAX);
    }
    Plan {
        at,
        requests: order.len(),
        slots: Vec::new(),
        taken: Instant::now(),
        ttl: SNAPSHOT_TTL,
    }
}

/// Offsets from now of the next `count` request slots of the provider's budget (single
/// process: its own rolling window; replicas: the steady rate).
fn slot_offsets(rt: &ProviderRuntime, count: usize) -> Vec<Duration> {
    // Bounded: beyond this the steady rate extrapolates (`slot_at`).
    rt.budget.projected_slots(count.min(100_000))
}

/// The offset of request `n` (0-based) ahead: the budget's projection, or the pace the
/// dispatcher recently achieved under a backlog when that is slower (`achieved`, the
/// provider's [`ProviderRuntime::achieved_spacing`]).
fn slot_at(
    slots: &[Duration],
    rt: &ProviderRuntime,
    achieved: Option<Duration>,
    n: usize,
) -> Duration {
    let achieved = achieved
        .map(|s| s.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX)))
        .unwrap_or_default();
    if let Some(d) = slots.get(n) {
        return (*d).max(achieved);
    }
    let per = rt.limits.budget.per / rt.limits.budget.requests.max(1);
    let last = slots.last().copied().unwrap_or_default();
    let extra = u32::try_from(n.saturating_sub(slots.len()) + 1).unwrap_or(u32::MAX);
    (last + per.saturating_mul(extra)).max(achieved)
}
