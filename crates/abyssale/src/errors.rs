//! Classifying Abyssale's answers: the error envelope, rate-limit headers and transport errors.

use std::time::{Duration, SystemTime};

use adgate_generator::ratelimit;
use adgate_generator::{FieldViolation, GenError, RateLimitSnapshot};
use http::{HeaderMap, StatusCode};

use crate::wire::ErrorBody;

/// Codes that mean "fix the request" [AB-TS] `ErrorResponse` (snapshot; "not a closed enum").
const FIX_REQUEST: [&str; 28] = [
    "invalid_payload",
    "invalid_json",
    "wrong_type",
    "missing_required",
    "unknown_field",
    "unknown_enum_value",
    "unknown_format_key",
    "out_of_range",
    "mutually_exclusive",
    "conditional_dependency_missing",
    "duplicate_format_name",
    "duplicate_layer_name",
    "reserved_format_name",
    "unsupported_for_type",
    "unknown_font",
    "unreachable_src",
    "invalid_query_param",
    "invalid_filetype",
    "invalid_design_type",
    "template_not_static",
    "more_than_one_format",
    "missing_assets",
    "not_round_trippable",
    "unsupported_media_type",
    "not_acceptable",
    "cannot_build_banner",
    "image_fetching_error",
    "template_not_active",
];

