//! Responses (`{"message"}` error bodies) and the gateway middleware: ledger, latency, burst,
//! auth, the POST-only rate limit, injected 5xx, dropped connections and truncated bodies.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::App;
use crate::common::{self, lock};

// ---------------------------------------------------------------------------------------------
// Responses

pub(super) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Every v5 error body is `{"message": "<human-readable>"}`; no machine-readable codes are
/// documented [V5-SPEC]@a9ca682, [RB5], §12.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({"message": message.into()}))
}

/// 429 "Slow down!" [BB-V5] error table. GUESS: the body is the usual `{"message"}`; no
/// `Retry-After` and no `RateLimit-*` headers are documented (§10), so none are sent — the
/// stricter reading (a client must bring its own backoff, [MCP] falls back to 1/2/4 s).
pub(super) fn slow_down() -> Response {
    error(StatusCode::TOO_MANY_REQUESTS, "Slow down!")
}

pub(super) async fn endpoint_not_found() -> Response {
    // 404 "not found" [BB-V5]; GUESS: the same `{"message"}` body for an unknown route.
    error(StatusCode::NOT_FOUND, "Not found")
}

pub(super) async fn method_not_allowed() -> Response {
    // GUESS: undocumented; 405 with the usual body.
    error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

// ---------------------------------------------------------------------------------------------
// The gateway

#[derive(Clone)]
pub(super) struct Gate {
    pub(super) app: Arc<App>,
    pub(super) endpoint: &'static str,
}

/// Order: ledger, latency, `burst_429`, auth, rate limit, injected 5xx, then the handler
/// (whose answer may be dropped or truncated).
pub(super) async fn gate(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let app = gate.app;
    app.ledger.request(gate.endpoint);
    let faults = app.faults();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let burst = {
        let mut f = lock(&app.faults);
        let hit = f.burst_429 > 0;
        f.burst_429 = f.burst_429.saturating_sub(1);
        hit
    };
    if burst {
        app.ledger.served_429();
        return slow_down();
    }
    // `Authorization: Bearer <API key>` on every request [BB-V5]; a wrong key — a V2 key
    // included — is a plain 401 [BB-V5], [MCP] README. GUESS: the configured key is accepted
    // whatever its shape (documented v5 keys look like `bb_ak_v5_…` [MCP] README; the sandbox
    // chooses its own). The key has full access (`scopes: []`), so no 403 arises here.
    let key_ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| k == app.cfg.api_key);
    if !key_ok {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized: API key is wrong");
    }
    // The limit is per API key, so it is checked after the key (a wrong key has no window),
    // and only POSTs are metered in v5 [MCP] README. A refused request does not enter the
    // window (rolling window of accepted POSTs).
    if req.method() == Method::POST && !app.limiter.check().allowed {
        app.ledger.served_429();
        return slow_down();
    }
    if app.chance(faults.error_5xx_ratio) {
        app.ledger.served_5xx();
        // 500 "server error; try later" [BB-V5].
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error: we had a problem with our server, try again later",
        );
    }
    // Decided up front, applied after the work: the strict reading of a dropped connection is
    // that the request reached Bannerbear (and may have started billable work) but the answer
    // was lost.
    let drop_connection = app.chance(faults.drop_ratio);
    let malformed = app.chance(faults.malformed_ratio);

    let resp = next.run(req).await;

    if drop_connection {
        app.ledger.dropped();
        return common::dropped_connection();
    }
    if malformed && resp.status().is_success() {
        return truncate_body(resp).await;
    }
    resp
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
