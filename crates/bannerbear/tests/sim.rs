//! The adapter against the Bannerbear (v5) simulator: create → 202 → poll, outputs per format,
//! failures, error mapping, lost answers, and signed webhook deliveries that bind their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use adgate_bannerbear::{Bannerbear, BannerbearConfig};
use adgate_generator::{
    GenError, Generator, ProviderUpdate, RemoteState, SubmitBatch, SubmitItem, UpdateTarget,
    WebhookError, WebhookEvent,
};
use adgate_sim::common::WebhookTarget;
use adgate_sim::{SimConfig, SimHandle, bannerbear};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "bb_ak_v5_simtestkey";
const TEMPLATE: &str = "A89wavQyY3Bebk3djP";
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn cfg(time_scale: f64) -> SimConfig {
    SimConfig {
        api_key: KEY.to_owned(),
        time_scale,
        ..SimConfig::default()
    }
}

fn adapter_for(sim: &SimHandle, tweak: impl FnOnce(&mut BannerbearConfig)) -> Bannerbear {
    let mut c = BannerbearConfig {
        base_url: sim.base_url.clone(),
        ..BannerbearConfig::new(KEY)
    };
    tweak(&mut c);
    Bannerbear::new(c).unwrap()
}

fn spec(formats: &[&str]) -> Value {
    json!({
        "template": TEMPLATE,
        "modifications": {
            "template": {"width": 600, "height": 314},
            "objects": [
                {"name": "title", "attributes": {"text": "Hello", "color": "#FF0000"}},
                {"name": "photo", "attributes": {"background-image": "https://example.com/a.jpg"}}
            ]
        },
        "formats": formats,
        "scale": 2,
    })
}

async fn submit_as(a: &Bannerbear, job: &str, spec: Value) -> Result<String, GenError> {
    let out = a
        .submit(SubmitBatch {
            idempotency_key: "unused-by-bannerbear".into(),
            items: vec![SubmitItem {
                job_id: job.into(),
                spec,
            }],
        })
        .await?;
    assert_eq!(out.value.len(), 1);
    assert!(!out.value[0].replayed);
    assert_eq!(out.value[0].job_id, job);
    Ok(out.value[0].provider_ref.clone())
}

async fn submit(a: &Bannerbear, spec: Value) -> Result<String, GenError> {
    submit_as(a, "job_0123abcd", spec).await
}

async fn poll_once(a: &Bannerbear, uid: &str) -> Result<ProviderUpdate, GenError> {
    let mut out = a.poll(&[uid.to_owned()]).await?;
    assert_eq!(out.value.len(), 1);
    Ok(out.value.remove(0))
}

async fn poll_to_end(a: &Bannerbear, uid: &str) -> ProviderUpdate {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let u = poll_once(a, uid).await.unwrap();
        assert_eq!(u.target, UpdateTarget::ProviderRef(uid.to_owned()));
        if u.state != RemoteState::Processing {
            return u;
        }
        assert!(Instant::now() < deadline, "did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn submit_poll_complete_with_one_output_per_format() {
    let sim = bannerbear::spawn(cfg(0.002)).await.unwrap();
    let a = adapter_for(&sim, |_| {});
    let uid = submit(&a, spec(&["png", "webp", "jpg"])).await.unwrap();
    assert_eq!(
        poll_once(&a, &uid).await.unwrap().state,
        RemoteState::Processing
    );
    let end = poll_to_end(&a, &uid).await;
    assert_eq!(end.state, RemoteState::Completed, "{end:?}");
    let mut got: Vec<(String, String, u32, u32)> = end
        .outputs
        .iter()
        .map(|o| (o.format.clone(), o.mime_type.clone(), o.width, o.height))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("jpg".into(), "image/jpeg".into(), 1200, 628),
            ("png".into(), "image/png".into(), 1200, 628),
            ("webp".into(), "image/webp".into(), 1200, 628),
        ]
    );
    assert!(end.outputs.iter().all(|o| o.url.starts_with(&sim.base_url)));
    assert_eq!(sim.ledger.creations(), 1);
    // The create carried the job's identity in metadata (here without a secret: no token).
    let raw: Value = reqwest::Client::new()
        .get(format!("{}/v5/images/{uid}", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["metadata"], "adgate_job=job_0123abcd");
    // A uid Bannerbear does not know, and a key that is no uid (never sent).
    let unknown = poll_once(&a, "AAAAAAAAAAAAAAAAAAAA").await.unwrap();
    assert_eq!(unknown.state, RemoteState::NotFound);
    let before = sim.ledger.total_requests();
    let garbage = poll_once(&a, "../account").await.unwrap();
    assert_eq!(garbage.state, RemoteState::NotFound);
    assert_eq!(sim.ledger.total_requests(), before);
    sim.shutdown();
}

