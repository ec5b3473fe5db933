//! adgate's engine: the one place that decides when and how often providers are called.
//!
//! - [`engine`]: the [`Engine`] handle the server talks to (submit, read, watch, providers),
//!   and start-up resume; `cancel` and `webhooks` add `CancelJob` and inbound webhooks to it.
//! - `runtime`: the shared state (per provider and engine-wide) and the operations every
//!   module uses: budget, commit and publish, tracked tasks.
//! - `sweeper`: fails jobs at their deadline.
//! - [`retention`]: deletes old terminal jobs, expired request ids and delivery ids, in small
//!   steps, and gives SQLite's freed pages back.
//! - `fair`: weighted fair queuing of each provider's request budget among callers.
//! - [`eta`]: queue positions and start / completion estimates, in the dispatcher's order.
//! - [`dispatcher`]: per provider, turns QUEUED jobs into submit calls under the request budget
//!   and a concurrency cap; owns retries, idempotency keys, the unknown-outcome rule and the
//!   insufficient-balance stop.
//! - `references`: jobs that build on other jobs (an edit of an ad; an ad naming a template of
//!   the same Submit), bound at Submit; `awaiting` holds the latter until the awaited job ends.
//! - `push`: per provider, checks the push subscriptions (Pictify pauses one after five failed
//!   deliveries) every `push_check_interval` and keeps the reading for health.
//! - [`tracker`]: per provider, batch-polls in-flight jobs on the provider's schedule and opens
//!   push streams for watched jobs.
//! - `correlation`: unfinished jobs by the fingerprint an event would echo (exact matches).
//! - `events`: resolves updates from polls, streams and webhooks to jobs and applies them; keeps
//!   webhook events that match no job yet (the inbox) and applies them once their job is known.
//! - [`pricing`]: what jobs cost (documented prices, the operator's overrides), the estimate
//!   stored with each job, and per-caller daily spend limits.
//! - [`budget`]: the rolling-window request budget shared by submits, polls and streams.
//! - [`bus`]: progress fan-out to watchers with latest-wins coalescing and bounded memory.
//! - `cache`: the read API's bounded read-through cache of job records (single process).
//! - [`clock`]: wall-clock milliseconds that follow tokio's (pausable) clock.
//! - `replica`: several replicas on one shared store — lease renewal, orphan takeover, and
//!   the cross-replica change feed.
//! - [`metrics`]: Prometheus families the engine records into.
//! - `usage`: each provider's live budget reading ([`BudgetUsage`]), for the web console.
//! - [`error`]: the engine's error enum.
//! - `custody` (with `custody_copy`, [`sniff`] and [`output_store`]): copies of completed
//!   outputs in a local directory or S3-compatible storage, queued durably and retried.
//! - [`trace`]: spans of provider calls and webhooks, job lifecycle events, links to Submits.
//! - [`notify`]: outbound webhooks (Standard Webhooks) — the deliverer of the store's outbox,
//!   signing, retries, endpoint health and the SSRF guard.
//!
//! Adapters never retry, sleep or persist; everything here is provider-neutral and driven by
//! each adapter's [`adgate_generator::Limits`].

mod awaiting;
pub mod budget;
pub mod bus;
mod cache;
mod cancel;
pub mod clock;
mod correlation;
mod custody;
mod custody_copy;
pub mod dispatcher;
pub mod engine;
pub mod error;
pub mod eta;
mod events;
mod fair;
pub mod metrics;
pub mod notify;
pub mod output_store;
pub mod pricing;
mod push;
mod references;
mod replica;
pub mod retention;
mod runtime;
mod schedule;
pub mod sniff;
mod sweeper;
pub mod trace;
pub mod tracker;
mod usage;
mod webhooks;

/// The records and the store the engine works on, re-exported so the server needs no store
/// dependency of its own.
pub use adgate_store::{
    ANONYMOUS, BatchFilter, BatchSummary, DEFAULT_PRIORITY, JobFilter, JobRecord, Page, PageKey,
    Store, StoredCost,
};
pub use bus::Watch;
pub use custody::CustodyConfig;
pub use engine::{
    Engine, EngineConfig, JobRequest, ProviderSetup, ProviderStatus, SubmitCommand, SubmitReply,
    WebhookOutcome,
};
pub use error::{EngineError, WebhookFailure};
pub use metrics::EngineMetrics;
pub use output_store::{OutputStore, OutputStoreError, OutputStoreSpec, S3Settings, StoredObject};
pub use pricing::{CallerPolicies, CallerPolicy, PriceOverrides};
pub use retention::Retention;
pub use trace::SpanLink;
pub use usage::BudgetUsage;

/// Stable error codes callers switch on (defined once, in the trait crate).
pub use adgate_generator::codes;

/// Open the job store that `url` names (`sqlite:` or `postgres://`), as the engine's error.
pub async fn open_store(url: &str) -> Result<std::sync::Arc<dyn Store>, EngineError> {
    Ok(adgate_store::open(url).await?)
}
