//! Output custody: copies of completed jobs' outputs, made before the providers' URLs expire.
//!
//! A job completed with custody on has its outputs marked PENDING and a row in the store's
//! custody queue, both in the completing transaction (see `JobPatch::keep_outputs`), so a
//! crash between completion and copy loses nothing. One worker per process claims due rows
//! (replicas split them, see `Store::claim_custody`), copies each PENDING output with
//! [`crate::custody_copy`], and records the results with `Store::finish_custody`: the job's
//! revision goes up and the change is published like any other, so watchers and BatchStatus
//! see custody progress. The job itself stays COMPLETED with the provider's URL whatever
//! happens to the copy.
//!
//! Failures are retried with exponential backoff and jitter. A URL answering 404/410 is the
//! provider's copy expiring: after [`CustodyConfig::expired_after`] such answers in a row the
//! output is FAILED with `OUTPUT_EXPIRED`. Too large is final at once (`OUTPUT_TOO_LARGE`).
//! Anything else is retried until [`CustodyConfig::retry_horizon`] after completion, then
//! `OUTPUT_UNREACHABLE`.

use std::sync::Arc;
use std::time::Duration;

use adgate_generator::{Custody, CustodyState, JobError, JobState, codes};
use adgate_store::{CustodyTask, CustodyWrite};
use tokio::sync::{Notify, Semaphore};

use crate::custody_copy::{CopyError, copy_output};
use crate::output_store::OutputStore;
use crate::runtime::Shared;

/// Output custody settings (the engine's side; the server builds the store from its config).
#[derive(Debug, Clone)]
pub struct CustodyConfig {
    pub store: OutputStore,
    /// Largest output copied; a larger one is FAILED with `OUTPUT_TOO_LARGE`.
    pub max_bytes: u64,
    /// One download (connect to last byte), and separately one write to the store.
    pub download_timeout: Duration,
    /// Copies made at once by this process.
    pub concurrency: usize,
    /// The first retry's delay; each further retry doubles it (with jitter) up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long after completion failed copies are retried before `OUTPUT_UNREACHABLE`.
    pub retry_horizon: Duration,
    /// 404/410 answers in a row that make an output `OUTPUT_EXPIRED`: a CDN may answer 404
    /// for a moment right after a render, so one answer is not yet proof of expiry.
    pub expired_after: u32,
    /// How often due retries are looked for when nothing wakes the worker.
    pub poll_interval: Duration,
}

impl CustodyConfig {
    /// The defaults, with `store` as the store.
    pub fn new(store: OutputStore) -> Self {
        Self {
            store,
            max_bytes: 64 * 1024 * 1024,
            download_timeout: Duration::from_secs(60),
            concurrency: 8,
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            retry_horizon: Duration::from_secs(6 * 3600),
            expired_after: 3,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// How long a claim keeps other replicas off a job: its copies, one after the other,
    /// each within the download timeout plus the store write, with room to spare.
    fn claim_lease(&self) -> Duration {
        (self.download_timeout * 8).max(Duration::from_secs(300))
    }

    /// The delay before retry number `attempt` (1 = the first retry): exponential, capped,
    /// and drawn from its upper half so that outputs failed together spread out.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        let full = self
            .retry_initial
            .saturating_mul(factor)
            .min(self.retry_max);
        full / 2 + full.mul_f64(fastrand::f64() / 2.0)
    }
}

/// Custody's running state.
pub(crate) struct CustodyRuntime {
    pub config: CustodyConfig,
    pub client: reqwest::Client,
    /// Woken when a job completes with outputs to copy.
    pub wake: Notify,
}

impl CustodyRuntime {
    pub fn new(config: CustodyConfig) -> Result<Self, reqwest::Error> {
        // Redirects are followed (CDNs redirect), a handful at most; no overall timeout here:
        // each copy bounds its own time.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(5))
            .connect_timeout(config.download_timeout)
            .build()?;
        Ok(Self {
            config,
            client,
            wake: Notify::new(),
        })
    }
}

/// The worker: claims due tasks and copies them, at most `concurrency` at once, until
/// shutdown. Copies cut off by shutdown stay queued (claimed; released at the next start).
pub(crate) async fn run(shared: Arc<Shared>, custody: Arc<CustodyRuntime>) {
    if let Err(e) = shared
        .store
        .release_custody(&shared.replica_id, shared.now_ms())
        .await
    {
        tracing::warn!(error = %e, "custody: releasing a previous run's claims failed");
    }
    let slots = Arc::new(Semaphore::new(custody.config.concurrency.max(1)));
    let lease_ms = i64::try_from(custody.config.claim_lease().as_millis()).unwrap_or(i64::MAX);
    while !shared.shutdown.is_cancelled() {
        let free = slots.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match shared
                .store
                .claim_custody(&shared.replica_id, shared.now_ms(), lease_ms, free)
                .await
            {
                Ok(tasks) => tasks,
                Err(e) => {
                    tracing::warn!(error = %e, "custody: claiming copies failed");
                    Vec::new()
                }
            }
        };
        let full = free > 0 && claimed.len() == free;
        for task in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (shared2, custody2) = (shared.clone(), custody.clone());
            shared.spawn(async move {
                let shutdown = shared2.shutdown.clone();
                tokio::select! {
                    () = copy_job(&shared2, &custody2, task) => {}
                    () = shutdown.cancelled() => {}
                }
                drop(permit);
                // A slot is free: more may be due.
                custody2.wake.notify_one();
            });
        }
        if full {
            continue;
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            () = custody.wake.notified() => {}
            () = tokio::time::sleep(custody.config.poll_interval) => {}
        }
    }
    // Copies cut off by the shutdown are due again at once (for a replica restarted under
    // the same identity, or on SQLite, the next start would do it; on PostgreSQL another
    // replica may take them now instead of when the claims run out). A copy that finished
    // meanwhile may be made twice: same key, same bytes, and only PENDING outputs take it.
    if let Err(e) = shared
        .store
        .release_custody(&shared.replica_id, shared.now_ms())
        .await
    {
        tracing::warn!(error = %e, "custody: releasing claims at shutdown failed");
    }
}

