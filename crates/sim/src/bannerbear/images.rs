//! Images: `POST /v5/images` (202 + pending Image), the render, `GET /v5/images/{uid}` and
//! `GET /v5/images?page=`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use adgate_generator::time::rfc3339;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::gateway::{error, json_response};
use super::validate::{ImageRequest, json_object, parse_image};
use super::{App, FAILURE_MESSAGES, Image, PAGE_SIZE, Status, webhooks};
use crate::common::{self, lock};

// ---------------------------------------------------------------------------------------------
// The Image object [V5-SPEC]

/// `{uid, status, template, files, metadata, error?, self, created_at, completed_at}`
/// [V5-SPEC]. GUESS (§17.8): while pending `files` is `{}` — the spec types it as a
/// non-nullable object; `self` is `<base>/v5/images/<uid>`. `error` is present only on
/// failure [V5-SPEC] ("only present on failure"). GUESS: `completed_at` stays null for a
/// failed image (stricter: it marks a completion, not any end).
pub(super) fn image_json(app: &App, i: &Image) -> Value {
    let files: Map<String, Value> = i
        .files
        .iter()
        .map(|(format, file)| {
            (
                format.clone(),
                Value::from(format!("{}/direct/{}/{file}", app.base_url, i.uid)),
            )
        })
        .collect();
    let mut v = json!({
        "uid": i.uid,
        "status": i.status.as_str(),
        "template": i.template,
        "files": files,
        "metadata": i.metadata,
        "self": format!("{}/v5/images/{}", app.base_url, i.uid),
        "created_at": i.created_at,
        "completed_at": i.completed_at,
    });
    if let (Some(e), Value::Object(m)) = (&i.error, &mut v) {
        m.insert("error".to_owned(), Value::from(e.clone()));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// POST /v5/images

pub(super) async fn create_image(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (resp, created) = create_inner(&app, &headers, &body);
    // A created image renders in its own task from here on, so neither fault below can stop
    // it from completing, billing and firing webhooks.
    let cut = created && lock(&app.faults).take_cut();
    let delay = app.faults().submit_answer_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if cut {
        app.ledger.cut();
        return common::dropped_connection();
    }
    resp
}

/// Validate, charge and create. The flag is true only when an image was created.
fn create_inner(app: &Arc<App>, headers: &HeaderMap, body: &[u8]) -> (Response, bool) {
    let body = match json_object(headers, body) {
        Ok(b) => b,
        Err(r) => return (*r, false),
    };
    let req = match parse_image(&body) {
        Ok(r) => r,
        Err(r) => return (*r, false),
    };
    // GUESS: the template catalogue (see the module doc).
    if req.template.contains("missing") {
        return (
            error(
                StatusCode::NOT_FOUND,
                "Template not found in this workspace",
            ),
            false,
        );
    }
    // 1 image = 1 credit; PDF 3× [FREE], [HELP-174] (GUESS: carried over to v5 `formats`).
    let cost: u64 = if req.formats.iter().any(|f| f == "pdf") {
        3
    } else {
        1
    };
    let faults = app.faults();
    let uid = {
        let mut inner = lock(&app.inner);
        let over_wallet = app.quota().is_some_and(|q| inner.credits_used + cost > q);
        let over_fault = faults
            .insufficient_after_charges
            .is_some_and(|n| inner.credits_used + cost > n);
        if over_wallet || over_fault {
            // 402 "API quota exhausted — upgrade required" [V5-SPEC], [BB-V5].
            return (
                error(
                    StatusCode::PAYMENT_REQUIRED,
                    "Payment Required: you have run out of image quota for this month, upgrade your plan",
                ),
                false,
            );
        }
        // Every accepted POST is a new render and new credits; no idempotency mechanism
        // exists [V5-SPEC], [MCP], §13. Debited now, not on completion (GUESS, §17.4).
        inner.credits_used += cost;
        let uid = app.uid();
        let image = Image {
            uid: uid.clone(),
            template: req.template.clone(),
            metadata: req.metadata.clone(),
            status: Status::Pending,
            error: None,
            created_at: rfc3339(SystemTime::now()),
            completed_at: None,
            width: req.width,
            height: req.height,
            quality: req.quality,
            files: Vec::new(),
        };
        inner.images.insert(uid.clone(), image);
        inner.order.push(uid.clone());
        uid
    };
    for _ in 0..cost {
        app.ledger.charge(&uid, None);
    }
    app.ledger.creation(None);
    app.ledger.created_id(&uid);
    let answer = lock(&app.inner)
        .images
        .get(&uid)
        .map(|i| image_json(app, i))
        .unwrap_or(Value::Null);
    tokio::spawn(render(Arc::clone(app), uid, req));
    // 202 Accepted with the new object in `pending` on the async host [V5-SPEC], [BB-V5].
    (json_response(StatusCode::ACCEPTED, answer), true)
}

/// Wait the drawn render time, finish the image, queue its webhooks.
async fn render(app: Arc<App>, uid: String, req: ImageRequest) {
    tokio::time::sleep(app.job_duration()).await;
    let fails = app.should_fail();
    let snapshot = {
        let mut inner = lock(&app.inner);
        let Some(i) = inner.images.get_mut(&uid) else {
            return;
        };
        if fails {
            let msg = FAILURE_MESSAGES[lock(&app.rng).usize(0..FAILURE_MESSAGES.len())];
            i.status = Status::Failed;
            i.error = Some(msg.to_owned());
        } else {
            i.status = Status::Completed;
            i.completed_at = Some(rfc3339(SystemTime::now()));
            i.files = req
                .formats
                .iter()
                .map(|f| (f.clone(), format!("{}.{f}", common::hex_id(&app.rng, 32))))
                .collect();
        }
        i.clone()
    };
    webhooks::dispatch(&app, &snapshot);
}

// ---------------------------------------------------------------------------------------------
// GET /v5/images/{uid}, GET /v5/images?page=

pub(super) async fn get_image(State(app): State<Arc<App>>, Path(uid): Path<String>) -> Response {
    let inner = lock(&app.inner);
    match inner.images.get(&uid) {
        Some(i) => json_response(StatusCode::OK, image_json(&app, i)),
        // GUESS: message text; 404 "not found" [BB-V5].
        None => error(StatusCode::NOT_FOUND, "Image not found"),
    }
}

/// A bare JSON array, newest first, `PAGE_SIZE` per page, `page` from 1 [V5-SPEC], [MCP]
/// generate.ts. No filters (not even by `metadata`) exist [V5-SPEC], §13.
pub(super) async fn list_images(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let page = match parse_page(&q) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let inner = lock(&app.inner);
    let items: Vec<Value> = inner
        .order
        .iter()
        .rev()
        .skip((page - 1).saturating_mul(PAGE_SIZE))
        .take(PAGE_SIZE)
        .filter_map(|uid| inner.images.get(uid))
        .map(|i| image_json(&app, i))
        .collect();
    json_response(StatusCode::OK, Value::Array(items))
}

/// `page` ≥ 1, default 1. GUESS: anything else is 422 (stricter than clamping).
pub(super) fn parse_page(q: &HashMap<String, String>) -> Result<usize, Box<Response>> {
    match q.get("page") {
        None => Ok(1),
        Some(p) => match p.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(Box::new(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "page must be a positive integer",
            ))),
        },
    }
}
