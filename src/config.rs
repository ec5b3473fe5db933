//! Command line, environment and TOML configuration.
//!
//! Precedence, highest first: environment variables (the names in SPEC §5), the TOML file
//! (`--config` or `ADGATE_CONFIG`), the sandbox's defaults (`--sandbox`), built-in defaults.
//! Everything is checked at start-up; the first problem becomes one line on stderr and a
//! non-zero exit. Secrets are held in [`Secret`], which never prints its value.

mod notify;
pub use notify::SANDBOX_NOTIFY_SECRET;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::providers;

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://adgate.db";
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_WATCH_STREAMS: usize = 10_000;
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_JOBS_PER_SUBMIT: usize = 10_000;
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// A provider event that matches no job yet is kept this long (a day of provider retries).
pub const DEFAULT_KEPT_EVENT_TTL: Duration = Duration::from_secs(24 * 3600);

const ENV_HELP_HEAD: &str = "\
ENVIRONMENT (overrides the TOML file):
  ADGATE_CONFIG                    TOML file (same as --config)
  ADGATE_GRPC_ADDR                 gRPC listen address [default: 127.0.0.1:50051]
  ADGATE_HTTP_ADDR                 webhooks, /metrics, /healthz [default: 127.0.0.1:8080]
  ADGATE_DATABASE_URL              job store [default: sqlite://adgate.db]
  ADGATE_PUBLIC_URL                base URL providers reach the HTTP listener at; empty = no
                                   webhooks, poll only [default: empty; sandbox: http://<http addr>]
  ADGATE_AUTH_TOKENS               comma-separated caller tokens (authorization: Bearer <token>);
                                   empty = no caller auth
  ADGATE_LOG_FORMAT                text | json [default: text on a terminal, else json]
  ADGATE_REPLICA_ID                stable replica identity on PostgreSQL (1-64 of A-Z a-z 0-9 . _ -),
                                   one per live process [default: a fresh random id per start]
  ADGATE_CUSTODY_STORE             output custody: off | directory | s3 [default: off; sandbox:
                                   directory adgate-outputs beside the database]
  ADGATE_CUSTODY_DIR               custody directory (implies directory)
  ADGATE_CUSTODY_S3_BUCKET         custody bucket (implies s3); credentials: AWS_ACCESS_KEY_ID,
                                   AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
  ADGATE_CUSTODY_S3_PREFIX, ADGATE_CUSTODY_S3_ENDPOINT (moto, MinIO), ADGATE_CUSTODY_S3_REGION
  ADGATE_CUSTODY_MAX_BYTES         largest output copied [default: 67108864]
  ADGATE_CUSTODY_DOWNLOAD_TIMEOUT_SECS  one copy's time limit [default: 60]
";

const ENV_HELP_TAIL: &str = "  RUST_LOG                         log filter [default: info]

TOML FILE (every key optional):
  grpc_addr, http_addr, database_url, public_url, auth_tokens = [..], log_format
  time_scale = 1.0            multiplies every provider duration except job deadlines
  grace_period_secs = 10      bound on graceful drain after SIGTERM/SIGINT
  max_watch_streams = 10000   concurrent WatchProgress streams
  heartbeat_secs = 15         heartbeat on idle WatchProgress streams
  max_jobs_per_submit = 10000
  lease_secs = 10             replicas on PostgreSQL: a dead replica's jobs move after this
  replica_id = \"gw-0\"         stable replica identity (same as ADGATE_REPLICA_ID)
  kept_event_ttl_secs = 86400 how long a provider event that matches no job yet is kept
  [custody]                   store, directory, s3_bucket, s3_prefix, s3_endpoint, s3_region,
  max_bytes, download_timeout_secs, concurrency = 8, retry_initial_secs = 2,
  retry_max_secs = 300, retry_horizon_secs = 21600, expired_after = 3
  job_retention_secs = 2592000  terminal jobs are deleted this long after they ended (30 days)
  request_id_ttl_secs = 86400   a Submit's request_id replays this long, then is a new request
  delivery_id_ttl_secs = 259200 provider webhook delivery ids are remembered this long (72 h)
  retention_interval_secs = 600 time between retention passes
  [providers.<name>]          name: {providers}
  api_key, base_url, webhook_secret, request_timeout_secs,
  webhook_secrets = { \"render.completed\" = \"whsec_…\" }  per-event secrets (Pictify),
  plan = \"free\"|\"pro\"|\"business\" (Pictify), resume_subscriptions = false,
  manage_subscriptions = false (Pictify: create its webhook subscriptions at start-up),
  max_running_poll_keys, daily_requests, push_check_secs,
  requests, window_secs, max_concurrent_submits, poll_interval_ms, min_poll_interval_ms,
  max_keys_per_poll, max_items_per_submit, first_poll_after_ms, deadline_secs,
  typical_job_secs (first backstop poll with webhooks),
  longest_job_secs (an unknown submit outcome waits this + 20% for a callback)";

/// The long help: the fixed part, plus three variables per registered provider.
pub fn env_help() -> String {
    let mut s = ENV_HELP_HEAD.to_owned();
    for entry in providers::REGISTRY {
        let upper = entry.name.to_ascii_uppercase();
        s.push_str(&format!(
            "  {:<32} enables {}\n  {:<32} [default: {}]\n  {:<32} verifies {}'s webhooks\n",
            format!("ADGATE_{upper}_API_KEY"),
            entry.name,
            format!("ADGATE_{upper}_BASE_URL"),
            entry.default_base_url,
            format!("ADGATE_{upper}_WEBHOOK_SECRET"),
            entry.name,
        ));
    }
    let names: Vec<&str> = providers::names().collect();
    s.push_str(&ENV_HELP_TAIL.replace("{providers}", &names.join(" | ")));
    s
}

/// adgate: one gRPC API for asynchronous ad-image providers.
#[derive(Debug, Parser)]
#[command(name = "adgate", version, after_long_help = env_help())]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    #[command(after_long_help = env_help())]
    Serve(ServeArgs),
    /// Run every provider's simulator alone (for pointing a gateway or a test at them).
    Sim(SimArgs),
    /// Submit a JSON Lines or CSV file of job specs to a running gateway, in chunks that are
    /// safe to re-run; with --watch, follow them to the end.
    Submit(crate::cli::SubmitArgs),
    /// Follow batches until every job is terminal, with a progress bar per state.
    Watch(crate::cli::WatchArgs),
    /// Show batches or jobs.
    Status(crate::cli::StatusArgs),
    /// Download every output of batches into a directory.
    Download(crate::cli::DownloadArgs),
    /// List jobs, newest first, optionally filtered (needs a gateway with ListJobs).
    Jobs(crate::cli::JobsArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (environment variables override it). Also ADGATE_CONFIG.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Start every provider's simulator in-process on loopback and point every provider
    /// that has no explicit base URL at them. Jobs complete in seconds; no keys needed.
    #[arg(long)]
    pub sandbox: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Port of one provider's simulator, as NAME=PORT (repeatable; unnamed ones take any
    /// free port).
    #[arg(long = "sim-port", value_name = "NAME=PORT", value_parser = parse_sim_port)]
    pub sim_ports: Vec<(String, u16)>,
    /// API key every simulator accepts.
    #[arg(long, default_value = "sim_key")]
    pub api_key: String,
    /// Multiplies the simulators' documented durations (0.05 = twenty times faster).
    #[arg(long, default_value_t = 0.05)]
    pub time_scale: f64,
}

/// A secret string. `Debug` and `Display` print `[redacted]`; use [`Secret::expose`] to read it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration problem: one line, naming the setting and, unless it is secret, the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {name} {value:?}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}

impl ConfigError {
    fn invalid(name: &str, value: &str, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Per-provider limit overrides, applied on top of the adapter's documented `limits()`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub requests: Option<u32>,
    pub window_secs: Option<f64>,
    pub max_concurrent_submits: Option<usize>,
    pub poll_interval_ms: Option<u64>,
    pub min_poll_interval_ms: Option<u64>,
    pub max_keys_per_poll: Option<usize>,
    pub max_items_per_submit: Option<usize>,
    pub first_poll_after_ms: Option<u64>,
    pub deadline_secs: Option<u64>,
    pub typical_job_secs: Option<f64>,
    pub longest_job_secs: Option<f64>,
    /// Poll keys (Pictify batches) running at once; a new submit waits while reached.
    pub max_running_poll_keys: Option<usize>,
    /// Requests per rolling 24 h, on top of `requests` per `window_secs`.
    pub daily_requests: Option<u32>,
    /// How often the provider's push subscriptions are checked (`check_push`); 0 = never.
    pub push_check_secs: Option<f64>,
}

/// `[providers.<name>]` in the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    api_key: Option<Secret>,
    base_url: Option<String>,
    webhook_secret: Option<Secret>,
    /// Per-event webhook secrets (`{ "render.completed" = "whsec_…" }`).
    #[serde(default)]
    webhook_secrets: BTreeMap<String, Secret>,
    plan: Option<String>,
    resume_subscriptions: Option<bool>,
    manage_subscriptions: Option<bool>,
    request_timeout_secs: Option<f64>,
    /// Replaces the adapter's price unit (`USD`, `pictify_credit`, …).
    price_unit: Option<String>,
    /// Price per kind of job or output (`flat`, `editable`, `image`, `format`), in the unit.
    #[serde(default)]
    prices: BTreeMap<String, f64>,
    #[serde(flatten)]
    limits: LimitOverrides,
}

/// `[callers.<name>]` in the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCaller {
    weight: Option<u32>,
    /// Signs deliveries to URLs this caller names in its Submits.
    notify_secret: Option<Secret>,
    /// Endpoints that receive this caller's events without being named in Submits.
    #[serde(default)]
    webhooks: Vec<notify::FileWebhook>,
    /// Most the caller may spend per UTC day, by provider, in that provider's price unit.
    #[serde(default)]
    daily_spend_limits: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    grpc_addr: Option<String>,
    http_addr: Option<String>,
    database_url: Option<String>,
    public_url: Option<String>,
    auth_tokens: Option<Vec<Secret>>,
    log_format: Option<String>,
    time_scale: Option<f64>,
    grace_period_secs: Option<f64>,
    max_watch_streams: Option<usize>,
    heartbeat_secs: Option<f64>,
    max_jobs_per_submit: Option<usize>,
    lease_secs: Option<f64>,
    replica_id: Option<String>,
    kept_event_ttl_secs: Option<f64>,
    job_retention_secs: Option<f64>,
    request_id_ttl_secs: Option<f64>,
    delivery_id_ttl_secs: Option<f64>,
    retention_interval_secs: Option<f64>,
    #[serde(default)]
    providers: BTreeMap<String, FileProvider>,
    #[serde(default)]
    callers: BTreeMap<String, FileCaller>,
    #[serde(default)]
    notify: notify::FileNotify,
    custody: Option<crate::config_custody::FileCustody>,
}

/// One provider's resolved settings. The provider is enabled when `api_key` is set.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    pub api_key: Option<Secret>,
    /// `None` = the adapter's documented default.
    pub base_url: Option<String>,
    pub webhook_secret: Option<Secret>,
    /// Per-event webhook secrets; the default (`webhook_secret`) covers the other events.
    pub webhook_secrets: BTreeMap<String, Secret>,
    /// The provider plan (`free`, `pro`, `business`); `None` = the adapter's default.
    pub plan: Option<String>,
    /// Resume a push subscription the provider paused.
    pub resume_subscriptions: bool,
    /// Create the push subscriptions the gateway needs at start-up (secrets kept in memory).
    pub manage_subscriptions: bool,
    pub request_timeout: Option<Duration>,
    pub limits: LimitOverrides,
    pub prices: adgate_engine::PriceOverrides,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database_url: String,
    /// `None` = no webhooks (poll only).
    pub public_url: Option<String>,
    pub auth_tokens: Vec<Secret>,
    pub log_format: Option<LogFormat>,
    /// `None` = not configured (1.0, or the sandbox's 0.05).
    pub time_scale: Option<f64>,
    pub grace_period: Duration,
    pub max_watch_streams: usize,
    pub heartbeat: Duration,
    pub max_jobs_per_submit: usize,
    /// Lease on claimed jobs when replicas share a PostgreSQL store.
    pub lease: Duration,
    /// Stable identity among replicas; `None` = a fresh random id per start.
    pub replica_id: Option<String>,
    /// How long a provider event that matched no job is kept for its job to appear.
    pub kept_event_ttl: Duration,
    /// How long terminal jobs, request ids and webhook delivery ids are kept.
    pub retention: adgate_engine::Retention,
    /// By provider name; every registered provider has an entry.
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Weights and daily spend limits of named callers (`[callers.<name>]`).
    pub callers: adgate_engine::CallerPolicies,
    /// Outbound webhooks (`[notify]`, the callers' secrets and endpoints).
    pub notify: adgate_engine::notify::NotifyConfig,
    /// Output custody (`[custody]`, `ADGATE_CUSTODY_*`); off unless configured or sandboxed.
    pub custody: crate::config_custody::CustodySettings,
    pub sandbox: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let addr = |s: &str| s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        Self {
            grpc_addr: addr(DEFAULT_GRPC_ADDR),
            http_addr: addr(DEFAULT_HTTP_ADDR),
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            public_url: None,
            auth_tokens: Vec::new(),
            log_format: None,
            time_scale: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            max_watch_streams: DEFAULT_MAX_WATCH_STREAMS,
            heartbeat: DEFAULT_HEARTBEAT,
            max_jobs_per_submit: DEFAULT_MAX_JOBS_PER_SUBMIT,
            lease: DEFAULT_LEASE,
            replica_id: None,
            kept_event_ttl: DEFAULT_KEPT_EVENT_TTL,
            retention: adgate_engine::Retention::default(),
            providers: providers::names()
                .map(|n| (n.to_owned(), ProviderSettings::default()))
                .collect(),
            callers: adgate_engine::CallerPolicies::default(),
            notify: adgate_engine::notify::NotifyConfig::default(),
            custody: Default::default(),
            sandbox: false,
        }
    }
}

