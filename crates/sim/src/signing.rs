//! Webhook signatures as the simulators send them, written here from the providers' documents
//! on purpose: the adapters verify with `adgate_generator::signature`, and a simulator that
//! signed with that same helper would let a bug in it pass on both sides. The tests below pin
//! literal vectors computed outside the project (Python's `hmac`/`hashlib`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Abyssale signs `"v1:webhook:" + t + "." + raw_body` [AB-TS] webhooks.ts, [AB-PY]
/// `SIGNATURE_PREFIX`.
pub const ABYSSALE_PREFIX: &str = "v1:webhook:";

/// Lowercase hex of HMAC-SHA256(`key`, `message`).
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    // HMAC takes keys of any length, so this never fails; an empty string would fail every
    // receiver's check rather than panic here.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

fn signed_message(prefix: &str, t: u64, body: &[u8]) -> Vec<u8> {
    let mut msg = format!("{prefix}{t}.").into_bytes();
    msg.extend_from_slice(body);
    msg
}

/// `X-Pictify-Signature: t=<unix>,v1=hex(HMAC-SHA256(secret, "<t>.<raw body>"))`
/// [PX-LIVE:security/webhook-verification], header shape [PX-LIVE:concepts/webhooks].
pub fn pictify_header(secret: &str, t: u64, body: &[u8]) -> String {
    let v1 = hmac_sha256_hex(secret.as_bytes(), &signed_message("", t, body));
    format!("t={t},v1={v1}")
}

/// `X-Abyssale-Signature: t=<unix s>,v1=<hex>[,v1=<hex>]`, one `v1` per live secret (two
/// during the 24 h rotation overlap) [AB-TS] webhooks.ts, [AB-PY]. `None` without a secret:
/// deliveries are unsigned until `GET /signing-secret` has minted one [AB-TS].
pub fn abyssale_header(secrets: &[String], t: u64, body: &[u8]) -> Option<String> {
    if secrets.is_empty() {
        return None;
    }
    let msg = signed_message(ABYSSALE_PREFIX, t, body);
    let mut value = format!("t={t}");
    for s in secrets {
        value.push_str(",v1=");
        value.push_str(&hmac_sha256_hex(s.as_bytes(), &msg));
    }
    Some(value)
}

/// Bannerbear v5 `X-Bannerbear-Signature`: lowercase hex HMAC-SHA256(`signing_key`, raw
/// body), no timestamp. GUESS: no official source documents the scheme (bannerbear.md §8.2,
/// §17.1); this is what third-party code assumes ([3P] corsair `packages/bannerbear`).
pub fn bannerbear_signature(signing_key: &str, body: &[u8]) -> String {
    hmac_sha256_hex(signing_key.as_bytes(), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of [AB-PY]'s test secret: `"whsec_" + "a" * 64` (providers.md §3.4).
    fn abyssale_secret() -> String {
        format!("whsec_{}", "a".repeat(64))
    }

    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 test case 2, so the primitive itself is pinned to a published vector.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn abyssale_literal_vector() {
        // python3: hmac.new(b"whsec_"+b"a"*64, b'v1:webhook:1700000000.{"id":"x"}',
        //                   hashlib.sha256).hexdigest()
        let h = abyssale_header(&[abyssale_secret()], 1_700_000_000, br#"{"id":"x"}"#);
        assert_eq!(
            h.as_deref(),
            Some(
                "t=1700000000,v1=e5092c09fde6a651c260e9da0c627f2cb2c0335fbe53e199bda1ec34ca4e252e"
            )
        );
    }

    #[test]
    fn abyssale_two_secrets_give_two_v1_values_current_first() {
        let other = format!("whsec_{}", "b".repeat(64));
        let h = abyssale_header(&[abyssale_secret(), other], 1_700_000_000, br#"{"id":"x"}"#);
        assert_eq!(
            h.as_deref(),
            Some(
                "t=1700000000,v1=e5092c09fde6a651c260e9da0c627f2cb2c0335fbe53e199bda1ec34ca4e252e,v1=e7c58174180a2317df9115e9cec0440b627d3b0870909d8bd974b8cdedad65ae"
            )
        );
        assert_eq!(abyssale_header(&[], 1_700_000_000, b"{}"), None);
    }

    #[test]
    fn pictify_literal_vector() {
        // python3: hmac.new(b"whsec_test", b"1769682600." + RENDER_COMPLETED,
        //                   hashlib.sha256).hexdigest()
        assert_eq!(
            pictify_header("whsec_test", 1_769_682_600, PICTIFY_BODY.as_bytes()),
            "t=1769682600,v1=acfb36339b593d536506d170019c369c44ccca51303b00e387a1b5c9683663fa"
        );
    }

    /// The [SEED-3] `render.completed` example, byte for byte.
    const PICTIFY_BODY: &str = r#"{"event":"render.completed","timestamp":"2026-01-29T10:30:00Z","data":{"type":"image","source":"api","imageId":"img_abc123","url":"https://cdn.pictify.io/renders/abc123.png","templateId":"tmpl_xyz789","variables":{"title":"Getting Started with APIs"},"renderedAt":"2026-01-29T10:30:00Z"}}"#;

    #[test]
    fn bannerbear_literal_vector() {
        // python3: hmac.new(b"bb_whsec_test", b'{"uid":"kG39R5XbvPQpLENKBWJj","status":"completed"}',
        //                   hashlib.sha256).hexdigest()
        assert_eq!(
            bannerbear_signature(
                "bb_whsec_test",
                br#"{"uid":"kG39R5XbvPQpLENKBWJj","status":"completed"}"#
            ),
            "156c394cbbabf3085dd26c14dca84fb07a25410b67d3bb76d245b82eacee66d4"
        );
    }
}
