//! Responses and the gate: error shapes, auth, 429, `X-RateLimit-*`, malformed/drop faults.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{App, FREE_PLAN_REQUESTS_PER_MINUTE};
use crate::common::{RateDecision, dropped_connection};

/// A JSON answer before faults and headers are applied.
pub(super) struct Reply {
    status: StatusCode,
    body: Value,
}

impl Reply {
    pub(super) fn new(status: StatusCode, body: Value) -> Self {
        Self { status, body }
    }
    /// Template-endpoint error shape `{"message", "errors"?}` [PX-PY errors.py].
    pub(super) fn message(status: StatusCode, message: &str) -> Self {
        Self::new(status, json!({ "message": message }))
    }
    /// Cross-cutting error shape `{"error", "code"}` [PX-PY errors.py].
    pub(super) fn error(status: StatusCode, message: &str, code: &str) -> Self {
        Self::new(status, json!({ "error": message, "code": code }))
    }
}

impl App {
    /// Everything that happens before a handler runs: ledger, latency, drops, 5xx, auth, 429.
    pub(super) async fn gate(
        &self,
        endpoint: &str,
        headers: &HeaderMap,
    ) -> Result<RateDecision, Response> {
        self.ledger.request(endpoint);
        let faults = self.faults();
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        if self.roll(faults.drop_ratio) {
            self.ledger.dropped();
            return Err(dropped_connection());
        }
        if self.roll(faults.error_5xx_ratio) {
            self.ledger.served_5xx();
            let r = Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error",
                "internal_error",
            );
            return Err(self.respond(r, None, false));
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match bearer {
            None => {
                let r = Reply::error(
                    StatusCode::UNAUTHORIZED,
                    "Missing or malformed Authorization header",
                    "missing_authorization",
                );
                return Err(self.respond(r, None, false));
            }
            Some(key) if key != self.cfg.api_key => {
                let r = Reply::error(
                    StatusCode::UNAUTHORIZED,
                    "Invalid API key",
                    "invalid_api_key",
                );
                return Err(self.respond(r, None, false));
            }
            Some(_) => {}
        }
        let burst = {
            let mut f = self.faults.lock().unwrap_or_else(|e| e.into_inner());
            let hit = f.burst_429 > 0;
            f.burst_429 = f.burst_429.saturating_sub(1);
            hit
        };
        let decision = if burst {
            RateDecision {
                allowed: false,
                limit: self.limiter_limit(),
                remaining: 0,
                reset_after: self.cfg.scaled(Duration::from_secs(60)),
            }
        } else {
            self.limiter.check()
        };
        if decision.allowed
            && let Some(daily) = &self.daily
        {
            let day = daily.check();
            if !day.allowed {
                // The plan's requests per day [PX-LIVE:authentication]; a 429 with
                // `quota_exceeded` is quota per [PX-PY] errors.py (GUESS: the body and the
                // Retry-After to the window's end are not documented for the daily cap).
                self.ledger.served_429();
                self.ledger.refused("daily_requests");
                let retry_after = ceil_secs(day.reset_after).max(1);
                let r = Reply::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({
                        "error": "Daily request quota exceeded for your plan",
                        "code": "quota_exceeded",
                        "retryAfter": retry_after,
                    }),
                );
                let mut resp = self.respond(r, Some(day), false);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                return Err(resp);
            }
        }
        if !decision.allowed {
            self.ledger.served_429();
            let retry_after = ceil_secs(decision.reset_after).max(1);
            let r = Reply::new(
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "error": "Rate limit exceeded",
                    "code": "rate_limit_exceeded",
                    "retryAfter": retry_after,
                }),
            );
            let mut resp = self.respond(r, Some(decision), false);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return Err(resp);
        }
        Ok(decision)
    }

    fn limiter_limit(&self) -> u32 {
        self.cfg
            .rate_limit
            .map_or(FREE_PLAN_REQUESTS_PER_MINUTE, |(n, _)| n)
    }

    /// Serialise, maybe truncate (malformed fault), and add `X-RateLimit-*` headers.
    pub(super) fn respond(
        &self,
        reply: Reply,
        rate: Option<RateDecision>,
        may_truncate: bool,
    ) -> Response {
        let mut body = reply.body.to_string().into_bytes();
        if may_truncate && reply.status.is_success() && self.roll(self.faults().malformed_ratio) {
            body.truncate(body.len() / 2);
        }
        let mut resp = (reply.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(d) = rate {
            // X-RateLimit-Reset is a Unix timestamp in seconds [PX-LIVE:api-reference/overview].
            let reset = SystemTime::now() + d.reset_after;
            let reset = reset
                .duration_since(UNIX_EPOCH)
                .map(ceil_secs)
                .unwrap_or_default();
            h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
            h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
            h.insert("x-ratelimit-reset", HeaderValue::from(reset));
        }
        resp
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