impl Settings {
    /// Resolve settings from the arguments, a TOML file and the environment (`env` looks one
    /// variable up; pass `|k| std::env::var(k).ok()` in production).
    pub fn load(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let path = args.config.clone().or_else(|| {
            env("ADGATE_CONFIG")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let file = match path {
            Some(p) => read_file(&p)?,
            None => FileConfig::default(),
        };
        Self::resolve(args.sandbox, file, env)
    }

    /// Settings from TOML text and the environment (used by `load` and tests).
    pub fn from_toml(
        sandbox: bool,
        toml_text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = toml::from_str(toml_text).map_err(|e| ConfigError::File {
            path: "<inline>".to_owned(),
            reason: one_line(&e.to_string()),
        })?;
        Self::resolve(sandbox, file, env)
    }

    fn resolve(
        sandbox: bool,
        file: FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        // An empty variable counts as set (e.g. ADGATE_PUBLIC_URL= disables webhooks).
        let var = |name: &str| env(name);
        let mut s = Settings {
            sandbox,
            ..Settings::default()
        };

        let pick = |name: &str, file: Option<String>| var(name).or(file);
        if let Some(v) = pick("ADGATE_GRPC_ADDR", file.grpc_addr) {
            s.grpc_addr = parse_addr("ADGATE_GRPC_ADDR", &v)?;
        }
        if let Some(v) = pick("ADGATE_HTTP_ADDR", file.http_addr) {
            s.http_addr = parse_addr("ADGATE_HTTP_ADDR", &v)?;
        }
        if let Some(v) = pick("ADGATE_DATABASE_URL", file.database_url) {
            if v.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "ADGATE_DATABASE_URL",
                    &v,
                    "must not be empty",
                ));
            }
            s.database_url = v;
        }
        if let Some(v) = pick("ADGATE_PUBLIC_URL", file.public_url) {
            s.public_url = parse_public_url(&v)?;
        }
        s.auth_tokens = match var("ADGATE_AUTH_TOKENS") {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Secret::new)
                .collect(),
            None => file
                .auth_tokens
                .unwrap_or_default()
                .into_iter()
                .filter(|t| !t.expose().trim().is_empty())
                .collect(),
        };
        if let Some(v) = pick("ADGATE_LOG_FORMAT", file.log_format) {
            s.log_format = match v.trim().to_ascii_lowercase().as_str() {
                "" => None,
                "text" => Some(LogFormat::Text),
                "json" => Some(LogFormat::Json),
                _ => {
                    return Err(ConfigError::invalid(
                        "ADGATE_LOG_FORMAT",
                        &v,
                        "expected text or json",
                    ));
                }
            };
        }
        if let Some(t) = file.time_scale {
            if !(t.is_finite() && t > 0.0 && t <= 1000.0) {
                return Err(ConfigError::invalid(
                    "time_scale",
                    &t.to_string(),
                    "must be in (0, 1000]",
                ));
            }
            s.time_scale = Some(t);
        }
        if let Some(g) = file.grace_period_secs {
            s.grace_period = secs("grace_period_secs", g)?;
        }
        if let Some(h) = file.heartbeat_secs {
            s.heartbeat = secs("heartbeat_secs", h)?;
            if s.heartbeat.is_zero() {
                return Err(ConfigError::invalid(
                    "heartbeat_secs",
                    &h.to_string(),
                    "must be > 0",
                ));
            }
        }
        if let Some(m) = file.max_watch_streams {
            s.max_watch_streams = positive("max_watch_streams", m)?;
        }
        if let Some(l) = file.lease_secs {
            s.lease = secs("lease_secs", l)?;
        }
        if let Some(t) = file.kept_event_ttl_secs {
            s.kept_event_ttl = secs("kept_event_ttl_secs", t)?;
        }
        s.retention = retention(
            file.job_retention_secs,
            file.request_id_ttl_secs,
            file.delivery_id_ttl_secs,
            file.retention_interval_secs,
        )?;
        // Empty means unset, as for ADGATE_LOG_FORMAT: a random id per start.
        if let Some(v) = pick("ADGATE_REPLICA_ID", file.replica_id).filter(|v| !v.is_empty()) {
            s.replica_id = Some(parse_replica_id(&v)?);
        }
        if let Some(m) = file.max_jobs_per_submit {
            s.max_jobs_per_submit = positive("max_jobs_per_submit", m)?;
        }

        for name in file.providers.keys() {
            if !s.providers.contains_key(name) {
                let known: Vec<&str> = providers::names().collect();
                return Err(ConfigError::invalid(
                    "[providers.<name>]",
                    name,
                    format!("unknown provider; expected one of {}", known.join(", ")),
                ));
            }
        }
        s.custody = crate::config_custody::resolve(file.custody, env)?;
        let mut file_providers = file.providers;
        for (name, p) in s.providers.iter_mut() {
            let f = file_providers.remove(name).unwrap_or_default();
            let upper = name.to_ascii_uppercase();
            let key_var = format!("ADGATE_{upper}_API_KEY");
            let url_var = format!("ADGATE_{upper}_BASE_URL");
            let secret_var = format!("ADGATE_{upper}_WEBHOOK_SECRET");
            p.api_key = var(&key_var).map(Secret::new).or(f.api_key);
            p.api_key = p.api_key.take().filter(|k| !k.expose().trim().is_empty());
            p.webhook_secret = var(&secret_var).map(Secret::new).or(f.webhook_secret);
            p.webhook_secret = p.webhook_secret.take().filter(|k| !k.expose().is_empty());
            if let Some((event, _)) = f
                .webhook_secrets
                .iter()
                .find(|(_, v)| v.expose().is_empty())
            {
                return Err(ConfigError::invalid(
                    &format!("providers.{name}.webhook_secrets.{event}"),
                    "\"\"",
                    "must not be empty",
                ));
            }
            p.webhook_secrets = f.webhook_secrets;
            p.plan = f.plan;
            p.resume_subscriptions = f.resume_subscriptions.unwrap_or(false);
            p.manage_subscriptions = f.manage_subscriptions.unwrap_or(false);
            if let Some(u) = var(&url_var)
                .or(f.base_url)
                .filter(|u| !u.trim().is_empty())
            {
                check_http_url(&url_var, &u)?;
                p.base_url = Some(u.trim_end_matches('/').to_owned());
            }
            if let Some(t) = f.request_timeout_secs {
                p.request_timeout =
                    Some(secs(&format!("providers.{name}.request_timeout_secs"), t)?);
            }
            check_overrides(name, &f.limits)?;
            p.limits = f.limits;
            p.prices = adgate_engine::PriceOverrides {
                unit: f.price_unit.filter(|u| !u.trim().is_empty()),
                micros_by_kind: f
                    .prices
                    .iter()
                    .map(|(kind, amount)| {
                        micros(&format!("providers.{name}.prices.{kind}"), *amount)
                            .map(|m| (kind.clone(), m))
                    })
                    .collect::<Result<_, _>>()?,
            };
        }
        s.notify = notify::resolve(sandbox, file.notify, env)?;
        for (caller, c) in file.callers {
            if !crate::auth::is_caller_name(&caller) {
                return Err(ConfigError::invalid(
                    "[callers.<name>]",
                    &caller,
                    "a caller name is 1-63 of a-z 0-9 - _ .",
                ));
            }
            let mut policy = adgate_engine::CallerPolicy::default();
            if let Some(w) = c.weight {
                if w == 0 || w > 1000 {
                    return Err(ConfigError::invalid(
                        &format!("callers.{caller}.weight"),
                        &w.to_string(),
                        "must be in 1..=1000",
                    ));
                }
                policy.weight = w;
            }
            for (provider, amount) in c.daily_spend_limits {
                if !s.providers.contains_key(&provider) {
                    return Err(ConfigError::invalid(
                        &format!("callers.{caller}.daily_spend_limits"),
                        &provider,
                        "unknown provider",
                    ));
                }
                let m = micros(
                    &format!("callers.{caller}.daily_spend_limits.{provider}"),
                    amount,
                )?;
                policy.daily_limits.insert(provider, m);
            }
            notify::add_caller(&mut s.notify, &caller, c.notify_secret.as_ref(), c.webhooks)?;
            s.callers.0.insert(caller, policy);
        }
        Ok(s)
    }

    /// The configured time scale, defaulting to 1.0.
    pub fn time_scale(&self) -> f64 {
        self.time_scale.unwrap_or(1.0)
    }

    /// Names of providers that have an API key, sorted.
    pub fn enabled_providers(&self) -> Vec<&str> {
        self.providers
            .iter()
            .filter(|(_, p)| p.api_key.is_some())
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let err = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    toml::from_str(&text).map_err(|e| err(one_line(&e.to_string())))
}

