//! Shared by `tests/reliability.rs` and `tests/hostile.rs`: run the real `adgate` binary as a
//! child process against provider simulators started in the test process, over real sockets.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use adgate_sim::{SimConfig, SimHandle, WebhookTarget};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_adgate");

/// A port that was free a moment ago (the gateway binds it itself, so it must be known ahead:
/// the simulators deliver webhooks to it across restarts).
pub fn free_port() -> u16 {
    adgate_sim::free_port().unwrap()
}

/// Names and secrets of one simulated provider account.
#[derive(Debug, Clone)]
pub struct Account {
    pub api_key: String,
    pub webhook_secret: String,
}

/// Every provider's simulator (from `adgate_sim::SIMULATORS`), with the accounts the gateway
/// is configured with.
pub struct Sims {
    handles: Vec<(&'static str, SimHandle)>,
    pub accounts: HashMap<&'static str, Account>,
}

impl Sims {
    /// Start every simulator at `time_scale`, delivering webhooks to
    /// `http://127.0.0.1:{http_port}/webhooks/<provider>`. `tweak` adjusts each config (by provider name).
    pub async fn start(
        time_scale: f64,
        http_port: u16,
        tag: &str,
        tweak: impl Fn(&str, &mut SimConfig),
    ) -> Self {
        let mut accounts = HashMap::new();
        let mut handles = Vec::new();
        for entry in adgate_sim::SIMULATORS {
            let name = entry.name;
            let account = Account {
                api_key: format!("{tag}_{name}_apikey_7f3a9c"),
                webhook_secret: format!("{tag}_{name}_whsec_51e8b2"),
            };
            let mut cfg = SimConfig {
                api_key: account.api_key.clone(),
                time_scale,
                webhook: Some(WebhookTarget {
                    url: format!("http://127.0.0.1:{http_port}/webhooks/{name}"),
                    secret: account.webhook_secret.clone(),
                }),
                seed: 7,
                ..SimConfig::default()
            };
            tweak(name, &mut cfg);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let h = (entry.spawn_on)(listener, cfg).await.unwrap();
            accounts.insert(name, account);
            handles.push((name, h));
        }
        Self { handles, accounts }
    }

    /// The simulator of `provider`.
    pub fn get(&self, provider: &str) -> &SimHandle {
        self.handles
            .iter()
            .find(|(n, _)| *n == provider)
            .map(|(_, h)| h)
            .unwrap_or_else(|| panic!("no simulator for {provider}"))
    }

    pub fn all(&self) -> impl Iterator<Item = (&'static str, &SimHandle)> {
        self.handles.iter().map(|(n, h)| (*n, h))
    }

    /// Environment that points the gateway at these simulators.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for (name, h) in self.all() {
            let upper = name.to_ascii_uppercase();
            let a = &self.accounts[name];
            env.push((format!("ADGATE_{upper}_API_KEY"), a.api_key.clone()));
            env.push((format!("ADGATE_{upper}_BASE_URL"), h.base_url.clone()));
            env.push((
                format!("ADGATE_{upper}_WEBHOOK_SECRET"),
                a.webhook_secret.clone(),
            ));
        }
        env
    }

    pub fn shutdown(self) {
        for (_, h) in self.handles {
            h.shutdown();
        }
    }
}

/// How to run one gateway process (restartable on the same store and ports).
pub struct GatewaySpec {
    pub dir: tempfile::TempDir,
    pub grpc_port: u16,
    pub http_port: u16,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// stdout and stderr of every run, appended.
    pub log: PathBuf,
}

