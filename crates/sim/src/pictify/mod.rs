//! Pictify simulator: `batch-render` of 1–100 variable sets, results **without** URLs, cancel,
//! signed `render.completed` / `render.failed` / `batch.completed` webhooks, `X-RateLimit-*`
//! headers with a Unix reset, `Idempotency-Key` replay and a credit wallet.
//!
//! Source tags (see `shared/reference/providers.md` §2): [PX-PY] the live-verified Python SDK,
//! [PX-LIVE:…] the live docs, [PX-DOCREPO] the older docs repo, [SEED-3]
//! `pictify-batch-processing.txt`, GUESS where no document says. Where documents disagree or are
//! silent, the stricter reading is chosen and named next to the code.
//!
//! Choices worth knowing when reading a test against this simulator:
//! - Templates: every uid that starts with `tmpl_` exists unless it contains `missing` (→ 404).
//! - Error bodies (GUESS from [PX-PY] `errors.py`, "no unified envelope"): the template
//!   endpoints (404, 400, 422, cancel conflicts) answer `{"message", "errors"?}`; the
//!   cross-cutting layers (401, 402, 429, 5xx) answer `{"error", "code"}`.
//! - Plans ([`PictifyOptions::plan`]): without one (the default, as unmetered as the
//!   Enterprise plan's "unlimited" concurrent batches), batches run one at a time in creation
//!   order and later batches stay `pending` meanwhile. With a plan, its caps are enforced
//!   [PX-LIVE:api-reference/batch], [PX-LIVE:authentication]: concurrent batches 1 / 3 / 10,
//!   items per batch 10 / 100 / 100 (the plan table's 10 / 100 / 1,000 capped by the endpoint's
//!   1–100, the stricter reading of the CONFLICT), 60 / 300 / 1,000 requests per minute and
//!   1,000 / 10,000 / 100,000 per day. What Pictify answers at a cap is undocumented (GUESS,
//!   the stricter reading: refuse, never queue): a batch over the concurrent-batch cap gets 429
//!   `{"error", "code": "concurrent_batch_limit"}`, over the item cap 422, over the daily cap
//!   429 `{"error", "code": "quota_exceeded"}` with `Retry-After` ([PX-PY] maps a 429 with
//!   `quota_exceeded` to quota).
//! - Webhook subscriptions ([`subscriptions`]): one per event with its own `whsec_` secret
//!   [PX-LIVE:concepts/webhooks], managed through `/webhook-subscriptions`; each is paused after
//!   five failed attempts of a delivery [PX-DOCREPO:concepts/webhooks.mdx] and then gets
//!   nothing until resumed (GUESS: deliveries while paused are dropped, not queued).
//! - Item failures are decided when the batch is created (`failure_ratio`, seeded rng).
//! - Wallet: one credit per rendered item, reserved up front: a batch whose items cannot all be
//!   covered is refused with 402 (stricter than charging until empty).
//! - Outputs are served by the simulator at `/renders/{imageId}.{format}` in the requested
//!   format (PNG, baseline JPEG at `quality`, lossless WebP), [`OUTPUT_WIDTH`]×[`OUTPUT_HEIGHT`],
//!   distinct bytes per image (see [`crate::artwork`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::artwork::Artwork;
use crate::common::{self, Faults, Ledger, RollingWindow, SimConfig, SimHandle};

mod batch;
mod gateway;
mod render;
pub mod subscriptions;
mod validate;

use batch::{batch_render, cancel, results};
use render::run_batches;
mod webhooks;

/// Ledger endpoint names.
pub const EP_BATCH_RENDER: &str = "POST /templates/:uid/batch-render";
pub const EP_RESULTS: &str = "GET /templates/batch/:id/results";
pub const EP_CANCEL: &str = "POST /templates/batch/:id/cancel";

/// Variable sets per request [PX-LIVE:…/batch/render], [SEED-3], [PX-PY].
pub const MAX_VARIABLE_SETS: usize = 100;
/// Free plan: 60 requests per minute [PX-LIVE:authentication].
pub const FREE_PLAN_REQUESTS_PER_MINUTE: u32 = 60;
/// Output size of every simulated template (GUESS: templates define their own size; 1200×630 is
/// the social-card size the seed's examples use).
pub const OUTPUT_WIDTH: u32 = 1200;
pub const OUTPUT_HEIGHT: u32 = 630;
/// Per-item failure codes [SEED-3] "Common Failure Reasons".
pub const FAILURE_CODES: [(&str, &str); 4] = [
    ("INVALID_VARIABLE", "Missing required variable"),
    ("EXPRESSION_ERROR", "Invalid expression syntax"),
    ("IMAGE_FETCH_FAILED", "Can't load external image"),
    ("RENDER_TIMEOUT", "Render exceeded the time limit"),
];

