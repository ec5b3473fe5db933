//! `adgate status ID…`: a batch (`bat_…`, by BatchStatus) or a job (`job_…`, by GetJob), as
//! counts and one line per job, or as the gateway's JSON with `--json`.

use serde_json::json;

use super::output::{self, Costs, state, state_name};
use super::pbjson;
use super::{Failure, StatusArgs};
use crate::pb;

const BATCH_PREFIX: &str = "bat_";
const JOB_PREFIX: &str = "job_";

pub fn check_batch_id(id: &str) -> Result<(), Failure> {
    if id.starts_with(BATCH_PREFIX) {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{id:?} is not a batch id (batch ids start with {BATCH_PREFIX})"
        )))
    }
}

pub async fn run(args: StatusArgs) -> Result<u8, Failure> {
    for id in &args.ids {
        if !id.starts_with(BATCH_PREFIX) && !id.starts_with(JOB_PREFIX) {
            return Err(Failure::usage(format!(
                "{id:?} is neither a batch id ({BATCH_PREFIX}…) nor a job id ({JOB_PREFIX}…)"
            )));
        }
    }
    let mut client = super::client(&args.conn)?;
    let mut all = Vec::new();
    for id in &args.ids {
        if id.starts_with(JOB_PREFIX) {
            let job = client
                .get_job(pb::GetJobRequest { job_id: id.clone() })
                .await
                .map_err(|st| Failure::rpc(&format!("GetJob {id}"), &st))?
                .into_inner()
                .job
                .unwrap_or_default();
            if args.conn.json {
                output::emit(&json!({"job": pbjson::job_json(&job)}));
            } else {
                job_details(&job);
            }
            all.push(job);
            continue;
        }
        let r = client
            .batch_status(pb::BatchStatusRequest {
                job_ids: Vec::new(),
                batch_id: id.clone(),
            })
            .await
            .map_err(|st| Failure::rpc(&format!("BatchStatus {id}"), &st))?
            .into_inner();
        if args.conn.json {
            output::emit(&json!({
                "batch_id": id,
                "status": pbjson::to_json(&r, "adgate.v1.BatchStatusResponse"),
            }));
        } else {
            let counts: Vec<String> = r
                .counts
                .iter()
                .map(|c| {
                    let s = pb::JobState::try_from(c.state).unwrap_or(pb::JobState::Unspecified);
                    format!("{} {}", c.count, state_name(s))
                })
                .collect();
            output::line(&format!(
                "{id}: {} jobs: {}; cost {}",
                r.jobs.len(),
                counts.join(", "),
                Costs::of(&r.jobs)
            ));
            for j in &r.jobs {
                output::line(&format!("  {}", output::job_line(j)));
            }
        }
        all.extend(r.jobs);
    }
    // As for watch: 1 when a shown job FAILED or was CANCELLED (running jobs count as fine).
    Ok(super::watch::exit_code(&all))
}

fn job_details(job: &pb::Job) {
    output::line(&format!("{}  {}", job.id, state_name(state(job))));
    let field = |name: &str, value: &str| {
        if !value.is_empty() {
            output::line(&format!("  {name:<16}{value}"));
        }
    };
    field("batch", &job.batch_id);
    field("client_ref", &job.client_ref);
    field("provider", &job.provider);
    field("provider_job_id", &job.provider_job_id);
    if let Some(p) = &job.progress {
        field(
            "progress",
            &format!("{} {:.0}% {}", p.step, p.percentage, p.message),
        );
    }
    if let Some(e) = &job.error {
        field("error", &format!("{}: {}", e.code, e.message));
    }
    if let Some(c) = &job.cost {
        let mut costs = Costs::default();
        costs.add(Some(c));
        field("cost", &costs.to_string());
    }
    for o in &job.outputs {
        field(
            "output",
            &format!(
                "{} {}x{} {} {}",
                o.format, o.width, o.height, o.mime_type, o.url
            ),
        );
    }
}
