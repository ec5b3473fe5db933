//! StaticAdsLab simulator, written from the provider's documents (`shared/seeds/staticadslab-*`
//! and `shared/reference/providers.md` §1). Source tags in comments: [SEED-0..2] are the seeds,
//! [SAL:path] a docs page as summarised in providers.md; GUESS marks our own stricter reading.
//!
//! Surface:
//! - `POST /v1/image-ads` → 202 `{data: ImageAd, meta}` (one ad per call) [SEED-1], [SEED-2];
//!   a `design_template_id` this simulator created that is not `completed` → 422 [SEED-2];
//! - `GET /v1/image-ads/{id}` (JSON, or SSE with `Accept: text/event-stream`) [SEED-1];
//! - `GET /v1/image-ads?ids=a,b` batch poll, or a plain cursor list, both paged by `limit`,
//!   `has_more` and `starting_after` [SEED-0], [SAL:reference/pagination];
//! - `PATCH /v1/image-ads/{id}` `{current_json_tree}` → 202: an editable ad goes back to
//!   `processing` and renders a new `iav_` version [SEED-1], [SEED-2] (`versions.rs`);
//! - `GET /v1/image-ads/{id}/versions` and `/versions/{versionId}` (editable ads only) [SEED-2];
//! - `POST /v1/design-templates` → 202, `GET /v1/design-templates/{id}`,
//!   `GET /v1/design-templates?ids=a,b` (or a plain list): async templates billed $0.25 on
//!   completion [SEED-1], [SAL:guides/errors-and-billing] (`templates.rs`);
//! - `GET /files/{id}[-v{n}][-figma].png`: rendered outputs (stand in for the provider's CDN):
//!   compressed PNGs, [`FLAT_SIDE`] square for a flat ad, [`EDITABLE_SIDE`] for an editable one.
//!
//! Ads, re-renders and templates run on a scaled clock: each draws a duration from
//! `SimConfig::job_duration` (re-renders and templates a fifth of it), fails with probability
//! `SimConfig::failure_ratio`, and a background task finalises it when due; `finalize_due` is
//! the one place billing happens, exactly once per completed ad or template ([SEED-1] "billed
//! only on completed").

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use adgate_generator::time::rfc3339;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::routing::get;
use http::{Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::artwork::{Artwork, ImageFormat};
use crate::common::{self, Faults, Ledger, RollingWindow, SimConfig, SimHandle, lock};

mod create;
mod gateway;
mod lifecycle;
mod list;
mod request;
mod sse;
mod templates;
mod validate;
mod versions;

use create::create_ad;
use lifecycle::spawn_finalizer;
use list::{list_ads, list_templates};
use sse::get_ad;
use templates::{Template, create_template, get_template};
use versions::{Version, get_version, list_versions, patch_ad};

/// 100 requests per rolling 60 s, per API key [SAL:reference/rate-limits].
const DEFAULT_LIMIT: u32 = 100;
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// 413 above 15 MB [SAL:reference/errors].
const MAX_BODY: usize = 15 * 1024 * 1024;
/// 24 h default TTL [SAL:reference/idempotency].
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// "One acquires a 30-second lock and executes" [SAL:reference/idempotency].
const IDEMPOTENCY_LOCK: Duration = Duration::from_secs(30);
/// GUESS: keys longer than this are refused with 400 (the docs name no limit).
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// "heartbeat — every 15 seconds" [SEED-1].
const HEARTBEAT: Duration = Duration::from_secs(15);
/// "Max #ids: docs literally say 'up to N'" [SEED-0]; GUESS: 100, the list `limit` maximum
/// [SAL:reference/pagination]; more → 400.
const MAX_IDS: usize = 100;
/// `limit` "default 20, max 100" [SAL:reference/pagination]; applies to `?ids=` too unless
/// `Faults::sal_ids_unpaged` (providers.md §6 q4).
const DEFAULT_LIST_LIMIT: usize = 20;
const MAX_LIST_LIMIT: usize = 100;
/// $1.00 flat, $4.00 editable, in cents [SEED-2], [SAL:guides/errors-and-billing].
const PRICE_FLAT: u64 = 100;
const PRICE_EDITABLE: u64 = 400;
/// Design templates: $0.25 on completion [SAL:guides/errors-and-billing] (providers.md §1.4).
const PRICE_TEMPLATE: u64 = 25;
/// GUESS: templates and PATCH re-renders take a fifth of an ad's drawn duration. The docs only
/// say templates have a "faster pipeline" (poll every 2 s, not 4 s) [SEED-1] and give no
/// duration for a re-render.
const SHORT_JOB_DIVISOR: u32 = 5;
/// A flat ad is "a single 4K PNG" [SEED-2]. 4K as screens mean it, 3840 px on the long side;
/// square because the ads are Meta feed creatives (1:1), the shape the simulator always served.
/// Reported in the ad's `width`/`height` and served at exactly that size.
pub const FLAT_SIDE: u32 = 3840;
/// An editable ad is "a PNG" [SEED-2], no size given: GUESS 1080×1080 (Meta's 1:1 feed size),
/// the size of the frame in its JSON tree, whose renders it is.
pub const EDITABLE_SIDE: u32 = 1080;

/// The side of an ad's square output.
pub fn output_side(editable: bool) -> u32 {
    if editable { EDITABLE_SIDE } else { FLAT_SIDE }
}
const TOP_UP_URL: &str = "https://www.staticadslab.com/dashboard/billing";

/// Pipeline steps, as [SEED-2] names them: the flat SKU runs the Perfect Ad pipeline only; the
/// editable one runs the full chain.
const FLAT_STEPS: &[(&str, &str)] = &[
    ("queued", "Waiting for a worker"),
    ("perfect_ad", "Running the Perfect Ad pipeline"),
    ("final_render", "Rendering the final PNG"),
];
const EDITABLE_STEPS: &[(&str, &str)] = &[
    ("concept", "Developing the concept"),
    ("perfect_ad", "Running the Perfect Ad pipeline"),
    ("image_generation", "Generating images"),
    ("template_population", "Populating the template"),
    ("polish", "Polishing"),
    ("final_render", "Rendering the final PNG"),
];

/// GUESS: the docs name no steps for a template's pipeline or for a PATCH re-render; `progress`
/// is only a UX hint [SEED-1], so these labels are ours.
const TEMPLATE_STEPS: &[(&str, &str)] = &[
    ("queued", "Waiting for a worker"),
    ("analysis", "Analysing the design"),
    ("template_build", "Building the template"),
];
const RERENDER_STEPS: &[(&str, &str)] = &[
    ("template_population", "Applying the edited JSON tree"),
    ("final_render", "Rendering the final PNG"),
];

const REQUIRED_IDS: &[(&str, &str)] = &[
    ("design_template_id", "dt_"),
    ("brand_id", "brand_"),
    ("product_id", "prod_"),
    ("audience_id", "aud_"),
];
const KNOWN_FIELDS: &[&str] = &[
    "design_template_id",
    "brand_id",
    "product_id",
    "audience_id",
    "product_variant_id",
    "prompt",
    "editable",
    "options",
    "node_overrides",
];

/// Start a simulator on an ephemeral loopback port.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    spawn_on(listener, cfg).await
}

