//! The conformance suite and SQLite-specific checks, on temporary database files.

// Test helpers outside `#[test]` functions (the suite, the fixtures) fail loudly by design.
#![allow(clippy::expect_used)]

mod suite;

use std::sync::Arc;
use std::time::Instant;

use adgate_generator::JobState;
use adgate_store::{JobPatch, NewSubmission, SqliteStore, Store, StoreError};
use tempfile::TempDir;

use suite::{T0, job, submission, submit_ok};

fn url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("adgate.db").display())
}

/// A plain connection to the store's file, beside the store (what an operator's `sqlite3`
/// would see).
fn raw(dir: &TempDir) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.path().join("adgate.db")).expect("connect")
}

async fn fresh() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&url(&dir)).await.expect("open");
    (dir, store)
}

/// A database file in a directory of its own, removed with it.
struct SqliteDb {
    dir: TempDir,
}

impl suite::backend::Backend for SqliteDb {
    type Store = SqliteStore;

    async fn create() -> SqliteDb {
        SqliteDb {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    async fn open(&self) -> SqliteStore {
        SqliteStore::open(&url(&self.dir)).await.expect("open")
    }

    async fn execute_raw(&self, statements: &[&str]) {
        raw(&self.dir)
            .execute_batch(&statements.join(";\n"))
            .expect("corrupt rows");
    }
}

suite::backend_tests!(SqliteDb);

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
    let conn = raw(&dir);
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("versions")
        .collect::<Result<_, _>>()
        .expect("versions");
    assert_eq!(versions, (1..=9).collect::<Vec<i64>>());
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
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
        caller: adgate_store::ANONYMOUS.to_owned(),
        batch_id: format!("batch_{call}"),
        request_id: Some(format!("req_{call}")),
        content_hash: "h".to_owned(),
        jobs: (0..PER_CALL)
            .map(|i| job(&format!("job_{call}_{i}"), "pictify"))
            .collect(),
        now_ms: T0,
        notify: None,
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
    let total = suite::total_jobs(&*store).await;
    assert_eq!(total, (CALLS * PER_CALL) as u64);
    assert!(concurrent > 2_000.0, "{concurrent:.0} jobs/s");
    store.close().await;
}

/// A database written before schema version 3 (no `provider_result` column, outputs without
/// `provider_fields`) migrates on open and its jobs still read, with no provider result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_stored_before_provider_result_still_read() {
    let (dir, store) = fresh().await;
    submit_ok(
        &store,
        submission("batch_1", vec![job("job_1", "abyssale")], T0),
    )
    .await;
    store.close().await;
    {
        // Turn the file back into a version-2 database holding a completed job's old shape.
        let conn = raw(&dir);
        // Everything versions 3 and later added goes (indexes before the columns they cover).
        for sql in [
            "DROP TABLE custody_queue",
            "DROP TABLE notify_outbox",
            "DROP TABLE notify_endpoints",
            "DROP TABLE notify_disabled",
            "ALTER TABLE batches DROP COLUMN notify_url",
            "ALTER TABLE batches DROP COLUMN notify_url_events",
            "ALTER TABLE batches DROP COLUMN notify",
            "ALTER TABLE batches DROP COLUMN open_jobs",
            "DROP INDEX jobs_unsuccessful",
            // Version 9 dropped a version-1 index; a version-2 database has it.
            "CREATE INDEX jobs_provider_state ON jobs (provider, state, attempt_id, created_at)",
            "DROP INDEX jobs_queue",
            "DROP INDEX jobs_created",
            "DROP INDEX jobs_caller_created",
            "DROP INDEX batches_created",
            "DROP INDEX batches_caller_created",
            "DROP INDEX jobs_retention",
            "DROP INDEX request_ids_created",
            "DROP INDEX webhook_deliveries_received",
            "ALTER TABLE jobs DROP COLUMN caller",
            "ALTER TABLE jobs DROP COLUMN priority",
            "ALTER TABLE jobs DROP COLUMN cost_unit",
            "ALTER TABLE jobs DROP COLUMN cost_micros",
            "ALTER TABLE jobs DROP COLUMN cost_per_output_micros",
            "ALTER TABLE jobs DROP COLUMN traceparent",
            "ALTER TABLE batches DROP COLUMN caller",
            "ALTER TABLE jobs DROP COLUMN provider_result",
            "DELETE FROM schema_migrations WHERE version >= 3",
            "UPDATE jobs SET state = 3, outputs = '[{\"url\":\"https://cdn/a.png\",\"width\":1,\
             \"height\":2,\"format\":\"facebook-feed\",\"mime_type\":\"image/png\"}]' \
             WHERE id = 'job_1'",
        ] {
            conn.execute_batch(sql).expect(sql);
        }
    }
    let store = SqliteStore::open(&url(&dir)).await.expect("reopen");
    let job = store
        .get_jobs(&["job_1".to_owned()])
        .await
        .expect("get")
        .pop()
        .expect("job");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.provider_result, None);
    assert_eq!(job.outputs.len(), 1);
    assert_eq!(job.outputs[0].url, "https://cdn/a.png");
    assert!(job.outputs[0].provider_fields.is_empty());
    // Rows from before callers were recorded belong to the anonymous caller, unpriced.
    assert_eq!(
        (job.caller.as_str(), job.priority, job.cost),
        ("anonymous", 2, None)
    );
    store.close().await;
}

/// The database file's size on disk.
fn file_len(dir: &TempDir) -> u64 {
    std::fs::metadata(dir.path().join("adgate.db"))
        .expect("database file")
        .len()
}

