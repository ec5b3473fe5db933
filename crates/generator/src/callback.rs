//! A gateway job's identity inside a URL the provider calls back as given (Abyssale's per-job
//! `callback_url`, query string included [SEED-4]), so that a callback binds to its job even
//! when the submit's answer — and with it the provider's reference — never arrived.
//!
//! The identity is the job id plus a token: HMAC-SHA256 of the job id under the provider's
//! webhook secret. The provider signs the body, not the URL, so the token is what stops a
//! correctly signed callback for one job from being replayed with another job's id in its
//! query: a job can only be bound by a URL the gateway itself minted. Without a secret there
//! is no token and no binding (callbacks are then unsigned and trusted for nothing).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Query parameter carrying the job id.
pub const JOB_PARAM: &str = "adgate_job";
/// Query parameter carrying the token.
pub const TOKEN_PARAM: &str = "adgate_token";
/// Domain separation: the same secret also verifies the provider's body signatures.
const CONTEXT: &[u8] = b"adgate-callback-v1:";
/// 128 bits of the MAC, hex: short in a URL, far beyond guessing.
const TOKEN_HEX_LEN: usize = 32;

fn token(secret: &[u8], job_id: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(CONTEXT);
    mac.update(job_id.as_bytes());
    let mut hex = hex::encode(mac.finalize().into_bytes());
    hex.truncate(TOKEN_HEX_LEN);
    hex
}

/// `base` with the job's identity appended to its query string.
pub fn url_for(base: &str, secret: &[u8], job_id: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    // Job ids are `job_` + hex: nothing in them needs escaping.
    format!(
        "{base}{sep}{JOB_PARAM}={job_id}&{TOKEN_PARAM}={}",
        token(secret, job_id)
    )
}

/// What a callback's query string says about its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No identity in the query (a dashboard subscription, or a URL minted without a secret).
    Absent,
    /// A job id with a token the gateway minted.
    Verified(String),
    /// A job id whose token is missing or wrong: forged or tampered with.
    Forged,
}

/// Read and verify the identity in a query string (without the `?`). Constant-time in the
/// token.
pub fn identity(query: &str, secret: &[u8]) -> Identity {
    let mut job = None;
    let mut tok = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((JOB_PARAM, v)) => job = Some(v),
            Some((TOKEN_PARAM, v)) => tok = Some(v),
            _ => {}
        }
    }
    let Some(job) = job else {
        return Identity::Absent;
    };
    let plausible = !job.is_empty()
        && job.len() <= 64
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let expected = token(secret, job);
    match tok {
        Some(t) if plausible && bool::from(t.as_bytes().ct_eq(expected.as_bytes())) => {
            Identity::Verified(job.to_owned())
        }
        _ => Identity::Forged,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn minted_urls_verify_and_tampering_does_not() {
        let secret = b"whsec_abc";
        let url = url_for(
            "https://gw.example/webhooks/abyssale",
            secret,
            "job_0123abcd",
        );
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "https://gw.example/webhooks/abyssale");
        assert_eq!(
            identity(query, secret),
            Identity::Verified("job_0123abcd".into())
        );
        // Another job's id with this token, another secret, no token, a bad id: all forged.
        let other = query.replace("job_0123abcd", "job_9999ffff");
        assert_eq!(identity(&other, secret), Identity::Forged);
        assert_eq!(identity(query, b"whsec_other"), Identity::Forged);
        assert_eq!(
            identity("adgate_job=job_0123abcd", secret),
            Identity::Forged
        );
        assert_eq!(
            identity("adgate_job=a%20b&adgate_token=00", secret),
            Identity::Forged
        );
        assert_eq!(identity("", secret), Identity::Absent);
        assert_eq!(identity("x=1", secret), Identity::Absent);
        // An existing query string is kept.
        let with_query = url_for("https://gw.example/hook?team=a", secret, "job_1");
        assert!(with_query.starts_with("https://gw.example/hook?team=a&adgate_job=job_1&"));
        // Pinned: HMAC-SHA256("whsec_abc", "adgate-callback-v1:job_0123abcd"), first 128 bits,
        // computed with Python's hmac module.
        assert_eq!(
            token(secret, "job_0123abcd"),
            "bead1bb63760f374344c9489c6808da4"
        );
        assert!(query.ends_with("adgate_token=bead1bb63760f374344c9489c6808da4"));
    }
}
