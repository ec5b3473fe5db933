//! Pictify's error responses and rate-limit headers → [`GenError`] / [`RateLimitSnapshot`].
//!
//! There is no unified error envelope ([PX-PY] `errors.py`): image endpoints answer
//! `{"error", "code"}`, template endpoints `{"message", "errors"?}`, and the docs describe RFC 9457
//! `{title, detail, errors?}`. We read `error` || `message` || `detail` || `title`.

use std::time::{Duration, SystemTime};

use adgate_generator::ratelimit;
use adgate_generator::{FieldViolation, GenError, RateLimitSnapshot};
use http::{HeaderMap, StatusCode};
use serde_json::Value;

/// Longest provider message we carry into an error (bodies may be large or odd).
const MAX_MESSAGE: usize = 300;

/// Classify a non-2xx response.
pub fn map_status(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GenError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = message_of(&json).unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("unexpected status")
            .to_owned()
    });
    let message = format!("HTTP {}: {}", status.as_u16(), clip(&message));
    let code = code_of(&json).unwrap_or_default();
    match status.as_u16() {
        400 | 422 => GenError::Invalid {
            message,
            provider_code: if code.is_empty() {
                "VALIDATION_ERROR".to_owned()
            } else {
                code
            },
            violations: violations_of(&json),
        },
        401 | 403 => GenError::Unauthorized { message },
        402 => GenError::InsufficientBalance { message },
        404 => GenError::Permanent {
            message,
            provider_code: if code.is_empty() {
                "NOT_FOUND".to_owned()
            } else {
                code
            },
        },
        // An idempotency key still in flight, or a state conflict: worth retrying.
        409 => GenError::transient(message),
        // [PX-PY]: 429 with code "quota_exceeded" is the plan quota, not the request rate.
        429 if code.eq_ignore_ascii_case("quota_exceeded") => {
            GenError::InsufficientBalance { message }
        }
        429 => GenError::RateLimited {
            retry_after: retry_after(headers, &json),
        },
        500..=599 => GenError::transient(message),
        _ => GenError::Permanent {
            message,
            provider_code: code,
        },
    }
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn message_of(v: &Value) -> Option<String> {
    ["error", "message", "detail", "title"]
        .iter()
        .find_map(|k| {
            match v.get(*k)? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                // Some services nest `{"error": {"message": …}}`.
                Value::Object(o) => o.get("message")?.as_str().map(str::to_owned),
                _ => None,
            }
        })
}

fn code_of(v: &Value) -> Option<String> {
    v.get("code")
        .and_then(Value::as_str)
        .or_else(|| v.get("error")?.get("code")?.as_str())
        .map(str::to_owned)
}

/// `errors: [{field, message, code}]` → violations (provider field names verbatim).
fn violations_of(v: &Value) -> Vec<FieldViolation> {
    let Some(errors) = v.get("errors").and_then(Value::as_array) else {
        return Vec::new();
    };
    errors
        .iter()
        .filter_map(|e| match e {
            Value::String(s) => Some(FieldViolation::new("", clip(s))),
            Value::Object(o) => {
                let field = o
                    .get("field")
                    .or_else(|| o.get("path"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let msg = o
                    .get("message")
                    .or_else(|| o.get("detail"))
                    .and_then(Value::as_str)
                    .unwrap_or("invalid");
                Some(FieldViolation::new(field, clip(msg)))
            }
            _ => None,
        })
        .collect()
}

/// `Retry-After` (seconds) header, else `retryAfter` / `retry_after` in the body.
fn retry_after(headers: &HeaderMap, body: &Value) -> Option<Duration> {
    let body = ["retryAfter", "retry_after"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_f64))
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)));
    ratelimit::retry_after(headers).or(body)
}

/// `X-RateLimit-Limit/Remaining/Reset`; Reset is a Unix timestamp in seconds
/// [PX-LIVE:api-reference/overview].
pub fn rate_snapshot(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitSnapshot> {
    ratelimit::snapshot(headers, ratelimit::X_RATELIMIT_UNIX, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(status: u16, body: &str) -> GenError {
        map_status(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn documented_error_shapes_map_to_classes() {
        // {"message", "errors"} — template endpoints [PX-PY].
        let e = map(
            422,
            r#"{"message":"Validation failed","errors":[{"field":"variableSets","message":"too many","code":"invalid"}]}"#,
        );
        match e {
            GenError::Invalid {
                message,
                violations,
                provider_code,
            } => {
                assert!(message.contains("Validation failed"));
                assert_eq!(provider_code, "VALIDATION_ERROR");
                assert_eq!(violations[0].field, "variableSets");
            }
            other => panic!("{other:?}"),
        }
        // {"error", "code"} — image endpoints.
        assert!(matches!(
            map(401, r#"{"error":"Invalid API key","code":"invalid_api_key"}"#),
            GenError::Unauthorized { message } if message.contains("Invalid API key")
        ));
        assert!(matches!(map(403, "{}"), GenError::Unauthorized { .. }));
        assert!(matches!(
            map(402, r#"{"error":"quota","code":"quota_exceeded"}"#),
            GenError::InsufficientBalance { .. }
        ));
        assert!(matches!(
            map(429, r#"{"error":"Quota","code":"quota_exceeded"}"#),
            GenError::InsufficientBalance { .. }
        ));
        // RFC 9457 problem details — the docs' shape.
        assert!(matches!(
            map(404, r#"{"type":"https://docs.pictify.io/errors/template-not-found","title":"Not Found","status":404,"detail":"Template tmpl_x not found"}"#),
            GenError::Permanent { message, .. } if message.contains("Template tmpl_x not found")
        ));
        assert!(matches!(map(409, "{}"), GenError::Transient { .. }));
        assert!(matches!(map(503, "<html>"), GenError::Transient { .. }));
        assert!(matches!(map(400, "not json"), GenError::Invalid { .. }));
    }

    #[test]
    fn rate_limited_reads_header_then_body() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        let e = map_status(StatusCode::TOO_MANY_REQUESTS, &h, br#"{"retryAfter":30}"#);
        assert!(
            matches!(e, GenError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7))
        );
        let e = map(429, r#"{"error":"slow down","retryAfter":30}"#);
        assert!(
            matches!(e, GenError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(30))
        );
        let e = map(429, r#"{"message":"slow down","retry_after":2}"#);
        assert!(
            matches!(e, GenError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(2))
        );
        assert!(matches!(
            map(429, "{}"),
            GenError::RateLimited { retry_after: None }
        ));
    }

    #[test]
    fn reset_header_is_a_unix_timestamp() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", HeaderValue::from_static("60"));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("12"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1800000042"));
        let s = rate_snapshot(&h, now).unwrap();
        assert_eq!(s.limit, Some(60));
        assert_eq!(s.remaining, 12);
        assert_eq!(s.reset_after, Duration::from_secs(42));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1799999000"));
        assert_eq!(rate_snapshot(&h, now).unwrap().reset_after, Duration::ZERO);
        h.remove("x-ratelimit-remaining");
        assert!(rate_snapshot(&h, now).is_none());
    }

    #[test]
    fn long_messages_are_clipped() {
        let body = format!(r#"{{"message":"{}"}}"#, "é".repeat(400));
        let GenError::Invalid { message, .. } = map(400, &body) else {
            panic!()
        };
        assert!(message.len() < 400);
    }
}
