//! The conformance suite and the multi-replica checks on PostgreSQL.
//!
//! Needs the server on 127.0.0.1:5432 (trust auth, user `postgres`; override the admin URL
//! with `ADGATE_TEST_POSTGRES_URL`). Each test creates a database of its own and drops it at
//! the end, even when it fails. An unreachable server fails every test with a clear message:
//! these tests run in CI and are never skipped silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod suite;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adgate_generator::JobState;
use adgate_store::{
    BudgetGrant, FeedEvent, JobPatch, NewSubmission, PgStore, Store, StoreError, SubmitOutcome,
};
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;

use suite::{T0, job, submission, submit_ok};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn admin_url() -> String {
    std::env::var("ADGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

async fn admin() -> PgConnection {
    let url = admin_url();
    PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is required for the adgate-store PostgreSQL tests and is not reachable \
             at {url} ({e}). Start it (trust auth, user postgres) or set \
             ADGATE_TEST_POSTGRES_URL."
        )
    })
}

/// A database of its own for one test, dropped (with its connections) when the guard goes.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> TestDb {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let name = format!(
            "adgate_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = admin().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.expect("close admin");
        let base = admin_url();
        let server = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
        TestDb {
            url: format!("{server}/{name}"),
            name,
        }
    }

    async fn open(&self) -> PgStore {
        PgStore::open(&self.url).await.expect("open PgStore")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async (and maybe while unwinding): use a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut conn = admin().await;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

impl suite::backend::Backend for TestDb {
    type Store = PgStore;

    async fn create() -> TestDb {
        TestDb::create().await
    }

    async fn open(&self) -> PgStore {
        TestDb::open(self).await
    }

    async fn execute_raw(&self, statements: &[&str]) {
        let mut conn = PgConnection::connect(&self.url).await.expect("connect");
        for sql in statements {
            sqlx::query(sql).execute(&mut conn).await.expect(sql);
        }
        conn.close().await.expect("close");
    }
}

suite::backend_tests!(TestDb);

/// PostgreSQL's change feed is closed with the store, like its writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_feed_is_closed_with_the_store() {
    let db = TestDb::create().await;
    let store = db.open().await;
    store.close().await;
    assert!(matches!(store.change_feed().await, Err(StoreError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_picks_the_backend_by_url() {
    let db = TestDb::create().await;
    let store = adgate_store::open(&db.url).await.expect("postgres");
    assert!(store.is_shared());
    store.close().await;
    let alt = db.url.replacen("postgres://", "postgresql://", 1);
    let store = adgate_store::open(&alt).await.expect("postgresql");
    assert!(store.is_shared());
    store.close().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = format!("sqlite://{}", dir.path().join("a.db").display());
    let store = adgate_store::open(&sqlite).await.expect("sqlite");
    assert!(!store.is_shared());
    store.close().await;

    for bad in ["mysql://localhost/adgate", "adgate.db", "postgres:/x", ""] {
        let err = adgate_store::open(bad).await.err().expect(bad);
        assert!(matches!(err, StoreError::InvalidUrl(_)), "{bad}: {err:?}");
    }
    let err = PgStore::open("sqlite::memory:")
        .await
        .expect_err("sqlite url");
    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_recorded_and_idempotent_under_concurrent_opens() {
    let db = TestDb::create().await;
    // Two replicas starting together on a fresh database.
    let (a, b) = tokio::join!(PgStore::open(&db.url), PgStore::open(&db.url));
    let (a, b) = (a.expect("open a"), b.expect("open b"));
    a.close().await;
    b.close().await;
    let c = db.open().await;
    c.close().await;
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    let versions: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .expect("versions");

    assert_eq!(versions, (1..=11).map(|v| (v,)).collect::<Vec<(i64,)>>());
    conn.close().await.expect("close");
}

// ---- Several replicas on one database.

fn queued_jobs(prefix: &str, n: usize, provider: &str) -> Vec<adgate_store::NewJob> {
    (0..n)
        .map(|i| job(&format!("{prefix}_{i:04}"), provider))
        .collect()
}

/// Eight claimers on two stores, concurrently: every job is handed to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_queued_never_hands_a_job_to_two_replicas() {
    const JOBS: usize = 300;
    let db = TestDb::create().await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    submit_ok(
        &*a,
        submission("batch_1", queued_jobs("job", JOBS, "pictify"), T0),
    )
    .await;
    submit_ok(
        &*a,
        submission("batch_x", queued_jobs("other", 5, "abyssale"), T0),
    )
    .await;

    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = Arc::clone(if n % 2 == 0 { &a } else { &b });
            tokio::spawn(async move {
                let replica = format!("replica-{n}");
                let mut mine = Vec::new();
                loop {
                    let jobs = store
                        .claim_queued("pictify", &replica, T0 + 1_000, 60_000, 7)
                        .await
                        .expect("claim");
                    if jobs.is_empty() {
                        return mine;
                    }
                    let ids: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
                    // As the dispatcher does: record the attempt, so the jobs leave the queue.
                    store
                        .create_attempt("pictify", &format!("{replica}-{}", mine.len()), &ids, T0)
                        .await
                        .expect("attempt");
                    mine.extend(ids);
                }
            })
        })
        .collect();
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut per_claimer = Vec::new();
    for (n, task) in tasks.into_iter().enumerate() {
        let mine = task.await.expect("task");
        per_claimer.push(mine.len());
        for id in mine {
            if let Some(other) = owner.insert(id.clone(), n) {
                panic!("{id} claimed by claimer {other} and claimer {n}");
            }
        }
    }
    eprintln!("claims per claimer: {per_claimer:?}");
    assert_eq!(owner.len(), JOBS, "every job claimed once");
    assert!(owner.keys().all(|id| id.starts_with("job_")));
    assert!(
        per_claimer.iter().filter(|&&n| n > 0).count() > 1,
        "the claimers ran concurrently: {per_claimer:?}"
    );
    a.close().await;
    b.close().await;
}

/// Custody copies on two replicas: eight claimers on two stores, concurrently, each task
/// handed to exactly one of them (`FOR UPDATE SKIP LOCKED` plus the claim's `next_at`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_custody_never_hands_a_copy_to_two_replicas() {
    const JOBS: usize = 200;
    let db = TestDb::create().await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    let jobs = queued_jobs("job", JOBS, "pictify");
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    submit_ok(&*a, submission("batch_1", jobs, T0)).await;
    let patches = ids
        .iter()
        .map(|id| adgate_store::JobPatch {
            state: Some(adgate_generator::JobState::Completed),
            outputs: Some(vec![adgate_generator::Output {
                url: format!("https://cdn.example/{id}.png"),
                ..Default::default()
            }]),
            keep_outputs: true,
            ..adgate_store::JobPatch::new(id.clone())
        })
        .collect();
    assert_eq!(a.apply(patches, T0).await.expect("complete").len(), JOBS);

    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = Arc::clone(if n % 2 == 0 { &a } else { &b });
            tokio::spawn(async move {
                let replica = format!("replica-{n}");
                let mut mine = Vec::new();
                loop {
                    let claimed = store
                        .claim_custody(&replica, T0 + 1_000, 60_000, 5)
                        .await
                        .expect("claim");
                    if claimed.is_empty() {
                        return mine;
                    }
                    mine.extend(claimed.into_iter().map(|t| t.job_id));
                }
            })
        })
        .collect();
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut per_claimer = Vec::new();
    for (n, task) in tasks.into_iter().enumerate() {
        let mine = task.await.expect("task");
        per_claimer.push(mine.len());
        for id in mine {
            if let Some(other) = owner.insert(id.clone(), n) {
                panic!("{id} claimed by claimer {other} and claimer {n}");
            }
        }
    }
    assert_eq!(
        owner.len(),
        JOBS,
        "every copy claimed once: {per_claimer:?}"
    );
    assert!(
        per_claimer.iter().filter(|&&n| n > 0).count() > 1,
        "the claimers ran concurrently: {per_claimer:?}"
    );
    // A replica that died mid-copy: its claims are due again once they run out.
    let later = a
        .claim_custody("replica-x", T0 + 61_000, 60_000, 1_000)
        .await
        .expect("claim");
    assert_eq!(later.len(), JOBS);
    a.close().await;
    b.close().await;
}

