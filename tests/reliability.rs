//! Reliability of the real binary against the provider simulators (SPEC §7): crash recovery
//! after `kill -9`, convergence under every simulator fault at once, and drain on SIGTERM.
//!
//! Each test runs `adgate serve` (not `--sandbox`) as a child process configured by
//! environment and a TOML file, against simulators started in this process; simulators and
//! gateway share one time scale so provider jobs take 1.5–3 s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod pgdb;
mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use adgate::pb;
use support::*;

const SCALE: f64 = 0.05;

/// The three tests each drive hundreds of jobs through a child process and three simulators;
/// on two cores they run one at a time so their timing bounds stay meaningful.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config_toml(scale: f64, deadline_secs: u64, grace_secs: f64) -> String {
    let mut t = format!("time_scale = {scale}\ngrace_period_secs = {grace_secs}\n");
    for p in ["staticadslab", "pictify", "abyssale"] {
        t.push_str(&format!(
            "[providers.{p}]\ndeadline_secs = {deadline_secs}\n"
        ));
    }
    // An Abyssale submit whose outcome is unknown waits for its callback 200 s × 1.2 ×
    // scale = 12 s (the documented 10 min would be 36 s here): long enough for the
    // simulator's first callback retry (60 s × scale = 3 s) after a restart.
    t.push_str("longest_job_secs = 200\n");
    t
}

/// Pictify renders a batch five items at a time (its documented default concurrency); at the
/// documented 30–60 s per item a 100-item batch takes minutes even scaled, so Pictify items
/// here take 6–12 s (0.3–0.6 s scaled). Everything else is as documented.
fn fast_pictify(name: &str, cfg: &mut adgate_sim::SimConfig) {
    if name == "pictify" {
        cfg.job_duration = (Duration::from_secs(6), Duration::from_secs(12));
    }
}

