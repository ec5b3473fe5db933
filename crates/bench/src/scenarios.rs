//! The scenarios of issue 9 with issue 16's targets. Each adds rows to the report; throughput
//! rows are also given as a ratio to the baselines measured in the same run (echo, and pgbench
//! where the issue compares with it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::load::{self, CONNECTIONS, closed_loop, percentile};
use crate::pgbench::{PgBaseline, ensure_pgbench};
use crate::proc::Proc;
use crate::report::{Report, Verdict};
use crate::world::{self, ABYSSALE, PICTIFY, SAL, SimSpec, World, WorldSpec};
use crate::{Res, seed};

pub const WARMUP: Duration = Duration::from_secs(2);
pub const MEASURE: Duration = Duration::from_secs(10);
/// Callers of the unary scenarios.
pub const CALLERS: usize = 64;

/// State shared by the scenarios of one run.
#[derive(Debug, Default)]
pub struct Ctx {
    pub echo_rps: Option<f64>,
    pub echo_p99_ms: Option<f64>,
    /// Issue 16's single-insert PostgreSQL baseline of this run (`None` until it ran, or when
    /// it could not run: then `pgbench_tried` is set and the ratios say "n/a").
    pub pgbench: Option<PgBaseline>,
    pub pgbench_tried: bool,
    pub report: Report,
}

pub(crate) fn ratio(ctx: &Ctx, rps: f64) -> f64 {
    ctx.echo_rps
        .map_or(0.0, |e| if e > 0.0 { rps / e } else { 0.0 })
}

/// `rps` over the pgbench baseline's inserts/s, when the baseline ran in this run.
pub(crate) fn pg_ratio(ctx: &Ctx, rps: f64) -> Option<f64> {
    ctx.pgbench.filter(|b| b.tps > 0.0).map(|b| rps / b.tps)
}

