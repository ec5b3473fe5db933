//! Generation: `POST …/generate`, the per-format run, `GET /generation-request/{id}` polling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adgate_generator::time::unix_now;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::gateway::{drop_connection_now, endpoint_not_found, error, json_response};
use super::validate::{GenerateRequest, has_json_content_type, is_uuid, parse_generate};
use super::{App, Delivery, FAILURE_REASONS, GenRequest};
use crate::artwork::{Artwork, ImageFormat};
use crate::common::{self, lock};

// ---------------------------------------------------------------------------------------------
// POST /async/banner-builder/{design_id}/generate

pub(super) async fn generate(
    State(app): State<Arc<App>>,
    Path(design_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (resp, created) = generate_inner(&app, design_id, &headers, &body).await;
    // A created generation runs in its own task from here on, so neither fault below can stop
    // it from completing, billing and calling back.
    let cut = created && lock(&app.faults).take_cut();
    let delay = app.faults().submit_answer_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if cut {
        app.ledger.cut();
        drop_connection_now();
    }
    resp
}

/// Validate and create. The flag is true only when a generation request was created.
async fn generate_inner(
    app: &Arc<App>,
    design_id: String,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Response, bool) {
    // A non-UUID design id does not match the route [AB-TS], [SEED-4].
    if !is_uuid(&design_id) {
        return (endpoint_not_found().await, false);
    }
    // `Content-Type: application/json` is required [AB:rest-api]; the spec's code for its
    // absence is `unsupported_media_type`, which we serve with its natural status, 415 (GUESS).
    if !has_json_content_type(headers) {
        return (
            error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json.",
            ),
            false,
        );
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return (
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("Body is not valid JSON: {e}"),
                ),
                false,
            );
        }
    };
    let Value::Object(body) = parsed else {
        return (
            error(
                StatusCode::BAD_REQUEST,
                "wrong_type",
                "Body must be a JSON object.",
            ),
            false,
        );
    };
    let req = match parse_generate(&body) {
        Ok(r) => r,
        Err(resp) => return (*resp, false),
    };

    // Credits: one per banner (GUESS: reserved up front for every requested format, so a
    // request the balance cannot cover is refused whole — the stricter reading). Abyssale
    // reports spent credits as 429 `rate_limit_exceeded`; only `message` differs [AB-TS].
    let faults = app.faults();
    if let Some(limit) = app.credit_limit(&faults) {
        let mut reserved = lock(&app.credits_reserved);
        let wanted = req.formats.len() as u64;
        if *reserved + wanted > limit {
            drop(reserved);
            app.ledger.served_429();
            return (
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_exceeded",
                    "All your image generation credits have been consumed. Upgrade your plan to get more credits.",
                ),
                false,
            );
        }
        *reserved += wanted;
    } else {
        *lock(&app.credits_reserved) += req.formats.len() as u64;
    }

    // No idempotency mechanism exists [AB-TS]: every POST is new work.
    app.ledger.creation(None);
    let id = app.uuid();
    app.ledger.created_id(&id);
    let created = Instant::now();
    lock(&app.requests).insert(
        id.clone(),
        GenRequest {
            created,
            banners: Vec::new(),
            errors: Vec::new(),
            finalized: false,
        },
    );
    // The per-job `callback_url` "receives the POST" [SEED-4], [AB-TS]: it is kept as the
    // string the client sent — path and query included, percent-escapes untouched — and is
    // POSTed to as is. It overrides the global endpoint for this request [SEED-4] "Option 1".
    // (https-only [AB:webhooks/events] is relaxed for loopback hosts in `validate`.)
    let target = req
        .callback_url
        .clone()
        .or_else(|| app.cfg.webhook.as_ref().map(|w| w.url.clone()));
    tokio::spawn(run_generation(
        Arc::clone(app),
        id.clone(),
        design_id,
        created,
        req,
        target,
    ));
    // Spec: 200 "Generation queued" (not 202) [AB-TS] `generateMultiFormatMedia`.
    (
        json_response(StatusCode::OK, json!({"generation_request_id": id})),
        true,
    )
}