/// Waits (bounded) until `check` holds, polling; returns whether it did.
async fn eventually(within: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    check()
}

/// Retention frees pages and the incremental vacuum gives them back: after deleting nearly
/// every job and reclaiming, the file on disk shrinks to a fraction of its size (once the
/// background checkpoint has copied the vacuumed pages in and truncated it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_shrinks_after_retention_and_vacuum() {
    let (dir, store) = fresh().await;
    let mut kept = Vec::new();
    for b in 0..40 {
        let ids: Vec<String> = (0..250).map(|j| format!("job_{b}_{j}")).collect();
        let mut s = submission(
            &format!("batch_{b}"),
            ids.iter().map(|id| job(id, "pictify")).collect(),
            T0,
        );
        // Bigger specs, so the file is several MB and the shrink is well above page noise.
        for j in &mut s.jobs {
            j.spec["text"]["body"] = serde_json::json!("x".repeat(400));
        }
        submit_ok(&store, s).await;
        if b == 0 {
            // One batch stays live (queued): retention must spare it.
            kept = ids;
            continue;
        }
        let patches = ids
            .iter()
            .map(|id| JobPatch {
                state: Some(JobState::Completed),
                ..JobPatch::new(id.clone())
            })
            .collect();
        store.apply(patches, T0 + 1_000).await.expect("finish");
    }
    // The checkpointer moves the WAL into the file within a second or so.
    let mut full = 0;
    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            full = file_len(&dir);
            full > 4_000_000
        })
        .await,
        "the database file grew to several MB ({full} bytes)"
    );

    let cutoffs = adgate_store::PurgeCutoffs {
        jobs_completed_before_ms: T0 + 2_000,
        request_ids_before_ms: T0 + 2_000,
        deliveries_before_ms: T0 + 2_000,
    };
    let mut deleted = 0;
    loop {
        let step = store.purge(cutoffs, 500).await.expect("purge");
        deleted += step.jobs;
        if !step.maybe_more(500) {
            break;
        }
    }
    assert_eq!(deleted, 39 * 250);
    let mut steps = 0;
    while store.reclaim_space(256).await.expect("reclaim") > 0 {
        steps += 1;
        assert!(steps < 10_000, "the free list never empties");
    }
    assert!(steps > 1, "reclaiming took several small steps ({steps})");
    let mut now = full;
    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            now = file_len(&dir);
            now * 4 < full
        })
        .await,
        "file did not shrink: {full} bytes before, {now} after"
    );
    assert_eq!(store.get_jobs(&kept).await.expect("kept").len(), 250);
    store.close().await;
}

/// A database created before incremental auto-vacuum existed (auto_vacuum NONE) is switched
/// at its first open by one VACUUM, keeping its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn existing_database_is_switched_to_incremental_vacuum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = url(&dir);
    let mode = |dir: &TempDir| -> i64 {
        raw(dir)
            .query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
            .expect("pragma")
    };
    // What an older build left: a WAL database with auto_vacuum NONE and some data.
    raw(&dir)
        .execute_batch(
            "PRAGMA journal_mode = WAL; \
             CREATE TABLE legacy (x TEXT); INSERT INTO legacy VALUES ('kept');",
        )
        .expect("legacy data");
    assert_eq!(mode(&dir), 0, "NONE before");
    let store = SqliteStore::open(&url).await.expect("open");
    submit_ok(
        &store,
        submission("batch_1", vec![job("job_1", "pictify")], T0),
    )
    .await;
    store.close().await;
    assert_eq!(mode(&dir), 2, "INCREMENTAL after the first open");
    let legacy: String = raw(&dir)
        .query_row("SELECT x FROM legacy", [], |row| row.get(0))
        .expect("legacy row");
    assert_eq!(legacy, "kept");
    // A new file has it from the start.
    let fresh_dir = tempfile::tempdir().expect("tempdir");
    let fresh_url = format!("sqlite://{}", fresh_dir.path().join("adgate.db").display());
    SqliteStore::open(&fresh_url)
        .await
        .expect("open new")
        .close()
        .await;
    assert_eq!(mode(&fresh_dir), 2);
}

/// An in-memory store has no incremental auto-vacuum: reclaiming reports nothing left to do at
/// once (instead of free pages it can never give back, which would keep a caller looping).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reclaim_ends_where_nothing_can_be_vacuumed() {
    let store = SqliteStore::open("sqlite::memory:").await.expect("open");
    let ids: Vec<String> = (0..2_000).map(|i| format!("job_{i}")).collect();
    submit_ok(
        &store,
        submission(
            "batch_1",
            ids.iter().map(|id| job(id, "pictify")).collect(),
            T0,
        ),
    )
    .await;
    let patches = ids
        .iter()
        .map(|id| JobPatch {
            state: Some(JobState::Failed),
            ..JobPatch::new(id.clone())
        })
        .collect();
    store.apply(patches, T0 + 1).await.expect("finish");
    let cutoffs = adgate_store::PurgeCutoffs {
        jobs_completed_before_ms: T0 + 2,
        request_ids_before_ms: T0 + 2,
        deliveries_before_ms: T0 + 2,
    };
    let mut deleted = 0;
    loop {
        let step = store.purge(cutoffs, 500).await.expect("purge");
        deleted += step.jobs;
        if !step.maybe_more(500) {
            break;
        }
    }
    assert_eq!(deleted, 2_000);
    assert_eq!(store.reclaim_space(64).await.expect("reclaim"), 0);
    store.close().await;
}
