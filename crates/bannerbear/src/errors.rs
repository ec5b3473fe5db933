//! Classifying Bannerbear's answers: one function from status + body to [`GenError`], and the
//! rate-limit headers. Transport failures go through [`adgate_generator::transport`].

use std::time::SystemTime;

use adgate_generator::transport::Effect;
use adgate_generator::{GenError, RateLimitSnapshot, ratelimit};
use http::{HeaderMap, StatusCode};

use crate::wire::ErrorBody;

/// Longest provider message carried into an error (bodies are not ours to log whole).
const MAX_MESSAGE: usize = 300;

fn message(status: StatusCode, body: &[u8]) -> String {
    // v5 documents `{"message": …}` for every error; tolerate non-JSON (a proxy's HTML 502)
    // [V5-SPEC]@a9ca682, [MCP].
    let text = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.text())
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let mut text: String = text.chars().filter(|c| !c.is_control()).collect();
    if text.chars().count() > MAX_MESSAGE {
        text = text.chars().take(MAX_MESSAGE).collect::<String>() + "…";
    }
    text
}

/// Map one non-2xx answer to the engine's taxonomy. The only place that does. `effect` says
/// whether the request could have created work (a create) or not (a poll): Bannerbear has no
/// idempotency key (§13), so a create answered by a server error may still have rendered and
/// billed, and must never be resent — [`GenError::UnknownOutcome`] [BB-V5] §19.3.
pub fn map_error(status: StatusCode, headers: &HeaderMap, body: &[u8], effect: Effect) -> GenError {
    let message = message(status, body);
    let code = status.as_u16().to_string();
    let invalid = || GenError::Invalid {
        message: message.clone(),
        provider_code: code.clone(),
        violations: Vec::new(),
    };
    let permanent = || GenError::Permanent {
        message: message.clone(),
        provider_code: code.clone(),
    };
    match status.as_u16() {
        // "Slow down!" [BB-V2], [BB-V5]; no Retry-After is documented, but it is honoured when
        // sent [MCP] client.ts; the engine's default covers its absence.
        429 => GenError::RateLimited {
            retry_after: ratelimit::retry_after(headers),
        },
        // Quota exhausted, or a trial cap [BB-V5], [V5-SPEC]@a9ca682.
        402 => GenError::InsufficientBalance { message },
        // 401: wrong key, including a V2 key on V5 [BB-V5], [MCP]. 403: the key lacks the
        // scope or the template [V5-SPEC]@a9ca682. Both are credential configuration.
        401 | 403 => GenError::Unauthorized { message },
        // 400 missing parameter, 404 template not in the workspace, 413/415 asset size/type,
        // 422 payload validation [V5-SPEC]: the same request fails the same way.
        400 | 404 | 413 | 415 | 422 => invalid(),
        // Template locked (`api_write_access: nobody`) [V5-SPEC]: no resend helps until
        // someone changes the template.
        423 => permanent(),
        // 408 is documented only for the sync host, which adgate never uses (§19.2); 5xx =
        // server error / maintenance / storage [BB-V5], [V5-SPEC].
        408 | 500..=599 => match effect {
            Effect::Read => GenError::transient(format!("HTTP {code}: {message}")),
            Effect::Write => GenError::UnknownOutcome {
                message: format!(
                    "HTTP {code} from Bannerbear after sending a create (it may have rendered): {message}"
                ),
                source: None,
            },
        },
        _ => permanent(),
    }
}

/// Rate-limit headers: none are documented (§10, §17.5), and a snapshot is only read when
/// both remaining and reset are sent. GUESS: should Bannerbear send the common
/// `X-RateLimit-*` triple, the shared parser reads it as the other providers' is read.
pub fn rate_snapshot(headers: &HeaderMap, now: SystemTime) -> Option<RateLimitSnapshot> {
    ratelimit::snapshot(headers, ratelimit::X_RATELIMIT_UNIX, now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    fn map(status: u16, body: &str, effect: Effect) -> GenError {
        map_error(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
            effect,
        )
    }

    #[test]
    fn the_documented_table() {
        use Effect::{Read, Write};
        let msg = r#"{"message":"human readable"}"#;
        let cases: &[(u16, Effect, &str)] = &[
            (400, Write, "INVALID"),
            (401, Write, "UNAUTHORIZED"),
            (401, Read, "UNAUTHORIZED"),
            (402, Write, "INSUFFICIENT_BALANCE"),
            (403, Write, "UNAUTHORIZED"),
            (404, Write, "INVALID"),
            (408, Write, "UNKNOWN_OUTCOME"),
            (408, Read, "TRANSIENT"),
            (413, Write, "INVALID"),
            (415, Write, "INVALID"),
            (422, Write, "INVALID"),
            (423, Write, "PERMANENT"),
            (429, Write, "RATE_LIMITED"),
            (429, Read, "RATE_LIMITED"),
            (500, Write, "UNKNOWN_OUTCOME"),
            (500, Read, "TRANSIENT"),
            (502, Write, "UNKNOWN_OUTCOME"),
            (503, Read, "TRANSIENT"),
            (409, Write, "PERMANENT"),
            (418, Read, "PERMANENT"),
        ];
        for (status, effect, class) in cases {
            let e = map(*status, msg, *effect);
            assert_eq!(e.class(), *class, "{status} {effect:?}: {e:?}");
        }
    }

    #[test]
    fn messages_are_read_leniently_and_bounded() {
        let GenError::Invalid {
            message,
            provider_code,
            ..
        } = map(
            422,
            r#"{"message":"Unknown attribute fontt-size"}"#,
            Effect::Write,
        )
        else {
            panic!()
        };
        assert_eq!(message, "Unknown attribute fontt-size");
        assert_eq!(provider_code, "422");
        let GenError::InsufficientBalance { message } =
            map(402, "<html>Payment Required</html>", Effect::Write)
        else {
            panic!()
        };
        assert_eq!(message, "HTTP 402");
        let long = format!(r#"{{"message":"{}\n"}}"#, "x".repeat(1000));
        let GenError::Unauthorized { message } = map(401, &long, Effect::Read) else {
            panic!()
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE + 1);
        assert!(!message.contains('\n'));
    }

    #[test]
    fn retry_after_is_honoured_when_sent() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("4"));
        let e = map_error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"message":"Slow down!"}"#,
            Effect::Write,
        );
        assert!(
            matches!(e, GenError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(4)),
            "{e:?}"
        );
        assert!(matches!(
            map(429, "", Effect::Write),
            GenError::RateLimited { retry_after: None }
        ));
    }

    #[test]
    fn rate_headers_are_optional() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(rate_snapshot(&HeaderMap::new(), now).is_none());
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", HeaderValue::from_static("30"));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("29"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1700000010"));
        let s = rate_snapshot(&h, now).unwrap();
        assert_eq!(
            (s.limit, s.remaining, s.reset_after),
            (Some(30), 29, Duration::from_secs(10))
        );
    }
}
