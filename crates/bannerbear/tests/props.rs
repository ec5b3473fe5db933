//! Property tests: whatever Bannerbear (or an impostor) sends — image bodies, error bodies,
//! correctly signed deliveries with arbitrary payloads, arbitrary bytes — the adapter never
//! panics and never produces an update that breaks the model's invariants.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::SystemTime;

use adgate_bannerbear::webhook::{self, SIGNATURE_HEADER};
use adgate_bannerbear::wire::{self, Image};
use adgate_bannerbear::{Bannerbear, BannerbearConfig, spec};
use adgate_generator::transport::Effect;
use adgate_generator::{Generator, SubmitBatch, SubmitItem, time};
use adgate_sim::props::{arb_json, check_update, runtime, serve_once, statuses};
use proptest::prelude::*;
use serde_json::json;

const KEYS: &[&str] = &[
    "uid",
    "status",
    "template",
    "files",
    "jpg",
    "png",
    "webp",
    "metadata",
    "error",
    "self",
    "created_at",
    "completed_at",
    "width",
    "height",
    "modifications",
    "objects",
    "name",
    "id",
    "attributes",
    "formats",
    "scale",
    "message",
    "errors",
];
const WORDS: &[&str] = &[
    "kG39R5XbvPQpLENKBWJj",
    "pending",
    "completed",
    "failed",
    "https://cdn.example/a.png",
    "https://api.bannerbear.com/v5/batches/b1",
    "2023-11-14T22:13:20.000Z",
    "adgate_job=job_1&adgate_token=00",
    "png",
    "",
];
const SECRET: &str = "bb_whsec_props";
const UID: &str = "kG39R5XbvPQpLENKBWJj";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn adapter(base: &str) -> Bannerbear {
    Bannerbear::new(BannerbearConfig {
        base_url: base.to_owned(),
        webhook_secret: Some(SECRET.into()),
        ..BannerbearConfig::new("k")
    })
    .unwrap()
}

fn signed(body: &[u8]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        SIGNATURE_HEADER,
        webhook::sign(SECRET.as_bytes(), body).parse().unwrap(),
    );
    h
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn signed_deliveries_with_any_payload(body in prop_oneof![
        arb_json(KEYS, WORDS).prop_map(|v| v.to_string().into_bytes()),
        arb_json(KEYS, WORDS).prop_map(|v| json!({"uid": UID, "status": "completed",
            "completed_at": time::rfc3339(SystemTime::now()), "files": v}).to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..512),
    ]) {
        if let Ok(ev) = adapter("http://127.0.0.1:9").parse_webhook(&signed(&body), &body, SystemTime::now()) {
            ev.updates.iter().for_each(check_update);
        }
    }

    #[test]
    fn forged_deliveries_never_parse(body in prop::collection::vec(any::<u8>(), 0..256), sig in "[ -~]{0,80}") {
        let mut h = http::HeaderMap::new();
        if let Ok(v) = sig.parse() {
            h.insert(SIGNATURE_HEADER, v);
        }
        prop_assert!(adapter("http://127.0.0.1:9").parse_webhook(&h, &body, SystemTime::now()).is_err());
    }

    #[test]
    fn image_bodies_give_valid_updates(v in arb_json(KEYS, WORDS)) {
        if let Ok(i) = serde_json::from_value::<Image>(v) {
            check_update(&wire::to_update(UID, &i));
        }
    }

    #[test]
    fn specs_never_panic(v in arb_json(KEYS, WORDS)) {
        if let Ok(s) = spec::parse(&v) {
            let _ = wire::create_body(&s, "adgate_job=job_1");
        }
    }

    #[test]
    fn error_mapping_and_timestamps_survive_arbitrary_input(
        status in statuses(),
        body in prop::collection::vec(any::<u8>(), 0..256),
        text in "[ -~]{0,40}",
    ) {
        let s = http::StatusCode::from_u16(status).unwrap();
        for effect in [Effect::Read, Effect::Write] {
            let _ = adgate_bannerbear::errors::map_error(s, &http::HeaderMap::new(), &body, effect);
        }
        let _ = wire::parse_rfc3339(&text);
        let _ = wire::parse_rfc3339(&String::from_utf8_lossy(&body));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// The real client over HTTP: poll and submit against a server answering anything.
    #[test]
    fn poll_and_submit_survive_any_answer(status in statuses(), body in prop_oneof![
        arb_json(KEYS, WORDS).prop_map(|v| v.to_string().into_bytes()),
        arb_json(KEYS, WORDS).prop_map(|v| json!({"uid": UID, "status": "completed", "files": v}).to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
    ]) {
        let rt = runtime();
        rt.block_on(async {
            let base = serve_once(status, body).await;
            let a = adapter(&base);
            if let Ok(o) = a.poll(&[UID.to_owned()]).await {
                o.value.iter().for_each(check_update);
            }
            let spec = json!({"template": "A89wavQyY3Bebk3djP",
                "modifications": {"template": {"width": 300, "height": 250}}});
            let batch = SubmitBatch { idempotency_key: "k1".into(), items: vec![SubmitItem { job_id: "job_1".into(), spec }] };
            if let Ok(o) = a.submit(batch).await {
                assert_eq!(o.value.len(), 1);
                assert!(!o.value[0].provider_ref.is_empty());
            }
        });
    }
}
