//! The world a gateway child runs in: provider simulators in this (the bench) process, on
//! loopback, with the gateway pointed at them through the same `ADGATE_*` variables a
//! deployment would use. This is the sandbox's wiring (keys, webhook secrets, webhooks to the
//! gateway's HTTP listener) with two differences: the simulators' job durations are chosen per
//! scenario, and their ledgers stay readable here.

use std::collections::BTreeMap;
use std::time::Duration;

use adgate::pb;
use adgate_sim::{SimConfig, SimHandle, WebhookTarget};
use tokio::net::TcpListener;

use crate::Res;
use crate::proc::{Proc, free_port};

pub const SAL: &str = "staticadslab";
pub const PICTIFY: &str = "pictify";
pub const ABYSSALE: &str = "abyssale";

/// One simulator to run.
#[derive(Debug, Clone)]
pub struct SimSpec {
    pub provider: &'static str,
    pub job_duration: (Duration, Duration),
    /// Override the simulator's documented rate limit (seeding only).
    pub rate_limit: Option<(u32, Duration)>,
}

impl SimSpec {
    pub fn new(provider: &'static str) -> Self {
        Self {
            provider,
            job_duration: SimConfig::default().job_duration,
            rate_limit: None,
        }
    }
    pub fn durations(mut self, lo: Duration, hi: Duration) -> Self {
        self.job_duration = (lo, hi);
        self
    }
}

#[derive(Debug, Clone)]
pub struct WorldSpec {
    pub sims: Vec<SimSpec>,
    /// One factor for the simulators' clocks and the gateway's limits (`time_scale`).
    pub time_scale: f64,
    /// Webhooks from the simulators to the gateway (else the gateway polls only).
    pub webhooks: bool,
    /// Start the simulators only when [`World::start_sims`] is called (their ports are bound
    /// at once, so the gateway's requests wait in the accept backlog until then).
    pub defer_sims: bool,
}

/// Simulators plus the environment that points a gateway child at them.
pub struct World {
    pub spec: WorldSpec,
    pub sims: BTreeMap<&'static str, SimHandle>,
    pending: Vec<(SimSpec, TcpListener, SimConfig)>,
    env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("spec", &self.spec).finish()
    }
}

/// The gateway configuration every child of this world starts from. The simulators run
/// without a Pictify plan (no caps, as the simulator's module docs say), so the gateway is
/// told the largest plan: left at its default (Free: 10 items per batch, one running batch,
/// 1,000 requests a day) it would split the scenarios' 100-job Submits into 10-item batches
/// and stop sending at the daily cap, which in `watch` left a third of the 10,000 jobs QUEUED
/// for the whole window.
fn base_toml(spec: &WorldSpec) -> String {
    let mut toml = format!("time_scale = {:?}\n", spec.time_scale);
    if spec.sims.iter().any(|s| s.provider == PICTIFY) {
        toml.push_str("providers.pictify.plan = \"business\"\n");
    }
    toml
}

fn secret(provider: &str) -> String {
    format!(
        "whsec_{}",
        provider.repeat(64).chars().take(64).collect::<String>()
    )
}

pub fn key(provider: &str) -> String {
    format!("bench_key_{provider}")
}

impl World {
    pub async fn new(spec: WorldSpec) -> Res<Self> {
        let dir = tempfile::tempdir()?;
        Self::with_dir(spec, dir).await
    }

