//! Stateful simulators of the three providers adgate fronts, written from the providers'
//! documents (see `shared/reference/providers.md`), never from what an adapter would find
//! convenient. Where the documents are silent or disagree, each module picks the stricter
//! reading and says so next to the code.
//!
//! - [`common`]: configuration, scaled clock, fault injection, the ledger tests read, the
//!   rolling-window limiter and PNG rendering.
//! - [`staticadslab`]: `{data, meta}` envelopes, one ad per POST, `?ids=` batch poll, SSE,
//!   idempotency replay, wallet billed on completion, `RateLimit-*` headers.
//! - [`pictify`]: `batch-render` of 1–100 variable sets, results without URLs, signed
//!   `render.completed` / `batch.completed` webhooks, cancel, `X-RateLimit-*` headers.
//! - [`abyssale`]: one request → N formats, 202/200/404/410 polling, signed callbacks, bare 429.
//! - [`signing`]: the simulators' own webhook signing (independent of the adapters' verifier).
//! - [`conformance`]: the suite every adapter runs against its simulator.
//! - `props` (feature `props`): property-test support shared by the adapters' tests.

pub mod abyssale;
pub mod common;
pub mod conformance;
pub mod pictify;
#[cfg(feature = "props")]
pub mod props;
pub mod signing;
pub mod staticadslab;

pub use common::{Faults, Ledger, SimConfig, SimHandle, WebhookTarget};