/// Same key + same request → cached response for 24 h [PX-LIVE:api-reference/overview].
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Results are stored for 7 days [PX-LIVE:api-reference/batch].
const RESULTS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Webhook retry backoff 1 min, 5 min, 30 min, 2 h, 24 h; paused after 5 failed attempts
/// [PX-DOCREPO:concepts/webhooks.mdx]. Read strictly as 5 attempts in all, so the waits used are
/// the first four (the 24 h step would precede a sixth attempt that never happens).
const WEBHOOK_BACKOFF: [Duration; 5] = [
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(1800),
    Duration::from_secs(7200),
    Duration::from_secs(86_400),
];
const MAX_WEBHOOK_ATTEMPTS: usize = 5;
/// "Answer 2xx within 30 s" [PX-DOCREPO]; scaled, but never below one second of wall time.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// A Pictify plan's documented caps [PX-LIVE:api-reference/batch], [PX-LIVE:authentication].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Free,
    Pro,
    Business,
}

impl Plan {
    pub fn requests_per_minute(self) -> u32 {
        match self {
            Self::Free => 60,
            Self::Pro => 300,
            Self::Business => 1000,
        }
    }
    pub fn requests_per_day(self) -> u32 {
        match self {
            Self::Free => 1000,
            Self::Pro => 10_000,
            Self::Business => 100_000,
        }
    }
    pub fn concurrent_batches(self) -> usize {
        match self {
            Self::Free => 1,
            Self::Pro => 3,
            Self::Business => 10,
        }
    }
    /// The plan table's 10 / 100 / 1,000, capped by the endpoint's 100 per request.
    pub fn max_items_per_batch(self) -> usize {
        match self {
            Self::Free => 10,
            Self::Pro | Self::Business => MAX_VARIABLE_SETS,
        }
    }
}

/// A subscription that exists when the simulator starts, as if created in the dashboard.
#[derive(Debug, Clone)]
pub struct SubscriptionSeed {
    pub event: String,
    pub target_url: String,
    pub secret: String,
}

/// Pictify-only settings.
#[derive(Debug, Clone, Default)]
pub struct PictifyOptions {
    /// `None` = no plan caps (see the module docs).
    pub plan: Option<Plan>,
    /// Subscriptions at start. Empty = one per event to `SimConfig::webhook`, all signed with
    /// its one secret (how a single-secret setup looks).
    pub subscriptions: Vec<SubscriptionSeed>,
}

/// Start a simulator on an ephemeral loopback port.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimHandle> {
    spawn_with(cfg, PictifyOptions::default()).await
}

/// [`spawn`] with Pictify-only settings.
pub async fn spawn_with(cfg: SimConfig, opts: PictifyOptions) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    spawn_on_with(listener, cfg, opts).await
}

/// Start a simulator on `listener`.
pub async fn spawn_on(listener: TcpListener, cfg: SimConfig) -> std::io::Result<SimHandle> {
    spawn_on_with(listener, cfg, PictifyOptions::default()).await
}

/// [`spawn_on`] with Pictify-only settings.
pub async fn spawn_on_with(
    listener: TcpListener,
    cfg: SimConfig,
    opts: PictifyOptions,
) -> std::io::Result<SimHandle> {
    let base = cfg.base_url_for(listener.local_addr()?);
    let (limit, window) = cfg.rate_limit.unwrap_or((
        opts.plan
            .map_or(FREE_PLAN_REQUESTS_PER_MINUTE, Plan::requests_per_minute),
        Duration::from_secs(60),
    ));
    let daily = opts.plan.map(|p| {
        RollingWindow::new(
            p.requests_per_day(),
            cfg.scaled(Duration::from_secs(24 * 3600))
                .max(Duration::from_millis(1)),
        )
    });
    let seeds = if opts.subscriptions.is_empty() {
        cfg.webhook
            .iter()
            .flat_map(|t| {
                subscriptions::EVENTS.iter().map(|e| SubscriptionSeed {
                    event: (*e).to_owned(),
                    target_url: t.url.clone(),
                    secret: t.secret.clone(),
                })
            })
            .collect()
    } else {
        opts.subscriptions.clone()
    };
    let webhook_timeout = cfg.scaled(WEBHOOK_TIMEOUT).max(Duration::from_secs(1));
    let http = reqwest::Client::builder()
        .timeout(webhook_timeout)
        .build()
        .map_err(std::io::Error::other)?;
    let ledger = Ledger::default();
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (queue, rx) = mpsc::unbounded_channel();
    let mut inner = Inner::default();
    for (i, seed) in seeds.into_iter().enumerate() {
        inner
            .subscriptions
            .push(subscriptions::Subscription::seeded(i, seed));
    }
    let app = Arc::new(App {
        limiter: RollingWindow::new(limit, cfg.scaled(window).max(Duration::from_millis(1))),
        daily,
        plan: opts.plan,
        rng: common::rng(cfg.seed),
        cfg,
        ledger: ledger.clone(),
        faults: faults.clone(),
        base,
        http,
        queue,
        inner: Mutex::new(inner),
    });
    tokio::spawn(run_batches(Arc::downgrade(&app), rx));
    let router = Router::new()
        .route("/templates/{uid}/batch-render", post(batch_render))
        .route("/templates/batch/{id}/results", get(results))
        .route("/templates/batch/{id}/cancel", post(cancel))
        .route(
            "/webhook-subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/webhook-subscriptions/{uid}",
            get(subscriptions::get_one)
                .put(subscriptions::update)
                .delete(subscriptions::delete),
        )
        .route(
            "/webhook-subscriptions/{uid}/pause",
            post(subscriptions::pause),
        )
        .route(
            "/webhook-subscriptions/{uid}/resume",
            post(subscriptions::resume),
        )
        .route("/renders/{file}", get(render_file))
        .with_state(app);
    common::serve(listener, router, ledger, faults)
}

