//! Stateful simulators of the three providers adgate fronts, written from the providers'
//! documents (see `shared/reference/providers.md`), never from what an adapter would find
//! convenient. Where the documents are silent or disagree, each module picks the stricter
//! reading and says so next to the code.
//!
//! - [`common`]: configuration, scaled clock, fault injection, the ledger tests read, the
//!   rolling-window limiter.
//! - [`artwork`]: the output files — real PNG, JPEG and WebP bytes, encoded once per size and
//!   made unique per output through metadata.
//! - [`staticadslab`]: `{data, meta}` envelopes, one ad per POST, `?ids=` batch poll, SSE,
//!   idempotency replay, wallet billed on completion, `RateLimit-*` headers.
//! - [`pictify`]: `batch-render` of 1–100 variable sets, results without URLs, signed
//!   `render.completed` / `batch.completed` webhooks, cancel, `X-RateLimit-*` headers.
//! - [`abyssale`]: one request → N formats, 202/200/404/410 polling, signed callbacks, bare 429.
//! - [`bannerbear`]: v5 images, 202 + pending polling, HMAC-signed webhooks, 402, no idempotency.
//! - [`signing`]: the simulators' own webhook signing (independent of the adapters' verifier).
//! - [`conformance`]: the suite every adapter runs against its simulator.
//! - [`free_port`]: a port for a child process to bind, chosen outside the ephemeral range.
//! - `props` (feature `props`): property-test support shared by the adapters' tests.

pub mod abyssale;
pub mod artwork;
pub mod bannerbear;
pub mod common;
pub mod conformance;
pub mod pictify;
#[cfg(feature = "props")]
pub mod props;
pub mod signing;
pub mod staticadslab;

pub use common::{Faults, Ledger, SimConfig, SimHandle, WebhookTarget};

use futures_util::future::BoxFuture;
use tokio::net::TcpListener;

/// A loopback port that was free a moment ago, for a process that must bind a port known
/// ahead (the simulators deliver webhooks to a gateway that is not started yet). Chosen below
/// Linux's ephemeral range (32768–60999): a port from that range, released, can be handed to
/// an outgoing connection or a port-0 listener before the child binds it, which made tests
/// fail now and then with a gateway that could not start.
pub fn free_port() -> std::io::Result<u16> {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new();
    let mut last = None;
    for attempt in 0u64..200 {
        let port = 20_000 + u16::try_from(seed.hash_one(attempt) % 12_000).unwrap_or(0);
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// Starts a simulator on a bound listener.
pub type SpawnOn = fn(TcpListener, SimConfig) -> BoxFuture<'static, std::io::Result<SimHandle>>;

/// One simulator, by the name of the provider it simulates.
pub struct SimEntry {
    pub name: &'static str,
    pub spawn_on: SpawnOn,
}

/// Every simulator. The sandbox, `adgate sim`, the bench and the test harnesses iterate this
/// table; a new provider's simulator is one line here.
#[rustfmt::skip]
pub const SIMULATORS: &[SimEntry] = &[
    SimEntry { name: "staticadslab", spawn_on: |l, c| Box::pin(staticadslab::spawn_on(l, c)) },
    SimEntry { name: "pictify", spawn_on: |l, c| Box::pin(pictify::spawn_on(l, c)) },
    SimEntry { name: "abyssale", spawn_on: |l, c| Box::pin(abyssale::spawn_on(l, c)) },
    SimEntry { name: "bannerbear", spawn_on: |l, c| Box::pin(bannerbear::spawn_on(l, c)) },
];

/// The simulator of `provider`, if there is one.
pub fn simulator(provider: &str) -> Option<&'static SimEntry> {
    SIMULATORS.iter().find(|s| s.name == provider)
}

/// Start the simulator of `provider` on a fresh loopback port.
pub async fn spawn(provider: &str, cfg: SimConfig) -> std::io::Result<SimHandle> {
    let Some(entry) = simulator(provider) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no simulator for provider {provider:?}"),
        ));
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    (entry.spawn_on)(listener, cfg).await
}