impl GatewaySpec {
    /// A gateway on fresh ports with a TOML config file holding `toml`.
    pub fn new(http_port: u16, toml: &str, env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let grpc_port = free_port();
        let config = dir.path().join("adgate.toml");
        std::fs::write(&config, toml).unwrap();
        let db = dir.path().join("adgate.db");
        let mut all = vec![
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
                format!("sqlite://{}", db.display()),
            ),
            (
                "ADGATE_PUBLIC_URL".to_owned(),
                format!("http://127.0.0.1:{http_port}"),
            ),
            ("ADGATE_LOG_FORMAT".to_owned(), "json".to_owned()),
        ];
        all.extend(env);
        let log = dir.path().join("adgate.log");
        Self {
            args: vec![
                "serve".to_owned(),
                "--config".to_owned(),
                config.display().to_string(),
            ],
            dir,
            grpc_port,
            http_port,
            env: all,
            log,
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Start the binary; output goes to the log file.
    pub fn spawn(&self) -> Gateway {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let child = run_binary(&self.args, &self.env, out, err);
        Gateway { child }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connect to `gw` once it answers (bounded). Fails at once when the process has exited,
    /// and in either case shows the end of its log, so a gateway that could not start says why.
    pub async fn connect(
        &self,
        gw: &mut Gateway,
        within: Duration,
    ) -> GatewayServiceClient<Channel> {
        let start = Instant::now();
        loop {
            // Unauthenticated is an answer too: the gateway is up, the call lacked a token.
            if let Ok(mut c) = GatewayServiceClient::connect(self.grpc_url()).await
                && c.list_providers(pb::ListProvidersRequest {})
                    .await
                    .is_ok_or_unauthenticated()
            {
                return c.max_decoding_message_size(64 << 20);
            }
            let exited = gw.child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() >= within {
                let log = self.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "gateway at {} did not come up within {within:?} (exit: {exited:?}); log tail:\n{}",
                    self.grpc_url(),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Run the binary with a clean environment (only PATH, HOME and `env`).
pub fn run_binary(args: &[String], env: &[(String, String)], out: File, err: File) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "HOME"))
        .env(
            "RUST_LOG",
            std::env::var("ADGATE_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    cmd.spawn().expect("start the adgate binary")
}

/// A running gateway process.
pub struct Gateway {
    pub child: Child,
}

impl Gateway {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} failed");
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Wait (bounded) for exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Connect once the gateway answers ListProviders (bounded).
pub async fn connect(url: &str, within: Duration) -> GatewayServiceClient<Channel> {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = GatewayServiceClient::connect(url.to_owned()).await
            && c.list_providers(pb::ListProvidersRequest {}).await.is_ok()
        {
            return c.max_decoding_message_size(64 << 20);
        }
        assert!(
            start.elapsed() < within,
            "gateway at {url} did not come up within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bounded wait for `cond`.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn sal_job(i: usize) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Staticadslab(
            pb::StaticAdsLabImageAd {
                design_template_id: format!("dt_{i:06}"),
                brand_id: "brand_rel".into(),
                product_id: "prod_rel".into(),
                audience_id: "aud_rel".into(),
                ..Default::default()
            },
        )),
        client_ref: format!("sal-{i}"),
        ..Default::default()
    }
}

pub fn pictify_job(i: usize) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Pictify(pb::PictifyRender {
            template_uid: "tmpl_reliability".into(),
            variables: Some(prost_types::Struct {
                fields: [(
                    "n".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(format!("item-{i}"))),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        })),
        client_ref: format!("pic-{i}"),
        ..Default::default()
    }
}

/// One Abyssale design per job, so a generation found at the simulator names its job.
pub fn abyssale_design(i: usize) -> String {
    format!("0000a11e-0000-4000-8000-{i:012x}")
}

pub fn abyssale_job(i: usize) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Abyssale(pb::AbyssaleGeneration {
            design_id: abyssale_design(i),
            format_names: vec!["facebook-feed".into()],
            ..Default::default()
        })),
        client_ref: format!("aby-{i}"),
        ..Default::default()
    }
}

/// Job `i` of a mixed workload: providers round-robin.
pub fn mixed_job(i: usize) -> pb::JobSpec {
    match i % 3 {
        0 => sal_job(i),
        1 => pictify_job(i),
        _ => abyssale_job(i),
    }
}

/// Every job, in chunks of at most 1000 ids (BatchStatus's limit).
pub async fn statuses(
    c: &mut GatewayServiceClient<Channel>,
    ids: &[String],
) -> Option<Vec<pb::Job>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let r = c
            .batch_status(pb::BatchStatusRequest {
                job_ids: chunk.to_vec(),
                batch_id: String::new(),
            })
            .await
            .ok()?
            .into_inner();
        assert!(
            r.unknown_job_ids.is_empty(),
            "acknowledged jobs unknown: {:?}",
            r.unknown_job_ids
        );
        out.extend(r.jobs);
    }
    Some(out)
}

/// Wait (bounded) until every job is terminal. On timeout the panic names each job still
/// running with its state, provider reference and progress, and the newest lines of the
/// gateway's log, so a failure in CI can be read without re-running it.
pub async fn wait_all_terminal(
    client: &GatewayServiceClient<Channel>,
    ids: &[String],
    within: Duration,
    what: &str,
    spec: &GatewaySpec,
) {
    let start = Instant::now();
    loop {
        let js = statuses(&mut client.clone(), ids).await;
        if js.as_ref().is_some_and(|js| js.iter().all(is_terminal)) {
            return;
        }
        if start.elapsed() > within {
            let stuck: Vec<String> = js
                .unwrap_or_default()
                .iter()
                .filter(|j| !is_terminal(j))
                .map(|j| {
                    format!(
                        "{} {} {:?} ref={:?} progress={:?}",
                        j.provider,
                        j.id,
                        state(j),
                        j.provider_job_id,
                        j.progress.as_ref().map(|p| (&p.step, &p.message))
                    )
                })
                .collect();
            let log = spec.log_text();
            if let Ok(p) = std::env::var("ADGATE_TEST_KEEP_LOG") {
                let _ = std::fs::write(p, &log);
            }
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out waiting for {what}; {} not terminal:\n{}\nlog tail (newest first):\n{}",
                stuck.len(),
                stuck
                    .iter()
                    .take(30)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n"),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is_terminal(j: &pb::Job) -> bool {
    matches!(
        pb::JobState::try_from(j.state),
        Ok(pb::JobState::Completed | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

pub fn state(j: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(j.state).unwrap_or(pb::JobState::Unspecified)
}

pub fn error_code(j: &pb::Job) -> &str {
    j.error.as_ref().map_or("", |e| e.code.as_str())
}

/// The numeric value of a Prometheus sample line `name{labels} value` summed over lines that
/// start with `prefix` and contain every `must` substring.
pub fn metric_sum(text: &str, prefix: &str, must: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("adgate.db")
}

trait AnsweredExt {
    fn is_ok_or_unauthenticated(&self) -> bool;
}

impl<T> AnsweredExt for Result<T, tonic::Status> {
    fn is_ok_or_unauthenticated(&self) -> bool {
        match self {
            Ok(_) => true,
            Err(s) => s.code() == tonic::Code::Unauthenticated,
        }
    }
}
