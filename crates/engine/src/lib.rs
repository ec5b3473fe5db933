//! adgate's engine: the one place that decides when and how often providers are called.
//!
//! - [`engine`]: the [`Engine`] handle the server talks to (submit, read, watch, cancel,
//!   webhooks), and start-up resume.
//! - [`dispatcher`]: per provider, turns QUEUED jobs into submit calls under the request budget
//!   and a concurrency cap; owns retries, idempotency keys, the unknown-outcome rule and the
//!   insufficient-balance stop.
//! - [`tracker`]: per provider, batch-polls in-flight jobs on the provider's schedule and opens
//!   push streams for watched jobs.
//! - `events`: resolves updates from polls, streams and webhooks to jobs and applies them; keeps
//!   webhook events that match no job yet (the inbox) and applies them once their job is known.
//! - [`budget`]: the rolling-window request budget shared by submits, polls and streams.
//! - [`bus`]: progress fan-out to watchers with latest-wins coalescing and bounded memory.
//! - `cache`: the read API's bounded read-through cache of job records (single process).
//! - [`clock`]: wall-clock milliseconds that follow tokio's (pausable) clock.
//! - `replica`: several replicas on one shared store — lease renewal, orphan takeover, and
//!   the cross-replica change feed.
//! - [`metrics`]: Prometheus families the engine records into.
//! - [`error`]: the engine's error enum.
//!
//! Adapters never retry, sleep or persist; everything here is provider-neutral and driven by
//! each adapter's [`adgate_generator::Limits`].

pub mod budget;
pub mod bus;
mod cache;
pub mod clock;
pub mod dispatcher;
pub mod engine;
pub mod error;
mod events;
pub mod metrics;
mod replica;
pub mod tracker;

pub use bus::Watch;
pub use engine::{
    Engine, EngineConfig, JobRequest, ProviderSetup, ProviderStatus, SubmitCommand, SubmitReply,
    WebhookOutcome,
};
pub use error::{EngineError, WebhookFailure};
pub use metrics::EngineMetrics;

/// Stable error codes the engine writes into failed jobs. Callers switch on these.
pub mod codes {
    pub const DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
    pub const UNKNOWN_OUTCOME: &str = "UNKNOWN_OUTCOME";
    pub const INSUFFICIENT_BALANCE: &str = "INSUFFICIENT_BALANCE";
    pub const PROVIDER_REJECTED: &str = "PROVIDER_REJECTED";
    pub const PROVIDER_AUTH_FAILED: &str = "PROVIDER_AUTH_FAILED";
    pub const PROVIDER_JOB_NOT_FOUND: &str = "PROVIDER_JOB_NOT_FOUND";
    pub const CANCELLED_BY_CALLER: &str = "CANCELLED_BY_CALLER";
}
