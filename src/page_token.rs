//! Opaque page tokens of ListJobs and ListBatches (AIP-158): base64 of the last row's sort key
//! and a hash of the list and filter it belongs to, so a token reused with another filter (or
//! on the other list) is refused instead of silently continuing a different listing.

use adgate_engine::PageKey;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::errors::{ApiError, Violation};

const VERSION: &str = "v1";

/// The first 16 hex digits of SHA-256 over the list's name and its parsed filter (its
/// `Debug` form, so spacing and quoting in the filter text do not matter, only its meaning).
pub fn scope(list: &str, filter: &impl std::fmt::Debug) -> String {
    let digest = Sha256::digest(format!("{list}\n{filter:?}").as_bytes());
    hex::encode(&digest[..8])
}

pub fn encode(key: &PageKey, scope: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{VERSION}|{scope}|{}|{}",
        key.created_at_ms, key.id
    ))
}

fn bad(description: &str) -> ApiError {
    ApiError::InvalidRequest(vec![Violation::new("page_token", description)])
}

/// The position `token` continues from; `None` for the first page (empty token).
pub fn decode(token: &str, scope: &str) -> Result<Option<PageKey>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || bad("not a page token of this gateway");
    let bytes = URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let mut parts = text.splitn(4, '|');
    let (Some(VERSION), Some(token_scope), Some(at), Some(id)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    if token_scope != scope {
        return Err(bad(
            "the page token belongs to another filter; use the same filter as the first page",
        ));
    }
    let created_at_ms = at.parse().map_err(|_| malformed())?;
    Ok(Some(PageKey {
        created_at_ms,
        id: id.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let key = PageKey {
            created_at_ms: 1_767_225_600_123,
            id: "job_a|b".to_owned(),
        };
        let s = scope("jobs", &"state = FAILED");
        let token = encode(&key, &s);
        assert_eq!(decode(&token, &s).unwrap(), Some(key));
        assert_eq!(decode("", &s).unwrap(), None);
        let other = scope("jobs", &"state = QUEUED");
        assert_ne!(s, other);
        let refused = |t: &str, sc: &str| match decode(t, sc) {
            Err(ApiError::InvalidRequest(v)) => v[0].description.clone(),
            r => panic!("{r:?}"),
        };
        assert!(refused(&token, &other).contains("another filter"));
        assert!(refused(&token, &scope("batches", &"state = FAILED")).contains("another"));
        assert!(refused("%%%", &s).contains("not a page token"));
        assert!(refused(&URL_SAFE_NO_PAD.encode("v1|x"), &s).contains("not a page token"));
    }
}
