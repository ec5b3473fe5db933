//! The adapter against the Pictify simulator: batching, per-item refs and codes, webhooks
//! delivered by the simulator and parsed by the adapter, cancel, and error classes.

// Test helpers outside #[test] fns unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use adgate_generator::{
    GenError, Generator, ProviderUpdate, RemoteState, SubmitBatch, SubmitItem, UpdateTarget,
    WebhookError, WebhookEvent,
};
use adgate_pictify::results::{OUTPUT_URL_UNAVAILABLE, PROVIDER_JOB_FAILED, WAITING_FOR_WEBHOOK};
use adgate_pictify::{Pictify, PictifyConfig};
use adgate_sim::{SimConfig, SimHandle, WebhookTarget, pictify};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "whsec_sim_test";

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.005,
        job_duration: (Duration::from_millis(200), Duration::from_millis(600)),
        ..SimConfig::default()
    }
}

fn adapter(sim: &SimHandle, secret: Option<&str>) -> Arc<Pictify> {
    let mut cfg = PictifyConfig::new("sim_key");
    cfg.base_url = sim.base_url.clone();
    cfg.webhook_secret = secret.map(str::to_owned);
    cfg.webhooks_reachable = secret.is_some();
    cfg.request_timeout = Duration::from_secs(5);
    Arc::new(Pictify::new(cfg).unwrap())
}

fn spec(template: &str, i: usize) -> Value {
    json!({"template_uid": template, "variables": {"title": format!("Post {i}"), "n": i}})
}

fn batch(key: &str, specs: Vec<Value>) -> SubmitBatch {
    SubmitBatch {
        idempotency_key: key.to_owned(),
        items: specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| SubmitItem {
                job_id: format!("job_{key}_{i}"),
                spec,
            })
            .collect(),
    }
}