/// The ratio part of a throughput row: `0.17 x echo = 0.43 x pgbench`.
pub(crate) fn ratios(ctx: &Ctx, rps: f64, with_pgbench: bool) -> String {
    let mut out = format!("{:.2} x echo", ratio(ctx, rps));
    if with_pgbench {
        match pg_ratio(ctx, rps) {
            Some(r) => out.push_str(&format!(" = {r:.2} x pgbench")),
            None => out.push_str(" = n/a x pgbench (baseline did not run)"),
        }
    }
    out
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

/// The sandbox world: all three simulators, webhooks, the sandbox's time scale (0.05).
pub(crate) fn sandbox_spec() -> WorldSpec {
    WorldSpec {
        sims: vec![
            SimSpec::new(SAL),
            SimSpec::new(PICTIFY),
            SimSpec::new(ABYSSALE),
        ],
        time_scale: adgate::sandbox::SANDBOX_TIME_SCALE,
        webhooks: true,
        defer_sims: false,
    }
}

// ---- echo -----------------------------------------------------------------------------------

pub async fn echo(ctx: &mut Ctx) -> Res<()> {
    let server = Proc::spawn("__echo", &[]).await?;
    let channels = load::connect(&server.grpc, CONNECTIONS).await?;
    let stats = closed_loop(&channels, CALLERS, WARMUP, MEASURE, |ch, _, _| async move {
        HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
    })
    .await;
    let rss = server.rss().unwrap_or(0);
    ctx.echo_rps = Some(stats.rps());
    ctx.echo_p99_ms = Some(stats.p_ms(0.99));
    ctx.report.unary(
        "echo",
        "Health/Check baseline, 64 callers",
        &stats,
        "1.00 x echo",
        "-",
        Verdict::Info,
    );
    ctx.report.info(
        "echo",
        "server RSS after the run",
        format!("{:.1} MB", mb(rss)),
    );
    Ok(())
}

pub(crate) async fn ensure_echo(ctx: &mut Ctx) -> Res<()> {
    if ctx.echo_rps.is_none() {
        echo(ctx).await?;
    }
    Ok(())
}

// ---- Submit ---------------------------------------------------------------------------------

pub(crate) async fn submit_call(ch: Channel, jobs: Vec<pb::JobSpec>) -> Option<pb::SubmitResponse> {
    GatewayServiceClient::new(ch)
        .max_encoding_message_size(8 << 20)
        .submit(pb::SubmitRequest {
            request_id: String::new(),
            jobs,
            ..Default::default()
        })
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

pub async fn submit1(ctx: &mut Ctx) -> Res<()> {
    ensure_echo(ctx).await?;
    ensure_pgbench(ctx).await;
    let world = World::new(sandbox_spec()).await?;
    let gw = world.gateway().await?;
    let channels = load::connect(&gw.grpc, CONNECTIONS).await?;
    let stats = closed_loop(&channels, CALLERS, WARMUP, MEASURE, |ch, caller, seq| {
        let job = world::sal_job(caller as u64 * 1_000_000 + seq);
        async move { submit_call(ch, vec![job]).await.is_some() }
    })
    .await;
    // Issue 16: ahead of the echo ratio *and* of the single-insert PostgreSQL service, with a
    // tail no worse than three times the bare server's. No pgbench baseline = not shown met.
    let p99_bound = 3.0 * ctx.echo_p99_ms.unwrap_or(0.0);
    let met = ratio(ctx, stats.rps()) >= 0.30
        && pg_ratio(ctx, stats.rps()).is_some_and(|r| r >= 1.2)
        && stats.p_ms(0.99) <= p99_bound;
    let text = ratios(ctx, stats.rps(), true);
    ctx.report.unary(
        "submit1",
        "Submit 1 job/call, 64 callers, durable, SQLite",
        &stats,
        &text,
        &format!(">= 0.30 x echo; >= 1.2 x pgbench; p99 <= 3 x echo p99 ({p99_bound:.2} ms)"),
        Verdict::from(met),
    );
    Ok(())
}

pub async fn submit100(ctx: &mut Ctx) -> Res<()> {
    ensure_echo(ctx).await?;
    let world = World::new(sandbox_spec()).await?;
    let gw = world.gateway().await?;
    let channels = load::connect(&gw.grpc, CONNECTIONS).await?;
    const CALLERS_100: usize = 16;
    let stats = closed_loop(
        &channels,
        CALLERS_100,
        WARMUP,
        MEASURE,
        |ch, caller, seq| {
            let base = (caller as u64 * 1_000_000 + seq) * 100;
            let jobs: Vec<pb::JobSpec> = (0..100).map(|i| world::sal_job(base + i)).collect();
            async move { submit_call(ch, jobs).await.is_some() }
        },
    )
    .await;
    let jobs_per_sec = stats.rps() * 100.0;
    ctx.report.row(
        "submit100",
        "Submit 100 jobs/call, 16 callers: jobs accepted/s",
        format!(
            "{jobs_per_sec:.0} jobs/s ({:.0} calls/s, p50 {:.1} ms, p99 {:.1} ms, {} errors)",
            stats.rps(),
            stats.p_ms(0.5),
            stats.p_ms(0.99),
            stats.errors
        ),
        ">= 100,000 jobs/s",
        Verdict::from(jobs_per_sec >= 100_000.0),
    );
    Ok(())
}

// ---- Read path ------------------------------------------------------------------------------

pub async fn read(ctx: &mut Ctx) -> Res<()> {
    ensure_echo(ctx).await?;
    let world = World::new(sandbox_spec()).await?;
    let gw = world.gateway().await?;
    let channels = load::connect(&gw.grpc, CONNECTIONS).await?;
    // 10,000 stored jobs to read.
    let mut ids = Vec::new();
    for c in 0..100u64 {
        let jobs = (0..100).map(|i| world::sal_job(c * 100 + i)).collect();
        let reply = submit_call(channels[0].clone(), jobs)
            .await
            .ok_or("seeding Submit failed")?;
        ids.extend(reply.job_ids);
    }
    let ids = Arc::new(ids);
    let n = ids.len();
    let get_ids = ids.clone();
    let get = closed_loop(&channels, CALLERS, WARMUP, MEASURE, move |ch, _, _| {
        let id = get_ids[fastrand_index(n)].clone();
        async move {
            GatewayServiceClient::new(ch)
                .get_job(pb::GetJobRequest { job_id: id })
                .await
                .is_ok()
        }
    })
    .await;
    let r = ratio(ctx, get.rps());
    let text = ratios(ctx, get.rps(), false);
    ctx.report.unary(
        "read",
        "GetJob, 64 callers",
        &get,
        &text,
        ">= 0.5 x echo",
        Verdict::from(r >= 0.5),
    );
    let batch_ids = ids.clone();
    let batch = closed_loop(&channels, CALLERS, WARMUP, MEASURE, move |ch, _, _| {
        let job_ids: Vec<String> = (0..100)
            .map(|_| batch_ids[fastrand_index(n)].clone())
            .collect();
        async move {
            GatewayServiceClient::new(ch)
                .batch_status(pb::BatchStatusRequest {
                    job_ids,
                    batch_id: String::new(),
                })
                .await
                .is_ok()
        }
    })
    .await;
    let r = ratio(ctx, batch.rps());
    let text = ratios(ctx, batch.rps(), false);
    ctx.report.unary(
        "read",
        "BatchStatus 100 ids, 64 callers",
        &batch,
        &text,
        ">= 0.30 x echo",
        Verdict::from(r >= 0.30),
    );
    Ok(())
}

/// A cheap pseudo-random index (xorshift on a thread-local; quality is irrelevant here).
pub(crate) fn fastrand_index(n: usize) -> usize {
    use std::cell::Cell;
    thread_local!(static S: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) });
    S.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n.max(1) as u64) as usize
    })
}

