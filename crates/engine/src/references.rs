//! Jobs that build on other jobs (a StaticAdsLab edit names the editable ad it edits): at
//! Submit, each referenced job is read once and its adapter says whether it may be built on
//! and what the provider needs from it. A refusal refuses the whole Submit with
//! FAILED_PRECONDITION before anything is stored, so nothing is ever sent for it.

use std::collections::HashMap;

use adgate_generator::JobView;

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
            let view = JobView {
                id: &target.id,
                provider: &target.provider,
                state: target.state,
                provider_ref: target.provider_ref.as_deref(),
                spec: &target.spec,
                provider_result: target.provider_result.as_ref(),
            };
            job.spec = rt
                .generator
                .bind_reference(&job.spec, &view)
                .map_err(|why| EngineError::FailedPrecondition(format!("jobs[{i}]: {why}")))?;
        }
        Ok(())
    }
}
