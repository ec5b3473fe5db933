//! The adapter against the StaticAdsLab simulator: batch polls, SSE, money, idempotency and
//! the error taxonomy over real sockets.
// Test code: a failed unwrap is a failed assertion (clippy.toml only exempts #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use adgate_generator::{GenError, Generator, RemoteState, SubmitBatch, SubmitItem, UpdateTarget};
use adgate_sim::{Faults, SimConfig, SimHandle};
use adgate_staticadslab::{StaticAdsLab, StaticAdsLabConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};

const KEY: &str = "sal_live_adapter_test";

fn cfg() -> SimConfig {
    SimConfig {
        api_key: KEY.to_owned(),
        time_scale: 0.005,
        ..SimConfig::default()
    }
}

async fn start(cfg: SimConfig) -> (SimHandle, StaticAdsLab) {
    start_with_key(cfg, KEY).await
}

async fn start_with_key(cfg: SimConfig, key: &str) -> (SimHandle, StaticAdsLab) {
    let sim = adgate_sim::staticadslab::spawn(cfg).await.unwrap();
    let adapter = StaticAdsLab::new(StaticAdsLabConfig {
        api_key: key.to_owned(),
        base_url: format!("{}/", sim.base_url),
        request_timeout: Duration::from_secs(2),
        ids_per_poll: 80,
    })
    .unwrap();
    (sim, adapter)
}

fn spec(i: usize) -> Value {
    json!({
        "design_template_id": format!("dt_{i:016x}"),
        "brand_id": "brand_a1b2c3d4e5f67890",
        "product_id": "prod_a1b2c3d4e5f67890",
        "audience_id": "aud_a1b2c3d4e5f67890",
        "node_overrides": {"hero": {"image_fill_url": "https://cdn.example.com/hero.jpg"}},
    })
}

fn batch(key: &str, i: usize) -> SubmitBatch {
    SubmitBatch {
        idempotency_key: key.to_owned(),
        items: vec![SubmitItem {
            job_id: format!("job_{i}"),
            spec: spec(i),
        }],
    }
}

async fn submit(a: &StaticAdsLab, key: &str, i: usize) -> Result<String, GenError> {
    let acc = a.submit(batch(key, i)).await?;
    Ok(acc.value[0].provider_ref.clone())
}