/// Map one provider error response to the engine's taxonomy. The only place that does.
pub fn map_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GenError {
    // The envelope is "not guaranteed" on the gateway's 429 [AB-TS]; parse leniently.
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let id = parsed
        .as_ref()
        .and_then(|b| b.id.clone())
        .unwrap_or_default();
    let message = parsed
        .as_ref()
        .and_then(|b| b.message.clone())
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let violations: Vec<FieldViolation> = parsed
        .as_ref()
        .map(|b| {
            b.errors
                .iter()
                .map(|e| {
                    FieldViolation::new(
                        spec_path(e.path.as_deref().unwrap_or_default()),
                        e.message
                            .clone()
                            .unwrap_or_else(|| e.code.clone().unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let invalid = |violations| GenError::Invalid {
        message: message.clone(),
        provider_code: id.clone(),
        violations,
    };
    let permanent = || GenError::Permanent {
        message: message.clone(),
        provider_code: id.clone(),
    };

    match id.as_str() {
        // Never retry [AB-TS]: the plan lacks the feature or API access at all.
        "feature_not_in_plan" | "api_access_denied" => return permanent(),
        // Per-route-class budget: comes with Retry-After (seconds, never 0) [AB-TS].
        "request_rate_limited" => {
            return GenError::RateLimited {
                retry_after: retry_after(headers),
            };
        }
        _ => {}
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        // `rate_limit_exceeded` is both the gateway's bare 429 and "credits spent" — only the
        // message differs [AB-TS]. Heuristic: a message about credits/plan/consumption means the
        // balance is gone; anything else (or no envelope at all) is the 10 req/s ceiling, whose
        // missing Retry-After the engine covers with `default_retry_after`.
        if id == "rate_limit_exceeded" && mentions_credits(&message) {
            return GenError::InsufficientBalance { message };
        }
        return GenError::RateLimited {
            retry_after: retry_after(headers),
        };
    }
    if status == StatusCode::UNAUTHORIZED {
        return GenError::Unauthorized { message };
    }
    if status.is_server_error() {
        return GenError::transient(format!("HTTP {}: {message}", status.as_u16()));
    }
    if FIX_REQUEST.contains(&id.as_str()) || id.ends_with("_not_found") {
        return invalid(violations);
    }
    match status.as_u16() {
        400 | 404 | 413 | 415 | 422 => invalid(violations),
        408 => GenError::transient(format!("HTTP 408: {message}")),
        _ => permanent(),
    }
}

fn mentions_credits(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["credit", "consumed", "quota", "upgrade"]
        .iter()
        .any(|w| m.contains(w))
}

/// Abyssale names body fields (`template_format_names[2]`); callers know our spec's names.
fn spec_path(provider_path: &str) -> String {
    match provider_path.strip_prefix("template_format_names") {
        Some(rest) => format!("format_names{rest}"),
        None => provider_path.to_owned(),
    }
}

/// `Retry-After` in seconds (the only form Abyssale documents).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    ratelimit::retry_after(headers)
}

/// `X-RateLimit-Limit/Remaining/Reset`; Reset is Unix seconds [AB-TS] `headers`.
pub fn rate_snapshot(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitSnapshot> {
    ratelimit::snapshot(headers, ratelimit::X_RATELIMIT_UNIX, now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    fn map(status: u16, body: &str) -> GenError {
        map_error(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn bare_gateway_429_has_no_retry_after() {
        let e = map(
            429,
            r#"{"id":"rate_limit_exceeded","message":"Too many requests"}"#,
        );
        assert!(
            matches!(e, GenError::RateLimited { retry_after: None }),
            "{e:?}"
        );
        // Envelope not guaranteed.
        let e = map(429, "<html>slow down</html>");
        assert!(
            matches!(e, GenError::RateLimited { retry_after: None }),
            "{e:?}"
        );
    }

    #[test]
    fn spent_credits_are_insufficient_balance() {
        let e = map(
            429,
            r#"{"id":"rate_limit_exceeded","message":"All your image generation credits have been consumed.","version":"v2026-08-21"}"#,
        );
        assert!(matches!(e, GenError::InsufficientBalance { .. }), "{e:?}");
    }

    #[test]
    fn request_rate_limited_honours_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        let e = map_error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"id":"request_rate_limited","message":"slow down"}"#,
        );
        assert!(
            matches!(e, GenError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7)),
            "{e:?}"
        );
    }

    #[test]
    fn fix_request_codes_are_invalid_with_paths() {
        let e = map(
            400,
            r#"{"id":"out_of_range","message":"bad level","errors":[{"path":"file_compression_level","code":"out_of_range","message":"1..100","expected":{"min":1},"received":101}],"version":"v2026-08-21"}"#,
        );
        let GenError::Invalid {
            provider_code,
            violations,
            ..
        } = e
        else {
            panic!("{e:?}");
        };
        assert_eq!(provider_code, "out_of_range");
        assert_eq!(violations[0].field, "file_compression_level");

        let e = map(
            404,
            r#"{"id":"format_not_found","message":"no","errors":[{"path":"template_format_names[2]","code":"format_not_found","message":"no"}]}"#,
        );
        let GenError::Invalid {
            provider_code,
            violations,
            ..
        } = e
        else {
            panic!("{e:?}");
        };
        assert_eq!(provider_code, "format_not_found");
        assert_eq!(violations[0].field, "format_names[2]");

        assert!(matches!(
            map(404, r#"{"id":"endpoint_not_found","message":"x"}"#),
            GenError::Invalid { .. }
        ));
        assert!(matches!(
            map(400, r#"{"id":"invalid_filetype","message":"x"}"#),
            GenError::Invalid { .. }
        ));
    }

    #[test]
    fn auth_plan_and_server_errors() {
        assert!(matches!(
            map(401, r#"{"id":"unauthorized","message":"x"}"#),
            GenError::Unauthorized { .. }
        ));
        assert!(matches!(
            map(401, r#"{"id":"api_access_denied","message":"x"}"#),
            GenError::Permanent { .. }
        ));
        assert!(matches!(
            map(429, r#"{"id":"feature_not_in_plan","message":"x"}"#),
            GenError::Permanent { .. }
        ));
        assert!(matches!(
            map(500, r#"{"id":"internal_server_error","message":"x"}"#),
            GenError::Transient { .. }
        ));
        assert!(matches!(
            map(502, "bad gateway"),
            GenError::Transient { .. }
        ));
        assert!(matches!(
            map(
                409,
                r#"{"id":"previous_secret_still_active","message":"x"}"#
            ),
            GenError::Permanent { .. }
        ));
    }

    #[test]
    fn rate_headers_convert_unix_reset_to_a_duration() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", HeaderValue::from_static("60"));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("12"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1700000030"));
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = rate_snapshot(&h, now).unwrap();
        assert_eq!(s.limit, Some(60));
        assert_eq!(s.remaining, 12);
        assert_eq!(s.reset_after, Duration::from_secs(30));
        // A reset in the past is "now".
        let later = now + Duration::from_secs(100);
        assert_eq!(
            rate_snapshot(&h, later).unwrap().reset_after,
            Duration::ZERO
        );
        assert!(rate_snapshot(&HeaderMap::new(), now).is_none());
    }
}
