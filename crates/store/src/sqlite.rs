//! The SQLite backend of [`Store`]: the default, single-process job store.
//!
//! # Threads, not a driver's channel
//!
//! SQLite runs on threads this store owns (`conn`, rusqlite): one writer thread, a few read
//! threads and a checkpoint thread, each with its own connection and prepared-statement cache.
//! A caller hands a whole write or a whole read to a thread once and gets its answer once;
//! the statements inside run as plain calls on that thread. (sqlx's SQLite driver, used
//! before, handed every single statement to a per-connection worker thread and back; the
//! choice was measured, see BENCHMARKS.md, "SQLite driver".)
//!
//! # Writes: one writer thread, group commit
//!
//! SQLite allows one writer at a time, and with `synchronous = FULL` every commit is an
//! fsync of the WAL — a millisecond or more on real disks. Letting each caller run its own
//! transaction would serialise them on the database lock *and* pay one fsync each.
//!
//! Instead, one thread (the private `writer` module) owns the only write connection. `submit`,
//! `create_attempt`, `apply` and `record_delivery` send a command over a channel and wait on
//! a oneshot. The thread takes the first command and everything queued behind it (up to 512),
//! runs them all in one transaction, commits once, and only then answers every caller. While
//! one fsync runs, the next group accumulates, so 200 concurrent single-job submits cost a
//! handful of commits, and an acknowledged write is always on disk (SPEC §7). One failing
//! command never takes the others down; the writer module explains how it does that with few
//! statements (submits are coalesced into multi-row INSERTs; SAVEPOINTs only where needed).
//! WAL checkpoints run on a thread of their own (`checkpoint`), not inside a COMMIT.
//!
//! # Reads: a few read threads
//!
//! Reads go to a fixed set of threads, each owning a `query_only` connection (`threads`). In
//! WAL mode readers never block the writer nor each other, and each read sees the last
//! committed state — which includes every write that has been acknowledged. A read never
//! waits behind a write group's fsync.
//!
//! # Schema
//!
//! Embedded, versioned migrations (`migrations/*.sql`) run at [`SqliteStore::open`], inside
//! one transaction, recorded in `schema_migrations`; running them again is a no-op.

mod checkpoint;
mod conn;
mod notify;
#[cfg(test)]
mod plans;
use notify::NotifyWrite;
mod custody;
mod retention;
mod rows;
mod threads;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};

use self::checkpoint::Checkpointer;
use self::conn::{Conn, Location, block_on};
use self::rows::{JOB_COLUMNS, job_from_row, sql_limit};
use self::threads::ReadThreads;
use self::writer::Command;
use crate::exec::{Arg, Exec, args};
use crate::model::JobRecord;
use crate::writer::{Op, Reply};
use crate::{Result, StoreError};

/// Embedded migrations: (version, SQL). Append only; never edit a shipped one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_kept_events.sql")),
    (3, include_str!("../migrations/0003_provider_result.sql")),
    (4, include_str!("../migrations/0004_callers.sql")),
    (5, include_str!("../migrations/0005_search.sql")),
    (6, include_str!("../migrations/0006_notify.sql")),
    (7, include_str!("../migrations/0007_custody.sql")),
    (8, include_str!("../migrations/0008_retention.sql")),
    (9, include_str!("../migrations/0009_lean_indexes.sql")),
];

/// Read connections. WAL readers run in parallel; four cover the engine's concurrent lookups
/// (status calls, watchers' snapshots, pollers) without holding many file handles.
const READ_CONNECTIONS: usize = 4;

/// How long a connection waits for a lock held by another process before failing. Inside this
/// process the writer never competes for the lock, so this only matters for external tools.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Commands that may wait for the writer. Bounded so that a flood of callers queues in the
/// channel (backpressure on `send`) instead of growing memory without limit.
const WRITE_QUEUE: usize = 4096;

/// Largest `IN (…)` list of one `get_jobs` query.
const MAX_IN_PARAMS: usize = 500;

/// `IN` list sizes used by `get_jobs`. A chunk is padded (by repeating its last id) to the
/// next size, so only these few statements exist and each stays in the prepared cache.
const IN_SIZES: [usize; 6] = [1, 4, 16, 64, 256, MAX_IN_PARAMS];

