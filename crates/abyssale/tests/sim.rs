//! The adapter against the Abyssale simulator: outputs, partial success, failures, expiry,
//! error mapping and signed webhooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use adgate_abyssale::{Abyssale, AbyssaleConfig};
use adgate_generator::{
    GenError, Generator, ProviderUpdate, RemoteState, SubmitBatch, SubmitItem, UpdateTarget,
    WebhookError, WebhookEvent,
};
use adgate_sim::common::WebhookTarget;
use adgate_sim::{SimConfig, SimHandle, abyssale};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

const DESIGN: &str = "840420c2-7bd9-45c4-a7cb-c741b16edfcf";

fn cfg(time_scale: f64) -> SimConfig {
    SimConfig {
        time_scale,
        ..SimConfig::default()
    }
}

fn adapter_for(sim: &SimHandle, tweak: impl FnOnce(&mut AbyssaleConfig)) -> Abyssale {
    let mut c = AbyssaleConfig {
        base_url: sim.base_url.clone(),
        ..AbyssaleConfig::new("sim_key")
    };
    tweak(&mut c);
    Abyssale::new(c).unwrap()
}

fn spec(formats: &[&str]) -> Value {
    json!({"design_id": DESIGN, "format_names": formats, "elements": {"title": {"payload": "Hi"}}})
}

async fn submit(a: &Abyssale, spec: Value) -> Result<String, GenError> {
    let out = a
        .submit(SubmitBatch {
            idempotency_key: "unused-by-abyssale".into(),
            items: vec![SubmitItem {
                job_id: "job_1".into(),
                spec,
            }],
        })
        .await?;
    assert_eq!(out.value.len(), 1);
    assert!(!out.value[0].replayed);
    assert_eq!(out.value[0].job_id, "job_1");
    Ok(out.value[0].provider_ref.clone())
}

async fn poll_once(a: &Abyssale, id: &str) -> Result<ProviderUpdate, GenError> {
    let mut out = a.poll(&[id.to_owned()]).await?;
    assert_eq!(out.value.len(), 1);
    Ok(out.value.remove(0))
}

