//! Batch lifecycle endpoints: `batch-render` (idempotency, credits, creation), results and cancel.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use adgate_generator::time::rfc3339;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::gateway::Reply;
use super::validate::validate;
use super::{
    App, Batch, BatchStatus, EP_BATCH_RENDER, EP_CANCEL, EP_RESULTS, FAILURE_CODES,
    IDEMPOTENCY_TTL, IdempotencyEntry, Item, ItemState, OUTPUT_HEIGHT, OUTPUT_WIDTH, RESULTS_TTL,
};
use crate::artwork::{Artwork, ImageFormat};
use crate::common::{SimConfig, dropped_connection, lock};

// ---------------------------------------------------------------------------------------------
// Handlers

pub(super) async fn batch_render(
    State(app): State<Arc<App>>,
    Path(uid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rate = match app.gate(EP_BATCH_RENDER, &headers).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let (reply, created) = create_batch(&app, &uid, &headers, &body);
    // The batch (if any) is queued by now, so its webhooks run on the sim clock whatever
    // happens to this answer; the faults below only shape what the client sees.
    let cut = created && lock(&app.faults).take_cut();
    let delay = app.faults().submit_answer_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if cut {
        app.ledger.cut();
        return dropped_connection();
    }
    app.respond(reply, Some(rate), true)
}

pub(super) async fn results(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let rate = match app.gate(EP_RESULTS, &headers).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let inner = app.lock();
    let reply = match inner.batches.get(&id) {
        Some(b) if !expired(&app.cfg, b) => Reply::new(StatusCode::OK, results_body(&id, b)),
        _ => Reply::message(StatusCode::NOT_FOUND, "Batch not found"),
    };
    drop(inner);
    app.respond(reply, Some(rate), true)
}

pub(super) async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let rate = match app.gate(EP_CANCEL, &headers).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut inner = app.lock();
    let reply = match inner.batches.get_mut(&id) {
        Some(b) if !expired(&app.cfg, b) => match b.status {
            BatchStatus::Pending | BatchStatus::Processing => {
                // Completed items keep their results; the rest are skipped
                // [PX-LIVE:api-reference/endpoints/batch/cancel]. Items mid-render are skipped
                // when their render returns.
                b.status = BatchStatus::Cancelled;
                app.ledger.span_end(&id);
                b.completed_at = Some(SystemTime::now());
                b.finished = Some(Instant::now());
                for item in &mut b.items {
                    if item.state == ItemState::Queued {
                        item.state = ItemState::Skipped;
                    }
                }
                cancelled_body(&id)
            }
            // Repeating a cancel is answered like the first one (GUESS, open question 16).
            BatchStatus::Cancelled => cancelled_body(&id),
            // Cancelling a finished batch: undocumented (open question 16). GUESS 400 in the
            // template endpoints' `{message}` shape — not 409, which reads as "retry later".
            done => Reply::message(
                StatusCode::BAD_REQUEST,
                &format!("Batch is already {} and cannot be cancelled", done.as_str()),
            ),
        },
        _ => Reply::message(StatusCode::NOT_FOUND, "Batch not found"),
    };
    drop(inner);
    app.respond(reply, Some(rate), true)
}

fn cancelled_body(id: &str) -> Reply {
    Reply::new(
        StatusCode::OK,
        json!({"batchId": id, "status": "cancelled", "message": "Batch cancelled"}),
    )
}

fn expired(cfg: &SimConfig, b: &Batch) -> bool {
    b.finished
        .is_some_and(|t| t.elapsed() > cfg.scaled(RESULTS_TTL))
}

fn results_body(id: &str, b: &Batch) -> Value {
    let total = b.items.len();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let (mut completed, mut failed) = (0usize, 0usize);
    for (index, item) in b.items.iter().enumerate() {
        // Per-item records name the variables, never their values, and carry no URL
        // [PX-PY] BatchResults, [SEED-3] "The poll endpoint does not return rendered URLs".
        let names: Vec<&String> = item.variables.keys().collect();
        match item.state {
            ItemState::Rendered => {
                completed += 1;
                results.push(json!({"index": index, "success": true, "variables": names}));
            }
            ItemState::Failed(code, message) => {
                failed += 1;
                // `error` is the documented string [SEED-3]; `errorCode` mirrors the
                // render.failed webhook's field name (GUESS: no document shows a code here).
                results.push(json!({
                    "index": index, "success": false, "variables": names,
                    "error": message, "errorCode": code,
                }));
                errors.push(json!({"index": index, "error": message, "errorCode": code}));
            }
            _ => {}
        }
    }
    let progress = ((completed + failed) * 100).checked_div(total).unwrap_or(0);
    json!({
        "batchId": id,
        "status": b.status.as_str(),
        "progress": progress,
        "totalItems": total,
        "completedItems": completed,
        "failedItems": failed,
        "results": results,
        "errors": errors,
        "createdAt": rfc3339(b.created_at),
        "startedAt": b.started_at.map(rfc3339),
        "completedAt": b.completed_at.map(rfc3339),
    })
}

// ---------------------------------------------------------------------------------------------
// batch-render

/// Validate, replay or create. The flag is true only when a new batch was created.
fn create_batch(app: &App, uid: &str, headers: &HeaderMap, raw: &[u8]) -> (Reply, bool) {
    match try_create_batch(app, uid, headers, raw) {
        Ok(reply) => (reply, true),
        Err(reply) => (reply, false),
    }
}