/// A lease keeps a job its owner's until it lapses; renewing keeps it; after the lapse the
/// other replica takes queued, attempted and tracked jobs over. Times are the caller's, so
/// the lease is "waited out" by passing a later time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_expire_renew_and_are_taken_over() {
    const LEASE: i64 = 200;
    let db = TestDb::create().await;
    let a = db.open().await;
    let b = db.open().await;
    submit_ok(
        &a,
        submission("batch_1", queued_jobs("job", 4, "pictify"), T0),
    )
    .await;
    let t = T0 + 1_000;
    let claimed = a
        .claim_queued("pictify", "a", t, LEASE, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    // job_0000 is tracked at the provider, job_0001 in an open attempt, job_0002 still
    // queued and unattempted, job_0003 finished.
    let mut tracked = JobPatch::new("job_0000");
    tracked.state = Some(JobState::Processing);
    tracked.provider_ref = Some("gen-0".to_owned());
    let mut done = JobPatch::new("job_0003");
    done.state = Some(JobState::Completed);
    a.apply(vec![tracked, done], t).await.expect("apply");
    a.create_attempt("pictify", "idem-1", &["job_0001".to_owned()], t)
        .await
        .expect("attempt");

    // Live lease: B gets nothing, neither as orphans nor as queued work.
    assert!(
        b.claim_queued("pictify", "b", t + LEASE - 1, LEASE, 10)
            .await
            .expect("q")
            .is_empty()
    );
    assert!(
        b.claim_orphans("pictify", "b", t + LEASE - 1, LEASE, 10)
            .await
            .expect("o")
            .is_empty()
    );

    // A renews before the lapse: its three live jobs, still B's to wait for. The renewal is
    // one row in `replicas`: no job row is rewritten (their row versions stay the same).
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    let versions = "SELECT id, xmin::text FROM jobs ORDER BY id";
    let before: Vec<(String, String)> = sqlx::query_as(versions)
        .fetch_all(&mut conn)
        .await
        .expect("row versions");
    assert_eq!(a.renew_leases("a", t + 150, LEASE).await.expect("renew"), 3);
    let after: Vec<(String, String)> = sqlx::query_as(versions)
        .fetch_all(&mut conn)
        .await
        .expect("row versions");
    assert_eq!(before, after, "renewing rewrote job rows");
    conn.close().await.expect("close");
    assert!(
        b.claim_orphans("pictify", "b", t + LEASE + 100, LEASE, 10)
            .await
            .expect("o")
            .is_empty()
    );
    assert!(
        b.claim_queued("pictify", "b", t + LEASE + 100, LEASE, 10)
            .await
            .expect("q")
            .is_empty()
    );
    // The owner itself never takes its own jobs as orphans (claiming is a heartbeat, so this
    // is at the renewal's time and leaves the lapse where the renewal put it).
    assert!(
        a.claim_orphans("pictify", "a", t + 150, LEASE, 10)
            .await
            .expect("o")
            .is_empty()
    );

    // A stops renewing (killed): at the lapse B takes over tracked and attempted jobs ...
    let lapse = t + 150 + LEASE;
    let mut orphans: Vec<String> = b
        .claim_orphans("pictify", "b", lapse, LEASE, 10)
        .await
        .expect("orphans")
        .into_iter()
        .map(|j| j.id)
        .collect();
    orphans.sort();
    assert_eq!(orphans, ["job_0000", "job_0001"]);
    // ... and the unattempted queued job through claim_queued.
    let queued = b
        .claim_queued("pictify", "b", lapse, LEASE, 10)
        .await
        .expect("q");
    assert_eq!(
        queued.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["job_0002"]
    );
    // Taken once: a third replica finds nothing, and A holds nothing any more.
    let c = db.open().await;
    assert!(
        c.claim_orphans("pictify", "c", lapse, LEASE, 10)
            .await
            .expect("o")
            .is_empty()
    );
    assert!(
        c.claim_queued("pictify", "c", lapse, LEASE, 10)
            .await
            .expect("q")
            .is_empty()
    );
    assert_eq!(
        a.renew_leases("a", lapse + 1, LEASE).await.expect("renew"),
        0
    );
    assert_eq!(
        b.renew_leases("b", lapse + 1, LEASE).await.expect("renew"),
        3
    );
    // The heartbeat table knows every replica that renewed or claimed, with its one lease.
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    let beats: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT id, heartbeat_at, lease_until FROM replicas ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .expect("replicas");
    assert_eq!(
        beats,
        [
            ("a".to_owned(), lapse + 1, lapse + 1 + LEASE),
            ("b".to_owned(), lapse + 1, lapse + 1 + LEASE),
            ("c".to_owned(), lapse, lapse + LEASE),
        ]
    );
    conn.close().await.expect("close");
    for s in [a, b, c] {
        s.close().await;
    }
}

