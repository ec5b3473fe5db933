//! What serving an output costs in this (debug) build: the first request of a size encodes the
//! pixels, later ones only splice a label in. Alone in its test binary so that the process-wide
//! encoding cache starts empty. Prints the figures (`--nocapture`) for the record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use adgate_sim::{SimConfig, SimHandle, bannerbear, staticadslab};
use serde_json::{Value, json};

const KEY: &str = "sim_key";

fn cfg() -> SimConfig {
    SimConfig {
        api_key: KEY.to_owned(),
        time_scale: 0.005,
        ..SimConfig::default()
    }
}

/// Poll `path` (bounded) until `done` says the resource finished; returns its JSON.
async fn wait_for(
    sim: &SimHandle,
    path: &str,
    auth: (&str, &str),
    done: fn(&Value) -> bool,
) -> Value {
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = c
            .get(format!("{}{path}", sim.base_url))
            .header(auth.0, auth.1)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never finished: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time two downloads of one URL: (first, second, bytes).
async fn fetch_twice(url: &str) -> (Duration, Duration, usize) {
    let c = reqwest::Client::new();
    let mut times = Vec::new();
    let mut len = 0;
    for _ in 0..2 {
        let started = Instant::now();
        let r = c.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        len = r.bytes().await.unwrap().len();
        times.push(started.elapsed());
    }
    (times[0], times[1], len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4k_png_is_encoded_once_and_later_requests_are_cheap() {
    let sal = staticadslab::spawn(cfg()).await.unwrap();
    let created: Value = reqwest::Client::new()
        .post(format!("{}/v1/image-ads", sal.base_url))
        .header("X-API-Key", KEY)
        .json(&json!({
            "design_template_id": "dt_0000000000000001",
            "brand_id": "brand_a1b2c3d4e5f67890",
            "product_id": "prod_a1b2c3d4e5f67890",
            "audience_id": "aud_a1b2c3d4e5f67890",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["data"]["id"].as_str().unwrap();
    let ad = wait_for(
        &sal,
        &format!("/v1/image-ads/{id}"),
        ("X-API-Key", KEY),
        |v| v["data"]["status"] != "processing",
    )
    .await;
    let (first, again, len) = fetch_twice(ad["data"]["image_url"].as_str().unwrap()).await;
    eprintln!("StaticAdsLab 3840x3840 PNG, {len} bytes: first {first:?}, repeat {again:?}");
    assert!(
        again * 3 < first,
        "the repeat ({again:?}) reuses the encoding ({first:?})"
    );
    assert!(
        again < Duration::from_secs(1),
        "a cached 4K PNG is served in {again:?}"
    );
    sal.shutdown();

    let bb = bannerbear::spawn(cfg()).await.unwrap();
    let auth = format!("Bearer {KEY}");
    let created: Value = reqwest::Client::new()
        .post(format!("{}/v5/images", bb.base_url))
        .header("Authorization", &auth)
        .json(&json!({"template": "A89wavQyY3Bebk3djP", "modifications": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uid = created["uid"].as_str().unwrap();
    let image = wait_for(
        &bb,
        &format!("/v5/images/{uid}"),
        ("Authorization", &auth),
        |v| v["status"] != "pending",
    )
    .await;
    let (first, again, len) = fetch_twice(image["files"]["jpg"].as_str().unwrap()).await;
    eprintln!("Bannerbear 1200x630 JPEG, {len} bytes: first {first:?}, repeat {again:?}");
    assert!(
        again < Duration::from_millis(500),
        "a cached JPEG is served in {again:?}"
    );
    bb.shutdown();
}
