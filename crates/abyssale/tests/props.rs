//! Property tests: whatever Abyssale (or an impostor) sends — status bodies, error bodies,
//! correctly signed callbacks with arbitrary payloads — the adapter never panics and never
//! produces an update that breaks the model's invariants.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{SystemTime, UNIX_EPOCH};

use adgate_abyssale::wire::{self, Status};
use adgate_abyssale::{Abyssale, AbyssaleConfig, SIGNATURE_HEADER, SIGNATURE_PREFIX};
use adgate_generator::signature;
use adgate_generator::{Generator, SubmitBatch, SubmitItem};
use adgate_sim::props::{arb_json, check_update, runtime, serve_once, statuses};
use proptest::prelude::*;
use serde_json::json;

const KEYS: &[&str] = &[
    "id",
    "generation_request_id",
    "is_finalized",
    "banners",
    "errors",
    "file",
    "type",
    "url",
    "cdn_url",
    "filename",
    "format",
    "width",
    "height",
    "template_format_name",
    "reason",
    "template",
    "name",
    "message",
    "code",
    "errors",
];
const WORDS: &[&str] = &[
    "497f6eca-6276-4993-bfeb-53cbbbba6f08",
    "facebook-feed",
    "png",
    "jpeg",
    "https://cdn.example/a.png",
    "",
    "rate_limit_exceeded",
    "unauthorized",
];
const SECRET: &str = "whsec_props";
const GEN: &str = "497f6eca-6276-4993-bfeb-53cbbbba6f08";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn adapter(base: &str) -> Abyssale {
    let mut cfg = AbyssaleConfig::new("k");
    cfg.base_url = base.to_owned();
    cfg.webhook_secret = Some(SECRET.into());
    Abyssale::new(cfg).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn signed_callbacks_with_any_payload(body in prop_oneof![
        arb_json(KEYS, WORDS).prop_map(|v| v.to_string().into_bytes()),
        arb_json(KEYS, WORDS).prop_map(|v| json!({"generation_request_id": GEN, "banners": [v]}).to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..512),
    ]) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut h = http::HeaderMap::new();
        h.insert(SIGNATURE_HEADER, signature::header_value(SECRET.as_bytes(), SIGNATURE_PREFIX, now, &body).parse().unwrap());
        if let Ok(ev) = adapter("http://127.0.0.1:9").parse_webhook(&h, &body, SystemTime::now()) {
            ev.updates.iter().for_each(check_update);
        }
    }

    #[test]
    fn forged_callbacks_never_parse(body in prop::collection::vec(any::<u8>(), 0..256), sig in "[ -~]{0,80}") {
        let mut h = http::HeaderMap::new();
        if let Ok(v) = sig.parse() {
            h.insert(SIGNATURE_HEADER, v);
        }
        prop_assert!(adapter("http://127.0.0.1:9").parse_webhook(&h, &body, SystemTime::now()).is_err());
    }

    #[test]
    fn status_bodies_give_valid_updates(v in arb_json(KEYS, WORDS), fin in any::<bool>(), req in prop::option::of(0usize..5)) {
        if let Ok(s) = serde_json::from_value::<Status>(v) {
            check_update(&wire::to_update(GEN, &s, fin, req));
        }
    }

    #[test]
    fn error_mapping_survives_arbitrary_bodies(status in statuses(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let s = http::StatusCode::from_u16(status).unwrap();
        let _ = adgate_abyssale::errors::map_error(s, &http::HeaderMap::new(), &body);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// The real client over HTTP: poll and submit against a server answering anything.
    #[test]
    fn poll_and_submit_survive_any_answer(status in statuses(), body in prop_oneof![
        arb_json(KEYS, WORDS).prop_map(|v| v.to_string().into_bytes()),
        arb_json(KEYS, WORDS).prop_map(|v| json!({"generation_request_id": GEN, "is_finalized": true, "banners": [v]}).to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
    ]) {
        let rt = runtime();
        rt.block_on(async {
            let base = serve_once(status, body).await;
            let a = adapter(&base);
            if let Ok(o) = a.poll(&[GEN.to_owned()]).await {
                o.value.iter().for_each(check_update);
            }
            let spec = json!({"design_id": GEN, "format_names": ["facebook-feed"]});
            let batch = SubmitBatch { idempotency_key: "k1".into(), items: vec![SubmitItem { job_id: "job_1".into(), spec }] };
            if let Ok(o) = a.submit(batch).await {
                assert_eq!(o.value.len(), 1);
                assert!(!o.value[0].provider_ref.is_empty());
            }
        });
    }
}