#[tokio::test]
async fn a_failed_render_is_failed_with_its_error() {
    let sim = bannerbear::spawn(SimConfig {
        failure_ratio: 1.0,
        ..cfg(0.002)
    })
    .await
    .unwrap();
    let a = adapter_for(&sim, |_| {});
    let uid = submit(&a, spec(&["png"])).await.unwrap();
    let end = poll_to_end(&a, &uid).await;
    assert_eq!(end.state, RemoteState::Failed);
    let e = end.error.unwrap();
    assert_eq!(
        (e.code.as_str(), e.provider_code.as_str()),
        ("PROVIDER_JOB_FAILED", "failed")
    );
    assert!(!e.message.is_empty());
    sim.shutdown();
}

#[tokio::test]
async fn provider_errors_are_classified() {
    let sim = bannerbear::spawn(SimConfig {
        wallet: Some(1),
        ..cfg(0.002)
    })
    .await
    .unwrap();
    let a = adapter_for(&sim, |_| {});
    // 404 template not in the workspace; 422 unknown attribute: the caller's to fix.
    let mut missing = spec(&["png"]);
    missing["template"] = json!("missingTemplate1");
    let e = submit(&a, missing).await.unwrap_err();
    assert!(
        matches!(&e, GenError::Invalid { provider_code, .. } if provider_code == "404"),
        "{e:?}"
    );
    let mut odd = spec(&["png"]);
    odd["modifications"]["objects"][0]["attributes"]["fontt-size"] = json!(3);
    let e = submit(&a, odd).await.unwrap_err();
    assert!(
        matches!(&e, GenError::Invalid { provider_code, .. } if provider_code == "422"),
        "{e:?}"
    );

    let bad_key = adapter_for(&sim, |c| c.api_key = "bb_ak_v5_wrongkey".into());
    let e = submit(&bad_key, spec(&["png"])).await.unwrap_err();
    assert!(matches!(e, GenError::Unauthorized { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrongkey"), "no key in errors: {e}");
    let e = bad_key
        .poll(&["AAAAAAAAAAAAAAAAAAAA".into()])
        .await
        .unwrap_err();
    assert!(matches!(e, GenError::Unauthorized { .. }), "{e:?}");

    // One credit: the first create spends it, the second is 402.
    submit(&a, spec(&["png"])).await.unwrap();
    let e = submit(&a, spec(&["png"])).await.unwrap_err();
    assert!(matches!(e, GenError::InsufficientBalance { .. }), "{e:?}");

    // 429 "Slow down!" without Retry-After: the engine's default applies.
    sim.update_faults(|f| f.burst_429 = 1);
    let e = submit(&a, spec(&["png"])).await.unwrap_err();
    assert!(
        matches!(e, GenError::RateLimited { retry_after: None }),
        "{e:?}"
    );
    assert_eq!(sim.ledger.creations(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn the_documented_rate_limit_surfaces_as_rate_limited() {
    // 30 POSTs / 10 s [BB-V5]; the 31st in the window is refused.
    let sim = bannerbear::spawn(cfg(1.0)).await.unwrap();
    let a = adapter_for(&sim, |_| {});
    assert_eq!(a.limits().budget.requests, 30);
    for _ in 0..30 {
        submit(&a, spec(&["png"])).await.unwrap();
    }
    let e = submit(&a, spec(&["png"])).await.unwrap_err();
    assert!(matches!(e, GenError::RateLimited { .. }), "{e:?}");
    // Polls are not metered in v5 [MCP].
    let uid = sim.ledger.created_ids()[0].clone();
    assert!(poll_once(&a, &uid).await.is_ok());
    sim.shutdown();
}

#[tokio::test]
async fn lost_answers_to_a_create_are_unknown_outcomes_and_polls_are_transient() {
    let sim = bannerbear::spawn(cfg(0.002)).await.unwrap();
    let a = adapter_for(&sim, |_| {});
    let ok = submit(&a, spec(&["png"])).await.unwrap();

    sim.update_faults(|f| f.cut_after_create = 1);
    let e = submit(&a, spec(&["png"])).await.unwrap_err();
    assert!(matches!(e, GenError::UnknownOutcome { .. }), "{e:?}");
    assert_eq!(sim.ledger.creations(), 2, "the cut one was created");

    for fault in 0..3 {
        sim.update_faults(|f| {
            f.drop_ratio = f64::from(u8::from(fault == 0));
            f.malformed_ratio = f64::from(u8::from(fault == 1));
            f.error_5xx_ratio = f64::from(u8::from(fault == 2));
        });
        let e = submit(&a, spec(&["png"])).await.unwrap_err();
        assert!(
            matches!(e, GenError::UnknownOutcome { .. }),
            "fault {fault}: {e:?}"
        );
        let e = poll_once(&a, &ok).await.unwrap_err();
        assert!(
            matches!(e, GenError::Transient { .. }),
            "fault {fault}: {e:?}"
        );
    }

    // Connection refused: never sent, safe to resend.
    let dead = Bannerbear::new(BannerbearConfig {
        base_url: "http://127.0.0.1:9".into(),
        ..BannerbearConfig::new(KEY)
    })
    .unwrap();
    let e = submit(&dead, spec(&["png"])).await.unwrap_err();
    assert!(matches!(e, GenError::Transient { .. }), "{e:?}");
    sim.shutdown();
}

// ---- webhooks ------------------------------------------------------------------------------

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes, Result<WebhookEvent, WebhookError>)>>>;

#[derive(Clone)]
struct Hook {
    adapter: Arc<Bannerbear>,
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

async fn listen(adapter: Arc<Bannerbear>) -> (Seen, String) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/webhooks/bannerbear", axum::routing::post(hook))
        .with_state(Hook {
            adapter,
            seen: seen.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/bannerbear",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, url)
}

async fn wait_seen(seen: &Seen, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "no webhook arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn receiver(secret: &str) -> Arc<Bannerbear> {
    Arc::new(
        Bannerbear::new(BannerbearConfig {
            webhook_secret: Some(secret.into()),
            webhooks_reachable: true,
            ..BannerbearConfig::new(KEY)
        })
        .unwrap(),
    )
}

async fn sim_with_hook(url: &str, secret: &str) -> SimHandle {
    bannerbear::spawn(SimConfig {
        webhook: Some(WebhookTarget {
            url: url.to_owned(),
            secret: secret.to_owned(),
        }),
        ..cfg(0.002)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_signed_delivery_from_the_sim_completes_and_binds_the_job() {
    let (seen, url) = listen(receiver(SECRET)).await;
    let sim = sim_with_hook(&url, SECRET).await;
    let a = adapter_for(&sim, |c| {
        c.webhook_secret = Some(SECRET.into());
        c.webhooks_reachable = true;
    });
    assert!(a.limits().push.webhooks);
    let uid = submit(&a, spec(&["png", "jpg"])).await.unwrap();
    wait_seen(&seen, 1).await;
    let (headers, body, result) = seen.lock().unwrap().remove(0);
    assert!(headers.contains_key("x-bannerbear-signature"));
    let ev = result.expect("verified");
    assert_eq!(ev.bound_job.as_deref(), Some("job_0123abcd"));
    assert_eq!(ev.delivery_id, Some(format!("{uid}:completed")));
    let u = &ev.updates[0];
    assert_eq!(u.target, UpdateTarget::ProviderRef(uid.clone()));
    assert_eq!(u.state, RemoteState::Completed);
    assert_eq!(u.outputs.len(), 2);
    // The webhook says what a final poll says.
    let polled = poll_once(&a, &uid).await.unwrap();
    assert_eq!(polled.state, u.state);
    let urls = |us: &[adgate_generator::Output]| {
        let mut v: Vec<String> = us.iter().map(|o| o.url.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(urls(&polled.outputs), urls(&u.outputs));
    // The same delivery replayed two hours later is stale; tampered, it is forged.
    let later = SystemTime::now() + Duration::from_secs(2 * 3600);
    assert_eq!(
        a.parse_webhook(&headers, &body, later),
        Err(WebhookError::BadSignature("delivery is stale"))
    );
    let tampered = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("job_0123abcd", "job_ffff");
    assert!(matches!(
        a.parse_webhook(&headers, tampered.as_bytes(), SystemTime::now()),
        Err(WebhookError::BadSignature(_))
    ));
    sim.shutdown();
}

#[tokio::test]
async fn a_lost_create_answer_still_binds_by_the_signed_metadata() {
    let (seen, url) = listen(receiver(SECRET)).await;
    let sim = sim_with_hook(&url, SECRET).await;
    let a = adapter_for(&sim, |c| c.webhook_secret = Some(SECRET.into()));
    sim.update_faults(|f| f.cut_after_create = 1);
    let e = submit_as(&a, "job_lost0001", spec(&["png"]))
        .await
        .unwrap_err();
    assert!(matches!(e, GenError::UnknownOutcome { .. }), "{e:?}");
    wait_seen(&seen, 1).await;
    let (_, _, result) = seen.lock().unwrap().remove(0);
    let ev = result.expect("verified");
    assert_eq!(ev.bound_job.as_deref(), Some("job_lost0001"));
    assert_eq!(
        ev.updates[0].target,
        UpdateTarget::ProviderRef(sim.ledger.created_ids()[0].clone())
    );
    assert_eq!(ev.updates[0].state, RemoteState::Completed);
    sim.shutdown();
}

#[tokio::test]
async fn failed_renders_are_delivered_as_failures() {
    let (seen, url) = listen(receiver(SECRET)).await;
    let sim = bannerbear::spawn(SimConfig {
        failure_ratio: 1.0,
        webhook: Some(WebhookTarget {
            url,
            secret: SECRET.into(),
        }),
        ..cfg(0.002)
    })
    .await
    .unwrap();
    let a = adapter_for(&sim, |c| c.webhook_secret = Some(SECRET.into()));
    submit(&a, spec(&["png"])).await.unwrap();
    wait_seen(&seen, 1).await;
    let (_, _, result) = seen.lock().unwrap().remove(0);
    let ev = result.expect("verified (dated by created_at: a failure has no completed_at)");
    assert_eq!(ev.updates[0].state, RemoteState::Failed);
    assert_eq!(ev.bound_job.as_deref(), Some("job_0123abcd"));
    sim.shutdown();
}

#[tokio::test]
async fn deliveries_signed_with_another_key_are_refused() {
    let other = "f".repeat(64);
    let (seen, url) = listen(receiver(&other)).await;
    let sim = sim_with_hook(&url, SECRET).await;
    let a = adapter_for(&sim, |c| c.webhook_secret = Some(SECRET.into()));
    submit(&a, spec(&["png"])).await.unwrap();
    // Refused with 401, so the sim retries (scaled ladder): two attempts seen.
    wait_seen(&seen, 2).await;
    let s = seen.lock().unwrap();
    assert!(
        s.iter()
            .all(|x| matches!(x.2, Err(WebhookError::BadSignature(_))))
    );
    assert_eq!(s[0].1, s[1].1, "a retry carries the same body");
    // The refusal is about the key: the holder of the sim's key accepts it.
    assert!(
        receiver(SECRET)
            .parse_webhook(&s[1].0, &s[1].1, SystemTime::now())
            .is_ok()
    );
    drop(s);
    sim.shutdown();
}