// ---------------------------------------------------------------------------------------------
// State

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchStatus {
    Pending,
    Processing,
    Completed,
    Partial,
    Failed,
    Cancelled,
}

impl BatchStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ItemState {
    Queued,
    Rendering,
    Rendered,
    Failed(&'static str, &'static str),
    Skipped,
}

#[derive(Debug)]
struct Item {
    variables: Map<String, Value>,
    /// Decided at creation so a seeded run is reproducible.
    fail: Option<(&'static str, &'static str)>,
    state: ItemState,
}

#[derive(Debug)]
struct Batch {
    template_uid: String,
    format: String,
    /// Format, size and quality of every image the batch renders.
    artwork: Artwork,
    concurrency: usize,
    /// Images per item (one per layout, at least one).
    images_per_item: usize,
    idempotency_key: Option<String>,
    items: Vec<Item>,
    status: BatchStatus,
    created_at: SystemTime,
    started_at: Option<SystemTime>,
    completed_at: Option<SystemTime>,
    finished: Option<Instant>,
    started: Option<Instant>,
    /// Deliveries held back by the `webhook_reorder` fault until the batch ends.
    held: Vec<Delivery>,
}

#[derive(Debug)]
struct IdempotencyEntry {
    template_uid: String,
    body: Value,
    response: Value,
    at: Instant,
}

#[derive(Debug)]
struct Image {
    artwork: Artwork,
    /// The extension of its URL, the batch's `format`.
    extension: String,
}

#[derive(Debug, Default)]
struct Inner {
    batches: HashMap<String, Batch>,
    idempotency: HashMap<String, IdempotencyEntry>,
    images: HashMap<String, Image>,
    /// Credits charged so far (one per rendered item).
    charged: u64,
    /// Webhook subscriptions, in creation order; each is paused after 5 failed attempts of one
    /// delivery [PX-DOCREPO].
    subscriptions: Vec<subscriptions::Subscription>,
}

#[derive(Debug, Clone)]
struct Delivery {
    event: &'static str,
    delivery_id: String,
    body: Bytes,
}

#[derive(Debug)]
struct App {
    cfg: SimConfig,
    ledger: Ledger,
    faults: Arc<Mutex<Faults>>,
    rng: Mutex<fastrand::Rng>,
    limiter: RollingWindow,
    /// The plan's requests per day, when a plan is set.
    daily: Option<RollingWindow>,
    plan: Option<Plan>,
    base: String,
    http: reqwest::Client,
    queue: mpsc::UnboundedSender<String>,
    inner: Mutex<Inner>,
}

impl App {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn roll(&self, ratio: f64) -> bool {
        ratio > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64() < ratio
    }
    fn id(&self, prefix: &str) -> String {
        format!("{prefix}{}", common::hex_id(&self.rng, 16))
    }
    fn item_duration(&self) -> Duration {
        let (lo, hi) = self.cfg.job_duration;
        let f = self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64();
        let d = if hi > lo {
            lo + (hi - lo).mul_f64(f)
        } else {
            lo
        };
        self.cfg.scaled(d)
    }
}

/// Rendered files, as a CDN would serve them: no auth, no rate limit, not in the ledger.
/// The file is `{imageId}.{format}`; another extension is not found, as on a CDN.
async fn render_file(State(app): State<Arc<App>>, Path(file): Path<String>) -> Response {
    if let Some(fault) = common::output_fault(&app.faults) {
        return fault;
    }
    let (id, extension) = file.split_once('.').unwrap_or((&file, ""));
    let artwork = app
        .lock()
        .images
        .get(id)
        .filter(|i| i.extension == extension)
        .map(|i| i.artwork);
    match artwork {
        // The image id labels the bytes: each image of an item (one per layout) differs.
        Some(artwork) => artwork.respond(id.to_owned()).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
