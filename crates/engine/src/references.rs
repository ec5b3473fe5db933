//! Jobs that build on other jobs.
//!
//! - On a finished job (a StaticAdsLab edit names the editable ad it edits): at Submit, each
//!   referenced job is read once and its adapter says whether it may be built on and what the
//!   provider needs from it. A refusal refuses the whole Submit with FAILED_PRECONDITION before
//!   anything is stored, so nothing is ever sent for it.
//! - On a job of the same Submit (an ad naming a design template created with it): resolved
//!   here to that job's id, stored in the spec under [`AWAITS_KEY`]; the dispatcher holds the
//!   job until the awaited one ends (`awaiting::screen`).

use std::collections::HashMap;

use adgate_generator::{FieldViolation, JobView};
use serde_json::Value;

use crate::engine::{Engine, JobRequest};
use crate::error::EngineError;

impl Engine {
    /// Bind every job of a Submit that references another job; `jobs` are rewritten to the
    /// specs to store.
    pub(crate) async fn bind_references(&self, jobs: &mut [JobRequest]) -> Result<(), EngineError> {
        let mut wanted: Vec<(usize, String)> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            let Some(rt) = self.shared.providers.get(&job.provider) else {
                continue;
            };
            if let Some(id) = rt.generator.referenced_job(&job.spec) {
                wanted.push((i, id));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<String> = wanted.iter().map(|(_, id)| id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let found: HashMap<String, adgate_store::JobRecord> = self
            .shared
            .store
            .get_jobs(&ids)
            .await?
            .into_iter()
            .map(|j| (j.id.clone(), j))
            .collect();
        for (i, id) in wanted {
            let job = &mut jobs[i];
            let Some(rt) = self.shared.providers.get(&job.provider) else {
                continue;
            };
            let Some(target) = found.get(&id) else {
                return Err(EngineError::FailedPrecondition(format!(
                    "jobs[{i}] builds on job {id}, which does not exist"
                )));
            };
            job.spec = rt
                .generator
                .bind_reference(&job.spec, &view(target))
                .map_err(|why| EngineError::FailedPrecondition(format!("jobs[{i}]: {why}")))?;
        }
        Ok(())
    }
}

/// The spec key, owned by the engine, holding the id of the job of the same Submit that this
/// one waits for. Removed before the spec reaches the adapter.
pub(crate) const AWAITS_KEY: &str = "awaits_job";

/// What an adapter sees of a job another job builds on.
pub(crate) fn view(rec: &adgate_store::JobRecord) -> JobView<'_> {
    JobView {
        id: &rec.id,
        provider: &rec.provider,
        state: rec.state,
        provider_ref: rec.provider_ref.as_deref(),
        spec: &rec.spec,
        provider_result: rec.provider_result.as_ref(),
    }
}

/// The job a stored spec waits for.
pub(crate) fn awaited_job(spec: &Value) -> Option<&str> {
    spec.get(AWAITS_KEY).and_then(Value::as_str)
}

impl Engine {
    /// Resolve every "waits for the job with client_ref X of this Submit" to that job's id
    /// (`ids` are the ids the jobs will get, in order). A name that matches no other job of
    /// the Submit, or several, is an INVALID_ARGUMENT at the naming field.
    pub(crate) fn bind_awaits(
        &self,
        jobs: &mut [JobRequest],
        ids: &[String],
    ) -> Result<(), EngineError> {
        let waiting: Vec<(usize, String, String)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(i, job)| {
                let rt = self.shared.providers.get(&job.provider)?;
                let (path, name) = rt.generator.awaits(&job.spec)?;
                Some((i, path, name))
            })
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        // One index of client refs, not a scan of the Submit per waiting job: 10,000 ads
        // naming one template stay linear.
        let mut by_ref: HashMap<&str, Vec<usize>> = HashMap::new();
        for (j, job) in jobs.iter().enumerate() {
            by_ref.entry(job.client_ref.as_str()).or_default().push(j);
        }
        let mut violations = Vec::new();
        let mut resolved: Vec<(usize, String)> = Vec::new();
        for (i, path, name) in waiting {
            let job = &jobs[i];
            let Some(rt) = self.shared.providers.get(&job.provider) else {
                continue;
            };
            let matches: Vec<usize> = by_ref
                .get(name.as_str())
                .map(|v| v.iter().copied().filter(|j| *j != i).collect())
                .unwrap_or_default();
            match matches.as_slice() {
                // No chains (and so no cycles): the awaited job must not wait itself.
                [j] if rt.generator.awaits(&jobs[*j].spec).is_some() => violations.push((
                    i,
                    job.provider.clone(),
                    FieldViolation::new(
                        path,
                        format!("names jobs[{j}], which itself waits for another job"),
                    ),
                )),
                [j] if jobs[*j].provider == job.provider => resolved.push((i, ids[*j].clone())),
                [j] => violations.push((
                    i,
                    job.provider.clone(),
                    FieldViolation::new(
                        path,
                        format!(
                            "names jobs[{j}] (client_ref {name:?}), which is not a {} job",
                            job.provider
                        ),
                    ),
                )),
                [] => violations.push((
                    i,
                    job.provider.clone(),
                    FieldViolation::new(
                        path,
                        format!("no other job of this Submit has client_ref {name:?}"),
                    ),
                )),
                _ => violations.push((
                    i,
                    job.provider.clone(),
                    FieldViolation::new(
                        path,
                        format!("several jobs of this Submit have client_ref {name:?}"),
                    ),
                )),
            }
        }
        if !violations.is_empty() {
            return Err(EngineError::Invalid(violations));
        }
        for (i, id) in resolved {
            if let Some(o) = jobs[i].spec.as_object_mut() {
                o.insert(AWAITS_KEY.to_owned(), Value::String(id));
            }
        }
        Ok(())
    }
}