/// A non-negative amount in millionths.
fn micros(field: &str, amount: f64) -> Result<i64, ConfigError> {
    if !(amount.is_finite() && (0.0..=1e12).contains(&amount)) {
        return Err(ConfigError::invalid(
            field,
            &amount.to_string(),
            "must be a number in [0, 1e12]",
        ));
    }
    Ok((amount * 1e6).round() as i64)
}

/// toml's errors span several lines (with a source excerpt); keep the message only.
fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    // The last line is the message; the first names the position.
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if first != last => format!("{first}: {last}"),
        (Some(first), _) => (*first).to_owned(),
        _ => s.to_owned(),
    }
}

fn parse_addr(name: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.trim().parse().map_err(|e| {
        ConfigError::invalid(
            name,
            v,
            format!("{e} (expected host:port, e.g. 127.0.0.1:8080)"),
        )
    })
}

fn parse_public_url(v: &str) -> Result<Option<String>, ConfigError> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    check_http_url("ADGATE_PUBLIC_URL", v)?;
    Ok(Some(v.trim_end_matches('/').to_owned()))
}

fn check_http_url(name: &str, v: &str) -> Result<(), ConfigError> {
    let v = v.trim();
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::invalid(name, v, "expected an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(ConfigError::invalid(name, v, "URL has no host"));
    }
    Ok(())
}

