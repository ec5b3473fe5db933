//! The engine's retention task against a real SQLite store: a pass at start-up deletes what
//! is old enough and spares the rest, counts it, and shutdown waits for the task.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adgate_engine::{Engine, EngineConfig, Retention};
use adgate_generator::JobState;
use adgate_store::{JobPatch, NewJob, NewSubmission, SqliteStore, Store, SubmitOutcome};
use tokio_util::sync::CancellationToken;

const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn submission(batch: &str, ids: &[&str], at: i64, request_id: Option<&str>) -> NewSubmission {
    NewSubmission {
        batch_id: batch.to_owned(),
        caller: adgate_store::ANONYMOUS.to_owned(),
        request_id: request_id.map(str::to_owned),
        content_hash: format!("hash-{}", request_id.unwrap_or(batch)),
        jobs: ids
            .iter()
            .map(|id| NewJob {
                id: (*id).to_owned(),
                // No provider of that name is configured: nothing dispatches these jobs.
                provider: "elsewhere".to_owned(),
                spec: serde_json::json!({ "n": 1 }),
                group_key: None,
                correlation_key: None,
                client_ref: String::new(),
                labels: BTreeMap::new(),
                deadline_at_ms: at + 1_000 * HOUR_MS,
                priority: adgate_store::DEFAULT_PRIORITY,
                cost: None,
                traceparent: None,
            })
            .collect(),
        now_ms: at,
        notify: None,
    }
}

async fn complete(store: &dyn Store, ids: &[&str], at: i64) {
    let patches = ids
        .iter()
        .map(|id| JobPatch {
            state: Some(JobState::Completed),
            ..JobPatch::new(*id)
        })
        .collect();
    store.apply(patches, at).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_pass_deletes_old_rows_and_stops_with_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("adgate.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
    let now = now_ms();
    let old = now - 3 * HOUR_MS;
    // Old and terminal: goes, with its batch. Old but queued: stays. Young: stays.
    store
        .submit(submission("b_old", &["old1", "old2"], old, Some("req-old")))
        .await
        .unwrap();
    complete(&*store, &["old1", "old2"], old).await;
    store
        .submit(submission("b_live", &["live"], old, None))
        .await
        .unwrap();
    store
        .submit(submission("b_young", &["young"], now, Some("req-young")))
        .await
        .unwrap();
    complete(&*store, &["young"], now).await;
    assert!(
        store
            .record_delivery("pictify", "del-old", old)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_delivery("pictify", "del-new", now)
            .await
            .unwrap()
    );

    let shutdown = CancellationToken::new();
    let hour = Duration::from_secs(3600);
    let engine = Engine::start(
        Arc::clone(&store),
        EngineConfig {
            retention: Retention {
                jobs: hour,
                request_ids: hour,
                deliveries: hour,
                interval: hour,
            },
            ..EngineConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();

    // The first pass runs at start-up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.metrics().retention_deleted_rows("jobs") < 2 {
        assert!(Instant::now() < deadline, "no retention pass within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = engine.metrics();
    // Metrics are counted step by step; wait until the pass's last table shows up too.
    while m.retention_deleted_rows("webhook_deliveries") < 1 {
        assert!(Instant::now() < deadline, "pass did not finish within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        [
            m.retention_deleted_rows("jobs"),
            m.retention_deleted_rows("batches"),
            m.retention_deleted_rows("request_ids"),
            m.retention_deleted_rows("webhook_deliveries"),
        ],
        [2, 1, 1, 1]
    );
    let ids: Vec<String> = ["old1", "old2", "live", "young"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut left: Vec<String> = store
        .get_jobs(&ids)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    left.sort();
    assert_eq!(left, ["live", "young"]);
    // The young request id still replays; the old one is free again.
    assert!(matches!(
        store
            .submit(submission("b_young2", &["young2"], now, Some("req-young")))
            .await
            .unwrap(),
        SubmitOutcome::Replayed { .. }
    ));
    assert!(matches!(
        store
            .submit(submission("b_again", &["again"], now, Some("req-old")))
            .await
            .unwrap(),
        SubmitOutcome::Created { .. }
    ));
    assert!(
        !store
            .record_delivery("pictify", "del-new", now)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_delivery("pictify", "del-old", now)
            .await
            .unwrap()
    );

    shutdown.cancel();
    assert!(
        engine.stopped(Duration::from_secs(10)).await,
        "the retention task ends with the engine"
    );
    store.close().await;
}
