//! Jobs that wait for another job of their Submit (a StaticAdsLab ad naming the design
//! template created with it; see `references`): held QUEUED, and never sent, until the awaited
//! job ends; then sent with the spec its adapter completes from that job, or failed
//! `DEPENDENCY_FAILED` when it failed or was cancelled. Decided from the store each time, so a
//! restart or another replica reaches the same answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use adgate_generator::{JobError, JobState, Progress};
use adgate_store::{JobPatch, JobRecord, StoreError};

use crate::codes;
use crate::references::{AWAITS_KEY, awaited_job, view};
use crate::runtime::{ProviderRuntime, Shared};

/// The progress step of a held job.
const WAITING_STEP: &str = "waiting_for_job";

async fn read_awaited(
    shared: &Shared,
    jobs: &[JobRecord],
) -> Result<HashMap<String, JobRecord>, StoreError> {
    let mut ids: Vec<String> = jobs
        .iter()
        .filter_map(|j| awaited_job(&j.spec).map(str::to_owned))
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(shared
        .store
        .get_jobs(&ids)
        .await?
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect())
}

fn dependency_failed(message: String) -> JobError {
    JobError::new(codes::DEPENDENCY_FAILED, message, false)
}

/// Of the QUEUED jobs a dispatcher pass claimed, those that may be sent now. Jobs whose
/// awaited job is still running are held (their progress says for what, once); jobs whose
/// awaited job failed, was cancelled or is gone are failed `DEPENDENCY_FAILED`.
pub(crate) async fn screen(
    shared: &Arc<Shared>,
    rt: &ProviderRuntime,
    jobs: Vec<JobRecord>,
) -> Vec<JobRecord> {
    if !jobs.iter().any(|j| awaited_job(&j.spec).is_some()) {
        return jobs;
    }
    // Before the read: a job that ends between the read and the dispatcher's idle must still
    // wake it (`Notify` keeps the permit).
    rt.awaiting.store(true, Ordering::Relaxed);
    let awaited = match read_awaited(shared, &jobs).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(provider = %rt.name, error = %e, "reading awaited jobs failed");
            // Send what waits for nothing; the others are looked at again next pass.
            return jobs
                .into_iter()
                .filter(|j| awaited_job(&j.spec).is_none())
                .collect();
        }
    };
    let mut ready = Vec::with_capacity(jobs.len());
    let mut patches = Vec::new();
    let mut held = false;
    for job in jobs {
        let Some(id) = awaited_job(&job.spec).map(str::to_owned) else {
            ready.push(job);
            continue;
        };
        match awaited.get(&id).map(|a| (a.state, a)) {
            Some((JobState::Completed, _)) => ready.push(job),
            Some((JobState::Failed | JobState::Cancelled, a)) => {
                let why = a
                    .error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_default();
                patches.push(JobPatch {
                    state: Some(JobState::Failed),
                    error: Some(dependency_failed(format!(
                        "job {id}, which this job waits for, ended {:?} ({why}); this job was \
                         not sent",
                        a.state
                    ))),
                    ..JobPatch::new(job.id.clone())
                });
            }
            Some(_) => {
                held = true;
                if job.progress.as_ref().is_none_or(|p| p.step != WAITING_STEP) {
                    patches.push(JobPatch {
                        progress: Some(Progress {
                            step: WAITING_STEP.to_owned(),
                            message: format!(
                                "waiting for job {id} to complete; nothing is sent before"
                            ),
                            percentage: 0.0,
                        }),
                        ..JobPatch::new(job.id.clone())
                    });
                }
            }
            None => patches.push(JobPatch {
                state: Some(JobState::Failed),
                error: Some(dependency_failed(format!(
                    "job {id}, which this job waits for, does not exist"
                ))),
                ..JobPatch::new(job.id.clone())
            }),
        }
    }
    // A finished job wakes this dispatcher (see `Shared::publish`) while anything is held.
    rt.awaiting.store(held, Ordering::Relaxed);
    if !patches.is_empty()
        && let Err(e) = shared.commit(patches).await
    {
        tracing::warn!(provider = %rt.name, error = %e, "recording waiting jobs failed");
    }
    ready
}

/// The specs to send: each waiting job's spec completed by its adapter from the awaited job
/// (and without the engine's key). Jobs that cannot be completed are failed here and left
/// out. A store failure is returned (the caller retries).
pub(crate) async fn prepare(
    shared: &Arc<Shared>,
    rt: &ProviderRuntime,
    jobs: Vec<JobRecord>,
) -> Result<Vec<JobRecord>, StoreError> {
    if !jobs.iter().any(|j| awaited_job(&j.spec).is_some()) {
        return Ok(jobs);
    }
    let awaited = read_awaited(shared, &jobs).await?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut failed = Vec::new();
    for mut job in jobs {
        let Some(id) = awaited_job(&job.spec).map(str::to_owned) else {
            out.push(job);
            continue;
        };
        let mut spec = job.spec.clone();
        if let Some(o) = spec.as_object_mut() {
            o.remove(AWAITS_KEY);
        }
        let bound = match awaited.get(&id) {
            Some(a) if a.state == JobState::Completed => rt.generator.bind_awaited(&spec, &view(a)),
            Some(a) => Err(format!("job {id} is {:?}, not COMPLETED", a.state)),
            None => Err(format!("job {id} does not exist")),
        };
        match bound {
            Ok(spec) => {
                job.spec = spec;
                out.push(job);
            }
            Err(why) => failed.push(JobPatch {
                state: Some(JobState::Failed),
                error: Some(dependency_failed(format!(
                    "this job waits for job {id}, which cannot serve: {why}; it was not sent"
                ))),
                ..JobPatch::new(job.id.clone())
            }),
        }
    }
    if !failed.is_empty() {
        shared.commit(failed).await?;
    }
    Ok(out)
}