// ---- WatchProgress --------------------------------------------------------------------------

const WATCH_STREAMS: usize = 10_000;
const WATCH_CONNECTIONS: usize = 100;

pub async fn watch(ctx: &mut Ctx) -> Res<()> {
    // Pictify only: 100 jobs per Submit become one provider batch each, and every item's
    // completion arrives by signed `render.completed` webhook carrying its URL. Items take
    // 5 ms (0.5 s at scale 0.01); the simulator renders batches one after another, 5 items at
    // a time, so the 10,000 completions spread over ~10 s.
    let spec = WorldSpec {
        sims: vec![
            SimSpec::new(PICTIFY).durations(Duration::from_millis(500), Duration::from_millis(500)),
        ],
        time_scale: 0.01,
        webhooks: true,
        defer_sims: true,
    };
    let mut world = World::new(spec).await?;
    let gw = world.gateway().await?;
    let submit_ch = load::connect(&gw.grpc, 1).await?;
    let mut ids = Vec::with_capacity(WATCH_STREAMS);
    for c in 0..(WATCH_STREAMS / 100) as u64 {
        let jobs = (0..100).map(|i| world::pictify_job(c * 100 + i)).collect();
        let reply = submit_call(submit_ch[0].clone(), jobs)
            .await
            .ok_or("Submit failed")?;
        ids.extend(reply.job_ids);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = gw.rss()?;
    let channels = load::connect(&gw.grpc, WATCH_CONNECTIONS).await?;
    let snapshots = Arc::new(AtomicU64::new(0));
    let ended_ok = Arc::new(AtomicU64::new(0));
    let already_done = Arc::new(AtomicU64::new(0));
    // Why a stream did not deliver: failed to open, ended with an error, or ended OK without a
    // terminal event (each would be a different fault than a completion that never happened).
    let open_failed = Arc::new(AtomicU64::new(0));
    let stream_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let ended_without_terminal = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::<u64>::with_capacity(WATCH_STREAMS)));
    let opened = Instant::now();
    let mut tasks = Vec::with_capacity(WATCH_STREAMS);
    for (i, id) in ids.iter().enumerate() {
        let ch = channels[i % channels.len()].clone();
        let id = id.clone();
        let (snapshots, ended_ok, already_done, samples) = (
            snapshots.clone(),
            ended_ok.clone(),
            already_done.clone(),
            samples.clone(),
        );
        let (open_failed, stream_errors, ended_without_terminal) = (
            open_failed.clone(),
            stream_errors.clone(),
            ended_without_terminal.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(resp) = GatewayServiceClient::new(ch)
                .watch_progress(pb::WatchProgressRequest {
                    job_ids: vec![id],
                    batch_id: String::new(),
                })
                .await
            else {
                open_failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut stream = resp.into_inner();
            let mut saw_terminal = false;
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        let received = SystemTime::now();
                        let Some(pb::watch_progress_response::Event::Job(job)) = msg.event else {
                            continue;
                        };
                        let terminal = job.state() == pb::JobState::Completed;
                        saw_terminal |= terminal;
                        if msg.snapshot {
                            snapshots.fetch_add(1, Ordering::Relaxed);
                            if terminal {
                                already_done.fetch_add(1, Ordering::Relaxed);
                            }
                        } else if terminal
                            && let Some(t) = job.complete_time
                            && let Ok(done) = SystemTime::try_from(t)
                        {
                            let lat = received
                                .duration_since(done)
                                .unwrap_or(Duration::ZERO)
                                .as_micros() as u64;
                            samples.lock().await.push(lat);
                        }
                    }
                    Ok(None) => {
                        if !saw_terminal {
                            ended_without_terminal.fetch_add(1, Ordering::Relaxed);
                        }
                        ended_ok.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(status) => {
                        stream_errors
                            .lock()
                            .await
                            .push(format!("{:?}", status.code()));
                        return;
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while snapshots.load(Ordering::Relaxed) < ids.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = opened.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = gw.rss()?;
    let open = snapshots.load(Ordering::Relaxed);
    // Now let the provider run: every job completes while its stream is open.
    world.start_sims().await?;
    let started_sims = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    while ended_ok.load(Ordering::Relaxed) < open && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window_secs = started_sims.elapsed().as_secs_f64();
    for t in &tasks {
        t.abort();
    }
    // What the gateway itself recorded for the watched jobs at the end of the window: tells a
    // completion that never happened from one that happened but was not delivered.
    let mut states: std::collections::BTreeMap<String, usize> = Default::default();
    for chunk in ids.chunks(100) {
        let reply = GatewayServiceClient::new(submit_ch[0].clone())
            .batch_status(pb::BatchStatusRequest {
                job_ids: chunk.to_vec(),
                batch_id: String::new(),
            })
            .await?
            .into_inner();
        for j in &reply.jobs {
            let step = j.progress.as_ref().map_or("", |p| p.step.as_str());
            *states.entry(format!("{:?}/{step}", j.state())).or_default() += 1;
        }
    }
    let errors = std::mem::take(&mut *stream_errors.lock().await);
    let mut by_code: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in &errors {
        *by_code.entry(e.as_str()).or_default() += 1;
    }
    ctx.report.info(
        "watch",
        "streams and jobs at the end of the window",
        format!(
            "{window_secs:.1} s; gateway job states {states:?}; streams: {} failed to open, \
             {} ended with an error {by_code:?}, {} ended OK without a terminal event",
            open_failed.load(Ordering::Relaxed),
            errors.len(),
            ended_without_terminal.load(Ordering::Relaxed),
        ),
    );
    let mut lat = std::mem::take(&mut *samples.lock().await);
    lat.sort_unstable();
    let added = rss1.saturating_sub(rss0);
    ctx.report.row(
        "watch",
        "10,000 WatchProgress streams (100 conns x 100): added server RSS",
        format!(
            "{:.1} MB ({:.1} KB/stream; {open} open in {open_secs:.1} s; base {:.1} MB)",
            mb(added),
            added as f64 / 1024.0 / open.max(1) as f64,
            mb(rss0)
        ),
        "< 150 MB",
        Verdict::from(open as usize == WATCH_STREAMS && added < 150_000_000),
    );
    let p99 = percentile(&lat, 0.99) as f64 / 1000.0;
    ctx.report.row(
        "watch",
        "completion committed -> client receipt (p50 / p99 / max)",
        format!(
            "{:.1} / {p99:.1} / {:.1} ms over {} completions ({} streams ended OK, {} done before the watch)",
            percentile(&lat, 0.5) as f64 / 1000.0,
            lat.last().copied().unwrap_or(0) as f64 / 1000.0,
            lat.len(),
            ended_ok.load(Ordering::Relaxed),
            already_done.load(Ordering::Relaxed),
        ),
        "p99 < 20 ms",
        Verdict::from(lat.len() >= WATCH_STREAMS * 9 / 10 && p99 < 20.0),
    );
    Ok(())
}

// ---- 100k in flight and restart -------------------------------------------------------------

pub async fn in_flight(ctx: &mut Ctx, measure_idle: bool) -> Res<()> {
    let (world, seeded) = seed::seed_100k().await?;
    ctx.report.info(
        "inflight",
        "seeding (simulators via the adapters, then the SQLite store)",
        seeded.summary.clone(),
    );
    // First start over the seeded store.
    let gw = world.gateway().await?;
    let tracked = tracked_jobs(&gw).await?;
    let first = gw.ready_after;
    if measure_idle {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss = gw.rss()?;
        let cpu0 = gw.cpu()?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(15)).await;
        let cpu = gw.cpu()?.saturating_sub(cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
        let requests: u64 = world.sims.values().map(|h| h.ledger.total_requests()).sum();
        ctx.report.row(
            "inflight",
            "100,000 in-flight jobs tracked: server RSS",
            format!("{:.1} MB ({tracked} tracked)", mb(gw.rss()?.max(rss))),
            "<= 120 MB",
            Verdict::from(tracked == seeded.jobs && gw.rss()?.max(rss) <= 120_000_000),
        );
        ctx.report.row(
            "inflight",
            "CPU while idle-polling (15 s window, time_scale 1.0)",
            format!(
                "{:.1}% of one core ({requests} provider requests incl. seeding)",
                cpu * 100.0
            ),
            "< 10% of one core",
            Verdict::from(cpu < 0.10),
        );
    }
    // Crash and restart: time until every job is tracked again.
    gw.kill();
    let gw = world.gateway().await?;
    let tracked_again = tracked_jobs(&gw).await?;
    let again = gw.ready_after;
    ctx.report.row(
        "restart",
        "restart (kill -9) with 100,000 non-terminal jobs: exec -> all tracked",
        format!(
            "{:.2} s ({tracked_again} tracked; first start over the seeded store {:.2} s)",
            again.as_secs_f64(),
            first.as_secs_f64()
        ),
        "< 3 s",
        Verdict::from(tracked_again == seeded.jobs && again < Duration::from_secs(3)),
    );
    Ok(())
}

/// Sum of `in_flight_jobs` over ListProviders (the trackers' job counts).
pub(crate) async fn tracked_jobs(gw: &Proc) -> Res<u64> {
    let ch = load::connect(&gw.grpc, 1).await?;
    let providers = GatewayServiceClient::new(ch[0].clone())
        .list_providers(pb::ListProvidersRequest {})
        .await?
        .into_inner();
    Ok(providers
        .providers
        .iter()
        .map(|p| p.in_flight_jobs.max(0) as u64)
        .sum())
}
