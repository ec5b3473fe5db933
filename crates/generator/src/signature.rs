//! `t=<unix>,v1=<hex>[,v1=<hex>]` webhook signatures (Pictify and Abyssale use the same header
//! shape; only the signed message's prefix differs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::WebhookError;

/// Both providers document a 300 s tolerance.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

/// Hex HMAC-SHA256 of `prefix + t + "." + body`.
pub fn sign(secret: &[u8], prefix: &str, timestamp: u64, body: &[u8]) -> String {
    hex::encode(raw_mac(secret, prefix, timestamp, body))
}

/// The full header value for one secret.
pub fn header_value(secret: &[u8], prefix: &str, timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, prefix, timestamp, body))
}

fn raw_mac(secret: &[u8], prefix: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
    // Hmac accepts keys of any length, so new_from_slice cannot fail here; map defensively.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return Vec::new();
    };
    mac.update(prefix.as_bytes());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Verify a signature header. Accepts any of several `v1` values (rotation overlap) and any of
/// several secrets. Rejects timestamps further than `tolerance` from `now` in either direction.
pub fn verify(
    header: &str,
    secrets: &[&[u8]],
    prefix: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), WebhookError> {
    let mut timestamp: Option<u64> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            return Err(WebhookError::BadSignature("malformed signature header"));
        };
        match k {
            "t" => {
                let t = v
                    .parse::<u64>()
                    .map_err(|_| WebhookError::BadSignature("malformed timestamp"))?;
                timestamp = Some(t);
            }
            "v1" => {
                let bytes =
                    hex::decode(v).map_err(|_| WebhookError::BadSignature("malformed v1 value"))?;
                candidates.push(bytes);
            }
            // Unknown schemes are ignored, as both providers' SDKs do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(WebhookError::BadSignature("missing timestamp"))?;
    if candidates.is_empty() {
        return Err(WebhookError::BadSignature("missing v1 signature"));
    }
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now_s.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(WebhookError::BadSignature("timestamp outside tolerance"));
    }
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        let expected = raw_mac(secret, prefix, timestamp, body);
        for candidate in &candidates {
            // ct_eq on slices of different lengths returns false without leaking content.
            matched |= expected.as_slice().ct_eq(candidate.as_slice());
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature("signature mismatch"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn good_signature_verifies() {
        let body = br#"{"event":"render.completed"}"#;
        let header = header_value(SECRET, "", 1_700_000_000, body);
        assert_eq!(
            verify(
                &header,
                &[SECRET],
                "",
                body,
                at(1_700_000_100),
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
    }

    #[test]
    fn known_vector() {
        // Literals computed outside the project (python3 hmac/hashlib):
        // hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
        // hmac.new(b"whsec_test", b"v1:webhook:1700000000.{}", hashlib.sha256).hexdigest()
        const PICTIFY: &str = "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91";
        const ABYSSALE: &str = "d1498fef2eae1fd59cdd728d2c8ebe6d9e6576eca05dc4e857e85c1468032cad";
        assert_eq!(sign(SECRET, "", 1_700_000_000, b"{}"), PICTIFY);
        assert_eq!(
            header_value(SECRET, "", 1_700_000_000, b"{}"),
            format!("t=1700000000,v1={PICTIFY}")
        );
        assert_eq!(sign(SECRET, "v1:webhook:", 1_700_000_000, b"{}"), ABYSSALE);
        // The [AB-PY] test-secret shape, `"whsec_" + "a" * 64` (providers.md §3.4):
        // hmac.new(b"whsec_"+b"a"*64, b'v1:webhook:1700000000.{"id":"x"}', hashlib.sha256)
        let ab_secret = format!("whsec_{}", "a".repeat(64));
        assert_eq!(
            sign(
                ab_secret.as_bytes(),
                "v1:webhook:",
                1_700_000_000,
                br#"{"id":"x"}"#
            ),
            "e5092c09fde6a651c260e9da0c627f2cb2c0335fbe53e199bda1ec34ca4e252e"
        );
        // The literal header verifies; the same header with one hex digit changed does not.
        let header = format!("t=1700000000,v1={PICTIFY}");
        let now = at(1_700_000_000);
        assert_eq!(
            verify(&header, &[SECRET], "", b"{}", now, DEFAULT_TOLERANCE),
            Ok(())
        );
        let flipped = format!("t=1700000000,v1=4{}", &PICTIFY[1..]); // leading 3 → 4
        assert!(verify(&flipped, &[SECRET], "", b"{}", now, DEFAULT_TOLERANCE).is_err());
    }

    #[test]
    fn tampered_body_stale_and_future_are_rejected() {
        let body = b"{}";
        let header = header_value(SECRET, "", 1_700_000_000, body);
        let now = at(1_700_000_000);
        assert!(verify(&header, &[SECRET], "", b"{ }", now, DEFAULT_TOLERANCE).is_err());
        assert!(
            verify(
                &header,
                &[SECRET],
                "",
                body,
                at(1_700_000_301),
                DEFAULT_TOLERANCE
            )
            .is_err()
        );
        assert!(
            verify(
                &header,
                &[SECRET],
                "",
                body,
                at(1_699_999_699),
                DEFAULT_TOLERANCE
            )
            .is_err()
        );
        assert!(verify(&header, &[b"other"], "", body, now, DEFAULT_TOLERANCE).is_err());
        assert!(verify("garbage", &[SECRET], "", body, now, DEFAULT_TOLERANCE).is_err());
        assert!(verify("t=1700000000", &[SECRET], "", body, now, DEFAULT_TOLERANCE).is_err());
    }

    #[test]
    fn any_of_two_v1_values_matches() {
        let body = b"{}";
        let good = sign(SECRET, "v1:webhook:", 1_700_000_000, body);
        let header = format!("t=1700000000,v1={},v1={good}", "ab".repeat(32));
        assert_eq!(
            verify(
                &header,
                &[SECRET],
                "v1:webhook:",
                body,
                at(1_700_000_000),
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
    }
}
