//! Bannerbear simulator, API **v5** (the version `shared/reference/bannerbear.md` recommends,
//! §1, §19): `POST /v5/images` → 202 with the pending Image object, `GET /v5/images/{uid}`
//! polling `pending → completed | failed`, `GET /v5/images?page=` listing, output `files` keyed
//! by format, `metadata` echoed, webhook **resources** (`/v5/webhooks`) with a one-time HMAC
//! `signing_key`, `GET /v5/account`, `{"message"}` error bodies, 30 POSTs / 10 s per key, 402
//! when the quota is spent, and no idempotency at all.
//!
//! Written from `shared/reference/bannerbear.md` and the facts of its sources only, never from
//! an adapter. Source tags as in that fact sheet: [V5-SPEC] the official V5 OpenAPI (@a9ca682
//! unless named), [BB-V5] developers.bannerbear.com/v5, [MCP] the official V5 MCP server,
//! [HELP-n] help-centre articles, [3P] third-party code, GUESS = ours, CONFLICT = sources
//! disagree. Where documents are silent or disagree, the stricter reading is chosen and named
//! next to the code.
//!
//! Choices worth knowing when reading a test against this simulator:
//! - Templates (GUESS: there is no template catalogue here): every uid names a
//!   [`TEMPLATE_WIDTH`]×[`TEMPLATE_HEIGHT`] template unless it contains `missing` (→ 404
//!   "Template not found in this workspace" [V5-SPEC]). `modifications.template.width/height`
//!   override the size.
//! - Quota: one credit per image, three when `pdf` is among the formats (GUESS: [HELP-174]'s
//!   "PDF costs 3×" carried over to v5), debited when the create is accepted and never refunded
//!   for a failed render (open question §17.4; stricter). `SimConfig::wallet` is the monthly
//!   pool; `None` = unlimited.
//! - Sandbox note: `SimConfig::webhook` stands in for a webhook resource created earlier with
//!   `POST /v5/webhooks {resource: "image", event: "all_events", status: "active"}`; its
//!   `secret` is that resource's `signing_key`. More resources can be created over the API.
//! - Outputs are served by the simulator at `/direct/{uid}/{file}.{ext}`: real JPEG (at
//!   `quality`), PNG, lossless WebP and one-page PDF (the picture as a JPEG at 96 dpi) bytes,
//!   distinct per file (see [`crate::artwork`]); for `avif` the bytes are PNG (no encoder
//!   here) and the Content-Type says so — only the extension follows the format. Sizes beyond [`crate::artwork::MAX_PIXELS`] (5000 px ×
//!   `scale` 4 is allowed) are served shrunk to it, aspect kept; the v5 Image object reports
//!   no size.
//! - Not modelled: the sync host (§19.2: never use it), batches, templates, assets, instant
//!   URLs, animations, tools, v2.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::artwork::{Artwork, ImageFormat};
use crate::common::{self, Faults, Ledger, RollingWindow, SimConfig, SimHandle, lock};

mod account;
mod gateway;
mod images;
mod validate;
mod webhooks;

use account::get_account;
use gateway::{Gate, endpoint_not_found, gate, method_not_allowed};
use images::{create_image, get_image, list_images};
use webhooks::{
    create_webhook, delete_webhook, delivery_worker, get_webhook, list_webhooks, update_webhook,
};

/// Ledger endpoint names (as [`Ledger::requests`] counts them).
pub const EP_CREATE_IMAGE: &str = "POST /v5/images";
pub const EP_GET_IMAGE: &str = "GET /v5/images/:uid";
pub const EP_LIST_IMAGES: &str = "GET /v5/images";
pub const EP_ACCOUNT: &str = "GET /v5/account";
pub const EP_CREATE_WEBHOOK: &str = "POST /v5/webhooks";
pub const EP_LIST_WEBHOOKS: &str = "GET /v5/webhooks";
pub const EP_GET_WEBHOOK: &str = "GET /v5/webhooks/:uid";
pub const EP_UPDATE_WEBHOOK: &str = "PATCH /v5/webhooks/:uid";
pub const EP_DELETE_WEBHOOK: &str = "DELETE /v5/webhooks/:uid";