/// `Ok` = a batch was created; `Err` = any other answer (refusal or replay).
fn try_create_batch(app: &App, uid: &str, headers: &HeaderMap, raw: &[u8]) -> Result<Reply, Reply> {
    if !uid.starts_with("tmpl_") || uid.contains("missing") {
        return Err(Reply::message(StatusCode::NOT_FOUND, "Template not found"));
    }
    let Ok(body) = serde_json::from_slice::<Value>(raw) else {
        return Err(Reply::message(
            StatusCode::BAD_REQUEST,
            "Request body must be valid JSON",
        ));
    };
    let req = match validate(&body) {
        Ok(r) => r,
        Err(errors) => {
            // 422 with `errors` [PX-PY errors.py]; the HTTP code for >100 items is undocumented
            // (open question 13) — it is a validation error like any other here.
            return Err(Reply::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"message": "Validation failed", "errors": errors}),
            ));
        }
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let faults = app.faults();
    let mut inner = app.lock();
    let ttl = app.cfg.scaled(IDEMPOTENCY_TTL);
    inner.idempotency.retain(|_, e| e.at.elapsed() < ttl);
    if let Some(k) = &key
        && let Some(prev) = inner.idempotency.get(k)
    {
        if prev.template_uid == uid && prev.body == body {
            app.ledger.replay();
            return Err(Reply::new(StatusCode::ACCEPTED, prev.response.clone()));
        }
        // Same key, different request: undocumented. 422 as the IETF Idempotency-Key draft
        // recommends for payload mismatch (stricter than silently replaying). GUESS.
        return Err(Reply::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "message": "Idempotency-Key was already used with a different request",
                "errors": [{"field": "Idempotency-Key", "message": "reused with a different request", "code": "idempotency_key_reused"}],
            }),
        ));
    }
    if let Some(plan) = app.plan {
        if req.sets.len() > plan.max_items_per_batch() {
            // The plan's item cap (GUESS: answered like the endpoint's own 1–100 check).
            app.ledger.refused("items_per_batch");
            return Err(Reply::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"message": "Validation failed", "errors": [{
                    "field": "variableSets",
                    "message": format!("your plan allows at most {} items per batch", plan.max_items_per_batch()),
                    "code": "plan_limit",
                }]}),
            ));
        }
        // A batch runs until its last item is rendered, failed or skipped.
        let running = inner
            .batches
            .values()
            .filter(|b| matches!(b.status, BatchStatus::Pending | BatchStatus::Processing))
            .filter(|b| {
                b.items
                    .iter()
                    .any(|i| matches!(i.state, ItemState::Queued | ItemState::Rendering))
            })
            .count();
        if running >= plan.concurrent_batches() {
            // Undocumented answer (GUESS, stricter reading): refuse rather than queue.
            app.ledger.refused("concurrent_batches");
            return Err(Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Your plan allows {} concurrent batch(es); wait for a running batch to finish",
                    plan.concurrent_batches()
                ),
                "concurrent_batch_limit",
            ));
        }
    }
    // Credits: reserve the whole batch up front (stricter reading of "402 quota").
    let cap = match (app.cfg.wallet, faults.insufficient_after_charges) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(cap) = cap {
        let outstanding: u64 = inner
            .batches
            .values()
            .flat_map(|b| &b.items)
            .filter(|i| matches!(i.state, ItemState::Queued | ItemState::Rendering))
            .count() as u64;
        if inner.charged + outstanding + req.sets.len() as u64 > cap {
            return Err(Reply::error(
                StatusCode::PAYMENT_REQUIRED,
                "Render quota exceeded for your plan",
                "quota_exceeded",
            ));
        }
    }
    let id = app.id("batch_");
    let items = req
        .sets
        .into_iter()
        .map(|variables| {
            let fail = if app.roll(app.cfg.failure_ratio) {
                let i = app
                    .rng
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .usize(0..4);
                Some(FAILURE_CODES[i])
            } else {
                None
            };
            Item {
                variables,
                fail,
                state: ItemState::Queued,
            }
        })
        .collect::<Vec<_>>();
    let total = items.len();
    inner.batches.insert(
        id.clone(),
        Batch {
            template_uid: uid.to_owned(),
            artwork: artwork_for(&req.format, req.quality),
            format: req.format,
            concurrency: req.concurrency,
            images_per_item: req.layouts.len().max(1),
            idempotency_key: key.clone(),
            items,
            status: BatchStatus::Pending,
            created_at: SystemTime::now(),
            started_at: None,
            completed_at: None,
            finished: None,
            started: None,
            held: Vec::new(),
        },
    );
    let response = json!({
        "batchId": id,
        "status": "pending",
        "totalItems": total,
        "message": format!("Batch render started with {total} items"),
    });
    app.ledger.creation(key.as_deref());
    if let Some(k) = key {
        inner.idempotency.insert(
            k,
            IdempotencyEntry {
                template_uid: uid.to_owned(),
                body,
                response: response.clone(),
                at: Instant::now(),
            },
        );
    }
    app.ledger.span_start(&id);
    drop(inner);
    app.ledger.created_id(&id);
    let _ = app.queue.send(id);
    Ok(Reply::new(StatusCode::ACCEPTED, response))
}

/// What the batch's images are drawn as: the requested format at the documented output size.
/// `quality` (0.1–1.0) becomes the JPEG quality; PNG is lossless and the WebP encoder only
/// lossless, so it changes nothing there. The validator admits png, jpeg and webp only.
fn artwork_for(format: &str, quality: f64) -> Artwork {
    let format = ImageFormat::from_name(format).unwrap_or(ImageFormat::Png);
    Artwork::new(format, OUTPUT_WIDTH, OUTPUT_HEIGHT).with_quality((quality * 100.0).round() as u8)
}
