//! Pictify plans and webhook subscriptions.
//!
//! - [`Plan`]: the limits a plan allows — requests per minute and per day
//!   [PX-LIVE:authentication], concurrent batches and items per batch
//!   [PX-LIVE:api-reference/batch] (`shared/reference/providers.md` §2.3, §2.4).
//! - [`WebhookSecrets`]: a subscription is for **one** event and has its own secret (`whsec_…`,
//!   shown once at creation) [PX-LIVE:concepts/webhooks], so a delivery is verified with the
//!   secret of the event named in `X-Pictify-Event`, falling back to the default secret.
//! - [`SubscriptionList`]: `GET /webhook-subscriptions`, read to see whether Pictify paused a
//!   subscription (it does after five failed deliveries [PX-DOCREPO:concepts/webhooks.mdx]).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// A Pictify plan. Enterprise ("unlimited" concurrent batches, 10,000 items) is not offered:
/// its request limits are not published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Plan {
    #[default]
    Free,
    Pro,
    Business,
}

impl Plan {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "free" => Some(Self::Free),
            "pro" => Some(Self::Pro),
            "business" => Some(Self::Business),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
            Self::Business => "business",
        }
    }

    /// Requests per minute: 60 / 300 / 1,000 [PX-LIVE:authentication].
    pub fn requests_per_minute(self) -> u32 {
        match self {
            Self::Free => 60,
            Self::Pro => 300,
            Self::Business => 1000,
        }
    }

    /// Requests per day: 1,000 / 10,000 / 100,000 [PX-LIVE:authentication]. Every request
    /// counts (polls included): the page gives a request cap, not a render cap.
    pub fn requests_per_day(self) -> u32 {
        match self {
            Self::Free => 1000,
            Self::Pro => 10_000,
            Self::Business => 100_000,
        }
    }

    /// Concurrent batches: 1 / 3 / 10 [PX-LIVE:api-reference/batch]. A batch counts as running
    /// from its `batch-render` until it is terminal.
    pub fn concurrent_batches(self) -> usize {
        match self {
            Self::Free => 1,
            Self::Pro => 3,
            Self::Business => 10,
        }
    }

    /// Items per batch. The plan table says 10 / 100 / 1,000 [PX-LIVE:api-reference/batch]; the
    /// endpoint, the SDK and the seed say 1–100 per request (CONFLICT, open question 12). The
    /// stricter of the two applies: 10 / 100 / 100.
    pub fn max_items_per_batch(self) -> usize {
        match self {
            Self::Free => 10,
            Self::Pro | Self::Business => 100,
        }
    }
}

/// The events the gateway uses (the others are accepted and ignored).
pub const EVENTS: [&str; 4] = [
    "render.completed",
    "render.failed",
    "batch.completed",
    "batch.failed",
];

/// The one event without which rendered URLs never arrive.
pub const URL_EVENT: &str = "render.completed";

/// The default secret plus per-event ones. `Debug` shows the events, never the secrets.
#[derive(Clone, Default)]
pub struct WebhookSecrets {
    pub default: Option<String>,
    pub by_event: BTreeMap<String, String>,
}

impl WebhookSecrets {
    /// The secret that signs deliveries of `event`: its own, else the default.
    pub fn for_event(&self, event: Option<&str>) -> Option<&str> {
        event
            .and_then(|e| self.by_event.get(e))
            .or(self.default.as_ref())
            .map(String::as_str)
    }

    /// Whether deliveries of `event` can be verified.
    pub fn covers(&self, event: &str) -> bool {
        self.for_event(Some(event)).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_event.is_empty()
    }
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("default", &self.default.as_ref().map(|_| "<redacted>"))
            .field("events", &self.by_event.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One subscription as `GET /webhook-subscriptions` lists it. The create response's fields
/// are `{uid, event, targetUrl, platform, status, secret, createdAt}` [PX-LIVE:concepts/webhooks];
/// a list is assumed to carry the same fields without the secret (GUESS: no list body is
/// documented).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub target_url: String,
    /// `active | paused | failed` [PX-DOCREPO:api-reference/webhooks.mdx].
    #[serde(default)]
    pub status: String,
}

/// The list body: `{"subscriptions": [...]}` (GUESS, the CRUD endpoints wrap their objects,
/// e.g. `{subscription}` [PX-LIVE:concepts/webhooks]); `{"data": [...]}` or a bare array are
/// accepted too.
pub fn parse_list(body: &[u8]) -> Option<Vec<Subscription>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let list = match &v {
        Value::Array(_) => v,
        Value::Object(o) => o
            .get("subscriptions")
            .or_else(|| o.get("data"))
            .or_else(|| o.get("webhookSubscriptions"))
            .cloned()?,
        _ => return None,
    };
    serde_json::from_value(list).ok()
}