#[tokio::test]
async fn submit_reads_rate_headers_and_replay_is_flagged() {
    let (sim, a) = start(cfg()).await;
    let first = a.submit(batch("k-replay", 1)).await.unwrap();
    assert_eq!(first.value.len(), 1);
    assert_eq!(first.value[0].job_id, "job_1");
    assert!(first.value[0].provider_ref.starts_with("ia_"));
    assert!(!first.value[0].replayed);
    let rate = first.rate.unwrap();
    assert_eq!(rate.limit, Some(100));
    assert_eq!(rate.remaining, 99);
    let second = a.submit(batch("k-replay", 1)).await.unwrap();
    assert!(second.value[0].replayed);
    assert_eq!(second.value[0].provider_ref, first.value[0].provider_ref);
    assert_eq!(sim.ledger.creations(), 1);
    assert_eq!(sim.ledger.replays(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn batch_poll_of_80_ids_reports_unknown_as_not_found() {
    let (sim, a) = start(cfg()).await;
    let submits = (0..79).map(|i| {
        let a = &a;
        async move { submit(a, &format!("k-poll-{i}"), i).await.unwrap() }
    });
    let mut keys: Vec<String> = futures_util::future::join_all(submits).await;
    keys.insert(40, "ia_ffffffffffffffff".to_owned());
    assert_eq!(keys.len(), 80);
    let polled = a.poll(&keys).await.unwrap();
    assert_eq!(
        sim.ledger.requests("GET /v1/image-ads"),
        1,
        "one request for 80 ids"
    );
    assert_eq!(polled.value.len(), 80);
    for (k, u) in keys.iter().zip(&polled.value) {
        assert_eq!(u.target, UpdateTarget::ProviderRef(k.clone()));
    }
    assert_eq!(polled.value[40].state, RemoteState::NotFound);
    assert!(
        polled
            .value
            .iter()
            .enumerate()
            .all(|(i, u)| i == 40 || u.state != RemoteState::NotFound)
    );
    assert!(polled.rate.is_some());
    // Too many keys is refused locally, without a request.
    let too_many: Vec<String> = (0..81).map(|i| format!("ia_{i:016x}")).collect();
    assert!(matches!(
        a.poll(&too_many).await,
        Err(GenError::Invalid { .. })
    ));
    // Keys that cannot be ad ids are NotFound without asking the provider.
    let odd = a.poll(&["brand_1".to_owned()]).await.unwrap();
    assert_eq!(odd.value[0].state, RemoteState::NotFound);
    assert_eq!(sim.ledger.requests("GET /v1/image-ads"), 1);
    sim.shutdown();
}

/// [SAL:reference/pagination]: lists page by `limit` and `has_more`; providers.md §6 q4 leaves
/// open whether `?ids=` does. Against a server that serves fewer ads per page than asked, the
/// adapter follows `has_more` with `starting_after` and reports NotFound only for ids absent
/// from the complete answer.
#[tokio::test]
async fn batch_poll_follows_has_more_and_never_reports_not_found_from_a_partial_page() {
    let (sim, a) = start(cfg()).await;
    let submits = (0..29).map(|i| {
        let a = &a;
        async move { submit(a, &format!("k-page-{i}"), i).await.unwrap() }
    });
    let mut keys: Vec<String> = futures_util::future::join_all(submits).await;
    keys.insert(15, "ia_ffffffffffffffff".to_owned());
    sim.set_faults(Faults {
        sal_page_cap: Some(7),
        ..Faults::default()
    });
    let polled = a.poll(&keys).await.unwrap();
    // 29 known ads, 7 per page: 7 + 7 + 7 + 7 + 1.
    assert_eq!(sim.ledger.requests("GET /v1/image-ads"), 5);
    assert_eq!(polled.value.len(), 30);
    for (i, (k, u)) in keys.iter().zip(&polled.value).enumerate() {
        assert_eq!(u.target, UpdateTarget::ProviderRef(k.clone()));
        assert_eq!(
            u.state == RemoteState::NotFound,
            i == 15,
            "key {i} ({k}): {:?}",
            u.state
        );
    }
    // The documented default page (20) with no `limit` would have cut 80 ids to 20; the
    // adapter asks for as many as it sends, so one request covers them.
    sim.set_faults(Faults::default());
    let before = sim.ledger.requests("GET /v1/image-ads");
    let polled = a.poll(&keys).await.unwrap();
    assert_eq!(sim.ledger.requests("GET /v1/image-ads"), before + 1);
    assert_eq!(
        polled
            .value
            .iter()
            .filter(|u| u.state == RemoteState::NotFound)
            .count(),
        1
    );
    sim.shutdown();
}

#[tokio::test]
async fn poll_reaches_completed_with_a_png_output() {
    let (sim, a) = start(cfg()).await;
    let id = submit(&a, "k-done", 1).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let done = loop {
        let u = a
            .poll(std::slice::from_ref(&id))
            .await
            .unwrap()
            .value
            .remove(0);
        if u.state != RemoteState::Processing {
            break u;
        }
        if let Some(p) = &u.progress {
            assert!((0.0..=100.0).contains(&p.percentage));
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done.state, RemoteState::Completed);
    let out = &done.outputs[0];
    // A flat ad: "a single 4K PNG" [SEED-2], as the simulator serves it.
    let side = adgate_sim::staticadslab::FLAT_SIDE;
    assert_eq!((out.width, out.height), (side, side));
    assert_eq!(out.mime_type, "image/png");
    let png = reqwest::get(&out.url).await.unwrap().bytes().await.unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    sim.shutdown();
}

async fn collect(a: &StaticAdsLab, id: &str) -> Vec<adgate_generator::ProviderUpdate> {
    let stream = a.stream_updates(id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), stream.collect::<Vec<_>>())
        .await
        .expect("stream ends on its own")
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[tokio::test]
async fn sse_yields_progress_then_ends() {
    let (sim, a) = start(SimConfig {
        job_duration: (Duration::from_secs(60), Duration::from_secs(60)),
        ..cfg()
    })
    .await;
    let id = submit(&a, "k-sse", 1).await.unwrap();
    let updates = collect(&a, &id).await;
    assert!(updates.len() >= 2, "{updates:?}");
    let mut last = -1.0;
    for u in &updates {
        assert_eq!(u.state, RemoteState::Processing);
        assert_eq!(u.target, UpdateTarget::ProviderRef(id.clone()));
        let p = u.progress.as_ref().unwrap();
        assert!(
            (0.0..=100.0).contains(&p.percentage) && p.percentage >= last,
            "{p:?}"
        );
        last = p.percentage;
    }
    assert!(last > 1.0, "fractions are scaled to percent: {last}");
    assert_eq!(sim.ledger.requests("SSE /v1/image-ads/:id"), 1);
    assert_eq!(
        sim.ledger.requests("GET /v1/image-ads/:id"),
        0,
        "the adapter never polls"
    );
    sim.shutdown();
}

#[tokio::test]
async fn sse_error_event_is_a_failed_update_and_drops_just_end() {
    let (sim, a) = start(SimConfig {
        failure_ratio: 1.0,
        ..cfg()
    })
    .await;
    let id = submit(&a, "k-sse-fail", 1).await.unwrap();
    let updates = collect(&a, &id).await;
    let last = updates.last().unwrap();
    assert_eq!(last.state, RemoteState::Failed);
    let err = last.error.as_ref().unwrap();
    assert_eq!(err.code, "PROVIDER_JOB_FAILED");
    assert_eq!(err.provider_code, "PIPELINE_ERROR");
    // A dropped stream ends without an error item; the engine polls afterwards.
    sim.update_faults(|f| f.sse_drop_after = Some(1));
    let id2 = submit(&a, "k-sse-drop", 2).await.unwrap();
    let updates = collect(&a, &id2).await;
    assert!(updates.iter().all(|u| u.state == RemoteState::Processing));
    sim.shutdown();
}

#[tokio::test]
async fn insufficient_balance_is_reported() {
    let (sim, a) = start(SimConfig {
        wallet: Some(100),
        ..cfg()
    })
    .await;
    submit(&a, "k-money-1", 1).await.unwrap();
    let err = submit(&a, "k-money-2", 2).await.unwrap_err();
    match err {
        GenError::InsufficientBalance { message } => {
            assert!(message.contains("INSUFFICIENT_BALANCE"))
        }
        other => panic!("{other:?}"),
    }
    sim.shutdown();
}

#[tokio::test]
async fn concurrent_duplicate_is_transient_then_replays() {
    let (sim, a) = start(cfg()).await;
    sim.update_faults(|f| f.latency = Duration::from_millis(300));
    let a = std::sync::Arc::new(a);
    let first = {
        let a = a.clone();
        tokio::spawn(async move { submit(&a, "k-conc", 1).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while sim.ledger.requests("POST /v1/image-ads") == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dup = submit(&a, "k-conc", 1).await.unwrap_err();
    assert!(matches!(dup, GenError::Transient { .. }), "{dup:?}");
    let id = first.await.unwrap().unwrap();
    sim.set_faults(Faults::default());
    let again = a.submit(batch("k-conc", 1)).await.unwrap();
    assert!(again.value[0].replayed);
    assert_eq!(again.value[0].provider_ref, id);
    assert_eq!(sim.ledger.creations(), 1);
    sim.shutdown();
}

#[tokio::test]
async fn error_taxonomy_over_the_wire() {
    let (sim, bad) = start_with_key(cfg(), "sal_live_wrong_key_42").await;
    let err = submit(&bad, "k-auth", 1).await.unwrap_err();
    assert!(matches!(err, GenError::Unauthorized { .. }), "{err:?}");
    assert!(!format!("{err:?} {err}").contains("wrong_key_42"));
    sim.shutdown();

    let (sim, a) = start(cfg()).await;
    // Same key, different body: the provider refuses; resending cannot help.
    submit(&a, "k-body", 1).await.unwrap();
    let err = submit(&a, "k-body", 2).await.unwrap_err();
    assert!(matches!(err, GenError::Invalid { .. }), "{err:?}");
    // Local validation never reaches the provider.
    let before = sim.ledger.requests("POST /v1/image-ads");
    let mut b = batch("k-invalid", 3);
    b.items[0].spec["brand_id"] = json!("prod_1");
    let err = a.submit(b).await.unwrap_err();
    match err {
        GenError::Invalid { violations, .. } => assert_eq!(violations[0].field, "brand_id"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.ledger.requests("POST /v1/image-ads"), before);

    sim.set_faults(Faults {
        error_5xx_ratio: 1.0,
        ..Faults::default()
    });
    assert!(matches!(
        submit(&a, "k-5xx", 4).await,
        Err(GenError::Transient { .. })
    ));
    sim.set_faults(Faults {
        burst_429: 1,
        ..Faults::default()
    });
    match a.poll(&["ia_0000000000000000".to_owned()]).await {
        Err(GenError::RateLimited {
            retry_after: Some(d),
        }) => assert!(d >= Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    sim.set_faults(Faults {
        malformed_ratio: 1.0,
        ..Faults::default()
    });
    assert!(matches!(
        a.poll(&["ia_0000000000000000".to_owned()]).await,
        Err(GenError::Transient { .. })
    ));
    sim.set_faults(Faults {
        drop_ratio: 1.0,
        ..Faults::default()
    });
    let err = submit(&a, "k-drop", 5).await.unwrap_err();
    assert!(matches!(err, GenError::UnknownOutcome { .. }), "{err:?}");
    // The dropped POST did create the ad: retrying with the same key replays it.
    sim.set_faults(Faults::default());
    let again = a.submit(batch("k-drop", 5)).await.unwrap();
    assert!(again.value[0].replayed);
    sim.shutdown();
}

#[tokio::test]
async fn unreachable_provider_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let a = StaticAdsLab::new(StaticAdsLabConfig {
        api_key: KEY.into(),
        base_url: format!("http://{addr}"),
        request_timeout: Duration::from_secs(1),
        ids_per_poll: 80,
    })
    .unwrap();
    let err = submit(&a, "k-down", 1).await.unwrap_err();
    assert!(matches!(err, GenError::Transient { .. }), "{err:?}");
}

#[tokio::test]
async fn timeout_after_sending_is_unknown_outcome() {
    let (sim, _) = start(cfg()).await;
    sim.update_faults(|f| f.latency = Duration::from_millis(500));
    let a = StaticAdsLab::new(StaticAdsLabConfig {
        api_key: KEY.into(),
        base_url: sim.base_url.clone(),
        request_timeout: Duration::from_millis(100),
        ids_per_poll: 80,
    })
    .unwrap();
    let err = submit(&a, "k-slow", 1).await.unwrap_err();
    assert!(matches!(err, GenError::UnknownOutcome { .. }), "{err:?}");
    sim.shutdown();
}