/// Orphans that are being claimed concurrently by several replicas go to one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_are_taken_over_once() {
    let db = TestDb::create().await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    submit_ok(
        &*a,
        submission("batch_1", queued_jobs("job", 200, "pictify"), T0),
    )
    .await;
    let claimed = a
        .claim_queued("dead", "x", T0, 100, 1000)
        .await
        .expect("none");
    assert!(claimed.is_empty());
    let claimed = a
        .claim_queued("pictify", "dead", T0, 100, 1000)
        .await
        .expect("claim");
    let patches = claimed
        .iter()
        .map(|j| {
            let mut p = JobPatch::new(&j.id);
            p.state = Some(JobState::Processing);
            p.provider_ref = Some(format!("ref-{}", j.id));
            p
        })
        .collect();
    a.apply(patches, T0).await.expect("apply");
    let tasks: Vec<_> = (0..6)
        .map(|n| {
            let store = Arc::clone(if n % 2 == 0 { &a } else { &b });
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .claim_orphans("pictify", &format!("r{n}"), T0 + 1_000, 60_000, 9)
                        .await
                        .expect("orphans");
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|j| j.id));
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.expect("task") {
            assert!(seen.insert(id.clone()), "{id} taken over twice");
        }
    }
    assert_eq!(seen.len(), 200);
    a.close().await;
    b.close().await;
}

/// A's jobs: job_0000 tracked at the provider, job_0001 in an open attempt, job_0002 queued
/// and unattempted, job_0003 finished; all claimed by `replica` at `t`.
async fn four_owned_jobs(store: &PgStore, replica: &str, t: i64, lease: i64) {
    submit_ok(
        store,
        submission("batch_1", queued_jobs("job", 4, "pictify"), T0),
    )
    .await;
    let claimed = store
        .claim_queued("pictify", replica, t, lease, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    let mut tracked = JobPatch::new("job_0000");
    tracked.state = Some(JobState::Processing);
    tracked.provider_ref = Some("gen-0".to_owned());
    let mut done = JobPatch::new("job_0003");
    done.state = Some(JobState::Completed);
    store.apply(vec![tracked, done], t).await.expect("apply");
    store
        .create_attempt("pictify", "idem-1", &["job_0001".to_owned()], t)
        .await
        .expect("attempt");
}

fn ids(jobs: Vec<adgate_store::JobRecord>) -> Vec<String> {
    let mut ids: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
    ids.sort();
    ids
}

async fn lease_until(url: &str, replica: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let (until,): (i64,) = sqlx::query_as("SELECT lease_until FROM replicas WHERE id = $1")
        .bind(replica)
        .fetch_one(&mut conn)
        .await
        .expect("replica row");
    conn.close().await.expect("close");
    until
}

/// A graceful goodbye: once A releases its lease, B takes every job over at the same instant
/// (no clock advance), hears about it on its change feed, and renewals racing the release
/// (in flight or later) never give A its lease back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_released_lease_is_taken_over_at_once() {
    const LEASE: i64 = 60_000;
    let db = TestDb::create().await;
    let a = Arc::new(db.open().await);
    let b = db.open().await;
    let t = T0 + 1_000;
    four_owned_jobs(&a, "a", t, LEASE).await;
    let mut feed = b.change_feed().await.expect("feed").expect("a shared feed");

    // Live: nothing for B.
    assert!(
        b.claim_orphans("pictify", "b", t, LEASE, 10)
            .await
            .expect("o")
            .is_empty()
    );
    assert!(
        b.claim_queued("pictify", "b", t, LEASE, 10)
            .await
            .expect("q")
            .is_empty()
    );

    // Renewals hammering while A says goodbye: whichever commit first, none after.
    let renewing: Vec<_> = (0..16)
        .map(|i| {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.renew_leases("a", t + i, LEASE).await.expect("renew") })
        })
        .collect();
    a.release_lease("a", t).await.expect("release");
    for r in renewing {
        r.await.expect("renewal task");
    }
    assert_eq!(lease_until(&db.url, "a").await, 0, "lapsed for every clock");
    assert_eq!(a.renew_leases("a", t + 100, LEASE).await.expect("renew"), 0);
    assert!(
        a.claim_queued("pictify", "a", t + 100, LEASE, 10)
            .await
            .expect("q")
            .is_empty()
    );
    assert_eq!(
        lease_until(&db.url, "a").await,
        0,
        "a released lease stays released"
    );

    // The feed announces it, after the commit.
    let released = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match feed.recv().await.expect("feed open") {
                FeedEvent::Released { replica } => return replica,
                FeedEvent::Changed { .. } | FeedEvent::Gap => {}
            }
        }
    })
    .await
    .expect("a Released event within 10 s");
    assert_eq!(released, "a");

    // At the same instant (no lease waited out), B takes everything over, once.
    assert_eq!(
        ids(b
            .claim_orphans("pictify", "b", t, LEASE, 10)
            .await
            .expect("orphans")),
        ["job_0000", "job_0001"]
    );
    assert_eq!(
        ids(b
            .claim_queued("pictify", "b", t, LEASE, 10)
            .await
            .expect("queued")),
        ["job_0002"]
    );
    assert!(
        b.claim_orphans("pictify", "c", t, LEASE, 10)
            .await
            .expect("o")
            .is_empty()
    );
    assert_eq!(b.renew_leases("b", t, LEASE).await.expect("renew"), 3);
    a.close().await;
    b.close().await;
}

/// A replica restarted under its old identity (after a crash: no release) takes back its
/// tracked jobs and open attempts at once, while its old lease is still live; nobody else
/// gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_under_the_same_identity_takes_its_jobs_back() {
    const LEASE: i64 = 60_000;
    let db = TestDb::create().await;
    let before = db.open().await;
    let t = T0 + 1_000;
    four_owned_jobs(&before, "gw-0", t, LEASE).await;
    drop(before); // killed: no goodbye
    let after = db.open().await;
    let other = db.open().await;
    assert_eq!(
        ids(after
            .claim_own("pictify", "gw-0", t + 10, LEASE)
            .await
            .expect("own")),
        ["job_0000", "job_0001"]
    );
    // The queued one comes back through claim_queued (a replica's own jobs are included).
    assert_eq!(
        ids(after
            .claim_queued("pictify", "gw-0", t + 10, LEASE, 10)
            .await
            .expect("q")),
        ["job_0002"]
    );
    assert!(
        other
            .claim_own("pictify", "gw-1", t + 10, LEASE)
            .await
            .expect("own")
            .is_empty()
    );
    assert!(
        other
            .claim_orphans("pictify", "gw-1", t + 10, LEASE, 10)
            .await
            .expect("o")
            .is_empty()
    );
    assert!(
        lease_until(&db.url, "gw-0").await >= t + 10 + LEASE,
        "claiming extends the lease"
    );
    after.close().await;
    other.close().await;
}

