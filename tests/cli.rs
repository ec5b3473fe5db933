//! The command line (`adgate submit|watch|status|download`) end to end: the real binary as a
//! client of a real sandbox gateway (`adgate serve --sandbox` on free ports, its own store).
//! Output is piped, so these runs also check plain and `--json` output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use serde_json::Value;
use support::{BIN, Gateway, GatewaySpec, Sims, free_port, metric_sum, run_binary};

const SAL: &str = r#""staticadslab": {"design_template_id": "dt_a1b2c3d4e5f67890", "brand_id": "brand_a1b2c3d4e5f67890", "product_id": "prod_a1b2c3d4e5f67890", "audience_id": "aud_a1b2c3d4e5f67890""#;

/// A sandbox gateway on free ports with its own store; stopped on drop.
struct Sandbox {
    _gateway: Gateway,
    dir: tempfile::TempDir,
    grpc: String,
    http: String,
}

impl Sandbox {
    async fn start(extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let grpc_port = free_port();
        // Two draws can land on the same free port; the gateway would then fail to bind.
        let http_port = loop {
            let p = free_port();
            if p != grpc_port {
                break p;
            }
        };
        let mut env = vec![
            (
                "ADGATE_GRPC_ADDR".to_owned(),
                format!("127.0.0.1:{grpc_port}"),
            ),
            (
                "ADGATE_HTTP_ADDR".to_owned(),
                format!("127.0.0.1:{http_port}"),
            ),
            (
                "ADGATE_DATABASE_URL".to_owned(),
                format!("sqlite://{}", dir.path().join("adgate.db").display()),
            ),
            ("ADGATE_LOG_FORMAT".to_owned(), "json".to_owned()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let log = File::create(dir.path().join("gateway.log")).unwrap();
        let mut child = run_binary(
            &["serve".to_owned(), "--sandbox".to_owned()],
            &env,
            log.try_clone().unwrap(),
            log,
        );
        let grpc = format!("http://127.0.0.1:{grpc_port}");
        // Up once it answers an RPC (UNAUTHENTICATED counts: the gateway answered). A gateway
        // that exits or never answers fails the test with its log.
        let start = std::time::Instant::now();
        loop {
            if let Ok(mut c) = GatewayServiceClient::connect(grpc.clone()).await {
                match c.list_providers(pb::ListProvidersRequest {}).await {
                    Ok(_) => break,
                    Err(st) if st.code() == tonic::Code::Unauthenticated => break,
                    Err(_) => {}
                }
            }
            let exited = child.try_wait().unwrap();
            if exited.is_some() || start.elapsed() > Duration::from_secs(30) {
                let log =
                    std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
                panic!("the sandbox gateway did not come up (exit: {exited:?}); its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            _gateway: Gateway { child },
            dir,
            grpc,
            http: format!("http://127.0.0.1:{http_port}"),
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Run the CLI against this gateway (stdout piped: plain mode), bounded in time.
    async fn cli(&self, args: &[&str]) -> Out {
        self.cli_env(args, &[]).await
    }

    async fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--target")
            .arg(&self.grpc)
            .env_remove("ADGATE_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_bounded(cmd).await
    }

    /// Every job the gateway stores (the `adgate_jobs` gauge, summed over states).
    async fn stored_jobs(&self) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_sum(&text, "adgate_jobs{", &[])
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn run_bounded(mut cmd: Command) -> Out {
    let out: Output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || cmd.output().unwrap()),
    )
    .await
    .expect("the CLI finished within 120 s")
    .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn read_results(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn jsonl_file() -> String {
    [
        format!(r#"{{"client_ref": "ad-1", "labels": {{"campaign": "spring"}}, {SAL}, "prompt": "sunny"}}}}"#),
        r#"{"clientRef": "card-1", "pictify": {"templateUid": "tmpl_blog_card", "variables": {"title": "Spring sale", "discount": 25}, "format": "PICTIFY_FORMAT_PNG"}}"#.to_owned(),
        String::new(),
        r#"{"client_ref": "banners-1", "abyssale": {"design_id": "8c3d2a8e-5b1f-4c1e-9d55-0f2e4b6a7c10", "format_names": ["facebook-feed", "instagram-post"]}}"#.to_owned(),
    ]
    .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_submit_watches_to_the_end_writes_results_and_a_rerun_creates_nothing() {
    let sbx = Sandbox::start(&[]).await;
    let file = sbx.write("ads.jsonl", &jsonl_file());
    let results = sbx.path("results.jsonl");
    let out = sbx
        .cli(&[
            "submit",
            &file,
            "--watch",
            "--results",
            results.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    // Plain mode: no escape sequences, one line per change, a closing summary.
    assert!(!out.stdout.contains('\x1b'), "{out:?}");
    assert!(out.stdout.contains("] COMPLETED  job_"), "{out:?}");
    assert!(
        out.stdout.contains("3 jobs: 3 COMPLETED; cost $1.00"),
        "{out:?}"
    );
    let rows = read_results(&results);
    let refs: Vec<&str> = rows
        .iter()
        .map(|r| r["client_ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["ad-1", "card-1", "banners-1"]);
    for r in &rows {
        assert_eq!(r["state"], "COMPLETED", "{r}");
        assert!(r["job_id"].as_str().unwrap().starts_with("job_"), "{r}");
        assert!(r["error"].is_null(), "{r}");
    }
    assert_eq!(rows[2]["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["cost"]["micros"], "1000000");
    assert_eq!(sbx.stored_jobs().await, 3.0);

    // The same command again: the chunk replays, the same jobs come back, nothing is created.
    let again = sbx.cli(&["submit", &file, "--json"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    let events = again.json_lines();
    assert_eq!(events.len(), 1, "{again:?}");
    assert_eq!(events[0]["event"], "submitted");
    assert_eq!(events[0]["replayed"], true);
    let ids: Vec<&str> = events[0]["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let first: Vec<&str> = rows.iter().map(|r| r["job_id"].as_str().unwrap()).collect();
    assert_eq!(ids, first);
    assert_eq!(sbx.stored_jobs().await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_with_a_column_mapping_goes_in_chunks_and_watch_json_parses() {
    let sbx = Sandbox::start(&[]).await;
    let mut csv = String::from(
        "client_ref,labels.campaign,Brand,staticadslab.design_template_id,staticadslab.product_id,staticadslab.audience_id,staticadslab.prompt,notes\n",
    );
    for i in 1..=5 {
        csv.push_str(&format!(
            "row-{i},spring,brand_a1b2c3d4e5f67890,dt_a1b2c3d4e5f67890,prod_a1b2c3d4e5f67890,aud_a1b2c3d4e5f67890,\"bold, minimal {i}\",ignored\n"
        ));
    }
    let file = sbx.write("ads.csv", &csv);
    let args = [
        "submit",
        &file,
        "--column",
        "Brand=staticadslab.brand_id",
        "--column",
        "notes=",
        "--chunk",
        "2",
        "--json",
    ];
    let out = sbx.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
    let events = out.json_lines();
    assert_eq!(events.len(), 3, "5 rows in chunks of 2: {out:?}");
    let batches: Vec<String> = events
        .iter()
        .map(|e| e["batch_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events[2]["first_line"], 6);
    assert_eq!(sbx.stored_jobs().await, 5.0);

    let mut watch = vec!["watch"];
    watch.extend(batches.iter().map(String::as_str));
    watch.push("--json");
    let out = sbx.cli(&watch).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines = out.json_lines();
    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary", "{out:?}");
    assert_eq!(summary["counts"]["COMPLETED"], 5, "{out:?}");
    assert_eq!(summary["cost_micros"]["USD"], 5_000_000, "{out:?}");
    for l in &lines[..lines.len() - 1] {
        assert_eq!(l["event"], "job", "{l}");
        assert!(l["job"]["id"].as_str().unwrap().starts_with("job_"), "{l}");
        assert_eq!(l["job"]["labels"]["campaign"], "spring", "{l}");
    }
    // The mapped header reached the spec: status shows the jobs, all completed.
    let status = sbx.cli(&["status", &batches[0]]).await;
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.contains("2 jobs: 2 COMPLETED"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_makes_the_exit_code_non_zero() {
    let sbx = Sandbox::start(&[]).await;
    // Sandbox ads take 1.5-3 s; a 200 ms deadline cannot be met.
    let text = format!(
        "{{\"client_ref\": \"fine\", {SAL}}}}}\n{{\"client_ref\": \"too-slow\", \"deadline\": \"0.2s\", {SAL}}}}}\n"
    );
    let file = sbx.write("ads.jsonl", &text);
    let results = sbx.path("results.jsonl");
    let out = sbx
        .cli(&[
            "submit",
            &file,
            "--watch",
            "--results",
            results.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("FAILED     job_"), "{out:?}");
    assert!(out.stdout.contains("DEADLINE_EXCEEDED"), "{out:?}");
    let rows = read_results(&results);
    assert_eq!(rows[0]["state"], "COMPLETED");
    assert_eq!(rows[1]["state"], "FAILED");
    assert_eq!(rows[1]["error"]["code"], "DEADLINE_EXCEEDED");
    let batch = rows[1]["batch_id"].as_str().unwrap();
    let job = rows[1]["job_id"].as_str().unwrap();
    assert_eq!(sbx.cli(&["status", batch]).await.code, 1);
    let one = sbx.cli(&["status", job, "--json"]).await;
    assert_eq!(one.code, 1, "{one:?}");
    assert_eq!(one.json_lines()[0]["job"]["state"], "JOB_STATE_FAILED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spec_prints_its_field_violation_and_stores_nothing() {
    let sbx = Sandbox::start(&[]).await;
    let text = format!(
        "{{\"client_ref\": \"ok\", {SAL}}}}}\n{{\"client_ref\": \"bad\", {}}}}}\n",
        SAL.replace("brand_a1b2c3d4e5f67890", "acme")
    );
    let file = sbx.write("bad.jsonl", &text);
    // One job per chunk: the good first chunk is not stored either (every chunk is
    // validated before any is stored).
    let out = sbx.cli(&["submit", &file, "--watch", "--chunk", "1"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("[INVALID_JOB_SPEC]"), "{out:?}");
    assert!(
        out.stderr.contains("bad.jsonl:2: staticadslab.brand_id: "),
        "the violation names the file line and the field: {out:?}"
    );
    assert_eq!(sbx.stored_jobs().await, 0.0);

    // A row that is not a JobSpec at all is caught before anything is sent.
    let file = sbx.write(
        "typo.jsonl",
        &format!("{{\"client_ref\": \"x\", \"colour\": 1, {SAL}}}}}\n"),
    );
    let out = sbx.cli(&["submit", &file]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("typo.jsonl:1: ") && out.stderr.contains("colour"),
        "{out:?}"
    );
    assert!(out.stderr.contains("nothing was sent"), "{out:?}");
    assert_eq!(sbx.stored_jobs().await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_writes_every_output_with_its_size() {
    let sbx = Sandbox::start(&[]).await;
    let file = sbx.write("ads.jsonl", &jsonl_file());
    let results = sbx.path("results.jsonl");
    let out = sbx
        .cli(&[
            "submit",
            &file,
            "--watch",
            "--results",
            results.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let rows = read_results(&results);
    let batch = rows[0]["batch_id"].as_str().unwrap();
    let dir = sbx.path("images");
    let out = sbx
        .cli(&["download", batch, "--dir", dir.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let expected = [
        ("ad-1.png", &rows[0]["outputs"][0]),
        ("card-1.png", &rows[1]["outputs"][0]),
        ("banners-1-1.png", &rows[2]["outputs"][0]),
        ("banners-1-2.png", &rows[2]["outputs"][1]),
    ];
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    want.sort();
    assert_eq!(names, want, "{out:?}");
    for (name, output) in expected {
        let body = reqwest::get(output["url"].as_str().unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let written = std::fs::read(dir.join(name)).unwrap();
        assert!(!written.is_empty(), "{name}");
        assert_eq!(written.len(), body.len(), "{name}");
        assert_eq!(written, body.as_ref(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_never_shown_and_an_absent_gateway_is_exit_3() {
    let token = "cli-test-token-5f1c9a";
    let sbx = Sandbox::start(&[("ADGATE_AUTH_TOKENS", token)]).await;
    let without = sbx.cli(&["status", "bat_00000000000000000000"]).await;
    assert_eq!(without.code, 3, "{without:?}");
    assert!(
        without.stderr.contains("[MISSING_CREDENTIALS]"),
        "{without:?}"
    );
    let with = sbx
        .cli_env(
            &["status", "bat_00000000000000000000"],
            &[("ADGATE_TOKEN", token)],
        )
        .await;
    // Authenticated now: the gateway looks the batch up and does not know it.
    assert_eq!(with.code, 2, "{with:?}");
    assert!(with.stderr.contains("[BATCH_NOT_FOUND]"), "{with:?}");
    assert!(!with.stderr.contains(token) && !with.stdout.contains(token));
    let wrong = sbx
        .cli(&["status", "bat_00000000000000000000", "--token", "not-it"])
        .await;
    assert_eq!(wrong.code, 3, "{wrong:?}");
    assert!(!wrong.stderr.contains("not-it"), "{wrong:?}");

    let mut cmd = Command::new(BIN);
    cmd.args(["status", "bat_00000000000000000000", "--target"])
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let down = run_bounded(cmd).await;
    assert_eq!(down.code, 3, "{down:?}");
    assert!(down.stderr.contains("no gateway answered"), "{down:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reconnects_when_the_gateway_restarts_and_still_ends_with_every_job() {
    // Simulators in this process, so they outlive the gateway; ads take 4-5 s.
    let http_port = free_port();
    let sims = Sims::start(0.05, http_port, "cliwatch", |_, cfg| {
        cfg.job_duration = (Duration::from_secs(80), Duration::from_secs(100));
    })
    .await;
    let spec = GatewaySpec::new(
        http_port,
        "time_scale = 0.05\ngrace_period_secs = 2\n",
        sims.env(),
    );
    let mut gw = spec.spawn();
    support::connect(&spec.grpc_url(), Duration::from_secs(30)).await;
    let lines: Vec<String> = (1..=4)
        .map(|i| format!("{{\"client_ref\": \"ad-{i}\", {SAL}, \"prompt\": \"v{i}\"}}}}"))
        .collect();
    let file = spec.dir.path().join("ads.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["submit", file.to_str().unwrap(), "--json", "--target"])
        .arg(spec.grpc_url());
    let out = run_bounded(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    let batch = out.json_lines()[0]["batch_id"].as_str().unwrap().to_owned();

    let results = spec.dir.path().join("results.jsonl");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "watch",
        &batch,
        "--results",
        results.to_str().unwrap(),
        "--target",
    ])
    .arg(spec.grpc_url())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let watcher = cmd.spawn().unwrap();
    let metrics = format!("{}/metrics", spec.http_url());
    support::wait_for("the CLI's stream", Duration::from_secs(20), || {
        let r = reqwest::get(metrics.clone());
        async move {
            match r.await {
                Ok(r) => {
                    metric_sum(
                        &r.text().await.unwrap_or_default(),
                        "adgate_watch_streams",
                        &[],
                    ) >= 1.0
                }
                Err(_) => false,
            }
        }
    })
    .await;
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway drained");
    let _restarted = spec.spawn();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || watcher.wait_with_output().unwrap()),
    )
    .await
    .expect("the watch ended")
    .unwrap();
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("reconnecting"),
        "the stream was cut: {out:?}"
    );
    let rows = read_results(&results);
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["state"] == "COMPLETED"), "{rows:?}");
    sims.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_lists_by_filter() {
    let sbx = Sandbox::start(&[]).await;
    let file = sbx.write("ads.jsonl", &jsonl_file());
    let out = sbx.cli(&["submit", &file, "--watch"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = sbx
        .cli(&["jobs", "--filter", "provider = \"staticadslab\"", "--json"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let jobs = out.json_lines();
    assert_eq!(jobs.len(), 1, "{out:?}");
    assert_eq!(jobs[0]["job"]["clientRef"], "ad-1");
}
