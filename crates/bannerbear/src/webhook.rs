//! Bannerbear v5 webhook deliveries: their authentication, their freshness, and the job
//! identity the gateway put into `metadata`.
//!
//! v5 webhooks are workspace **resources** (`POST /v5/webhooks {name, url, resource, event}`)
//! whose 201 answer carries a one-time HMAC `signing_key` [V5-SPEC], [NODE5]; there is no
//! per-request webhook URL, so a delivery cannot carry a per-job callback URL. The signature
//! header, algorithm and signed bytes are undocumented in every official source (§8.2, §17.1).
//!
//! - GUESS ([3P] corsair `packages/bannerbear`, the only code that verifies one):
//!   `X-Bannerbear-Signature: <hex HMAC-SHA256(signing_key, raw body)>`. An optional
//!   `sha256=` prefix is tolerated. Compared in constant time.
//! - The scheme has no timestamp, so there is no header tolerance to apply. Freshness comes
//!   from the signed body instead: its `completed_at` (else `created_at`) must be within
//!   [`MAX_AGE`] before `now` and [`DEFAULT_TOLERANCE`] after it. GUESS: retry timing is
//!   undocumented; a delivery later than that is refused and the poll backstop finds the
//!   result (replaying a terminal update changes nothing anyway).
//! - Payload: GUESS, the Image object, as in v2 (§8.2).
//!
//! Job binding: the create's `metadata` is `adgate_job=<id>&adgate_token=<token>` minted by
//! [`adgate_generator::callback`] under the webhook secret. The signature covers the body, so
//! the echoed metadata is Bannerbear's word; the token additionally proves the gateway minted
//! it — another client of the same workspace (which can create images with any metadata, but
//! never sees the signing key) cannot bind its image to one of our jobs.

use std::time::{Duration, SystemTime};

use adgate_generator::callback::{self, Identity};
use adgate_generator::signature::DEFAULT_TOLERANCE;
use adgate_generator::{WebhookError, WebhookEvent};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::wire::{self, Image};

pub const SIGNATURE_HEADER: &str = "x-bannerbear-signature";
/// How old a delivery's signed `completed_at` may be (GUESS, see the module docs).
pub const MAX_AGE: Duration = Duration::from_secs(60 * 60);

fn mac(secret: &[u8], body: &[u8]) -> Vec<u8> {
    // Hmac takes keys of any length, so this cannot fail; an empty MAC never matches.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Hex HMAC-SHA256 of the raw body: the header value Bannerbear is assumed to send.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    hex::encode(mac(secret, body))
}

/// Check the signature header against the raw body. Constant-time in the signature.
pub fn verify(headers: &http::HeaderMap, secret: &[u8], body: &[u8]) -> Result<(), WebhookError> {
    let value = headers
        .get(SIGNATURE_HEADER)
        .ok_or(WebhookError::BadSignature("missing X-Bannerbear-Signature"))?
        .to_str()
        .map_err(|_| WebhookError::BadSignature("malformed signature header"))?
        .trim();
    let hex_part = value.strip_prefix("sha256=").unwrap_or(value);
    let given =
        hex::decode(hex_part).map_err(|_| WebhookError::BadSignature("signature is not hex"))?;
    let expected = mac(secret, body);
    // ct_eq on slices of different lengths is false without comparing contents.
    if bool::from(expected.as_slice().ct_eq(given.as_slice())) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature("signature mismatch"))
    }
}

/// The `metadata` a create carries: the job's identity, with a token when a secret exists.
pub fn metadata_for(job_id: &str, secret: Option<&str>) -> String {
    match secret {
        // `url_for("", …)` is `?adgate_job=…&adgate_token=…`; metadata is its query.
        Some(s) => callback::url_for("", s.as_bytes(), job_id)
            .trim_start_matches('?')
            .to_owned(),
        // Still useful to an operator reconciling by hand (§13); never binds a webhook.
        None => format!("{}={job_id}", callback::JOB_PARAM),
    }
}

