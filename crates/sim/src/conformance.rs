//! One conformance suite for every adapter, run against that adapter's simulator.
//!
//! An adapter's test file implements [`Target`] and calls [`conformance_tests!`]; each behaviour
//! the engine relies on (submit, poll to a terminal state, failure, rate limiting, resubmission
//! with the same idempotency key, a lost submit answer, cancel, push channels) is then checked
//! the same way for every provider. No check is skipped for a provider that lacks a
//! capability: the check asserts instead that the adapter's `limits()` say so and that the
//! behaviour (simulator and adapter) matches.
//!
//! This is test-support code: failed expectations panic with a message, as assertions do.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use adgate_generator::{
    CancelSupport, GenError, Generator, RemoteState, SubmitBatch, SubmitItem, UpdateTarget,
    WebhookError,
};
use async_trait::async_trait;
use futures_util::StreamExt;
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
/// create or charge a second job where the provider supports keys — and where it does not
/// (`limits().idempotency == false`, Abyssale [AB-TS]), the limits must be telling the truth:
/// the resend *is* a second job, which is why the engine never resends such a submit.
pub async fn resubmit_with_same_key_is_not_charged_twice(t: &dyn Target) {
    let (sim, generator) = t.start(fast_config()).await;
    let first = submit_one(&generator, "conf-key-restart", t.spec(3))
        .await
        .expect("first submit");
    let second = submit_one(&generator, "conf-key-restart", t.spec(3))
        .await
        .expect("second submit");
    let _ = poll_to_end(&generator, &first).await;
    if generator.limits().idempotency {
        assert_eq!(first, second, "a replay names the same provider job");
        assert_eq!(sim.ledger.creations(), 1, "one creation for one key");
        assert_eq!(sim.ledger.replays(), 1, "the second submit was a replay");
        assert!(sim.ledger.total_charges() <= 1, "at most one charge");
    } else {
        assert_ne!(first, second, "without keys the resend is new work");
        assert_eq!(
            sim.ledger.creations(),
            2,
            "limits say no idempotency: two creations"
        );
        assert_eq!(sim.ledger.replays(), 0);
        let _ = poll_to_end(&generator, &second).await;
        assert!(
            sim.ledger.total_charges() >= 2,
            "both jobs bill: {:?}",
            sim.ledger.charges_by_job()
        );
    }
    sim.shutdown();
}

/// The answer to a submit is lost after the provider created the work (`cut_after_create`).
/// With keys the adapter reports a resendable error and the resend replays the same job;
/// without keys it must report `UnknownOutcome` (never `Transient`, which promises that a
/// resend is safe), and a resend — which the engine will not make — would be a second job.
pub async fn lost_submit_answer_matches_idempotency(t: &dyn Target) {
    let (sim, generator) = t.start(fast_config()).await;
    sim.update_faults(|f| f.cut_after_create = 1);
    let err = submit_one(&generator, "conf-key-cut", t.spec(4))
        .await
        .expect_err("the answer was cut");
    assert_eq!(sim.ledger.count_cut(), 1, "the fault fired");
    assert_eq!(sim.ledger.creations(), 1, "the work was created");
    let again = submit_one(&generator, "conf-key-cut", t.spec(4))
        .await
        .expect("the resend is answered");
    if generator.limits().idempotency {
        assert!(
            matches!(
                err,
                GenError::Transient { .. } | GenError::UnknownOutcome { .. }
            ),
            "{err:?}"
        );
        assert_eq!(sim.ledger.creations(), 1, "the resend replayed");
        assert_eq!(sim.ledger.replays(), 1);
    } else {
        assert!(matches!(err, GenError::UnknownOutcome { .. }), "{err:?}");
        assert_eq!(sim.ledger.creations(), 2, "no keys: the resend is new work");
    }
    let end = poll_to_end(&generator, &again).await;
    assert_ne!(end.state, RemoteState::NotFound, "{end:?}");
    sim.shutdown();
}

