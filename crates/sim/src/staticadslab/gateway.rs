//! Responses and the gate: envelopes, `RateLimit-*` headers, auth and fault injection.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::Sim;
use crate::common::{Faults, RateDecision, dropped_connection, lock};

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Per-request context once the request passed the gate.
pub(super) struct Ctx {
    pub(super) faults: Faults,
    pub(super) rate: RateDecision,
    pub(super) drop: bool,
}

fn reset_secs(rate: &RateDecision) -> u64 {
    // Seconds until reset in real (scaled) time, rounded up and never 0 [SAL:reference/rate-limits].
    (rate.reset_after.as_secs_f64().ceil() as u64).max(1)
}

pub(super) fn with_rate_headers(mut resp: Response<Body>, rate: &RateDecision) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(rate.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(rate.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(reset_secs(rate)));
    resp
}

pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl Sim {
    fn error_body(
        &self,
        code: &str,
        message: &str,
        details: Option<Vec<(String, String)>>,
    ) -> Vec<u8> {
        let mut error = json!({"code": code, "message": message});
        if let Some(d) = details {
            error["details"] = Value::Array(
                d.into_iter()
                    .map(|(field, message)| json!({"field": field, "message": message}))
                    .collect(),
            );
        }
        json!({"error": error, "meta": self.meta()})
            .to_string()
            .into_bytes()
    }

    pub(super) fn error(&self, status: StatusCode, code: &str, message: &str) -> Response<Body> {
        json_response(status, self.error_body(code, message, None))
    }

    pub(super) fn validation(
        &self,
        status: StatusCode,
        details: Vec<(String, String)>,
    ) -> Response<Body> {
        let message = match details.first() {
            Some((f, m)) if details.len() == 1 => format!("Invalid request: {f}: {m}"),
            _ => format!("Invalid request: {} problems", details.len()),
        };
        json_response(
            status,
            self.error_body("VALIDATION_ERROR", &message, Some(details)),
        )
    }

    pub(super) fn success(&self, status: StatusCode, data: Value) -> Response<Body> {
        json_response(
            status,
            json!({"data": data, "meta": self.meta()})
                .to_string()
                .into_bytes(),
        )
    }

    /// The gate every API request passes: ledger, rate limit (every request counts, refused ones
    /// included [SAL:reference/rate-limits]), injected 429/5xx, then `X-API-Key`.
    pub(super) async fn gate(
        &self,
        headers: &HeaderMap,
        endpoint: &str,
    ) -> Result<Ctx, Response<Body>> {
        self.ledger.request(endpoint);
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let (faults, burst) = {
            let mut f = lock(&self.faults);
            let burst = f.burst_429 > 0;
            if burst {
                f.burst_429 -= 1;
            }
            (f.clone(), burst)
        };
        // Limits are per API key; an unknown key gets its own bucket so it cannot drain ours.
        let mut rate = self.limiter(&key).check();
        if burst && rate.allowed {
            rate = RateDecision {
                allowed: false,
                remaining: 0,
                reset_after: rate.reset_after.max(Duration::from_millis(1)),
                ..rate
            };
        }
        let refuse = |resp: Response<Body>| async move {
            tokio::time::sleep(faults.latency).await;
            Err(with_rate_headers(resp, &rate))
        };
        if !rate.allowed {
            self.ledger.served_429();
            let n = reset_secs(&rate);
            let msg = format!(
                "Rate limit of {} requests per {}s exceeded. Retry after {n} seconds.",
                self.limit, self.window_label
            );
            let mut resp = self.error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED", &msg);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(n));
            return refuse(resp).await;
        }
        if self.chance(faults.error_5xx_ratio) {
            self.ledger.served_5xx();
            // GUESS: codes for 500/503 are not documented [SAL:reference/errors].
            let resp = if self.chance(0.5) {
                self.error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    "An unexpected error occurred",
                )
            } else {
                self.error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "A dependency is temporarily unavailable",
                )
            };
            return refuse(resp).await;
        }
        if key.is_empty() || key != self.cfg.api_key {
            let msg = if key.is_empty() {
                "Missing X-API-Key header"
            } else {
                "Invalid or revoked API key"
            };
            return refuse(self.error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", msg)).await;
        }
        let drop = self.chance(faults.drop_ratio);
        Ok(Ctx { faults, rate, drop })
    }

    /// Apply latency (unless already spent), the drop/malformed faults and the rate headers.
    pub(super) async fn finish(
        &self,
        ctx: &Ctx,
        resp: Response<Body>,
        latency_done: bool,
    ) -> Response<Body> {
        if !latency_done {
            tokio::time::sleep(ctx.faults.latency).await;
        }
        if ctx.drop {
            self.ledger.dropped();
            // The client sees a reset instead of a response. The work (if any) has been done.
            return dropped_connection();
        }
        let resp = if resp.status().is_success() && self.chance(ctx.faults.malformed_ratio) {
            truncate_body(resp).await
        } else {
            resp
        };
        with_rate_headers(resp, &ctx.rate)
    }
}

async fn truncate_body(resp: Response<Body>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let cut = bytes.slice(..bytes.len() / 2);
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(cut))
}
