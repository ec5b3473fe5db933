//! The StaticAdsLab simulator, exercised by a plain HTTP client written from the provider's
//! documents (not by the adapter).
// Test code: a failed unwrap is a failed assertion (clippy.toml only exempts #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use adgate_sim::staticadslab::{EDITABLE_SIDE, FLAT_SIDE, spawn};
use adgate_sim::{Faults, SimConfig, SimHandle};
use serde_json::{Value, json};

mod support;

const KEY: &str = "sal_live_test";

fn cfg() -> SimConfig {
    SimConfig {
        api_key: KEY.to_owned(),
        time_scale: 0.005,
        ..SimConfig::default()
    }
}

fn body(i: usize) -> Value {
    json!({
        "design_template_id": format!("dt_{i:016x}"),
        "brand_id": "brand_a1b2c3d4e5f67890",
        "product_id": "prod_a1b2c3d4e5f67890",
        "audience_id": "aud_a1b2c3d4e5f67890",
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(sim: &SimHandle, body: &Value, key: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/image-ads", sim.base_url))
        .header("X-API-Key", KEY)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

async fn get_json(sim: &SimHandle, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .get(format!("{}{path}", sim.base_url))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap())
}

async fn create(sim: &SimHandle, i: usize) -> String {
    let r = post(sim, &body(i), None).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    v["data"]["id"].as_str().unwrap().to_owned()
}

/// Poll one ad until it leaves `processing` (bounded).
async fn wait_terminal(sim: &SimHandle, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, v) = get_json(sim, &format!("/v1/image-ads/{id}")).await;
        assert_eq!(status, 200);
        if v["data"]["status"] != "processing" {
            return v["data"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ad {id} never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_meta(v: &Value) {
    assert!(
        v["meta"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
    assert!(v["meta"]["timestamp"].as_str().unwrap().ends_with('Z'));
}

fn is_hex16(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn create_returns_202_processing_envelope() {
    let sim = spawn(cfg()).await.unwrap();
    let mut b = body(1);
    b["editable"] = json!(true);
    b["node_overrides"] = json!({"hero": {"imageFillUrl": "https://cdn.example.com/h.jpg"}});
    let r = post(&sim, &b, None).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["ratelimit-limit"], "100");
    assert_eq!(r.headers()["ratelimit-remaining"], "99");
    let v: Value = r.json().await.unwrap();
    let d = &v["data"];
    let id = d["id"].as_str().unwrap();
    assert!(id.starts_with("ia_") && is_hex16(&id[3..]), "{id}");
    assert_eq!(d["status"], "processing");
    assert_eq!(d["sku_code"], "editable_image_ad");
    assert!(d["image_url"].is_null());
    assert_eq!(d["brand_id"], "brand_a1b2c3d4e5f67890");
    assert_meta(&v);
    assert_eq!(sim.ledger.creations(), 1);
    assert_eq!(sim.ledger.requests("POST /v1/image-ads"), 1);
    sim.shutdown();
}

#[tokio::test]
async fn validation_errors_carry_details() {
    let sim = spawn(cfg()).await.unwrap();
    // Missing field → 400.
    let mut b = body(1);
    b.as_object_mut().unwrap().remove("audience_id");
    let r = post(&sim, &b, None).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(v["error"]["details"][0]["field"], "audience_id");
    assert_meta(&v);
    // A well-formed id with the wrong prefix → 422 [SAL:reference/id-prefixes].
    let mut b = body(1);
    b["brand_id"] = json!("prod_a1b2c3d4e5f67890");
    let r = post(&sim, &b, None).await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"][0]["field"], "brand_id");
    // A malformed node override.
    let mut b = body(1);
    b["node_overrides"] = json!({"hero": {"image_fill_url": "x"}});
    let r = post(&sim, &b, None).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"][0]["field"], "node_overrides.hero");
    assert_eq!(sim.ledger.creations(), 0);
    sim.shutdown();
}

#[tokio::test]
async fn missing_or_wrong_key_is_401() {
    let sim = spawn(cfg()).await.unwrap();
    for key in [None, Some("sal_live_wrong")] {
        let mut req = client().get(format!("{}/v1/image-ads/ia_0000000000000000", sim.base_url));
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("ratelimit-remaining"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "UNAUTHORIZED");
        assert_meta(&v);
    }
    // Bearer auth is explicitly not accepted [SAL:agents].
    let r = client()
        .get(format!("{}/v1/image-ads?ids=ia_x", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    sim.shutdown();
}

#[tokio::test]
async fn unknown_ad_is_404_envelope() {
    let sim = spawn(cfg()).await.unwrap();
    let (status, _, v) = get_json(&sim, "/v1/image-ads/ia_0123456789abcdef").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "NOT_FOUND");
    sim.shutdown();
}

#[tokio::test]
async fn batch_poll_omits_unknown_ids_and_caps_count() {
    let sim = spawn(cfg()).await.unwrap();
    let a = create(&sim, 1).await;
    let b = create(&sim, 2).await;
    let ids = format!("{b},ia_ffffffffffffffff,{a}");
    let (status, headers, v) = get_json(&sim, &format!("/v1/image-ads?ids={ids}")).await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("ratelimit-reset"));
    let got: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![b.as_str(), a.as_str()]);
    assert_eq!(v["has_more"], false);
    assert_meta(&v);
    let many: Vec<String> = (0..101).map(|i| format!("ia_{i:016x}")).collect();
    let (status, _, v) = get_json(&sim, &format!("/v1/image-ads?ids={}", many.join(","))).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["details"][0]["field"], "ids");
    assert_eq!(sim.ledger.requests("GET /v1/image-ads"), 2);
    sim.shutdown();
}

fn ids_of(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

/// [SAL:reference/pagination]: `limit` default 20, max 100, `has_more`, cursor
/// `starting_after=<last id>`. Whether `?ids=` obeys it is open (providers.md §6 q4): the
/// simulator's default is the stricter reading (it does); `sal_ids_unpaged` is the other one.
#[tokio::test]
async fn batch_poll_pages_by_limit_unless_unpaged() {
    let sim = spawn(cfg()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(create(&sim, i).await);
    }
    let all = ids.join(",");
    // No limit: the documented default page of 20.
    let (status, _, v) = get_json(&sim, &format!("/v1/image-ads?ids={all}")).await;
    assert_eq!(status, 200);
    assert_eq!(ids_of(&v), ids[..20].to_vec());
    assert_eq!(v["has_more"], true);
    // The next page starts after the last id of the previous one.
    let (_, _, v) = get_json(
        &sim,
        &format!("/v1/image-ads?ids={all}&starting_after={}", ids[19]),
    )
    .await;
    assert_eq!(ids_of(&v), ids[20..].to_vec());
    assert_eq!(v["has_more"], false);
    // `limit` as large as the id set: one page.
    let (_, _, v) = get_json(&sim, &format!("/v1/image-ads?ids={all}&limit=25")).await;
    assert_eq!(ids_of(&v), ids);
    assert_eq!(v["has_more"], false);
    let (_, _, v) = get_json(&sim, &format!("/v1/image-ads?ids={all}&limit=10")).await;
    assert_eq!(ids_of(&v).len(), 10);
    assert_eq!(v["has_more"], true);
    // Out-of-range limit and an unknown cursor are 400 VALIDATION_ERROR, as on the plain list.
    for q in [
        "limit=0",
        "limit=101",
        "limit=x",
        "starting_after=ia_ffffffffffffffff",
    ] {
        let (status, _, v) = get_json(&sim, &format!("/v1/image-ads?ids={all}&{q}")).await;
        assert_eq!(status, 400, "{q}");
        assert_eq!(v["error"]["code"], "VALIDATION_ERROR", "{q}");
    }
    // The other reading: every id on one page whatever `limit` says.
    sim.set_faults(Faults {
        sal_ids_unpaged: true,
        ..Faults::default()
    });
    let (_, _, v) = get_json(&sim, &format!("/v1/image-ads?ids={all}&limit=5")).await;
    assert_eq!(ids_of(&v), ids);
    assert_eq!(v["has_more"], false);
    // A server whose page maximum is lower than `limit` still says `has_more`.
    sim.set_faults(Faults {
        sal_page_cap: Some(7),
        ..Faults::default()
    });
    let (_, _, v) = get_json(&sim, &format!("/v1/image-ads?ids={all}&limit=25")).await;
    assert_eq!(ids_of(&v), ids[..7].to_vec());
    assert_eq!(v["has_more"], true);
    sim.shutdown();
}

#[tokio::test]
async fn lifecycle_completes_with_a_fetchable_4k_png() {
    let sim = spawn(cfg()).await.unwrap();
    let id = create(&sim, 1).await;
    let (_, _, v) = get_json(&sim, &format!("/v1/image-ads/{id}")).await;
    let p = &v["data"]["progress"];
    let pct = p["percentage"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&pct), "{p}");
    assert!(p["step"].is_string() && p["message"].is_string());
    let d = wait_terminal(&sim, &id).await;
    assert_eq!(d["status"], "completed");
    assert_eq!(d["width"], FLAT_SIDE);
    assert_eq!(d["height"], FLAT_SIDE);
    assert!(d["duration_ms"].as_u64().unwrap() > 0);
    assert!(d["completed_at"].is_string());
    assert!(d["progress"].is_null());
    let url = d["image_url"].as_str().unwrap();
    assert!(url.starts_with(&sim.base_url), "{url}");
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let png = r.bytes().await.unwrap();
    assert_eq!(support::decode(&png), ("image/png", FLAT_SIDE, FLAT_SIDE));
    // "A single 4K PNG" [SEED-2], compressed: 3840² RGB stored raw would be 44 MB.
    assert!(
        (256 << 10..4 << 20).contains(&png.len()),
        "{} bytes",
        png.len()
    );
    let again = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(again, png, "the same file every time");
    sim.shutdown();
}

#[tokio::test]
async fn every_output_file_has_its_own_bytes() {
    let sim = spawn(cfg()).await.unwrap();
    let (flat_a, flat_b) = (create(&sim, 1).await, create(&sim, 2).await);
    let mut b = body(3);
    b["editable"] = json!(true);
    let r = post(&sim, &b, None).await;
    assert_eq!(r.status(), 202);
    let editable = r.json::<Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut hashes = std::collections::HashSet::new();
    for id in [&flat_a, &flat_b, &editable] {
        let d = wait_terminal(&sim, id).await;
        assert_eq!(d["status"], "completed");
        let mut urls = vec![d["image_url"].as_str().unwrap().to_owned()];
        if let Some(figma) = d["figma_render_url"].as_str() {
            urls.push(figma.to_owned());
        }
        let side = if id == &editable {
            EDITABLE_SIDE
        } else {
            FLAT_SIDE
        };
        assert_eq!(d["width"], side);
        for url in urls {
            let r = client().get(&url).send().await.unwrap();
            assert_eq!(r.headers()["content-type"], "image/png");
            let bytes = r.bytes().await.unwrap();
            assert_eq!(support::decode(&bytes), ("image/png", side, side), "{url}");
            assert!(
                hashes.insert(support::sha256_hex(&bytes)),
                "{url} repeats a file"
            );
        }
    }
    assert_eq!(
        hashes.len(),
        4,
        "two flat ads, an editable render and its Figma render"
    );
    sim.shutdown();
}

#[tokio::test]
async fn public_base_url_is_used_in_outputs() {
    let sim = spawn(SimConfig {
        public_base_url: Some("https://sandbox.example/sal/".into()),
        ..cfg()
    })
    .await
    .unwrap();
    let id = create(&sim, 1).await;
    let d = wait_terminal(&sim, &id).await;
    assert_eq!(
        d["image_url"],
        format!("https://sandbox.example/sal/files/{id}.png")
    );
    sim.shutdown();
}

#[tokio::test]
async fn failed_ads_report_pipeline_error_and_are_free() {
    let sim = spawn(SimConfig {
        failure_ratio: 1.0,
        ..cfg()
    })
    .await
    .unwrap();
    let id = create(&sim, 1).await;
    let d = wait_terminal(&sim, &id).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["error"]["code"], "PIPELINE_ERROR");
    assert_eq!(
        d["error"]["message"],
        "Image generation failed after 3 attempts"
    );
    assert!(d["image_url"].is_null());
    assert_eq!(sim.ledger.total_charges(), 0);
    sim.shutdown();
}

#[tokio::test]
async fn billed_once_on_completion_even_when_nobody_reads() {
    let sim = spawn(cfg()).await.unwrap();
    let r = post(&sim, &body(1), Some("k-bill")).await;
    let id = r.json::<Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sim.ledger.total_charges(), 0, "not billed while processing");
    // No reads: the simulator finalises the ad on its own clock.
    let ledger = sim.ledger.clone();
    wait_until(|| ledger.total_charges() == 1).await;
    for _ in 0..3 {
        let (_, _, v) = get_json(&sim, &format!("/v1/image-ads/{id}")).await;
        assert_eq!(v["data"]["status"], "completed");
    }
    assert_eq!(sim.ledger.charges_by_job().get(&id), Some(&1));
    assert_eq!(sim.ledger.charges_by_key().get("k-bill"), Some(&1));
    sim.shutdown();
}

#[tokio::test]
async fn idempotent_replay_is_flagged_and_not_charged() {
    let sim = spawn(cfg()).await.unwrap();
    let first = post(&sim, &body(1), Some("k-1")).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = post(&sim, &body(1), Some("k-1")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again, "the cached response is replayed verbatim");
    assert_eq!(sim.ledger.creations(), 1);
    assert_eq!(sim.ledger.replays(), 1);
    // Same key, different body: refused (GUESS 422), nothing created.
    let other = post(&sim, &body(2), Some("k-1")).await;
    assert_eq!(other.status(), 422);
    let v: Value = other.json().await.unwrap();
    assert_eq!(v["error"]["code"], "IDEMPOTENCY_CONFLICT");
    let ledger = sim.ledger.clone();
    wait_until(|| ledger.total_charges() == 1).await;
    // A replay after completion still creates and charges nothing.
    let late = post(&sim, &body(1), Some("k-1")).await;
    assert_eq!(late.headers()["idempotent-replayed"], "true");
    assert_eq!(sim.ledger.creations(), 1);
    assert_eq!(sim.ledger.total_charges(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn concurrent_duplicate_key_gets_409() {
    let sim = spawn(cfg()).await.unwrap();
    sim.update_faults(|f| f.latency = Duration::from_millis(300));
    let b = body(1);
    let slow = {
        let url = format!("{}/v1/image-ads", sim.base_url);
        let b = b.clone();
        tokio::spawn(async move {
            client()
                .post(url)
                .header("X-API-Key", KEY)
                .header("Idempotency-Key", "k-dup")
                .json(&b)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let ledger = sim.ledger.clone();
    wait_until(|| ledger.requests("POST /v1/image-ads") == 1).await;
    let second = post(&sim, &b, Some("k-dup")).await;
    assert_eq!(second.status(), 409);
    let v: Value = second.json().await.unwrap();
    assert_eq!(v["error"]["code"], "IDEMPOTENCY_CONFLICT");
    assert_eq!(slow.await.unwrap(), 202);
    assert_eq!(sim.ledger.creations(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn rate_limit_headers_and_429() {
    // Real time here so the window cannot roll over mid-test; only 6 requests are made.
    let sim = spawn(SimConfig {
        rate_limit: Some((5, Duration::from_secs(60))),
        time_scale: 1.0,
        ..cfg()
    })
    .await
    .unwrap();
    for i in 0..5u32 {
        let (status, h, _) = get_json(&sim, "/v1/image-ads?ids=ia_0000000000000000").await;
        assert_eq!(status, 200);
        assert_eq!(h["ratelimit-limit"], "5");
        assert_eq!(h["ratelimit-remaining"], (4 - i).to_string().as_str());
        let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset));
    }
    let r = post(&sim, &body(1), None).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(
        v["error"]["message"],
        format!("Rate limit of 5 requests per 60s exceeded. Retry after {retry} seconds.")
    );
    assert_eq!(sim.ledger.count_429(), 1);
    assert_eq!(sim.ledger.creations(), 0, "refused before any work");
    // Refused requests are recorded too.
    assert_eq!(sim.ledger.requests("POST /v1/image-ads"), 1);
    sim.shutdown();
}

#[tokio::test]
async fn rate_limit_window_rolls_with_time_scale() {
    // 2 per 60 s at scale 0.005 = a 300 ms window.
    let sim = spawn(SimConfig {
        rate_limit: Some((2, Duration::from_secs(60))),
        ..cfg()
    })
    .await
    .unwrap();
    for _ in 0..2 {
        assert_eq!(get_json(&sim, "/v1/image-ads?ids=ia_x").await.0, 200);
    }
    assert_eq!(get_json(&sim, "/v1/image-ads?ids=ia_x").await.0, 429);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if get_json(&sim, "/v1/image-ads?ids=ia_x").await.0 == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "window never rolled"
        );
    }
    sim.shutdown();
}

#[tokio::test]
async fn insufficient_balance_after_n_charges() {
    let sim = spawn(cfg()).await.unwrap();
    sim.update_faults(|f| f.insufficient_after_charges = Some(1));
    let id = create(&sim, 1).await;
    // While the first ad is in flight its price is reserved (GUESS, stricter).
    let r = post(&sim, &body(2), None).await;
    assert_eq!(r.status(), 402);
    wait_terminal(&sim, &id).await;
    let r = post(&sim, &body(3), Some("k-402")).await;
    assert_eq!(r.status(), 402);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "INSUFFICIENT_BALANCE");
    assert!(v["error"]["message"].as_str().unwrap().contains("$1.00"));
    assert_eq!(sim.ledger.total_charges(), 1);
    assert_eq!(sim.ledger.creations(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn wallet_covers_in_flight_and_editable_prices() {
    let sim = spawn(SimConfig {
        wallet: Some(500),
        ..cfg()
    })
    .await
    .unwrap();
    let mut editable = body(1);
    editable["editable"] = json!(true);
    assert_eq!(post(&sim, &editable, None).await.status(), 202); // reserves 400
    assert_eq!(post(&sim, &body(2), None).await.status(), 202); // reserves 100
    assert_eq!(post(&sim, &body(3), None).await.status(), 402);
    sim.shutdown();
}

#[tokio::test]
async fn body_over_15_mb_is_413() {
    let sim = spawn(cfg()).await.unwrap();
    let mut b = body(1);
    b["prompt"] = json!("x".repeat(15 * 1024 * 1024 + 10));
    let r = post(&sim, &b, None).await;
    assert_eq!(r.status(), 413);
    assert_eq!(sim.ledger.creations(), 0);
    sim.shutdown();
}

/// Parse raw SSE bytes into (event, data) pairs, exactly as the docs' reference parser does.
fn parse_sse(raw: &str) -> Vec<(String, String)> {
    raw.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = "message".to_owned();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            (event, data)
        })
        .collect()
}

async fn open_sse(sim: &SimHandle, id: &str) -> reqwest::Response {
    client()
        .get(format!("{}/v1/image-ads/{id}", sim.base_url))
        .header("X-API-Key", KEY)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn sse_streams_started_progress_heartbeat_complete_then_closes() {
    let sim = spawn(SimConfig {
        // 300 ms runs; heartbeats every 75 ms.
        job_duration: (Duration::from_secs(60), Duration::from_secs(60)),
        ..cfg()
    })
    .await
    .unwrap();
    let id = create(&sim, 1).await;
    let r = open_sse(&sim, &id).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert!(r.headers().contains_key("ratelimit-remaining"));
    // The body ends on its own: the server closes after `complete`.
    let raw = tokio::time::timeout(Duration::from_secs(3), r.text())
        .await
        .unwrap()
        .unwrap();
    assert!(raw.ends_with("\n\n"), "{raw:?}");
    let events = parse_sse(&raw);
    assert_eq!(events[0].0, "started");
    assert_eq!(
        serde_json::from_str::<Value>(&events[0].1).unwrap()["id"],
        id
    );
    let last = events.last().unwrap();
    assert_eq!(last.0, "complete");
    assert_eq!(serde_json::from_str::<Value>(&last.1).unwrap()["id"], id);
    let progress: Vec<Value> = events
        .iter()
        .filter(|e| e.0 == "progress")
        .map(|e| serde_json::from_str(&e.1).unwrap())
        .collect();
    assert!(progress.len() >= 2, "{events:?}");
    for p in &progress {
        let pct = p["percentage"].as_f64().unwrap();
        assert!((0.0..1.0).contains(&pct) && p["step"].is_string(), "{p}");
    }
    let heartbeats: Vec<_> = events.iter().filter(|e| e.0 == "heartbeat").collect();
    assert!(!heartbeats.is_empty(), "{events:?}");
    assert!(heartbeats.iter().all(|h| h.1.is_empty()));
    assert!(raw.contains("event: heartbeat\ndata: \n\n"));
    assert_eq!(sim.ledger.requests("SSE /v1/image-ads/:id"), 1);
    sim.shutdown();
}

#[tokio::test]
async fn sse_of_a_failed_ad_ends_with_error() {
    let sim = spawn(SimConfig {
        failure_ratio: 1.0,
        ..cfg()
    })
    .await
    .unwrap();
    let id = create(&sim, 1).await;
    let raw = open_sse(&sim, &id).await.text().await.unwrap();
    let events = parse_sse(&raw);
    let last = events.last().unwrap();
    assert_eq!(last.0, "error");
    let v: Value = serde_json::from_str(&last.1).unwrap();
    assert_eq!(v["code"], "PIPELINE_ERROR");
    sim.shutdown();
}

#[tokio::test]
async fn sse_drop_fault_cuts_the_stream() {
    let sim = spawn(cfg()).await.unwrap();
    sim.update_faults(|f| f.sse_drop_after = Some(2));
    let id = create(&sim, 1).await;
    let mut r = open_sse(&sim, &id).await;
    let mut raw = Vec::new();
    let outcome = loop {
        match r.chunk().await {
            Ok(Some(c)) => raw.extend_from_slice(&c),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err(), "a dropped stream is not a clean end");
    let events = parse_sse(&String::from_utf8(raw).unwrap());
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "started");
    assert!(events.iter().all(|e| e.0 != "complete"));
    sim.shutdown();
}

#[tokio::test]
async fn unknown_ad_sse_is_404_json() {
    let sim = spawn(cfg()).await.unwrap();
    let r = open_sse(&sim, "ia_0123456789abcdef").await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "NOT_FOUND");
    sim.shutdown();
}

#[tokio::test]
async fn injected_5xx_and_burst_429_do_no_work() {
    let sim = spawn(cfg()).await.unwrap();
    sim.set_faults(Faults {
        error_5xx_ratio: 1.0,
        ..Faults::default()
    });
    let r = post(&sim, &body(1), Some("k-5xx")).await;
    assert!(matches!(r.status().as_u16(), 500 | 503), "{}", r.status());
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["code"].is_string());
    assert_eq!(sim.ledger.count_5xx(), 1);
    sim.set_faults(Faults {
        burst_429: 2,
        ..Faults::default()
    });
    for _ in 0..2 {
        let r = post(&sim, &body(1), Some("k-5xx")).await;
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
    }
    assert_eq!(sim.ledger.creations(), 0);
    // The key was never taken: the next attempt creates the ad.
    let r = post(&sim, &body(1), Some("k-5xx")).await;
    assert_eq!(r.status(), 202);
    assert!(r.headers().get("idempotent-replayed").is_none());
    sim.shutdown();
}

#[tokio::test]
async fn dropped_response_still_did_the_work() {
    let sim = spawn(cfg()).await.unwrap();
    sim.update_faults(|f| f.drop_ratio = 1.0);
    let sent = client()
        .post(format!("{}/v1/image-ads", sim.base_url))
        .header("X-API-Key", KEY)
        .header("Idempotency-Key", "k-drop")
        .json(&body(1))
        .send()
        .await;
    let failed = match sent {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(failed, "the client must not get a usable response");
    assert_eq!(sim.ledger.count_dropped(), 1);
    assert_eq!(sim.ledger.creations(), 1);
    sim.set_faults(Faults::default());
    let r = post(&sim, &body(1), Some("k-drop")).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    sim.shutdown();
}

#[tokio::test]
async fn malformed_fault_truncates_json() {
    let sim = spawn(cfg()).await.unwrap();
    sim.update_faults(|f| f.malformed_ratio = 1.0);
    let r = client()
        .get(format!(
            "{}/v1/image-ads?ids=ia_0000000000000000",
            sim.base_url
        ))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    sim.shutdown();
}

// --- submit-answer faults ---------------------------------------------------------------------

fn post_in_background(
    sim: &SimHandle,
    body: &Value,
    key: Option<&str>,
) -> tokio::task::JoinHandle<Result<(u16, Value), reqwest::Error>> {
    let mut req = client()
        .post(format!("{}/v1/image-ads", sim.base_url))
        .header("X-API-Key", KEY)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    tokio::spawn(async move {
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    })
}

#[tokio::test]
async fn submit_answer_delay_lets_the_ad_complete_before_the_202() {
    // StaticAdsLab has no webhooks (providers.md §1.9); the observable race is that the ad is
    // already completed, and billed, when the 202 that created it arrives.
    let sim = spawn(cfg()).await.unwrap();
    sim.update_faults(|f| f.submit_answer_delay = Duration::from_secs(5));
    let post = post_in_background(&sim, &body(1), Some("k-delay"));
    let ledger = sim.ledger.clone();
    wait_until(|| ledger.created_ids().len() == 1).await;
    let id = sim.ledger.created_ids()[0].clone();
    let done = wait_terminal(&sim, &id).await;
    assert_eq!(done["status"], "completed");
    wait_until(|| ledger.total_charges() == 1).await;
    assert!(
        !post.is_finished(),
        "the ad finished while its POST was still unanswered"
    );
    let (status, answer) = post.await.unwrap().expect("the answer does come");
    assert_eq!(status, 202);
    assert_eq!(answer["data"]["id"], id.as_str());
    // The answer describes the ad as it was when created.
    assert_eq!(answer["data"]["status"], "processing");
    sim.shutdown();
}

#[tokio::test]
async fn cut_after_create_drops_the_answer_and_a_resend_with_the_key_replays() {
    let sim = spawn(cfg()).await.unwrap();
    sim.update_faults(|f| f.cut_after_create = 1);
    let sent = post_in_background(&sim, &body(1), Some("k-cut"))
        .await
        .unwrap();
    assert!(sent.is_err(), "transport error, no response: {sent:?}");
    assert_eq!(sim.ledger.count_cut(), 1);
    let ids = sim.ledger.created_ids();
    assert_eq!(ids.len(), 1);
    let id = ids[0].clone();
    // The ad exists (a later batch poll finds it), completes and is billed once.
    let (status, _, listed) = get_json(&sim, &format!("/v1/image-ads?ids={id}")).await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert_eq!(wait_terminal(&sim, &id).await["status"], "completed");
    let ledger = sim.ledger.clone();
    wait_until(|| ledger.total_charges() == 1).await;
    assert_eq!(sim.ledger.charges_by_key().get("k-cut"), Some(&1));
    // Same key again: the cached 202 is replayed [SAL:reference/idempotency], nothing new.
    let r = post(&sim, &body(1), Some("k-cut")).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"]["id"], id.as_str());
    assert_eq!(sim.ledger.creations(), 1);
    assert_eq!(sim.ledger.total_charges(), 1);
    assert_eq!(
        sim.ledger.count_cut(),
        1,
        "a replay does not consume the fault"
    );
    sim.shutdown();
}

#[tokio::test]
async fn cut_after_create_counts_the_next_n_creations() {
    let sim = spawn(cfg()).await.unwrap();
    sim.update_faults(|f| f.cut_after_create = 2);
    // A refusal creates nothing and is answered.
    let mut bad = body(1);
    bad["brand_id"] = json!("prod_a1b2c3d4e5f67890");
    let r = post(&sim, &bad, None).await;
    assert!(r.status().is_client_error());
    for i in 0..2 {
        let sent = post_in_background(&sim, &body(i), None).await.unwrap();
        assert!(sent.is_err(), "creation {i} is cut");
    }
    assert_eq!(post(&sim, &body(3), None).await.status(), 202);
    assert_eq!(sim.ledger.count_cut(), 2);
    assert_eq!(sim.ledger.creations(), 3);
    sim.shutdown();
}

#[tokio::test]
async fn suppress_webhooks_has_nothing_to_suppress_and_leaves_sse_alone() {
    // No webhooks exist (providers.md §1.9), so the fault must not touch the push channel
    // StaticAdsLab does have: the SSE stream still ends with `complete`.
    let sim = spawn(cfg()).await.unwrap();
    sim.update_faults(|f| f.suppress_webhooks = true);
    let id = create(&sim, 1).await;
    let resp = open_sse(&sim, &id).await;
    assert_eq!(resp.status(), 200);
    let raw = tokio::time::timeout(Duration::from_secs(5), resp.text())
        .await
        .expect("stream ends")
        .unwrap();
    let events = parse_sse(&raw);
    assert_eq!(events.last().unwrap().0, "complete", "{events:?}");
    assert_eq!(wait_terminal(&sim, &id).await["status"], "completed");
    assert!(sim.ledger.webhooks().is_empty());
    sim.shutdown();
}