/// `limits().cancel` is the truth: a provider with cancel stops a running job (it ends
/// `Cancelled`); one without answers `Unsupported` and the job runs to its end.
pub async fn cancel_matches_limits(t: &dyn Target) {
    let cancel = {
        let (sim, generator) = t.start(fast_config()).await;
        let c = generator.limits().cancel;
        sim.shutdown();
        c
    };
    match cancel {
        CancelSupport::None => {
            let (sim, generator) = t.start(fast_config()).await;
            let provider_ref = submit_one(&generator, "conf-key-cancel", t.spec(5))
                .await
                .expect("submit accepted");
            let err = generator
                .cancel(&generator.poll_key(&provider_ref))
                .await
                .expect_err("no cancel in the limits, none in the adapter");
            assert!(matches!(err, GenError::Unsupported(_)), "{err:?}");
            let end = poll_to_end(&generator, &provider_ref).await;
            assert_ne!(end.state, RemoteState::Cancelled, "{end:?}");
            sim.shutdown();
        }
        CancelSupport::PerPollKey | CancelSupport::PerJob => {
            // Real-time runs (30–60 s) so the job is still running when the cancel arrives.
            let cfg = SimConfig {
                time_scale: 1.0,
                ..SimConfig::default()
            };
            let (sim, generator) = t.start(cfg).await;
            let provider_ref = submit_one(&generator, "conf-key-cancel", t.spec(5))
                .await
                .expect("submit accepted");
            generator
                .cancel(&generator.poll_key(&provider_ref))
                .await
                .expect("limits promise cancel");
            let end = poll_to_end(&generator, &provider_ref).await;
            assert_eq!(end.state, RemoteState::Cancelled, "{end:?}");
            sim.shutdown();
        }
    }
}

/// `limits().push` is the truth. SSE: a stream opens, carries only this job's non-final
/// updates or its failure, and ends by itself; without SSE the adapter answers `Unsupported`.
/// Webhooks: the suite's targets configure no secret, so the limits must say webhooks are off
/// and every delivery is refused `NotConfigured`; with a secret a forged one is refused.
pub async fn push_channels_match_limits(t: &dyn Target) {
    let (sim, generator) = t.start(fast_config()).await;
    let push = generator.limits().push;
    let provider_ref = submit_one(&generator, "conf-key-push", t.spec(6))
        .await
        .expect("submit accepted");
    if push.sse {
        let mut stream = generator
            .stream_updates(&provider_ref)
            .await
            .expect("limits promise SSE");
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(item) = stream.next().await {
                let u = item.expect("stream items are updates");
                assert_eq!(u.target, UpdateTarget::ProviderRef(provider_ref.clone()));
                assert!(
                    matches!(u.state, RemoteState::Processing | RemoteState::Failed),
                    "a stream without URLs cannot complete a job: {u:?}"
                );
            }
        })
        .await;
        assert!(drained.is_ok(), "the stream ends after the job does");
    } else {
        let err = generator
            .stream_updates(&provider_ref)
            .await
            .err()
            .expect("no SSE in the limits, none in the adapter");
        assert!(matches!(err, GenError::Unsupported(_)), "{err:?}");
    }
    let body = br#"{"event":"x","data":{}}"#;
    let mut headers = http::HeaderMap::new();
    for name in ["x-pictify-signature", "x-abyssale-signature"] {
        headers.insert(
            name,
            http::HeaderValue::from_static(
                "t=1700000000,v1=0000000000000000000000000000000000000000000000000000000000000000",
            ),
        );
    }
    let parsed = generator.parse_webhook(&headers, body, std::time::SystemTime::now());
    if push.webhooks {
        assert!(
            matches!(parsed, Err(WebhookError::BadSignature(_))),
            "{parsed:?}"
        );
    } else {
        assert_eq!(parsed, Err(WebhookError::NotConfigured));
    }
    let _ = poll_to_end(&generator, &provider_ref).await;
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
        #[tokio::test]
        async fn conformance_lost_submit_answer_matches_idempotency() {
            $crate::conformance::lost_submit_answer_matches_idempotency(&$target).await;
        }
        #[tokio::test]
        async fn conformance_cancel_matches_limits() {
            $crate::conformance::cancel_matches_limits(&$target).await;
        }
        #[tokio::test]
        async fn conformance_push_channels_match_limits() {
            $crate::conformance::push_channels_match_limits(&$target).await;
        }
    };
}