/// Start a simulator on `listener`.
pub async fn spawn_on(listener: TcpListener, cfg: SimConfig) -> std::io::Result<SimHandle> {
    let base_url = cfg.base_url_for(listener.local_addr()?);
    let ledger = Ledger::default();
    let faults = Arc::new(Mutex::new(Faults::default()));
    let sim = Arc::new(Sim::new(cfg, ledger.clone(), faults.clone(), base_url));
    spawn_finalizer(Arc::downgrade(&sim));
    let router = Router::new()
        .route("/v1/image-ads", get(list_ads).post(create_ad))
        .route("/v1/image-ads/{id}", get(get_ad).patch(patch_ad))
        .route("/v1/image-ads/{id}/versions", get(list_versions))
        .route("/v1/image-ads/{id}/versions/{version_id}", get(get_version))
        .route(
            "/v1/design-templates",
            get(list_templates).post(create_template),
        )
        .route("/v1/design-templates/{id}", get(get_template))
        .route("/files/{file}", get(get_file))
        .fallback(fallback)
        .with_state(sim);
    common::serve(listener, router, ledger, faults)
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Processing,
    Completed,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

#[derive(Debug)]
struct Ad {
    id: String,
    request: Map<String, Value>,
    editable: bool,
    created_wall: SystemTime,
    /// The current render: the generation, or the re-render of the latest PATCH.
    started: Instant,
    started_wall: SystemTime,
    duration: Duration,
    will_fail: bool,
    /// The current render comes from a PATCH: not billed, and reports its own steps.
    rerender: bool,
    status: Status,
    idempotency_key: Option<String>,
    /// Editable ads only: one per render, version 1 (the generation) first; the last one is
    /// the ad's current version.
    versions: Vec<Version>,
}

impl Ad {
    fn price(&self) -> u64 {
        if self.editable {
            PRICE_EDITABLE
        } else {
            PRICE_FLAT
        }
    }

    fn steps(&self) -> &'static [(&'static str, &'static str)] {
        match (self.rerender, self.editable) {
            (true, _) => RERENDER_STEPS,
            (false, true) => EDITABLE_STEPS,
            (false, false) => FLAT_STEPS,
        }
    }

    fn due(&self) -> Instant {
        self.started + self.duration
    }

    /// (step index, percentage as a 0..1 fraction with two decimals).
    fn progress(&self, now: Instant) -> (usize, f64) {
        run_progress(self.started, self.duration, now, self.steps().len())
    }
}