/// One live holder per identity: a second claim fails while the first holder lives, and
/// succeeds once it is closed — or dropped without a goodbye, as when a process is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identity_is_held_by_one_live_store() {
    let db = TestDb::create().await;
    let first = db.open().await;
    let second = db.open().await;
    assert!(first.claim_identity("gw-0").await.expect("claim"));
    assert!(
        first.claim_identity("gw-0").await.expect("again"),
        "its own, again"
    );
    assert!(
        !second.claim_identity("gw-0").await.expect("claim"),
        "held by first"
    );
    assert!(
        second.claim_identity("gw-1").await.expect("claim"),
        "another id is free"
    );
    first.close().await;
    // The server frees a session lock when it has ended the closed session's backend, a
    // moment after the client's goodbye: wait for it, bounded.
    let mut freed = false;
    for _ in 0..100 {
        if second.claim_identity("gw-0").await.expect("claim") {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(freed, "free after close (within 5 s)");

    let third = db.open().await;
    assert!(third.claim_identity("gw-2").await.expect("claim"));
    assert!(!second.claim_identity("gw-2").await.expect("claim"));
    drop(third);
    // The server frees the lock when it notices the connection gone: soon, not at once.
    let end = Instant::now() + Duration::from_secs(10);
    while !second.claim_identity("gw-2").await.expect("claim") {
        assert!(
            Instant::now() < end,
            "gw-2 still held 10 s after its holder was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.close().await;
}

/// Two stores hammering one provider's budget (20 per 500 ms) never exceed it in any
/// 500 ms window, and the window rolls; a block refuses both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_budget_is_an_exact_rolling_window() {
    const LIMIT: u32 = 20;
    const WINDOW: i64 = 500;
    let db = TestDb::create().await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    let until = Instant::now() + Duration::from_millis(1_600);
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = Arc::clone(if n % 2 == 0 { &a } else { &b });
            tokio::spawn(async move {
                let (mut grants, mut calls) = (Vec::new(), 0u64);
                while Instant::now() < until {
                    let now = now_ms();
                    calls += 1;
                    match store
                        .take_budget(
                            "pictify",
                            LIMIT,
                            WINDOW,
                            now,
                            &format!("t{n}-{}", grants.len()),
                        )
                        .await
                        .expect("take")
                    {
                        BudgetGrant::Granted => grants.push(now),
                        // A caller whose `now` lags a request granted to a faster caller may be
                        // told to wait up to one window past that request, hence 2 × WINDOW.
                        BudgetGrant::Wait(ms) => assert!((1..=2 * WINDOW).contains(&ms), "{ms}"),
                    }
                }
                (grants, calls)
            })
        })
        .collect();
    let mut grants = Vec::new();
    let mut calls = 0;
    for task in tasks {
        let (g, c) = task.await.expect("task");
        grants.extend(g);
        calls += c;
    }
    grants.sort_unstable();
    // Every window [t, t + WINDOW) starting at a grant holds at most LIMIT grants.
    for (i, &start) in grants.iter().enumerate() {
        let inside = grants[i..]
            .iter()
            .take_while(|&&g| g < start + WINDOW)
            .count();
        assert!(
            inside <= LIMIT as usize,
            "{inside} grants in the window starting at {start}: {grants:?}"
        );
    }
    eprintln!(
        "shared budget: {calls} calls, {} grants in 1.6 s",
        grants.len()
    );
    // 1.6 s is more than three windows: the budget was used up and refilled several times.
    assert!(grants.len() > 2 * LIMIT as usize, "{} grants", grants.len());
    // Other providers have budgets of their own.
    assert_eq!(
        a.take_budget("abyssale", 1, WINDOW, now_ms(), "other")
            .await
            .expect("other"),
        BudgetGrant::Granted
    );

    // A 429 on one replica blocks every replica until the given time.
    let now = now_ms() + 10 * WINDOW; // the window is empty by then
    a.block_budget("pictify", now + 300).await.expect("block");
    b.block_budget("pictify", now + 100)
        .await
        .expect("an earlier block never shortens it");
    for (store, waiter) in [(&a, "a1"), (&b, "b1")] {
        assert_eq!(
            store
                .take_budget("pictify", LIMIT, WINDOW, now, waiter)
                .await
                .expect("take"),
            BudgetGrant::Wait(300)
        );
    }
    assert_eq!(
        a.take_budget("pictify", LIMIT, WINDOW, now + 300, "a1")
            .await
            .expect("take"),
        BudgetGrant::Granted,
        "the oldest waiter gets the slot"
    );
    a.close().await;
    b.close().await;
}

/// The wait a full window answers is the time until its oldest request leaves it; once half
/// the window is used, requests are paced window / limit apart; a free slot goes to the
/// oldest waiting request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_wait_is_until_the_oldest_request_leaves() {
    let db = TestDb::create().await;
    let store = db.open().await;
    for (t, w) in [(0, "w0"), (40, "w1"), (80, "w2")] {
        assert_eq!(
            store
                .take_budget("p", 3, 100, T0 + t, w)
                .await
                .expect("take"),
            BudgetGrant::Granted
        );
    }
    // Full, and paced: the slot after 80 is at 80 + 33.
    assert_eq!(
        store
            .take_budget("p", 3, 100, T0 + 90, "w3")
            .await
            .expect("full"),
        BudgetGrant::Wait(23)
    );
    // Another request arriving later waits behind w3 even when a slot is free.
    assert_eq!(
        store
            .take_budget("p", 3, 100, T0 + 113, "w4")
            .await
            .expect("line"),
        BudgetGrant::Wait(33)
    );
    assert_eq!(
        store
            .take_budget("p", 3, 100, T0 + 113, "w3")
            .await
            .expect("rolled"),
        BudgetGrant::Granted
    );
    // A lowered limit waits until enough requests have left: 40, 80 and 113.
    assert_eq!(
        store
            .take_budget("p", 1, 100, T0 + 114, "w4")
            .await
            .expect("lower"),
        BudgetGrant::Wait(99)
    );
    // A waiter that stops waiting (its request abandoned, its replica gone) holds the line
    // until a second past when it was due back, then is forgotten — not for windows on end.
    store.block_budget("q", T0 + 500).await.expect("block");
    assert_eq!(
        store
            .take_budget("q", 100, 10_000, T0, "x1")
            .await
            .expect("blocked"),
        BudgetGrant::Wait(500)
    );
    assert_eq!(
        store
            .take_budget("q", 100, 10_000, T0 + 600, "x2")
            .await
            .expect("behind x1"),
        BudgetGrant::Wait(50)
    );
    assert_eq!(
        store
            .take_budget("q", 100, 10_000, T0 + 1_501, "x2")
            .await
            .expect("x1 gone"),
        BudgetGrant::Granted
    );
    store.close().await;
}