/// The SQLite job store. Cheap to share behind an `Arc`; see the module docs for its design.
pub struct SqliteStore {
    /// Commands to the writer thread. The receiver is closed by `close()`, after which every
    /// send fails and the call returns [`StoreError::Closed`].
    writes: mpsc::Sender<Command>,
    reads: ReadThreads,
    /// Commits done by the writer; shared with it.
    commits: Arc<AtomicU64>,
    /// The writer thread and the WAL checkpoint thread (file databases only), taken by the
    /// first `close()`. An async mutex so that a second, concurrent `close()` waits until the
    /// first has finished flushing.
    writer: Mutex<Option<(WriterThread, Option<Checkpointer>)>>,
}

/// The writer thread: `done` fires when its loop has ended and its connection is closed.
struct WriterThread {
    done: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl WriterThread {
    /// Starts the writer thread: it opens and migrates the write connection, reports that on
    /// `ready`, then runs the writer loop until the channel closes.
    async fn start(
        location: &Location,
        commands: mpsc::Receiver<Command>,
        commits: Arc<AtomicU64>,
    ) -> Result<WriterThread> {
        let (ready_tx, ready) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let location = location.clone();
        let thread = std::thread::Builder::new()
            .name("adgate-sqlite-writer".to_owned())
            .spawn(move || {
                match open_writer(&location) {
                    Ok(conn) => {
                        drop(ready_tx.send(Ok(())));
                        block_on(writer::run(conn, commands, commits));
                    }
                    Err(e) => drop(ready_tx.send(Err(e))),
                }
                // Nobody waits any more if `open` was abandoned.
                let _ = done_tx.send(());
            })
            .map_err(|e| StoreError::Database(Box::new(e)))?;
        let writer = WriterThread { done, thread };
        match ready.await {
            Ok(Ok(())) => Ok(writer),
            Ok(Err(e)) => {
                writer.join().await;
                Err(e)
            }
            Err(_) => {
                writer.join().await;
                Err(StoreError::Closed)
            }
        }
    }

    /// Waits for the thread to end (after its channel closed or it failed to open).
    async fn join(self) {
        // An error means the thread ended without saying so: it panicked, and `join` says so.
        drop(self.done.await);
        threads::join_all("writer", vec![self.thread]).await;
    }
}

/// The write connection: opened with the writer's settings, migrated, and (files) switched to
/// incremental auto-vacuum.
fn open_writer(location: &Location) -> Result<Conn> {
    let mut conn = location.open(BUSY_TIMEOUT)?;
    conn.pragma("synchronous", "FULL")?;
    // The writer is the only connection that changes pages, so its cache stays valid from
    // one transaction to the next; 8 MiB (the default is 2 MiB) keeps the hot index pages in
    // memory. 32 MiB was no faster (Submit of 1 and of 100 jobs per call within 3 %, same
    // run) and held 30 MB more resident once full (BENCHMARKS.md, "writer page cache"); a
    // page it misses is a read from the OS page cache.
    conn.pragma("cache_size", "-8192")?;
    // Statement journals (a multi-row INSERT inside a transaction needs one, so that a
    // constraint failure undoes that statement alone) and SAVEPOINT journals go to memory
    // instead of a temp file: profiles showed their pwrite()s at ~10% of the writer's time.
    // They are scratch space for rolling back inside a transaction and never part of
    // durability (the WAL is).
    conn.pragma("temp_store", "MEMORY")?;
    // An in-memory database has no WAL (SQLite keeps its journal in memory) and nothing to
    // vacuum; only files get these.
    if !location.in_memory() {
        // Before the first table of a new file exists (it must come before journal_mode); a
        // file created without it is switched below (`enable_incremental_vacuum`).
        conn.pragma("auto_vacuum", "INCREMENTAL")?;
        conn.pragma("journal_mode", "WAL")?;
        // Checkpoints run in the background (`checkpoint`); the writer's own auto-checkpoint
        // (which would run inside a COMMIT) is only a backstop.
        conn.pragma("wal_autocheckpoint", checkpoint::WRITER_AUTOCHECKPOINT)?;
    }
    block_on(migrate(&mut conn))?;
    if !location.in_memory() {
        block_on(retention::enable_incremental_vacuum(&mut conn))?;
    }
    Ok(conn)
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::debug_store(f, "SqliteStore", &self.commits)
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` — `sqlite://adgate.db`,
    /// `sqlite:///abs/path.db`, or `sqlite::memory:` — applies the embedded migrations and
    /// starts the writer, read and checkpoint threads. Must be called inside a Tokio runtime.
    ///
    /// Settings: WAL journal (readers never block the writer), `synchronous = FULL` (a commit
    /// is durable when it returns; group commit amortises the fsync), foreign keys on, and a
    /// busy timeout for locks held by other processes.
    pub async fn open(url: &str) -> Result<SqliteStore> {
        if !url.starts_with("sqlite:") {
            return Err(crate::invalid_url("a sqlite:", url));
        }
        let location = Location::parse(url)?;
        let commits = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        // The writer first: it creates and migrates the file before any reader opens it.
        let writer = WriterThread::start(&location, rx, Arc::clone(&commits)).await?;
        let started = Self::start_readers(&location).and_then(|reads| {
            // An in-memory database has no WAL, so nothing to checkpoint.
            let checkpointer = if location.in_memory() {
                None
            } else {
                Some(Checkpointer::start(&location, BUSY_TIMEOUT)?)
            };
            Ok((reads, checkpointer))
        });
        match started {
            Ok((reads, checkpointer)) => Ok(SqliteStore {
                writes: tx,
                reads,
                commits,
                writer: Mutex::new(Some((writer, checkpointer))),
            }),
            Err(e) => {
                drop(tx); // ends the writer loop
                writer.join().await;
                Err(e)
            }
        }
    }

    fn start_readers(location: &Location) -> Result<ReadThreads> {
        let mut conns = Vec::with_capacity(READ_CONNECTIONS);
        for _ in 0..READ_CONNECTIONS {
            let conn = location.open(BUSY_TIMEOUT)?;
            // A write slipping into the read path is an error instead of a second writer
            // that would contend with the writer thread for the lock.
            conn.pragma("query_only", "ON")?;
            conns.push(conn);
        }
        ReadThreads::start(conns)
    }

    /// Runs `read` on a read thread (see `threads`).
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.reads.run(read).await
    }

