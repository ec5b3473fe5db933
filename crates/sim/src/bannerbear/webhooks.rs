//! Webhook resources (`/v5/webhooks` [V5-SPEC]) and delivery: matching, the queue worker,
//! reorder/delay/duplicate/suppress faults, the HMAC signature and retries.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use adgate_generator::time::rfc3339;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::gateway::{error, json_response};
use super::images::{image_json, parse_page};
use super::validate::{WebhookRequest, json_object, parse_webhook};
use super::{
    App, Delivery, Image, PAGE_SIZE, SIGNATURE_HEADER, Status, WEBHOOK_RETRY_LADDER,
    WEBHOOK_TIMEOUT, alnum_id,
};
use crate::common::{WebhookRecord, lock};
use crate::signing;

/// One webhook resource.
#[derive(Debug, Clone)]
pub(super) struct Webhook {
    pub(super) uid: String,
    pub(super) name: String,
    pub(super) url: String,
    pub(super) resource: String,
    pub(super) event: String,
    pub(super) status: String,
    pub(super) scope: Option<String>,
    pub(super) templates: Option<Vec<String>>,
    /// "HMAC signing key. Only returned at creation time" [V5-SPEC].
    pub(super) signing_key: String,
    pub(super) created_at: String,
}

impl Webhook {
    /// The object as GET/list/PATCH return it: never the signing key [V5-SPEC].
    fn json(&self) -> Value {
        let mut v = json!({
            "uid": self.uid,
            "name": self.name,
            "url": self.url,
            "resource": self.resource,
            "event": self.event,
            "status": self.status,
            "created_at": self.created_at,
        });
        if let Value::Object(m) = &mut v {
            if let Some(s) = &self.scope {
                m.insert("scope".to_owned(), Value::from(s.clone()));
            }
            if let Some(t) = &self.templates {
                m.insert("templates".to_owned(), Value::from(t.clone()));
            }
        }
        v
    }

    fn apply(&mut self, r: WebhookRequest) {
        self.name = r.name;
        self.url = r.url;
        self.resource = r.resource;
        self.event = r.event;
        self.status = r.status;
        self.scope = r.scope;
        self.templates = r.templates;
    }

    /// Whether this resource fires for a finished image.
    fn matches(&self, image: &Image) -> bool {
        let event = match image.status {
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Pending => return false,
        };
        let template_ok = self.scope.as_deref() != Some("specific_templates")
            || self
                .templates
                .as_ref()
                .is_some_and(|t| t.contains(&image.template));
        self.status == "active"
            && self.resource == "image"
            && (self.event == "all_events" || self.event == event)
            && template_ok
    }
}

// ---------------------------------------------------------------------------------------------
// CRUD [V5-SPEC] `/webhooks`, `/webhooks/{uid}`

pub(super) async fn create_webhook(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match json_object(&headers, &body).and_then(|b| parse_webhook(&b)) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    // GUESS: the key's shape is undocumented; 64 hex characters.
    let mut hook = Webhook {
        uid: alnum_id(&app.rng, 20),
        name: String::new(),
        url: String::new(),
        resource: String::new(),
        event: String::new(),
        status: String::new(),
        scope: None,
        templates: None,
        signing_key: crate::common::hex_id(&app.rng, 64),
        created_at: rfc3339(SystemTime::now()),
    };
    hook.apply(req);
    let mut body = hook.json();
    if let Value::Object(m) = &mut body {
        m.insert(
            "signing_key".to_owned(),
            Value::from(hook.signing_key.clone()),
        );
    }
    lock(&app.inner).webhooks.push(hook);
    // 201 with the one-time `signing_key` [V5-SPEC], [NODE5].
    json_response(StatusCode::CREATED, body)
}

pub(super) async fn list_webhooks(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let page = match parse_page(&q) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    // GUESS: newest first, like images.
    let items: Vec<Value> = lock(&app.inner)
        .webhooks
        .iter()
        .rev()
        .skip((page - 1).saturating_mul(PAGE_SIZE))
        .take(PAGE_SIZE)
        .map(Webhook::json)
        .collect();
    json_response(StatusCode::OK, Value::Array(items))
}

fn not_found() -> Response {
    // "Webhook not found in this workspace" [V5-SPEC] PATCH 404.
    error(StatusCode::NOT_FOUND, "Webhook not found in this workspace")
}

pub(super) async fn get_webhook(State(app): State<Arc<App>>, Path(uid): Path<String>) -> Response {
    match lock(&app.inner).webhooks.iter().find(|w| w.uid == uid) {
        Some(w) => json_response(StatusCode::OK, w.json()),
        None => not_found(),
    }
}

