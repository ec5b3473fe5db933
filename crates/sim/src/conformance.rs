//! One conformance suite for every adapter, run against that adapter's simulator.
//!
//! An adapter's test file implements [`Target`] and calls [`conformance_tests!`]; each behaviour
//! the engine relies on (submit, poll to a terminal state, failure, rate limiting, resubmission
//! with the same idempotency key) is then checked the same way for every provider.
//!
//! This is test-support code: failed expectations panic with a message, as assertions do.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use adgate_generator::{GenError, Generator, RemoteState, SubmitBatch, SubmitItem, UpdateTarget};
use async_trait::async_trait;
use serde_json::Value;

use crate::common::{SimConfig, SimHandle};

/// How to stand up one provider's simulator and adapter for the suite.
#[async_trait]
pub trait Target: Send + Sync {
    /// Start a simulator with `cfg` and an adapter pointed at it.
    async fn start(&self, cfg: SimConfig) -> (SimHandle, Arc<dyn Generator>);

    /// A valid spec; `i` lets a target vary it.
    fn spec(&self, i: usize) -> Value;

    /// Whether the poll endpoint alone can bring a job to `Completed` (Pictify's cannot: its
    /// URLs arrive only by webhook, so a poll-only adapter ends such items `Failed`).
    fn poll_completes(&self) -> bool {
        true
    }
}

/// A config whose jobs finish in well under a second.
pub fn fast_config() -> SimConfig {
    SimConfig {
        time_scale: 0.005,
        ..SimConfig::default()
    }
}

async fn submit_one(
    generator: &Arc<dyn Generator>,
    key: &str,
    spec: Value,
) -> Result<String, GenError> {
    let accepted = generator
        .submit(SubmitBatch {
            idempotency_key: key.to_owned(),
            items: vec![SubmitItem {
                job_id: "job_conformance".to_owned(),
                spec,
            }],
        })
        .await?;
    assert_eq!(accepted.value.len(), 1, "one item in, one accepted out");
    Ok(accepted.value[0].provider_ref.clone())
}

/// Poll until the job leaves `Processing`, with a bounded wall-clock budget.
async fn poll_to_end(
    generator: &Arc<dyn Generator>,
    provider_ref: &str,
) -> adgate_generator::ProviderUpdate {
    let key = generator.poll_key(provider_ref);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let polled = generator.poll(std::slice::from_ref(&key)).await;
        if let Ok(observed) = polled {
            let mine = observed
                .value
                .into_iter()
                .find(|u| u.target == UpdateTarget::ProviderRef(provider_ref.to_owned()));
            if let Some(u) = mine
                && u.state != RemoteState::Processing
            {
                return u;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {provider_ref} did not finish in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn submit_and_poll_to_completion(t: &dyn Target) {
    let (sim, generator) = t.start(fast_config()).await;
    let provider_ref = submit_one(&generator, "conf-key-1", t.spec(0))
        .await
        .expect("submit accepted");
    let end = poll_to_end(&generator, &provider_ref).await;
    if t.poll_completes() {
        assert_eq!(end.state, RemoteState::Completed, "{end:?}");
        assert!(!end.outputs.is_empty(), "completed without outputs");
        for o in &end.outputs {
            assert!(o.url.starts_with("http"), "output url {o:?}");
            assert!(o.width > 0 && o.height > 0, "output size {o:?}");
        }
    } else {
        assert_ne!(end.state, RemoteState::Processing);
    }
    sim.shutdown();
}

pub async fn failed_job_reports_error(t: &dyn Target) {
    let cfg = SimConfig {
        failure_ratio: 1.0,
        ..fast_config()
    };
    let (sim, generator) = t.start(cfg).await;
    let provider_ref = submit_one(&generator, "conf-key-2", t.spec(1))
        .await
        .expect("submit accepted");
    let end = poll_to_end(&generator, &provider_ref).await;
    assert_eq!(end.state, RemoteState::Failed, "{end:?}");
    let err = end.error.expect("failed job carries an error");
    assert!(
        !err.code.is_empty() && !err.provider_code.is_empty(),
        "{err:?}"
    );
    sim.shutdown();
}

pub async fn rate_limit_is_reported(t: &dyn Target) {
    let (sim, generator) = t.start(fast_config()).await;
    sim.update_faults(|f| f.burst_429 = 1);
    let err = submit_one(&generator, "conf-key-3", t.spec(2))
        .await
        .expect_err("429 must surface as an error");
    assert!(matches!(err, GenError::RateLimited { .. }), "{err:?}");
    assert_eq!(sim.ledger.count_429(), 1);
    sim.shutdown();
}

/// Sending the same submit again with the same idempotency key (a restart mid-submit) must not
/// create or charge a second job where the provider supports keys.
pub async fn resubmit_with_same_key_is_not_charged_twice(t: &dyn Target) {
    let (sim, generator) = t.start(fast_config()).await;
    if !generator.limits().idempotency {
        sim.shutdown();
        return;
    }
    let first = submit_one(&generator, "conf-key-restart", t.spec(3))
        .await
        .expect("first submit");
    let second = submit_one(&generator, "conf-key-restart", t.spec(3))
        .await
        .expect("replayed submit");
    assert_eq!(first, second, "a replay names the same provider job");
    assert_eq!(sim.ledger.creations(), 1, "one creation for one key");
    let _ = poll_to_end(&generator, &first).await;
    assert!(sim.ledger.total_charges() <= 1, "at most one charge");
    sim.shutdown();
}

/// Expands to one `#[tokio::test]` per conformance check for `$target`.
#[macro_export]
macro_rules! conformance_tests {
    ($target:expr) => {
        #[tokio::test]
        async fn conformance_submit_and_poll_to_completion() {
            $crate::conformance::submit_and_poll_to_completion(&$target).await;
        }
        #[tokio::test]
        async fn conformance_failed_job_reports_error() {
            $crate::conformance::failed_job_reports_error(&$target).await;
        }
        #[tokio::test]
        async fn conformance_rate_limit_is_reported() {
            $crate::conformance::rate_limit_is_reported(&$target).await;
        }
        #[tokio::test]
        async fn conformance_resubmit_with_same_key_is_not_charged_twice() {
            $crate::conformance::resubmit_with_same_key_is_not_charged_twice(&$target).await;
        }
    };
}
