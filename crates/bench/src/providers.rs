//! Provider traffic (issue 9): requests per job and 429s at each provider's documented limits,
//! read from the simulators' ledgers.

use std::time::Duration;

use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use tokio::time::Instant;

use crate::Res;
use crate::load;
use crate::proc::Proc;
use crate::report::Verdict;
use crate::scenarios::{Ctx, submit_call};
use crate::world::{self, ABYSSALE, PICTIFY, SAL, SimSpec, World, WorldSpec};

// ---- Provider traffic -----------------------------------------------------------------------

const PROVIDER_JOBS: u64 = 1000;
const PROVIDER_SCALE: f64 = 0.01;

pub async fn providers(ctx: &mut Ctx) -> Res<()> {
    // Documented job durations: StaticAdsLab 30–60 s; Pictify documents none (2–5 s per item
    // here); Abyssale documents none (the simulators' 30–60 s default).
    let sims = vec![
        SimSpec::new(SAL),
        SimSpec::new(PICTIFY).durations(Duration::from_secs(2), Duration::from_secs(5)),
        SimSpec::new(ABYSSALE),
    ];
    let spec = WorldSpec {
        sims,
        time_scale: PROVIDER_SCALE,
        webhooks: true,
        defer_sims: false,
    };
    let world = World::new(spec).await?;
    let gw = world.gateway().await?;
    let took = run_jobs(&gw, &[SAL, PICTIFY, ABYSSALE]).await?;
    for (name, target, limit) in [
        (SAL, "<= 1.2", 1.2),
        (PICTIFY, "<= 0.1", 0.1),
        (ABYSSALE, "<= 1.5 (callbacks)", 1.5),
    ] {
        provider_row(ctx, &world, name, target, limit, &took, "webhooks on")?;
    }
    drop(gw);
    drop(world);

    let spec = WorldSpec {
        sims: vec![SimSpec::new(ABYSSALE)],
        time_scale: PROVIDER_SCALE,
        webhooks: false,
        defer_sims: false,
    };
    let world = World::new(spec).await?;
    let gw = world.gateway().await?;
    let took = run_jobs(&gw, &[ABYSSALE]).await?;
    provider_row(
        ctx,
        &world,
        ABYSSALE,
        "<= 6 (polling only)",
        6.0,
        &took,
        "no webhooks",
    )?;
    Ok(())
}

struct RunResult {
    secs: f64,
    terminal: u64,
    completed: u64,
    total: u64,
}

async fn run_jobs(gw: &Proc, providers: &[&str]) -> Res<RunResult> {
    let ch = load::connect(&gw.grpc, 1).await?;
    let mut batches = Vec::new();
    for p in providers {
        for c in 0..PROVIDER_JOBS / 100 {
            let jobs = (0..100).map(|i| world::job_for(p, c * 100 + i)).collect();
            let reply = submit_call(ch[0].clone(), jobs)
                .await
                .ok_or("Submit failed")?;
            batches.push(reply.batch_id);
        }
    }
    let total = PROVIDER_JOBS * providers.len() as u64;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut client = GatewayServiceClient::new(ch[0].clone());
    loop {
        let (mut terminal, mut completed) = (0u64, 0u64);
        for b in &batches {
            let r = client
                .batch_status(pb::BatchStatusRequest {
                    job_ids: Vec::new(),
                    batch_id: b.clone(),
                })
                .await?
                .into_inner();
            for j in &r.jobs {
                match j.state() {
                    pb::JobState::Completed => {
                        completed += 1;
                        terminal += 1;
                    }
                    pb::JobState::Failed | pb::JobState::Cancelled => terminal += 1,
                    _ => {}
                }
            }
        }
        if terminal >= total || Instant::now() >= deadline {
            return Ok(RunResult {
                secs: started.elapsed().as_secs_f64(),
                terminal,
                completed,
                total,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn provider_row(
    ctx: &mut Ctx,
    world: &World,
    name: &str,
    target: &str,
    limit: f64,
    took: &RunResult,
    mode: &str,
) -> Res<()> {
    let h = world.sims.get(name).ok_or("no simulator")?;
    let requests = h.ledger.total_requests();
    let per_job = requests as f64 / PROVIDER_JOBS as f64;
    let n429 = h.ledger.count_429();
    let mut by: Vec<(String, u64)> = h.ledger.requests_by_endpoint().into_iter().collect();
    by.sort();
    let by: Vec<String> = by.iter().map(|(k, v)| format!("{k}={v}")).collect();
    ctx.report.row(
        "providers",
        &format!("{name} ({mode}): requests/job, 429s"),
        format!(
            "{per_job:.2} req/job, {n429} x 429 ({requests} requests: {}; all {}/{} terminal, {} completed, in {:.1} s at time_scale {PROVIDER_SCALE})",
            by.join(" "),
            took.terminal,
            took.total,
            took.completed,
            took.secs
        ),
        &format!("{target}; zero 429s"),
        Verdict::from(per_job <= limit && n429 == 0 && took.terminal == took.total),
    );
    Ok(())
}
