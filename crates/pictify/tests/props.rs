//! Property tests: whatever Pictify (or an impostor) sends — result bodies, error bodies,
//! correctly signed webhooks with arbitrary payloads — the adapter never panics and never
//! produces an update that breaks the model's invariants.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{SystemTime, UNIX_EPOCH};

use adgate_generator::signature;
use adgate_generator::{Generator, SubmitBatch, SubmitItem};
use adgate_pictify::wire::BatchResults;
use adgate_pictify::{Pictify, PictifyConfig, results, webhook};
use adgate_sim::props::{arb_json, check_update, runtime, serve_once, statuses};
use proptest::prelude::*;
use serde_json::json;

const KEYS: &[&str] = &[
    "event",
    "timestamp",
    "data",
    "batchId",
    "status",
    "totalItems",
    "completedItems",
    "failedItems",
    "progress",
    "results",
    "index",
    "success",
    "error",
    "errorCode",
    "url",
    "imageUrl",
    "width",
    "height",
    "format",
    "templateId",
    "variables",
    "n",
    "layouts",
    "retryAfter",
    "code",
    "message",
];
const WORDS: &[&str] = &[
    "render.completed",
    "render.failed",
    "batch.completed",
    "batch.failed",
    "completed",
    "processing",
    "failed",
    "partial",
    "cancelled",
    "batch_1",
    "tmpl_a",
    "png",
    "webp",
    "https://cdn.example/a.png",
    "",
    "RENDER_TIMEOUT",
];
const SECRET: &str = "whsec_props";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn signed(body: &[u8]) -> http::HeaderMap {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut h = http::HeaderMap::new();
    h.insert(
        webhook::SIGNATURE_HEADER,
        signature::header_value(SECRET.as_bytes(), "", now, body)
            .parse()
            .unwrap(),
    );
    h.insert(webhook::DELIVERY_HEADER, "del_1".parse().unwrap());
    h
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn signed_webhooks_with_any_payload(body in prop_oneof![
        arb_json(KEYS, WORDS).prop_map(|v| v.to_string().into_bytes()),
        (prop::sample::select(vec!["render.completed", "render.failed", "batch.completed"]), arb_json(KEYS, WORDS))
            .prop_map(|(e, d)| json!({"event": e, "timestamp": "2026-01-01T00:00:00Z", "data": d}).to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..512),
    ]) {
        let h = signed(&body);
        if let Ok(ev) = webhook::parse(Some(SECRET), &h, &body, SystemTime::now()) {
            ev.updates.iter().for_each(check_update);
        }
    }

    #[test]
    fn unsigned_or_forged_webhooks_never_parse(body in prop::collection::vec(any::<u8>(), 0..256), sig in "[ -~]{0,80}") {
        let mut h = http::HeaderMap::new();
        if let Ok(v) = sig.parse() {
            h.insert(webhook::SIGNATURE_HEADER, v);
        }
        prop_assert!(webhook::parse(Some(SECRET), &h, &body, SystemTime::now()).is_err());
    }

    #[test]
    fn batch_results_give_valid_updates(v in arb_json(KEYS, WORDS), hooks in any::<bool>()) {
        if let Ok(r) = serde_json::from_value::<BatchResults>(v) {
            for u in results::translate("batch_1", &r, hooks) {
                check_update(&u);
            }
        }
    }

    #[test]
    fn error_mapping_survives_arbitrary_bodies(status in statuses(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let s = http::StatusCode::from_u16(status).unwrap();
        let _ = adgate_pictify::errors::map_status(s, &http::HeaderMap::new(), &body);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// The real client over HTTP: poll and submit against a server answering anything.
    #[test]
    fn poll_and_submit_survive_any_answer(status in statuses(), body in prop_oneof![
        arb_json(KEYS, WORDS).prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
    ]) {
        let rt = runtime();
        rt.block_on(async {
            let base = serve_once(status, body).await;
            let mut cfg = PictifyConfig::new("k");
            cfg.base_url = base;
            cfg.webhook_secret = Some(SECRET.into());
            cfg.webhooks_reachable = true;
            let a = Pictify::new(cfg).unwrap();
            if let Ok(o) = a.poll(&["batch_1".to_owned()]).await {
                o.value.iter().for_each(check_update);
            }
            let spec = json!({"template_uid": "tmpl_a", "variables": {"n": "1"}});
            let batch = SubmitBatch { idempotency_key: "k1".into(), items: vec![SubmitItem { job_id: "job_1".into(), spec }] };
            if let Ok(o) = a.submit(batch).await {
                assert_eq!(o.value.len(), 1);
                assert!(!o.value[0].provider_ref.is_empty());
            }
        });
    }
}