    pub async fn with_dir(spec: WorldSpec, dir: tempfile::TempDir) -> Res<Self> {
        let http_port = free_port()?;
        let http = format!("127.0.0.1:{http_port}");
        let mut env = vec![
            ("ADGATE_GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("ADGATE_HTTP_ADDR".to_owned(), http.clone()),
            (
                "ADGATE_DATABASE_URL".to_owned(),
                format!("sqlite://{}", dir.path().join("adgate.db").display()),
            ),
            ("ADGATE_BENCH_TOML".to_owned(), base_toml(&spec)),
        ];
        if spec.webhooks {
            env.push(("ADGATE_PUBLIC_URL".to_owned(), format!("http://{http}")));
        }
        let mut world = Self {
            spec: spec.clone(),
            sims: BTreeMap::new(),
            pending: Vec::new(),
            env: Vec::new(),
            dir,
        };
        for s in &spec.sims {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let base = format!("http://{}", listener.local_addr()?);
            let up = s.provider.to_uppercase();
            env.push((format!("ADGATE_{up}_API_KEY"), key(s.provider)));
            env.push((format!("ADGATE_{up}_BASE_URL"), base));
            env.push((format!("ADGATE_{up}_WEBHOOK_SECRET"), secret(s.provider)));
            let cfg = SimConfig {
                api_key: key(s.provider),
                time_scale: spec.time_scale,
                job_duration: s.job_duration,
                rate_limit: s.rate_limit,
                webhook: spec.webhooks.then(|| WebhookTarget {
                    url: format!("http://{http}/webhooks/{}", s.provider),
                    secret: secret(s.provider),
                }),
                ..SimConfig::default()
            };
            world.pending.push((s.clone(), listener, cfg));
        }
        world.env = env;
        if !spec.defer_sims {
            world.start_sims().await?;
        }
        Ok(world)
    }

    pub async fn start_sims(&mut self) -> Res<()> {
        for (s, listener, cfg) in self.pending.drain(..) {
            let entry = adgate_sim::simulator(s.provider)
                .ok_or_else(|| format!("no simulator for {}", s.provider))?;
            let h = (entry.spawn_on)(listener, cfg).await?;
            self.sims.insert(s.provider, h);
        }
        Ok(())
    }

    /// Replace (or add) one variable of the gateway children's environment.
    pub fn set_env(&mut self, key: &str, value: String) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value));
    }

    /// Append TOML lines to the gateway children's configuration.
    pub fn add_toml(&mut self, lines: &str) {
        let toml = self
            .env
            .iter()
            .find(|(k, _)| k == "ADGATE_BENCH_TOML")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.set_env("ADGATE_BENCH_TOML", format!("{toml}{lines}\n"));
    }

    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("adgate.db").display())
    }

    pub async fn gateway(&self) -> Res<Proc> {
        Proc::spawn("__gateway", &self.env).await
    }

    /// Gateway settings equal to the child's (for building adapters in this process).
    pub fn settings(&self) -> Res<adgate::config::Settings> {
        let toml = base_toml(&self.spec);
        let env = self.env.clone();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Ok(adgate::config::Settings::from_toml(false, &toml, &lookup)?)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, h) in std::mem::take(&mut self.sims) {
            h.shutdown();
        }
    }
}

// ---- Job specs ----------------------------------------------------------------------------

pub fn sal_job(i: u64) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Staticadslab(
            pb::StaticAdsLabImageAd {
                design_template_id: "dt_bench".into(),
                brand_id: format!("brand_{}", i % 1000),
                product_id: "prod_bench".into(),
                audience_id: "aud_bench".into(),
                ..Default::default()
            },
        )),
        client_ref: format!("bench-{i}"),
        ..Default::default()
    }
}

/// The `spec` column the gateway stores for `sal_job(i)`: the provider message as JSON plus
/// its `kind`, converted as `Submit` converts it, so the baselines write job-sized rows.
pub fn sal_spec_json(i: u64) -> String {
    let mut out = Vec::new();
    let Some((field, mut json)) = adgate::spec_json::provider_spec(&sal_job(i), &mut out) else {
        return String::from("{}");
    };
    if let Some((_, Some(kind))) =
        adgate::spec_json::provider_of(&field, adgate::providers::names())
        && let Some(o) = json.as_object_mut()
    {
        o.insert("kind".to_owned(), serde_json::Value::String(kind));
    }
    json.to_string()
}

pub fn pictify_job(i: u64) -> pb::JobSpec {
    let var = |s: String| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s)),
    };
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Pictify(pb::PictifyRender {
            template_uid: "tmpl_bench".into(),
            variables: Some(prost_types::Struct {
                fields: [("name".to_owned(), var(format!("n{i}")))].into(),
            }),
            ..Default::default()
        })),
        client_ref: format!("bench-{i}"),
        ..Default::default()
    }
}

pub fn abyssale_job(i: u64) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Abyssale(pb::AbyssaleGeneration {
            design_id: "497f6eca-6276-4993-bfeb-53cbbbba6f08".into(),
            format_names: vec!["facebook-feed".into(), "facebook-post".into()],
            ..Default::default()
        })),
        client_ref: format!("bench-{i}"),
        ..Default::default()
    }
}

pub fn job_for(provider: &str, i: u64) -> pb::JobSpec {
    match provider {
        SAL => sal_job(i),
        PICTIFY => pictify_job(i),
        _ => abyssale_job(i),
    }
}