/// Ends up in logs, metrics labels and the database, so a plain token: 1–64 characters of
/// `[A-Za-z0-9._-]` (fits a StatefulSet pod name or a systemd instance name).
fn parse_replica_id(v: &str) -> Result<String, ConfigError> {
    let ok = (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(ConfigError::invalid(
            "ADGATE_REPLICA_ID",
            v,
            "expected 1-64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(v.to_owned())
}

fn secs(name: &str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| *d <= Duration::from_secs(86_400 * 365))
        .ok_or_else(|| {
            ConfigError::invalid(
                name,
                &v.to_string(),
                "must be a non-negative number of seconds",
            )
        })
}

/// The retention periods, each checked on its own and against the others.
fn retention(
    jobs: Option<f64>,
    request_ids: Option<f64>,
    deliveries: Option<f64>,
    interval: Option<f64>,
) -> Result<adgate_engine::Retention, ConfigError> {
    let mut r = adgate_engine::Retention::default();
    let set = |name: &str, v: Option<f64>, into: &mut Duration| -> Result<(), ConfigError> {
        if let Some(v) = v {
            *into = secs(name, v)?;
            if into.is_zero() {
                return Err(ConfigError::invalid(name, "0", "must be more than 0"));
            }
        }
        Ok(())
    };
    set("job_retention_secs", jobs, &mut r.jobs)?;
    set("request_id_ttl_secs", request_ids, &mut r.request_ids)?;
    set("delivery_id_ttl_secs", deliveries, &mut r.deliveries)?;
    set("retention_interval_secs", interval, &mut r.interval)?;
    let shown = |d: Duration| d.as_secs_f64().to_string();
    // AIP-155: a request id must be honoured for at least an hour.
    if r.request_ids < Duration::from_secs(3600) {
        return Err(ConfigError::invalid(
            "request_id_ttl_secs",
            &shown(r.request_ids),
            "must be at least 3600 (AIP-155: an hour)",
        ));
    }
    // A replay must find the jobs it answers with.
    if r.request_ids > r.jobs {
        return Err(ConfigError::invalid(
            "request_id_ttl_secs",
            &shown(r.request_ids),
            format!("must not exceed job_retention_secs ({})", shown(r.jobs)),
        ));
    }
    Ok(r)
}

fn positive(name: &str, v: usize) -> Result<usize, ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(name, "0", "must be at least 1"));
    }
    Ok(v)
}

