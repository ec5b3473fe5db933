//! The conformance suite and SQLite-specific checks, on temporary database files.

// Test helpers outside `#[test]` functions (the suite, the fixtures) fail loudly by design.
#![allow(clippy::expect_used)]

mod suite;

use std::sync::Arc;
use std::time::Instant;

use adgate_generator::JobState;
use adgate_store::{JobPatch, NewSubmission, SqliteStore, Store, StoreError};
use sqlx::Connection;
use tempfile::TempDir;

use suite::{T0, job, submission, submit_ok};

fn url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("adgate.db").display())
}

async fn fresh() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&url(&dir)).await.expect("open");
    (dir, store)
}

/// One test per suite function, each on its own fresh database file.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_dir, store) = fresh().await;
            suite::$name(&store).await;
            store.close().await;
        }
    )*};
}

conformance!(
    submit_and_read,
    get_many_jobs,
    request_id_dedupe,
    apply_semantics,
    attempts_and_queue,
    tracking_lookups,
    expiry,
    webhook_deliveries,
    counts,
    failing_command_is_isolated,
    attempt_key_reuse,
    single_replica_claims,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistence_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = url(&dir);
    suite::persistence(|| {
        let url = url.clone();
        async move { Arc::new(SqliteStore::open(&url).await.expect("open")) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit() {
    let (_dir, store) = fresh().await;
    let store: Arc<dyn Store> = Arc::new(store);
    suite::group_commit(Arc::clone(&store)).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_flushes_then_rejects_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&url(&dir)).await.expect("open");
    suite::close_then_write(&store).await;
    // Reads fail cleanly too, once the pool is closed.
    let read = store.get_jobs(&["job_1".to_owned()]).await;
    assert!(matches!(read, Err(StoreError::Closed)), "{read:?}");
    drop(store);

    // The submit that was queued before close() is on disk.
    let store = SqliteStore::open(&url(&dir)).await.expect("reopen");
    let jobs = store
        .batch_jobs("batch_1")
        .await
        .expect("batch")
        .expect("flushed");
    assert_eq!(jobs.len(), 1);
    assert_eq!(store.batch_jobs("batch_2").await.expect("batch"), None);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_database_is_shared_by_writer_and_readers() {
    let store = SqliteStore::open("sqlite::memory:")
        .await
        .expect("open memory");
    suite::submit_and_read(&store).await;
    store.close().await;
    // Each `sqlite::memory:` store is its own database.
    let a = SqliteStore::open("sqlite::memory:").await.expect("open a");
    let b = SqliteStore::open("sqlite::memory:").await.expect("open b");
    submit_ok(&a, submission("batch_1", vec![job("job_1", "pictify")], T0)).await;
    assert_eq!(b.batch_jobs("batch_1").await.expect("batch"), None);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn rejects_urls_of_other_databases() {
    for bad in [
        "postgres://localhost/adgate",
        "adgate.db",
        "sqlite://x.db?mode=bogus",
    ] {
        let err = SqliteStore::open(bad).await.expect_err(bad);
        assert!(matches!(err, StoreError::InvalidUrl(_)), "{bad}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_recorded_and_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..3 {
        let store = SqliteStore::open(&url(&dir)).await.expect("open");
        store.close().await;
    }
    let mut conn = sqlx::SqliteConnection::connect(&url(&dir))
        .await
        .expect("connect");
    let versions: Vec<(i64,)> = sqlx::query_as("SELECT version FROM schema_migrations")
        .fetch_all(&mut conn)
        .await
        .expect("versions");
    assert_eq!(versions, vec![(1,)]);
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("journal mode");
    assert_eq!(mode, "wal");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_rows_are_reported_not_panicked_on() {
    let (dir, store) = fresh().await;
    submit_ok(
        &store,
        submission(
            "batch_1",
            vec![job("job_1", "pictify"), job("job_2", "pictify")],
            T0,
        ),
    )
    .await;
    {
        let mut conn = sqlx::SqliteConnection::connect(&url(&dir))
            .await
            .expect("connect");
        sqlx::query("UPDATE jobs SET labels = 'not json' WHERE id = 'job_1'")
            .execute(&mut conn)
            .await
            .expect("corrupt labels");
        sqlx::query("UPDATE jobs SET state = 42 WHERE id = 'job_2'")
            .execute(&mut conn)
            .await
            .expect("corrupt state");
        conn.close().await.expect("close");
    }
    let err = store
        .get_jobs(&["job_1".to_owned()])
        .await
        .expect_err("corrupt labels");
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("job_1")),
        "{err:?}"
    );
    let err = store
        .get_jobs(&["job_2".to_owned()])
        .await
        .expect_err("corrupt state");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let err = store.count_by_state().await.expect_err("corrupt state");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    // A patch to a corrupt job fails alone, and the writer keeps serving.
    let mut patch = JobPatch::new("job_1");
    patch.state = Some(JobState::Processing);
    assert!(matches!(
        store.apply(vec![patch], T0).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(
        store
            .record_delivery("pictify", "d-1", T0)
            .await
            .expect("still writing")
    );
    store.close().await;
}

/// Bulk throughput: 100 jobs per submit. Prints the figure; the assertion is deliberately
/// loose because debug builds and shared CI disks are slow (release runs far above 50k/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_submit_throughput() {
    const CALLS: usize = 500;
    const PER_CALL: usize = 100;
    let (_dir, store) = fresh().await;
    let store = Arc::new(store);
    let make = |call: usize| NewSubmission {
        batch_id: format!("batch_{call}"),
        request_id: Some(format!("req_{call}")),
        content_hash: "h".to_owned(),
        jobs: (0..PER_CALL)
            .map(|i| job(&format!("job_{call}_{i}"), "pictify"))
            .collect(),
        now_ms: T0,
    };

    // Sequential: one caller, one commit per call.
    let started = Instant::now();
    for call in 0..CALLS / 2 {
        submit_ok(&*store, make(call)).await;
    }
    let sequential = (CALLS / 2 * PER_CALL) as f64 / started.elapsed().as_secs_f64();

    // Concurrent: 16 callers; calls share commits.
    let started = Instant::now();
    let commits = store.commit_count();
    let tasks: Vec<_> = (0..16)
        .map(|worker| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for call in (CALLS / 2 + worker..CALLS).step_by(16) {
                    submit_ok(&*store, make(call)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let concurrent = (CALLS / 2 * PER_CALL) as f64 / started.elapsed().as_secs_f64();
    let commits = store.commit_count() - commits;
    eprintln!(
        "bulk submit: sequential {sequential:.0} jobs/s, 16 callers {concurrent:.0} jobs/s \
         ({} calls in {commits} commits)",
        CALLS / 2
    );
    let total: u64 = store
        .count_by_state()
        .await
        .expect("count")
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(total, (CALLS * PER_CALL) as u64);
    assert!(concurrent > 2_000.0, "{concurrent:.0} jobs/s");
    store.close().await;
}

/// Single-job submits from 64 concurrent callers: group commit keeps them fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_job_submits_from_64_callers() {
    const CALLERS: usize = 64;
    const EACH: usize = 50;
    let (_dir, store) = fresh().await;
    let store = Arc::new(store);
    let started = Instant::now();
    let commits = store.commit_count();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..EACH {
                    let id = format!("{c}_{i}");
                    submit_ok(
                        &*store,
                        submission(
                            &format!("batch_{id}"),
                            vec![job(&format!("job_{id}"), "pictify")],
                            T0,
                        ),
                    )
                    .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    let commits = store.commit_count() - commits;
    let calls = CALLERS * EACH;
    eprintln!(
        "64 callers: {calls} single-job submits in {secs:.2}s ({:.0}/s), {commits} commits",
        calls as f64 / secs
    );
    assert!(
        (commits as usize) < calls / 4,
        "{commits} commits for {calls} calls"
    );
    store.close().await;
}

/// One group mixing fresh submits, replays and conflicts (against a stored request id and
/// against one claimed earlier in the same group): the coalesced write path must give each
/// the outcome the op-by-op path gives. Then a group where one submit fails (duplicate job
/// id): the group is redone op by op, the faulty submit fails alone and does not keep its
/// request id, so a later submit of the same group claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_group_mixes_replays_conflicts_and_fresh_submits() {
    use adgate_store::SubmitOutcome;
    fn req(mut s: NewSubmission, request_id: &str, hash: &str) -> NewSubmission {
        s.request_id = Some(request_id.to_owned());
        s.content_hash = hash.to_owned();
        s
    }
    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }
    let (_dir, store) = fresh().await;
    submit_ok(
        &store,
        req(
            submission(
                "batch_a",
                vec![job("job_a2", "pictify"), job("job_a1", "pictify")],
                T0,
            ),
            "req-a",
            "ha",
        ),
    )
    .await;

    // Polled in order, so queued in this order (and most likely committed as one group).
    let (replay_stored, conflict_stored, fresh_b, replay_b, conflict_b, plain) = tokio::join!(
        store.submit(req(
            submission("batch_x", vec![job("job_x", "pictify")], T0),
            "req-a",
            "ha"
        )),
        store.submit(req(
            submission("batch_y", vec![job("job_y", "pictify")], T0),
            "req-a",
            "zz"
        )),
        store.submit(req(
            submission(
                "batch_b",
                vec![job("job_b1", "pictify"), job("job_b2", "pictify")],
                T0
            ),
            "req-b",
            "hb",
        )),
        store.submit(req(
            submission("batch_b2", vec![job("job_b3", "pictify")], T0),
            "req-b",
            "hb"
        )),
        store.submit(req(
            submission("batch_b3", vec![job("job_b4", "pictify")], T0),
            "req-b",
            "no"
        )),
        store.submit(submission("batch_p", vec![job("job_p", "pictify")], T0)),
    );
    assert_eq!(
        replay_stored.expect("replay"),
        SubmitOutcome::Replayed {
            batch_id: "batch_a".to_owned(),
            job_ids: ids(&["job_a2", "job_a1"]),
        }
    );
    assert_eq!(conflict_stored.expect("conflict"), SubmitOutcome::Conflict);
    assert_eq!(
        fresh_b.expect("fresh"),
        SubmitOutcome::Created {
            batch_id: "batch_b".to_owned(),
            job_ids: ids(&["job_b1", "job_b2"]),
        }
    );
    assert_eq!(
        replay_b.expect("replay in group"),
        SubmitOutcome::Replayed {
            batch_id: "batch_b".to_owned(),
            job_ids: ids(&["job_b1", "job_b2"]),
        }
    );
    assert_eq!(
        conflict_b.expect("conflict in group"),
        SubmitOutcome::Conflict
    );
    assert!(
        matches!(plain, Ok(SubmitOutcome::Created { .. })),
        "{plain:?}"
    );
    for batch in ["batch_x", "batch_y", "batch_b2", "batch_b3"] {
        assert_eq!(
            store.batch_jobs(batch).await.expect("batch"),
            None,
            "{batch}"
        );
    }
    let b = store
        .batch_jobs("batch_b")
        .await
        .expect("batch")
        .expect("stored");
    assert_eq!(
        b.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["job_b1", "job_b2"]
    );
    assert_eq!(
        store.get_jobs(&ids(&["job_p"])).await.expect("get").len(),
        1
    );

    // A failing submit (job_a1 exists) in a group with a fresh one and a later one reusing
    // its request id.
    let (ok, bad, reuse) = tokio::join!(
        store.submit(submission("batch_ok", vec![job("job_ok", "pictify")], T0)),
        store.submit(req(
            submission(
                "batch_bad",
                vec![job("job_c", "pictify"), job("job_a1", "pictify")],
                T0
            ),
            "req-c",
            "hc",
        )),
        store.submit(req(
            submission("batch_c", vec![job("job_c2", "pictify")], T0),
            "req-c",
            "hc"
        )),
    );
    assert!(matches!(ok, Ok(SubmitOutcome::Created { .. })), "{ok:?}");
    assert!(matches!(bad, Err(StoreError::Database(_))), "{bad:?}");
    assert_eq!(
        reuse.expect("reuse"),
        SubmitOutcome::Created {
            batch_id: "batch_c".to_owned(),
            job_ids: ids(&["job_c2"]),
        }
    );
    assert_eq!(store.batch_jobs("batch_bad").await.expect("batch"), None);
    assert!(
        store
            .get_jobs(&ids(&["job_c"]))
            .await
            .expect("get")
            .is_empty()
    );
    // The unchanged original.
    let a1 = store.get_jobs(&ids(&["job_a1"])).await.expect("get");
    assert_eq!((a1[0].batch_id.as_str(), a1[0].revision), ("batch_a", 1));
    store.close().await;
}