/// Poll `key` until no item is Processing (or, with `allow_waiting`, until every Processing
/// item is the "waiting for webhook" kind). Bounded.
async fn poll_settled(p: &Pictify, key: &str, allow_waiting: bool) -> Vec<ProviderUpdate> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(o) = p.poll(&[key.to_owned()]).await {
            let settled = o.value.iter().all(|u| {
                u.state != RemoteState::Processing
                    || (allow_waiting
                        && u.progress
                            .as_ref()
                            .is_some_and(|p| p.message == WAITING_FOR_WEBHOOK))
            });
            if settled && !o.value.is_empty() {
                return o.value;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn caller_grouped_250_items_map_to_three_batches_of_refs() {
    let sim = pictify::spawn(fast()).await.unwrap();
    // The Pro plan takes 100 items per batch; Free takes 10 [PX-LIVE:api-reference/batch].
    let mut cfg = PictifyConfig::new("sim_key");
    cfg.base_url = sim.base_url.clone();
    cfg.plan = adgate_pictify::subscriptions::Plan::Pro;
    let p = Pictify::new(cfg).unwrap();
    let specs: Vec<Value> = (0..250).map(|i| spec("tmpl_bulk", i)).collect();
    let groups: Vec<Option<String>> = specs.iter().map(|s| p.group_key(s)).collect();
    assert!(groups.iter().all(|g| g.is_some() && *g == groups[0]));
    let limit = p.limits().max_items_per_submit;
    assert_eq!(limit, 100);
    let mut keys = Vec::new();
    for (n, chunk) in specs.chunks(limit).enumerate() {
        let accepted = p
            .submit(batch(&format!("bulk-{n}"), chunk.to_vec()))
            .await
            .unwrap();
        assert!(accepted.rate.is_some(), "X-RateLimit-* read");
        assert_eq!(accepted.value.len(), chunk.len());
        let key = p.poll_key(&accepted.value[0].provider_ref);
        for (i, a) in accepted.value.iter().enumerate() {
            assert_eq!(a.provider_ref, format!("{key}:{i}"));
            assert_eq!(a.job_id, format!("job_bulk-{n}_{i}"));
            assert_eq!(p.poll_key(&a.provider_ref), key);
        }
        keys.push(key);
    }
    assert_eq!(sim.ledger.creations(), 3);
    let mut sizes = Vec::new();
    for key in &keys {
        let updates = poll_settled(&p, key, false).await;
        sizes.push(updates.len());
        for (i, u) in updates.iter().enumerate() {
            assert_eq!(u.target, UpdateTarget::ProviderRef(format!("{key}:{i}")));
            assert_eq!(u.state, RemoteState::Failed);
            assert_eq!(u.error.as_ref().unwrap().code, OUTPUT_URL_UNAVAILABLE);
        }
    }
    assert_eq!(sizes, [100, 100, 50]);
    let bodies = sim.ledger.requests(pictify::EP_BATCH_RENDER);
    assert_eq!(bodies, 3);
    sim.shutdown();
}

#[tokio::test]
async fn partial_batch_reports_documented_item_codes() {
    let sim = pictify::spawn(SimConfig {
        failure_ratio: 0.5,
        ..fast()
    })
    .await
    .unwrap();
    let p = adapter(&sim, None);
    let specs = (0..12).map(|i| spec("tmpl_p", i)).collect();
    let accepted = p.submit(batch("partial", specs)).await.unwrap();
    let key = p.poll_key(&accepted.value[0].provider_ref);
    let updates = poll_settled(&p, &key, false).await;
    let mut by_code: HashMap<String, usize> = HashMap::new();
    for u in &updates {
        assert_eq!(u.state, RemoteState::Failed);
        let e = u.error.as_ref().unwrap();
        if e.code == PROVIDER_JOB_FAILED {
            assert!(
                [
                    "INVALID_VARIABLE",
                    "EXPRESSION_ERROR",
                    "IMAGE_FETCH_FAILED",
                    "RENDER_TIMEOUT"
                ]
                .contains(&e.provider_code.as_str()),
                "{e:?}"
            );
        }
        *by_code.entry(e.code.clone()).or_default() += 1;
    }
    assert!(by_code.get(PROVIDER_JOB_FAILED).is_some_and(|n| *n > 0));
    assert!(by_code.get(OUTPUT_URL_UNAVAILABLE).is_some_and(|n| *n > 0));
    sim.shutdown();
}

// --- webhooks from the simulator into parse_webhook ---------------------------------------------

#[derive(Clone)]
struct Hook {
    adapter: Arc<Pictify>,
    events: Arc<Mutex<Vec<WebhookEvent>>>,
    raw: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

async fn hook(State(h): State<Hook>, headers: HeaderMap, body: Bytes) -> StatusCode {
    h.raw.lock().unwrap().push((headers.clone(), body.clone()));
    match h.adapter.parse_webhook(&headers, &body, SystemTime::now()) {
        Ok(ev) => {
            h.events.lock().unwrap().push(ev);
            StatusCode::OK
        }
        Err(WebhookError::Malformed(_)) => StatusCode::BAD_REQUEST,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

/// A simulator that delivers webhooks to a receiver calling `parse_webhook` on the adapter.
async fn sim_with_receiver(cfg: SimConfig) -> (SimHandle, Hook, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/pictify", listener.local_addr().unwrap());
    let sim = pictify::spawn(SimConfig {
        webhook: Some(WebhookTarget {
            url: url.clone(),
            secret: SECRET.to_owned(),
        }),
        ..cfg
    })
    .await
    .unwrap();
    let h = Hook {
        adapter: adapter(&sim, Some(SECRET)),
        events: Arc::default(),
        raw: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/webhooks/pictify", axum::routing::post(hook))
        .with_state(h.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (sim, h, url)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sim_webhooks_complete_items_by_correlation_with_urls() {
    let (sim, h, _) = sim_with_receiver(fast()).await;
    let p = h.adapter.clone();
    let specs: Vec<Value> = (0..3).map(|i| spec("tmpl_hook", i)).collect();
    let accepted = p.submit(batch("hooks", specs.clone())).await.unwrap();
    let key = p.poll_key(&accepted.value[0].provider_ref);
    wait_for("batch.completed hint", || {
        h.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| !e.poll_hints.is_empty())
    })
    .await;
    wait_for("3 render updates", || {
        h.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.updates.len())
            .sum::<usize>()
            >= 3
    })
    .await;
    let events = h.events.lock().unwrap().clone();
    let hint = events.iter().find(|e| !e.poll_hints.is_empty()).unwrap();
    assert_eq!(hint.poll_hints, std::slice::from_ref(&key));
    let updates: Vec<&ProviderUpdate> = events.iter().flat_map(|e| &e.updates).collect();
    for u in &updates {
        assert_eq!(u.state, RemoteState::Completed);
        // Each event correlates with exactly one of the submitted specs (the simulator echoes
        // every variable).
        let UpdateTarget::Correlated { key, fields } = &u.target else {
            panic!("not correlated: {:?}", u.target);
        };
        let matching = specs
            .iter()
            .filter(|s| p.correlation_key(s).as_ref() == Some(key) && p.correlates(s, fields))
            .count();
        assert_eq!(matching, 1, "{:?}", u.target);
        let out = &u.outputs[0];
        assert_eq!((out.width, out.height), (1200, 630));
        assert_eq!(out.mime_type, "image/png");
        let png = reqwest::get(&out.url).await.unwrap().bytes().await.unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
    }
    assert!(events.iter().all(|e| {
        e.delivery_id
            .as_deref()
            .is_some_and(|d| d.starts_with("del_"))
    }));
    // The poll meanwhile says "rendered, waiting for the webhook" rather than failing.
    let polled = poll_settled(&p, &key, true).await;
    assert!(polled.iter().all(|u| u.state == RemoteState::Processing));
    sim.shutdown();
}

#[tokio::test]
async fn forged_and_stale_webhooks_are_rejected() {
    let (sim, h, url) = sim_with_receiver(fast()).await;
    let p = h.adapter.clone();
    p.submit(batch("forge", vec![spec("tmpl_f", 0)]))
        .await
        .unwrap();
    wait_for("a delivery", || !h.events.lock().unwrap().is_empty()).await;
    let (headers, body) = h.raw.lock().unwrap()[0].clone();
    // Replayed 301 s after / before the signed timestamp: outside the 300 s tolerance. The
    // offsets are taken from the header's own `t=` so whole-second truncation cannot move
    // the check back inside the window.
    let signed_at = headers["x-pictify-signature"]
        .to_str()
        .unwrap()
        .split(',')
        .find_map(|part| part.strip_prefix("t="))
        .and_then(|t| t.parse::<u64>().ok())
        .expect("signature header carries t=");
    let signed_at = SystemTime::UNIX_EPOCH + Duration::from_secs(signed_at);
    let later = signed_at + Duration::from_secs(301);
    let earlier = signed_at - Duration::from_secs(301);
    // Just inside the window the same delivery is accepted, so the rejections below are
    // about time, not about anything else in the request.
    assert!(
        p.parse_webhook(&headers, &body, signed_at + Duration::from_secs(299))
            .is_ok()
    );
    assert!(matches!(
        p.parse_webhook(&headers, &body, later),
        Err(WebhookError::BadSignature(_))
    ));
    assert!(matches!(
        p.parse_webhook(&headers, &body, earlier),
        Err(WebhookError::BadSignature(_))
    ));
    // Forged: body changed under a real signature, and a signature made with another secret.
    let before = h.events.lock().unwrap().len();
    let client = reqwest::Client::new();
    let forged = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("tmpl_f", "tmpl_g");
    let resp = client
        .post(&url)
        .header(
            "X-Pictify-Signature",
            headers["x-pictify-signature"].to_str().unwrap(),
        )
        .body(forged.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let t = adgate_generator::time::unix_now();
    let other = adgate_generator::signature::header_value(b"whsec_other", "", t, forged.as_bytes());
    let resp = client
        .post(&url)
        .header("X-Pictify-Signature", other)
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(h.events.lock().unwrap().len(), before, "nothing accepted");
    sim.shutdown();
}

#[tokio::test]
async fn duplicate_deliveries_share_a_delivery_id() {
    let (sim, h, _) = sim_with_receiver(fast()).await;
    sim.update_faults(|f| f.webhook_duplicate = true);
    h.adapter
        .submit(batch("dup", vec![spec("tmpl_d", 0)]))
        .await
        .unwrap();
    wait_for("4 events", || h.events.lock().unwrap().len() >= 4).await;
    let events = h.events.lock().unwrap().clone();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *ids.entry(e.delivery_id.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(ids.len(), 2);
    assert!(ids.values().all(|n| *n == 2));
    sim.shutdown();
}

// --- cancel and errors --------------------------------------------------------------------------

#[tokio::test]
async fn cancel_stops_the_rest_of_the_batch() {
    let sim = pictify::spawn(SimConfig {
        job_duration: (Duration::from_secs(4), Duration::from_secs(6)),
        ..fast()
    })
    .await
    .unwrap();
    let p = adapter(&sim, None);
    let specs = (0..30).map(|i| spec("tmpl_c", i)).collect();
    let accepted = p.submit(batch("cancel", specs)).await.unwrap();
    let key = p.poll_key(&accepted.value[0].provider_ref);
    p.cancel(&key).await.unwrap();
    let updates = poll_settled(&p, &key, false).await;
    let cancelled = updates
        .iter()
        .filter(|u| u.state == RemoteState::Cancelled)
        .count();
    assert!(cancelled >= 25, "{cancelled} cancelled");
    assert_eq!(sim.ledger.requests(pictify::EP_CANCEL), 1);
    let err = p.cancel("batch_unknown").await.unwrap_err();
    assert!(matches!(err, GenError::Permanent { .. }), "{err:?}");
    sim.shutdown();
}

#[tokio::test]
async fn unknown_batch_polls_as_not_found_wildcard() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let p = adapter(&sim, None);
    let o = p.poll(&["batch_nope".to_owned()]).await.unwrap();
    assert_eq!(o.value.len(), 1);
    assert_eq!(
        o.value[0].target,
        UpdateTarget::PollKey("batch_nope".to_owned())
    );
    assert_eq!(o.value[0].state, RemoteState::NotFound);
    sim.shutdown();
}

#[tokio::test]
async fn provider_errors_are_classified() {
    let sim = pictify::spawn(SimConfig {
        wallet: Some(2),
        ..fast()
    })
    .await
    .unwrap();
    let p = adapter(&sim, None);
    let three = (0..3).map(|i| spec("tmpl_e", i)).collect();
    let err = p.submit(batch("money", three)).await.unwrap_err();
    assert!(
        matches!(err, GenError::InsufficientBalance { .. }),
        "{err:?}"
    );
    let err = p
        .submit(batch("missing", vec![spec("tmpl_missing", 0)]))
        .await
        .unwrap_err();
    assert!(matches!(err, GenError::Permanent { .. }), "{err:?}");

    let mut cfg = PictifyConfig::new("wrong_key");
    cfg.base_url = sim.base_url.clone();
    let wrong = Pictify::new(cfg).unwrap();
    let err = wrong.poll(&["batch_x".to_owned()]).await.unwrap_err();
    assert!(matches!(err, GenError::Unauthorized { .. }), "{err:?}");

    sim.update_faults(|f| f.error_5xx_ratio = 1.0);
    let err = p.poll(&["batch_x".to_owned()]).await.unwrap_err();
    assert!(matches!(err, GenError::Transient { .. }), "{err:?}");

    sim.set_faults(adgate_sim::Faults {
        drop_ratio: 1.0,
        ..Default::default()
    });
    let err = p
        .submit(batch("drop", vec![spec("tmpl_e", 0)]))
        .await
        .unwrap_err();
    assert!(matches!(err, GenError::UnknownOutcome { .. }), "{err:?}");
    let err = p.poll(&["batch_x".to_owned()]).await.unwrap_err();
    assert!(matches!(err, GenError::Transient { .. }), "{err:?}");

    sim.set_faults(adgate_sim::Faults {
        malformed_ratio: 1.0,
        ..Default::default()
    });
    let err = p
        .submit(batch("bad-json", vec![spec("tmpl_e", 0)]))
        .await
        .unwrap_err();
    assert!(matches!(err, GenError::Transient { .. }), "{err:?}");
    // The batch exists; the same key replays it cleanly once the fault is gone.
    sim.set_faults(adgate_sim::Faults::default());
    let replay = p
        .submit(batch("bad-json", vec![spec("tmpl_e", 0)]))
        .await
        .unwrap();
    assert_eq!(replay.value.len(), 1);
    assert_eq!(sim.ledger.creations(), 1);
    assert_eq!(sim.ledger.replays(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn mixed_groups_are_refused_before_any_request() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let p = adapter(&sim, None);
    let mut other = spec("tmpl_a", 1);
    other["format"] = json!("jpeg");
    let err = p
        .submit(batch("mixed", vec![spec("tmpl_a", 0), other]))
        .await
        .unwrap_err();
    assert!(matches!(err, GenError::Invalid { .. }));
    assert_eq!(sim.ledger.total_requests(), 0);
    sim.shutdown();
}