/// Where a run of `duration` begun at `started` is: (step index of `steps`, percentage as a
/// 0..1 fraction with two decimals).
fn run_progress(started: Instant, duration: Duration, now: Instant, steps: usize) -> (usize, f64) {
    let f = if duration.is_zero() {
        1.0
    } else {
        (now.duration_since(started).as_secs_f64() / duration.as_secs_f64()).min(1.0)
    };
    let steps = steps.max(1);
    let idx = ((f * steps as f64) as usize).min(steps - 1);
    // Never report 100 % while still processing.
    let pct = ((f * 100.0).floor() / 100.0).min(0.99);
    (idx, pct)
}

#[derive(Debug)]
enum IdemEntry {
    InProgress {
        body: Value,
        since: Instant,
    },
    Done {
        body: Value,
        at: Instant,
        status: StatusCode,
        response: Bytes,
    },
}

#[derive(Debug, Default)]
struct Inner {
    ads: HashMap<String, Ad>,
    order: Vec<String>,
    templates: HashMap<String, Template>,
    template_order: Vec<String>,
    /// When each ad render or template is due, by id (the prefixes keep the two apart).
    due: BinaryHeap<Reverse<(Instant, String)>>,
    /// (api key, idempotency key) → entry: keys are scoped per API key [SAL:reference/idempotency].
    idem: HashMap<(String, String), IdemEntry>,
    charges: u64,
    spent_cents: u64,
    reserved_cents: u64,
    in_flight: u64,
}

struct Sim {
    cfg: SimConfig,
    ledger: Ledger,
    faults: Arc<Mutex<Faults>>,
    base_url: String,
    limit: u32,
    window: Duration,
    /// Documented window in seconds, for the 429 message.
    window_label: u64,
    limiters: Mutex<HashMap<String, Arc<RollingWindow>>>,
    rng: Mutex<fastrand::Rng>,
    inner: Mutex<Inner>,
}

