//! Several replicas on one shared store (SPEC §8).
//!
//! Each replica owns the jobs it claimed, under a lease it renews every third of the lease
//! time. A replica that dies stops renewing; once its leases lapse, any live replica takes its
//! jobs over: in-flight jobs are tracked again, and open submit attempts are resent with their
//! idempotency key — or failed with `UNKNOWN_OUTCOME` where the provider takes none, exactly as
//! after a single-process crash. Watchers on every replica follow the store's change feed.
//!
//! A replica that stops gracefully releases its lease instead (`Engine::release_leases`) and
//! the store announces it on the feed, so live replicas take its jobs at once rather than at
//! their next pass. A starting replica claims orphans in its first pass, and under a stable
//! identity (`EngineConfig::replica_id`) first takes back the jobs it owned before a crash.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use adgate_store::{FeedEvent, JobRecord};
use tokio::sync::mpsc;

use crate::dispatcher;
use crate::error::EngineError;
use crate::metrics::ReplicaLabels;
use crate::runtime::{ProviderRuntime, Shared};

pub(crate) async fn renew_leases(shared: Arc<Shared>) {
    let every = (shared.lease / 3).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let renewed = shared
            .store
            .renew_leases(&shared.replica_id, shared.now_ms(), shared.lease_ms())
            .await;
        match renewed {
            Ok(held) => {
                shared.store_ok.store(true, Ordering::Relaxed);
                shared
                    .metrics
                    .leases
                    .get_or_create(&ReplicaLabels {
                        replica: shared.replica_id.clone(),
                    })
                    .set(held as i64);
            }
            Err(e) => {
                // Without a database this replica can neither keep nor claim work; health
                // turns NOT_SERVING and the takeover loop stops claiming until it is back.
                shared.store_ok.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "renewing leases failed");
            }
        }
    }
}

/// Start tracking jobs this replica has just come to own: those with a provider reference are
/// polled at once, open attempts are resent (or failed where the provider takes no key).
async fn adopt(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
    jobs: &[JobRecord],
) -> Result<(), EngineError> {
    let mut attempted = HashSet::new();
    for job in jobs {
        if job.provider_ref.is_some() {
            rt.tracker.add(job, Duration::ZERO);
        } else if job.attempt_id.is_some() {
            attempted.insert(job.id.clone());
        }
    }
    let resumed = if attempted.is_empty() {
        Ok(())
    } else {
        dispatcher::resume(shared, rt, Some(&attempted)).await
    };
    rt.wake_dispatcher.notify_one();
    resumed
}

/// At start-up: the jobs a previous run under this replica id left (a crash, then a restart
/// with the same `ADGATE_REPLICA_ID`), resumed like orphans taken over.
pub(crate) async fn adopt_own(shared: &Arc<Shared>) -> Result<(), EngineError> {
    for rt in shared.providers.values() {
        let jobs = shared
            .store
            .claim_own(
                &rt.name,
                &shared.replica_id,
                shared.now_ms(),
                shared.lease_ms(),
            )
            .await?;
        if jobs.is_empty() {
            continue;
        }
        tracing::info!(provider = %rt.name, jobs = jobs.len(), "took back this replica's jobs");
        adopt(shared, rt, &jobs).await?;
    }
    Ok(())
}

pub(crate) async fn take_over_orphans(shared: Arc<Shared>) {
    const PASS: usize = 1000;
    let every = (shared.lease / 2).max(Duration::from_millis(50));
    loop {
        if shared.store_ok.load(Ordering::Relaxed) {
            for rt in shared.providers.values() {
                // A full page means more may be waiting (a released replica's whole book):
                // take it all now rather than a page per pass.
                loop {
                    let claimed = shared
                        .store
                        .claim_orphans(
                            &rt.name,
                            &shared.replica_id,
                            shared.now_ms(),
                            shared.lease_ms(),
                            PASS,
                        )
                        .await;
                    let jobs = match claimed {
                        Ok(jobs) => jobs,
                        Err(e) => {
                            tracing::warn!(provider = %rt.name, error = %e, "claiming orphans failed");
                            break;
                        }
                    };
                    if jobs.is_empty() {
                        break;
                    }
                    tracing::info!(provider = %rt.name, jobs = jobs.len(), "took over jobs");
                    if let Err(e) = adopt(&shared, rt, &jobs).await {
                        tracing::warn!(provider = %rt.name, error = %e, "resuming attempts failed");
                    }
                    if jobs.len() < PASS || shared.shutdown.is_cancelled() {
                        break;
                    }
                }
            }
        }
        // The first pass runs at once (a starting replica picks up what a stopped one left);
        // then every half lease, or as soon as a replica says goodbye.
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.wake_takeover.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Publish changes other replicas committed, and drop jobs they finished from our trackers.
pub(crate) async fn follow_feed(shared: Arc<Shared>, mut feed: mpsc::Receiver<FeedEvent>) {
    loop {
        let event = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            e = feed.recv() => e,
        };
        match event {
            None => {
                shared.bus.resync_all();
                return;
            }
            Some(FeedEvent::Gap) => {
                shared.bus.resync_all();
                // A goodbye may be among what was missed.
                shared.wake_takeover.notify_one();
            }
            Some(FeedEvent::Released { replica }) => {
                if replica != shared.replica_id {
                    shared.wake_takeover.notify_one();
                }
            }
            Some(FeedEvent::Changed { job_id, .. }) => {
                let tracked = shared
                    .providers
                    .values()
                    .any(|rt| rt.tracker.has_job(&job_id));
                if !tracked && !shared.bus.is_watched(&job_id) {
                    continue;
                }
                let Ok(records) = shared.store.get_jobs(std::slice::from_ref(&job_id)).await else {
                    shared.bus.resync_all();
                    continue;
                };
                for rec in records {
                    if rec.state.is_terminal()
                        && let Some(rt) = shared.providers.get(&rec.provider)
                    {
                        rt.tracker.remove_job(&rec);
                    }
                    let rec = Arc::new(rec);
                    shared.cache.changed(&rec);
                    shared.bus.publish(rec);
                }
            }
        }
    }
}