/// Drive one generation request: each format finishes at its own drawn time as a banner or a
/// per-format error; once all are done the request is finalized and the webhook queued.
async fn run_generation(
    app: Arc<App>,
    id: String,
    design_id: String,
    created: Instant,
    req: GenerateRequest,
    target: Option<String>,
) {
    let (lo, hi) = app.cfg.job_duration;
    let mut plan: Vec<(Duration, (&'static str, u32, u32), bool)> = req
        .formats
        .iter()
        .map(|f| {
            let span = hi.saturating_sub(lo);
            let d = lo + span.mul_f64(lock(&app.rng).f64());
            (app.cfg.scaled(d), *f, app.should_fail())
        })
        .collect();
    plan.sort_by_key(|p| p.0);
    let template_ts = unix_now().saturating_sub(86_400);
    for (offset, (format, width, height), fails) in plan {
        tokio::time::sleep_until((created + offset).into()).await;
        let entry = if fails {
            *lock(&app.credits_reserved) -= 1;
            let reason = FAILURE_REASONS[lock(&app.rng).usize(0..FAILURE_REASONS.len())];
            Err(json!({"template_format_name": format, "reason": reason}))
        } else {
            let banner_id = app.uuid();
            let filename = format!("{banner_id}.{}", req.file_type);
            lock(&app.files).insert(
                filename.clone(),
                (
                    id.clone(),
                    artwork(&req.file_type, width, height, req.compression_level),
                ),
            );
            app.ledger.charge(&format!("{id}/{format}"), None);
            Ok(json!({
                "id": banner_id,
                // The Banner's own `version` is an int counter, not the API version [AB-TS].
                "version": 1,
                "sharing_id": app.uuid(),
                "file": {
                    "type": req.file_type,
                    "url": format!("{}/files/{filename}", app.base_url),
                    "cdn_url": format!("{}/cdn/{filename}", app.base_url),
                    "filename": filename,
                },
                "format": {"id": format, "width": width, "height": height},
                "template": {
                    "id": design_id,
                    "name": format!("Sim design {}", &design_id[..8]),
                    "type": "static",
                    "created_at": template_ts,
                    "updated_at": template_ts,
                },
            }))
        };
        if let Some(r) = lock(&app.requests).get_mut(&id) {
            match entry {
                Ok(b) => r.banners.push(b),
                Err(e) => r.errors.push(e),
            }
        }
    }
    let payload = {
        let mut requests = lock(&app.requests);
        let Some(r) = requests.get_mut(&id) else {
            return;
        };
        r.finalized = true;
        // CONFLICT: the seed names the key `generation_request_id`; the older event page calls
        // it `id` [SEED-4] vs [AB:webhooks/events/banner]. We follow the seed.
        json!({
            "generation_request_id": id,
            "banners": r.banners,
            "errors": r.errors,
        })
    };
    if let Some(url) = target {
        let delivery = Delivery {
            delivery_id: common::hex_id(&app.rng, 64),
            url,
            body: Bytes::from(payload.to_string()),
        };
        let _ = app.deliveries.send(delivery);
    }
}

// ---------------------------------------------------------------------------------------------
// GET /generation-request/{id}

pub(super) async fn get_generation_request(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Response {
    if !is_uuid(&id) {
        return endpoint_not_found().await;
    }
    let retention = app.retention();
    let requests = lock(&app.requests);
    let Some(r) = requests.get(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "generation_request_not_found",
            format!("Generation request {id} not found."),
        );
    };
    if r.created.elapsed() >= retention {
        return error(
            StatusCode::GONE,
            "generation_request_gone",
            "Generation requests are available for 7 days.",
        );
    }
    // 202 while running, 200 once final [AB-TS] `getGenerationRequest`, [SEED-4].
    let status = if r.finalized {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    json_response(
        status,
        json!({
            "id": id,
            "is_finalized": r.finalized,
            "banners": r.banners,
            "errors": r.errors,
        }),
    )
}

/// How a banner's file is drawn. `avif` keeps PNG bytes under a PNG Content-Type: no small
/// pure-Rust AVIF encoder exists (the one there is pulls in a whole AV1 encoder), so the URL
/// and `file.type` say avif while the served header tells the truth about the bytes.
fn artwork(file_type: &str, width: u32, height: u32, compression_level: Option<u8>) -> Artwork {
    let format = ImageFormat::from_name(file_type).unwrap_or(ImageFormat::Png);
    let artwork = Artwork::new(format, width, height);
    match compression_level {
        Some(level) => artwork.with_quality(level),
        None => artwork,
    }
}