impl Sim {
    fn new(cfg: SimConfig, ledger: Ledger, faults: Arc<Mutex<Faults>>, base_url: String) -> Self {
        let (limit, window) = cfg.rate_limit.unwrap_or((DEFAULT_LIMIT, DEFAULT_WINDOW));
        Self {
            window: cfg.scaled(window).max(Duration::from_millis(1)),
            window_label: window.as_secs().max(1),
            limit: limit.max(1),
            rng: common::rng(cfg.seed),
            cfg,
            ledger,
            faults,
            base_url,
            limiters: Mutex::new(HashMap::new()),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn scaled(&self, d: Duration) -> Duration {
        self.cfg.scaled(d)
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0 && lock(&self.rng).f64() < p
    }

    fn new_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", common::hex_id(&self.rng, 16))
    }

    /// A duration drawn from `job_duration`, divided by `divisor` and scaled, and whether the
    /// run will fail (`failure_ratio` applies to every kind of job).
    fn draw_run(&self, divisor: u32) -> (Duration, bool) {
        let (lo, hi) = self.cfg.job_duration;
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        let span = (hi - lo).as_secs_f64();
        let (jitter, will_fail) = {
            let mut r = lock(&self.rng);
            (r.f64() * span, r.f64() < self.cfg.failure_ratio)
        };
        let drawn = (lo + Duration::from_secs_f64(jitter)) / divisor.max(1);
        (self.scaled(drawn), will_fail)
    }

    fn meta(&self) -> Value {
        json!({"request_id": self.new_id("req_"), "timestamp": rfc3339(SystemTime::now())})
    }

    fn limiter(&self, key: &str) -> Arc<RollingWindow> {
        lock(&self.limiters)
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(RollingWindow::new(self.limit, self.window)))
            .clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Output files and fallback
// ---------------------------------------------------------------------------------------------

/// `{ia}.png` / `{ia}-figma.png` name version 1 (a flat ad's only output, which has no Figma
/// render), `{ia}-v{n}.png` / `{ia}-v{n}-figma.png` version n ≥ 2: (ad id, version, figma).
fn parse_file(file: &str) -> Option<(&str, usize, bool)> {
    let stem = file.strip_suffix(".png")?;
    let (stem, figma) = match stem.strip_suffix("-figma") {
        Some(s) => (s, true),
        None => (stem, false),
    };
    match stem.rsplit_once("-v") {
        Some((id, n)) => n.parse().ok().filter(|n| *n >= 2).map(|n| (id, n, figma)),
        None => Some((stem, 1, figma)),
    }
}

impl Sim {
    /// The side of the file of version `number` of ad `id` if it exists: its render completed.
    /// An older version's files stay served while a newer one renders or after it failed.
    fn rendered_side(&self, id: &str, number: usize, figma: bool) -> Option<u32> {
        let mut inner = lock(&self.inner);
        self.finalize_due(&mut inner, Instant::now());
        let ad = inner.ads.get(id)?;
        let done = if ad.editable {
            ad.versions
                .get(number.wrapping_sub(1))
                .is_some_and(|v| v.status == Status::Completed)
        } else {
            number == 1 && !figma && ad.status == Status::Completed
        };
        done.then_some(output_side(ad.editable))
    }
}

/// The rendered PNG. Stands in for the provider's CDN: no API key, no rate limit (GUESS).
async fn get_file(State(sim): State<Arc<Sim>>, Path(file): Path<String>) -> Response<Body> {
    if let Some(fault) = common::output_fault(&sim.faults) {
        return fault;
    }
    let side =
        parse_file(&file).and_then(|(id, number, figma)| sim.rendered_side(id, number, figma));
    match side {
        // The file name labels the bytes: each version and each Figma render differs.
        Some(side) => {
            let label = file.trim_end_matches(".png").to_owned();
            Artwork::new(ImageFormat::Png, side, side)
                .respond(label)
                .await
        }
        None => sim.error(StatusCode::NOT_FOUND, "NOT_FOUND", "File not found"),
    }
}

async fn fallback(State(sim): State<Arc<Sim>>) -> Response<Body> {
    sim.error(StatusCode::NOT_FOUND, "NOT_FOUND", "No such endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_never_reaches_one_while_processing() {
        let ad = Ad {
            id: "ia_x".into(),
            request: Map::new(),
            editable: true,
            created_wall: SystemTime::now(),
            started: Instant::now() - Duration::from_secs(10),
            started_wall: SystemTime::now(),
            duration: Duration::from_secs(10),
            will_fail: false,
            rerender: false,
            status: Status::Processing,
            idempotency_key: None,
            versions: Vec::new(),
        };
        let (idx, pct) = ad.progress(Instant::now());
        assert_eq!(idx, EDITABLE_STEPS.len() - 1);
        assert!(pct < 1.0);
    }

    #[test]
    fn file_names_map_to_versions() {
        assert_eq!(parse_file("ia_1.png"), Some(("ia_1", 1, false)));
        assert_eq!(parse_file("ia_1-figma.png"), Some(("ia_1", 1, true)));
        assert_eq!(parse_file("ia_1-v3.png"), Some(("ia_1", 3, false)));
        assert_eq!(parse_file("ia_1-v2-figma.png"), Some(("ia_1", 2, true)));
        assert_eq!(parse_file("ia_1-v1.png"), None);
        assert_eq!(parse_file("ia_1.jpg"), None);
    }
}