    /// Sends a command to the writer and waits for its answer (given after the commit).
    async fn write<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        crate::writer::send(&self.writes, make).await
    }

    /// Lends a read connection to `read`, on a read thread (see `store_impl::impl_store!`).
    async fn with_reader<T: Send + 'static>(
        &self,
        read: impl for<'c> FnOnce(&'c mut Conn) -> crate::store_impl::Read<'c, T> + Send + 'static,
    ) -> Result<T> {
        self.read(move |conn| block_on(read(conn))).await
    }

    /// Sends a job write (see `store_impl::impl_store!`).
    async fn write_op<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T> {
        self.write(|reply| Command::Write(make(reply))).await
    }
}

/// Applies the embedded migrations that this database has not seen, in one transaction.
async fn migrate(conn: &mut Conn) -> Result<()> {
    // IMMEDIATE: two processes opening a fresh file at once migrate one after the other.
    conn.execute("BEGIN IMMEDIATE", &[]).await?;
    match migrate_in_transaction(conn).await {
        Ok(()) => conn.execute("COMMIT", &[]).await.map(drop),
        Err(e) => {
            drop(conn.execute("ROLLBACK", &[]).await);
            Err(e)
        }
    }
}

async fn migrate_in_transaction(conn: &mut Conn) -> Result<()> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version INTEGER PRIMARY KEY NOT NULL, applied_at INTEGER NOT NULL)",
        &[],
    )
    .await?;
    crate::migrate::apply_pending(conn, MIGRATIONS).await
}

/// `SELECT … WHERE id IN (?, …)` for each of [`IN_SIZES`].
static GET_JOBS: LazyLock<Vec<String>> = LazyLock::new(|| {
    IN_SIZES
        .iter()
        .map(|&n| {
            let marks = vec!["?"; n].join(", ");
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({marks})")
        })
        .collect()
});

