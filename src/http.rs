//! The plain-HTTP listener: provider webhooks, Prometheus metrics and a liveness probe.
//!
//! - `POST /webhooks/{provider}`: raw body (≤ 1 MiB, `application/json`) and headers go to the
//!   engine, which verifies the signature before anything changes.
//! - `GET /metrics`: Prometheus text.
//! - `GET /healthz`: `200 ok`, or `503 draining` once shutdown began.
//! - `/ui…`: the web console ([`crate::console`]), behind the caller tokens when auth is on.
//! - `GET /outputs/{job id}/{index}`: stored outputs ([`crate::http_outputs`]), behind the
//!   caller tokens when auth is on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use adgate_engine::{Engine, WebhookOutcome};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::auth::Tokens;
use crate::errors::{WebhookReject, webhook_status};

/// A webhook answer slower than this is logged.
const SLOW_WEBHOOK_ANSWER: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest webhook body accepted.
pub const MAX_WEBHOOK_BODY: usize = 1 << 20;

#[derive(Clone)]
pub struct HttpState {
    pub engine: Engine,
    pub registry: Arc<Registry>,
    pub draining: Arc<AtomicBool>,
    pub tokens: Tokens,
}

pub fn router(state: HttpState) -> Router {
    let console = crate::console::router(crate::console::ConsoleState {
        engine: state.engine.clone(),
        tokens: state.tokens.clone(),
        registry: state.registry.clone(),
    });
    let outputs = Router::new()
        .route(
            "/outputs/{job_id}/{index}",
            get(crate::http_outputs::get_output),
        )
        .with_state(crate::http_outputs::OutputsState {
            engine: state.engine.clone(),
            tokens: state.tokens.clone(),
        });
    Router::new()
        .route("/webhooks/{provider}", post(webhook))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
        .merge(console)
        .merge(outputs)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn reject(r: WebhookReject) -> Response {
    let e = webhook_status(r);
    let body =
        json!({"error": {"code": e.status.as_u16(), "reason": e.reason, "message": e.message}});
    (e.status, axum::Json(body)).into_response()
}

async fn webhook(
    State(st): State<HttpState>,
    Path(provider): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !is_json(&headers) {
        return reject(WebhookReject::UnsupportedMediaType);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_WEBHOOK_BODY as u64) {
        return reject(WebhookReject::TooLarge {
            limit: MAX_WEBHOOK_BODY,
        });
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_WEBHOOK_BODY).await else {
        return reject(WebhookReject::TooLarge {
            limit: MAX_WEBHOOK_BODY,
        });
    };
    let query = query.unwrap_or_default();
    // 2xx only once the event is applied or durably kept (see the engine's `events` module);
    // a store failure answers 5xx and the provider retries.
    let started = std::time::Instant::now();
    let outcome = st
        .engine
        .handle_webhook(&provider, &query, &headers, &bytes)
        .await;
    let took = started.elapsed();
    if took > SLOW_WEBHOOK_ANSWER {
        // Providers wait a bounded time for the answer (Pictify 30 s) and count a slow one
        // as a failed delivery: worth seeing before it happens.
        tracing::warn!(provider = %provider, took_ms = took.as_millis() as u64, "slow webhook answer");
    }
    match outcome {
        Ok(WebhookOutcome::Applied { updated }) => (
            StatusCode::OK,
            axum::Json(json!({"status": "applied", "updated": updated})),
        )
            .into_response(),
        Ok(WebhookOutcome::Kept { updated, kept }) => (
            StatusCode::OK,
            axum::Json(json!({"status": "kept", "updated": updated, "kept": kept})),
        )
            .into_response(),
        Ok(WebhookOutcome::Duplicate) => {
            (StatusCode::OK, axum::Json(json!({"status": "duplicate"}))).into_response()
        }
        Err(e) => {
            tracing::warn!(provider = %provider, error = %e, "webhook refused");
            reject(WebhookReject::Engine(e))
        }
    }
}

async fn metrics(State(st): State<HttpState>) -> Response {
    st.engine.refresh_gauges().await;
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &st.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn healthz(State(st): State<HttpState>) -> Response {
    if st.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}