/// 30 requests per 10 s per API key [BB-V5], [HELP-103], [MCP] README; in v5 only `POST`s are
/// metered ("reads and updates are unmetered" [MCP] README).
/// CONFLICT: older v2 docs said 10 / 10 s [BB-V2-OLD] and a third party says every endpoint
/// counts (for v2) [3P-APIEV]; neither is about v5, so the official v5 statement is followed.
pub const RATE_LIMIT: (u32, Duration) = (30, Duration::from_secs(10));
/// Template size when the request does not override it (GUESS).
pub const TEMPLATE_WIDTH: u32 = 1200;
pub const TEMPLATE_HEIGHT: u32 = 630;
/// Images per list page (25: n8n's mocks and paging stop on a short page [N8N] test).
pub const PAGE_SIZE: usize = 25;
/// Monthly pool `GET /v5/account` reports when `SimConfig::wallet` is `None` (GUESS).
pub const UNLIMITED_QUOTA: u64 = 1_000_000;
/// The header carrying the delivery signature. GUESS: no official source documents the v5
/// signature (§8.2, §17.1); third-party code assumes `X-Bannerbear-Signature` = lowercase hex
/// HMAC-SHA256(signing_key, raw body), no timestamp [3P] corsair `packages/bannerbear`.
pub const SIGNATURE_HEADER: &str = "X-Bannerbear-Signature";
/// Receiver timeout per attempt (GUESS: undocumented; scaled, never below one second).
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits before retries 2 and 3 of a delivery answered non-2xx or not at all (GUESS: retries
/// are undocumented for v5 [§8.2]; three attempts in all, then the delivery is abandoned).
pub const WEBHOOK_RETRY_LADDER: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(300)];

/// Render failure messages for `failure_ratio` (GUESS: the v5 `error` string is free text
/// [V5-SPEC]; these name the failures the help centre describes, e.g. an external image that
/// would not load [HELP-368]).
const FAILURE_MESSAGES: [&str; 3] = [
    "Could not load image from background-image URL",
    "Render timed out",
    "Font could not be loaded",
];

/// Start the simulator on an ephemeral loopback port.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    spawn_on(listener, cfg).await
}

/// Start the simulator on `listener`.
pub async fn spawn_on(listener: TcpListener, cfg: SimConfig) -> std::io::Result<SimHandle> {
    let base_url = cfg.base_url_for(listener.local_addr()?);
    let ledger = Ledger::default();
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (limit, window) = cfg.rate_limit.unwrap_or(RATE_LIMIT);
    let limiter = RollingWindow::new(limit, cfg.scaled(window).max(Duration::from_millis(1)));
    let http = reqwest::Client::builder()
        .build()
        .map_err(std::io::Error::other)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let rng = common::rng(cfg.seed);
    let mut hooks = Vec::new();
    if let Some(w) = &cfg.webhook {
        hooks.push(webhooks::Webhook {
            uid: alnum_id(&rng, 20),
            name: "sandbox".to_owned(),
            url: w.url.clone(),
            resource: "image".to_owned(),
            event: "all_events".to_owned(),
            status: "active".to_owned(),
            scope: None,
            templates: None,
            signing_key: w.secret.clone(),
            created_at: adgate_generator::time::rfc3339(std::time::SystemTime::now()),
        });
    }
    let app = Arc::new(App {
        rng,
        cfg,
        ledger: ledger.clone(),
        faults: faults.clone(),
        limiter,
        base_url,
        http,
        inner: Mutex::new(Inner {
            webhooks: hooks,
            ..Inner::default()
        }),
        deliveries: tx,
    });
    tokio::spawn(delivery_worker(Arc::downgrade(&app), rx));

    // Every API route goes through the gateway, named as the ledger counts it.
    let gated = |endpoint: &'static str| {
        middleware::from_fn_with_state(
            Gate {
                app: app.clone(),
                endpoint,
            },
            gate,
        )
    };
    let api = Router::new()
        .route(
            "/v5/images",
            get(list_images)
                .route_layer(gated(EP_LIST_IMAGES))
                .merge(axum::routing::post(create_image).route_layer(gated(EP_CREATE_IMAGE))),
        )
        .route(
            "/v5/images/{uid}",
            get(get_image).route_layer(gated(EP_GET_IMAGE)),
        )
        .route(
            "/v5/account",
            get(get_account).route_layer(gated(EP_ACCOUNT)),
        )
        .route(
            "/v5/webhooks",
            get(list_webhooks)
                .route_layer(gated(EP_LIST_WEBHOOKS))
                .merge(axum::routing::post(create_webhook).route_layer(gated(EP_CREATE_WEBHOOK))),
        )
        .route(
            "/v5/webhooks/{uid}",
            get(get_webhook)
                .route_layer(gated(EP_GET_WEBHOOK))
                .merge(axum::routing::patch(update_webhook).route_layer(gated(EP_UPDATE_WEBHOOK)))
                .merge(axum::routing::delete(delete_webhook).route_layer(gated(EP_DELETE_WEBHOOK))),
        );
    // Files live on the CDN, outside the API: no key, no rate limit, not in the ledger [FREE].
    let files = Router::new().route("/direct/{uid}/{file}", get(serve_file));
    let router = api
        .merge(files)
        .fallback(endpoint_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app);
    common::serve(listener, router, ledger, faults)
}

