//! Abyssale simulator: one asynchronous generation request → N formats of one design, polled at
//! `GET /generation-request/{id}` (202 running, 200 final, 404, 410 after 7 days) or pushed to a
//! signed `callback_url` / global `NEW_BANNER_BATCH` endpoint.
//!
//! Written from `shared/reference/providers.md` §3 and `shared/seeds/abyssale-async-generation.md`.
//! Source tags: [AB-TS] the official TS SDK (generated from the current OpenAPI spec), [AB-PY] the
//! Python SDK, [SEED-4] the async-generation page, [AB:…] developers.abyssale.com, GUESS = ours.
//!
//! Design catalogue (GUESS: Abyssale has no public design list; any UUID names a static design
//! that has every format below, in this order — an omitted/empty `template_format_names` means
//! all of them [SEED-4]):
//!
//! | format name      | width × height |
//! |------------------|----------------|
//! | `facebook-feed`  | 1200 × 628     |
//! | `instagram-post` | 1080 × 1080    |
//! | `iab-medium`     | 300 × 250      |
//! | `facebook-post`  | 1200 × 1200    |
//! | `half-page`      | 300 × 600      |
//!
//! Sandbox note: `SimConfig::webhook` stands in for the dashboard configuration of a global
//! webhook endpoint subscribed to `NEW_BANNER_BATCH`, and its `secret` pre-mints the workspace
//! signing secret (as if `GET /signing-secret` had been called with that result).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adgate_generator::time::unix_now;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::artwork::Artwork;
use crate::common::{self, Faults, Ledger, RollingWindow, SimConfig, SimHandle, lock};

mod gateway;
mod generation;
mod signing;
mod validate;

use gateway::{Gate, endpoint_not_found, gate, method_not_allowed};
use generation::{generate, get_generation_request};
use signing::{get_signing_secret, revoke_signing_secret, rotate_signing_secret};
use webhooks::delivery_worker;
mod webhooks;

/// Stamped on every JSON object response [AB-TS] `ApiVersion`.
pub const API_VERSION: &str = "v2026-08-21";
/// Gateway ceiling: 10 req/s [AB-TS] middleware.ts (older docs say 5 req/s — CONFLICT; we follow
/// the current spec).
pub const RATE_LIMIT: (u32, Duration) = (10, Duration::from_secs(1));
/// Generation requests are kept 7 days (× `time_scale`, from creation), then 410 [SEED-4], [AB-TS].
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// After a rotation the previous secret keeps verifying for 24 h (× `time_scale`) [AB-TS].
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// The receiver must answer within 15 s [AB:webhooks/events].
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(15);
/// Delays before retries 2–6 ("up to 6 attempts … spans hours" [AB-PY]; the ladder is a GUESS).
pub const WEBHOOK_RETRY_LADDER: [Duration; 5] = [
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
];
/// The event our deliveries carry [SEED-4].
pub const WEBHOOK_EVENT: &str = "NEW_BANNER_BATCH";

/// The catalogue every design shares (see the module doc).
pub const FORMATS: [(&str, u32, u32); 5] = [
    ("facebook-feed", 1200, 628),
    ("instagram-post", 1080, 1080),
    ("iab-medium", 300, 250),
    ("facebook-post", 1200, 1200),
    ("half-page", 300, 600),
];

/// Per-format failure reasons from the legacy error page [AB:rest-api/generation/errors].
const FAILURE_REASONS: [&str; 7] = [
    "Text too long",
    "Invalid Image",
    "InvalidFont",
    "Button text too long",
    "SVG security error",
    "Large SVG error",
    "QR code not supported extension",
];

