//! Issue 11's figures: Submit on PostgreSQL against SQLite with one and two replicas (ratios to
//! the echo and pgbench baselines of the same run; issue 16's target is the pgbench one), and
//! how long a dead replica's jobs take to be tracked by a survivor.

use std::time::Duration;

use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use tokio::time::Instant;

use crate::Res;
use crate::load::{self, CONNECTIONS, closed_loop};
use crate::pgbench::ensure_pgbench;
use crate::pgdb::PgDb;
use crate::proc::Proc;
use crate::report::Verdict;
use crate::scenarios::{
    CALLERS, Ctx, MEASURE, WARMUP, ensure_echo, pg_ratio, ratios, sandbox_spec, submit_call,
    tracked_jobs,
};
use crate::world::{self, SAL, SimSpec, World, WorldSpec};

/// Submit, one job per call, 64 callers spread over the given gateways.
async fn submit_load(gateways: &[&Proc]) -> Res<load::Stats> {
    let mut channels = Vec::new();
    for gw in gateways {
        channels.extend(load::connect(&gw.grpc, CONNECTIONS).await?);
    }
    Ok(
        closed_loop(&channels, CALLERS, WARMUP, MEASURE, |ch, caller, seq| {
            let job = world::sal_job(caller as u64 * 1_000_000 + seq);
            async move { submit_call(ch, vec![job]).await.is_some() }
        })
        .await,
    )
}

pub async fn postgres(ctx: &mut Ctx) -> Res<()> {
    ensure_echo(ctx).await?;
    ensure_pgbench(ctx).await;
    let sqlite = {
        let world = World::new(sandbox_spec()).await?;
        let gw = world.gateway().await?;
        submit_load(&[&gw]).await?
    };
    let db = PgDb::create("submit").await?;
    let mut world = World::new(sandbox_spec()).await?;
    world.set_env("ADGATE_DATABASE_URL", db.url());
    let one = {
        let gw = world.gateway().await?;
        submit_load(&[&gw]).await?
    };
    let two = {
        let a = world.gateway().await?;
        // A second replica needs its own HTTP listener.
        world.set_env(
            "ADGATE_HTTP_ADDR",
            format!("127.0.0.1:{}", crate::proc::free_port()?),
        );
        let b = world.gateway().await?;
        submit_load(&[&a, &b]).await?
    };
    let text = ratios(ctx, sqlite.rps(), true);
    ctx.report.unary(
        "postgres",
        "Submit 1 job/call, 64 callers, SQLite (same run)",
        &sqlite,
        &text,
        "-",
        Verdict::Info,
    );
    // Issue 16: adgate on PostgreSQL against a bare single-insert service on the same server.
    let met = pg_ratio(ctx, one.rps()).is_some_and(|r| r >= 0.6);
    let text = ratios(ctx, one.rps(), true);
    ctx.report.unary(
        "postgres",
        "Submit 1 job/call, 64 callers, PostgreSQL, 1 replica",
        &one,
        &text,
        ">= 0.6 x pgbench",
        Verdict::from(met),
    );
    let text = ratios(ctx, two.rps(), true);
    ctx.report.unary(
        "postgres",
        "Submit 1 job/call, 64 callers, PostgreSQL, 2 replicas",
        &two,
        &text,
        "-",
        Verdict::Info,
    );
    drop(world);
    db.drop_db().await;
    Ok(())
}

const TAKEOVER_JOBS: usize = 200;
const LEASE_SECS: f64 = 2.0;

pub async fn takeover(ctx: &mut Ctx) -> Res<()> {
    let db = PgDb::create("takeover").await?;
    // Jobs far longer than the measurement, so they stay in flight at the provider.
    let spec = WorldSpec {
        sims: vec![
            SimSpec::new(SAL).durations(Duration::from_secs(3600), Duration::from_secs(3600)),
        ],
        // StaticAdsLab's budget at ×0.05 (100 requests / 3 s) so the jobs are in flight quickly.
        time_scale: 0.05,
        webhooks: false,
        defer_sims: false,
    };
    let mut world = World::new(spec).await?;
    world.set_env("ADGATE_DATABASE_URL", db.url());
    world.add_toml(&format!("lease_secs = {LEASE_SECS}"));
    let a = world.gateway().await?;
    world.set_env(
        "ADGATE_HTTP_ADDR",
        format!("127.0.0.1:{}", crate::proc::free_port()?),
    );
    let b = world.gateway().await?;

    // All work through A; either replica may claim and submit it. Wait until every job is
    // tracked by one of them.
    let ch = load::connect(&a.grpc, 1).await?;
    let mut client = GatewayServiceClient::new(ch[0].clone());
    for chunk in (0..TAKEOVER_JOBS as u64).collect::<Vec<_>>().chunks(100) {
        client
            .submit(pb::SubmitRequest {
                request_id: String::new(),
                jobs: chunk.iter().map(|i| world::sal_job(*i)).collect(),
                ..Default::default()
            })
            .await?;
    }
    let end = Instant::now() + Duration::from_secs(120);
    while (tracked_jobs(&a).await? + tracked_jobs(&b).await?) < TAKEOVER_JOBS as u64 {
        if Instant::now() > end {
            return Err("the replicas never tracked every job".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_held = tracked_jobs(&a).await?;
    // Death without goodbye, then time until B tracks all of them.
    a.kill();
    let died = Instant::now();
    let end = died + Duration::from_secs(60);
    while (tracked_jobs(&b).await? as usize) < TAKEOVER_JOBS {
        if Instant::now() > end {
            return Err("the survivor never took every job over".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = died.elapsed();
    let bound = Duration::from_secs_f64(LEASE_SECS + 1.0);
    ctx.report.row(
        "takeover",
        "replica killed (SIGKILL) -> all its jobs tracked by the survivor",
        format!(
            "{:.2} s for the {a_held} jobs the dead replica held (lease {LEASE_SECS} s)",
            took.as_secs_f64()
        ),
        "<= lease + 1 s",
        Verdict::from(took <= bound),
    );
    drop(b);
    drop(world);
    db.drop_db().await;
    Ok(())
}