/// The gateway job a signed body's metadata names, if the gateway minted it.
pub fn bound_job(metadata: Option<&str>, secret: &[u8]) -> Option<String> {
    match callback::identity(metadata?, secret) {
        Identity::Verified(job) => Some(job),
        Identity::Absent => None,
        Identity::Forged => {
            // A genuine (signed) event whose metadata names a job without our token: an image
            // someone else created with look-alike metadata. Its update still applies by uid.
            tracing::warn!(
                provider = crate::NAME,
                "webhook metadata names a job without a valid token; not binding it"
            );
            None
        }
    }
}

/// Verify and parse one delivery.
pub fn parse(
    headers: &http::HeaderMap,
    body: &[u8],
    secret: &str,
    now: SystemTime,
) -> Result<WebhookEvent, WebhookError> {
    // Nothing about an unsigned or forged delivery is read.
    verify(headers, secret.as_bytes(), body)?;
    let image: Image = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not a Bannerbear object: {e}")))?;
    let stated = image.stated_time().ok_or(WebhookError::BadSignature(
        "no signed completed_at/created_at to date it",
    ))?;
    let fresh = match now.duration_since(stated) {
        Ok(age) => age <= MAX_AGE,
        Err(ahead) => ahead.duration() <= DEFAULT_TOLERANCE,
    };
    if !fresh {
        return Err(WebhookError::BadSignature("delivery is stale"));
    }
    let uid = image
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| WebhookError::Malformed("no uid".to_owned()))?;
    if !image.is_image() {
        // A batch / tool job / animation subscription: nothing adgate tracks.
        return Ok(WebhookEvent::default());
    }
    let update = wire::to_update(&uid, &image);
    Ok(WebhookEvent {
        // No delivery id is documented; uid + status is stable across retries of one event
        // and differs between events of one image.
        delivery_id: Some(format!(
            "{uid}:{}",
            image.status.as_deref().unwrap_or_default()
        )),
        updates: vec![update],
        bound_job: bound_job(image.metadata.as_deref(), secret.as_bytes()),
        ..WebhookEvent::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use adgate_generator::{RemoteState, UpdateTarget};
    use http::{HeaderMap, HeaderValue};
    use std::time::UNIX_EPOCH;

    const SECRET: &str = "bb_whsec_test";
    /// A completed v5 image (fields per [V5-SPEC] §6), with gateway metadata whose token is
    /// python3 `hmac.new(b"bb_whsec_test", b"adgate-callback-v1:job_0123abcd",
    /// hashlib.sha256).hexdigest()[:32]` (the [`callback`] token).
    const BODY: &str = r#"{"uid":"kG39R5XbvPQpLENKBWJj","status":"completed","template":"A89wavQyY3Bebk3djP","files":{"jpg":"https://images.bannerbear.com/direct/a/b.jpg"},"metadata":"adgate_job=job_0123abcd&adgate_token=d4d64cc069d79758d328af2aedb6bcfb","self":"https://api.bannerbear.com/v5/images/kG39R5XbvPQpLENKBWJj","created_at":"2023-11-14T22:13:18.000Z","completed_at":"2023-11-14T22:13:20.000Z"}"#;
    /// Computed outside the project with python3:
    /// `hmac.new(b"bb_whsec_test", BODY.encode(), hashlib.sha256).hexdigest()`.
    const LITERAL: &str = "cb7cc16b25938e54db0929d5490451072d7cef4323986425597c3ebc514126a0";
    /// `completed_at` of BODY.
    const T: u64 = 1_700_000_000;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn headers(sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn literal_vector_verifies_one_changed_digit_does_not_and_stale_is_refused() {
        assert_eq!(sign(SECRET.as_bytes(), BODY.as_bytes()), LITERAL);
        let ev = parse(&headers(LITERAL), BODY.as_bytes(), SECRET, at(T + 5)).unwrap();
        let u = &ev.updates[0];
        assert_eq!(
            u.target,
            UpdateTarget::ProviderRef("kG39R5XbvPQpLENKBWJj".into())
        );
        assert_eq!(u.state, RemoteState::Completed);
        assert_eq!(
            ev.delivery_id.as_deref(),
            Some("kG39R5XbvPQpLENKBWJj:completed")
        );
        assert_eq!(ev.bound_job.as_deref(), Some("job_0123abcd"));
        // Also with the tolerated prefix and upper-case hex.
        let prefixed = format!("sha256={}", LITERAL.to_ascii_uppercase());
        assert!(parse(&headers(&prefixed), BODY.as_bytes(), SECRET, at(T)).is_ok());
        // One hex digit changed.
        let first = LITERAL.as_bytes()[0];
        let swapped = if first == b'0' { '1' } else { '0' };
        let changed = format!("{swapped}{}", &LITERAL[1..]);
        assert_eq!(
            parse(&headers(&changed), BODY.as_bytes(), SECRET, at(T)),
            Err(WebhookError::BadSignature("signature mismatch"))
        );
        // Stale: more than MAX_AGE after the signed completed_at; too far ahead of now.
        assert_eq!(
            parse(&headers(LITERAL), BODY.as_bytes(), SECRET, at(T + 3601)),
            Err(WebhookError::BadSignature("delivery is stale"))
        );
        assert!(parse(&headers(LITERAL), BODY.as_bytes(), SECRET, at(T + 3600)).is_ok());
        assert!(parse(&headers(LITERAL), BODY.as_bytes(), SECRET, at(T - 301)).is_err());
    }

    #[test]
    fn unsigned_forged_and_tampered_are_refused() {
        let now = at(T);
        let sig = sign(SECRET.as_bytes(), BODY.as_bytes());
        assert!(matches!(
            parse(&HeaderMap::new(), BODY.as_bytes(), SECRET, now),
            Err(WebhookError::BadSignature(_))
        ));
        for bad in [
            "",
            "zz",
            "t=1700000000,v1=00",
            &sign(b"other", BODY.as_bytes()),
        ] {
            assert!(
                matches!(
                    parse(&headers(bad), BODY.as_bytes(), SECRET, now),
                    Err(WebhookError::BadSignature(_))
                ),
                "{bad}"
            );
        }
        let tampered = BODY.replace("job_0123abcd", "job_9999ffff");
        assert!(parse(&headers(&sig), tampered.as_bytes(), SECRET, now).is_err());
        // Signed but not JSON / without uid / undated.
        for body in [
            "not json",
            r#"{"status":"completed","completed_at":"2023-11-14T22:13:20Z"}"#,
        ] {
            let s = sign(SECRET.as_bytes(), body.as_bytes());
            assert!(
                matches!(
                    parse(&headers(&s), body.as_bytes(), SECRET, now),
                    Err(WebhookError::Malformed(_))
                ),
                "{body}"
            );
        }
        let undated = r#"{"uid":"u1","status":"completed"}"#;
        let s = sign(SECRET.as_bytes(), undated.as_bytes());
        assert!(matches!(
            parse(&headers(&s), undated.as_bytes(), SECRET, now),
            Err(WebhookError::BadSignature(_))
        ));
    }

    #[test]
    fn metadata_binds_only_with_our_token() {
        let m = metadata_for("job_0123abcd", Some(SECRET));
        assert!(
            m.starts_with("adgate_job=job_0123abcd&adgate_token="),
            "{m}"
        );
        assert_eq!(
            bound_job(Some(&m), SECRET.as_bytes()).as_deref(),
            Some("job_0123abcd")
        );
        assert_eq!(bound_job(Some(&m), b"other"), None);
        assert_eq!(metadata_for("job_1", None), "adgate_job=job_1");
        assert_eq!(bound_job(Some("adgate_job=job_1"), SECRET.as_bytes()), None);
        assert_eq!(
            bound_job(Some("customer's own note"), SECRET.as_bytes()),
            None
        );
        assert_eq!(bound_job(None, SECRET.as_bytes()), None);
        // A signed delivery about a batch carries no update.
        let batch = r#"{"uid":"b1","status":"completed","self":"https://api.bannerbear.com/v5/batches/b1","completed_at":"2023-11-14T22:13:20Z"}"#;
        let s = sign(SECRET.as_bytes(), batch.as_bytes());
        let ev = parse(&headers(&s), batch.as_bytes(), SECRET, at(T)).unwrap();
        assert!(ev.updates.is_empty() && ev.bound_job.is_none());
    }
}
