//! Property tests: whatever StaticAdsLab (or an impostor) sends — API bodies, SSE bytes —
//! the adapter never panics and never produces an update that breaks the model's invariants;
//! the SSE parser yields the same events however the stream is split into chunks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use adgate_generator::{Generator, SubmitBatch, SubmitItem};
use adgate_sim::props::{arb_json, check_update, runtime, serve_once, statuses};
use adgate_staticadslab::sse::{self, Signal, SseEvent, SseParser};
use adgate_staticadslab::wire::ImageAd;
use adgate_staticadslab::{StaticAdsLab, StaticAdsLabConfig};
use proptest::prelude::*;
use serde_json::json;

const KEYS: &[&str] = &[
    "data",
    "meta",
    "id",
    "status",
    "progress",
    "step",
    "message",
    "percentage",
    "image_url",
    "width",
    "height",
    "error",
    "code",
    "details",
    "field",
];
const WORDS: &[&str] = &[
    "completed",
    "failed",
    "processing",
    "queued",
    "ia_1",
    "ia_2",
    "ia_abc",
    "",
    "https://cdn.example/x.png",
    "PIPELINE_ERROR",
    "INSUFFICIENT_BALANCE",
    "RATE_LIMITED",
];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut p = SseParser::new();
    chunks.iter().flat_map(|c| p.push(c)).collect()
}

fn arb_sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let line_end = prop::sample::select(vec!["\n", "\r\n", "\r"]);
    let field = prop_oneof![
        (
            Just("event: "),
            prop::sample::select(vec![
                "started",
                "progress",
                "complete",
                "error",
                "heartbeat",
                "x"
            ])
        )
            .prop_map(|(a, b)| format!("{a}{b}")),
        "[ -~]{0,30}".prop_map(|d| format!("data: {d}")),
        "[0-9]{1,4}".prop_map(|d| format!("id: {d}")),
        "[ -~]{0,20}".prop_map(|d| format!(": {d}")),
        Just("retry: 100".to_owned()),
    ];
    prop::collection::vec(
        (
            prop::collection::vec((field, line_end.clone()), 0..5),
            line_end,
        ),
        0..8,
    )
    .prop_map(|evs| {
        let mut s = String::new();
        for (lines, end) in evs {
            for (l, e) in lines {
                s.push_str(&l);
                s.push_str(e);
            }
            s.push_str(end);
        }
        s.into_bytes()
    })
}

/// Split points that never separate a "\r\n" pair across... any position at all: the parser
/// must handle a chunk boundary between '\r' and '\n' too.
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        out.push(bytes[at..p].to_vec());
        at = p;
    }
    out.push(bytes[at..].to_vec());
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sse_parser_is_split_invariant(stream in arb_sse_stream(), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let whole = events(&[&stream]);
        let parts = split(&stream, &cuts);
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(events(&refs), whole.clone());
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(events(&bytes), whole);
    }

    #[test]
    fn sse_parser_and_interpreter_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let parts = split(&bytes, &cuts);
        let mut p = SseParser::new();
        for part in &parts {
            for ev in p.push(part) {
                match sse::interpret("ia_1", &ev) {
                    Signal::Ignore | Signal::End(None) => {}
                    Signal::Update(u) | Signal::End(Some(u)) => check_update(&u),
                }
            }
        }
    }

    #[test]
    fn sse_events_with_arbitrary_json_data(name in prop::sample::select(vec!["progress", "error", "complete", "started"]), data in arb_json(KEYS, WORDS)) {
        let ev = SseEvent { event: name.to_owned(), data: data.to_string(), id: None };
        match sse::interpret("ia_1", &ev) {
            Signal::Ignore | Signal::End(None) => {}
            Signal::Update(u) | Signal::End(Some(u)) => check_update(&u),
        }
    }

    #[test]
    fn image_ad_json_gives_valid_updates(v in arb_json(KEYS, WORDS)) {
        if let Ok(ad) = serde_json::from_value::<ImageAd>(v) {
            check_update(&ad.to_update());
        }
    }

    #[test]
    fn error_mapping_survives_arbitrary_bodies(status in statuses(), body in prop_oneof![arb_json(KEYS, WORDS).prop_map(|v| v.to_string().into_bytes()), prop::collection::vec(any::<u8>(), 0..256)]) {
        let _ = adgate_staticadslab::error::map_status(status, &http::HeaderMap::new(), &body);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// The real client over HTTP: poll and submit against a server answering anything.
    #[test]
    fn poll_and_submit_survive_any_answer(status in statuses(), body in prop_oneof![
        arb_json(KEYS, WORDS).prop_map(|v| json!({"data": [v]}).to_string().into_bytes()),
        arb_json(KEYS, WORDS).prop_map(|v| json!({"data": v}).to_string().into_bytes()),
        arb_json(KEYS, WORDS).prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
    ]) {
        let rt = runtime();
        rt.block_on(async {
            let base = serve_once(status, body).await;
            let mut cfg = StaticAdsLabConfig::new("k");
            cfg.base_url = base;
            let a = StaticAdsLab::new(cfg).unwrap();
            if let Ok(o) = a.poll(&["ia_1".to_owned(), "ia_2".to_owned()]).await {
                assert_eq!(o.value.len(), 2, "one update per key");
                o.value.iter().for_each(check_update);
            }
            let spec = json!({"design_template_id": "dt_1", "brand_id": "brand_1", "product_id": "prod_1", "audience_id": "aud_1"});
            let batch = SubmitBatch { idempotency_key: "k1".into(), items: vec![SubmitItem { job_id: "job_1".into(), spec }] };
            if let Ok(o) = a.submit(batch).await {
                assert_eq!(o.value.len(), 1);
                assert!(!o.value[0].provider_ref.is_empty());
            }
        });
    }
}

/// Regression: a "\r\n" split across two chunks is one line end, not two.
#[test]
fn crlf_split_across_chunks_is_one_line_end() {
    let whole = events(&[b"event: progress\r\ndata: {}\r\n\r\n"]);
    let split = events(&[b"event: progress\r", b"\ndata: {}\r", b"\n\r", b"\n"]);
    assert_eq!(whole, split);
    assert_eq!(whole.len(), 1);
}
