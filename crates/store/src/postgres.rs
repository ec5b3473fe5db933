//! The PostgreSQL backend of [`Store`]: one database shared by several replicas (SPEC §8).
//!
//! Chosen with `ADGATE_DATABASE_URL=postgres://…` (see [`crate::open`]). Everything the SQLite
//! backend promises holds here too — same tables and columns, same semantics, checked by the
//! same conformance suite — plus what lets several replicas act as one gateway.
//!
//! # Writes: group commit
//!
//! As on SQLite, a writer task (the private `writer` module) owns a dedicated connection and
//! commits every write that queued up while the previous commit ran in one transaction, so
//! concurrent Submits share one WAL flush. [`WRITERS`] such tasks take groups from one queue,
//! so the next group runs while the previous one's commit waits for its flush. Submissions
//! are coalesced into array statements (`submit`), patches applied in one read and one write
//! per call (`patch`); savepoints, one per call, are used only to redo a group in which
//! something failed. Each committed job change is
//! announced with `pg_notify` in the same transaction (see *Change feed*). Reads, claims,
//! leases and the budget use a pool of [`READ_CONNECTIONS`] connections.
//!
//! Request-id dedupe across replicas is decided by the primary key of `request_ids`:
//! `INSERT … ON CONFLICT DO NOTHING` makes a second writer wait for the first one's commit
//! and then insert nothing, so the same `request_id` sent to two replicas at once creates
//! its jobs once; the loser compares content hashes and replays (or conflicts).
//!
//! # Ownership by lease
//!
//! `jobs.owner` names the replica working on a job; the replica's lease is one row in
//! `replicas` (`lease_until`), not a column per job, so keeping a lease costs one row update
//! whatever the number of jobs in flight. A job is *free* when it has no owner or its owner's
//! lease has lapsed. [`Store::claim_queued`] takes QUEUED, unattempted jobs that are free *or
//! already this replica's* — a replica that held a job back (waiting to fill a provider batch)
//! must get it again — with `SELECT … FOR UPDATE SKIP LOCKED`, so two replicas claiming at
//! once never get the same job: the second skips the rows the first has locked, and re-checks
//! rows the first has meanwhile committed (owner set to a live replica → no longer free).
//! Claiming is a sign of life: it registers the replica and extends its lease.
//! [`Store::renew_leases`] is the heartbeat (every third of the lease time). A replica that
//! dies without a goodbye stops renewing; once its `lease_until` passes,
//! [`Store::claim_orphans`] lets a live replica take over its tracked jobs (provider reference)
//! and open attempts, and [`Store::claim_queued`] its unattempted queued jobs. Each job moves to
//! the claimer alone, under its row lock, so every orphan is taken over exactly once.
//!
//! A replica that stops gracefully says goodbye: [`Store::release_lease`] sets its
//! `lease_until` to 0 (lapsed by every clock, whatever the skew) and notifies channel
//! `adgate_replicas`, on which every change feed also listens, so live replicas claim the jobs
//! at once instead of at their next takeover pass. Renewals and claims by the releasing
//! replica share a lock with the release (read side, write side), so none still in flight can
//! commit after it and extend the lease again (both upserts take `GREATEST`), and later ones
//! are refused. A replica with a stable identity takes its own jobs back at start-up
//! ([`Store::claim_own`]). [`Store::claim_identity`] keeps two live processes off one identity
//! with a session-level advisory lock held on a dedicated connection: the server drops it when
//! that connection ends, so a process killed with SIGKILL frees its identity for its restart.
//!
//! # One budget for the fleet: an exact rolling window
//!
//! Providers document *rolling* windows ("100 requests per 60 s", per API key), so the budget
//! is one exact rolling window shared through the database (`adgate_take_budget`, a PL/pgSQL
//! function in the migration): lock the provider's `budget` row (`SELECT … FOR UPDATE`), refuse
//! while `blocked_until` (a 429's Retry-After, [`Store::block_budget`]) is in the future, count
//! the `budget_hits` inside the window, insert one and grant if under the limit, else answer
//! `Wait(ms until enough old hits have left the window)`. Alternatives considered:
//! - a token bucket row: one row update and no history, but a bucket that holds `limit` tokens
//!   and refills `limit` per window lets nearly `2 × limit` through in one rolling window
//!   (a full bucket, then the refill) — exactly the 429s the budget exists to avoid; shrinking
//!   the bucket to fix that wastes half the budget.
//! - budget shares leased per live replica (`limit / replicas` each, decided locally): no
//!   round trip per request, but an idle replica's share is wasted while a busy one waits,
//!   and shares must be re-leased whenever a replica joins or dies.
//!
//! The row lock serialises one provider's decisions across the fleet; each decision is one
//! round trip running one function (a few index lookups on at most `2 × limit` rows), and the
//! budget connections use `synchronous_commit = off`, so the lock is never held across a WAL
//! flush. That is far above any provider's limit (see the `budget_throughput` test for a
//! figure). The price of asynchronous commit: if the *database server* crashes, the last few
//! hundred milliseconds of budget hits may be forgotten — a small overshoot once, after a
//! rare event, against every request paying an fsync under a lock.
//!
//! # Change feed
//!
//! The writer notifies channel `adgate_jobs` with `<job id>:<revision>` for every job a
//! group changed, inside the transaction, so a notification arrives only for a committed
//! change. [`Store::change_feed`] opens a dedicated `LISTEN` connection before it returns
//! (every change committed afterwards is delivered) and forwards notifications as
//! [`FeedEvent::Changed`] over a bounded channel. Notifications sent while the listener is
//! disconnected are lost, so after every reconnect the feed sends [`FeedEvent::Gap`] (after
//! the new `LISTEN` is in place) and watchers re-read their jobs; a slow reader whose channel
//! fills up gets a `Gap` too, once there is room, instead of unbounded memory.
//!
//! # Schema
//!
//! Embedded, versioned migrations (`migrations/postgres/*.sql`) run at [`PgStore::open`] in
//! one transaction under an advisory lock (replicas starting together migrate one after the
//! other), recorded in `schema_migrations`.