/// One task: copy the job's PENDING outputs and record what became of each.
async fn copy_job(shared: &Shared, custody: &CustodyRuntime, task: CustodyTask) {
    let job = match shared
        .store
        .get_jobs(std::slice::from_ref(&task.job_id))
        .await
    {
        Ok(mut jobs) => jobs.pop(),
        Err(e) => {
            tracing::warn!(job_id = %task.job_id, error = %e, "custody: reading the job failed");
            return; // the claim runs out and the task is due again
        }
    };
    let mut write = CustodyWrite {
        job_id: task.job_id.clone(),
        results: Vec::new(),
        retry_at_ms: None,
    };
    let attempt = task.attempts + 1;
    let cfg = &custody.config;
    let horizon_ms = i64::try_from(cfg.retry_horizon.as_millis()).unwrap_or(i64::MAX);
    let mut retry = false;
    if let Some(job) = job.filter(|j| j.state == JobState::Completed) {
        for (index, output) in job.outputs.iter().enumerate() {
            if output.custody.state != CustodyState::Pending {
                continue;
            }
            let key = OutputStore::key(&job.id, index);
            match copy_output(custody, &output.url, &key).await {
                Ok(copied) => {
                    record_stored(shared, &job.provider, copied.size_bytes);
                    write.results.push((
                        index,
                        Custody {
                            state: CustodyState::Stored,
                            key,
                            sha256: copied.sha256,
                            size_bytes: copied.size_bytes,
                            mime_type: copied.mime_type.to_owned(),
                            error: None,
                        },
                    ));
                }
                Err(e) => {
                    let past_horizon = shared.now_ms() - task.queued_at_ms >= horizon_ms;
                    let code = match &e {
                        CopyError::TooLarge { .. } => Some(codes::OUTPUT_TOO_LARGE),
                        CopyError::Gone(_) if attempt >= cfg.expired_after => {
                            Some(codes::OUTPUT_EXPIRED)
                        }
                        _ if past_horizon => Some(codes::OUTPUT_UNREACHABLE),
                        _ => None,
                    };
                    tracing::info!(
                        job_id = %job.id, index, attempt, error = %e, final = code.is_some(),
                        "custody: copy failed"
                    );
                    match code {
                        Some(code) => {
                            record_failed(shared, &job.provider, code);
                            write.results.push((
                                index,
                                Custody {
                                    state: CustodyState::Failed,
                                    error: Some(JobError::new(code, e.to_string(), false)),
                                    ..Custody::default()
                                },
                            ));
                        }
                        None => retry = true,
                    }
                }
            }
        }
    }
    if retry {
        let delay = i64::try_from(cfg.backoff(attempt).as_millis()).unwrap_or(i64::MAX);
        write.retry_at_ms = Some(shared.now_ms().saturating_add(delay));
    }
    match shared.store.finish_custody(write, shared.now_ms()).await {
        Ok(Some(changed)) => shared.publish(std::slice::from_ref(&changed)),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(job_id = %task.job_id, error = %e, "custody: recording copies failed")
        }
    }
}

fn record_stored(shared: &Shared, provider: &str, bytes: u64) {
    let labels = crate::metrics::ProviderLabels {
        provider: provider.to_owned(),
    };
    shared.metrics.custody_stored.get_or_create(&labels).inc();
    shared
        .metrics
        .custody_bytes
        .get_or_create(&labels)
        .inc_by(bytes);
}

fn record_failed(shared: &Shared, provider: &str, code: &str) {
    shared
        .metrics
        .custody_failed
        .get_or_create(&crate::metrics::CodeLabels {
            provider: provider.to_owned(),
            code: code.to_owned(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = OutputStore::open(&crate::output_store::OutputStoreSpec::Directory(
            dir.path().to_owned(),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = CustodyConfig {
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            ..CustodyConfig::new(store)
        };
        for _ in 0..100 {
            let first = cfg.backoff(1);
            assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2));
            let third = cfg.backoff(3);
            assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(8));
            let late = cfg.backoff(40);
            assert!(late >= Duration::from_secs(30) && late <= Duration::from_secs(60));
        }
    }
}