fn check_overrides(provider: &str, o: &LimitOverrides) -> Result<(), ConfigError> {
    let name = |f: &str| format!("providers.{provider}.{f}");
    let nonzero = [
        ("requests", o.requests.map(u64::from)),
        (
            "max_concurrent_submits",
            o.max_concurrent_submits.map(|v| v as u64),
        ),
        ("max_keys_per_poll", o.max_keys_per_poll.map(|v| v as u64)),
        (
            "max_items_per_submit",
            o.max_items_per_submit.map(|v| v as u64),
        ),
        ("poll_interval_ms", o.poll_interval_ms),
        ("deadline_secs", o.deadline_secs),
        (
            "max_running_poll_keys",
            o.max_running_poll_keys.map(|v| v as u64),
        ),
        ("daily_requests", o.daily_requests.map(u64::from)),
    ];
    for (field, v) in nonzero {
        if v == Some(0) {
            return Err(ConfigError::invalid(
                &name(field),
                "0",
                "must be at least 1",
            ));
        }
    }
    if let Some(w) = o.window_secs {
        let d = secs(&name("window_secs"), w)?;
        if d.is_zero() {
            return Err(ConfigError::invalid(
                &name("window_secs"),
                &w.to_string(),
                "must be > 0",
            ));
        }
    }
    if let Some(w) = o.push_check_secs {
        // 0 = never check (e.g. subscriptions that reach the gateway through another URL).
        secs(&name("push_check_secs"), w)?;
    }
    if let Some(d) = o.deadline_secs
        && d > 86_400
    {
        return Err(ConfigError::invalid(
            &name("deadline_secs"),
            &d.to_string(),
            "must be at most 86400 (24 h)",
        ));
    }
    Ok(())
}

