//! What outbound webhooks carry: the job (or the batch) in the API's proto JSON mapping, as
//! grpcurl and every gRPC client's JSON printer show it.

use adgate_engine::JobRecord;
use adgate_engine::notify::Payloads;
use serde_json::Value;

use crate::cli::pbjson::to_json;
use crate::{convert, pb};

/// The server's [`Payloads`].
#[derive(Debug, Clone, Default)]
pub struct ApiPayloads {
    /// The HTTP listener's public base URL, which makes stored outputs' URLs absolute.
    outputs_base: String,
}

impl ApiPayloads {
    pub fn new(outputs_base: String) -> Self {
        Self { outputs_base }
    }
}

impl Payloads for ApiPayloads {
    fn job(&self, job: &JobRecord) -> Value {
        let job = convert::with_outputs_base(convert::job(job), &self.outputs_base);
        to_json(&job, "adgate.v1.Job")
    }

    fn batch(&self, batch_id: &str, jobs: &[JobRecord]) -> Value {
        let cost = adgate_engine::pricing::sum_by_unit(
            jobs.iter()
                .filter_map(|j| j.cost.as_ref().map(|c| (c.unit.as_str(), c.micros))),
        );
        let batch = pb::Batch {
            id: batch_id.to_owned(),
            caller: jobs.first().map(|j| j.caller.clone()).unwrap_or_default(),
            create_time: jobs.first().map(|j| convert::timestamp(j.created_at_ms)),
            job_count: i32::try_from(jobs.len()).unwrap_or(i32::MAX),
            counts: convert::state_counts(jobs),
            cost: convert::costs(&cost),
        };
        to_json(&batch, "adgate.v1.Batch")
    }
}
