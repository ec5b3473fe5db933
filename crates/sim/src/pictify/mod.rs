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
//! - Batches run one at a time in creation order (Free plan: 1 concurrent batch
//!   [PX-LIVE:api-reference/batch]); later batches stay `pending` meanwhile.
//! - Item failures are decided when the batch is created (`failure_ratio`, seeded rng).
//! - Wallet: one credit per rendered item, reserved up front: a batch whose items cannot all be
//!   covered is refused with 402 (stricter than charging until empty).
//! - Outputs are PNGs served by the simulator at `/renders/{imageId}.{ext}`; for `jpeg`/`webp`
//!   the bytes are still PNG (no encoder here) — only the extension follows the format.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::common::{self, Faults, Ledger, RollingWindow, SimConfig, SimHandle};

mod batch;
mod gateway;
mod render;
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

/// Start a simulator on an ephemeral loopback port.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    spawn_on(listener, cfg).await
}

/// Start a simulator on `listener`.
pub async fn spawn_on(listener: TcpListener, cfg: SimConfig) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let base = cfg
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let (limit, window) = cfg
        .rate_limit
        .unwrap_or((FREE_PLAN_REQUESTS_PER_MINUTE, Duration::from_secs(60)));
    let webhook_timeout = cfg.scaled(WEBHOOK_TIMEOUT).max(Duration::from_secs(1));
    let http = reqwest::Client::builder()
        .timeout(webhook_timeout)
        .build()
        .map_err(std::io::Error::other)?;
    let ledger = Ledger::default();
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (queue, rx) = mpsc::unbounded_channel();
    let app = Arc::new(App {
        limiter: RollingWindow::new(limit, cfg.scaled(window).max(Duration::from_millis(1))),
        rng: common::rng(cfg.seed),
        cfg,
        ledger: ledger.clone(),
        faults: faults.clone(),
        base,
        http,
        queue,
        inner: Mutex::new(Inner::default()),
    });
    tokio::spawn(run_batches(Arc::downgrade(&app), rx));
    let router = Router::new()
        .route("/templates/{uid}/batch-render", post(batch_render))
        .route("/templates/batch/{id}/results", get(results))
        .route("/templates/batch/{id}/cancel", post(cancel))
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
    concurrency: usize,
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
    width: u32,
    height: u32,
    label: String,
}

#[derive(Debug, Default)]
struct Inner {
    batches: HashMap<String, Batch>,
    idempotency: HashMap<String, IdempotencyEntry>,
    images: HashMap<String, Image>,
    /// Credits charged so far (one per rendered item).
    charged: u64,
    /// The subscription is paused after 5 failed attempts of one delivery [PX-DOCREPO].
    webhooks_paused: bool,
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
async fn render_file(State(app): State<Arc<App>>, Path(file): Path<String>) -> Response {
    let id = file.split('.').next().unwrap_or_default();
    let image = app
        .lock()
        .images
        .get(id)
        .map(|i| (i.width, i.height, i.label.clone()));
    match image {
        Some((w, h, label)) => {
            let png = common::png::render(w, h, &label);
            ([(header::CONTENT_TYPE, "image/png")], png).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