/// How many take_budget decisions one provider sustains (all replicas serialise on its row).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_throughput() {
    let db = TestDb::create().await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    for (label, limit, window) in [
        ("saturated 100/1s", 100u32, 1_000i64),
        ("mostly granted 5000/200ms", 5_000, 200),
    ] {
        let provider = format!("p-{limit}");
        let started = Instant::now();
        let run_for = Duration::from_millis(1_500);
        let tasks: Vec<_> = (0..8)
            .map(|n| {
                let store = Arc::clone(if n % 2 == 0 { &a } else { &b });
                let provider = provider.clone();
                tokio::spawn(async move {
                    let (mut calls, mut granted) = (0u64, 0u64);
                    while started.elapsed() < run_for {
                        calls += 1;
                        if store
                            .take_budget(
                                &provider,
                                limit,
                                window,
                                now_ms(),
                                &format!("t{n}-{granted}"),
                            )
                            .await
                            .expect("take")
                            == BudgetGrant::Granted
                        {
                            granted += 1;
                        }
                    }
                    (calls, granted)
                })
            })
            .collect();
        let (mut calls, mut granted) = (0, 0);
        for t in tasks {
            let (c, g) = t.await.expect("task");
            calls += c;
            granted += g;
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "budget throughput ({label}, 2 stores x 4 callers): {:.0} calls/s, {:.0} grants/s",
            calls as f64 / secs,
            granted as f64 / secs
        );
        assert!(calls as f64 / secs > 200.0, "{calls} calls in {secs:.2}s");
    }
    a.close().await;
    b.close().await;
}

async fn next_event(feed: &mut mpsc::Receiver<FeedEvent>) -> FeedEvent {
    tokio::time::timeout(Duration::from_secs(10), feed.recv())
        .await
        .expect("a feed event within 10 s")
        .expect("the feed is open")
}

/// A change committed through store A arrives on B's feed with its revision; after B's
/// listener connection is killed, B's feed says Gap and then carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_feed_crosses_replicas_and_reports_gaps() {
    let db = TestDb::create().await;
    let a = db.open().await;
    let b = db.open().await;
    let mut feed = b.change_feed().await.expect("feed").expect("shared");
    let mut other = b.change_feed().await.expect("feed 2").expect("shared");

    submit_ok(
        &a,
        submission(
            "batch_1",
            vec![job("job_1", "pictify"), job("job_2", "pictify")],
            T0,
        ),
    )
    .await;
    let mut got = vec![next_event(&mut feed).await, next_event(&mut feed).await];
    got.sort_by_key(|e| format!("{e:?}"));
    let changed = |id: &str, revision| FeedEvent::Changed {
        job_id: id.to_owned(),
        revision,
    };
    assert_eq!(got, [changed("job_1", 1), changed("job_2", 1)]);

    // Two patches to one job in one call: one notification, with the last revision.
    let mut p1 = JobPatch::new("job_1");
    p1.state = Some(JobState::Processing);
    let mut p2 = JobPatch::new("job_1");
    p2.provider_ref = Some("gen-1".to_owned());
    let applied = a.apply(vec![p1, p2], T0 + 1).await.expect("apply");
    assert_eq!(applied[0].revision, 3);
    assert_eq!(next_event(&mut feed).await, changed("job_1", 3));
    // A no-op changes nothing and announces nothing; the next real change comes next.
    assert!(
        a.apply(vec![JobPatch::new("job_2")], T0 + 2)
            .await
            .expect("noop")
            .is_empty()
    );
    let mut p3 = JobPatch::new("job_2");
    p3.state = Some(JobState::Cancelled);
    a.apply(vec![p3], T0 + 3).await.expect("apply");
    assert_eq!(next_event(&mut feed).await, changed("job_2", 2));
    // Every feed gets every change.
    for expected in [
        changed("job_1", 1),
        changed("job_2", 1),
        changed("job_1", 3),
        changed("job_2", 2),
    ] {
        let e = next_event(&mut other).await;
        if e != expected {
            // The two submit events may come in either order.
            assert!(matches!(e, FeedEvent::Changed { revision: 1, .. }), "{e:?}");
        }
    }

    // Kill B's listener connections (as a network cut or a server restart would).
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("terminate listeners");
    assert_eq!(killed.len(), 2, "both listeners found");
    conn.close().await.expect("close");
    // Each feed says Gap once its listener is back: changes from then on are delivered.
    assert_eq!(next_event(&mut feed).await, FeedEvent::Gap);
    assert_eq!(next_event(&mut other).await, FeedEvent::Gap);
    let mut p4 = JobPatch::new("job_1");
    p4.state = Some(JobState::Completed);
    a.apply(vec![p4], T0 + 4).await.expect("apply");
    assert_eq!(next_event(&mut feed).await, changed("job_1", 4));
    assert_eq!(next_event(&mut other).await, changed("job_1", 4));

    // Closing the store ends its feeds.
    b.close().await;
    let end = tokio::time::timeout(Duration::from_secs(10), feed.recv()).await;
    assert_eq!(end.expect("feed ends"), None);
    a.close().await;
}