pub(super) async fn update_webhook(
    State(app): State<Arc<App>>,
    Path(uid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = lock(&app.inner);
    let Some(w) = inner.webhooks.iter_mut().find(|w| w.uid == uid) else {
        return not_found();
    };
    match json_object(&headers, &body).and_then(|b| parse_webhook(&b)) {
        Ok(r) => {
            w.apply(r);
            json_response(StatusCode::OK, w.json())
        }
        Err(r) => *r,
    }
}

/// 200 "Webhook deleted" with no documented body [V5-SPEC]. GUESS: an unknown uid is 404.
pub(super) async fn delete_webhook(
    State(app): State<Arc<App>>,
    Path(uid): Path<String>,
) -> Response {
    let mut inner = lock(&app.inner);
    let before = inner.webhooks.len();
    inner.webhooks.retain(|w| w.uid != uid);
    if inner.webhooks.len() == before {
        return not_found();
    }
    StatusCode::OK.into_response()
}

// ---------------------------------------------------------------------------------------------
// Delivery

/// Queue one delivery per matching resource for a finished image. GUESS (§8.2, §17.1): the
/// body is the Image object as `GET /v5/images/{uid}` returns it, as in v2 where the body is
/// the finished resource [HELP-213]; failures are posted too (the `failed` event [V5-SPEC]).
pub(super) fn dispatch(app: &Arc<App>, image: &Image) {
    let body = Bytes::from(image_json(app, image).to_string());
    let event = format!("image.{}", image.status.as_str());
    let targets: Vec<(String, String)> = lock(&app.inner)
        .webhooks
        .iter()
        .filter(|w| w.matches(image))
        .map(|w| (w.url.clone(), w.signing_key.clone()))
        .collect();
    for (url, signing_key) in targets {
        let _ = app.deliveries.send(Delivery {
            uid: image.uid.clone(),
            event: event.clone(),
            url,
            signing_key,
            body: body.clone(),
        });
    }
}

/// Sends queued deliveries. Holds only a weak reference so it ends with the simulator.
pub(super) async fn delivery_worker(app: Weak<App>, mut rx: mpsc::UnboundedReceiver<Delivery>) {
    while let Some(first) = rx.recv().await {
        let Some((faults, cfg)) = app.upgrade().map(|a| (a.faults(), a.cfg.clone())) else {
            return;
        };
        let mut batch = vec![first];
        if faults.webhook_reorder {
            // Gather whatever else becomes pending shortly, then send newest first.
            tokio::time::sleep(
                cfg.scaled(Duration::from_secs(2))
                    .max(Duration::from_millis(100)),
            )
            .await;
            while let Ok(d) = rx.try_recv() {
                batch.push(d);
            }
            batch.reverse();
        }
        if !faults.webhook_delay.is_zero() {
            tokio::time::sleep(faults.webhook_delay).await;
        }
        for d in batch {
            let Some(a) = app.upgrade() else {
                return;
            };
            if a.faults().suppress_webhooks {
                // A lost push: Bannerbear believes it delivered, so no retry follows.
                a.ledger.webhook(WebhookRecord {
                    event: d.event.clone(),
                    delivery_id: d.uid.clone(),
                    status: None,
                    suppressed: true,
                });
                continue;
            }
            let ok = attempt(&a, &d).await;
            let weak = app.clone();
            tokio::spawn(follow_up(weak, d, ok));
        }
    }
}

/// Retries on the [`WEBHOOK_RETRY_LADDER`] (scaled), then the duplicate fault.
async fn follow_up(app: Weak<App>, d: Delivery, mut ok: bool) {
    for delay in WEBHOOK_RETRY_LADDER {
        if ok {
            break;
        }
        let Some(scaled) = app.upgrade().map(|a| a.cfg.scaled(delay)) else {
            return;
        };
        tokio::time::sleep(scaled).await;
        let Some(a) = app.upgrade() else {
            return;
        };
        ok = attempt(&a, &d).await;
    }
    if ok
        && let Some(a) = app.upgrade()
        && a.faults().webhook_duplicate
    {
        let _ = attempt(&a, &d).await;
    }
}

/// One signed POST. Success = any 2xx within the timeout (GUESS).
async fn attempt(app: &App, d: &Delivery) -> bool {
    let signature = signing::bannerbear_signature(&d.signing_key, &d.body);
    let status = app
        .http
        .post(&d.url)
        .timeout(app.cfg.scaled(WEBHOOK_TIMEOUT).max(Duration::from_secs(1)))
        .header(header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(d.body.clone())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16());
    app.ledger.webhook(WebhookRecord {
        event: d.event.clone(),
        delivery_id: d.uid.clone(),
        status,
        suppressed: false,
    });
    status.is_some_and(|s| (200..300).contains(&s))
}
