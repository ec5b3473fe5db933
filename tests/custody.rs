//! Issue 18, output custody, end to end: the real binary copies completed outputs from the
//! provider simulators into a local directory and into a real S3-compatible server (moto,
//! started here), records SHA-256, size and the type read from the bytes, serves the copies
//! over HTTP under caller auth, reports a provider URL that keeps answering 404 as
//! `OUTPUT_EXPIRED` (job still COMPLETED), and makes copies left pending by `kill -9` after a
//! restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod pgdb;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use sha2::{Digest, Sha256};
use support::*;
use tonic::transport::Channel;

const SCALE: f64 = 0.02;
const ALICE: &str = "tok-alice-5e1f";
const BOB: &str = "tok-bob-77a0";
/// Fast retries, so that "retried, then reported" takes seconds.
const FAST_RETRIES: &str = "[custody]\nretry_initial_secs = 0.05\nretry_max_secs = 0.2\n";

fn authed<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

async fn connect_as(spec: &GatewaySpec, token: Option<&str>) -> GatewayServiceClient<Channel> {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = GatewayServiceClient::connect(spec.grpc_url()).await
            && c.list_providers(authed(pb::ListProvidersRequest {}, token))
                .await
                .is_ok()
        {
            return c.max_decoding_message_size(64 << 20);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gateway did not come up; log:\n{}",
            spec.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(
    c: &mut GatewayServiceClient<Channel>,
    jobs: Vec<pb::JobSpec>,
    token: Option<&str>,
) -> Vec<String> {
    c.submit(authed(
        pb::SubmitRequest {
            jobs,
            ..Default::default()
        },
        token,
    ))
    .await
    .unwrap()
    .into_inner()
    .job_ids
}

async fn jobs(
    c: &mut GatewayServiceClient<Channel>,
    ids: &[String],
    token: Option<&str>,
) -> Vec<pb::Job> {
    c.batch_status(authed(
        pb::BatchStatusRequest {
            job_ids: ids.to_vec(),
            batch_id: String::new(),
        },
        token,
    ))
    .await
    .unwrap()
    .into_inner()
    .jobs
}

/// Wait (bounded) until every job is COMPLETED and `settled` holds for each of its outputs.
async fn wait_outputs(
    c: &mut GatewayServiceClient<Channel>,
    ids: &[String],
    token: Option<&str>,
    within: Duration,
    what: &str,
    settled: impl Fn(&pb::Output) -> bool,
    spec: &GatewaySpec,
) -> Vec<pb::Job> {
    let start = Instant::now();
    loop {
        let js = jobs(c, ids, token).await;
        let done = js.len() == ids.len()
            && js.iter().all(|j| {
                state(j) == pb::JobState::Completed
                    && !j.outputs.is_empty()
                    && j.outputs.iter().all(&settled)
            });
        if done {
            return js;
        }
        if start.elapsed() > within {
            let log = spec.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "timed out waiting for {what}: {:#?}\nlog tail (newest first):\n{}",
                js.iter()
                    .map(|j| (
                        &j.id,
                        state(j),
                        j.outputs
                            .iter()
                            .map(|o| (o.custody(), o.custody_error.clone()))
                            .collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stored(o: &pb::Output) -> bool {
    o.custody() == pb::CustodyState::Stored
}

/// The media type by the file signatures, written here independently of the gateway's sniffer.
fn expected_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        "image/png"
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else if bytes.len() > 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else if bytes.starts_with(b"GIF8") {
        "image/gif"
    } else if bytes.starts_with(b"%PDF") {
        "application/pdf"
    } else {
        "application/octet-stream"
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Each output's copy matches the provider's bytes (fetched here, from the simulator):
/// checksum, size and type; and `read_copy` (the store, read directly) returns those bytes.
async fn check_copies(js: &[pb::Job], read_copy: impl AsyncFn(&str, usize) -> Vec<u8>) {
    let http = reqwest::Client::new();
    for j in js {
        for (i, o) in j.outputs.iter().enumerate() {
            let original = http.get(&o.url).send().await.unwrap();
            assert!(original.status().is_success(), "{}", o.url);
            let original = original.bytes().await.unwrap();
            assert_eq!(o.sha256, sha256_hex(&original), "{} output {i}", j.id);
            assert_eq!(o.size_bytes, original.len() as i64, "{} output {i}", j.id);
            assert_eq!(
                o.stored_mime_type,
                expected_type(&original),
                "{} output {i}",
                j.id
            );
            assert!(o.custody_error.is_none());
            assert!(
                o.stored_url.ends_with(&format!("/outputs/{}/{i}", j.id)),
                "{}",
                o.stored_url
            );
            let copy = read_copy(&j.id, i).await;
            assert_eq!(sha256_hex(&copy), o.sha256, "the stored bytes themselves");
        }
    }
}

/// One job per provider with a simulator of rendered files (three providers, three types of
/// job); several outputs per Abyssale job.
fn mixed(n: usize) -> Vec<pb::JobSpec> {
    (0..n).map(mixed_job).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_store_keeps_checked_copies_and_serves_them_to_their_caller_only() {
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "custdir", |_, _| {}).await;
    let outputs = tempfile::tempdir().unwrap();
    let mut env = sims.env();
    env.push((
        "ADGATE_CUSTODY_DIR".into(),
        outputs.path().display().to_string(),
    ));
    env.push((
        "ADGATE_AUTH_TOKENS".into(),
        format!("alice:{ALICE},bob:{BOB}"),
    ));
    let spec = GatewaySpec::new(http_port, &format!("time_scale = {SCALE}\n"), env);
    let _gw = spec.spawn();
    let mut c = connect_as(&spec, Some(ALICE)).await;

    // A watcher of the jobs sees the custody change itself (a new revision on the bus).
    let ids = submit(&mut c, mixed(6), Some(ALICE)).await;
    let mut watch = c
        .clone()
        .watch_progress(authed(
            pb::WatchProgressRequest {
                job_ids: ids.clone(),
                ..Default::default()
            },
            Some(ALICE),
        ))
        .await
        .unwrap()
        .into_inner();
    let js = wait_outputs(
        &mut c,
        &ids,
        Some(ALICE),
        Duration::from_secs(60),
        "copies in the directory",
        stored,
        &spec,
    )
    .await;
    let dir = outputs.path().to_owned();
    check_copies(&js, async |job: &str, i: usize| {
        std::fs::read(dir.join(job).join(i.to_string())).unwrap()
    })
    .await;
    let mut watched_stored = false;
    while let Ok(Ok(Some(msg))) =
        tokio::time::timeout(Duration::from_secs(5), watch.message()).await
    {
        if let Some(pb::watch_progress_response::Event::Job(j)) = msg.event
            && !j.outputs.is_empty()
            && j.outputs.iter().all(stored)
        {
            watched_stored = true;
            break;
        }
    }
    assert!(watched_stored, "WatchProgress never showed a stored output");

    // Served over HTTP: the caller's token, the sniffed type, the same bytes.
    let http = reqwest::Client::new();
    let out = &js[0].outputs[0];
    let r = http.get(&out.stored_url).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = http
        .get(&out.stored_url)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a wrong token");
    let r = http
        .get(&out.stored_url)
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "another caller's job is not shown");
    for j in &js {
        for o in &j.outputs {
            let r = http
                .get(&o.stored_url)
                .bearer_auth(ALICE)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", o.stored_url);
            assert_eq!(
                r.headers()[reqwest::header::CONTENT_TYPE],
                o.stored_mime_type.as_str()
            );
            let body = r.bytes().await.unwrap();
            assert_eq!(sha256_hex(&body), o.sha256);
        }
    }
    let missing = format!("{}/outputs/{}/99", spec.http_url(), js[0].id);
    let r = http.get(&missing).bearer_auth(ALICE).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let metrics = http
        .get(format!("{}/metrics", spec.http_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let outputs_n: usize = js.iter().map(|j| j.outputs.len()).sum();
    let bytes: i64 = js
        .iter()
        .flat_map(|j| &j.outputs)
        .map(|o| o.size_bytes)
        .sum();
    assert_eq!(
        metric_sum(&metrics, "adgate_custody_outputs_stored_total", &[]),
        outputs_n as f64
    );
    assert_eq!(
        metric_sum(&metrics, "adgate_custody_stored_bytes_total", &[]),
        bytes as f64
    );
    sims.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_provider_url_is_retried_then_reported_with_the_job_still_completed() {
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "custexp", |_, _| {}).await;
    for (_, sim) in sims.all() {
        sim.update_faults(|f| f.output_status = Some(410));
    }
    let outputs = tempfile::tempdir().unwrap();
    let mut env = sims.env();
    env.push((
        "ADGATE_CUSTODY_DIR".into(),
        outputs.path().display().to_string(),
    ));
    let toml = format!("time_scale = {SCALE}\n{FAST_RETRIES}expired_after = 3\n");
    let spec = GatewaySpec::new(http_port, &toml, env);
    let _gw = spec.spawn();
    let mut c = connect_as(&spec, None).await;
    let ids = submit(&mut c, vec![sal_job(1), abyssale_job(2)], None).await;
    let js = wait_outputs(
        &mut c,
        &ids,
        None,
        Duration::from_secs(60),
        "OUTPUT_EXPIRED",
        |o| o.custody() == pb::CustodyState::Failed,
        &spec,
    )
    .await;
    for j in &js {
        assert_eq!(state(j), pb::JobState::Completed);
        assert!(j.error.is_none(), "{j:?}");
        for o in &j.outputs {
            let e = o.custody_error.as_ref().unwrap();
            assert_eq!(e.code, "OUTPUT_EXPIRED", "{e:?}");
            assert!(e.message.contains("410"), "{e:?}");
            assert!(!o.url.is_empty(), "the provider's URL stays");
            assert!(o.stored_url.is_empty() && o.sha256.is_empty());
        }
    }
    // Retried: three attempts per output, the last one final.
    let log = spec.log_text();
    let sal_job_id = &js[0].id;
    let attempts = log
        .lines()
        .filter(|l| l.contains("custody: copy failed") && l.contains(sal_job_id.as_str()))
        .count();
    assert_eq!(attempts, 3, "one output, three attempts:\n{log}");
    assert!(std::fs::read_dir(outputs.path()).unwrap().next().is_none());
    sims.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_pending_at_kill_9_are_made_after_the_restart() {
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "custkill", |_, _| {}).await;
    // The CDN is down: the jobs complete, their copies wait.
    for (_, sim) in sims.all() {
        sim.update_faults(|f| f.output_status = Some(503));
    }
    let outputs = tempfile::tempdir().unwrap();
    let mut env = sims.env();
    env.push((
        "ADGATE_CUSTODY_DIR".into(),
        outputs.path().display().to_string(),
    ));
    let toml = format!("time_scale = {SCALE}\n{FAST_RETRIES}");
    let spec = GatewaySpec::new(http_port, &toml, env);
    let gw = spec.spawn();
    let mut c = connect_as(&spec, None).await;
    let ids = submit(&mut c, mixed(6), None).await;
    wait_outputs(
        &mut c,
        &ids,
        None,
        Duration::from_secs(60),
        "completed jobs with pending copies",
        |o| o.custody() == pb::CustodyState::Pending,
        &spec,
    )
    .await;
    wait_for("a failed copy attempt", Duration::from_secs(20), || {
        let log = spec.log_text();
        async move { log.contains("custody: copy failed") }
    })
    .await;
    gw.kill9();
    for (_, sim) in sims.all() {
        sim.update_faults(|f| f.output_status = None);
    }
    let _gw = spec.spawn();
    let mut c = connect_as(&spec, None).await;
    let js = wait_outputs(
        &mut c,
        &ids,
        None,
        Duration::from_secs(60),
        "copies after the restart",
        stored,
        &spec,
    )
    .await;
    let dir = outputs.path().to_owned();
    check_copies(&js, async |job: &str, i: usize| {
        std::fs::read(dir.join(job).join(i.to_string())).unwrap()
    })
    .await;
    sims.shutdown();
}

/// moto's S3 server on a free port, stopped (killed: it is ours) when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_moto(log: &Path) -> Moto {
    let port = free_port();
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("python3 -m moto.server (pip install 'moto[server]')");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http.get(&moto.url).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "moto did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    moto
}

/// Every object under `prefix`, read with boto3 (moto's own client library).
fn s3_objects(endpoint: &str, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    const SCRIPT: &str = r#"
import base64, sys, boto3
endpoint, bucket, prefix = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing-key-id", aws_secret_access_key="testing-secret-9f2c")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for o in page.get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        print(o["Key"], base64.b64encode(body).decode())
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT, endpoint, bucket, prefix])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use base64::Engine as _;
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (key, body) = l.split_once(' ').unwrap();
            (
                key.to_owned(),
                base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_keeps_checked_copies_in_a_real_s3_server() {
    let scratch = tempfile::tempdir().unwrap();
    let moto = start_moto(&scratch.path().join("moto.log")).await;
    let http = reqwest::Client::new();
    let bucket = "adgate-custody";
    // moto accepts unsigned requests: enough to create the bucket the gateway writes to.
    let made = http
        .put(format!("{}/{bucket}", moto.url))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "{}", made.status());

    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "custs3", |_, _| {}).await;
    let mut env = sims.env();
    for (k, v) in [
        ("ADGATE_CUSTODY_S3_BUCKET", bucket),
        ("ADGATE_CUSTODY_S3_PREFIX", "runs/1"),
        ("ADGATE_CUSTODY_S3_ENDPOINT", &moto.url),
        ("ADGATE_CUSTODY_S3_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret-9f2c"),
    ] {
        env.push((k.into(), v.into()));
    }
    let spec = GatewaySpec::new(http_port, &format!("time_scale = {SCALE}\n"), env);
    let _gw = spec.spawn();
    let mut c = connect_as(&spec, None).await;
    let ids = submit(&mut c, mixed(6), None).await;
    let js = wait_outputs(
        &mut c,
        &ids,
        None,
        Duration::from_secs(60),
        "copies in S3",
        stored,
        &spec,
    )
    .await;
    // The objects as an independent S3 client (boto3, signed requests) reads them.
    let objects = s3_objects(&moto.url, bucket, "runs/1/");
    let n: usize = js.iter().map(|j| j.outputs.len()).sum();
    assert_eq!(objects.len(), n, "one object per output: {objects:?}");
    check_copies(&js, async |job: &str, i: usize| {
        let key = format!("runs/1/{job}/{i}");
        objects
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no object {key}"))
            .1
            .clone()
    })
    .await;
    // Served from S3 by the gateway (auth is off here: open).
    for o in js.iter().flat_map(|j| &j.outputs) {
        let r = http.get(&o.stored_url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sha256_hex(&r.bytes().await.unwrap()), o.sha256);
    }
    assert!(
        !spec.log_text().contains("testing-secret-9f2c"),
        "the secret key never reaches the log"
    );
    sims.shutdown();
}

/// Custody throughput: `jobs` mixed jobs complete while their CDN answers 503, so every copy
/// is queued; then the CDN comes back and the time until every output is stored gives
/// outputs/s and MB/s. Includes up to one retry delay (0.2 s) and one poll (1 s) of start-up.
async fn custody_throughput(store: &str, jobs: usize) {
    let scratch = tempfile::tempdir().unwrap();
    let moto = if store == "s3" {
        Some(start_moto(&scratch.path().join("moto.log")).await)
    } else {
        None
    };
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "custbench", |_, _| {}).await;
    for (_, sim) in sims.all() {
        sim.update_faults(|f| f.output_status = Some(503));
    }
    let mut env = sims.env();
    match &moto {
        Some(moto) => {
            let made = reqwest::Client::new()
                .put(format!("{}/bench", moto.url))
                .send()
                .await
                .unwrap();
            assert!(made.status().is_success());
            for (k, v) in [
                ("ADGATE_CUSTODY_S3_BUCKET", "bench"),
                ("ADGATE_CUSTODY_S3_ENDPOINT", moto.url.as_str()),
                ("AWS_ACCESS_KEY_ID", "testing-key-id"),
                ("AWS_SECRET_ACCESS_KEY", "testing-secret-9f2c"),
            ] {
                env.push((k.into(), v.into()));
            }
        }
        None => env.push((
            "ADGATE_CUSTODY_DIR".into(),
            scratch.path().join("outputs").display().to_string(),
        )),
    }
    let toml = format!("time_scale = {SCALE}\n{FAST_RETRIES}");
    let spec = GatewaySpec::new(http_port, &toml, env);
    let _gw = spec.spawn();
    let mut c = connect_as(&spec, None).await;
    let mut ids = Vec::new();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(100) {
        let specs = chunk.iter().map(|&i| mixed_job(i)).collect();
        ids.extend(submit(&mut c, specs, None).await);
    }
    let pending = |o: &pb::Output| o.custody() == pb::CustodyState::Pending;
    wait_outputs(
        &mut c,
        &ids,
        None,
        Duration::from_secs(600),
        "completion",
        pending,
        &spec,
    )
    .await;
    let started = Instant::now();
    for (_, sim) in sims.all() {
        sim.update_faults(|f| f.output_status = None);
    }
    let js = wait_outputs(
        &mut c,
        &ids,
        None,
        Duration::from_secs(600),
        "copies",
        stored,
        &spec,
    )
    .await;
    let took = started.elapsed().as_secs_f64();
    let outputs: usize = js.iter().map(|j| j.outputs.len()).sum();
    let bytes: i64 = js
        .iter()
        .flat_map(|j| &j.outputs)
        .map(|o| o.size_bytes)
        .sum();
    println!(
        "custody throughput ({store}): {jobs} jobs, {outputs} outputs, {:.1} MB in {took:.2} s \
         = {:.1} outputs/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        outputs as f64 / took,
        bytes as f64 / 1e6 / took
    );
    // The ceiling: the simulators render every file on request; fetching the same URLs eight
    // at a time (custody's default concurrency) and discarding them takes this long.
    let urls: Vec<String> = js
        .iter()
        .flat_map(|j| &j.outputs)
        .map(|o| o.url.clone())
        .collect();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut fetched = 0usize;
    for group in urls.chunks(8) {
        let gets = group.iter().map(|u| {
            let http = http.clone();
            async move {
                http.get(u)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .len()
            }
        });
        fetched += futures_util::future::join_all(gets)
            .await
            .iter()
            .sum::<usize>();
    }
    let raw = started.elapsed().as_secs_f64();
    println!(
        "simulators alone: {:.1} MB in {raw:.2} s = {:.1} MB/s",
        fetched as f64 / 1e6,
        fetched as f64 / 1e6 / raw
    );
    sims.shutdown();
}

fn bench_jobs() -> usize {
    std::env::var("ADGATE_CUSTODY_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// `cargo test --release --test custody -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn custody_throughput_directory() {
    custody_throughput("directory", bench_jobs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn custody_throughput_s3() {
    custody_throughput("s3", bench_jobs()).await;
}

/// Two replicas on one PostgreSQL database and one directory: every output is copied once
/// (the replicas split the custody queue), with the simulators' checksums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_copy_each_output_once() {
    let db = pgdb::PgDb::create().await;
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "custpg", |_, _| {}).await;
    let outputs = tempfile::tempdir().unwrap();
    let mut env = sims.env();
    env.push((
        "ADGATE_CUSTODY_DIR".into(),
        outputs.path().display().to_string(),
    ));
    env.push(("ADGATE_DATABASE_URL".into(), db.url()));
    let toml = format!("time_scale = {SCALE}\n");
    let first = GatewaySpec::new(http_port, &toml, env.clone());
    let second = GatewaySpec::new(free_port(), &toml, env);
    let _a = first.spawn();
    let _b = second.spawn();
    let mut c = connect_as(&first, None).await;
    let _c2 = connect_as(&second, None).await;
    let ids = submit(&mut c, mixed(9), None).await;
    let js = wait_outputs(
        &mut c,
        &ids,
        None,
        Duration::from_secs(120),
        "copies made by two replicas",
        stored,
        &first,
    )
    .await;
    let dir = outputs.path().to_owned();
    check_copies(&js, async |job: &str, i: usize| {
        std::fs::read(dir.join(job).join(i.to_string())).unwrap()
    })
    .await;
    let http = reqwest::Client::new();
    let mut copied = 0.0;
    for spec in [&first, &second] {
        let m = http
            .get(format!("{}/metrics", spec.http_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        copied += metric_sum(&m, "adgate_custody_outputs_stored_total", &[]);
    }
    let outputs_n: usize = js.iter().map(|j| j.outputs.len()).sum();
    assert_eq!(
        copied, outputs_n as f64,
        "an output was copied twice (or not at all)"
    );
    sims.shutdown();
    db.drop_db().await;
}