crate::store_impl::impl_store!(SqliteStore {

    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<JobRecord>> {
        // Each id once, so a job asked for twice is returned once, as with a single IN list.
        let mut seen = HashSet::with_capacity(ids.len());
        let unique: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| seen.insert(*id))
            .collect();
        let unique: Vec<String> = unique.into_iter().map(str::to_owned).collect();
        self.read(move |conn| {
            let mut jobs = Vec::with_capacity(unique.len());
            for chunk in unique.chunks(MAX_IN_PARAMS) {
                let level = IN_SIZES
                    .iter()
                    .position(|&n| n >= chunk.len())
                    .unwrap_or(IN_SIZES.len() - 1);
                // Padding repeats the last id; IN ignores duplicates.
                let last = chunk.last().map(String::as_str).unwrap_or_default();
                let args: Vec<Arg<'_>> = chunk
                    .iter()
                    .map(String::as_str)
                    .chain(std::iter::repeat_n(last, IN_SIZES[level] - chunk.len()))
                    .map(Arg::Text)
                    .collect();
                jobs.extend(block_on(conn.rows(&GET_JOBS[level], &args, job_from_row))?);
            }
            Ok(jobs)
        })
        .await
    }



















    async fn set_notify_endpoints(&self, endpoints: Vec<crate::NotifyEndpoint>) -> Result<()> {
        self.write(|reply| Command::Notify(NotifyWrite::SetEndpoints { endpoints, reply }))
            .await
    }

    async fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<crate::OutboxEntry>> {
        // The deliverer asks twice a second: an idle outbox is answered by a reader, without
        // a transaction on the writer that every Submit shares.
        let due = self
            .read(move |conn| {
                block_on(conn.optional(
                    "SELECT 1 FROM notify_outbox WHERE state = 0 AND next_at <= ? LIMIT 1",
                    &args![now_ms],
                    |_| Ok(()),
                ))
            })
            .await?;
        if due.is_none() || limit == 0 {
            return Ok(Vec::new());
        }
        self.write(|reply| {
            Command::Notify(NotifyWrite::Claim {
                now_ms,
                lease_ms,
                limit,
                reply,
            })
        })
        .await
    }

    async fn purge(&self, cutoffs: crate::PurgeCutoffs, limit: usize) -> Result<crate::Purged> {
        self.write(|reply| Command::Purge {
            cutoffs,
            limit,
            reply,
        })
        .await
    }

    async fn settle_notifications(
        &self,
        settles: Vec<crate::NotifySettle>,
        now_ms: i64,
    ) -> Result<()> {
        if settles.is_empty() {
            return Ok(());
        }
        self.write(|reply| {
            Command::Notify(NotifyWrite::Settle {
                settles,
                now_ms,
                reply,
            })
        })
        .await
    }

    async fn disable_endpoint(&self, endpoint: &str, reason: &str, now_ms: i64) -> Result<u64> {
        let (endpoint, reason) = (endpoint.to_owned(), reason.to_owned());
        self.write(|reply| {
            Command::Notify(NotifyWrite::Disable {
                endpoint,
                reason,
                now_ms,
                reply,
            })
        })
        .await
    }

    async fn disabled_endpoints(&self) -> Result<Vec<(String, String)>> {
        self.read(|conn| {
            block_on(conn.rows(
                "SELECT endpoint, reason FROM notify_disabled ORDER BY endpoint",
                &[],
                |row| Ok((row.text(0)?, row.text(1)?)),
            ))
        })
        .await
    }

    async fn redeliver_batch(&self, batch_id: &str, now_ms: i64) -> Result<Option<u64>> {
        let batch_id = batch_id.to_owned();
        self.write(|reply| {
            Command::Notify(NotifyWrite::Redeliver {
                batch_id,
                now_ms,
                reply,
            })
        })
        .await
    }

    async fn claim_custody(
        &self,
        replica: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<crate::CustodyTask>> {
        // The worker asks every second: an idle queue is answered by a reader, without a
        // transaction on the writer.
        let due = self
            .read(move |conn| {
                block_on(conn.optional(
                    "SELECT 1 FROM custody_queue WHERE next_at <= ? LIMIT 1",
                    &args![now_ms],
                    |_| Ok(()),
                ))
            })
            .await?;
        if due.is_none() || limit == 0 {
            return Ok(Vec::new());
        }
        self.write(|reply| {
            Command::Custody(custody::CustodyOp::Claim {
                replica: replica.to_owned(),
                now_ms,
                lease_ms,
                limit: sql_limit(limit),
                reply,
            })
        })
        .await
    }

    async fn release_custody(&self, _replica: &str, now_ms: i64) -> Result<()> {
        self.write(|reply| Command::Custody(custody::CustodyOp::Release { now_ms, reply }))
            .await
    }


    async fn reclaim_space(&self, pages: u32) -> Result<u64> {
        self.write(|reply| Command::Reclaim { pages, reply }).await
    }

    fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Commits every write already queued, stops the writer and closes the connections.
    /// Writes after this fail with [`StoreError::Closed`], and so do reads (the pool is closed).
    async fn close(&self) {
        let mut writer = self.writer.lock().await;
        let Some((thread, checkpointer)) = writer.take() else {
            return; // closed already (a concurrent close waited on the lock above)
        };
        // Stop checkpointing first: the last connection to close checkpoints the WAL itself.
        if let Some(checkpointer) = checkpointer {
            checkpointer.stop().await;
        }
        // Queued behind every command sent before it; the writer closes its receiver on it.
        // Failure means the writer is gone already, which is what we want.
        drop(self.writes.send(Command::Shutdown).await);
        thread.join().await;
        self.reads.close().await;
    }
});