mod custody;
mod notify;
mod patch;
/// Retention's statements are public for the plan checks in `tests/postgres.rs`.
#[doc(hidden)]
pub mod retention;
mod rows;
mod submit;
mod writer;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use adgate_generator::JobState;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{Mutex, RwLock, mpsc, watch};
use tokio::task::JoinHandle;

use self::rows::{JOB_COLUMNS, db, jobs_from_rows, sql_limit};
use self::writer::{Command, Op};
use crate::model::JobRecord;
use crate::reads::ACTIVE;
use crate::writer::Reply;
use crate::{BudgetGrant, FeedEvent, Result, StoreError};

/// Embedded migrations: (version, SQL). Append only; never edit a shipped one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_replica_leases.sql"),
    ),
    (
        3,
        include_str!("../migrations/postgres/0003_kept_events.sql"),
    ),
    (
        4,
        include_str!("../migrations/postgres/0004_provider_result.sql"),
    ),
    (5, include_str!("../migrations/postgres/0005_callers.sql")),
    (6, include_str!("../migrations/postgres/0006_search.sql")),
    (7, include_str!("../migrations/postgres/0007_notify.sql")),
    (8, include_str!("../migrations/postgres/0008_custody.sql")),
    (9, include_str!("../migrations/postgres/0009_retention.sql")),
    (
        10,
        include_str!("../migrations/postgres/0010_orphan_index.sql"),
    ),
    (
        11,
        include_str!("../migrations/postgres/0011_lean_indexes.sql"),
    ),
];

/// Pool connections for reads, claims and leases.
const READ_CONNECTIONS: u32 = 8;

/// Pool connections for the shared budget (asynchronous commit; see the module docs).
const BUDGET_CONNECTIONS: u32 = 4;

/// Commands that may wait for the writers (backpressure beyond this).
const WRITE_QUEUE: usize = 4096;

/// Writer tasks, each with its own connection, taking groups from one queue. With one, the
/// database worked on one group at a time: a Submit's rows, index entries and NOTIFYs ran
/// one statement after another on one backend while the machine sat partly idle. A second
/// writer builds and runs the next group while the first one's commit waits for its flush.
/// Writers of one process meet each other exactly as writers of two replicas do (row locks,
/// request-id conflicts, deadlock victims carried over; see `writer`), which the replica
/// suite already proves.
const WRITERS: usize = 2;

/// Events a change feed buffers for a slow reader before it drops them for a `Gap`.
const FEED_BUFFER: usize = 4096;

