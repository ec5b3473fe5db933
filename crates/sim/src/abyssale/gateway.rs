//! Responses (versioned envelopes, error shapes, bare 429) and the gateway middleware.

use std::sync::Arc;

use adgate_generator::time::unix_now;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{API_VERSION, App};
use crate::common::lock;

// ---------------------------------------------------------------------------------------------
// Responses

pub(super) fn json_response(status: StatusCode, mut body: Value) -> Response {
    if let Value::Object(map) = &mut body {
        map.insert("version".to_owned(), Value::from(API_VERSION));
    }
    (status, axum::Json(body)).into_response()
}

/// The error envelope "for this entire API": `id` and `message` always present [AB-TS].
pub(super) fn error(status: StatusCode, id: &str, message: impl Into<String>) -> Response {
    json_response(status, json!({"id": id, "message": message.into()}))
}

pub(super) fn error_with(
    status: StatusCode,
    id: &str,
    message: String,
    errors: Vec<Value>,
) -> Response {
    json_response(
        status,
        json!({"id": id, "message": message, "errors": errors}),
    )
}

pub(super) fn field_error(path: &str, code: &str, message: impl Into<String>) -> Value {
    json!({"path": path, "code": code, "message": message.into()})
}

/// The gateway's 429: `rate_limit_exceeded`, **no Retry-After**, "envelope not guaranteed"
/// [AB-TS] middleware.ts / `GenerationRateLimited`. It is emitted before the API proper, so it
/// carries no `version` stamp (stricter: clients must not rely on one).
fn bare_429() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({
            "id": "rate_limit_exceeded",
            "message": "Too many requests: the API gateway allows 10 requests per second.",
        })),
    )
        .into_response()
}

pub(super) async fn endpoint_not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "endpoint_not_found",
        "No endpoint matches this path.",
    )
}

pub(super) async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This endpoint does not accept this method.",
    )
}

// ---------------------------------------------------------------------------------------------
// The gateway: ledger, faults, rate limit, auth — in that order.

#[derive(Clone)]
pub(super) struct Gate {
    pub(super) app: Arc<App>,
    pub(super) endpoint: &'static str,
}

pub(super) async fn gate(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let app = gate.app;
    app.ledger.request(gate.endpoint);
    let faults = app.faults();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let burst = {
        let mut f = lock(&app.faults);
        if f.burst_429 > 0 {
            f.burst_429 -= 1;
            true
        } else {
            false
        }
    };
    if burst {
        app.ledger.served_429();
        return bare_429();
    }
    let rate = app.limiter.check();
    if !rate.allowed {
        app.ledger.served_429();
        return bare_429();
    }
    // Every auth failure is 401; "there is no 403 in this API" [SEED-4], [AB-TS].
    let key_ok = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == app.cfg.api_key);
    if !key_ok {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or invalid x-api-key header.",
        );
    }
    if app.chance(faults.error_5xx_ratio) {
        app.ledger.served_5xx();
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "An internal error occurred.",
        );
    }
    // Decided up front, applied after the work: the strict reading of a dropped connection is
    // that the request reached Abyssale (and may have started billable work) but the answer
    // was lost.
    let drop_connection = app.chance(faults.drop_ratio);
    let malformed = app.chance(faults.malformed_ratio);

    let mut resp = next.run(req).await;

    if resp.status().is_success() {
        // `X-RateLimit-*` on success responses; Reset is Unix seconds [AB-TS] `headers`.
        let reset = unix_now() + rate.reset_after.as_secs_f64().ceil() as u64;
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(rate.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(reset));
        if malformed {
            resp = truncate_body(resp).await;
        }
    }
    if drop_connection {
        app.ledger.dropped();
        drop_connection_now();
    }
    resp
}

/// Unwinding the connection task makes hyper drop the socket without writing a response
/// (`resume_unwind` skips the panic hook, so nothing is printed). Used by `drop_ratio` here and
/// by `cut_after_create` in the generate handler.
pub(super) fn drop_connection_now() -> ! {
    std::panic::resume_unwind(Box::new("abyssale sim: dropped connection"))
}

async fn truncate_body(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let cut = bytes.slice(..bytes.len() / 2);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(cut))
}