/// A reader that does not keep up loses events for a Gap, never memory without bound, and
/// never loses an event silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_feed_drops_events_for_a_gap() {
    const BUFFER: usize = 4_096;
    let db = TestDb::create().await;
    let store = db.open().await;
    let mut feed = store.change_feed().await.expect("feed").expect("shared");
    // More changes than the feed buffers, not read until the buffer is full.
    for n in 0..5 {
        let jobs = queued_jobs(&format!("job{n}"), 1_000, "pictify");
        submit_ok(&store, submission(&format!("batch_{n}"), jobs, T0)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while feed.len() < BUFFER {
        assert!(
            Instant::now() < deadline,
            "the feed never filled: {}",
            feed.len()
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(feed.len(), BUFFER, "bounded");
    submit_ok(
        &store,
        submission("batch_last", vec![job("job_last", "pictify")], T0),
    )
    .await;

    // Draining: the events that fitted, then (once there is room) a Gap for the dropped
    // ones. Whatever the timing, the feed either says Gap or delivers every change.
    let mut changed = HashSet::new();
    let mut gap = false;
    while !changed.contains("job_last") {
        match next_event(&mut feed).await {
            FeedEvent::Changed { job_id, revision } => {
                assert_eq!(revision, 1);
                changed.insert(job_id);
            }
            FeedEvent::Gap => {
                gap = true;
                break;
            }
            e @ FeedEvent::Released { .. } => panic!("nobody released a lease: {e:?}"),
        }
    }
    eprintln!(
        "full feed: gap = {gap}, {} changes delivered",
        changed.len()
    );
    assert!(changed.len() <= BUFFER + 1, "{}", changed.len());
    if gap {
        // After the Gap the feed delivers again.
        submit_ok(
            &store,
            submission("batch_after", vec![job("job_after", "pictify")], T0),
        )
        .await;
        // More Gaps are possible, and honest: a Gap takes the slot the reader just freed, so a
        // notification of the burst still arriving while the reader drains the events ahead of
        // it is dropped for another Gap (CI saw it once, with two writers sending). Each Gap
        // stands for at least one dropped event, and only the burst's tail beyond the buffer
        // (and job_last) can have been dropped.
        let droppable = 5 * 1_000 + 1 - BUFFER;
        let mut more_gaps = 0;
        loop {
            match next_event(&mut feed).await {
                FeedEvent::Changed { job_id, .. } if job_id == "job_after" => break,
                FeedEvent::Changed { .. } => {}
                FeedEvent::Gap => {
                    more_gaps += 1;
                    assert!(
                        more_gaps <= droppable,
                        "{more_gaps} more gaps: more than the events that could be dropped"
                    );
                }
                e @ FeedEvent::Released { .. } => panic!("nobody released a lease: {e:?}"),
            }
        }
    } else {
        assert_eq!(changed.len(), 5_001, "no gap, so every change");
    }
    store.close().await;
}

/// The same request id sent to two replicas at once creates its jobs once; the other gets
/// the original ids back (or a conflict when the content differs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_request_id_on_two_replicas_creates_jobs_once() {
    const REQUESTS: usize = 40;
    let db = TestDb::create().await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    let request = |replica: &str, n: usize, hash: &str| NewSubmission {
        caller: adgate_store::ANONYMOUS.to_owned(),
        batch_id: format!("batch_{replica}_{n}"),
        request_id: Some(format!("req-{n}")),
        content_hash: hash.to_owned(),
        jobs: queued_jobs(&format!("job_{replica}_{n}"), 3, "pictify"),
        now_ms: T0,
        notify: None,
    };
    // All at once on both stores, so the writers' groups interleave the same ids (in
    // opposite orders on A and B: the deadlock case too).
    let tasks: Vec<_> = (0..REQUESTS)
        .flat_map(|n| {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            let (ra, rb) = (request("a", n, "h"), request("b", REQUESTS - 1 - n, "h"));
            [
                tokio::spawn(async move { a.submit(ra).await }),
                tokio::spawn(async move { b.submit(rb).await }),
            ]
        })
        .collect();
    let mut created: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut replayed: Vec<(String, Vec<String>)> = Vec::new();
    for task in tasks {
        match task.await.expect("task").expect("submit") {
            SubmitOutcome::Created { batch_id, job_ids } => {
                assert!(created.insert(batch_id, job_ids).is_none());
            }
            SubmitOutcome::Replayed { batch_id, job_ids } => replayed.push((batch_id, job_ids)),
            SubmitOutcome::Conflict => panic!("same content must not conflict"),
        }
    }
    assert_eq!(created.len(), REQUESTS, "one creation per request id");
    assert_eq!(replayed.len(), REQUESTS);
    for (batch_id, job_ids) in replayed {
        assert_eq!(
            created.get(&batch_id),
            Some(&job_ids),
            "replay names the created jobs"
        );
    }
    let total = suite::total_jobs(&*a).await;
    assert_eq!(total, (REQUESTS * 3) as u64);

    // Different content under one id, concurrently: one creation, one conflict.
    let (x, y) = tokio::join!(
        a.submit(request("a", 1_000, "h1")),
        b.submit(request("b", 1_000, "h2"))
    );
    let mut outcomes = [x.expect("x"), y.expect("y")];
    outcomes.sort_by_key(|o| matches!(o, SubmitOutcome::Conflict));
    assert!(
        matches!(outcomes[0], SubmitOutcome::Created { .. }),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], SubmitOutcome::Conflict);
    a.close().await;
    b.close().await;
}

/// Concurrent applies from two replicas to the same jobs in opposite orders: none is lost
/// (row locks, no lost update) and a deadlock between the writers is retried, not returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_applies_from_two_replicas_lose_nothing() {
    const JOBS: usize = 20;
    const ROUNDS: usize = 15;
    let db = TestDb::create().await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    submit_ok(
        &*a,
        submission("batch_1", queued_jobs("job", JOBS, "pictify"), T0),
    )
    .await;
    let ids: Vec<String> = (0..JOBS).map(|i| format!("job_{i:04}")).collect();
    let tasks: Vec<_> = (0..2)
        .map(|side| {
            let store = Arc::clone(if side == 0 { &a } else { &b });
            let mut ids = ids.clone();
            if side == 1 {
                ids.reverse();
            }
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    // Every patch changes the job (a new progress message each time).
                    let patches = ids
                        .iter()
                        .map(|id| {
                            let mut p = JobPatch::new(id);
                            p.progress = Some(adgate_generator::Progress {
                                step: format!("{side}-{round}"),
                                message: String::new(),
                                percentage: 1.0,
                            });
                            p
                        })
                        .collect();
                    let changed = store.apply(patches, T0 + 1).await.expect("apply");
                    assert_eq!(changed.len(), JOBS);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    for j in a.get_jobs(&ids).await.expect("get") {
        assert_eq!(j.revision, 1 + 2 * ROUNDS as i64, "{}", j.id);
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_submit_and_group_commit_throughput() {
    let db = TestDb::create().await;
    let store = Arc::new(db.open().await);
    let started = Instant::now();
    let commits = store.commit_count();
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for call in 0..10 {
                    let id = format!("{w}_{call}");
                    submit_ok(
                        &*store,
                        submission(
                            &format!("batch_{id}"),
                            queued_jobs(&format!("job_{id}"), 100, "pictify"),
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
    eprintln!(
        "postgres bulk submit: 16 callers x 10 calls x 100 jobs in {secs:.2}s ({:.0} jobs/s), \
         {commits} commits",
        16_000.0 / secs
    );
    assert!(commits < 160, "{commits} commits for 160 calls");
    store.close().await;
}

/// Outbound webhooks across replicas: every due delivery goes to exactly one claimer, and a
/// claim not settled in time (its replica died) is due again for the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_claims_never_hand_a_delivery_to_two_replicas() {
    const JOBS: usize = 200;
    let db = TestDb::create().await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    let mut s = submission("bn", queued_jobs("jn", JOBS, "pictify"), T0);
    s.notify = Some(adgate_store::BatchNotify {
        url: Some((
            "https://hooks.example/x".into(),
            adgate_store::notify::ALL_EVENTS,
        )),
    });
    let ids = submit_ok(a.as_ref(), s).await;
    let patches: Vec<JobPatch> = ids
        .iter()
        .map(|id| {
            let mut p = JobPatch::new(id.clone());
            p.state = Some(JobState::Completed);
            p
        })
        .collect();
    a.apply(patches, T0 + 1).await.expect("present");
    let claimers: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .claim_notifications(T0 + 2, 60_000, 7)
                        .await
                        .expect("present");
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|e| e.seq));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.expect("present"));
    }
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        JOBS + 1,
        "job events and batch.completed, once each"
    );
    assert_eq!(distinct.len(), all.len(), "a delivery was claimed twice");
    // Leases lapse: a dead replica's claims come back, once.
    let again = b
        .claim_notifications(T0 + 60_002, 60_000, 1000)
        .await
        .expect("present");
    assert_eq!(again.len(), JOBS + 1);
    assert!(
        a.claim_notifications(T0 + 60_003, 60_000, 1000)
            .await
            .expect("present")
            .is_empty()
    );
}

/// Every retention statement is an index range scan on PostgreSQL too: with 20,000 rows in
/// each table (analysed) and a cutoff that takes the oldest few hundred, the plan of each
/// statement uses its index and scans no table sequentially.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_plans() {
    let db = TestDb::create().await;
    let store = db.open().await;
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::raw_sql(
        "INSERT INTO batches (id, created_at, job_count) \
             SELECT 'b' || g, g, 1 FROM generate_series(1, 20000) g; \
         INSERT INTO attempts (provider, idempotency_key, created_at) \
             SELECT 'pictify', 'k' || g, g FROM generate_series(1, 20000) g; \
         INSERT INTO jobs (id, batch_id, seq, provider, spec, state, client_ref, labels, \
                           created_at, updated_at, completed_at, deadline_at, revision, attempt_id) \
             SELECT 'j' || g, 'b' || g, 0, 'pictify', '{}', \
                    CASE WHEN g % 10 = 0 THEN 1 ELSE 3 END, 'r', '{}', g, g, \
                    CASE WHEN g % 10 = 0 THEN NULL ELSE g END, g + 1000000, 1, g \
             FROM generate_series(1, 20000) g; \
         INSERT INTO request_ids (request_id, content_hash, batch_id, created_at) \
             SELECT 'q' || g, 'h', 'b1', g FROM generate_series(1, 20000) g; \
         INSERT INTO webhook_deliveries (provider, delivery_id, received_at) \
             SELECT 'pictify', 'd' || g, g FROM generate_series(1, 20000) g; \
         ANALYZE;",
    )
    .execute(&mut conn)
    .await
    .expect("seed");
    for (sql, index) in adgate_store::postgres::retention::PLANNED {
        let explain = format!("EXPLAIN {sql}");
        let query = sqlx::query_scalar::<_, String>(&explain);
        // The age-driven statements take (cutoff, limit); the others a short list of ids.
        let query = if sql.contains("$2") {
            query.bind(300_i64).bind(500_i64)
        } else if sql.contains("bigint[]") {
            query.bind(vec![1_i64, 2, 3])
        } else {
            query.bind(vec!["b1".to_owned(), "b2".to_owned()])
        };
        let plan = query
            .fetch_all(&mut conn)
            .await
            .expect("explain")
            .join("\n");
        println!("{sql}\n{plan}\n");
        assert!(plan.contains(index), "{sql}\nshould use {index}:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{sql}\nscans a table:\n{plan}");
    }
    conn.close().await.expect("close");
    store.close().await;
}