/// Body fields the async generate endpoint documents [AB-TS], [AB:…/asynchronous-generation].
/// Anything else is `unknown_field` (stricter reading: the spec's error list has that code).
const KNOWN_FIELDS: [&str; 12] = [
    "elements",
    "template_format_names",
    "callback_url",
    "image_file_type",
    "file_compression_level",
    "html5",
    "gif",
    "video",
    "print",
    "pages",
    "original_visual_id",
    "project_id",
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
    let limiter = RollingWindow::new(limit, cfg.scaled(window));
    let http = reqwest::Client::builder()
        .build()
        .map_err(std::io::Error::other)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let now_ts = unix_now();
    let secrets = Secrets {
        current: cfg.webhook.as_ref().map(|w| MintedSecret {
            value: w.secret.clone(),
            created_at_ts: now_ts,
        }),
        ..Secrets::default()
    };
    let app = Arc::new(App {
        rng: common::rng(cfg.seed),
        cfg,
        ledger: ledger.clone(),
        faults: faults.clone(),
        limiter,
        base_url,
        http,
        requests: Mutex::new(HashMap::new()),
        files: Mutex::new(HashMap::new()),
        secrets: Mutex::new(secrets),
        credits_reserved: Mutex::new(0),
        fail_accumulator: Mutex::new(0.0),
        deliveries: tx,
    });
    tokio::spawn(delivery_worker(Arc::downgrade(&app), rx));

    // Each API route goes through the gateway, named as the ledger counts it.
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
            "/async/banner-builder/{design_id}/generate",
            post(generate).route_layer(gated("POST /async/banner-builder/:id/generate")),
        )
        .route(
            "/generation-request/{id}",
            get(get_generation_request).route_layer(gated("GET /generation-request/:id")),
        )
        .route(
            "/signing-secret",
            get(get_signing_secret).route_layer(gated("GET /signing-secret")),
        )
        .route(
            "/signing-secret/rotate",
            post(rotate_signing_secret).route_layer(gated("POST /signing-secret/rotate")),
        )
        .route(
            "/signing-secret/revoke",
            post(revoke_signing_secret).route_layer(gated("POST /signing-secret/revoke")),
        );
    // Files live on Abyssale's CDN/S3, outside the API gateway: no key, no rate limit.
    let files = Router::new()
        .route("/files/{name}", get(serve_file))
        .route("/cdn/{name}", get(serve_file));
    let router = api
        .merge(files)
        .fallback(endpoint_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app);
    common::serve(listener, router, ledger, faults)
}

// ---------------------------------------------------------------------------------------------
// State

struct App {
    cfg: SimConfig,
    ledger: Ledger,
    faults: Arc<Mutex<Faults>>,
    rng: Mutex<fastrand::Rng>,
    limiter: RollingWindow,
    base_url: String,
    http: reqwest::Client,
    requests: Mutex<HashMap<String, GenRequest>>,
    /// file name (`<banner id>.<ext>`) → (generation request id, how it is drawn).
    files: Mutex<HashMap<String, (String, Artwork)>>,
    secrets: Mutex<Secrets>,
    /// Credits promised to banners not yet failed (charged + in flight).
    credits_reserved: Mutex<u64>,
    /// Error diffusion for `failure_ratio`, so a ratio is met exactly and deterministically.
    fail_accumulator: Mutex<f64>,
    deliveries: mpsc::UnboundedSender<Delivery>,
}

struct GenRequest {
    created: Instant,
    banners: Vec<Value>,
    errors: Vec<Value>,
    finalized: bool,
}

#[derive(Default)]
struct Secrets {
    current: Option<MintedSecret>,
    /// The secret replaced by the last rotation and when it stops verifying.
    previous: Option<(String, Instant, u64)>,
    rotated_at_ts: Option<u64>,
}

struct MintedSecret {
    value: String,
    created_at_ts: u64,
}

struct Delivery {
    delivery_id: String,
    url: String,
    body: Bytes,
}

impl App {
    fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }
    fn chance(&self, ratio: f64) -> bool {
        ratio > 0.0 && lock(&self.rng).f64() < ratio
    }
    fn uuid(&self) -> String {
        common::uuid_v4(&self.rng)
    }
    fn retention(&self) -> Duration {
        self.cfg.scaled(RETENTION)
    }

    /// Every secret that currently verifies: the current one first, then the previous one
    /// during its overlap window.
    fn live_secrets(&self) -> Vec<String> {
        let mut s = lock(&self.secrets);
        if s.previous.as_ref().is_some_and(|p| Instant::now() >= p.1) {
            s.previous = None;
        }
        let mut out = Vec::new();
        if let Some(c) = &s.current {
            out.push(c.value.clone());
        }
        if let Some(p) = &s.previous {
            out.push(p.0.clone());
        }
        out
    }

    fn credit_limit(&self, faults: &Faults) -> Option<u64> {
        match (self.cfg.wallet, faults.insufficient_after_charges) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn should_fail(&self) -> bool {
        let ratio = self.cfg.failure_ratio.clamp(0.0, 1.0);
        let mut acc = lock(&self.fail_accumulator);
        *acc += ratio;
        if *acc >= 1.0 - 1e-9 {
            *acc -= 1.0;
            true
        } else {
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files (CDN stand-in)

async fn serve_file(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    if let Some(fault) = common::output_fault(&app.faults) {
        return fault;
    }
    let Some((request_id, artwork)) = lock(&app.files).get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let gone = lock(&app.requests)
        .get(&request_id)
        .is_none_or(|r| r.created.elapsed() >= app.retention());
    if gone {
        return StatusCode::NOT_FOUND.into_response();
    }
    // The file name (a fresh banner id) labels the bytes.
    artwork.respond(name).await
}
