//! Two real `adgate` processes on one PostgreSQL database act as one gateway (SPEC §8): a
//! watcher on one replica sees changes made by the other, a replica killed with SIGKILL loses
//! its jobs to the survivor, and the fleet never exceeds the provider's budget or pays twice.
//! Restarts resume at once: a replica stopped with SIGTERM hands its jobs to a live or a new
//! process without waiting out its lease, a replica restarted under its old
//! `ADGATE_REPLICA_ID` after SIGKILL takes its own back, and one identity never runs twice.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user `postgres`); fails loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use adgate_sim::{SimConfig, SimHandle};
use sqlx::Connection;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Provider time runs 50 times faster: StaticAdsLab's 100 requests / 60 s become / 1.2 s.
const SCALE: f64 = 0.02;
const API_KEY: &str = "sal_live_replica_test_key";

struct Db {
    name: String,
}

impl Db {
    async fn create() -> Self {
        let name = format!("adgate_replicas_{:016x}", fastrand_u64());
        let mut admin = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("PostgreSQL must answer on 127.0.0.1:5432 (user postgres, trust auth)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        Self { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    async fn drop_db(self) {
        if let Ok(mut admin) =
            sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await
        {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

fn fastrand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

fn free_port() -> u16 {
    adgate_sim::free_port().unwrap()
}

struct Replica {
    child: Child,
    grpc: String,
}

impl Replica {
    fn start(dir: &std::path::Path, name: &str, db: &str, sim: &SimHandle) -> Self {
        Self::start_with(dir, name, db, sim, 1.0, None)
    }

    /// A replica with lease `lease_secs` and, if given, a stable `ADGATE_REPLICA_ID`; its
    /// output goes to `<dir>/<name>.log` (appended, so a restart under one name keeps both).
    fn start_with(
        dir: &std::path::Path,
        name: &str,
        db: &str,
        sim: &SimHandle,
        lease_secs: f64,
        replica_id: Option<&str>,
    ) -> Self {
        let (grpc, http) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!("time_scale = {SCALE}\nlease_secs = {lease_secs}\ngrace_period_secs = 2\n"),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_adgate"));
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ADGATE_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
            .env("ADGATE_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("ADGATE_DATABASE_URL", db)
            .env("ADGATE_STATICADSLAB_API_KEY", API_KEY)
            .env("ADGATE_STATICADSLAB_BASE_URL", &sim.base_url)
            .env("ADGATE_LOG_FORMAT", "json")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        // After env_clear, which would drop it.
        if let Some(id) = replica_id {
            cmd.env("ADGATE_REPLICA_ID", id);
        }
        let child = cmd.spawn().unwrap();
        Self {
            child,
            grpc: format!("http://127.0.0.1:{grpc}"),
        }
    }

    /// A client, once the replica answers a call. Connecting alone proves little: the port is
    /// bound before the engine starts (and claims its identity).
    async fn client(&self) -> GatewayServiceClient<Channel> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = GatewayServiceClient::connect(self.grpc.clone()).await {
                let answered = tokio::time::timeout(
                    Duration::from_secs(5),
                    c.list_providers(pb::ListProvidersRequest {}),
                )
                .await;
                if matches!(answered, Ok(Ok(_))) {
                    return c;
                }
            }
            assert!(
                Instant::now() < end,
                "replica did not listen on {}",
                self.grpc
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill9(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit status, waiting at most `within`.
    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "replica did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ad(i: usize) -> pb::JobSpec {
    pb::JobSpec {
        client_ref: format!("ad-{i}"),
        provider: Some(pb::job_spec::Provider::Staticadslab(
            pb::StaticAdsLabImageAd {
                design_template_id: "dt_a1b2c3d4e5f67890".into(),
                brand_id: "brand_a1b2c3d4e5f67890".into(),
                product_id: "prod_a1b2c3d4e5f67890".into(),
                audience_id: "aud_a1b2c3d4e5f67890".into(),
                prompt: format!("variant {i}"),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

async fn submit(client: &mut GatewayServiceClient<Channel>, from: usize, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(100) {
        let resp = client
            .submit(pb::SubmitRequest {
                request_id: String::new(),
                jobs: chunk.iter().map(|i| ad(*i)).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(resp.job_ids);
    }
    ids
}

async fn wait_all_completed(client: &mut GatewayServiceClient<Channel>, ids: &[String]) {
    let completed = pb::JobState::Completed as i32;
    let end = Instant::now() + Duration::from_secs(120);
    for chunk in ids.chunks(1000) {
        loop {
            let resp = client
                .batch_status(pb::BatchStatusRequest {
                    job_ids: chunk.to_vec(),
                    batch_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            if resp.jobs.iter().all(|j| j.state == completed) {
                break;
            }
            assert!(Instant::now() < end, "not every job completed in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_act_as_one_gateway_and_survive_a_kill() {
    let db = Db::create().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = adgate_sim::staticadslab::spawn(SimConfig {
        api_key: API_KEY.into(),
        time_scale: SCALE,
        ..SimConfig::default()
    })
    .await
    .unwrap();

    let mut a = Replica::start(dir.path(), "a", &db.url(), &sim);
    let b = Replica::start(dir.path(), "b", &db.url(), &sim);
    let mut ca = a.client().await;
    let mut cb = b.client().await;

    // Half the work to each replica.
    let ids_a = submit(&mut ca, 0, 500).await;
    let ids_b = submit(&mut cb, 500, 500).await;

    // B watches A's jobs: changes made on A must reach B's watcher.
    let mut watch = cb
        .watch_progress(pb::WatchProgressRequest {
            job_ids: ids_a.clone(),
            batch_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    // Kill A mid-batch (no goodbye): its leases lapse and B takes its jobs over.
    let kill_at = Instant::now() + Duration::from_secs(2);
    let mut last: HashMap<String, pb::Job> = HashMap::new();
    let mut killed = false;
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        if !killed && Instant::now() >= kill_at {
            a.kill9();
            killed = true;
        }
        let msg = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;
        match msg {
            Ok(Ok(Some(m))) => {
                if let Some(pb::watch_progress_response::Event::Job(job)) = m.event {
                    last.insert(job.id.clone(), job);
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(status)) => panic!("watch failed: {status:?}"),
            Err(_) => {}
        }
        assert!(Instant::now() < end, "A's jobs did not finish in time");
    }
    assert!(
        killed,
        "the batch finished before the kill; nothing was tested"
    );
    assert_eq!(last.len(), 500, "the watcher saw every job of A");
    let completed = pb::JobState::Completed as i32;
    assert!(
        last.values().all(|j| j.state == completed),
        "every job A accepted completed on B: {:?}",
        last.values()
            .filter(|j| j.state != completed)
            .take(3)
            .collect::<Vec<_>>()
    );

    // Every job of the fleet finishes, B's own included.
    let all: Vec<String> = ids_a.iter().chain(&ids_b).cloned().collect();
    wait_all_completed(&mut cb, &all).await;

    // The provider's view: one creation and one charge per ad, no 429, budget held fleet-wide.
    let ledger = &sim.ledger;
    let charges = ledger.charges_by_job();
    assert_eq!(charges.len(), 1000, "one provider ad per job");
    assert!(charges.values().all(|c| *c == 1), "no ad charged twice");
    assert_eq!(ledger.creations(), 1000, "no job submitted twice");
    assert_eq!(ledger.count_429(), 0, "zero 429s across both replicas");
    let window = Duration::from_secs_f64(60.0 * SCALE);
    let peak = ledger.max_requests_in_window(window);
    assert!(
        peak <= 100,
        "{peak} requests inside one window across the fleet"
    );
    let refs: HashSet<String> = last.values().map(|j| j.provider_job_id.clone()).collect();
    assert_eq!(refs.len(), 500, "distinct provider ads for A's jobs");
    println!(
        "two replicas, 1000 ads, one killed: {} provider requests ({:.3}/ad), peak {peak}/window, \
         {} replays, 0 429s",
        ledger.total_requests(),
        ledger.total_requests() as f64 / 1000.0,
        ledger.replays()
    );
    drop(b);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_id_on_two_replicas_creates_the_jobs_once() {
    let db = Db::create().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = adgate_sim::staticadslab::spawn(SimConfig {
        api_key: API_KEY.into(),
        time_scale: SCALE,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let a = Replica::start(dir.path(), "a", &db.url(), &sim);
    let b = Replica::start(dir.path(), "b", &db.url(), &sim);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    for round in 0..20 {
        let req = pb::SubmitRequest {
            request_id: format!("same-request-{round}"),
            jobs: (0..3).map(ad).collect(),
            ..Default::default()
        };
        let (ra, rb) = tokio::join!(ca.submit(req.clone()), cb.submit(req));
        let (ra, rb) = (ra.unwrap().into_inner(), rb.unwrap().into_inner());
        assert_eq!(ra.job_ids, rb.job_ids, "round {round}: one set of jobs");
        assert_eq!(ra.batch_id, rb.batch_id);
        assert!(ra.replayed ^ rb.replayed, "exactly one created them");
    }
    drop((a, b));
    db.drop_db().await;
}

/// Lease of the restart tests: the default, so that waiting it out (the old behaviour) is
/// far outside what the tests accept.
const LONG_LEASE: f64 = 10.0;
/// StaticAdsLab's poll interval (4 s) at SCALE.
const POLL_INTERVAL: Duration = Duration::from_millis(80);

/// A StaticAdsLab simulator whose ads take 6-8 s (300-400 s at scale 1): long enough to stop
/// and start replicas while they run.
async fn slow_sim() -> SimHandle {
    adgate_sim::staticadslab::spawn(SimConfig {
        api_key: API_KEY.into(),
        time_scale: SCALE,
        job_duration: (Duration::from_secs(300), Duration::from_secs(400)),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// Status requests the simulator has served (batch polls and single-ad reads).
fn polls(sim: &SimHandle) -> u64 {
    [
        "GET /v1/image-ads",
        "GET /v1/image-ads/:id",
        "SSE /v1/image-ads/:id",
    ]
    .into_iter()
    .map(|e| sim.ledger.requests(e))
    .sum()
}

/// When the simulator served a status request beyond the first `seen` (bounded wait).
async fn next_poll(sim: &SimHandle, seen: u64, within: Duration) -> Instant {
    let end = Instant::now() + within;
    loop {
        if polls(sim) > seen {
            return Instant::now();
        }
        assert!(Instant::now() < end, "no status request within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait until every job is at the provider (has a provider job id) and still running.
async fn wait_all_submitted(client: &mut GatewayServiceClient<Channel>, ids: &[String]) {
    let running = pb::JobState::Processing as i32;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = client
            .batch_status(pb::BatchStatusRequest {
                job_ids: ids.to_vec(),
                batch_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        if resp
            .jobs
            .iter()
            .all(|j| !j.provider_job_id.is_empty() && j.state == running)
        {
            return;
        }
        assert!(
            Instant::now() < end,
            "the jobs did not all reach the provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each job created and charged once at the provider.
fn charged_once(sim: &SimHandle, jobs: usize) {
    let charges = sim.ledger.charges_by_job();
    assert_eq!(charges.len(), jobs, "one provider ad per job");
    assert!(charges.values().all(|c| *c == 1), "no ad charged twice");
    assert_eq!(
        sim.ledger.creations(),
        jobs as u64,
        "no job submitted twice"
    );
}

fn log_of(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// A rolling restart: A is stopped with SIGTERM while its ads run, then a new process (a new
/// random identity) starts; it polls A's jobs within one poll interval + 1 s of its start —
/// not after A's 10 s lease — and every job completes, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_over_a_stopped_replicas_jobs_at_once() {
    let db = Db::create().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = slow_sim().await;
    let mut a = Replica::start_with(dir.path(), "a", &db.url(), &sim, LONG_LEASE, None);
    let mut ca = a.client().await;
    let ids = submit(&mut ca, 0, 30).await;
    wait_all_submitted(&mut ca, &ids).await;
    drop(ca);

    a.sigterm();
    let status = a.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "A drained cleanly: {status:?}");
    assert!(
        log_of(dir.path(), "a").contains("released the lease"),
        "A handed its jobs back"
    );
    let seen = polls(&sim);
    let started = Instant::now();
    let b = Replica::start_with(dir.path(), "b", &db.url(), &sim, LONG_LEASE, None);
    let polled = next_poll(&sim, seen, Duration::from_secs(30)).await - started;
    println!(
        "rolling restart: the new process polled the old one's jobs {polled:?} after its start"
    );
    assert!(
        polled < POLL_INTERVAL + Duration::from_secs(1),
        "took {polled:?}: the new process waited for the old lease"
    );
    let mut cb = b.client().await;
    wait_all_completed(&mut cb, &ids).await;
    charged_once(&sim, ids.len());
    drop(b);
    db.drop_db().await;
}

/// Two live replicas: SIGTERM on the one that owns every job, and the other takes them over
/// within one poll interval + 1 s of the signal (told by the released lease, not by its
/// next takeover pass five seconds later); every job completes, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replica_takes_over_a_stopped_ones_jobs_at_once() {
    let db = Db::create().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = slow_sim().await;
    let mut a = Replica::start_with(dir.path(), "a", &db.url(), &sim, LONG_LEASE, None);
    let mut ca = a.client().await;
    let ids = submit(&mut ca, 0, 30).await;
    wait_all_submitted(&mut ca, &ids).await;
    drop(ca);
    // B starts after A owns every job, so every status request B makes is for A's jobs.
    let b = Replica::start_with(dir.path(), "b", &db.url(), &sim, LONG_LEASE, None);
    // Answering a call means B's engine has started: it listens for goodbyes.
    let mut cb = b.client().await;
    let idle = polls(&sim);

    let signalled = Instant::now();
    a.sigterm();
    let status = a.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "A drained cleanly: {status:?}");
    let drained = signalled.elapsed();
    let seen = polls(&sim);
    let polled = next_poll(&sim, seen, Duration::from_secs(30)).await - signalled;
    println!(
        "live takeover: B polled A's jobs {polled:?} after the SIGTERM (A drained in \
         {drained:?}; {} status requests by A+B before)",
        seen - idle
    );
    assert!(
        polled < POLL_INTERVAL + Duration::from_secs(1),
        "took {polled:?}: B waited for its next takeover pass or A's lease"
    );
    wait_all_completed(&mut cb, &ids).await;
    charged_once(&sim, ids.len());
    drop(b);
    db.drop_db().await;
}

/// Stable identities: a second process with the same `ADGATE_REPLICA_ID` as a live one
/// refuses to start (exit 2, one line naming the problem); after SIGKILL, a restart under
/// the same id takes its jobs back at once (well under its 10 s lease) and they complete,
/// charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_identity_runs_once_and_resumes_at_once_after_a_kill() {
    let db = Db::create().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = slow_sim().await;
    let mut a = Replica::start_with(dir.path(), "a", &db.url(), &sim, LONG_LEASE, Some("gw-0"));
    let mut ca = a.client().await;

    let mut twin = Replica::start_with(
        dir.path(),
        "twin",
        &db.url(),
        &sim,
        LONG_LEASE,
        Some("gw-0"),
    );
    let status = twin.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(2),
        "the twin refused to start: {status:?}"
    );
    let log = log_of(dir.path(), "twin");
    let line = log
        .lines()
        .find(|l| l.starts_with("adgate: "))
        .unwrap_or_else(|| panic!("no one-line error on stderr: {log}"));
    assert!(
        line.contains("replica id \"gw-0\" is in use by another live process"),
        "{line}"
    );

    let ids = submit(&mut ca, 0, 30).await;
    wait_all_submitted(&mut ca, &ids).await;
    drop(ca);
    a.kill9();
    let seen = polls(&sim);
    let started = Instant::now();
    let a2 = Replica::start_with(dir.path(), "a", &db.url(), &sim, LONG_LEASE, Some("gw-0"));
    let polled = next_poll(&sim, seen, Duration::from_secs(30)).await - started;
    println!("kill -9 and restart as gw-0: its jobs polled again {polled:?} after the start");
    assert!(
        polled < POLL_INTERVAL + Duration::from_secs(1),
        "took {polled:?}: the restart waited for its own old lease"
    );
    let mut c2 = a2.client().await;
    wait_all_completed(&mut c2, &ids).await;
    charged_once(&sim, ids.len());
    drop(a2);
    db.drop_db().await;
}
