//! The StaticAdsLab simulator's design templates and editable-ad edits (PATCH + versions),
//! exercised over HTTP by a plain client written from the provider's documents.
// Test code: a failed unwrap is a failed assertion (clippy.toml only exempts #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use adgate_sim::staticadslab::spawn;
use adgate_sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

const KEY: &str = "sal_live_test";

/// Ads take 1 s, templates and re-renders a fifth of that (200 ms): long enough to see
/// `processing` right after a 202, short enough to finish quickly.
fn cfg() -> SimConfig {
    SimConfig {
        api_key: KEY.to_owned(),
        time_scale: 0.05,
        job_duration: (Duration::from_secs(20), Duration::from_secs(20)),
        ..SimConfig::default()
    }
}

fn ad_body(template: &str, editable: bool) -> Value {
    json!({
        "design_template_id": template,
        "brand_id": "brand_a1b2c3d4e5f67890",
        "product_id": "prod_a1b2c3d4e5f67890",
        "audience_id": "aud_a1b2c3d4e5f67890",
        "editable": editable,
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn send(
    sim: &SimHandle,
    method: reqwest::Method,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client()
        .request(method, format!("{}{path}", sim.base_url))
        .header("X-API-Key", KEY)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap())
}

async fn post(sim: &SimHandle, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let (status, _, v) = send(sim, reqwest::Method::POST, path, body, key).await;
    (status, v)
}

async fn patch(
    sim: &SimHandle,
    id: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let path = format!("/v1/image-ads/{id}");
    send(sim, reqwest::Method::PATCH, &path, body, key).await
}

async fn get_json(sim: &SimHandle, path: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{}{path}", sim.base_url))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Poll a resource (`/v1/image-ads/{id}` or `/v1/design-templates/{id}`) until it leaves
/// `processing`, bounded.
async fn wait_terminal(sim: &SimHandle, path: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = get_json(sim, path).await;
        assert_eq!(status, 200, "{v}");
        if v["data"]["status"] != "processing" {
            return v["data"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

async fn create_template(sim: &SimHandle, name: &str) -> String {
    let (status, v) = post(sim, "/v1/design-templates", &json!({"name": name}), None).await;
    assert_eq!(status, 202, "{v}");
    v["data"]["id"].as_str().unwrap().to_owned()
}

/// An editable ad, waited until completed.
async fn completed_editable(sim: &SimHandle) -> Value {
    let (status, v) = post(
        sim,
        "/v1/image-ads",
        &ad_body("dt_elsewhere00000001", true),
        None,
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let id = v["data"]["id"].as_str().unwrap();
    let d = wait_terminal(sim, &format!("/v1/image-ads/{id}")).await;
    assert_eq!(d["status"], "completed");
    d
}

fn tree(headline: &str) -> Value {
    json!({
        "id": "node-root", "type": "FRAME",
        "children": [{"id": "node-headline", "type": "TEXT", "characters": headline}],
    })
}

async fn png(url: &str) -> Vec<u8> {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    assert_eq!(r.headers()["content-type"], "image/png");
    r.bytes().await.unwrap().to_vec()
}

// ---------------------------------------------------------------------------------------------
// Design templates
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn template_completes_and_is_billed_25_cents_once() {
    // 124 cents: after the template, exactly 99 must be left, which a $1.00 ad's 402 reports.
    let sim = spawn(SimConfig {
        wallet: Some(124),
        ..cfg()
    })
    .await
    .unwrap();
    let request = json!({"name": "Summer sale", "figma_url": "https://figma.com/file/x"});
    let (status, headers, v) = send(
        &sim,
        reqwest::Method::POST,
        "/v1/design-templates",
        &request,
        Some("k-dt"),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(headers["ratelimit-limit"], "100");
    let d = &v["data"];
    let id = d["id"].as_str().unwrap().to_owned();
    assert!(is_id(&id, "dt_"), "{id}");
    assert_eq!(d["status"], "processing");
    assert!(d["progress"]["step"].is_string(), "{d}");
    assert!((0.0..1.0).contains(&d["progress"]["percentage"].as_f64().unwrap()));
    assert!(d["error"].is_null() && d["completed_at"].is_null());
    assert_eq!(d["request"], request, "the body is echoed whole");
    assert!(d["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(
        v["meta"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
    assert_eq!(sim.ledger.total_charges(), 0, "not billed while processing");

    let d = wait_terminal(&sim, &format!("/v1/design-templates/{id}")).await;
    assert_eq!(d["status"], "completed");
    assert!(d["progress"].is_null() && d["error"].is_null());
    assert!(d["completed_at"].is_string());
    for _ in 0..3 {
        let (_, v) = get_json(&sim, &format!("/v1/design-templates/{id}")).await;
        assert_eq!(v["data"]["status"], "completed");
    }
    assert_eq!(sim.ledger.total_charges(), 1);
    assert_eq!(sim.ledger.charges_by_job().get(&id), Some(&1));
    assert_eq!(sim.ledger.charges_by_key().get("k-dt"), Some(&1));

    // Idempotency as on ads: a replay creates and charges nothing, another body conflicts.
    let (status, headers, _) = send(
        &sim,
        reqwest::Method::POST,
        "/v1/design-templates",
        &request,
        Some("k-dt"),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(headers["idempotent-replayed"], "true");
    let (status, v) = post(
        &sim,
        "/v1/design-templates",
        &json!({"name": "x"}),
        Some("k-dt"),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(v["error"]["code"], "IDEMPOTENCY_CONFLICT");
    assert_eq!(sim.ledger.creations(), 1);

    // Exactly 25 cents were spent: 99 are left.
    let (status, v) = post(&sim, "/v1/image-ads", &ad_body(&id, false), None).await;
    assert_eq!(status, 402, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("available balance is $0.99"), "{msg}");
    assert_eq!(sim.ledger.total_charges(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn template_failure_is_free_and_the_template_unusable() {
    // `failure_ratio` is the knob: every job fails, templates included.
    let sim = spawn(SimConfig {
        failure_ratio: 1.0,
        wallet: Some(25),
        ..cfg()
    })
    .await
    .unwrap();
    let id = create_template(&sim, "doomed").await;
    let d = wait_terminal(&sim, &format!("/v1/design-templates/{id}")).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["error"]["code"], "PIPELINE_ERROR");
    assert!(d["error"]["message"].is_string());
    assert!(d["progress"].is_null());
    assert_eq!(sim.ledger.total_charges(), 0);
    // Nothing was deducted: the 25-cent wallet still covers another template.
    create_template(&sim, "again").await;
    // A failed template is not `completed`: refused like a processing one.
    let (status, v) = post(&sim, "/v1/image-ads", &ad_body(&id, false), None).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["details"][0]["field"], "design_template_id");
    sim.shutdown();
}

#[tokio::test]
async fn template_body_must_be_an_object() {
    let sim = spawn(cfg()).await.unwrap();
    let (status, v) = post(&sim, "/v1/design-templates", &json!(["x"]), None).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(v["error"]["details"][0]["field"], "body");
    let (status, v) = get_json(&sim, "/v1/design-templates/dt_0000000000000000").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "NOT_FOUND");
    assert_eq!(sim.ledger.creations(), 0);
    sim.shutdown();
}

#[tokio::test]
async fn ad_naming_a_processing_template_is_422_until_it_completes() {
    let sim = spawn(cfg()).await.unwrap();
    let dt = create_template(&sim, "hero").await;
    let (status, v) = post(&sim, "/v1/image-ads", &ad_body(&dt, false), Some("k-ad")).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(v["error"]["details"][0]["field"], "design_template_id");
    assert!(
        v["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("processing")
    );
    assert_eq!(sim.ledger.refusals("template_not_completed"), 1);
    assert_eq!(sim.ledger.creations(), 1, "only the template");

    wait_terminal(&sim, &format!("/v1/design-templates/{dt}")).await;
    // The refusal was not cached: the same key now creates the ad.
    let (status, headers, v) = send(
        &sim,
        reqwest::Method::POST,
        "/v1/image-ads",
        &ad_body(&dt, false),
        Some("k-ad"),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    assert!(headers.get("idempotent-replayed").is_none());
    let ia = v["data"]["id"].as_str().unwrap().to_owned();
    // A template this simulator never made was made elsewhere: accepted as before.
    let (status, _) = post(
        &sim,
        "/v1/image-ads",
        &ad_body("dt_a1b2c3d4e5f67890", false),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let ledger = sim.ledger.clone();
    wait_until(|| ledger.total_charges() == 3).await;
    assert_eq!(sim.ledger.charges_by_job().get(&dt), Some(&1));
    assert_eq!(sim.ledger.charges_by_job().get(&ia), Some(&1));
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

#[tokio::test]
async fn template_ids_poll_pages_like_the_ad_list() {
    let sim = spawn(cfg()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create_template(&sim, &format!("t{i}")).await);
    }
    let all = format!("{},dt_ffffffffffffffff", ids.join(","));
    let (status, v) = get_json(&sim, &format!("/v1/design-templates?ids={all}&limit=2")).await;
    assert_eq!(status, 200);
    assert_eq!(ids_of(&v), ids[..2].to_vec());
    assert_eq!(v["has_more"], true);
    assert!(v["meta"]["request_id"].is_string());
    let (_, v) = get_json(
        &sim,
        &format!(
            "/v1/design-templates?ids={all}&limit=2&starting_after={}",
            ids[1]
        ),
    )
    .await;
    assert_eq!(ids_of(&v), ids[2..4].to_vec());
    assert_eq!(v["has_more"], true);
    let (_, v) = get_json(
        &sim,
        &format!(
            "/v1/design-templates?ids={all}&limit=2&starting_after={}",
            ids[3]
        ),
    )
    .await;
    assert_eq!(ids_of(&v), ids[4..].to_vec());
    assert_eq!(v["has_more"], false);
    // Default limit 20 covers all five; the unknown id is omitted.
    let (_, v) = get_json(&sim, &format!("/v1/design-templates?ids={all}")).await;
    assert_eq!(ids_of(&v), ids);
    assert_eq!(v["data"][0]["request"]["name"], "t0");
    // Foreign prefix → 422, over-limit → 400.
    let (status, _) = get_json(&sim, "/v1/design-templates?ids=ia_0000000000000000").await;
    assert_eq!(status, 422);
    let (status, _) = get_json(&sim, &format!("/v1/design-templates?ids={all}&limit=101")).await;
    assert_eq!(status, 400);
    // The plain list pages the same way, in creation order.
    let (_, v) = get_json(&sim, "/v1/design-templates?limit=3").await;
    assert_eq!(ids_of(&v), ids[..3].to_vec());
    assert_eq!(v["has_more"], true);
    sim.shutdown();
}

// ---------------------------------------------------------------------------------------------
// PATCH and versions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn patch_renders_a_new_version_with_its_own_image_and_tree() {
    let sim = spawn(cfg()).await.unwrap();
    let ad = completed_editable(&sim).await;
    let id = ad["id"].as_str().unwrap().to_owned();
    let v1_tree = ad["current_json_tree"].clone();
    assert!(v1_tree.is_object(), "{ad}");
    assert!(v1_tree["id"].is_string());
    assert!(ad["figma_render_url"].is_string() && ad["initial_figma_render_url"].is_string());
    let v1_id = ad["current_version_id"].as_str().unwrap().to_owned();
    assert!(is_id(&v1_id, "iav_"), "{v1_id}");
    let v1_url = ad["image_url"].as_str().unwrap().to_owned();
    png(ad["figma_render_url"].as_str().unwrap()).await;

    let new_tree = tree("25% off today");
    let (status, headers, v) = patch(
        &sim,
        &id,
        &json!({"current_json_tree": new_tree}),
        Some("k-p1"),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    assert!(headers.get("idempotent-replayed").is_none());
    let d = &v["data"];
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["status"], "processing");
    assert!(d["image_url"].is_null() && d["progress"].is_object());
    let v2_id = d["current_version_id"].as_str().unwrap().to_owned();
    assert!(is_id(&v2_id, "iav_") && v2_id != v1_id, "{v2_id}");
    // The version in progress is readable, without an image yet.
    let (status, v) = get_json(&sim, &format!("/v1/image-ads/{id}/versions/{v2_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(v["data"]["status"], "processing");
    assert!(v["data"]["image_url"].is_null());
    // The old render stays served while the new one renders.
    png(&v1_url).await;

    let d = wait_terminal(&sim, &format!("/v1/image-ads/{id}")).await;
    assert_eq!(d["status"], "completed");
    let v2_url = d["image_url"].as_str().unwrap().to_owned();
    assert_ne!(v2_url, v1_url);
    assert_eq!(d["current_json_tree"], new_tree);
    assert_eq!(d["current_version_id"], v2_id.as_str());
    assert_ne!(d["figma_render_url"], d["initial_figma_render_url"]);
    assert_eq!(
        d["initial_figma_render_url"],
        ad["initial_figma_render_url"]
    );

    let (status, v) = get_json(&sim, &format!("/v1/image-ads/{id}/versions")).await;
    assert_eq!(status, 200);
    assert_eq!(v["has_more"], false);
    let versions = v["data"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    let (a, b) = (&versions[0], &versions[1]);
    assert_eq!(
        (a["id"].as_str(), a["version"].as_u64()),
        (Some(v1_id.as_str()), Some(1))
    );
    assert_eq!(
        (b["id"].as_str(), b["version"].as_u64()),
        (Some(v2_id.as_str()), Some(2))
    );
    for (ver, url, t) in [(a, &v1_url, &v1_tree), (b, &v2_url, &new_tree)] {
        assert_eq!(ver["image_ad_id"], id.as_str());
        assert_eq!(ver["status"], "completed");
        assert_eq!(ver["image_url"], url.as_str());
        assert_eq!(&ver["current_json_tree"], t);
        assert!(ver["created_at"].is_string() && ver["completed_at"].is_string());
    }
    let (status, v) = get_json(&sim, &format!("/v1/image-ads/{id}/versions/{v1_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(&v["data"], a);
    assert_ne!(
        png(&v1_url).await,
        png(&v2_url).await,
        "each version has its own file"
    );

    // The re-render is counted as a creation and not charged: the ad's $4.00 only.
    assert_eq!(sim.ledger.creations_by_key().get("k-p1"), Some(&1));
    assert_eq!(sim.ledger.total_charges(), 1);
    assert_eq!(sim.ledger.charges_by_job().get(&id), Some(&1));
    sim.shutdown();
}

#[tokio::test]
async fn patch_replay_creates_one_version() {
    let sim = spawn(cfg()).await.unwrap();
    let ad = completed_editable(&sim).await;
    let id = ad["id"].as_str().unwrap().to_owned();
    let body = json!({"current_json_tree": tree("once")});
    let (status, _, first) = patch(&sim, &id, &body, Some("k-once")).await;
    assert_eq!(status, 202);
    // Resent while the re-render runs: replayed, not 409.
    let (status, headers, again) = patch(&sim, &id, &body, Some("k-once")).await;
    assert_eq!(status, 202);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(first, again, "the cached response is replayed verbatim");
    // Same key, another tree: the conflict answer ad creation gives.
    let other = json!({"current_json_tree": tree("twice")});
    let (status, _, v) = patch(&sim, &id, &other, Some("k-once")).await;
    assert_eq!(status, 422);
    assert_eq!(v["error"]["code"], "IDEMPOTENCY_CONFLICT");
    wait_terminal(&sim, &format!("/v1/image-ads/{id}")).await;
    // Resent after completion: still a replay.
    let (status, headers, _) = patch(&sim, &id, &body, Some("k-once")).await;
    assert_eq!(status, 202);
    assert_eq!(headers["idempotent-replayed"], "true");

    assert_eq!(sim.ledger.creations_by_key().get("k-once"), Some(&1));
    assert_eq!(sim.ledger.replays(), 2);
    let (_, v) = get_json(&sim, &format!("/v1/image-ads/{id}/versions")).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    sim.shutdown();
}

#[tokio::test]
async fn patch_of_a_flat_ad_is_422_and_makes_no_version() {
    let sim = spawn(cfg()).await.unwrap();
    let (status, v) = post(
        &sim,
        "/v1/image-ads",
        &ad_body("dt_a1b2c3d4e5f67890", false),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    let d = wait_terminal(&sim, &format!("/v1/image-ads/{id}")).await;
    assert!(d["current_version_id"].is_null() && d["current_json_tree"].is_null());
    let (status, _, v) = patch(
        &sim,
        &id,
        &json!({"current_json_tree": tree("x")}),
        Some("k-f"),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "NOT_EDITABLE");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not editable")
    );
    let (status, v) = get_json(&sim, &format!("/v1/image-ads/{id}/versions")).await;
    assert_eq!(status, 422);
    assert_eq!(v["error"]["code"], "NOT_EDITABLE");
    assert_eq!(sim.ledger.creations(), 1, "only the ad");
    assert!(!sim.ledger.creations_by_key().contains_key("k-f"));
    let (_, v) = get_json(&sim, &format!("/v1/image-ads/{id}")).await;
    assert_eq!(v["data"]["status"], "completed");
    sim.shutdown();
}

#[tokio::test]
async fn patch_while_processing_is_409() {
    let sim = spawn(cfg()).await.unwrap();
    let (status, v) = post(
        &sim,
        "/v1/image-ads",
        &ad_body("dt_a1b2c3d4e5f67890", true),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    let (status, _, v) = patch(&sim, &id, &json!({"current_json_tree": tree("x")}), None).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "CONFLICT");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still processing")
    );
    // Version 1 is the generation in progress.
    let (status, v) = get_json(&sim, &format!("/v1/image-ads/{id}/versions")).await;
    assert_eq!(status, 200);
    let versions = v["data"].as_array().unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["status"], "processing");
    assert!(versions[0]["image_url"].is_null() && versions[0]["current_json_tree"].is_null());
    assert_eq!(sim.ledger.creations(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn patch_bad_bodies_and_unknown_ids() {
    let sim = spawn(cfg()).await.unwrap();
    let ad = completed_editable(&sim).await;
    let id = ad["id"].as_str().unwrap().to_owned();
    for body in [
        json!({}),
        json!({"current_json_tree": "x"}),
        json!({"current_json_tree": null}),
    ] {
        let (status, _, v) = patch(&sim, &id, &body, None).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(v["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(
            v["error"]["details"][0]["field"], "current_json_tree",
            "{v}"
        );
    }
    let (status, _, v) = patch(
        &sim,
        "ia_0000000000000000",
        &json!({"current_json_tree": {}}),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "NOT_FOUND");
    let (status, _) = get_json(&sim, "/v1/image-ads/ia_0000000000000000/versions").await;
    assert_eq!(status, 404);
    let (status, _) = get_json(
        &sim,
        &format!("/v1/image-ads/{id}/versions/iav_0000000000000000"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(sim.ledger.creations(), 1, "only the ad");
    let (_, v) = get_json(&sim, &format!("/v1/image-ads/{id}")).await;
    assert_eq!(
        v["data"]["status"], "completed",
        "refused PATCHes change nothing"
    );
    sim.shutdown();
}
