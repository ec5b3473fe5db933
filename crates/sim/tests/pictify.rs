//! The Pictify simulator checked against the documents with a plain HTTP client and a webhook
//! receiver written from the webhook docs (not from the adapter).

// Test helpers outside #[test] fns unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adgate_sim::common::SimConfig;
use adgate_sim::{SimHandle, WebhookTarget, pictify};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

mod support;

const KEY: &str = "sim_key";
const SECRET: &str = "whsec_test_secret";

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.005,
        job_duration: (Duration::from_secs(2), Duration::from_secs(6)),
        ..SimConfig::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn sets(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"title": format!("Post {i}"), "author": "Alice"}))
        .collect()
}

async fn render(
    sim: &SimHandle,
    uid: &str,
    body: Value,
    key: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = client()
        .post(format!("{}/templates/{uid}/batch-render", sim.base_url))
        .bearer_auth(KEY)
        .json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

async fn results(sim: &SimHandle, batch: &str) -> (StatusCode, Value) {
    let resp = client()
        .get(format!("{}/templates/batch/{batch}/results", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn wait_terminal(sim: &SimHandle, batch: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = results(sim, batch).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let s = body["status"].as_str().unwrap_or_default().to_owned();
        if ["completed", "partial", "failed", "cancelled"].contains(&s.as_str()) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "batch never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- a webhook receiver written from [PX-LIVE:concepts/webhooks] ------------------------------

#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn event(&self) -> String {
        self.json()["event"].as_str().unwrap().to_owned()
    }
    fn header(&self, name: &str) -> String {
        self.headers[name].to_str().unwrap().to_owned()
    }
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Answer 500 to this many deliveries first.
    fail_first: Arc<Mutex<u32>>,
}

impl Receiver {
    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
    fn count(&self, event: &str) -> usize {
        self.all().iter().filter(|r| r.event() == event).count()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push(Received { headers, body });
    let mut f = r.fail_first.lock().unwrap();
    if *f > 0 {
        *f -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = axum::Router::new()
        .route("/hooks/pictify", post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/pictify", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

async fn sim_with_webhooks(cfg: SimConfig) -> (SimHandle, Receiver) {
    let (r, url) = receiver().await;
    let cfg = SimConfig {
        webhook: Some(WebhookTarget {
            url,
            secret: SECRET.to_owned(),
        }),
        ..cfg
    };
    (pictify::spawn(cfg).await.unwrap(), r)
}

/// Independent verification: HMAC-SHA256(secret, "<t>.<raw body>"), hex, |now − t| ≤ 300 s.
fn verify(received: &Received) -> bool {
    let header = received.header("x-pictify-signature");
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1.push(v.to_owned()),
            _ => return false,
        }
    }
    let Some(t) = t else { return false };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&received.body);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&signed);
    let expected = hex::encode(mac.finalize().into_bytes());
    v1.contains(&expected)
}

// --- batch-render -----------------------------------------------------------------------------

#[tokio::test]
async fn batch_render_answers_202_with_documented_shape() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let (status, headers, body) = render(
        &sim,
        "tmpl_blog_card",
        json!({"variableSets": sets(3), "format": "png"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body["batchId"].as_str().unwrap().starts_with("batch_"));
    assert_eq!(body["status"], "pending");
    assert_eq!(body["totalItems"], 3);
    assert!(body["message"].is_string());
    assert!(body.get("data").is_none(), "no envelope");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(sim.ledger.requests(pictify::EP_BATCH_RENDER), 1);
    assert_eq!(sim.ledger.creations(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn invalid_requests_are_rejected() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let (s, _, body) = render(&sim, "tmpl_x", json!({ "variableSets": sets(101) }), None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "variableSets");
    assert!(body["message"].is_string());
    let (s, _, _) = render(&sim, "tmpl_x", json!({"variableSets": []}), None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _, _) = render(
        &sim,
        "tmpl_x",
        json!({"variableSets": sets(1), "format": "jpg"}),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _, _) = render(
        &sim,
        "tmpl_x",
        json!({"variableSets": sets(1), "quality": 0.05}),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _, body) = render(&sim, "tmpl_missing", json!({"variableSets": sets(1)}), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body["message"].is_string());
    // Wrong key → 401 in the {error, code} shape.
    let resp = client()
        .post(format!("{}/templates/tmpl_x/batch-render", sim.base_url))
        .bearer_auth("nope")
        .json(&json!({"variableSets": sets(1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].is_string() && body["code"].is_string());
    assert_eq!(sim.ledger.creations(), 0);
    sim.shutdown();
}

// --- results and statuses ---------------------------------------------------------------------

#[tokio::test]
async fn results_report_items_without_urls() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let (_, _, created) = render(&sim, "tmpl_a", json!({"variableSets": sets(4)}), None).await;
    let batch = created["batchId"].as_str().unwrap();
    let (status, first) = results(&sim, batch).await;
    assert_eq!(status, StatusCode::OK);
    assert!(["pending", "processing"].contains(&first["status"].as_str().unwrap()));
    let done = wait_terminal(&sim, batch).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["progress"], 100);
    assert_eq!(done["totalItems"], 4);
    assert_eq!(done["completedItems"], 4);
    assert_eq!(done["failedItems"], 0);
    assert!(done["createdAt"].is_string() && done["startedAt"].is_string());
    assert!(done["completedAt"].is_string());
    let items = done["results"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["success"], true);
        assert_eq!(
            item["variables"],
            json!(["author", "title"]),
            "names, not values"
        );
        assert!(item.get("url").is_none(), "poll carries no URL: {item}");
    }
    assert!(
        !done.to_string().contains("http"),
        "no URL anywhere: {done}"
    );
    assert_eq!(sim.ledger.total_charges(), 4);
    let (status, _) = results(&sim, "batch_unknown").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    sim.shutdown();
}

#[tokio::test]
async fn failures_give_partial_and_failed_with_documented_codes() {
    let cfg = SimConfig {
        failure_ratio: 0.5,
        ..fast()
    };
    let sim = pictify::spawn(cfg).await.unwrap();
    let (_, _, created) = render(
        &sim,
        "tmpl_a",
        json!({"variableSets": sets(20), "concurrency": 10}),
        None,
    )
    .await;
    let done = wait_terminal(&sim, created["batchId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "partial", "{done}");
    let failed: Vec<&Value> = done["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["success"] == false)
        .collect();
    assert_eq!(done["failedItems"], failed.len());
    assert!(!failed.is_empty());
    for f in &failed {
        assert!(f["error"].is_string());
        let code = f["errorCode"].as_str().unwrap();
        assert!(
            [
                "INVALID_VARIABLE",
                "EXPRESSION_ERROR",
                "IMAGE_FETCH_FAILED",
                "RENDER_TIMEOUT"
            ]
            .contains(&code)
        );
    }
    // Only rendered items are charged.
    assert_eq!(
        sim.ledger.total_charges(),
        20 - failed.len() as u64,
        "failed items are not charged"
    );
    sim.shutdown();

    let cfg = SimConfig {
        failure_ratio: 1.0,
        ..fast()
    };
    let sim = pictify::spawn(cfg).await.unwrap();
    let (_, _, created) = render(&sim, "tmpl_a", json!({"variableSets": sets(2)}), None).await;
    let done = wait_terminal(&sim, created["batchId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["failedItems"], 2);
    assert_eq!(sim.ledger.total_charges(), 0);
    sim.shutdown();
}

#[tokio::test]
async fn cancel_keeps_finished_items_and_skips_the_rest() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let (_, _, created) = render(
        &sim,
        "tmpl_a",
        json!({"variableSets": sets(30), "concurrency": 1}),
        None,
    )
    .await;
    let batch = created["batchId"].as_str().unwrap().to_owned();
    // Wait for at least one rendered item, then cancel.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = results(&sim, &batch).await;
        if body["completedItems"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancel = |id: String| {
        let url = format!("{}/templates/batch/{id}/cancel", sim.base_url);
        async move { client().post(url).bearer_auth(KEY).send().await.unwrap() }
    };
    let resp = cancel(batch.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["batchId"], batch.as_str());
    assert_eq!(body["status"], "cancelled");
    assert!(body["message"].is_string());
    let (_, after) = results(&sim, &batch).await;
    assert_eq!(after["status"], "cancelled");
    let done = after["completedItems"].as_u64().unwrap();
    assert!((1..30).contains(&done), "{after}");
    assert_eq!(after["results"].as_array().unwrap().len() as u64, done);
    // Nothing renders after the cancel, not even the item that was mid-render.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, later) = results(&sim, &batch).await;
    assert_eq!(
        later["completedItems"].as_u64().unwrap(),
        done,
        "in-flight item skipped"
    );
    assert_eq!(later["status"], "cancelled");
    // A repeated cancel answers the same; unknown batches are 404.
    assert_eq!(cancel(batch.clone()).await.status(), StatusCode::OK);
    assert_eq!(
        cancel("batch_nope".to_owned()).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(sim.ledger.requests(pictify::EP_CANCEL), 3);
    sim.shutdown();
}

#[tokio::test]
async fn cancelling_a_finished_batch_is_refused() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let (_, _, created) = render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    let batch = created["batchId"].as_str().unwrap();
    wait_terminal(&sim, batch).await;
    let resp = client()
        .post(format!("{}/templates/batch/{batch}/cancel", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    sim.shutdown();
}

// --- idempotency and money --------------------------------------------------------------------

#[tokio::test]
async fn idempotency_key_replays_and_rejects_a_different_body() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let body = json!({"variableSets": sets(2)});
    let (s1, _, first) = render(&sim, "tmpl_a", body.clone(), Some("key-1")).await;
    let (s2, _, second) = render(&sim, "tmpl_a", body.clone(), Some("key-1")).await;
    assert_eq!(s1, StatusCode::ACCEPTED);
    assert_eq!(s2, StatusCode::ACCEPTED);
    assert_eq!(first, second, "cached response");
    assert_eq!(sim.ledger.creations(), 1);
    assert_eq!(sim.ledger.replays(), 1);
    let (s3, _, _) = render(
        &sim,
        "tmpl_a",
        json!({"variableSets": sets(3)}),
        Some("key-1"),
    )
    .await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY);
    let (s4, _, other) = render(&sim, "tmpl_a", body, Some("key-2")).await;
    assert_eq!(s4, StatusCode::ACCEPTED);
    assert_ne!(other["batchId"], first["batchId"]);
    assert_eq!(sim.ledger.creations_by_key().get("key-1"), Some(&1));
    wait_terminal(&sim, first["batchId"].as_str().unwrap()).await;
    assert_eq!(sim.ledger.charges_by_key().get("key-1"), Some(&2));
    sim.shutdown();
}

#[tokio::test]
async fn wallet_refuses_batches_it_cannot_cover() {
    let cfg = SimConfig {
        wallet: Some(3),
        ..fast()
    };
    let sim = pictify::spawn(cfg).await.unwrap();
    let (s, _, body) = render(&sim, "tmpl_a", json!({"variableSets": sets(4)}), None).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
    assert!(body["error"].is_string());
    assert_eq!(body["code"], "quota_exceeded");
    let (s, _, _) = render(&sim, "tmpl_a", json!({"variableSets": sets(3)}), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // The three credits are reserved even before they are charged.
    let (s, _, _) = render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(sim.ledger.creations(), 1);
    sim.shutdown();

    let sim = pictify::spawn(fast()).await.unwrap();
    sim.update_faults(|f| f.insufficient_after_charges = Some(0));
    let (s, _, _) = render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
    sim.shutdown();
}

// --- webhooks ---------------------------------------------------------------------------------

#[tokio::test]
async fn webhooks_are_signed_and_carry_values_and_a_png_url() {
    let (sim, rx) = sim_with_webhooks(fast()).await;
    let (_, _, created) = render(
        &sim,
        "tmpl_blog_card",
        json!({"variableSets": sets(2)}),
        None,
    )
    .await;
    let batch = created["batchId"].as_str().unwrap().to_owned();
    wait_until("3 webhooks", || rx.all().len() >= 3).await;
    let all = rx.all();
    for r in &all {
        assert!(verify(r), "signature of {}", r.event());
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-pictify-event"), r.event());
        assert!(r.header("x-pictify-delivery-id").starts_with("del_"));
        let mut tampered = r.clone();
        tampered.body = Bytes::from([&r.body[..], b" "].concat());
        assert!(!verify(&tampered), "signature covers the raw body");
    }
    let rendered: Vec<Value> = all
        .iter()
        .filter(|r| r.event() == "render.completed")
        .map(Received::json)
        .collect();
    assert_eq!(rendered.len(), 2);
    let mut titles = Vec::new();
    for ev in &rendered {
        assert!(ev["timestamp"].is_string());
        let d = &ev["data"];
        assert_eq!(d["type"], "image");
        assert_eq!(d["source"], "api");
        assert_eq!(d["templateId"], "tmpl_blog_card");
        assert!(d["imageId"].as_str().unwrap().starts_with("img_"));
        assert_eq!(d["variables"]["author"], "Alice", "values, not names");
        titles.push(d["variables"]["title"].as_str().unwrap().to_owned());
        let png = client()
            .get(d["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(png.status(), StatusCode::OK);
        assert_eq!(png.headers()["content-type"], "image/png");
        let bytes = png.bytes().await.unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        assert_eq!(w, d["width"].as_u64().unwrap() as u32);
    }
    titles.sort();
    assert_eq!(titles, ["Post 0", "Post 1"]);
    let done = all.iter().find(|r| r.event() == "batch.completed").unwrap();
    let d = &done.json()["data"];
    assert_eq!(d["batchId"], batch.as_str());
    assert_eq!(d["templateUid"], "tmpl_blog_card");
    assert_eq!(d["status"], "completed");
    assert_eq!(
        (&d["totalCount"], &d["completedCount"], &d["failedCount"]),
        (&json!(2), &json!(2), &json!(0))
    );
    assert!(d["duration"].is_u64());
    let records = sim.ledger.webhooks();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.status == Some(200)));
    sim.shutdown();
}

#[tokio::test]
async fn failed_items_send_render_failed_and_batch_failed() {
    let (sim, rx) = sim_with_webhooks(SimConfig {
        failure_ratio: 1.0,
        ..fast()
    })
    .await;
    render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    wait_until("2 webhooks", || rx.all().len() >= 2).await;
    let failed = rx
        .all()
        .into_iter()
        .find(|r| r.event() == "render.failed")
        .unwrap()
        .json();
    assert_eq!(failed["data"]["templateId"], "tmpl_a");
    assert!(failed["data"]["error"].is_string() && failed["data"]["errorCode"].is_string());
    assert_eq!(rx.count("batch.failed"), 1);
    sim.shutdown();
}

#[tokio::test]
async fn duplicate_fault_delivers_twice_with_one_delivery_id() {
    let (sim, rx) = sim_with_webhooks(fast()).await;
    sim.update_faults(|f| f.webhook_duplicate = true);
    render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    wait_until("4 deliveries", || rx.all().len() >= 4).await;
    let all = rx.all();
    for event in ["render.completed", "batch.completed"] {
        let ids: Vec<String> = all
            .iter()
            .filter(|r| r.event() == event)
            .map(|r| r.header("x-pictify-delivery-id"))
            .collect();
        assert_eq!(ids.len(), 2, "{event}");
        assert_eq!(ids[0], ids[1], "same delivery id");
    }
    assert!(all.iter().all(verify));
    sim.shutdown();
}

#[tokio::test]
async fn reorder_fault_sends_batch_completed_first() {
    let (sim, rx) = sim_with_webhooks(fast()).await;
    sim.update_faults(|f| f.webhook_reorder = true);
    render(&sim, "tmpl_a", json!({"variableSets": sets(3)}), None).await;
    wait_until("4 deliveries", || rx.all().len() >= 4).await;
    let events: Vec<String> = rx.all().iter().map(Received::event).collect();
    assert_eq!(events[0], "batch.completed", "{events:?}");
    assert_eq!(
        events[1..]
            .iter()
            .filter(|e| *e == "render.completed")
            .count(),
        3
    );
    sim.shutdown();
}

#[tokio::test]
async fn non_2xx_deliveries_are_retried_with_the_same_delivery_id() {
    // 1 min backoff × 0.005 = 0.3 s.
    let (sim, rx) = sim_with_webhooks(fast()).await;
    *rx.fail_first.lock().unwrap() = 1;
    render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    wait_until("3 attempts", || rx.all().len() >= 3).await;
    wait_until("batch.completed", || rx.count("batch.completed") >= 1).await;
    let all = rx.all();
    let first = all[0].header("x-pictify-delivery-id");
    let retried: Vec<&Received> = all
        .iter()
        .filter(|r| r.header("x-pictify-delivery-id") == first)
        .collect();
    assert_eq!(retried.len(), 2, "failed delivery retried once");
    assert_eq!(retried[0].body, retried[1].body, "same body on retry");
    let statuses: Vec<Option<u16>> = sim
        .ledger
        .webhooks()
        .iter()
        .filter(|w| w.delivery_id == first)
        .map(|w| w.status)
        .collect();
    assert_eq!(statuses, [Some(500), Some(200)]);
    sim.shutdown();
}

#[tokio::test]
async fn no_webhooks_without_a_subscription() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let (_, _, created) = render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    wait_terminal(&sim, created["batchId"].as_str().unwrap()).await;
    assert!(sim.ledger.webhooks().is_empty());
    sim.shutdown();
}

// --- rate limits and faults -------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_headers_use_unix_reset_and_429_has_retry_after() {
    let cfg = SimConfig {
        rate_limit: Some((3, Duration::from_secs(60))),
        ..fast()
    };
    let sim = pictify::spawn(cfg).await.unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let resp = client()
            .get(format!("{}/templates/batch/batch_x/results", sim.base_url))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let h = resp.headers();
        assert_eq!(h["x-ratelimit-limit"], "3");
        remaining.push(h["x-ratelimit-remaining"].to_str().unwrap().to_owned());
        let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(reset >= now && reset <= now + 5, "Unix timestamp: {reset}");
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let resp = client()
        .post(format!("{}/templates/tmpl_a/batch-render", sim.base_url))
        .bearer_auth(KEY)
        .json(&json!({"variableSets": sets(1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["retryAfter"], retry);
    assert_eq!(sim.ledger.count_429(), 1);
    assert_eq!(sim.ledger.creations(), 0);
    sim.shutdown();
}

#[tokio::test]
async fn burst_429_fault_answers_429_then_recovers() {
    let sim = pictify::spawn(fast()).await.unwrap();
    sim.update_faults(|f| f.burst_429 = 2);
    for _ in 0..2 {
        let (s, h, _) = render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert!(h.contains_key("retry-after"));
    }
    let (s, _, _) = render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(sim.ledger.count_429(), 2);
    sim.shutdown();
}

#[tokio::test]
async fn drop_malformed_and_5xx_faults() {
    let sim = pictify::spawn(fast()).await.unwrap();
    let url = format!("{}/templates/batch/batch_x/results", sim.base_url);
    sim.update_faults(|f| f.drop_ratio = 1.0);
    let err = client().get(&url).bearer_auth(KEY).send().await;
    assert!(err.is_err(), "connection dropped without a response");
    assert_eq!(sim.ledger.count_dropped(), 1);

    sim.set_faults(adgate_sim::Faults {
        error_5xx_ratio: 1.0,
        ..Default::default()
    });
    let resp = client().get(&url).bearer_auth(KEY).send().await.unwrap();
    assert!(resp.status().is_server_error());
    assert_eq!(sim.ledger.count_5xx(), 1);

    sim.set_faults(adgate_sim::Faults {
        malformed_ratio: 1.0,
        ..Default::default()
    });
    let (_, _, created) = render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    assert_eq!(created, Value::Null, "truncated JSON does not parse");
    assert_eq!(sim.ledger.creations(), 1, "the batch was still created");
    sim.shutdown();
}

// --- submit-answer faults and lost pushes -----------------------------------------------------

/// Send a batch-render in its own task so the test can watch the receiver meanwhile.
fn render_in_background(
    sim: &SimHandle,
    body: Value,
    key: Option<&str>,
) -> tokio::task::JoinHandle<Result<(StatusCode, Value), reqwest::Error>> {
    let url = format!("{}/templates/tmpl_blog_card/batch-render", sim.base_url);
    let key = key.map(str::to_owned);
    tokio::spawn(async move {
        let mut req = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .post(url)
            .bearer_auth(KEY)
            .json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await?;
        let status = resp.status();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    })
}

#[tokio::test]
async fn submit_answer_delay_lets_render_completed_arrive_before_the_202() {
    let (sim, rx) = sim_with_webhooks(fast()).await;
    // Items take 10–30 ms of sim time; the answer is held for 5 s of wall time.
    sim.update_faults(|f| f.submit_answer_delay = Duration::from_secs(5));
    let post = render_in_background(&sim, json!({"variableSets": sets(1)}), None);
    wait_until("batch.completed before the answer", || {
        rx.count("batch.completed") == 1
    })
    .await;
    assert!(
        !post.is_finished(),
        "the webhooks arrived while the POST was still unanswered"
    );
    let all = rx.all();
    let rendered = all
        .iter()
        .find(|r| r.event() == "render.completed")
        .expect("render.completed delivered");
    assert!(verify(rendered), "signed as documented");
    // The work was done at once: created, rendered and charged before the answer.
    assert_eq!(sim.ledger.creations(), 1);
    assert_eq!(sim.ledger.total_charges(), 1);
    let (status, answer) = post.await.unwrap().expect("the answer does come");
    assert_eq!(status, StatusCode::ACCEPTED);
    let done = all.iter().find(|r| r.event() == "batch.completed").unwrap();
    assert_eq!(answer["batchId"], done.json()["data"]["batchId"]);
    assert_eq!(
        sim.ledger.created_ids(),
        [answer["batchId"].as_str().unwrap()]
    );
    sim.shutdown();
}

#[tokio::test]
async fn cut_after_create_drops_the_answer_but_the_batch_runs_and_a_resend_replays() {
    let (sim, rx) = sim_with_webhooks(fast()).await;
    sim.update_faults(|f| f.cut_after_create = 1);
    let body = json!({"variableSets": sets(2)});
    let sent = render_in_background(&sim, body.clone(), Some("cut-key"))
        .await
        .unwrap();
    assert!(sent.is_err(), "transport error, no response: {sent:?}");
    assert_eq!(sim.ledger.count_cut(), 1);
    assert_eq!(sim.ledger.creations(), 1);
    let ids = sim.ledger.created_ids();
    assert_eq!(ids.len(), 1);
    let batch = ids[0].clone();
    // The batch exists, renders and bills as if the answer had arrived.
    let done = wait_terminal(&sim, &batch).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(sim.ledger.charges_by_key().get("cut-key"), Some(&2));
    wait_until("its webhooks", || rx.count("batch.completed") == 1).await;
    assert_eq!(rx.count("render.completed"), 2);
    assert!(rx.all().iter().all(verify));
    // The fault is spent; the resend with the same key replays the cached 202
    // [PX-LIVE:api-reference/overview] instead of creating a second batch.
    let (status, _, replay) = render(&sim, "tmpl_blog_card", body, Some("cut-key")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(replay["batchId"], batch.as_str());
    assert_eq!(sim.ledger.replays(), 1);
    assert_eq!(sim.ledger.creations(), 1);
    assert_eq!(
        sim.ledger.count_cut(),
        1,
        "replays do not consume the fault"
    );
    sim.shutdown();
}

#[tokio::test]
async fn cut_after_create_spares_refusals_and_counts_only_creations() {
    let sim = pictify::spawn(fast()).await.unwrap();
    sim.update_faults(|f| f.cut_after_create = 1);
    // A refused submit creates nothing, so it is answered and the cut waits for a creation.
    let (status, _, _) = render(&sim, "tmpl_missing", json!({"variableSets": sets(1)}), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let sent = render_in_background(&sim, json!({"variableSets": sets(1)}), None)
        .await
        .unwrap();
    assert!(sent.is_err());
    let (status, _, _) = render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "only the next N creations are cut"
    );
    assert_eq!(sim.ledger.count_cut(), 1);
    assert_eq!(sim.ledger.creations(), 2);
    sim.shutdown();
}

#[tokio::test]
async fn suppress_webhooks_sends_nothing_while_results_show_completion() {
    let (sim, rx) = sim_with_webhooks(fast()).await;
    sim.update_faults(|f| f.suppress_webhooks = true);
    let (_, _, created) = render(&sim, "tmpl_a", json!({"variableSets": sets(2)}), None).await;
    let done = wait_terminal(&sim, created["batchId"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["completedItems"], 2);
    // 2 × render.completed + batch.completed would have gone out; each is on record as
    // suppressed, and a suppressed delivery is never sent later (no retry of a lost push).
    let ledger = sim.ledger.clone();
    wait_until("3 suppressed deliveries", || {
        ledger.webhooks().iter().filter(|w| w.suppressed).count() == 3
    })
    .await;
    let records = sim.ledger.webhooks();
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records.iter().all(|w| w.suppressed && w.status.is_none()));
    assert!(rx.all().is_empty(), "nothing reached the receiver");
    sim.shutdown();
}

// --- issue 21: subscriptions per event with their own secrets; plan caps --------------------

fn verify_with(received: &Received, secret: &str) -> bool {
    let header = received.header("x-pictify-signature");
    let Some((t, v1)) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&received.body);
    hex::encode(mac.finalize().into_bytes()) == v1
}

async fn subs(sim: &SimHandle) -> Vec<Value> {
    let v: Value = client()
        .get(format!("{}/webhook-subscriptions", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["subscriptions"].as_array().unwrap().clone()
}

/// [PX-LIVE:concepts/webhooks]: one subscription per event, its secret shown once at
/// creation; each event is signed with its own subscription's secret.
#[tokio::test]
async fn each_event_is_signed_with_its_own_subscriptions_secret() {
    let (rx, url) = receiver().await;
    let sim = pictify::spawn(fast()).await.unwrap();
    let mut secrets = std::collections::HashMap::new();
    for event in ["render.completed", "batch.completed"] {
        let resp = client()
            .post(format!("{}/webhook-subscriptions", sim.base_url))
            .bearer_auth(KEY)
            .json(&json!({"event": event, "targetUrl": url, "platform": "custom"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let v: Value = resp.json().await.unwrap();
        let sub = &v["subscription"];
        assert!(sub["uid"].as_str().unwrap().starts_with("wh_"));
        assert_eq!(sub["status"], "active");
        let secret = sub["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("whsec_"));
        secrets.insert(event.to_owned(), secret);
    }
    assert_ne!(secrets["render.completed"], secrets["batch.completed"]);
    // Shown once: the list has no secrets.
    assert!(subs(&sim).await.iter().all(|s| s.get("secret").is_none()));
    render(&sim, "tmpl_a", json!({"variableSets": sets(2)}), None).await;
    wait_until("batch.completed", || rx.count("batch.completed") >= 1).await;
    wait_until("renders", || rx.count("render.completed") >= 2).await;
    for r in rx.all() {
        let event = r.event();
        assert_eq!(r.header("x-pictify-event"), event);
        assert!(
            verify_with(&r, &secrets[&event]),
            "{event} signed with its secret"
        );
        let other = if event == "batch.completed" {
            "render.completed"
        } else {
            "batch.completed"
        };
        assert!(!verify_with(&r, &secrets[other]));
    }
    sim.shutdown();
}

/// [PX-DOCREPO:concepts/webhooks.mdx]: after 5 failed attempts the webhook is paused; pause and
/// resume are API calls too.
#[tokio::test]
async fn a_subscription_is_paused_after_five_failed_attempts_and_resumes() {
    let (sim, rx) = sim_with_webhooks(SimConfig {
        time_scale: 0.0005,
        ..fast()
    })
    .await;
    *rx.fail_first.lock().unwrap() = 1000;
    render(&sim, "tmpl_a", json!({"variableSets": sets(1)}), None).await;
    let paused = |subs: &[Value]| {
        subs.iter()
            .find(|s| s["event"] == "render.completed")
            .map(|s| s["status"].as_str().unwrap_or_default().to_owned())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if paused(&subs(&sim).await).as_deref() == Some("paused") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempts = rx
        .all()
        .iter()
        .filter(|r| r.event() == "render.completed")
        .count();
    assert_eq!(attempts, 5, "five attempts, then paused");
    let uid = subs(&sim)
        .await
        .iter()
        .find(|s| s["event"] == "render.completed")
        .map(|s| s["uid"].as_str().unwrap().to_owned())
        .unwrap();
    let resp = client()
        .post(format!(
            "{}/webhook-subscriptions/{uid}/resume",
            sim.base_url
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(paused(&subs(&sim).await).as_deref(), Some("active"));
    let resp = client()
        .post(format!(
            "{}/webhook-subscriptions/wh_nope/pause",
            sim.base_url
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    sim.shutdown();
}

/// [PX-LIVE:api-reference/batch]: the Free plan runs 1 batch at a time and 10 items per batch;
/// the answer at the cap is undocumented (the simulator refuses, the stricter reading).
#[tokio::test]
async fn the_free_plan_refuses_a_second_running_batch_and_big_batches() {
    let sim = pictify::spawn_with(
        SimConfig {
            job_duration: (Duration::from_secs(200), Duration::from_secs(200)),
            ..fast()
        },
        pictify::PictifyOptions {
            plan: Some(pictify::Plan::Free),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (s, _, _) = render(&sim, "tmpl_a", json!({"variableSets": sets(11)}), None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _, _) = render(&sim, "tmpl_a", json!({"variableSets": sets(2)}), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _, b) = render(&sim, "tmpl_a", json!({"variableSets": sets(2)}), None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b["code"], "concurrent_batch_limit");
    assert_eq!(sim.ledger.refusals("concurrent_batches"), 1);
    assert_eq!(sim.ledger.max_overlapping_spans(), 1);
    sim.shutdown();
}

/// [PX-LIVE:authentication]: Free allows 1,000 requests a day, every request counted; the
/// answer past it is a 429 with `quota_exceeded` ([PX-PY] errors.py maps it to quota).
#[tokio::test]
async fn the_free_plan_refuses_the_1001st_request_of_a_day() {
    let sim = pictify::spawn_with(
        SimConfig {
            // Lift the per-minute limit so only the daily one applies.
            rate_limit: Some((1_000_000, Duration::from_secs(60))),
            ..fast()
        },
        pictify::PictifyOptions {
            plan: Some(pictify::Plan::Free),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let c = client();
    let url = format!("{}/templates/batch/batch_none/results", sim.base_url);
    for _ in 0..1000 {
        let s = c.get(&url).bearer_auth(KEY).send().await.unwrap().status();
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let resp = c.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "quota_exceeded");
    assert_eq!(sim.ledger.refusals("daily_requests"), 1);
    sim.shutdown();
}

#[tokio::test]
async fn outputs_are_real_files_in_the_requested_format_and_quality() {
    let (sim, rx) = sim_with_webhooks(fast()).await;
    // One template per batch, so each render.completed names the batch it belongs to.
    let batches = [
        (
            "tmpl_jpeg_low",
            json!({"format": "jpeg", "quality": 0.1, "layouts": ["square", "story"]}),
        ),
        ("tmpl_jpeg_high", json!({"format": "jpeg", "quality": 1.0})),
        ("tmpl_webp", json!({"format": "webp", "quality": 0.5})),
        ("tmpl_png", json!({})),
    ];
    for (uid, options) in &batches {
        let mut body = options.clone();
        body["variableSets"] = json!(sets(2));
        let (status, _, v) = render(&sim, uid, body, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    }
    // 2 items × 2 layouts + 2 + 2 + 2.
    wait_until("10 renders", || rx.count("render.completed") >= 10).await;
    let mut by_template: std::collections::HashMap<String, Vec<Vec<u8>>> = Default::default();
    let mut hashes = std::collections::HashSet::new();
    for ev in rx.all().iter().filter(|r| r.event() == "render.completed") {
        let d = &ev.json()["data"];
        let url = d["url"].as_str().unwrap();
        let r = client().get(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        let bytes = r.bytes().await.unwrap().to_vec();
        let (sniffed, w, h) = support::decode(&bytes);
        assert_eq!(content_type, sniffed, "{url}: header and bytes agree");
        let extension = url.rsplit('.').next().unwrap();
        assert_eq!(sniffed, format!("image/{extension}"), "{url}");
        assert_eq!(u64::from(w), d["width"].as_u64().unwrap());
        assert_eq!(u64::from(h), d["height"].as_u64().unwrap());
        assert!(
            hashes.insert(support::sha256_hex(&bytes)),
            "{url} repeats a file"
        );
        let again = client()
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(again, bytes, "{url}: same bytes every time");
        let other_extension = url.replace(&format!(".{extension}"), ".gif");
        let r = client().get(&other_extension).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{other_extension}");
        let template = d["templateId"].as_str().unwrap().to_owned();
        by_template.entry(template).or_default().push(bytes);
    }
    assert_eq!(
        by_template["tmpl_jpeg_low"].len(),
        4,
        "one image per item and layout"
    );
    let (low, high) = (
        &by_template["tmpl_jpeg_low"][0],
        &by_template["tmpl_jpeg_high"][0],
    );
    assert!(
        low.len() * 2 < high.len(),
        "quality 0.1 ({} B) is well below quality 1.0 ({} B)",
        low.len(),
        high.len()
    );
    sim.shutdown();
}