/// Submit `jobs` as one request with a request id, retrying (same id) across restarts until
/// acknowledged. Returns the job ids.
async fn submit_acked(url: &str, request_id: &str, jobs: Vec<pb::JobSpec>) -> Vec<String> {
    let start = Instant::now();
    loop {
        let attempt = async {
            let mut c = pb::gateway_service_client::GatewayServiceClient::connect(url.to_owned())
                .await
                .ok()?;
            c.submit(pb::SubmitRequest {
                request_id: request_id.to_owned(),
                jobs: jobs.clone(),
                ..Default::default()
            })
            .await
            .ok()
        };
        if let Some(r) = attempt.await {
            return r.into_inner().job_ids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "submit {request_id} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sim's view of one Abyssale generation: its design id (retried through 429s).
async fn abyssale_generation_design(sims: &Sims, gen_id: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        let resp = reqwest::Client::new()
            .get(format!(
                "{}/generation-request/{gen_id}",
                sims.get("abyssale").base_url
            ))
            .header("x-api-key", &sims.accounts["abyssale"].api_key)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        last = resp.text().await.unwrap_or_default();
        if status.is_success()
            && let Ok(body) = serde_json::from_str::<serde_json::Value>(&last)
            && let Some(id) = body["banners"][0]["template"]["id"].as_str()
        {
            return id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("abyssale generation {gen_id}: no design in {last}");
}

/// 300 jobs across the three providers; `kill -9` twice (once while submitting, once while
/// tracking); restart on the same store each time. Every job must end in the right terminal
/// state, with exactly one charge per completed job and no job sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_kill_9_twice() {
    let _serial = SERIAL.lock().await;
    const JOBS: usize = 300;
    const PER_SUBMIT: usize = 10;
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "crash", fast_pictify).await;
    let spec = GatewaySpec::new(http_port, &config_toml(SCALE, 120, 5.0), sims.env());
    let url = spec.grpc_url();
    let mut gw = spec.spawn();
    connect(&url, Duration::from_secs(20)).await;

    // Tracking runs alongside: BatchStatus over everything acknowledged so far, tolerating
    // the gateway being down.
    let acked: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let tracker = {
        let acked = acked.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let mut polls = 0u64;
            loop {
                let ids = acked.lock().unwrap().clone();
                if !ids.is_empty()
                    && let Ok(mut c) =
                        pb::gateway_service_client::GatewayServiceClient::connect(url.clone()).await
                    && statuses(&mut c, &ids).await.is_some()
                {
                    polls += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if polls > 10_000 {
                    return;
                }
            }
        })
    };

    let mut ids_by_index: Vec<String> = Vec::with_capacity(JOBS);
    let mut kills = Vec::new();
    for batch in 0..JOBS / PER_SUBMIT {
        let jobs: Vec<pb::JobSpec> = (batch * PER_SUBMIT..(batch + 1) * PER_SUBMIT)
            .map(mixed_job)
            .collect();
        let rid = format!("crash-{batch}");
        if batch == 12 {
            // Kill #1 races this Submit and the dispatchers sending the 120 jobs before it.
            let pending = tokio::spawn({
                let url = url.clone();
                let jobs = jobs.clone();
                async move { submit_acked(&url, &rid, jobs).await }
            });
            gw.kill9();
            kills.push(acked.lock().unwrap().len());
            gw = spec.spawn();
            let ids = pending.await.unwrap();
            ids_by_index.extend(ids.iter().cloned());
            acked.lock().unwrap().extend(ids);
            continue;
        }
        let ids = submit_acked(&url, &rid, jobs).await;
        assert_eq!(ids.len(), PER_SUBMIT);
        ids_by_index.extend(ids.iter().cloned());
        acked.lock().unwrap().extend(ids);
    }
    assert_eq!(ids_by_index.len(), JOBS);
    assert_eq!(
        ids_by_index.iter().collect::<HashSet<_>>().len(),
        JOBS,
        "a request_id retry created new jobs"
    );

    // Kill #2 while tracking: once some jobs have finished and others are still running.
    let mut client = connect(&url, Duration::from_secs(20)).await;
    wait_for("some jobs completed", Duration::from_secs(30), || {
        let mut c = client.clone();
        let ids = ids_by_index.clone();
        async move {
            statuses(&mut c, &ids)
                .await
                .is_some_and(|js| js.iter().any(is_terminal) && js.iter().any(|j| !is_terminal(j)))
        }
    })
    .await;
    gw.kill9();
    kills.push(JOBS);
    let gw = spec.spawn();
    client = connect(&url, Duration::from_secs(20)).await;

    let started = Instant::now();
    wait_all_terminal(
        &client,
        &ids_by_index,
        Duration::from_secs(60),
        "every job terminal",
        &spec,
    )
    .await;
    let jobs = statuses(&mut client, &ids_by_index).await.unwrap();
    tracker.abort();
    let recovery = started.elapsed();
    tracker.abort();
    // States: nothing fails except Abyssale jobs whose submit was cut by a kill.
    let mut by_provider: HashMap<&str, Vec<&pb::Job>> = HashMap::new();
    for j in &jobs {
        by_provider.entry(j.provider.as_str()).or_default().push(j);
    }
    for (p, js) in &by_provider {
        for j in js {
            let ok = state(j) == pb::JobState::Completed
                || (*p == "abyssale"
                    && state(j) == pb::JobState::Failed
                    && error_code(j) == "UNKNOWN_OUTCOME");
            assert!(ok, "{p} job {} ended {:?} {:?}", j.id, state(j), j.error);
            if state(j) == pb::JobState::Completed {
                assert!(!j.outputs.is_empty(), "completed without outputs: {}", j.id);
            }
        }
    }

    // StaticAdsLab and Pictify: one creation per idempotency key (replays are not creations),
    // exactly one charge per completed job, no charge for anything else.
    for (name, sim) in [
        ("staticadslab", &sims.get("staticadslab")),
        ("pictify", &sims.get("pictify")),
    ] {
        let js = &by_provider[name];
        let charges = sim.ledger.charges_by_job();
        for j in js {
            assert_eq!(
                charges.get(&j.provider_job_id).copied(),
                Some(1),
                "{name} job {} ({}) charged {:?} times",
                j.id,
                j.provider_job_id,
                charges.get(&j.provider_job_id)
            );
        }
        assert_eq!(
            sim.ledger.total_charges(),
            js.len() as u64,
            "{name} total charges"
        );
        let twice: Vec<_> = sim
            .ledger
            .creations_by_key()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .collect();
        assert!(
            twice.is_empty(),
            "{name}: keys that created work twice: {twice:?}"
        );
        let refs: HashSet<&str> = js.iter().map(|j| j.provider_job_id.as_str()).collect();
        assert_eq!(refs.len(), js.len(), "{name}: two jobs share a provider id");
    }

    // Abyssale has no idempotency key. Every generation the simulator created belongs to one
    // design, i.e. one job; no design may appear twice (a second submission). Callbacks are
    // configured, so a generation whose submit answer a kill cut off is still delivered (the
    // callback URL names its job): every generation must be owned by a COMPLETED job. Only
    // a job whose submit never reached the provider may end UNKNOWN_OUTCOME.
    let aby = &by_provider["abyssale"];
    let completed: HashMap<&str, &pb::Job> = aby
        .iter()
        .filter(|j| state(j) == pb::JobState::Completed)
        .map(|j| (j.provider_job_id.as_str(), *j))
        .collect();
    let unknown: HashMap<String, &pb::Job> = aby
        .iter()
        .filter(|j| error_code(j) == "UNKNOWN_OUTCOME")
        .map(|j| {
            let i: usize = j.client_ref.trim_start_matches("aby-").parse().unwrap();
            (abyssale_design(i), *j)
        })
        .collect();
    // Orphaned generations finish within one job duration; wait until every created one has
    // been charged (one format each, no failures configured).
    let ledger = sims.get("abyssale").ledger.clone();
    wait_for(
        "abyssale generations finished",
        Duration::from_secs(10),
        || {
            let l = ledger.clone();
            async move { l.total_charges() == l.creations() }
        },
    )
    .await;
    let generations: HashSet<String> = ledger
        .charges_by_job()
        .keys()
        .map(|k| k.split('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(generations.len() as u64, ledger.creations());
    for (gen_id, n) in ledger
        .charges_by_job()
        .iter()
        .map(|(k, n)| (k.split('/').next().unwrap().to_owned(), *n))
    {
        assert_eq!(n, 1, "abyssale generation {gen_id} charged {n} times");
    }
    let mut designs_seen = HashSet::new();
    for g in &generations {
        let design = abyssale_generation_design(&sims, g).await;
        assert!(
            designs_seen.insert(design.clone()),
            "design {design} sent twice"
        );
        if !completed.contains_key(g.as_str()) {
            let owner = unknown.get(&design).map(|j| j.id.clone());
            panic!(
                "generation {g} (design {design}) exists at the provider but no COMPLETED job \
                 owns it (UNKNOWN_OUTCOME job: {owner:?}): paid work lost"
            );
        }
    }
    for g in completed.keys() {
        assert!(
            generations.contains(*g),
            "completed job's generation {g} not at the provider"
        );
    }
    assert_eq!(ledger.creations(), completed.len() as u64);

    let sal = &sims.get("staticadslab").ledger;
    let pic = &sims.get("pictify").ledger;
    println!(
        "crash recovery: {JOBS} jobs, kill -9 after {kills:?} acknowledged jobs; all terminal \
         {:.1}s after the second restart",
        recovery.as_secs_f64()
    );
    println!(
        "  staticadslab: {} completed, {} charges, {} creations, {} idempotent replays",
        by_provider["staticadslab"].len(),
        sal.total_charges(),
        sal.creations(),
        sal.replays()
    );
    println!(
        "  pictify: {} completed, {} charges, {} batch creations, {} idempotent replays",
        by_provider["pictify"].len(),
        pic.total_charges(),
        pic.creations(),
        pic.replays()
    );
    println!(
        "  abyssale: {} completed, {} UNKNOWN_OUTCOME (none reached the provider), \
         {} creations, {} charges",
        completed.len(),
        unknown.len(),
        ledger.creations(),
        ledger.total_charges()
    );
    drop(client);
    gw.kill9();
    sims.shutdown();
}

/// Every simulator fault at once: 10% 5xx, 429 bursts, 5% dropped connections, 5% malformed
/// JSON, SSE streams cut after two events, duplicated, late and reordered webhooks. Every job
/// must converge before its deadline to COMPLETED, or (Abyssale only, whose submits cannot be
/// retried safely) FAILED with UNKNOWN_OUTCOME; the binary must not panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_fault_at_once() {
    let _serial = SERIAL.lock().await;
    const JOBS: usize = 150;
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "chaos", fast_pictify).await;
    let faults = adgate_sim::Faults {
        error_5xx_ratio: 0.10,
        burst_429: 3,
        drop_ratio: 0.05,
        malformed_ratio: 0.05,
        sse_drop_after: Some(2),
        webhook_duplicate: true,
        webhook_delay: Duration::from_millis(300),
        webhook_reorder: true,
        ..Default::default()
    };
    for (_, h) in sims.all() {
        h.set_faults(faults.clone());
    }
    let deadline_secs = 60;
    let spec = GatewaySpec::new(
        http_port,
        &config_toml(SCALE, deadline_secs, 5.0),
        sims.env(),
    );
    let url = spec.grpc_url();
    let mut gw = spec.spawn();
    let mut client = connect(&url, Duration::from_secs(20)).await;

    // One more 429 burst while the run goes on, armed once the first is spent. Each 429 costs
    // a whole (scaled) rate window: the gateway honours Retry-After, so bursts are kept short.
    let rearm = {
        let handles: Vec<_> = sims.all().map(|(_, h)| h.faults.clone()).collect();
        tokio::spawn(async move {
            for _ in 0..1 {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let spent = handles.iter().all(|f| f.lock().unwrap().burst_429 == 0);
                    if spent {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                for f in &handles {
                    f.lock().unwrap().burst_429 = 3;
                }
            }
        })
    };

    let started = Instant::now();
    let mut ids = Vec::new();
    let mut watchers = Vec::new();
    for b in 0..JOBS / 15 {
        let reply = client
            .submit(pb::SubmitRequest {
                request_id: format!("chaos-{b}"),
                jobs: (b * 15..(b + 1) * 15).map(mixed_job).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(reply.job_ids.iter().cloned());
        // Watchers make the gateway open StaticAdsLab SSE streams (which the sim cuts).
        let mut c = client.clone();
        watchers.push(tokio::spawn(async move {
            let mut s = c
                .watch_progress(pb::WatchProgressRequest {
                    job_ids: Vec::new(),
                    batch_id: reply.batch_id,
                })
                .await?
                .into_inner();
            let mut n = 0usize;
            while let Some(m) = s.message().await? {
                if let Some(pb::watch_progress_response::Event::Job(j)) = m.event {
                    let p = j.progress.map_or(0.0, |p| p.percentage);
                    assert!((0.0..=100.0).contains(&p), "progress {p} out of range");
                    n += 1;
                }
            }
            Ok::<usize, tonic::Status>(n)
        }));
    }

    wait_for(
        "every chaos job terminal",
        Duration::from_secs(deadline_secs + 15),
        || {
            let mut c = client.clone();
            let ids = ids.clone();
            async move {
                statuses(&mut c, &ids)
                    .await
                    .is_some_and(|js| js.iter().all(is_terminal))
            }
        },
    )
    .await;
    let converged = started.elapsed();
    rearm.abort();
    let jobs = statuses(&mut client, &ids).await.unwrap();
    let mut outcome: HashMap<String, usize> = HashMap::new();
    for j in &jobs {
        let ok = state(j) == pb::JobState::Completed
            || (j.provider == "abyssale"
                && state(j) == pb::JobState::Failed
                && error_code(j) == "UNKNOWN_OUTCOME");
        assert!(
            ok,
            "{} job {} ended {:?} {:?}",
            j.provider,
            j.id,
            state(j),
            j.error
        );
        if state(j) == pb::JobState::Completed {
            assert!(!j.outputs.is_empty());
        }
        *outcome
            .entry(format!("{}:{:?}{}", j.provider, state(j), error_code(j)))
            .or_default() += 1;
    }
    assert!(
        converged < Duration::from_secs(deadline_secs),
        "converged only after {converged:?}, past the {deadline_secs}s deadline"
    );
    let mut events = 0;
    for w in watchers {
        events += tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("watch stream ended after every job was terminal")
            .unwrap()
            .expect("watch stream ended OK");
    }

    // Exactly-once still holds for the idempotent providers under chaos.
    for (name, sim) in [
        ("staticadslab", &sims.get("staticadslab")),
        ("pictify", &sims.get("pictify")),
    ] {
        let charges = sim.ledger.charges_by_job();
        for j in jobs.iter().filter(|j| j.provider == name) {
            assert_eq!(
                charges.get(&j.provider_job_id).copied(),
                Some(1),
                "{name} {}",
                j.id
            );
        }
        assert!(
            sim.ledger.creations_by_key().values().all(|n| *n == 1),
            "{name} created twice"
        );
    }

    // Abyssale: never sent twice, and with callbacks configured every creation belongs to a
    // COMPLETED job — an answer lost to a cut connection or a malformed body is reconciled by
    // the callback. UNKNOWN_OUTCOME is left only to submits that created nothing (a 5xx).
    let aby_done = outcome.get("abyssale:Completed").copied().unwrap_or(0) as u64;
    let created = sims.get("abyssale").ledger.creations();
    assert_eq!(
        created, aby_done,
        "abyssale: {created} creations but {aby_done} completed jobs: paid work lost"
    );

    let metrics = reqwest::get(format!("{}/metrics", spec.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retries = metric_sum(&metrics, "adgate_provider_retries_total", &[]);
    let retry_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("adgate_provider_retries_total"))
        .collect();
    assert!(retries > 0.0, "no retries recorded under chaos:\n{metrics}");
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway exited under chaos"
    );
    let log = spec.log_text();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");

    println!(
        "chaos: {JOBS} jobs converged in {:.1}s (deadline {deadline_secs}s); outcomes {outcome:?}; \
         {events} watch events",
        converged.as_secs_f64()
    );
    for (name, h) in sims.all() {
        let l = &h.ledger;
        println!(
            "  {name}: {} requests, served {} x 429, {} x 5xx, {} dropped; {} creations, \
             {} replays, {} charges, {} webhook deliveries",
            l.total_requests(),
            l.count_429(),
            l.count_5xx(),
            l.count_dropped(),
            l.creations(),
            l.replays(),
            l.total_charges(),
            l.webhooks().len()
        );
    }
    println!("  gateway retries (from /metrics): {retries}");
    for l in retry_lines {
        println!("    {l}");
    }
    gw.kill9();
    sims.shutdown();
}

/// SIGTERM with 1,000 jobs in flight and 100 watchers attached: every watcher ends with
/// UNAVAILABLE, the process exits within its grace period, and after a restart on the same
/// store every job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_then_restart() {
    let _serial = SERIAL.lock().await;
    const JOBS: usize = 1000;
    const WATCHERS: usize = 100;
    const GRACE: f64 = 5.0;
    // Ten times faster than the other tests so 1,000 submits fit the documented budgets
    // quickly; provider jobs drawn long enough (1.5–2.5 s) to still be running at SIGTERM.
    const DRAIN_SCALE: f64 = 0.01;
    let http_port = free_port();
    let sims = Sims::start(DRAIN_SCALE, http_port, "drain", |name, cfg| {
        cfg.job_duration = if name == "pictify" {
            (Duration::from_secs(6), Duration::from_secs(12))
        } else {
            (Duration::from_secs(150), Duration::from_secs(250))
        };
    })
    .await;
    // Pictify on the Pro plan (3 batches of 100 at once): on the default Free plan (one batch
    // of 10 at a time) 333 Pictify jobs are 34 batches in a row, which the 90 s bound after the
    // restart below was not written for; what this test checks is the drain and the restart.
    // (It once failed here because a finished job could be tracked again and hold its batch
    // "running" for ever; `schedule::a_finished_job_is_never_added_back` pins that.)
    let toml = config_toml(DRAIN_SCALE, 300, GRACE).replace(
        "[providers.pictify]\n",
        "[providers.pictify]\nplan = \"pro\"\n",
    );
    let spec = GatewaySpec::new(http_port, &toml, sims.env());
    let url = spec.grpc_url();
    let mut gw = spec.spawn();
    let mut client = connect(&url, Duration::from_secs(20)).await;
    let mut ids = Vec::with_capacity(JOBS);
    for b in 0..JOBS / 100 {
        let r = client
            .submit(pb::SubmitRequest {
                request_id: format!("drain-{b}"),
                jobs: (b * 100..(b + 1) * 100).map(mixed_job).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(r.job_ids);
    }
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        let mut c = client.clone();
        let watched: Vec<String> = ids[w * 10..w * 10 + 10].to_vec();
        let ready = ready_tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut s = c
                .watch_progress(pb::WatchProgressRequest {
                    job_ids: watched,
                    batch_id: String::new(),
                })
                .await?
                .into_inner();
            let mut snapshot = 0;
            loop {
                match s.message().await {
                    Ok(Some(m)) => {
                        if m.snapshot {
                            snapshot += 1;
                            if snapshot == 10 {
                                let _ = ready.send(()).await;
                            }
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }));
    }
    for _ in 0..WATCHERS {
        tokio::time::timeout(Duration::from_secs(20), ready_rx.recv())
            .await
            .expect("watchers attached");
    }
    let before = statuses(&mut client, &ids).await.unwrap();
    let in_flight = before.iter().filter(|j| !is_terminal(j)).count();
    assert!(
        in_flight >= JOBS * 9 / 10,
        "only {in_flight} jobs in flight at SIGTERM"
    );

    let t0 = Instant::now();
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs_f64(GRACE + 3.0))
        .await
        .expect("the gateway did not exit within its grace period");
    let drain = t0.elapsed();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let mut unavailable = 0;
    let mut ended_ok = 0;
    for w in watchers {
        match tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap()
            .unwrap()
        {
            Err(s) if s.code() == tonic::Code::Unavailable => unavailable += 1,
            Ok(()) => ended_ok += 1,
            Err(s) => panic!("watcher ended with {:?} {}", s.code(), s.message()),
        }
    }
    // A watcher whose ten jobs all finished before SIGTERM ends OK; every other one must be
    // told UNAVAILABLE so it reconnects.
    assert_eq!(unavailable + ended_ok, WATCHERS);
    assert!(
        unavailable >= WATCHERS * 9 / 10,
        "{unavailable} UNAVAILABLE"
    );

    let _gw = spec.spawn();
    client = connect(&url, Duration::from_secs(20)).await;
    let restarted = Instant::now();

    wait_all_terminal(
        &client,
        &ids,
        Duration::from_secs(90),
        "every job terminal after restart",
        &spec,
    )
    .await;
    let jobs = statuses(&mut client, &ids).await.unwrap();
    let failed: Vec<_> = jobs
        .iter()
        .filter(|j| state(j) != pb::JobState::Completed)
        .map(|j| format!("{} {} {:?}", j.provider, j.id, j.error))
        .collect();
    assert!(
        failed.is_empty(),
        "{} jobs did not complete: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    println!(
        "drain: SIGTERM with {in_flight}/{JOBS} jobs in flight and {WATCHERS} watchers; exited \
         in {:.2}s (grace {GRACE}s); {unavailable} watchers UNAVAILABLE, {ended_ok} ended OK; \
         all {JOBS} completed {:.1}s after restart",
        drain.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    sims.shutdown();
}

/// Issue 14's crash order: kill -9 while Pictify and Abyssale submits are in flight — the
/// providers have created the work, their answers are held back, and their webhooks fire
/// while the gateway is down or before it resends. After a restart on the same store every
/// Pictify job is COMPLETED with its own URL and one charge, and every Abyssale generation the
/// provider created is owned by a COMPLETED job, never submitted twice.
async fn kill_9_with_pushes_in_flight(postgres: bool) {
    let _serial = SERIAL.lock().await;
    const PICTIFY_JOBS: usize = 20;
    const ABYSSALE_JOBS: usize = 8;
    let db = if postgres {
        Some(pgdb::PgDb::create().await)
    } else {
        None
    };
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "pushcrash", |name, cfg| {
        // Each item or generation takes 0.5–1 s; the answers below come 5 s later.
        if name != "staticadslab" {
            cfg.job_duration = (Duration::from_secs(10), Duration::from_secs(20));
        }
    })
    .await;
    for h in [sims.get("pictify"), sims.get("abyssale")] {
        h.update_faults(|f| f.submit_answer_delay = Duration::from_secs(5));
    }
    let mut env = sims.env();
    if let Some(db) = &db {
        env.push(("ADGATE_DATABASE_URL".to_owned(), db.url()));
    }
    let spec = GatewaySpec::new(http_port, &config_toml(SCALE, 120, 5.0), env);
    let url = spec.grpc_url();
    let gw = spec.spawn();
    connect(&url, Duration::from_secs(20)).await;
    let jobs: Vec<pb::JobSpec> = (0..PICTIFY_JOBS)
        .map(|i| pictify_job(3 * i + 1))
        .chain((0..ABYSSALE_JOBS).map(|i| abyssale_job(3 * i + 2)))
        .collect();
    let ids = submit_acked(&url, "pushcrash", jobs).await;
    // The Pictify batch and the first Abyssale generations (four submits in flight at once)
    // exist at the providers; no answer has arrived yet, nothing has finished rendering.
    wait_for(
        "the providers created the work",
        Duration::from_secs(20),
        || {
            let pic = sims.get("pictify").ledger.creations();
            let aby = sims.get("abyssale").ledger.creations();
            async move { pic >= 1 && aby >= 4 }
        },
    )
    .await;
    gw.kill9();
    // Pushes fire now, into a dead port; the simulators retry on their documented ladders.
    wait_for("pushes refused while down", Duration::from_secs(20), || {
        let refused = sims
            .all()
            .flat_map(|(_, h)| h.ledger.webhooks())
            .filter(|w| w.status.is_none() && !w.suppressed)
            .count();
        async move { refused >= 1 }
    })
    .await;
    let gw = spec.spawn();
    let mut client = connect(&url, Duration::from_secs(20)).await;
    wait_for("every job terminal", Duration::from_secs(90), || {
        let mut c = client.clone();
        let ids = ids.clone();
        async move {
            statuses(&mut c, &ids)
                .await
                .is_some_and(|js| js.iter().all(is_terminal))
        }
    })
    .await;
    let jobs = statuses(&mut client, &ids).await.unwrap();
    let pic_charges = sims.get("pictify").ledger.charges_by_job();
    let mut urls = HashSet::new();
    for j in jobs.iter().filter(|j| j.provider == "pictify") {
        assert_eq!(state(j), pb::JobState::Completed, "{j:?}");
        assert_eq!(j.outputs.len(), 1, "{j:?}");
        urls.insert(j.outputs[0].url.clone());
    }
    assert_eq!(urls.len(), PICTIFY_JOBS, "each Pictify item its own URL");
    assert_eq!(
        sims.get("pictify").ledger.total_charges(),
        PICTIFY_JOBS as u64
    );
    assert!(pic_charges.values().all(|n| *n == 1), "{pic_charges:?}");
    assert!(
        sims.get("pictify")
            .ledger
            .creations_by_key()
            .values()
            .all(|n| *n == 1),
        "a Pictify batch created twice"
    );
    let aby: Vec<&pb::Job> = jobs.iter().filter(|j| j.provider == "abyssale").collect();
    let created: HashSet<String> = sims
        .get("abyssale")
        .ledger
        .created_ids()
        .into_iter()
        .collect();
    assert_eq!(
        created.len(),
        ABYSSALE_JOBS,
        "every Abyssale job was sent exactly once"
    );
    for j in &aby {
        assert_eq!(state(j), pb::JobState::Completed, "{j:?}");
        assert!(created.contains(&j.provider_job_id), "{j:?}");
    }
    let owners: HashSet<&str> = aby.iter().map(|j| j.provider_job_id.as_str()).collect();
    assert_eq!(
        owners.len(),
        ABYSSALE_JOBS,
        "each generation owned by one job"
    );
    let metrics = reqwest::get(format!("{}/metrics", spec.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    println!(
        "kill -9 with pushes in flight (postgres={postgres}): {PICTIFY_JOBS} Pictify + \
         {ABYSSALE_JOBS} Abyssale jobs COMPLETED; pictify {} requests, abyssale {} requests; \
         webhooks applied {} kept {}",
        sims.get("pictify").ledger.total_requests(),
        sims.get("abyssale").ledger.total_requests(),
        metric_sum(&metrics, "adgate_webhooks_total", &["outcome=\"applied\""]),
        metric_sum(&metrics, "adgate_webhooks_total", &["outcome=\"kept\""]),
    );
    drop(client);
    gw.kill9();
    sims.shutdown();
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_pushes_in_flight_loses_nothing_sqlite() {
    kill_9_with_pushes_in_flight(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_pushes_in_flight_loses_nothing_postgres() {
    kill_9_with_pushes_in_flight(true).await;
}
