//! Error mapping: one function turns a provider HTTP answer into a [`GenError`], another maps
//! transport failures, and the `RateLimit-*` / `Retry-After` headers are read here too.
//! Nothing here ever sees the API key, so no error can carry it.

use std::time::Duration;

use adgate_generator::ratelimit;
use adgate_generator::{FieldViolation, GenError, RateLimitSnapshot};
use http::HeaderMap;

use crate::wire::ErrorEnvelope;

/// Longest slice of a non-JSON error body quoted in a message.
const MAX_QUOTED_BODY: usize = 200;

/// Map a non-success HTTP answer of StaticAdsLab to the taxonomy ([SAL:reference/errors]).
pub fn map_status(status: u16, headers: &HeaderMap, body: &[u8]) -> GenError {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body).ok();
    let (code, message, details) = match parsed {
        Some(env) => (env.error.code, env.error.message, env.error.details),
        None => (String::new(), quote(body), Vec::new()),
    };
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {code}: {message}")
    };
    match status {
        // 400 VALIDATION_ERROR, 422 relationship / id-prefix / idempotency-body mismatch, and
        // 413 body too large: resending the same request cannot succeed.
        400 | 413 | 422 => GenError::Invalid {
            message,
            provider_code: if code.is_empty() {
                format!("HTTP_{status}")
            } else {
                code
            },
            violations: details
                .into_iter()
                .map(|d| FieldViolation::new(spec_path(&d.field), d.message))
                .collect(),
        },
        401 | 403 => GenError::Unauthorized { message },
        402 => GenError::InsufficientBalance { message },
        404 => GenError::Permanent {
            message,
            provider_code: if code.is_empty() {
                "NOT_FOUND".into()
            } else {
                code
            },
        },
        // IDEMPOTENCY_CONFLICT: another request holds the key's lock; retry later with the
        // same key and the replay will answer.
        409 => GenError::transient(message),
        429 => GenError::RateLimited {
            retry_after: retry_after(headers),
        },
        500..=599 => GenError::transient(message),
        400..=499 => GenError::Permanent {
            message,
            provider_code: if code.is_empty() {
                format!("HTTP_{status}")
            } else {
                code
            },
        },
        _ => GenError::transient(message),
    }
}

/// A success body that does not parse.
pub fn malformed(what: &str, err: serde_json::Error) -> GenError {
    GenError::transient_from(format!("malformed StaticAdsLab response: {what}"), err)
}

/// `Retry-After` (seconds) or, failing that, `RateLimit-Reset` (seconds until reset).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    ratelimit::retry_after(headers).or_else(|| {
        ratelimit::header_u64(headers, ratelimit::IETF_SECONDS.reset).map(Duration::from_secs)
    })
}

/// `RateLimit-Limit/Remaining/Reset` ([SAL:reference/rate-limits]; reset is seconds, not a
/// Unix time). `None` unless both remaining and reset are present.
pub fn rate_snapshot(headers: &HeaderMap) -> Option<RateLimitSnapshot> {
    ratelimit::snapshot(
        headers,
        ratelimit::IETF_SECONDS,
        std::time::SystemTime::now(),
    )
}

/// Provider field paths use the wire's `imageFillUrl`; our spec says `image_fill_url`.
fn spec_path(field: &str) -> String {
    field.replace("imageFillUrl", "image_fill_url")
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED_BODY) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn documented_429_body_and_headers() {
        let body = br#"{"error":{"code":"RATE_LIMIT_EXCEEDED","message":"Rate limit of 100 requests per 60s exceeded. Retry after 17 seconds."},"meta":{"request_id":"req_a1b2c3d4e5f67890","timestamp":"2026-04-30T14:30:00.000Z"}}"#;
        let h = headers(&[
            ("retry-after", "17"),
            ("ratelimit-limit", "100"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "17"),
        ]);
        match map_status(429, &h, body) {
            GenError::RateLimited { retry_after } => {
                assert_eq!(retry_after, Some(Duration::from_secs(17)))
            }
            other => panic!("{other:?}"),
        }
        let snap = rate_snapshot(&h).unwrap();
        assert_eq!(snap.limit, Some(100));
        assert_eq!(snap.remaining, 0);
        assert_eq!(snap.reset_after, Duration::from_secs(17));
        // Without Retry-After the reset header is the fallback.
        let h = headers(&[("ratelimit-reset", "9")]);
        assert!(matches!(
            map_status(429, &h, b"{}"),
            GenError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(9)
        ));
        assert!(rate_snapshot(&h).is_none());
    }

    #[test]
    fn validation_details_become_violations() {
        let body = br#"{"error":{"code":"VALIDATION_ERROR","message":"Invalid request","details":[{"field":"brand_id","message":"Expected an id starting with brand_"},{"field":"node_overrides.hero.imageFillUrl","message":"Expected a string"}]},"meta":{"request_id":"req_1","timestamp":"2026-04-30T14:30:00.000Z"}}"#;
        for status in [400, 422] {
            match map_status(status, &HeaderMap::new(), body) {
                GenError::Invalid {
                    provider_code,
                    violations,
                    message,
                } => {
                    assert_eq!(provider_code, "VALIDATION_ERROR");
                    assert!(message.contains("Invalid request"));
                    assert_eq!(violations.len(), 2);
                    assert_eq!(violations[0].field, "brand_id");
                    assert_eq!(violations[1].field, "node_overrides.hero.image_fill_url");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn status_classes() {
        let env = |code: &str| {
            format!(r#"{{"error":{{"code":"{code}","message":"m"}},"meta":{{}}}}"#).into_bytes()
        };
        let h = HeaderMap::new();
        assert!(matches!(
            map_status(401, &h, &env("UNAUTHORIZED")),
            GenError::Unauthorized { .. }
        ));
        assert!(matches!(
            map_status(403, &h, &env("FORBIDDEN")),
            GenError::Unauthorized { .. }
        ));
        assert!(matches!(
            map_status(402, &h, &env("INSUFFICIENT_BALANCE")),
            GenError::InsufficientBalance { .. }
        ));
        assert!(matches!(
            map_status(404, &h, &env("NOT_FOUND")),
            GenError::Permanent { provider_code, .. } if provider_code == "NOT_FOUND"
        ));
        assert!(matches!(
            map_status(409, &h, &env("IDEMPOTENCY_CONFLICT")),
            GenError::Transient { .. }
        ));
        assert!(matches!(
            map_status(413, &h, b"too big"),
            GenError::Invalid { .. }
        ));
        assert!(matches!(
            map_status(500, &h, b"<html>oops</html>"),
            GenError::Transient { .. }
        ));
        assert!(matches!(
            map_status(503, &h, &env("X")),
            GenError::Transient { .. }
        ));
        assert!(matches!(
            map_status(418, &h, b""),
            GenError::Permanent { .. }
        ));
    }

    #[test]
    fn long_non_json_bodies_are_quoted_briefly() {
        let body = "x".repeat(10_000);
        let msg = map_status(500, &HeaderMap::new(), body.as_bytes()).to_string();
        assert!(msg.len() < 400, "{}", msg.len());
    }
}
