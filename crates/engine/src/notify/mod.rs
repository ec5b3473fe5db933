//! Outbound webhooks: results delivered to callers who are not watching.
//!
//! - `sign`: Standard Webhooks secrets and signatures.
//! - `target`: which URLs deliveries may go to (SSRF), checked at Submit and at connect time.
//! - `deliver`: the deliverer task — claims due outbox rows, signs and posts them, retries
//!   with exponential backoff and jitter for more than a day, disables endpoints that keep
//!   failing.
//!
//! The outbox rows themselves are written by the store in the transaction of the change that
//! causes them (see `adgate_store::notify`), so a committed change always has its deliveries.

mod deliver;
pub mod sign;
pub mod target;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use adgate_store::JobRecord;

pub(crate) use deliver::run;
pub use sign::{SecretError, SigningSecret};
pub use target::TargetPolicy;

/// Renders event payloads: the job (or the batch) in the API's JSON mapping. The server
/// implements it; the engine does not know the wire format.
pub trait Payloads: Send + Sync + 'static {
    /// The `data` of a `job.*` event.
    fn job(&self, job: &JobRecord) -> serde_json::Value;
    /// The `data` of `batch.completed`, from every job of the batch.
    fn batch(&self, batch_id: &str, jobs: &[JobRecord]) -> serde_json::Value;
}

/// A caller's endpoint from the config.
#[derive(Debug, Clone)]
pub struct ConfiguredEndpoint {
    /// Unique among the configured endpoints, e.g. `cfg:growth:crm`.
    pub id: String,
    pub caller: String,
    pub url: String,
    /// Bit mask of the events it takes (`adgate_store::notify`).
    pub events: i64,
    pub secret: SigningSecret,
}

/// Everything about outbound webhooks.
#[derive(Clone)]
pub struct NotifyConfig {
    pub endpoints: Vec<ConfiguredEndpoint>,
    /// Signs deliveries to URLs a caller names in its Submits, by caller.
    pub caller_secrets: BTreeMap<String, SigningSecret>,
    /// Signs them for callers without their own secret. Without it (and without a caller
    /// secret) a Submit naming a URL is refused.
    pub default_secret: Option<SigningSecret>,
    pub policy: TargetPolicy,
    /// Consecutive failed deliveries after which an endpoint is disabled.
    pub disable_after: u32,
    /// Per delivery (connect, send, answer).
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Wait before each retry; after the last, the delivery is given up.
    pub retry_delays: Vec<Duration>,
    pub payloads: Option<Arc<dyn Payloads>>,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("endpoints", &self.endpoints)
            .field("caller_secrets", &self.caller_secrets.keys())
            .field("default_secret", &self.default_secret.is_some())
            .field("policy", &self.policy)
            .field("disable_after", &self.disable_after)
            .field("retry_delays", &self.retry_delays)
            .finish_non_exhaustive()
    }
}

/// Svix's schedule, the de-facto one for Standard Webhooks senders: a first retry after 5 s,
/// then 5 min, 30 min, 2 h, 5 h, 10 h, 10 h — 27 h 35 min in all, so an endpoint down for a
/// day still gets everything.
pub const DEFAULT_RETRY_DELAYS_SECS: [u64; 7] = [5, 300, 1800, 7200, 18_000, 36_000, 36_000];

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            caller_secrets: BTreeMap::new(),
            default_secret: None,
            policy: TargetPolicy::default(),
            disable_after: 30,
            timeout: Duration::from_secs(10),
            concurrency: 16,
            retry_delays: DEFAULT_RETRY_DELAYS_SECS
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            payloads: None,
        }
    }
}

impl NotifyConfig {
    /// Whether `caller`'s batches have somewhere to go without a URL in the Submit.
    pub(crate) fn has_endpoints(&self, caller: &str) -> bool {
        self.endpoints.iter().any(|e| e.caller == caller)
    }

    /// The secret that signs deliveries to URLs `caller` names.
    pub(crate) fn url_secret(&self, caller: &str) -> Option<&SigningSecret> {
        self.caller_secrets
            .get(caller)
            .or(self.default_secret.as_ref())
    }

    /// The endpoints as the store addresses them (no secrets).
    pub(crate) fn store_endpoints(&self) -> Vec<adgate_store::NotifyEndpoint> {
        self.endpoints
            .iter()
            .map(|e| adgate_store::NotifyEndpoint {
                id: e.id.clone(),
                caller: e.caller.clone(),
                url: e.url.clone(),
                events: e.events,
            })
            .collect()
    }
}

/// The event filter of a Submit's `notify.events` (empty: every event), or the first unknown
/// name.
pub fn event_mask(names: &[String]) -> Result<i64, String> {
    if names.is_empty() {
        return Ok(adgate_store::notify::ALL_EVENTS);
    }
    names.iter().try_fold(0, |mask, n| {
        adgate_store::notify::event_kind(n)
            .map(|k| mask | k)
            .ok_or_else(|| n.clone())
    })
}

/// The delay before retry number `attempt` (1-based), with ±20 % jitter so that deliveries
/// failed together do not come back together; `None` once the schedule is over.
pub(crate) fn retry_delay(delays: &[Duration], attempt: i64, jitter: f64) -> Option<Duration> {
    let i = usize::try_from(attempt.checked_sub(1)?).ok()?;
    let base = delays.get(i)?;
    Some(base.mul_f64((0.8 + 0.4 * jitter.clamp(0.0, 1.0)).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_covers_more_than_a_day() {
        let total: u64 = DEFAULT_RETRY_DELAYS_SECS.iter().sum();
        assert!(total >= 24 * 3600, "{total}");
        let d = NotifyConfig::default().retry_delays;
        assert_eq!(retry_delay(&d, 1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(retry_delay(&d, 1, 0.0), Some(Duration::from_secs(4)));
        assert_eq!(retry_delay(&d, 1, 1.0), Some(Duration::from_secs(6)));
        assert_eq!(retry_delay(&d, 7, 0.5), Some(Duration::from_secs(36_000)));
        assert_eq!(retry_delay(&d, 8, 0.5), None);
        assert_eq!(retry_delay(&d, 0, 0.5), None);
    }

    #[test]
    fn event_filters() {
        assert_eq!(event_mask(&[]), Ok(adgate_store::notify::ALL_EVENTS));
        assert_eq!(
            event_mask(&["job.failed".into(), "batch.completed".into()]),
            Ok(adgate_store::notify::JOB_FAILED | adgate_store::notify::BATCH_COMPLETED)
        );
        assert_eq!(
            event_mask(&["job.started".into()]),
            Err("job.started".into())
        );
    }
}