async fn poll_to_end(a: &Abyssale, id: &str) -> ProviderUpdate {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let u = poll_once(a, id).await.unwrap();
        assert_eq!(u.target, UpdateTarget::ProviderRef(id.to_owned()));
        if u.state != RemoteState::Processing {
            return u;
        }
        assert!(Instant::now() < deadline, "did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn three_formats_become_three_outputs() {
    let sim = abyssale::spawn(cfg(0.005)).await.unwrap();
    let a = adapter_for(&sim, |_| {});
    let id = submit(&a, spec(&["facebook-feed", "instagram-post", "iab-medium"]))
        .await
        .unwrap();
    let first = poll_once(&a, &id).await.unwrap();
    assert_eq!(first.state, RemoteState::Processing);
    let p = first.progress.expect("progress known for named formats");
    assert!((0.0..=100.0).contains(&p.percentage));
    let end = poll_to_end(&a, &id).await;
    assert_eq!(end.state, RemoteState::Completed);
    assert!(end.error.is_none());
    let mut got: Vec<(String, u32, u32)> = end
        .outputs
        .iter()
        .map(|o| (o.format.clone(), o.width, o.height))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("facebook-feed".into(), 1200, 628),
            ("iab-medium".into(), 300, 250),
            ("instagram-post".into(), 1080, 1080),
        ]
    );
    for o in &end.outputs {
        assert!(o.url.starts_with(&sim.base_url), "{o:?}");
        assert_eq!(o.mime_type, "image/png");
    }
    assert_eq!(sim.ledger.total_charges(), 3);
    assert_eq!(sim.ledger.creations(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn partial_success_is_completed_with_a_partial_failure_error() {
    let sim = abyssale::spawn(SimConfig {
        failure_ratio: 0.5,
        ..cfg(0.002)
    })
    .await
    .unwrap();
    let a = adapter_for(&sim, |_| {});
    let id = submit(
        &a,
        spec(&["facebook-feed", "instagram-post", "iab-medium", "half-page"]),
    )
    .await
    .unwrap();
    let end = poll_to_end(&a, &id).await;
    assert_eq!(end.state, RemoteState::Completed);
    assert_eq!(end.outputs.len(), 2);
    let e = end.error.expect("partial failure described");
    assert_eq!(e.code, "PARTIAL_FAILURE");
    assert!(e.retryable);
    assert!(e.message.starts_with("2 format(s) failed"), "{}", e.message);
    // The failed formats as data: exactly the asked-for formats with no output.
    assert_eq!(e.failed_formats.len(), 2);
    let mut all: Vec<&str> = e
        .failed_formats
        .iter()
        .map(|f| f.format.as_str())
        .chain(end.outputs.iter().map(|o| o.format.as_str()))
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        ["facebook-feed", "half-page", "iab-medium", "instagram-post"]
    );
    assert!(e.failed_formats.iter().all(|f| !f.reason.is_empty()));
    sim.shutdown();
}

/// Output blocks and `original_visual_id` (providers.md §3.2) reach a simulator written from
/// the documents and are accepted; `original_visual_id` without exactly one format is refused
/// locally, before any request.
#[tokio::test]
async fn output_blocks_are_sent_and_original_visual_id_needs_one_format() {
    let sim = abyssale::spawn(cfg(0.002)).await.unwrap();
    let a = adapter_for(&sim, |_| {});
    let mut s = spec(&["iab-medium"]);
    s["html5"] = json!({"page_title": "Sale", "include_backup_image": false});
    s["gif"] = json!({"max_fps": 2, "repeat": true});
    s["video"] = json!({"fps": 30});
    s["print"] = json!({"color_profile": DESIGN, "display_crop_marks": false});
    s["original_visual_id"] = json!(DESIGN);
    let id = submit(&a, s.clone()).await.unwrap();
    assert_eq!(poll_to_end(&a, &id).await.state, RemoteState::Completed);
    let before = sim.ledger.total_requests();
    s["format_names"] = json!(["iab-medium", "half-page"]);
    match submit(&a, s).await {
        Err(GenError::Invalid { violations, .. }) => {
            assert_eq!(violations[0].field, "original_visual_id", "{violations:?}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        sim.ledger.total_requests(),
        before,
        "refused before sending"
    );
    sim.shutdown();
}

#[tokio::test]
async fn all_formats_failed_is_failed() {
    let sim = abyssale::spawn(SimConfig {
        failure_ratio: 1.0,
        ..cfg(0.002)
    })
    .await
    .unwrap();
    let a = adapter_for(&sim, |_| {});
    let id = submit(&a, spec(&["iab-medium", "half-page"]))
        .await
        .unwrap();
    let end = poll_to_end(&a, &id).await;
    assert_eq!(end.state, RemoteState::Failed);
    assert!(end.outputs.is_empty());
    let e = end.error.unwrap();
    assert_eq!(e.code, "PROVIDER_JOB_FAILED");
    assert!(!e.provider_code.is_empty());
    assert_eq!(sim.ledger.total_charges(), 0);
    sim.shutdown();
}

#[tokio::test]
async fn expired_request_is_result_expired_and_unknown_is_not_found() {
    // 7 days × 1e-6 ≈ 0.6 s.
    let sim = abyssale::spawn(cfg(0.000_001)).await.unwrap();
    let a = adapter_for(&sim, |_| {});
    let unknown = poll_once(&a, "00000000-0000-4000-a000-000000000000")
        .await
        .unwrap();
    assert_eq!(unknown.state, RemoteState::NotFound);
    let garbage = poll_once(&a, "../signing-secret").await.unwrap();
    assert_eq!(garbage.state, RemoteState::NotFound);
    assert_eq!(
        sim.ledger.total_requests(),
        1,
        "a non-UUID key never reaches Abyssale"
    );

    let id = submit(&a, spec(&["iab-medium"])).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let u = poll_once(&a, &id).await.unwrap();
        if u.state == RemoteState::Failed {
            let e = u.error.unwrap();
            assert_eq!(e.code, "RESULT_EXPIRED");
            assert_eq!(e.provider_code, "generation_request_gone");
            break;
        }
        assert!(matches!(
            u.state,
            RemoteState::Processing | RemoteState::Completed
        ));
        assert!(Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.shutdown();
}

#[tokio::test]
async fn provider_errors_are_classified() {
    let sim = abyssale::spawn(SimConfig {
        wallet: Some(3),
        ..cfg(0.002)
    })
    .await
    .unwrap();
    let a = adapter_for(&sim, |_| {});

    let e = submit(&a, spec(&["facebook-feed", "tiktok"]))
        .await
        .unwrap_err();
    let GenError::Invalid {
        provider_code,
        violations,
        ..
    } = e
    else {
        panic!("{e:?}");
    };
    assert_eq!(provider_code, "format_not_found");
    assert_eq!(violations[0].field, "format_names[1]");

    let mut with_type = spec(&["iab-medium"]);
    with_type["image_file_type"] = json!("mp4");
    let e = submit(&a, with_type).await.unwrap_err();
    assert!(
        matches!(&e, GenError::Invalid { provider_code, .. } if provider_code == "invalid_filetype"),
        "{e:?}"
    );

    let bad_key = adapter_for(&sim, |c| c.api_key = "wrong".into());
    let e = submit(&bad_key, spec(&["iab-medium"])).await.unwrap_err();
    assert!(matches!(e, GenError::Unauthorized { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong"), "no key in errors");

    // 5 formats but 3 credits: Abyssale's 429 that means "credits spent".
    let e = submit(&a, spec(&[])).await.unwrap_err();
    assert!(matches!(e, GenError::InsufficientBalance { .. }), "{e:?}");

    sim.update_faults(|f| f.burst_429 = 1);
    let e = submit(&a, spec(&["iab-medium"])).await.unwrap_err();
    assert!(
        matches!(e, GenError::RateLimited { retry_after: None }),
        "{e:?}"
    );
    assert_eq!(sim.ledger.creations(), 0, "nothing was created so far");
    sim.shutdown();
}

#[tokio::test]
async fn lost_answers_to_a_generate_are_unknown_outcomes_and_polls_are_transient() {
    let sim = abyssale::spawn(cfg(0.002)).await.unwrap();
    let a = adapter_for(&sim, |_| {});
    let ok = submit(&a, spec(&["iab-medium"])).await.unwrap();

    sim.update_faults(|f| f.drop_ratio = 1.0);
    let e = submit(&a, spec(&["iab-medium"])).await.unwrap_err();
    assert!(matches!(e, GenError::UnknownOutcome { .. }), "{e:?}");
    assert_eq!(sim.ledger.creations(), 2, "the dropped one was created");
    let e = poll_once(&a, &ok).await.unwrap_err();
    assert!(matches!(e, GenError::Transient { .. }), "{e:?}");

    sim.update_faults(|f| {
        f.drop_ratio = 0.0;
        f.malformed_ratio = 1.0;
    });
    let e = submit(&a, spec(&["iab-medium"])).await.unwrap_err();
    assert!(matches!(e, GenError::UnknownOutcome { .. }), "{e:?}");
    let e = poll_once(&a, &ok).await.unwrap_err();
    assert!(matches!(e, GenError::Transient { .. }), "{e:?}");

    sim.update_faults(|f| {
        f.malformed_ratio = 0.0;
        f.error_5xx_ratio = 1.0;
    });
    let e = submit(&a, spec(&["iab-medium"])).await.unwrap_err();
    assert!(matches!(e, GenError::UnknownOutcome { .. }), "{e:?}");
    let e = poll_once(&a, &ok).await.unwrap_err();
    assert!(matches!(e, GenError::Transient { .. }), "{e:?}");

    // Connection refused: never sent.
    let dead = Abyssale::new(AbyssaleConfig {
        base_url: "http://127.0.0.1:9".into(),
        ..AbyssaleConfig::new("k")
    })
    .unwrap();
    let e = submit(&dead, spec(&["iab-medium"])).await.unwrap_err();
    assert!(matches!(e, GenError::Transient { .. }), "{e:?}");
    sim.shutdown();
}

#[tokio::test]
async fn rate_headers_are_read() {
    let sim = abyssale::spawn(SimConfig {
        job_duration: (Duration::from_millis(10), Duration::from_millis(10)),
        ..cfg(1.0)
    })
    .await
    .unwrap();
    let a = adapter_for(&sim, |_| {});
    let out = a
        .submit(SubmitBatch {
            idempotency_key: "k".into(),
            items: vec![SubmitItem {
                job_id: "j".into(),
                spec: spec(&["iab-medium"]),
            }],
        })
        .await
        .unwrap();
    let rate = out.rate.expect("X-RateLimit-* read");
    assert_eq!(rate.limit, Some(10));
    assert_eq!(rate.remaining, 9);
    assert!(rate.reset_after <= Duration::from_secs(2));
    sim.shutdown();
}

// ---- webhooks ------------------------------------------------------------------------------

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes, Result<WebhookEvent, WebhookError>)>>>;

#[derive(Clone)]
struct Hook {
    adapter: Arc<Abyssale>,
    seen: Seen,
}

/// What adgate's webhook listener does: verify and parse, 200 or 401.
async fn hook(State(h): State<Hook>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let r = h.adapter.parse_webhook(&headers, &body, SystemTime::now());
    let code = if r.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    h.seen.lock().unwrap().push((headers, body, r));
    code
}

async fn listen(adapter: Arc<Abyssale>) -> (Seen, String) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/webhooks/abyssale", axum::routing::post(hook))
        .with_state(Hook {
            adapter,
            seen: seen.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/abyssale",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, url)
}

async fn wait_seen(seen: &Seen, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while seen.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "no webhook arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const SECRET: &str = "whsec_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn a_signed_callback_from_the_sim_completes_the_job() {
    // The per-request callback_url wins over the configured global endpoint.
    let receiver_side = Arc::new(
        Abyssale::new(AbyssaleConfig {
            webhook_secret: Some(SECRET.into()),
            ..AbyssaleConfig::new("sim_key")
        })
        .unwrap(),
    );
    let (seen, url) = listen(receiver_side).await;
    let sim = abyssale::spawn(SimConfig {
        webhook: Some(WebhookTarget {
            url: "https://unused.example/global".into(),
            secret: SECRET.into(),
        }),
        ..cfg(0.002)
    })
    .await
    .unwrap();
    let a = adapter_for(&sim, |c| {
        c.webhook_secret = Some(SECRET.into());
        c.callback_url = Some(url.clone());
    });
    assert!(a.limits().push.webhooks);
    let id = submit(&a, spec(&["iab-medium", "half-page"]))
        .await
        .unwrap();
    wait_seen(&seen, 1).await;
    let (headers, body, result) = seen.lock().unwrap().remove(0);
    let ev = result.expect("verified");
    assert_eq!(
        ev.delivery_id.as_deref(),
        headers
            .get("x-abyssale-delivery-id")
            .and_then(|v| v.to_str().ok())
    );
    let u = &ev.updates[0];
    assert_eq!(u.target, UpdateTarget::ProviderRef(id.clone()));
    assert_eq!(u.state, RemoteState::Completed);
    assert_eq!(u.outputs.len(), 2);
    // The webhook says what a final poll says.
    let polled = poll_once(&a, &id).await.unwrap();
    assert_eq!(polled.state, u.state);
    assert_eq!(polled.outputs.len(), u.outputs.len());

    // Replaying the captured delivery six minutes later is stale.
    let later = SystemTime::now() + Duration::from_secs(360);
    assert!(matches!(
        a.parse_webhook(&headers, &body, later),
        Err(WebhookError::BadSignature(_))
    ));
    sim.shutdown();
}

#[tokio::test]
async fn forged_and_unsigned_deliveries_are_refused() {
    let wrong = Arc::new(
        Abyssale::new(AbyssaleConfig {
            webhook_secret: Some(format!("whsec_{}", "f".repeat(64))),
            ..AbyssaleConfig::new("sim_key")
        })
        .unwrap(),
    );
    let (seen, url) = listen(wrong).await;
    // No secret minted yet: the sim's first delivery is unsigned.
    let sim = abyssale::spawn(cfg(0.002)).await.unwrap();
    let a = adapter_for(&sim, |c| c.callback_url = Some(url.clone()));
    submit(&a, spec(&["iab-medium"])).await.unwrap();
    wait_seen(&seen, 1).await;
    {
        let s = seen.lock().unwrap();
        assert!(matches!(s[0].2, Err(WebhookError::BadSignature(_))));
    }
    // Signed by a secret the receiver does not hold: forged from its point of view; the sim
    // retries on 401 with the same delivery id.
    let sim_secret = format!("whsec_{}", "9".repeat(64));
    let holder = Abyssale::new(AbyssaleConfig {
        webhook_secret: Some(sim_secret.clone()),
        ..AbyssaleConfig::new("sim_key")
    })
    .unwrap();
    let sim2 = abyssale::spawn(SimConfig {
        webhook: Some(WebhookTarget {
            url: url.clone(),
            secret: sim_secret.clone(),
        }),
        ..cfg(0.002)
    })
    .await
    .unwrap();
    let a2 = adapter_for(&sim2, |_| {});
    submit(&a2, spec(&["iab-medium"])).await.unwrap();
    // sim's unsigned delivery is being retried too; look at the signed ones only.
    let deadline = Instant::now() + Duration::from_secs(2);
    let signed = loop {
        let signed: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.0.contains_key("x-abyssale-signature"))
            .map(|x| {
                let bad_sig = matches!(x.2, Err(WebhookError::BadSignature(_)));
                (x.0.clone(), x.1.clone(), bad_sig)
            })
            .collect();
        if signed.len() >= 2 {
            break signed;
        }
        assert!(Instant::now() < deadline, "no retry of the signed delivery");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(signed.iter().all(|x| x.2), "refused as bad signatures");
    assert_eq!(
        signed[0].0.get("x-abyssale-delivery-id"),
        signed[1].0.get("x-abyssale-delivery-id"),
        "a retry keeps its delivery id"
    );
    // The refusal is about the secret: a receiver holding the sim's secret accepts them.
    assert!(
        holder
            .parse_webhook(&signed[1].0, &signed[1].1, SystemTime::now())
            .is_ok()
    );
    sim.shutdown();
    sim2.shutdown();
}
