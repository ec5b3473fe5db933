//! `/webhook-subscriptions` [PX-LIVE:concepts/webhooks], [PX-DOCREPO:api-reference/webhooks.mdx]:
//! `GET`/`POST` the collection, `GET`/`PUT`/`DELETE` one, `POST …/{uid}/pause` and `…/resume`.
//!
//! - Create body `{event, targetUrl, platform: custom|zapier|make, filters?}` → 201
//!   `{"subscription": {uid: "wh_…", event, targetUrl, platform, status, secret: "whsec_…",
//!   createdAt}}`; the secret is shown only then [PX-LIVE:concepts/webhooks].
//! - Status `active | paused | failed` [PX-DOCREPO]. Pictify pauses a subscription after five
//!   failed attempts of a delivery; nothing documented sets `failed`, so the simulator never
//!   does (clients must still accept it).
//! - GUESS (no body documented): the list answers `{"subscriptions": [...]}`, one subscription
//!   `{"subscription": {...}}` (both without the secret), delete 200 `{"message"}`, and an
//!   unknown uid 404 `{"message"}` like the other template/CRUD endpoints [PX-PY errors.py].
//! - `filters` are stored and echoed but not applied (GUESS: their matching rules are
//!   undocumented).

use std::sync::Arc;
use std::time::SystemTime;

use adgate_generator::time::rfc3339;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::gateway::Reply;
use super::{App, SubscriptionSeed};

pub const EP_SUBS: &str = "GET /webhook-subscriptions";
pub const EP_SUBS_CREATE: &str = "POST /webhook-subscriptions";
pub const EP_SUB: &str = "GET|PUT|DELETE /webhook-subscriptions/:uid";
pub const EP_SUB_PAUSE: &str = "POST /webhook-subscriptions/:uid/pause";
pub const EP_SUB_RESUME: &str = "POST /webhook-subscriptions/:uid/resume";

/// Every event Pictify sends [PX-DOCREPO:api-reference/webhooks.mdx], [SEED-3].
pub const EVENTS: [&str; 6] = [
    "render.completed",
    "render.failed",
    "batch.completed",
    "batch.failed",
    "binding.updated",
    "binding.failed",
];
const PLATFORMS: [&str; 3] = ["custom", "zapier", "make"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubStatus {
    Active,
    Paused,
    Failed,
}

impl SubStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub uid: String,
    pub event: String,
    pub target_url: String,
    pub platform: String,
    pub filters: Option<Value>,
    pub status: SubStatus,
    pub secret: String,
    pub created_at: SystemTime,
}

impl Subscription {
    pub(super) fn seeded(i: usize, seed: SubscriptionSeed) -> Self {
        Self {
            uid: format!("wh_seed{i:04}"),
            event: seed.event,
            target_url: seed.target_url,
            platform: "custom".to_owned(),
            filters: None,
            status: SubStatus::Active,
            secret: seed.secret,
            created_at: SystemTime::now(),
        }
    }

    fn public(&self) -> Value {
        let mut v = json!({
            "uid": self.uid, "event": self.event, "targetUrl": self.target_url,
            "platform": self.platform, "status": self.status.as_str(),
            "createdAt": rfc3339(self.created_at),
        });
        if let (Some(f), Some(o)) = (&self.filters, v.as_object_mut()) {
            o.insert("filters".to_owned(), f.clone());
        }
        v
    }
}

/// Where one delivery goes: `(uid, url, secret)` of every active subscription to `event`.
pub(super) fn targets(app: &App, event: &str) -> Vec<(String, String, String)> {
    app.lock()
        .subscriptions
        .iter()
        .filter(|s| s.event == event && s.status == SubStatus::Active)
        .map(|s| (s.uid.clone(), s.target_url.clone(), s.secret.clone()))
        .collect()
}

/// Whether any subscription exists for `event` (a paused one still makes the event worth
/// building: it may be resumed before delivery).
pub(super) fn subscribed(app: &App, event: &str) -> bool {
    app.lock().subscriptions.iter().any(|s| s.event == event)
}

pub(super) fn is_active(app: &App, uid: &str) -> bool {
    app.lock()
        .subscriptions
        .iter()
        .any(|s| s.uid == uid && s.status == SubStatus::Active)
}

/// Five failed attempts of one delivery pause the subscription [PX-DOCREPO].
pub(super) fn pause_after_failures(app: &App, uid: &str) {
    if let Some(s) = app.lock().subscriptions.iter_mut().find(|s| s.uid == uid)
        && s.status == SubStatus::Active
    {
        s.status = SubStatus::Paused;
    }
}

fn not_found() -> Reply {
    Reply::message(StatusCode::NOT_FOUND, "Webhook subscription not found")
}

fn invalid(field: &str, message: &str) -> Reply {
    Reply::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"message": "Validation failed", "errors": [{"field": field, "message": message}]}),
    )
}

