//! The contract between adgate's engine and its provider adapters.
//!
//! Adapters are pure translators: they build a provider request, parse its response and verify
//! its webhooks. Everything that decides *when* to call a provider (budgets, retries, polling
//! schedules, persistence, fan-out) lives in the engine, which only sees this crate.
//!
//! - [`model`]: the provider-neutral job model (state, progress, outputs, errors, updates).
//! - [`generator`]: the [`Generator`] trait and the [`Limits`] descriptor each adapter publishes.
//! - [`error`]: the small error taxonomy adapters report ([`GenError`]).
//! - [`signature`]: `t=…,v1=…` HMAC-SHA256 webhook signatures, shared by adapters and simulators.
//! - [`context`]: [`ProviderContext`], what a provider's `build` function gets.
//! - [`codes`]: the public job error codes, defined once.
//! - [`callback`]: a job's identity in a callback URL, so a callback binds without a provider ref.
//! - [`transport`]: the one place provider requests are sent: a client span for each, and the
//!   one rule for a request that got no answer (may it be resent?).
//! - [`ratelimit`]: `Retry-After` and rate-limit headers, for every adapter.
//! - [`time`]: RFC 3339 formatting without a calendar dependency.

pub mod callback;
pub mod codes;
pub mod context;
pub mod error;
pub mod generator;
pub mod model;
pub mod ratelimit;
pub mod signature;
pub mod time;
pub mod transport;

/// `tracing` target of spans and events meant for OpenTelemetry traces only (the gateway keeps
/// them out of its log output).
pub const TRACE_TARGET: &str = "adgate::otel";

pub use context::{Build, ProviderContext};
pub use error::{FieldViolation, GenError, WebhookError};
pub use generator::{
    Accepted, CancelSupport, Generator, LOST_PUSH_BOUND, Limits, Observed, PushAction,
    PushChannels, PushHealth, PushSubscription, RateLimitSnapshot, RequestBudget, SubmitBatch,
    SubmitItem, UpdateStream, WebhookEvent,
};
pub use model::{
    Custody, CustodyState, JobError, JobState, JobView, Output, Price, Progress, ProviderUpdate,
    RemoteState, UpdateTarget,
};
