//! Outbound webhooks end to end: the real binary, the provider simulators, and a receiver that
//! verifies every delivery with an independent Standard Webhooks implementation (Python's
//! `standardwebhooks`, tests/support/webhook_receiver.py).
//!
//! Orders and faults: a mixed batch delivered once per event with valid signatures; kill -9
//! while deliveries are going out (everything still arrives after the restart, repeats carry
//! the same id); a receiver that is down for a while (delivered later); a receiver that keeps
//! failing (disabled, reported, and replayed by RedeliverEvents once fixed); URLs the gateway
//! must not call (refused at Submit, nothing stored).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adgate::pb;
use serde_json::Value;
use support::BIN;
use support::*;

const SCALE: f64 = 0.05;
/// The 1,000-job batch runs faster (its job is delivery, not provider pacing).
const FAST: f64 = 0.02;
/// 32 random-looking bytes; the receiver verifies with the same secret.
const SECRET: &str = "whsec_dGVzdC1vdXRib3VuZC13ZWJob29rLXNlY3JldC0wMDE=";

/// The Python receiver, killed on drop.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    mode: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let mode = dir.path().join("mode");
        std::fs::write(&mode, "ok").unwrap();
        Self::spawn(port, out, mode, dir)
    }

    fn spawn(port: u16, out: PathBuf, mode: PathBuf, dir: tempfile::TempDir) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/webhook_receiver.py"
        );
        let mut child = Command::new("python3")
            .args([
                script,
                SECRET,
                out.to_str().unwrap(),
                mode.to_str().unwrap(),
                &port.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with the standardwebhooks package (pip install standardwebhooks)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("receiver did not start: {line:?}"));
        Self {
            child,
            port,
            out,
            mode,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/adgate?team=growth", self.port)
    }

    fn set_failing(&self, failing: bool) {
        std::fs::write(&self.mode, if failing { "fail" } else { "ok" }).unwrap();
    }

    /// Stops it (the port stays free for `restart`).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(self) -> Self {
        let mut me = self;
        me.stop();
        let dir = std::mem::replace(&mut me._dir, tempfile::tempdir().unwrap());
        let (port, out, mode) = (me.port, me.out.clone(), me.mode.clone());
        drop(me);
        Self::spawn(port, out, mode, dir)
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Ids delivered (answered 2xx) with a valid signature.
    fn delivered(&self) -> HashSet<String> {
        self.records()
            .iter()
            .filter(|r| r["valid"] == true && r["answered"] == 204)
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(extra: &str) -> String {
    config_at(SCALE, extra)
}

fn config_at(scale: f64, extra: &str) -> String {
    format!(
        "time_scale = {scale}\n\
         [notify]\n\
         secret = \"{SECRET}\"\n\
         allow_http = true\n\
         allow_private = true\n\
         timeout_secs = 1\n\
         retry_delays_secs = [0.2, 0.4, 0.8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n\
         {extra}"
    )
}

fn notify(url: &str) -> Option<pb::Notify> {
    Some(pb::Notify {
        url: url.to_owned(),
        events: Vec::new(),
    })
}

async fn metrics(spec: &GatewaySpec) -> String {
    reqwest::get(format!("{}/metrics", spec.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The ids every terminal job and the batch should be delivered under.
fn expected_ids(batch_id: &str, job_ids: &[String]) -> HashSet<String> {
    job_ids
        .iter()
        .map(|j| format!("evt_{j}"))
        .chain([format!("evt_{batch_id}")])
        .collect()
}

async fn wait_delivered(rx: &Receiver, want: &HashSet<String>, within: Duration) {
    let start = Instant::now();
    loop {
        let got = rx.delivered();
        if want.is_subset(&got) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{} of {} events delivered after {within:?}; missing e.g. {:?}",
            want.intersection(&got).count(),
            want.len(),
            want.difference(&got).take(3).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_mixed_batch_arrives_signed_with_its_job() {
    const JOBS: usize = 1000;
    let rx = Receiver::start(0);
    let config_rx = Receiver::start(0);
    let http_port = free_port();
    let sims = Sims::start(FAST, http_port, "notify", |_, _| {}).await;
    // A configured endpoint of the caller `growth` that only takes batch.completed.
    let toml = config_at(
        FAST,
        &format!(
            "[callers.growth]\n\
         [[callers.growth.webhooks]]\n\
         name = \"crm\"\n\
         url = \"{}\"\n\
         secret = \"{SECRET}\"\n\
         events = [\"batch.completed\"]\n",
            config_rx.url()
        ),
    );
    let mut env = sims.env();
    env.push(("ADGATE_AUTH_TOKENS".into(), "growth:tok-growth".into()));
    let spec = GatewaySpec::new(http_port, &toml, env);
    let mut gw = spec.spawn();
    let mut client = spec.connect(&mut gw, Duration::from_secs(30)).await;
    let mut req = tonic::Request::new(pb::SubmitRequest {
        jobs: (0..JOBS).map(mixed_job).collect(),
        notify: notify(&rx.url()),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", "Bearer tok-growth".parse().unwrap());
    let reply = client.submit(req).await.unwrap().into_inner();
    let started = Instant::now();
    let want = expected_ids(&reply.batch_id, &reply.job_ids);
    wait_delivered(&rx, &want, Duration::from_secs(300)).await;
    let elapsed = started.elapsed();

    let records = rx.records();
    assert!(
        records.iter().all(|r| r["valid"] == true),
        "a delivery failed verification"
    );
    // Each job event carries that job, in the state its type names.
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        *by_id
            .entry(r["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let ty = r["type"].as_str().unwrap();
        if ty == "batch.completed" {
            assert_eq!(r["data_id"], Value::from(reply.batch_id.clone()));
            continue;
        }
        let job = r["id"].as_str().unwrap().strip_prefix("evt_").unwrap();
        assert_eq!(r["data_id"], Value::from(job));
        let state = match ty {
            "job.completed" => "JOB_STATE_COMPLETED",
            "job.failed" => "JOB_STATE_FAILED",
            "job.cancelled" => "JOB_STATE_CANCELLED",
            other => panic!("unexpected event type {other}"),
        };
        assert_eq!(r["data_state"], Value::from(state));
    }
    assert_eq!(by_id.len(), JOBS + 1);
    let deliveries = records.len();
    println!(
        "delivered {} events ({deliveries} deliveries, {:.3} per event) in {:.1}s since Submit",
        JOBS + 1,
        deliveries as f64 / (JOBS + 1) as f64,
        elapsed.as_secs_f64()
    );
    // The configured endpoint got batch.completed only.
    let cfg_batch = HashSet::from([format!("evt_{}", reply.batch_id)]);
    wait_delivered(&config_rx, &cfg_batch, Duration::from_secs(30)).await;
    assert_eq!(config_rx.delivered(), cfg_batch);

    let m = metrics(&spec).await;
    assert!(
        metric_sum(
            &m,
            "adgate_notify_deliveries_total",
            &["outcome=\"delivered\""]
        ) >= (JOBS + 2) as f64
    );
    assert!(
        !spec
            .log_text()
            .contains(SECRET.trim_start_matches("whsec_"))
    );

    // Delivery throughput on its own: every event of the finished batch again.
    let mut req = tonic::Request::new(pb::RedeliverEventsRequest {
        batch_id: reply.batch_id.clone(),
    });
    req.metadata_mut()
        .insert("authorization", "Bearer tok-growth".parse().unwrap());
    let before = rx.records().len();
    let started = Instant::now();
    let queued = client.redeliver_events(req).await.unwrap().into_inner();
    assert_eq!(
        queued.deliveries,
        (JOBS + 1) as i64 + 1,
        "the batch's and the crm's"
    );
    wait_for(
        "every event delivered again",
        Duration::from_secs(120),
        || {
            let n = rx.records().len();
            async move { n > before + JOBS }
        },
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "redelivered {} events in {secs:.2}s: {:.0} events/s to one receiver",
        JOBS + 1,
        (JOBS + 1) as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_deliveries_loses_nothing_and_repeats_keep_their_ids() {
    const JOBS: usize = 300;
    let rx = Receiver::start(0);
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "notifykill", |_, _| {}).await;
    let spec = GatewaySpec::new(http_port, &config(""), sims.env());
    let mut gw = spec.spawn();
    let mut client = spec.connect(&mut gw, Duration::from_secs(30)).await;
    let reply = client
        .submit(pb::SubmitRequest {
            jobs: (0..JOBS).map(mixed_job).collect(),
            notify: notify(&rx.url()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let want = expected_ids(&reply.batch_id, &reply.job_ids);
    // Some delivered, not all: kill -9 mid-way.
    wait_for("a first delivery", Duration::from_secs(120), || {
        let n = rx.delivered().len();
        async move { n >= 10 }
    })
    .await;
    let before = rx.delivered().len();
    gw.kill9();
    assert!(
        before < want.len(),
        "all delivered before the kill: test proves nothing"
    );

    let mut gw = spec.spawn();
    let _client = spec.connect(&mut gw, Duration::from_secs(30)).await;
    wait_delivered(&rx, &want, Duration::from_secs(300)).await;
    let records = rx.records();
    assert!(records.iter().all(|r| r["valid"] == true));
    let ids: HashSet<&str> = records.iter().filter_map(|r| r["id"].as_str()).collect();
    // Repeats (a delivery in flight at the kill) use an id of the batch, never a new one.
    assert_eq!(ids, want.iter().map(String::as_str).collect::<HashSet<_>>());
    println!(
        "{} deliveries for {} events across a kill -9 ({} before it)",
        records.len(),
        want.len(),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_everything_later() {
    let mut rx = Receiver::start(0);
    rx.stop(); // down: connections refused
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "notifydown", |_, _| {}).await;
    // Thirty jobs' events fail and retry together: the endpoint's run of failures went from
    // 13 to 29 in half a second (measured), so the default disable_after = 30 was reached
    // whenever the receiver took longer than that to come back (CI once); the endpoint was
    // then disabled and everything parked, which is another test's subject.
    let spec = GatewaySpec::new(http_port, &config("disable_after = 100000\n"), sims.env());
    let mut gw = spec.spawn();
    let mut client = spec.connect(&mut gw, Duration::from_secs(30)).await;
    let reply = client
        .submit(pb::SubmitRequest {
            jobs: (0..30).map(mixed_job).collect(),
            notify: notify(&rx.url()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    wait_for("failed deliveries", Duration::from_secs(120), || {
        let spec = &spec;
        async move {
            metric_sum(
                &metrics(spec).await,
                "adgate_notify_deliveries_total",
                &["outcome=\"failed\""],
            ) >= 10.0
        }
    })
    .await;
    let rx = rx.restart();
    wait_delivered(
        &rx,
        &expected_ids(&reply.batch_id, &reply.job_ids),
        Duration::from_secs(120),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_keeps_failing_is_disabled_reported_and_replayed_once_fixed() {
    let rx = Receiver::start(0);
    rx.set_failing(true);
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "notifyfail", |_, _| {}).await;
    let spec = GatewaySpec::new(http_port, &config("disable_after = 5\n"), sims.env());
    let mut gw = spec.spawn();
    let mut client = spec.connect(&mut gw, Duration::from_secs(30)).await;
    let reply = client
        .submit(pb::SubmitRequest {
            jobs: (0..12).map(mixed_job).collect(),
            notify: notify(&rx.url()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    wait_for(
        "the endpoint to be disabled",
        Duration::from_secs(120),
        || {
            let spec = &spec;
            async move {
                metric_sum(
                    &metrics(spec).await,
                    "adgate_notify_endpoints_disabled_total",
                    &[],
                ) >= 1.0
            }
        },
    )
    .await;
    assert!(
        spec.log_text()
            .contains("outbound webhook endpoint disabled"),
        "no log line for the disabled endpoint"
    );
    // The log names the endpoint without its query string (which may hold a token).
    assert!(!spec.log_text().contains("team=growth"));
    wait_all_terminal(
        &client,
        &reply.job_ids,
        Duration::from_secs(120),
        "the batch",
        &spec,
    )
    .await;
    let attempts = rx.records().len();
    // Disabled: nothing more is sent, however long we wait for the retry schedule.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rx.records().len(),
        attempts,
        "a disabled endpoint was called"
    );
    assert!(rx.delivered().is_empty());

    rx.set_failing(false);
    let r = client
        .redeliver_events(pb::RedeliverEventsRequest {
            batch_id: reply.batch_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deliveries, 13);
    wait_delivered(
        &rx,
        &expected_ids(&reply.batch_id, &reply.job_ids),
        Duration::from_secs(60),
    )
    .await;
    let unknown = client
        .redeliver_events(pb::RedeliverEventsRequest {
            batch_id: "bat_unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inward_targets_and_unknown_events_are_refused_and_store_nothing() {
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "notifyssrf", |_, _| {}).await;
    // The operator's defaults: https only, public addresses only.
    let toml = format!("time_scale = {SCALE}\n[notify]\nsecret = \"{SECRET}\"\n");
    let spec = GatewaySpec::new(http_port, &toml, sims.env());
    let mut gw = spec.spawn();
    let mut client = spec.connect(&mut gw, Duration::from_secs(30)).await;
    for (url, events, field) in [
        ("https://127.0.0.1:9/x", vec![], "notify.url"),
        ("https://169.254.169.254/latest", vec![], "notify.url"),
        ("https://localhost/x", vec![], "notify.url"),
        ("http://hooks.example.com/x", vec![], "notify.url"),
        (
            "https://hooks.example.com/x",
            vec!["job.started".to_owned()],
            "notify.events[0]",
        ),
    ] {
        let err = client
            .submit(pb::SubmitRequest {
                jobs: vec![sal_job(1)],
                notify: Some(pb::Notify {
                    url: url.into(),
                    events,
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{url}");
        let details = String::from_utf8_lossy(err.details()).into_owned();
        assert!(details.contains(field), "{url}: no violation on {field}");
    }
    let listed = client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "a refused Submit stored jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_names_an_endpoint_for_every_batch_it_creates() {
    let rx = Receiver::start(0);
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "notifycli", |_, _| {}).await;
    let spec = GatewaySpec::new(http_port, &config(""), sims.env());
    let mut gw = spec.spawn();
    let mut client = spec.connect(&mut gw, Duration::from_secs(30)).await;
    let file = spec.dir.path().join("ads.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"clientRef": "cli-{i}", "pictify": {{"templateUid": "tmpl_cli", "variables": {{"n": "{i}"}}}}}}"#
            )
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (target, url, path) = (spec.grpc_url(), rx.url(), file.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["submit", path.to_str().unwrap(), "--chunk", "2", "--json"])
            .args(["--notify-url", &url, "--target", &target])
            .env_remove("ADGATE_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Three chunks, three batches: each job's event and each batch's completion arrive.
    let batches = client
        .list_batches(pb::ListBatchesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .batches;
    assert_eq!(batches.len(), 3);
    let mut want = HashSet::new();
    for b in &batches {
        let jobs = client
            .batch_status(pb::BatchStatusRequest {
                batch_id: b.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .jobs;
        let ids: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
        want.extend(expected_ids(&b.id, &ids));
    }
    assert_eq!(want.len(), 5 + 3);
    wait_delivered(&rx, &want, Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_custody_on_job_completed_carries_the_stored_copy() {
    let rx = Receiver::start(0);
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "notifycustody", |_, _| {}).await;
    let copies = tempfile::tempdir().unwrap();
    let mut env = sims.env();
    env.push((
        "ADGATE_CUSTODY_DIR".into(),
        copies.path().display().to_string(),
    ));
    let spec = GatewaySpec::new(http_port, &config(""), env);
    let mut gw = spec.spawn();
    let mut client = spec.connect(&mut gw, Duration::from_secs(30)).await;
    let reply = client
        .submit(pb::SubmitRequest {
            jobs: (0..4).map(pictify_job).collect(),
            notify: notify(&rx.url()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    wait_delivered(
        &rx,
        &expected_ids(&reply.batch_id, &reply.job_ids),
        Duration::from_secs(120),
    )
    .await;
    // The event waited for the copy: its outputs are STORED, with their checksums.
    for r in rx.records().iter().filter(|r| r["type"] == "job.completed") {
        let custody = r["custody"].as_array().unwrap();
        assert!(!custody.is_empty(), "{r}");
        assert!(
            custody.iter().all(|c| c == "CUSTODY_STATE_STORED"),
            "sent before the copy settled: {r}"
        );
        assert!(
            r["sha256"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h.as_str().is_some_and(|h| h.len() == 64)),
            "{r}"
        );
    }
}