/// Adds up, over every plan node that reads `jobs`, the rows it read (returned or filtered
/// out, times its loops), and fails on a sequential scan of `jobs`.
fn rows_read_from_jobs(node: &serde_json::Value, plan: &str) -> f64 {
    let mut read = 0.0;
    if node["Relation Name"] == "jobs" {
        assert_ne!(
            node["Node Type"], "Seq Scan",
            "scans jobs sequentially:\n{plan}"
        );
        let num = |key: &str| node[key].as_f64().unwrap_or(0.0);
        read += (num("Actual Rows") + num("Rows Removed by Filter")) * num("Actual Loops");
    }
    if let Some(children) = node["Plans"].as_array() {
        read += children
            .iter()
            .map(|child| rows_read_from_jobs(child, plan))
            .sum::<f64>();
    }
    read
}

/// `claim_orphans` starts from the lapsed replicas: beside 20,000 live tracked jobs of a
/// healthy replica and 5,000 queued unowned ones (never sent: not orphans), it finds the few
/// orphans (a lapsed replica's, and unowned ones with a provider reference or an attempt)
/// through their indexes, reads none of the other rows, and takes exactly the orphans, oldest
/// first across both kinds, `limit` at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_are_found_by_index() {
    use sqlx::Row;
    const NOW: i64 = 1_000_000;
    let db = TestDb::create().await;
    let store = db.open().await;
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::raw_sql(
        "INSERT INTO replicas (id, heartbeat_at, lease_until) \
             VALUES ('healthy', 0, 9000000000), ('lapsed', 0, 1); \
         INSERT INTO attempts (provider, idempotency_key, created_at) VALUES ('pictify', 'k', 1); \
         INSERT INTO batches (id, created_at, job_count) VALUES ('b', 1, 25008); \
         INSERT INTO jobs (id, batch_id, seq, provider, spec, state, client_ref, labels, \
                           created_at, updated_at, deadline_at, revision, provider_ref, owner) \
             SELECT 'live' || g, 'b', g, 'pictify', '{}', 2, 'r', '{}', g, g, 9000000000, 1, \
                    'ref' || g, 'healthy' \
             FROM generate_series(1, 20000) g; \
         INSERT INTO jobs (id, batch_id, seq, provider, spec, state, client_ref, labels, \
                           created_at, updated_at, deadline_at, revision) \
             SELECT 'queued' || g, 'b', 30000 + g, 'pictify', '{}', 1, 'r', '{}', g, g, \
                    9000000000, 1 \
             FROM generate_series(1, 5000) g; \
         INSERT INTO jobs (id, batch_id, seq, provider, spec, state, client_ref, labels, \
                           created_at, updated_at, deadline_at, revision, provider_ref, \
                           attempt_id, owner) VALUES \
             ('orphan_a', 'b', 20001, 'pictify', '{}', 2, 'r', '{}', 50, 1, 9000000000, 1, \
              'ref_a', NULL, 'lapsed'), \
             ('orphan_b', 'b', 20002, 'pictify', '{}', 1, 'r', '{}', 60, 1, 9000000000, 1, \
              NULL, (SELECT id FROM attempts WHERE idempotency_key = 'k'), NULL), \
             ('orphan_c', 'b', 20003, 'pictify', '{}', 1, 'r', '{}', 15050, 1, 9000000000, 1, \
              NULL, (SELECT id FROM attempts WHERE idempotency_key = 'k'), 'lapsed'), \
             ('orphan_d', 'b', 20004, 'pictify', '{}', 2, 'r', '{}', 30000, 1, 9000000000, 1, \
              'ref_d', NULL, NULL), \
             ('done_lapsed', 'b', 20005, 'pictify', '{}', 3, 'r', '{}', 70, 1, 9000000000, 1, \
              'ref_e', NULL, 'lapsed'), \
             ('queued_lapsed', 'b', 20006, 'pictify', '{}', 1, 'r', '{}', 80, 1, 9000000000, 1, \
              NULL, NULL, 'lapsed'), \
             ('other_provider', 'b', 20007, 'abyssale', '{}', 2, 'r', '{}', 90, 1, 9000000000, \
              1, 'ref_f', NULL, 'lapsed'), \
             ('queued_unowned', 'b', 20008, 'pictify', '{}', 1, 'r', '{}', 95, 1, 9000000000, \
              1, NULL, NULL, NULL); \
         ANALYZE;",
    )
    .execute(&mut conn)
    .await
    .expect("seed");

    // EXPLAIN ANALYZE runs the claim: inside a transaction that is rolled back.
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    let explain = format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        *adgate_store::postgres::CLAIM_ORPHANS
    );
    let row = sqlx::query(&explain)
        .bind("pictify")
        .bind("claimer")
        .bind(NOW)
        .bind(60_000_i64)
        .bind(100_i64)
        .fetch_one(&mut conn)
        .await
        .expect("explain");
    // A `json` column; the store builds sqlx without its JSON types, so read it as text.
    let plan: serde_json::Value =
        serde_json::from_str(&row.try_get_unchecked::<String, _>(0).expect("plan column"))
            .expect("plan JSON");
    sqlx::query("ROLLBACK")
        .execute(&mut conn)
        .await
        .expect("rollback");
    let text = serde_json::to_string_pretty(&plan).expect("plan");
    let read = rows_read_from_jobs(&plan[0]["Plan"], &text);
    println!("{text}\nrows read from jobs: {read}");
    // The four orphans, each read once to find and lock it and once to update it.
    assert!(read <= 16.0, "read {read} rows of jobs:\n{text}");
    assert!(text.contains("jobs_orphans_owned"), "{text}");
    assert!(text.contains("jobs_orphans_unowned"), "{text}");

    let first = store
        .claim_orphans("pictify", "claimer", NOW, 60_000, 2)
        .await
        .expect("claim");
    let first: Vec<String> = first.into_iter().map(|j| j.id).collect();
    assert_eq!(first, ["orphan_a", "orphan_b"]);
    let rest = store
        .claim_orphans("pictify", "claimer", NOW, 60_000, 100)
        .await
        .expect("claim");
    let rest: Vec<String> = rest.into_iter().map(|j| j.id).collect();
    assert_eq!(rest, ["orphan_c", "orphan_d"]);
    // Now owned by a live replica: nothing is left to take over.
    let none = store
        .claim_orphans("pictify", "another", NOW, 60_000, 100)
        .await
        .expect("claim");
    assert!(none.is_empty(), "{:?}", ids(none));
    conn.close().await.expect("close");
    store.close().await;
}

