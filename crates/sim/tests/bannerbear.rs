//! The Bannerbear (v5) simulator against the documents (`shared/reference/bannerbear.md`), with
//! a plain HTTP client and a receiver written from the documents (never from the adapter).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adgate_sim::common::WebhookTarget;
use adgate_sim::{SimConfig, SimHandle, bannerbear};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

mod support;

const KEY: &str = "bb_ak_v5_simtestkey";
const TEMPLATE: &str = "A89wavQyY3Bebk3djP";

fn cfg(time_scale: f64) -> SimConfig {
    SimConfig {
        api_key: KEY.to_owned(),
        time_scale,
        ..SimConfig::default()
    }
}

async fn start(cfg: SimConfig) -> (SimHandle, reqwest::Client) {
    (
        bannerbear::spawn(cfg).await.unwrap(),
        reqwest::Client::new(),
    )
}

fn body(metadata: &str) -> Value {
    json!({
        "template": TEMPLATE,
        "modifications": {
            "template": {"width": 300, "height": 200},
            "objects": [
                {"name": "title", "text": "Hello", "color": "#FF0000"},
                {"name": "photo", "background-image": "https://example.com/a.jpg"}
            ]
        },
        "formats": ["png", "jpg"],
        "metadata": metadata,
    })
}

async fn create(sim: &SimHandle, c: &reqwest::Client, body: &Value) -> reqwest::Response {
    c.post(format!("{}/v5/images", sim.base_url))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn create_uid(sim: &SimHandle, c: &reqwest::Client, body: &Value) -> String {
    let r = create(sim, c, body).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    v["uid"].as_str().unwrap().to_owned()
}

async fn get(sim: &SimHandle, c: &reqwest::Client, path: &str) -> (u16, Value) {
    let r = c
        .get(format!("{}{path}", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// Poll (bounded) until the image leaves `pending`.
async fn wait_done(sim: &SimHandle, c: &reqwest::Client, uid: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (code, v) = get(sim, c, &format!("/v5/images/{uid}")).await;
        assert_eq!(code, 200, "{v}");
        if v["status"] != "pending" {
            return v;
        }
        assert!(Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- a webhook receiver --------------------------------------------------------------------

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(Instant, HeaderMap, Bytes)>>>,
    /// Statuses to answer, in order; 200 once exhausted.
    script: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    fn deliveries(&self) -> Vec<(Instant, HeaderMap, Bytes)> {
        self.got.lock().unwrap().clone()
    }
    async fn wait_for(&self, n: usize) -> Vec<(Instant, HeaderMap, Bytes)> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let d = self.deliveries();
            if d.len() >= n {
                return d;
            }
            assert!(Instant::now() < deadline, "only {} deliveries", d.len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push((Instant::now(), headers, body));
    let code = {
        let mut s = r.script.lock().unwrap();
        if s.is_empty() { 200 } else { s.remove(0) }
    };
    StatusCode::from_u16(code).unwrap()
}

async fn receiver(script: Vec<u16>) -> (Receiver, String) {
    let r = Receiver {
        script: Arc::new(Mutex::new(script)),
        ..Receiver::default()
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

const SIGNING_KEY: &str = "bb_whsec_0123456789abcdef";

/// A sim with a pre-registered webhook resource (the sandbox stand-in) and its receiver.
async fn start_hooked(time_scale: f64, script: Vec<u16>) -> (SimHandle, reqwest::Client, Receiver) {
    let (rx, url) = receiver(script).await;
    let sim = bannerbear::spawn(SimConfig {
        webhook: Some(WebhookTarget {
            url,
            secret: SIGNING_KEY.to_owned(),
        }),
        ..cfg(time_scale)
    })
    .await
    .unwrap();
    (sim, reqwest::Client::new(), rx)
}

/// Independent computation: lowercase hex HMAC-SHA256(signing_key, raw body).
fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn assert_signed(h: &HeaderMap, body: &[u8], key: &str) {
    assert_eq!(header(h, "content-type"), Some("application/json"));
    let sig = header(h, "x-bannerbear-signature").expect("signature header");
    assert_eq!(sig, hmac_hex(key, body));
    assert_ne!(sig, hmac_hex("some other key", body));
}

// ---- auth and validation -------------------------------------------------------------------

#[tokio::test]
async fn a_wrong_or_missing_key_is_a_plain_401_with_a_message() {
    let (sim, c) = start(cfg(0.005)).await;
    let url = format!("{}/v5/images", sim.base_url);
    for auth in [Some("bb_ak_v5_wrong"), Some("v2_project_key"), None] {
        let mut req = c.post(&url).json(&body("m"));
        if let Some(k) = auth {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        let v: Value = r.json().await.unwrap();
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // The key without the Bearer scheme is not accepted either.
    let r = c
        .get(format!("{}/v5/account", sim.base_url))
        .header("authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (code, account) = get(&sim, &c, "/v5/account").await;
    assert_eq!(code, 200);
    assert_eq!(
        account["api_key"]["scopes"],
        json!([]),
        "empty = full access"
    );
    assert_eq!(sim.ledger.creations(), 0);
    assert_eq!(sim.ledger.requests(bannerbear::EP_CREATE_IMAGE), 3);
    assert_eq!(sim.ledger.requests(bannerbear::EP_ACCOUNT), 2);
    sim.shutdown();
}

#[tokio::test]
async fn payload_errors_are_400_or_422_with_a_message_and_create_nothing() {
    let (sim, c) = start(cfg(0.005)).await;
    let cases = [
        (json!({"modifications": {}}), 400),
        (json!({"template": TEMPLATE}), 400),
        // v5 has no per-request webhook URL (webhook resources instead) [V5-SPEC].
        (
            json!({"template": TEMPLATE, "modifications": {}, "webhook_url": "https://x.test/h"}),
            422,
        ),
        // v2-shaped modifications (a flat array).
        (
            json!({"template": TEMPLATE, "modifications": [{"name": "t", "text": "x"}]}),
            422,
        ),
        (
            json!({"template": TEMPLATE, "modifications": {"objects": [{"name": "t", "no-such-attr": 1}]}}),
            422,
        ),
        (
            json!({"template": TEMPLATE, "modifications": {}, "formats": ["gif"]}),
            422,
        ),
        (
            json!({"template": TEMPLATE, "modifications": {}, "scale": 9}),
            422,
        ),
        (
            json!({"template": "tmpl_missing_1", "modifications": {}}),
            404,
        ),
    ];
    for (b, want) in cases {
        let r = create(&sim, &c, &b).await;
        assert_eq!(r.status().as_u16(), want, "{b}");
        let v: Value = r.json().await.unwrap();
        assert!(v["message"].is_string(), "{v}");
    }
    let (code, v) = get(&sim, &c, "/v5/images/doesNotExist0000000").await;
    assert_eq!(code, 404);
    assert!(v["message"].is_string());
    assert_eq!(sim.ledger.creations(), 0);
    assert_eq!(sim.ledger.total_charges(), 0);
    sim.shutdown();
}

// ---- lifecycle -----------------------------------------------------------------------------

#[tokio::test]
async fn create_is_202_pending_then_polls_to_completed_with_real_pngs_and_metadata() {
    let (sim, c) = start(cfg(0.005)).await;
    let r = create(&sim, &c, &body("job_42")).await;
    assert_eq!(r.status(), 202);
    let pending: Value = r.json().await.unwrap();
    let uid = pending["uid"].as_str().unwrap().to_owned();
    assert!(uid.len() >= 18 && uid.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["template"], TEMPLATE);
    assert_eq!(pending["metadata"], "job_42");
    assert_eq!(pending["files"], json!({}));
    assert!(pending["completed_at"].is_null());
    assert!(pending.get("error").is_none());
    assert_eq!(
        pending["self"],
        format!("{}/v5/images/{uid}", sim.base_url).as_str()
    );
    assert!(pending["created_at"].as_str().unwrap().ends_with('Z'));

    let done = wait_done(&sim, &c, &uid).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["metadata"], "job_42", "metadata echoed");
    assert!(done["completed_at"].is_string());
    assert!(done.get("error").is_none());
    let files = done["files"].as_object().unwrap();
    assert_eq!(files.len(), 2, "one file per requested format: {files:?}");
    for (format, url) in files {
        let url = url.as_str().unwrap();
        assert!(url.ends_with(&format!(".{format}")), "{url}");
        // Files are on the CDN: no key needed.
        let r = c.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let want = if format == "jpg" {
            "image/jpeg"
        } else {
            "image/png"
        };
        assert_eq!(r.headers()["content-type"], want);
        assert_eq!(support::decode(&r.bytes().await.unwrap()), (want, 300, 200));
    }
    assert_eq!(sim.ledger.charges_by_job().get(&uid), Some(&1));
    assert!(sim.ledger.requests(bannerbear::EP_GET_IMAGE) >= 1);
    assert_eq!(sim.ledger.created_ids(), [uid]);
    sim.shutdown();
}

#[tokio::test]
async fn default_format_is_jpg_and_scale_multiplies_the_size() {
    let (sim, c) = start(cfg(0.005)).await;
    let uid = create_uid(
        &sim,
        &c,
        &json!({"template": TEMPLATE, "scale": 2,
                "modifications": {"template": {"width": 150, "height": 100}}}),
    )
    .await;
    let done = wait_done(&sim, &c, &uid).await;
    let files = done["files"].as_object().unwrap();
    assert_eq!(files.keys().collect::<Vec<_>>(), ["jpg"]);
    assert!(done["metadata"].is_null());
    let jpg = c
        .get(files["jpg"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(support::decode(&jpg), ("image/jpeg", 300, 200));
    sim.shutdown();
}

#[tokio::test]
async fn a_failed_render_is_status_failed_with_an_error_on_a_200_get() {
    let (sim, c) = start(SimConfig {
        failure_ratio: 1.0,
        ..cfg(0.005)
    })
    .await;
    let uid = create_uid(&sim, &c, &body("m1")).await;
    let done = wait_done(&sim, &c, &uid).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{done}"
    );
    assert_eq!(done["files"], json!({}));
    assert_eq!(done["metadata"], "m1");
    assert_eq!(
        sim.ledger.total_charges(),
        1,
        "debited at acceptance, not refunded"
    );
    sim.shutdown();
}

#[tokio::test]
async fn a_resent_create_is_a_second_image_and_a_second_charge() {
    let (sim, c) = start(cfg(0.005)).await;
    let b = body("same");
    let first = create_uid(&sim, &c, &b).await;
    let second = create_uid(&sim, &c, &b).await;
    assert_ne!(first, second, "no idempotency");
    assert_eq!(sim.ledger.creations(), 2);
    assert_eq!(sim.ledger.total_charges(), 2);
    assert_eq!(sim.ledger.created_ids(), [first.clone(), second.clone()]);
    let (code, list) = get(&sim, &c, "/v5/images?page=1").await;
    assert_eq!(code, 200);
    let uids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids, [second.as_str(), first.as_str()], "newest first");
    assert_eq!(get(&sim, &c, "/v5/images?page=2").await.1, json!([]));
    sim.shutdown();
}

// ---- rate limit and quota ------------------------------------------------------------------

#[tokio::test]
async fn the_31st_post_in_10_s_is_429_slow_down_and_gets_are_unmetered() {
    let (sim, c) = start(cfg(1.0)).await;
    let b = json!({"template": TEMPLATE, "modifications": {}});
    for i in 0..30 {
        assert_eq!(create(&sim, &c, &b).await.status(), 202, "POST {i}");
    }
    let r = create(&sim, &c, &b).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none(), "none documented");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Slow down!"})
    );
    // Reads are unmetered in v5 [MCP] README.
    for _ in 0..40 {
        assert_eq!(get(&sim, &c, "/v5/images").await.0, 200);
    }
    assert_eq!(sim.ledger.count_429(), 1);
    assert_eq!(sim.ledger.creations(), 30);
    assert_eq!(sim.ledger.requests(bannerbear::EP_CREATE_IMAGE), 31);
    sim.shutdown();
}

#[tokio::test]
async fn a_spent_quota_is_402_with_a_message() {
    let (sim, c) = start(SimConfig {
        wallet: Some(2),
        ..cfg(0.005)
    })
    .await;
    let jpg = json!({"template": TEMPLATE, "modifications": {}});
    let pdf = json!({"template": TEMPLATE, "modifications": {}, "formats": ["pdf"]});
    assert_eq!(create(&sim, &c, &jpg).await.status(), 202);
    // A PDF costs three credits; one is left.
    let r = create(&sim, &c, &pdf).await;
    assert_eq!(r.status(), 402);
    assert!(r.json::<Value>().await.unwrap()["message"].is_string());
    assert_eq!(create(&sim, &c, &jpg).await.status(), 202);
    assert_eq!(create(&sim, &c, &jpg).await.status(), 402);
    let (_, account) = get(&sim, &c, "/v5/account").await;
    assert_eq!(
        account["quota"],
        json!({"max": 2, "current": 2, "remaining": 0})
    );
    assert_eq!(sim.ledger.creations(), 2);
    sim.shutdown();

    let (sim, c) = start(cfg(0.005)).await;
    sim.update_faults(|f| f.insufficient_after_charges = Some(1));
    assert_eq!(create(&sim, &c, &jpg).await.status(), 202);
    assert_eq!(create(&sim, &c, &jpg).await.status(), 402);
    assert_eq!(sim.ledger.total_charges(), 1);
    sim.shutdown();
}

// ---- webhooks ------------------------------------------------------------------------------

#[tokio::test]
async fn a_finished_image_is_pushed_signed_with_the_signing_key() {
    let (sim, c, rx) = start_hooked(0.005, vec![]).await;
    let uid = create_uid(&sim, &c, &body("job_7")).await;
    let got = rx.wait_for(1).await;
    let (_, h, raw) = &got[0];
    assert_signed(h, raw, SIGNING_KEY);
    let payload: Value = serde_json::from_slice(raw).unwrap();
    assert_eq!(payload["uid"], uid.as_str());
    assert_eq!(payload["status"], "completed");
    assert_eq!(payload["metadata"], "job_7");
    assert_eq!(payload["files"].as_object().unwrap().len(), 2);
    // The push matches what polling says.
    assert_eq!(wait_done(&sim, &c, &uid).await, payload);
    let records = sim.ledger.webhooks();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, Some(200));
    assert_eq!(records[0].delivery_id, uid);
    assert_eq!(records[0].event, "image.completed");
    sim.shutdown();
}

#[tokio::test]
async fn a_failed_render_is_pushed_too_with_its_error() {
    let (rx, url) = receiver(vec![]).await;
    let sim = bannerbear::spawn(SimConfig {
        failure_ratio: 1.0,
        webhook: Some(WebhookTarget {
            url,
            secret: SIGNING_KEY.to_owned(),
        }),
        ..cfg(0.005)
    })
    .await
    .unwrap();
    let c = reqwest::Client::new();
    let uid = create_uid(&sim, &c, &body("f")).await;
    let got = rx.wait_for(1).await;
    let (_, h, raw) = &got[0];
    assert_signed(h, raw, SIGNING_KEY);
    let payload: Value = serde_json::from_slice(raw).unwrap();
    assert_eq!(payload["uid"], uid.as_str());
    assert_eq!(payload["status"], "failed");
    assert!(payload["error"].is_string());
    sim.shutdown();
}

#[tokio::test]
async fn webhook_resources_return_the_signing_key_once_and_filter_by_event() {
    let (sim, c) = start(cfg(0.005)).await;
    let (rx_all, url_all) = receiver(vec![]).await;
    let (rx_failed, url_failed) = receiver(vec![]).await;
    let post = |b: Value| {
        c.post(format!("{}/v5/webhooks", sim.base_url))
            .bearer_auth(KEY)
            .json(&b)
            .send()
    };
    let r = post(json!({"name": "all", "url": url_all, "resource": "image"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let key = created["signing_key"].as_str().unwrap().to_owned();
    assert_eq!(created["event"], "all_events");
    assert_eq!(created["status"], "active");
    let hook_uid = created["uid"].as_str().unwrap().to_owned();
    let r = post(json!({"name": "failures", "url": url_failed, "event": "failed"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Missing url / bad enum: 422 [V5-SPEC].
    assert_eq!(post(json!({"name": "x"})).await.unwrap().status(), 422);
    let r = post(json!({"name": "x", "url": url_all, "event": "done"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    let (code, one) = get(&sim, &c, &format!("/v5/webhooks/{hook_uid}")).await;
    assert_eq!(code, 200);
    assert!(
        one.get("signing_key").is_none(),
        "only returned at creation"
    );
    let (_, list) = get(&sim, &c, "/v5/webhooks").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|w| w.get("signing_key").is_none())
    );

    let uid = create_uid(&sim, &c, &body("w")).await;
    let got = rx_all.wait_for(1).await;
    assert_signed(&got[0].1, &got[0].2, &key);
    wait_done(&sim, &c, &uid).await;
    wait_until("the delivery record", || sim.ledger.webhooks().len() == 1).await;
    assert!(rx_failed.deliveries().is_empty(), "completed ≠ failed");

    // Disabled, then deleted: nothing more is sent to it.
    let r = c
        .patch(format!("{}/v5/webhooks/{hook_uid}", sim.base_url))
        .bearer_auth(KEY)
        .json(&json!({"name": "all", "url": url_all, "status": "disabled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "disabled");
    let r = c
        .delete(format!("{}/v5/webhooks/{hook_uid}", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get(&sim, &c, &format!("/v5/webhooks/{hook_uid}")).await.0,
        404
    );
    sim.shutdown();
}

#[tokio::test]
async fn a_failed_delivery_is_retried_on_the_scaled_ladder_with_the_same_body() {
    // Ladder 60 s, 300 s × 0.001 = 60 ms, 300 ms.
    let (sim, c, rx) = start_hooked(0.001, vec![500, 503]).await;
    create_uid(&sim, &c, &body("r")).await;
    let got = rx.wait_for(3).await;
    for (_, h, raw) in &got {
        assert_signed(h, raw, SIGNING_KEY);
        assert_eq!(raw, &got[0].2, "same body");
    }
    let gap1 = got[1].0 - got[0].0;
    let gap2 = got[2].0 - got[1].0;
    assert!(gap1 >= Duration::from_millis(55), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(280), "{gap2:?}");
    wait_until("three records", || sim.ledger.webhooks().len() == 3).await;
    let statuses: Vec<_> = sim.ledger.webhooks().iter().map(|w| w.status).collect();
    assert_eq!(statuses, [Some(500), Some(503), Some(200)]);
    sim.shutdown();
}

#[tokio::test]
async fn duplicate_fault_delivers_the_same_push_twice() {
    let (sim, c, rx) = start_hooked(0.005, vec![]).await;
    sim.update_faults(|f| f.webhook_duplicate = true);
    create_uid(&sim, &c, &body("d")).await;
    let got = rx.wait_for(2).await;
    assert_eq!(got[0].2, got[1].2);
    assert_eq!(
        header(&got[0].1, "x-bannerbear-signature"),
        header(&got[1].1, "x-bannerbear-signature")
    );
    sim.shutdown();
}

// ---- injected faults -----------------------------------------------------------------------

#[tokio::test]
async fn injected_faults_look_like_the_real_failures() {
    let (sim, c) = start(cfg(0.005)).await;

    sim.update_faults(|f| f.burst_429 = 1);
    let (code, v) = get(&sim, &c, "/v5/account").await;
    assert_eq!(code, 429);
    assert_eq!(v["message"], "Slow down!");

    sim.update_faults(|f| f.error_5xx_ratio = 1.0);
    let (code, v) = get(&sim, &c, "/v5/account").await;
    assert_eq!(code, 500);
    assert!(v["message"].is_string());
    assert_eq!(sim.ledger.count_5xx(), 1);

    sim.update_faults(|f| {
        f.error_5xx_ratio = 0.0;
        f.malformed_ratio = 1.0;
    });
    let r = c
        .get(format!("{}/v5/account", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());

    sim.update_faults(|f| {
        f.malformed_ratio = 0.0;
        f.drop_ratio = 1.0;
    });
    let r = c
        .get(format!("{}/v5/account", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await;
    assert!(r.is_err(), "connection dropped");
    assert_eq!(sim.ledger.count_dropped(), 1);
    // A dropped create still did the work: the strict reading of a lost answer.
    let r = c
        .post(format!("{}/v5/images", sim.base_url))
        .bearer_auth(KEY)
        .json(&body("drop"))
        .send()
        .await;
    assert!(r.is_err());
    assert_eq!(sim.ledger.creations(), 1);

    sim.update_faults(|f| {
        f.drop_ratio = 0.0;
        f.latency = Duration::from_millis(50);
    });
    let t = Instant::now();
    assert_eq!(get(&sim, &c, "/v5/account").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(50));
    sim.shutdown();
}

fn create_in_background(
    sim: &SimHandle,
    c: &reqwest::Client,
    body: Value,
) -> tokio::task::JoinHandle<Result<(u16, Value), reqwest::Error>> {
    let req = c
        .post(format!("{}/v5/images", sim.base_url))
        .bearer_auth(KEY)
        .json(&body);
    tokio::spawn(async move {
        let r = req.send().await?;
        let code = r.status().as_u16();
        Ok((code, r.json().await.unwrap_or(Value::Null)))
    })
}

#[tokio::test]
async fn submit_answer_delay_lets_the_signed_push_arrive_before_the_202() {
    let (sim, c, rx) = start_hooked(0.001, vec![]).await;
    // Renders take 30–60 ms; the answer is held 500 ms of wall time.
    sim.update_faults(|f| f.submit_answer_delay = Duration::from_millis(500));
    let post = create_in_background(&sim, &c, body("early"));
    let got = rx.wait_for(1).await;
    assert!(!post.is_finished(), "pushed while the POST is unanswered");
    let (_, h, raw) = &got[0];
    assert_signed(h, raw, SIGNING_KEY);
    let payload: Value = serde_json::from_slice(raw).unwrap();
    assert_eq!(payload["status"], "completed");
    assert_eq!(sim.ledger.total_charges(), 1, "billed before the answer");
    let (code, answer) = post.await.unwrap().expect("the answer does come");
    assert_eq!(code, 202);
    assert_eq!(answer["uid"], payload["uid"]);
    assert_eq!(
        answer["status"], "pending",
        "the answer is the object as accepted"
    );
    sim.shutdown();
}

#[tokio::test]
async fn cut_after_create_drops_the_answer_but_the_image_exists_and_a_resend_is_new() {
    let (sim, c, rx) = start_hooked(0.005, vec![]).await;
    sim.update_faults(|f| f.cut_after_create = 1);
    let sent = create_in_background(&sim, &c, body("cut")).await.unwrap();
    assert!(sent.is_err(), "transport error, no response: {sent:?}");
    assert_eq!(sim.ledger.count_cut(), 1);
    let ids = sim.ledger.created_ids();
    assert_eq!(ids.len(), 1);
    let uid = ids[0].clone();
    let done = wait_done(&sim, &c, &uid).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["metadata"], "cut");
    let got = rx.wait_for(1).await;
    assert_signed(&got[0].1, &got[0].2, SIGNING_KEY);
    // The lost image can be found by listing (metadata is the only handle [V5-SPEC]).
    let (_, list) = get(&sim, &c, "/v5/images").await;
    assert_eq!(list[0]["metadata"], "cut");
    let again = create_uid(&sim, &c, &body("cut")).await;
    assert_ne!(again, uid);
    assert_eq!(sim.ledger.creations(), 2);
    assert_eq!(sim.ledger.total_charges(), 2);
    assert_eq!(sim.ledger.count_cut(), 1, "spent on the first");
    sim.shutdown();
}

#[tokio::test]
async fn suppress_webhooks_sends_nothing_while_polling_shows_completion() {
    let (sim, c, rx) = start_hooked(0.005, vec![]).await;
    sim.update_faults(|f| f.suppress_webhooks = true);
    let uid = create_uid(&sim, &c, &body("s")).await;
    assert_eq!(wait_done(&sim, &c, &uid).await["status"], "completed");
    wait_until("the suppressed record", || {
        !sim.ledger.webhooks().is_empty()
    })
    .await;
    let records = sim.ledger.webhooks();
    assert_eq!(records.len(), 1);
    assert!(records[0].suppressed && records[0].status.is_none());
    assert_eq!(records[0].delivery_id, uid);
    assert!(rx.deliveries().is_empty(), "nothing was sent");
    sim.shutdown();
}

#[tokio::test]
async fn each_format_is_served_as_real_bytes_of_its_own() {
    let (sim, c) = start(cfg(0.005)).await;
    let mut hashes = std::collections::HashSet::new();
    let mut jpg_sizes = Vec::new();
    for quality in [5, 100] {
        let mut b = body("formats");
        b["formats"] = json!(["jpg", "png", "webp", "avif", "pdf"]);
        b["quality"] = json!(quality);
        let uid = create_uid(&sim, &c, &b).await;
        let done = wait_done(&sim, &c, &uid).await;
        let files = done["files"].as_object().unwrap();
        assert_eq!(files.len(), 5, "{files:?}");
        for (format, url) in files {
            let url = url.as_str().unwrap();
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            // avif has no encoder here: PNG bytes, and the header says so.
            let want = match format.as_str() {
                "jpg" => "image/jpeg",
                "webp" => "image/webp",
                "pdf" => "application/pdf",
                _ => "image/png",
            };
            assert_eq!(r.headers()["content-type"], want, "{url}");
            let bytes = r.bytes().await.unwrap();
            assert_eq!(support::decode(&bytes), (want, 300, 200), "{url}");
            assert!(
                hashes.insert(support::sha256_hex(&bytes)),
                "{url} repeats a file"
            );
            let again = c.get(url).send().await.unwrap().bytes().await.unwrap();
            assert_eq!(again, bytes, "{url}: same bytes every time");
            if format == "jpg" || format == "pdf" {
                jpg_sizes.push(bytes.len());
            }
        }
    }
    // [jpg, pdf] at quality 5, then at 100 (the PDF embeds a JPEG of that quality).
    assert_eq!(jpg_sizes.len(), 4);
    for low in 0..2 {
        assert!(
            jpg_sizes[low] * 2 < jpg_sizes[low + 2],
            "quality 5 is far smaller than quality 100: {jpg_sizes:?}"
        );
    }
    sim.shutdown();
}
