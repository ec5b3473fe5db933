//! The rule that protects callers from paying twice, written once: did a request that got no
//! (complete) answer reach the provider, and may it be sent again?
//!
//! - Refused before anything was sent (connect failed): nothing happened at the provider;
//!   [`GenError::Transient`], always safe to retry.
//! - The request could not even be built (a header value the client refuses): it never left,
//!   and building it again fails the same way; [`GenError::Permanent`].
//! - Sent and then lost (timeout, reset, a body cut short): a read can be asked again
//!   ([`GenError::Transient`]); a request that may create billable work has an unknown outcome
//!   ([`GenError::UnknownOutcome`]), which the engine resends only with an idempotency key.
//!
//! Every adapter sends through [`send`] (which maps a request without an answer through
//! [`request_failed`]) and maps a lost body through [`body_lost`]. [`send`] is also where each
//! provider request gets its OpenTelemetry client span (HTTP client semantic conventions).

use tracing::Instrument;

use crate::TRACE_TARGET;
use crate::error::GenError;

/// Send one provider request inside a client span: method, server, the URL without query or
/// credentials (keys and tokens travel in headers or queries, never in the span), the response
/// status, and `error.type` for a transport failure or an error status. The span ends when
/// the response headers arrive.
pub async fn send(
    provider: &str,
    req: reqwest::RequestBuilder,
    effect: Effect,
) -> Result<reqwest::Response, GenError> {
    let (client, req) = req.build_split();
    let req = req.map_err(|e| request_failed(provider, e, effect))?;
    let (url, method) = (req.url(), req.method().as_str());
    // Field values are only evaluated when the span is enabled (traces on).
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "provider request",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default().map(i64::from),
        url.full = %redacted(url),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        adgate.provider = provider,
    );
    let sent = client.execute(req).instrument(span.clone()).await;
    match &sent {
        Ok(resp) => {
            let status = resp.status();
            span.record("http.response.status_code", i64::from(status.as_u16()));
            if status.is_client_error() || status.is_server_error() {
                span.record("error.type", status.as_str());
                span.record("otel.status_code", "error");
            }
        }
        Err(e) => {
            span.record("error.type", transport_error_type(e));
            span.record("otel.status_code", "error");
        }
    }
    sent.map_err(|e| request_failed(provider, e, effect))
}

/// `scheme://host[:port]/path`: no user info, query or fragment.
fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    // Only fails for URLs that cannot carry credentials, which then have none to drop.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

fn transport_error_type(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_builder() {
        "builder"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

/// What repeating a request could do at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A read (a poll, a status GET): repeating it changes nothing.
    Read,
    /// It may create or change billable work (a submit, a cancel, an edit).
    Write,
}

/// A request that got no HTTP answer at all.
pub fn request_failed(provider: &str, err: reqwest::Error, effect: Effect) -> GenError {
    // reqwest errors name the URL, never request headers, so a key cannot leak through them.
    if err.is_builder() {
        return GenError::Permanent {
            message: format!("could not build the request to {provider}: {err}"),
            provider_code: String::new(),
        };
    }
    if err.is_connect() {
        return GenError::transient_from(format!("could not connect to {provider}"), err);
    }
    match effect {
        Effect::Read => GenError::transient_from(format!("{provider}'s answer was lost"), err),
        Effect::Write => GenError::unknown_outcome_from(
            format!("{provider} may have received the request, but its answer was lost"),
            err,
        ),
    }
}

/// The status line arrived but the body did not: a success to a write still means the work
/// exists; anything else can be asked again.
pub fn body_lost(provider: &str, success: bool, err: reqwest::Error, effect: Effect) -> GenError {
    if success && effect == Effect::Write {
        GenError::unknown_outcome_from(
            format!("lost the body of {provider}'s answer to an accepted request"),
            err,
        )
    } else {
        GenError::transient_from(format!("lost the body of {provider}'s answer"), err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_url_keeps_no_credentials() {
        let u = reqwest::Url::parse(
            "https://user:pw@api.example.com:8443/v1/ads/ad_1?api_key=sk_123#x",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(redacted(&u), "https://api.example.com:8443/v1/ads/ad_1");
    }
}