fn valid_url(u: &str) -> bool {
    reqwest::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

pub(super) async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let rate = match app.gate(EP_SUBS, &headers).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let subs: Vec<Value> = app
        .lock()
        .subscriptions
        .iter()
        .map(Subscription::public)
        .collect();
    app.respond(
        Reply::new(StatusCode::OK, json!({ "subscriptions": subs })),
        Some(rate),
        true,
    )
}

pub(super) async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rate = match app.gate(EP_SUBS_CREATE, &headers).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let reply = create_reply(&app, &body);
    app.respond(reply, Some(rate), true)
}

fn create_reply(app: &App, body: &[u8]) -> Reply {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Reply::message(StatusCode::BAD_REQUEST, "Request body must be valid JSON");
    };
    let event = v.get("event").and_then(Value::as_str).unwrap_or_default();
    if !EVENTS.contains(&event) {
        return invalid("event", "must be one of the documented events");
    }
    let target = v
        .get("targetUrl")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !valid_url(target) {
        return invalid("targetUrl", "must be an http(s) URL");
    }
    let platform = v
        .get("platform")
        .and_then(Value::as_str)
        .unwrap_or("custom");
    if !PLATFORMS.contains(&platform) {
        return invalid("platform", "must be custom, zapier or make");
    }
    let sub = Subscription {
        uid: app.id("wh_"),
        event: event.to_owned(),
        target_url: target.to_owned(),
        platform: platform.to_owned(),
        filters: v.get("filters").cloned(),
        status: SubStatus::Active,
        secret: app.id("whsec_"),
        created_at: SystemTime::now(),
    };
    let mut out = sub.public();
    if let Some(o) = out.as_object_mut() {
        // Shown once, here only.
        o.insert("secret".to_owned(), Value::from(sub.secret.clone()));
    }
    app.lock().subscriptions.push(sub);
    Reply::new(StatusCode::CREATED, json!({ "subscription": out }))
}

pub(super) async fn get_one(
    State(app): State<Arc<App>>,
    Path(uid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let rate = match app.gate(EP_SUB, &headers).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let reply = app
        .lock()
        .subscriptions
        .iter()
        .find(|s| s.uid == uid)
        .map_or_else(not_found, |s| {
            Reply::new(StatusCode::OK, json!({ "subscription": s.public() }))
        });
    app.respond(reply, Some(rate), true)
}

pub(super) async fn update(
    State(app): State<Arc<App>>,
    Path(uid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rate = match app.gate(EP_SUB, &headers).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let reply = update_reply(&app, &uid, &body);
    app.respond(reply, Some(rate), true)
}

fn update_reply(app: &App, uid: &str, body: &[u8]) -> Reply {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Reply::message(StatusCode::BAD_REQUEST, "Request body must be valid JSON");
    };
    let event = v.get("event").and_then(Value::as_str);
    if event.is_some_and(|e| !EVENTS.contains(&e)) {
        return invalid("event", "must be one of the documented events");
    }
    let target = v.get("targetUrl").and_then(Value::as_str);
    if target.is_some_and(|t| !valid_url(t)) {
        return invalid("targetUrl", "must be an http(s) URL");
    }
    let mut inner = app.lock();
    let Some(s) = inner.subscriptions.iter_mut().find(|s| s.uid == uid) else {
        return not_found();
    };
    if let Some(e) = event {
        s.event = e.to_owned();
    }
    if let Some(t) = target {
        s.target_url = t.to_owned();
    }
    if let Some(f) = v.get("filters") {
        s.filters = Some(f.clone());
    }
    Reply::new(StatusCode::OK, json!({ "subscription": s.public() }))
}

pub(super) async fn delete(
    State(app): State<Arc<App>>,
    Path(uid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let rate = match app.gate(EP_SUB, &headers).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let reply = {
        let mut inner = app.lock();
        let before = inner.subscriptions.len();
        inner.subscriptions.retain(|s| s.uid != uid);
        if inner.subscriptions.len() < before {
            Reply::message(StatusCode::OK, "Webhook subscription deleted")
        } else {
            not_found()
        }
    };
    app.respond(reply, Some(rate), true)
}

async fn set(app: Arc<App>, uid: String, headers: HeaderMap, to: SubStatus) -> Response {
    let endpoint = if to == SubStatus::Paused {
        EP_SUB_PAUSE
    } else {
        EP_SUB_RESUME
    };
    let rate = match app.gate(endpoint, &headers).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let reply = {
        let mut inner = app.lock();
        match inner.subscriptions.iter_mut().find(|s| s.uid == uid) {
            Some(s) => {
                s.status = to;
                Reply::new(StatusCode::OK, json!({ "subscription": s.public() }))
            }
            None => not_found(),
        }
    };
    app.respond(reply, Some(rate), true)
}

pub(super) async fn pause(
    State(app): State<Arc<App>>,
    Path(uid): Path<String>,
    headers: HeaderMap,
) -> Response {
    set(app, uid, headers, SubStatus::Paused).await
}

pub(super) async fn resume(
    State(app): State<Arc<App>>,
    Path(uid): Path<String>,
    headers: HeaderMap,
) -> Response {
    set(app, uid, headers, SubStatus::Active).await
}