// ---------------------------------------------------------------------------------------------
// State

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Completed,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
struct Image {
    uid: String,
    template: String,
    metadata: Option<String>,
    status: Status,
    error: Option<String>,
    created_at: String,
    completed_at: Option<String>,
    /// Output size in pixels (template size × `scale`).
    width: u32,
    height: u32,
    quality: Option<u8>,
    /// format → file name under `/direct/{uid}/`, filled on completion.
    files: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Inner {
    images: HashMap<String, Image>,
    /// Creation order (oldest first) for the newest-first list.
    order: Vec<String>,
    webhooks: Vec<webhooks::Webhook>,
    /// Credits debited so far.
    credits_used: u64,
    /// Error diffusion for `failure_ratio`, so a ratio is met exactly and deterministically.
    fail_accumulator: f64,
}

#[derive(Debug)]
struct Delivery {
    /// The image uid: the dedupe handle the documents give (§19.5).
    uid: String,
    event: String,
    url: String,
    signing_key: String,
    body: Bytes,
}

struct App {
    cfg: SimConfig,
    ledger: Ledger,
    faults: Arc<Mutex<Faults>>,
    rng: Mutex<fastrand::Rng>,
    limiter: RollingWindow,
    base_url: String,
    http: reqwest::Client,
    inner: Mutex<Inner>,
    deliveries: mpsc::UnboundedSender<Delivery>,
}

impl App {
    fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }
    fn chance(&self, ratio: f64) -> bool {
        ratio > 0.0 && lock(&self.rng).f64() < ratio
    }
    fn uid(&self) -> String {
        alnum_id(&self.rng, 20)
    }
    fn job_duration(&self) -> Duration {
        let (lo, hi) = self.cfg.job_duration;
        let span = hi.saturating_sub(lo);
        self.cfg.scaled(lo + span.mul_f64(lock(&self.rng).f64()))
    }
    fn should_fail(&self) -> bool {
        let ratio = self.cfg.failure_ratio.clamp(0.0, 1.0);
        let mut inner = lock(&self.inner);
        inner.fail_accumulator += ratio;
        if inner.fail_accumulator >= 1.0 - 1e-9 {
            inner.fail_accumulator -= 1.0;
            true
        } else {
            false
        }
    }
    /// The monthly pool in credits, if any.
    fn quota(&self) -> Option<u64> {
        self.cfg.wallet
    }
}

/// `len` characters of `[A-Za-z0-9]`: uids in the documents are 18–25 alphanumerics
/// (`kG39R5XbvPQpLENKBWJj` [BB-V2-OLD]); 20 is a GUESS.
fn alnum_id(rng: &Mutex<fastrand::Rng>, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = lock(rng);
    (0..len)
        .map(|_| char::from(ALPHABET[r.usize(0..ALPHABET.len())]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Files (CDN stand-in)

async fn serve_file(
    State(app): State<Arc<App>>,
    Path((uid, file)): Path<(String, String)>,
) -> Response {
    if let Some(fault) = common::output_fault(&app.faults) {
        return fault;
    }
    let found = lock(&app.inner).images.get(&uid).and_then(|i| {
        let (format, _) = i.files.iter().find(|(_, f)| *f == file)?;
        // `avif` is served as PNG bytes under a PNG Content-Type: there is no small pure-Rust
        // AVIF encoder (the one there is brings a whole AV1 encoder). The header tells the truth.
        let kind = ImageFormat::from_name(format).unwrap_or(ImageFormat::Png);
        let artwork = Artwork::new(kind, i.width, i.height);
        Some(match i.quality {
            Some(q) => artwork.with_quality(q),
            None => artwork,
        })
    });
    let Some(artwork) = found else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Retention is undocumented (§14, §17.3): files stay for the simulator's lifetime.
    artwork.respond(format!("{uid}/{file}")).await
}
