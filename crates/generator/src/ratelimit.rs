//! Rate-limit headers, parsed once for every adapter: `Retry-After` and the
//! `[X-]RateLimit-Limit/Remaining/Reset` triple, whose reset is either seconds from now or a
//! Unix time depending on the provider.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::generator::RateLimitSnapshot;

/// How a provider writes its reset header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Seconds until the window resets (IETF `RateLimit-Reset`).
    Seconds,
    /// Unix time in seconds at which the window resets.
    UnixTime,
}

/// The header names and reset convention of one provider.
#[derive(Debug, Clone, Copy)]
pub struct Headers {
    pub limit: &'static str,
    pub remaining: &'static str,
    pub reset: &'static str,
    pub reset_kind: Reset,
}

/// `x-ratelimit-*` with a Unix reset (Pictify, Abyssale).
pub const X_RATELIMIT_UNIX: Headers = Headers {
    limit: "x-ratelimit-limit",
    remaining: "x-ratelimit-remaining",
    reset: "x-ratelimit-reset",
    reset_kind: Reset::UnixTime,
};

/// IETF draft `ratelimit-*` with the reset in seconds (StaticAdsLab).
pub const IETF_SECONDS: Headers = Headers {
    limit: "ratelimit-limit",
    remaining: "ratelimit-remaining",
    reset: "ratelimit-reset",
    reset_kind: Reset::Seconds,
};

/// A header as a non-negative integer; a fractional value is rounded up (a provider that
/// writes `1.5` seconds means "not before 1.5 s").
pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    let text = headers.get(name)?.to_str().ok()?.trim();
    text.parse::<u64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
            .map(|f| f.ceil() as u64)
    })
}

/// `Retry-After` in delta-seconds (the form every provider here documents).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_u64(headers, "retry-after").map(Duration::from_secs)
}

/// The rate-limit reading, or `None` unless both remaining and reset are present.
pub fn snapshot(headers: &HeaderMap, names: Headers, now: SystemTime) -> Option<RateLimitSnapshot> {
    let remaining = u32::try_from(header_u64(headers, names.remaining)?).unwrap_or(u32::MAX);
    let reset = header_u64(headers, names.reset)?;
    let reset_after = match names.reset_kind {
        Reset::Seconds => reset,
        // Anything before 2001-09-09 cannot be a reset time: a provider sending a delta.
        Reset::UnixTime if reset < 1_000_000_000 => reset,
        Reset::UnixTime => {
            let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            reset.saturating_sub(now_s)
        }
    };
    Some(RateLimitSnapshot {
        limit: header_u64(headers, names.limit).and_then(|l| u32::try_from(l).ok()),
        remaining,
        reset_after: Duration::from_secs(reset_after),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn both_reset_conventions() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let unix = headers(&[
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000042"),
        ]);
        let s = snapshot(&unix, X_RATELIMIT_UNIX, now).unwrap();
        assert_eq!((s.limit, s.remaining), (Some(60), 0));
        assert_eq!(s.reset_after, Duration::from_secs(42));
        let secs = headers(&[("ratelimit-remaining", "7"), ("ratelimit-reset", "30")]);
        let s = snapshot(&secs, IETF_SECONDS, now).unwrap();
        assert_eq!((s.limit, s.remaining), (None, 7));
        assert_eq!(s.reset_after, Duration::from_secs(30));
        // A reset in the past is now; missing or garbled headers are no reading.
        let past = headers(&[
            ("x-ratelimit-remaining", "1"),
            ("x-ratelimit-reset", "1600000000"),
        ]);
        assert_eq!(
            snapshot(&past, X_RATELIMIT_UNIX, now).unwrap().reset_after,
            Duration::ZERO
        );
        let delta = headers(&[
            ("x-ratelimit-remaining", "1.0"),
            ("x-ratelimit-reset", "5.5"),
        ]);
        let s = snapshot(&delta, X_RATELIMIT_UNIX, now).unwrap();
        assert_eq!((s.remaining, s.reset_after), (1, Duration::from_secs(6)));
        assert!(
            snapshot(
                &headers(&[("x-ratelimit-remaining", "x")]),
                X_RATELIMIT_UNIX,
                now
            )
            .is_none()
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", " 12 ")])),
            Some(Duration::from_secs(12))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
    }
}