/// `NAME=PORT` for `adgate sim --sim-port`.
fn parse_sim_port(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PORT, got {s:?}"))?;
    if adgate_sim::simulator(name).is_none() {
        let known: Vec<&str> = adgate_sim::SIMULATORS.iter().map(|e| e.name).collect();
        return Err(format!(
            "no simulator named {name:?}; expected one of {}",
            known.join(", ")
        ));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    Ok((name.to_owned(), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;

    use clap::CommandFactory;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::from_toml(false, "", &env_of(&[])).unwrap();
        assert_eq!(s.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database_url, "sqlite://adgate.db");
        assert_eq!(s.public_url, None);
        assert!(s.auth_tokens.is_empty());
        assert!(s.enabled_providers().is_empty());
        assert_eq!(s.time_scale(), 1.0);
        assert_eq!(s.grace_period, Duration::from_secs(10));
        assert_eq!(s.max_watch_streams, 10_000);
        assert_eq!(s.heartbeat, Duration::from_secs(15));
        // Every registered provider has a (disabled) entry.
        let names: Vec<&str> = s.providers.keys().map(String::as_str).collect();
        let mut registered: Vec<&str> = providers::names().collect();
        registered.sort_unstable();
        assert_eq!(names, registered);
        assert!(names.contains(&"staticadslab") && names.len() >= 3);
    }

    #[test]
    fn env_names_are_the_contract() {
        let env = env_of(&[
            ("ADGATE_GRPC_ADDR", "0.0.0.0:9000"),
            ("ADGATE_HTTP_ADDR", "127.0.0.1:9001"),
            ("ADGATE_DATABASE_URL", "sqlite::memory:"),
            ("ADGATE_PUBLIC_URL", "https://gw.example/"),
            ("ADGATE_AUTH_TOKENS", "a, b,,c"),
            ("ADGATE_LOG_FORMAT", "json"),
            ("ADGATE_STATICADSLAB_API_KEY", "sk_1"),
            ("ADGATE_STATICADSLAB_BASE_URL", "http://127.0.0.1:1/"),
            ("ADGATE_PICTIFY_API_KEY", "pk_1"),
            ("ADGATE_PICTIFY_WEBHOOK_SECRET", "whsec_p"),
            ("ADGATE_ABYSSALE_API_KEY", "ak_1"),
            ("ADGATE_ABYSSALE_BASE_URL", "https://ab.example"),
            ("ADGATE_ABYSSALE_WEBHOOK_SECRET", "whsec_a"),
        ]);
        let s = Settings::from_toml(false, "", &env).unwrap();
        assert_eq!(s.grpc_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:9001");
        assert_eq!(s.database_url, "sqlite::memory:");
        assert_eq!(s.public_url.as_deref(), Some("https://gw.example"));
        let tokens: Vec<&str> = s.auth_tokens.iter().map(Secret::expose).collect();
        assert_eq!(tokens, ["a", "b", "c"]);
        assert_eq!(s.log_format, Some(LogFormat::Json));
        assert_eq!(
            s.enabled_providers(),
            ["abyssale", "pictify", "staticadslab"]
        );
        let sal = &s.providers["staticadslab"];
        assert_eq!(sal.api_key.as_ref().unwrap().expose(), "sk_1");
        assert_eq!(sal.base_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(
            s.providers["pictify"]
                .webhook_secret
                .as_ref()
                .unwrap()
                .expose(),
            "whsec_p"
        );
        assert_eq!(
            s.providers["abyssale"].base_url.as_deref(),
            Some("https://ab.example")
        );
    }

    #[test]
    fn env_overrides_file_and_file_sets_limits() {
        let toml = r#"
            grpc_addr = "127.0.0.1:1111"
            time_scale = 0.5
            grace_period_secs = 3
            heartbeat_secs = 2
            max_watch_streams = 7
            auth_tokens = ["from-file"]
            [providers.pictify]
            api_key = "file_key"
            requests = 300
            window_secs = 60
            max_items_per_submit = 50
            deadline_secs = 600
        "#;
        let env = env_of(&[
            ("ADGATE_GRPC_ADDR", "127.0.0.1:2222"),
            ("ADGATE_PICTIFY_API_KEY", "env_key"),
        ]);
        let s = Settings::from_toml(false, toml, &env).unwrap();
        assert_eq!(s.grpc_addr.port(), 2222);
        assert_eq!(s.time_scale(), 0.5);
        assert_eq!(s.grace_period, Duration::from_secs(3));
        assert_eq!(s.heartbeat, Duration::from_secs(2));
        assert_eq!(s.max_watch_streams, 7);
        assert_eq!(s.auth_tokens[0].expose(), "from-file");
        let p = &s.providers["pictify"];
        assert_eq!(p.api_key.as_ref().unwrap().expose(), "env_key");
        assert_eq!(p.limits.requests, Some(300));
        assert_eq!(p.limits.max_items_per_submit, Some(50));
        assert_eq!(p.limits.deadline_secs, Some(600));
    }

    #[test]
    fn empty_public_url_disables_webhooks() {
        let s = Settings::from_toml(
            false,
            r#"public_url = "https://x.example""#,
            &env_of(&[("ADGATE_PUBLIC_URL", "")]),
        )
        .unwrap();
        assert_eq!(s.public_url, None);
    }

    #[test]
    fn bad_values_fail_with_one_clear_line() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case<'_>; 6] = [
            (
                &[("ADGATE_GRPC_ADDR", "x")],
                "",
                "invalid ADGATE_GRPC_ADDR \"x\"",
            ),
            (
                &[("ADGATE_HTTP_ADDR", "localhost")],
                "",
                "invalid ADGATE_HTTP_ADDR",
            ),
            (
                &[("ADGATE_PUBLIC_URL", "ftp://x")],
                "",
                "invalid ADGATE_PUBLIC_URL",
            ),
            (
                &[("ADGATE_LOG_FORMAT", "xml")],
                "",
                "invalid ADGATE_LOG_FORMAT",
            ),
            (&[], "time_scale = -1.0", "invalid time_scale"),
            (
                &[],
                "[providers.pictify]\nrequests = 0",
                "providers.pictify.requests",
            ),
        ];
        for (env, toml, want) in cases {
            let err = Settings::from_toml(false, toml, &env_of(env))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(!err.contains('\n'), "{err:?} is more than one line");
        }
        let unknown =
            Settings::from_toml(false, "[providers.dalle]\napi_key = \"k\"", &env_of(&[]))
                .unwrap_err()
                .to_string();
        assert!(unknown.contains("unknown provider"), "{unknown}");
        let typo = Settings::from_toml(false, "grpc_adr = \"x\"", &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(typo.contains("grpc_adr") && !typo.contains('\n'), "{typo}");
    }

    #[test]
    fn replica_id_is_optional_and_checked() {
        let s = Settings::from_toml(false, "", &env_of(&[])).unwrap();
        assert_eq!(s.replica_id, None);
        let s = Settings::from_toml(false, "", &env_of(&[("ADGATE_REPLICA_ID", "")])).unwrap();
        assert_eq!(s.replica_id, None, "empty = unset");
        let s = Settings::from_toml(
            false,
            r#"replica_id = "from-file""#,
            &env_of(&[("ADGATE_REPLICA_ID", "adgate-0.eu_west")]),
        )
        .unwrap();
        assert_eq!(s.replica_id.as_deref(), Some("adgate-0.eu_west"));
        let s = Settings::from_toml(false, r#"replica_id = "gw-1""#, &env_of(&[])).unwrap();
        assert_eq!(s.replica_id.as_deref(), Some("gw-1"));
        let long = "x".repeat(65);
        for bad in ["gw 0", "gw/0", "gw:0", "ré", long.as_str(), "a\nb"] {
            let err = Settings::from_toml(false, "", &env_of(&[("ADGATE_REPLICA_ID", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("invalid ADGATE_REPLICA_ID"), "{err}");
            assert!(!err.contains('\n'), "{err:?} is more than one line");
        }
        assert!(
            Settings::from_toml(
                false,
                "",
                &env_of(&[("ADGATE_REPLICA_ID", &"x".repeat(64))])
            )
            .is_ok()
        );
    }

    #[test]
    fn retention_periods_have_defaults_and_are_checked() {
        let s = Settings::from_toml(false, "", &env_of(&[])).unwrap();
        assert_eq!(s.retention, adgate_engine::Retention::default());
        assert_eq!(s.retention.jobs, Duration::from_secs(30 * 86_400));
        let s = Settings::from_toml(
            false,
            "job_retention_secs = 604800\nrequest_id_ttl_secs = 7200\n\
             delivery_id_ttl_secs = 3600\nretention_interval_secs = 60",
            &env_of(&[]),
        )
        .unwrap();
        assert_eq!(
            s.retention,
            adgate_engine::Retention {
                jobs: Duration::from_secs(604_800),
                request_ids: Duration::from_secs(7200),
                deliveries: Duration::from_secs(3600),
                interval: Duration::from_secs(60),
            }
        );
        for (toml, name) in [
            ("job_retention_secs = 0", "job_retention_secs"),
            ("job_retention_secs = -1", "job_retention_secs"),
            ("request_id_ttl_secs = 60", "request_id_ttl_secs"),
            (
                "job_retention_secs = 7200\nrequest_id_ttl_secs = 86400",
                "request_id_ttl_secs",
            ),
            ("retention_interval_secs = 0", "retention_interval_secs"),
        ] {
            let err = Settings::from_toml(false, toml, &env_of(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("invalid {name}")), "{toml}: {err}");
            assert!(!err.contains('\n'), "{err:?} is more than one line");
        }
    }

    #[test]
    fn missing_config_file_is_one_line() {
        let args = ServeArgs {
            config: Some(PathBuf::from("/nonexistent/adgate.toml")),
            sandbox: false,
        };
        let err = Settings::load(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read config file /nonexistent/adgate.toml"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let env = env_of(&[
            ("ADGATE_AUTH_TOKENS", "tok-very-secret"),
            ("ADGATE_PICTIFY_API_KEY", "pk-very-secret"),
            ("ADGATE_PICTIFY_WEBHOOK_SECRET", "wh-very-secret"),
        ]);
        let s = Settings::from_toml(false, "", &env).unwrap();
        let dump = format!("{s:?}");
        assert!(!dump.contains("very-secret"), "{dump}");
        assert!(dump.contains("[redacted]"));
        assert_eq!(Secret::new("x").to_string(), "[redacted]");
    }

    #[test]
    fn cli_parses_and_documents_env() {
        let cli =
            Cli::try_parse_from(["adgate", "serve", "--sandbox", "--config", "a.toml"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert!(args.sandbox);
        assert_eq!(args.config, Some(PathBuf::from("a.toml")));
        let help = Cli::command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        for var in [
            "ADGATE_GRPC_ADDR",
            "ADGATE_PICTIFY_WEBHOOK_SECRET",
            "ADGATE_LOG_FORMAT",
            "time_scale",
        ] {
            assert!(help.contains(var), "--help lacks {var}");
        }
    }

    #[test]
    fn callers_prices_and_limits_are_read() {
        let toml = r#"
            auth_tokens = ["growth:tok-growth-0123"]
            [callers.growth]
            weight = 3
            daily_spend_limits = { staticadslab = 500.0, pictify = 20000 }
            [providers.abyssale]
            price_unit = "USD"
            prices = { format = 0.08 }
        "#;
        let s = Settings::from_toml(false, toml, &env_of(&[])).unwrap();
        let growth = &s.callers.0["growth"];
        assert_eq!(growth.weight, 3);
        assert_eq!(growth.daily_limits["staticadslab"], 500_000_000);
        assert_eq!(growth.daily_limits["pictify"], 20_000_000_000);
        let ab = &s.providers["abyssale"].prices;
        assert_eq!(ab.unit.as_deref(), Some("USD"));
        assert_eq!(ab.micros_by_kind["format"], 80_000);
        for (bad, what) in [
            ("[callers.growth]\nweight = 0", "weight"),
            ("[callers.Growth]\nweight = 1", "[callers.<name>]"),
            (
                "[callers.g]\ndaily_spend_limits = { dalle = 1.0 }",
                "daily_spend_limits",
            ),
            (
                "[callers.g]\ndaily_spend_limits = { pictify = -1.0 }",
                "pictify",
            ),
            (
                "[providers.pictify]\nprices = { image = nan }",
                "prices.image",
            ),
        ] {
            let err = Settings::from_toml(false, bad, &env_of(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(what), "{bad}: {err}");
        }
    }
}