/// The create answer `{"subscription": {uid, event, status, secret, …}}`
/// [PX-LIVE:concepts/webhooks]; the secret is shown only here.
pub struct Created {
    pub uid: String,
    pub event: String,
    pub status: String,
    pub secret: String,
}

pub fn parse_created(body: &[u8]) -> Option<Created> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let s = v.get("subscription").unwrap_or(&v);
    let field = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_owned);
    let secret = field("secret").filter(|x| !x.is_empty())?;
    Some(Created {
        uid: field("uid").filter(|x| !x.is_empty())?,
        event: field("event")?,
        status: field("status").unwrap_or_else(|| "active".to_owned()),
        secret,
    })
}

/// Secrets of the subscriptions this process created, by event: `(uid, secret)`. In memory
/// only — a restart forgets them, and the next process replaces those subscriptions (see
/// `PictifyConfig::manage_subscriptions`). `Debug` never shows a secret.
#[derive(Default)]
pub struct ManagedSecrets(std::sync::Mutex<BTreeMap<String, (String, String)>>);

impl ManagedSecrets {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, String)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn keep(&self, event: &str, uid: &str, secret: String) {
        self.lock()
            .insert(event.to_owned(), (uid.to_owned(), secret));
    }
    pub fn secret_for(&self, event: &str) -> Option<String> {
        self.lock().get(event).map(|(_, s)| s.clone())
    }
    pub fn uid_for(&self, event: &str) -> Option<String> {
        self.lock().get(event).map(|(u, _)| u.clone())
    }
    pub fn forget(&self, uid: &str) {
        self.lock().retain(|_, (u, _)| u != uid);
    }
}

impl fmt::Debug for ManagedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.lock();
        f.debug_map()
            .entries(l.iter().map(|(e, (u, _))| (e, u)))
            .finish()
    }
}

/// Same target, ignoring a trailing slash.
pub fn same_target(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plans_follow_the_sheet() {
        assert_eq!(Plan::default(), Plan::Free);
        let free = Plan::parse("Free").unwrap();
        assert_eq!(
            (
                free.requests_per_minute(),
                free.requests_per_day(),
                free.concurrent_batches(),
                free.max_items_per_batch()
            ),
            (60, 1000, 1, 10)
        );
        assert_eq!(Plan::parse("pro").unwrap().concurrent_batches(), 3);
        assert_eq!(Plan::parse("business").unwrap().requests_per_day(), 100_000);
        assert!(Plan::parse("enterprise").is_none());
    }

    #[test]
    fn secret_per_event_with_default_fallback() {
        let mut s = WebhookSecrets::default();
        assert!(!s.covers(URL_EVENT));
        s.by_event
            .insert("render.completed".into(), "whsec_a".into());
        assert_eq!(s.for_event(Some("render.completed")), Some("whsec_a"));
        assert_eq!(s.for_event(Some("batch.completed")), None);
        s.default = Some("whsec_d".into());
        assert_eq!(s.for_event(Some("batch.completed")), Some("whsec_d"));
        assert_eq!(s.for_event(None), Some("whsec_d"));
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("whsec_a") && !dbg.contains("whsec_d"),
            "{dbg}"
        );
    }

    #[test]
    fn created_answer_and_managed_secrets() {
        let c = parse_created(br#"{"subscription":{"uid":"wh_9","event":"render.completed","targetUrl":"http://x","platform":"custom","status":"active","secret":"whsec_shown_once","createdAt":"2026-01-01T00:00:00Z"}}"#).unwrap();
        assert_eq!(
            (c.uid.as_str(), c.secret.as_str()),
            ("wh_9", "whsec_shown_once")
        );
        assert!(parse_created(br#"{"subscription":{"uid":"wh_9","event":"e"}}"#).is_none());
        let m = ManagedSecrets::default();
        m.keep(&c.event, &c.uid, c.secret);
        assert_eq!(
            m.secret_for("render.completed").as_deref(),
            Some("whsec_shown_once")
        );
        let dbg = format!("{m:?}");
        assert!(dbg.contains("wh_9") && !dbg.contains("whsec_"), "{dbg}");
        m.forget("wh_9");
        assert!(m.uid_for("render.completed").is_none());
    }

    #[test]
    fn list_shapes() {
        let one = br#"{"subscriptions":[{"uid":"wh_1","event":"render.completed","targetUrl":"http://x/","status":"paused"}]}"#;
        let l = parse_list(one).unwrap();
        assert_eq!(
            (l[0].uid.as_str(), l[0].status.as_str()),
            ("wh_1", "paused")
        );
        assert_eq!(parse_list(br#"[{"uid":"wh_2"}]"#).unwrap()[0].uid, "wh_2");
        assert!(parse_list(b"nope").is_none());
        assert!(same_target("http://x/", "http://x"));
    }
}