/// The writer's connection killed again and again while Submits stream in (as a failover or
/// an administrator's `pg_terminate_backend` would): a group cut before its COMMIT is redone
/// on a fresh connection, so callers see no error, except one whose COMMIT itself was cut
/// (`Unavailable`, outcome unknown), which its retry with the same request id settles. Every
/// acknowledged job is stored, and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submits_survive_killed_connections() {
    const CALLERS: usize = 16;
    const EACH: usize = 25;
    let db = TestDb::create().await;
    let store: Arc<dyn Store> = Arc::new(db.open().await);
    // One message per acknowledged Submit: the killer strikes every 40 of them.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let store = Arc::clone(&store);
            let done = done_tx.clone();
            tokio::spawn(async move {
                let mut unavailable = 0;
                for n in 0..EACH {
                    let id = format!("job_{c:02}_{n:02}");
                    let s = suite::with_request(
                        submission(&format!("batch_{id}"), vec![job(&id, "pictify")], T0),
                        &format!("req_{id}"),
                        "same",
                    );
                    loop {
                        match store.submit(s.clone()).await {
                            Ok(SubmitOutcome::Created { .. } | SubmitOutcome::Replayed { .. }) => {
                                break;
                            }
                            Err(StoreError::Unavailable(why)) => {
                                assert!(why.contains("COMMIT"), "{id}: {why}");
                                unavailable += 1;
                            }
                            other => panic!("{id}: {other:?}"),
                        }
                    }
                    done.send(()).expect("the killer listens");
                }
                unavailable
            })
        })
        .collect();
    drop(done_tx);
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    let (mut acknowledged, mut kills) = (0, 0);
    while done_rx.recv().await.is_some() {
        acknowledged += 1;
        if acknowledged % 40 == 0 {
            let killed: Vec<(bool,)> = sqlx::query_as(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'adgate' \
                   AND pid <> pg_backend_pid()",
            )
            .fetch_all(&mut conn)
            .await
            .expect("terminate");
            kills += killed.len();
        }
    }
    let mut unavailable = 0;
    for caller in callers {
        unavailable += caller.await.expect("caller");
    }
    println!("{kills} connections killed, {unavailable} Submits answered Unavailable");
    assert!(
        kills >= 9,
        "the writer was killed at least once per strike: {kills}"
    );
    let ids: Vec<String> = (0..CALLERS)
        .flat_map(|c| (0..EACH).map(move |n| format!("job_{c:02}_{n:02}")))
        .collect();
    let stored = store.get_jobs(&ids).await.expect("read");
    assert_eq!(stored.len(), CALLERS * EACH);
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(rows, (CALLERS * EACH) as i64, "every job stored once");
    conn.close().await.expect("close");
    store.close().await;
}

/// A write group waiting on a row lock (another replica's transaction, a long-running
/// statement) does not hold up the writes queued behind it: the second writer commits them.
/// With one writer the Submit below waits until the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_waiting_on_a_row_lock_does_not_hold_up_a_submit() {
    let db = TestDb::create().await;
    let store = Arc::new(db.open().await);
    submit_ok(
        &*store,
        submission("batch_locked", vec![job("job_locked", "pictify")], T0),
    )
    .await;
    // Another session holds the job's row.
    let mut holder = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM jobs WHERE id = 'job_locked' FOR UPDATE")
        .execute(&mut holder)
        .await
        .expect("lock the row");
    let blocked = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            store
                .apply(
                    vec![JobPatch {
                        state: Some(JobState::Processing),
                        ..JobPatch::new("job_locked".to_owned())
                    }],
                    T0 + 1,
                )
                .await
        }
    });
    // Until the patch's group is waiting on the lock: its writer's statement shows as waiting.
    let waiting = async {
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        loop {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut conn)
            .await
            .expect("activity");
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        conn.close().await.expect("close");
    };
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the patch never waited on the lock");
    let submitted = tokio::time::timeout(
        Duration::from_secs(5),
        store.submit(submission(
            "batch_free",
            vec![job("job_free", "pictify")],
            T0 + 2,
        )),
    )
    .await
    .expect("the Submit waited behind the blocked group")
    .expect("submit");
    assert!(
        matches!(submitted, SubmitOutcome::Created { .. }),
        "{submitted:?}"
    );
    assert!(
        !blocked.is_finished(),
        "the patch ran although the row was locked"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("release");
    holder.close().await.expect("close");
    let patched = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("the patch never finished")
        .expect("task")
        .expect("apply");
    assert_eq!(patched[0].state, JobState::Processing);
    store.close().await;
}