/// Reconnect back-off of a change feed whose connection was lost.
const FEED_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The PostgreSQL job store. Cheap to share behind an `Arc`; see the module docs.
pub struct PgStore {
    writes: mpsc::Sender<Command>,
    reads: PgPool,
    budget: PgPool,
    options: PgConnectOptions,
    commits: Arc<AtomicU64>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    /// Set to true by `close()`; change feeds stop when it changes (or is dropped).
    stop: watch::Sender<bool>,
    /// Replicas that said goodbye through this handle. Lease-extending statements hold the
    /// read side while they run, `release_lease` the write side (see the module docs).
    released: RwLock<HashSet<String>>,
    /// Identities claimed through this handle, each with the connection holding its
    /// advisory lock (the lock lives as long as the connection).
    identities: Mutex<Vec<(String, PgConnection)>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::debug_store(f, "PgStore", &self.commits)
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`), applies the embedded migrations
    /// and starts the writer task. Must be called inside a Tokio runtime.
    pub async fn open(url: &str) -> Result<PgStore> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(crate::invalid_url("a postgres://", url));
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(e.to_string()))?
            .application_name("adgate")
            .log_statements(tracing::log::LevelFilter::Trace)
            // Plan every execution for the table as it is now. sqlx prepares each statement
            // once per connection, and PostgreSQL soon switches a prepared statement to a
            // generic plan, costed from the statistics at that moment; on a new deployment
            // that is an empty `jobs` table, and the cached plan (a sequential scan, chosen for
            // 0 rows) stayed in use until autovacuum analysed the table a minute or more later:
            // measured, `id = ANY($1) FOR UPDATE` scanning 63,000 rows in 30-95 ms per write
            // group. A custom plan costs a fraction of a millisecond and reads the live size.
            // Planning is still about a quarter of the database's CPU per Submit (profiled),
            // but letting the writers cache generic plans (with sequential scans disabled, so
            // the trap above stays closed) measured worse: fewer Submits per second and a p99
            // of 52 ms instead of 12-15 ms (BENCHMARKS.md).
            .options([("plan_cache_mode", "force_custom_plan")]);

        let mut conn = options.connect().await.map_err(db)?;
        if let Err(e) = migrate(&mut conn).await {
            drop(conn.close().await);
            return Err(e);
        }
        let reads = PgPoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .min_connections(0)
            .connect_with(options.clone())
            .await
            .map_err(db)?;
        let budget = PgPoolOptions::new()
            .max_connections(BUDGET_CONNECTIONS)
            .min_connections(0)
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));

        let commits = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut writers = Vec::with_capacity(WRITERS);
        let mut first = Some(conn);
        for _ in 0..WRITERS {
            let conn = match first.take() {
                Some(c) => c,
                None => options.connect().await.map_err(db)?,
            };
            writers.push(tokio::spawn(writer::run(
                conn,
                options.clone(),
                Arc::clone(&rx),
                Arc::clone(&commits),
            )));
        }
        let (stop, _) = watch::channel(false);
        Ok(PgStore {
            writes: tx,
            reads,
            budget,
            options,
            commits,
            writers: Mutex::new(writers),
            stop,
            released: RwLock::new(HashSet::new()),
            identities: Mutex::new(Vec::new()),
        })
    }

    /// Lends a pooled read connection to `read` (see `store_impl::impl_store!`).
    async fn with_reader<T>(
        &self,
        read: impl for<'c> FnOnce(&'c mut PgConnection) -> crate::store_impl::Read<'c, T>,
    ) -> Result<T> {
        let mut conn = self.reads.acquire().await.map_err(db)?;
        read(&mut conn).await
    }

    /// Sends a job write to the writer and waits for its answer (given after the commit; see
    /// `store_impl::impl_store!`).
    async fn write_op<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T> {
        crate::writer::send(&self.writes, |reply| Command::Write {
            op: make(reply),
            tries: 0,
        })
        .await
    }
}

/// Applies the embedded migrations this database has not seen, in one transaction.
async fn migrate(conn: &mut PgConnection) -> Result<()> {
    let mut tx = conn.begin().await.map_err(db)?;
    // Replicas starting at once on a fresh database: one migrates, the others wait here and
    // then find the work done.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('adgate.schema_migrations'))")
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    crate::migrate::apply_pending(&mut *tx, MIGRATIONS).await?;
    tx.commit().await.map_err(db)
}

static GET_JOBS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1)"));

/// Registers the claiming replica and extends its lease (`$2` replica, `$3` now, `$4` lease),
/// then names the replicas whose lease has lapsed: the start of both claiming statements.
/// The locking `c` step returns each row as last committed (READ COMMITTED re-reads a row a
/// concurrent writer changed before locking it), so the claimed records are current.
const CLAIMER_AND_LAPSED: &str = "me AS (\
         INSERT INTO replicas (id, heartbeat_at, lease_until) VALUES ($2, $3, $3 + $4) \
         ON CONFLICT (id) DO UPDATE \
         SET heartbeat_at = GREATEST(replicas.heartbeat_at, EXCLUDED.heartbeat_at), \
             lease_until = GREATEST(replicas.lease_until, EXCLUDED.lease_until)), \
     lapsed AS (SELECT id FROM replicas WHERE lease_until <= $3 AND id <> $2)";

/// `$1` provider, `$2` replica, `$3` now, `$4` lease, `$5` limit. Free means no owner or a
/// lapsed owner; the replica's own jobs are included (see the module docs). Only rows that
/// change hands are written.
static CLAIM_QUEUED: LazyLock<String> = LazyLock::new(|| {
    // The head of every caller's queue (see QUEUED_UNASSIGNED): per caller with queued jobs,
    // its first `$5` free rows, locked with SKIP LOCKED (rows another replica is claiming are
    // passed over, never waited for); then ranked within each caller, and `$5` taken rank by
    // rank. Rows locked but not taken are released when the statement ends.
    format!(
        "WITH {CLAIMER_AND_LAPSED}, \
         callers AS (\
             SELECT DISTINCT caller FROM jobs \
             WHERE provider = $1 AND state = {queued} AND attempt_id IS NULL), \
         heads AS (\
             SELECT h.*, ROW_NUMBER() OVER (\
                 PARTITION BY h.caller ORDER BY h.priority, h.created_at, h.pos) AS rn \
             FROM callers k, LATERAL (\
                 SELECT {JOB_COLUMNS}, pos, owner FROM jobs \
                 WHERE provider = $1 AND caller = k.caller AND state = {queued} \
                   AND attempt_id IS NULL \
                   AND (owner IS NULL OR owner = $2 OR owner IN (SELECT id FROM lapsed)) \
                 ORDER BY priority, created_at, pos LIMIT $5 \
                 FOR UPDATE SKIP LOCKED) h), \
         c AS (SELECT * FROM heads ORDER BY rn, created_at, pos LIMIT $5), \
         u AS (\
             UPDATE jobs j SET owner = $2 FROM c \
             WHERE j.id = c.id AND c.owner IS DISTINCT FROM $2) \
         SELECT {JOB_COLUMNS} FROM c ORDER BY created_at, pos",
        queued = JobState::Queued.as_i64()
    )
});

/// `$1` provider, `$2` replica, `$3` now, `$4` lease, `$5` limit. Driven by the lapsed
/// replicas, never by the provider's live jobs: per lapsed replica its oldest `$5` orphans of
/// the provider (`jobs_orphans_owned`, one index range each), beside the oldest `$5` unowned
/// ones (`jobs_orphans_unowned`), each locked with SKIP LOCKED as it is read; the oldest `$5`
/// of those are taken. A healthy replica's jobs are not read at all. Rows locked but not
/// taken are released when the statement ends. Public for the plan check in
/// `tests/postgres.rs`.
#[doc(hidden)]
pub static CLAIM_ORPHANS: LazyLock<String> = LazyLock::new(|| {
    // Both filters are written exactly as the partial indexes are declared (migration 10).
    format!(
        "WITH {CLAIMER_AND_LAPSED}, \
         owned AS (\
             SELECT o.* FROM lapsed l, LATERAL (\
                 SELECT {JOB_COLUMNS}, pos FROM jobs \
                 WHERE owner = l.id AND provider = $1 AND {ACTIVE} AND owner IS NOT NULL \
                   AND (provider_ref IS NOT NULL OR attempt_id IS NOT NULL) \
                 ORDER BY created_at, pos LIMIT $5 \
                 FOR UPDATE SKIP LOCKED) o), \
         unowned AS (\
             SELECT {JOB_COLUMNS}, pos FROM jobs \
             WHERE provider = $1 AND {ACTIVE} AND owner IS NULL \
               AND (provider_ref IS NOT NULL OR attempt_id IS NOT NULL) \
             ORDER BY created_at, pos LIMIT $5 \
             FOR UPDATE SKIP LOCKED), \
         c AS (\
             SELECT * FROM owned UNION ALL SELECT * FROM unowned \
             ORDER BY created_at, pos LIMIT $5), \
         u AS (UPDATE jobs j SET owner = $2 FROM c WHERE j.id = c.id) \
         SELECT {JOB_COLUMNS} FROM c ORDER BY created_at, pos"
    )
});

/// `$1` provider, `$2` replica, `$3` now, `$4` lease, `$5` limit. The replica's own tracked
/// jobs and open attempts, for a restart under the same identity; `SKIP LOCKED` as in
/// CLAIM_ORPHANS, so a job another replica is taking over right now goes to it alone.
static CLAIM_OWN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {CLAIMER_AND_LAPSED}, \
         c AS (\
             SELECT {JOB_COLUMNS}, pos FROM jobs \
             WHERE provider = $1 AND {ACTIVE} AND owner = $2 \
               AND (provider_ref IS NOT NULL OR attempt_id IS NOT NULL) \
             ORDER BY created_at, pos LIMIT $5 \
             FOR UPDATE SKIP LOCKED) \
         SELECT {JOB_COLUMNS} FROM c ORDER BY created_at, pos"
    )
});

/// Channel of [`FeedEvent::Released`]: the payload is the replica that said goodbye.
const RELEASES_CHANNEL: &str = "adgate_replicas";

/// `$1` replica, `$2` now, `$3` [`RELEASES_CHANNEL`]. Lapsed at once for every replica (0 is
/// before any clock), and announced after the commit (NOTIFY is transactional).
const RELEASE_LEASE: &str = "WITH r AS (\
         UPDATE replicas SET heartbeat_at = GREATEST(heartbeat_at, $2), lease_until = 0 \
         WHERE id = $1 RETURNING id) \
     SELECT pg_notify($3, id) FROM r";

/// `$1` replica, `$2` now, `$3` lease. Heartbeat and lease in one row; the count (from the
/// partial `jobs_owner` index) is every live job the replica owns, for the metrics.
static RENEW_LEASES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH hb AS (\
             INSERT INTO replicas (id, heartbeat_at, lease_until) VALUES ($1, $2, $2 + $3) \
             ON CONFLICT (id) DO UPDATE \
             SET heartbeat_at = GREATEST(replicas.heartbeat_at, EXCLUDED.heartbeat_at), \
                 lease_until = GREATEST(replicas.lease_until, EXCLUDED.lease_until)) \
         SELECT count(*) FROM jobs WHERE owner = $1 AND {ACTIVE}"
    )
});

impl PgStore {
    /// Run one of the claiming statements (`CLAIM_QUEUED`, `CLAIM_ORPHANS`): both take the
    /// same binds and return the claimed jobs.
    async fn claim(
        &self,
        sql: &str,
        provider: &str,
        replica: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Held until the statement is done: a release waits for it (see the module docs).
        let released = self.released.read().await;
        if released.contains(replica) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sql)
            .bind(provider)
            .bind(replica)
            .bind(now_ms)
            .bind(lease_ms)
            .bind(sql_limit(limit))
            .fetch_all(&self.reads)
            .await
            .map_err(db)?;
        jobs_from_rows(&rows)
    }
}

crate::store_impl::impl_store!(PgStore {

    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<JobRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // `= ANY($1)` takes the ids as one array parameter, however many; each job once.
        let rows = sqlx::query(&GET_JOBS)
            .bind(ids)
            .fetch_all(&self.reads)
            .await
            .map_err(db)?;
        jobs_from_rows(&rows)
    }



















    async fn set_notify_endpoints(&self, endpoints: Vec<crate::NotifyEndpoint>) -> Result<()> {
        notify::set_endpoints_in_tx(&self.reads, &endpoints).await
    }

    async fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<crate::OutboxEntry>> {
        notify::claim(&self.reads, now_ms, lease_ms, limit).await
    }

    async fn settle_notifications(
        &self,
        settles: Vec<crate::NotifySettle>,
        now_ms: i64,
    ) -> Result<()> {
        if settles.is_empty() {
            return Ok(());
        }
        notify::settle(&self.reads, &settles, now_ms).await
    }

    async fn disable_endpoint(&self, endpoint: &str, reason: &str, now_ms: i64) -> Result<u64> {
        notify::disable_in_tx(&self.reads, endpoint, reason, now_ms).await
    }

    async fn disabled_endpoints(&self) -> Result<Vec<(String, String)>> {
        notify::disabled(&self.reads).await
    }

    async fn redeliver_batch(&self, batch_id: &str, now_ms: i64) -> Result<Option<u64>> {
        notify::redeliver_in_tx(&self.reads, batch_id, now_ms).await
    }

    async fn purge(&self, cutoffs: crate::PurgeCutoffs, limit: usize) -> Result<crate::Purged> {
        retention::purge(&self.reads, cutoffs, limit).await
    }

    fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn claim_queued(
        &self,
        provider: &str,
        replica: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        self.claim(&CLAIM_QUEUED, provider, replica, now_ms, lease_ms, limit)
            .await
    }

    async fn renew_leases(&self, replica: &str, now_ms: i64, lease_ms: i64) -> Result<u64> {
        // Held until the statement is done: a release waits for it (see the module docs).
        let released = self.released.read().await;
        if released.contains(replica) {
            return Ok(0);
        }
        let held: i64 = sqlx::query(&RENEW_LEASES)
            .bind(replica)
            .bind(now_ms)
            .bind(lease_ms)
            .fetch_one(&self.reads)
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        Ok(u64::try_from(held).unwrap_or(0))
    }

    async fn claim_orphans(
        &self,
        provider: &str,
        replica: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        self.claim(&CLAIM_ORPHANS, provider, replica, now_ms, lease_ms, limit)
            .await
    }

    async fn claim_own(
        &self,
        provider: &str,
        replica: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<JobRecord>> {
        // All of them: they stay this replica's, so a second page would return the first.
        self.claim(&CLAIM_OWN, provider, replica, now_ms, lease_ms, usize::MAX)
            .await
    }

    async fn claim_custody(
        &self,
        replica: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<crate::CustodyTask>> {
        custody::claim(&self.reads, replica, now_ms, lease_ms, limit).await
    }

    async fn release_custody(&self, replica: &str, now_ms: i64) -> Result<()> {
        custody::release(&self.reads, replica, now_ms).await
    }


    async fn release_lease(&self, replica: &str, now_ms: i64) -> Result<()> {
        let mut released = self.released.write().await;
        released.insert(replica.to_owned());
        sqlx::query(RELEASE_LEASE)
            .bind(replica)
            .bind(now_ms)
            .bind(RELEASES_CHANNEL)
            .fetch_optional(&self.reads)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn claim_identity(&self, replica: &str) -> Result<bool> {
        let mut identities = self.identities.lock().await;
        if identities.iter().any(|(id, _)| id == replica) {
            return Ok(true);
        }
        if *self.stop.borrow() {
            return Err(StoreError::Closed);
        }
        let mut conn = self.options.connect().await.map_err(db)?;
        // A 64-bit key from the id (`hashtext` has only 32 bits: two ids could collide and
        // one replica would refuse to start), namespaced so that no other lock shares it.
        let held: bool = sqlx::query(
            "SELECT pg_try_advisory_lock(('x' || substr(md5($1), 1, 16))::bit(64)::bigint)",
        )
        .bind(format!("adgate.replica:{replica}"))
        .fetch_one(&mut conn)
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
        if held {
            identities.push((replica.to_owned(), conn));
        } else {
            drop(conn.close().await);
        }
        Ok(held)
    }

    async fn take_budget(
        &self,
        provider: &str,
        limit: u32,
        window_ms: i64,
        now_ms: i64,
        waiter: &str,
    ) -> Result<BudgetGrant> {
        let wait: i64 = sqlx::query("SELECT adgate_take_budget($1, $2, $3, $4, $5)")
            .bind(provider)
            .bind(i64::from(limit))
            .bind(window_ms)
            .bind(now_ms)
            .bind(waiter)
            .fetch_one(&self.budget)
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        Ok(if wait <= 0 {
            BudgetGrant::Granted
        } else {
            BudgetGrant::Wait(wait)
        })
    }

    async fn block_budget(&self, provider: &str, until_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO budget (provider, blocked_until) VALUES ($1, $2) \
             ON CONFLICT (provider) DO UPDATE \
             SET blocked_until = GREATEST(budget.blocked_until, EXCLUDED.blocked_until)",
        )
        .bind(provider)
        .bind(until_ms)
        .execute(&self.budget)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn change_feed(&self) -> Result<Option<mpsc::Receiver<FeedEvent>>> {
        if *self.stop.borrow() || self.reads.is_closed() {
            return Err(StoreError::Closed);
        }
        // Listening before returning: every change committed after this call is delivered.
        let listener = listen(&self.options).await?;
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        tokio::spawn(run_feed(
            listener,
            self.options.clone(),
            tx,
            self.stop.subscribe(),
        ));
        Ok(Some(rx))
    }

    /// Commits every write already queued, stops the writer, the change feeds and the pools.
    /// Writes after this fail with [`StoreError::Closed`], and so do reads.
    async fn close(&self) {
        let mut writers = self.writers.lock().await;
        if writers.is_empty() {
            return;
        }
        // One `Shutdown` closes the shared queue; every writer commits what it took and the
        // rest of the queue, then stops.
        drop(self.writes.send(Command::Shutdown).await);
        for handle in writers.drain(..) {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "store writer task failed");
            }
        }
        self.stop.send_replace(true);
        self.reads.close().await;
        self.budget.close().await;
        // Last: the identity is free only once this process does nothing more as it.
        for (_, conn) in self.identities.lock().await.drain(..) {
            drop(conn.close().await);
        }
    }
});

/// A listener on [`writer::CHANNEL`], on a connection of its own.
async fn listen(options: &PgConnectOptions) -> Result<PgListener> {
    // A one-connection pool per feed: the listener uses it to reconnect.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await.map_err(db)?;
    listener
        .listen_all([writer::CHANNEL, RELEASES_CHANNEL])
        .await
        .map_err(db)?;
    Ok(listener)
}

/// `<job id>:<revision>` (job ids may contain colons; the revision never does), or on
/// [`RELEASES_CHANNEL`] the replica that said goodbye.
fn parse_payload(channel: &str, payload: &str) -> Option<FeedEvent> {
    if channel == RELEASES_CHANNEL {
        return Some(FeedEvent::Released {
            replica: payload.to_owned(),
        });
    }
    let (job_id, revision) = payload.rsplit_once(':')?;
    Some(FeedEvent::Changed {
        job_id: job_id.to_owned(),
        revision: revision.parse().ok()?,
    })
}

/// Forwards notifications until the receiver is dropped or the store is closed.
async fn run_feed(
    listener: PgListener,
    options: PgConnectOptions,
    tx: mpsc::Sender<FeedEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let mut listener = Some(listener);
    // Changes may have been missed since the last event sent: send `Gap` before anything else.
    let mut gap = false;
    let mut backoff = FEED_BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(current) = listener.as_mut() else {
            tokio::select! {
                _ = stop.changed() => return,
                () = tx.closed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match listen(&options).await {
                Ok(l) => {
                    tracing::info!("store: change feed reconnected");
                    listener = Some(l);
                    backoff = FEED_BACKOFF_MIN;
                    gap = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store: change feed cannot reconnect");
                    backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
                }
            }
            continue;
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = tx.closed() => return,
            permit = tx.reserve(), if gap => match permit {
                Ok(permit) => {
                    permit.send(FeedEvent::Gap);
                    gap = false;
                }
                Err(_) => return,
            },
            received = current.try_recv() => match received {
                // While a Gap is pending, events are dropped: the Gap (sent after them)
                // makes every watcher re-read anyway.
                Ok(Some(n)) if !gap => match parse_payload(n.channel(), n.payload()) {
                    Some(event) => match tx.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => gap = true,
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    None => tracing::warn!(payload = n.payload(), "store: odd notification"),
                },
                Ok(Some(_)) => {}
                // The connection was lost and re-established (LISTEN again) inside try_recv.
                Ok(None) => {
                    tracing::warn!("store: change feed reconnected; notifications may be lost");
                    gap = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store: change feed lost its connection");
                    listener = None;
                }
            },
        }
    }
}
