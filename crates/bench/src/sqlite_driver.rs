//! Issue 16's SQLite driver measurement (`sqlite-driver`, not part of `all`): which library
//! should drive the store's SQLite backend. It does not use adgate's store, so it isolates the
//! driver: a temp SQLite file (WAL, `synchronous=FULL`) with a table shaped like adgate's
//! SQLite `jobs` table, written and read by 64 tasks on this 2-worker runtime.
//!
//! - **Writes**: each task inserts one job-sized row and waits for its commit, in a closed loop.
//!   One writer owns the only write connection and commits groups (up to 512 waiting rows per
//!   transaction): (a) sqlx, a tokio task owning a `SqliteConnection` as the store does today;
//!   (b) rusqlite on a dedicated `std::thread` with `prepare_cached` statements. Each with one
//!   `INSERT` per row, then with multi-row `INSERT`s.
//! - **Reads**: one row by random id, then 100 ids per query (`json_each`): (a) an sqlx pool of
//!   4 connections (tasks sharing one queue, like the store's reads); (b) 2 rusqlite threads, each owning a connection.
//!
//! Both link the same bundled SQLite (`libsqlite3-sys` 0.30), so the difference is the driver.

mod rusqlite_side;
mod sqlx_side;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::Res;
use crate::load::{Stats, closed_loop_fn};
use crate::report::Verdict;
use crate::scenarios::{CALLERS, Ctx, MEASURE, WARMUP, fastrand_index};
use crate::world;

/// Rows a writer takes from its queue per transaction (as adgate's SQLite writer).
pub(crate) const GROUP: usize = 512;
/// Rows per multi-row `INSERT`: a group is split greedily into these sizes, so each connection
/// caches a handful of statements instead of one per group size.
pub(crate) const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];
/// Rows stored before the read measurements.
const READ_ROWS: usize = 100_000;
/// Ids per query in the second read measurement (BatchStatus's 100).
const READ_MANY: usize = 100;

/// adgate's SQLite `jobs` table after every migration (`crates/store/migrations/0001`–`0008`):
/// its columns, primary key and four of its secondary indexes (the ones every Submit updates
/// that matter most: batch order, the dispatcher's queue, and two of the search indexes).
const SCHEMA: &str = "
CREATE TABLE jobs (
    id                      TEXT    PRIMARY KEY NOT NULL,
    batch_id                TEXT    NOT NULL,
    seq                     INTEGER NOT NULL,
    provider                TEXT    NOT NULL,
    spec                    TEXT    NOT NULL,
    state                   INTEGER NOT NULL,
    provider_ref            TEXT,
    poll_key                TEXT,
    group_key               TEXT,
    correlation_key         TEXT,
    attempt_id              INTEGER,
    attempt_seq             INTEGER,
    progress                TEXT,
    outputs                 TEXT    NOT NULL DEFAULT '[]',
    error                   TEXT,
    client_ref              TEXT    NOT NULL,
    labels                  TEXT    NOT NULL,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    completed_at            INTEGER,
    deadline_at             INTEGER NOT NULL,
    revision                INTEGER NOT NULL,
    provider_result         TEXT,
    caller                  TEXT    NOT NULL DEFAULT 'anonymous',
    priority                INTEGER NOT NULL DEFAULT 2,
    cost_unit               TEXT,
    cost_micros             INTEGER,
    cost_per_output_micros  INTEGER,
    traceparent             TEXT
);
CREATE UNIQUE INDEX jobs_batch_seq ON jobs (batch_id, seq);
CREATE INDEX jobs_queue ON jobs (provider, state, attempt_id, caller, priority, created_at);
CREATE INDEX jobs_created ON jobs (created_at, id);
CREATE INDEX jobs_state_created ON jobs (state, created_at, id);
";

/// The columns a Submit writes.
pub(crate) const INSERT_COLUMNS: &str = "id, batch_id, seq, provider, spec, state, outputs, \
     client_ref, labels, created_at, updated_at, deadline_at, revision, caller, priority";
pub(crate) const INSERT_PARAMS: usize = 15;
/// The columns read back (a job record's, minus the cost and trace fields).
pub(crate) const SELECT_COLUMNS: &str = "id, batch_id, seq, provider, spec, state, provider_ref, \
     poll_key, progress, outputs, error, client_ref, labels, created_at, updated_at, \
     completed_at, deadline_at, revision, caller, priority";

/// `INSERT INTO jobs (…) VALUES (?, …), (?, …)` for `rows` rows.
pub(crate) fn insert_sql(rows: usize) -> String {
    let one = format!("({})", vec!["?"; INSERT_PARAMS].join(", "));
    format!(
        "INSERT INTO jobs ({INSERT_COLUMNS}) VALUES {}",
        vec![one; rows].join(", ")
    )
}

pub(crate) fn select_one_sql() -> String {
    format!("SELECT {SELECT_COLUMNS} FROM jobs WHERE id = ?")
}

pub(crate) fn select_many_sql() -> String {
    format!("SELECT {SELECT_COLUMNS} FROM jobs WHERE id IN (SELECT value FROM json_each(?))")
}

/// Splits `n` rows into `CHUNKS` sizes, largest first.
pub(crate) fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for size in CHUNKS {
        while n >= size {
            out.push(size);
            n -= size;
        }
    }
    out
}

/// One job as a Submit stores it.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    pub id: String,
    pub batch_id: String,
    pub spec: String,
    pub client_ref: String,
    pub now: i64,
}

impl JobRow {
    /// Row `n` of a run: random-looking ids (like adgate's), a spec of the size the bench's
    /// Submit sends.
    fn new(n: u64, spec: &str) -> Self {
        let h = splitmix(n);
        let now = 1_764_900_000_000 + (n / 1000) as i64;
        Self {
            id: format!("job_{h:016x}{:08x}", n as u32),
            batch_id: format!("bat_{:016x}", splitmix(h)),
            spec: spec.to_owned(),
            client_ref: format!("bench-{n}"),
            now,
        }
    }
}

/// A bijection on u64 (distinct inputs give distinct ids) that scatters them like random ids.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Commits and rows a writer made, for the mean group size: with a closed loop of 64 callers
/// the group size (rows per fsync) decides the throughput as much as the cost per row does.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    pub commits: AtomicU64,
    pub rows: AtomicU64,
}

impl Groups {
    pub(crate) fn add(&self, rows: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    fn mean(&self) -> f64 {
        let commits = self.commits.load(Ordering::Relaxed);
        self.rows.load(Ordering::Relaxed) as f64 / commits.max(1) as f64
    }
}

/// One row to insert; the writer answers once its transaction committed (or failed).
pub(crate) struct Write {
    pub row: JobRow,
    pub done: oneshot::Sender<bool>,
}

/// A read of one id or of a JSON array of ids; the answer is the number of rows decoded.
pub(crate) enum ReadIds {
    One(String),
    Many(String),
}

pub(crate) struct Read {
    pub ids: ReadIds,
    pub done: oneshot::Sender<Option<usize>>,
}

/// A job row as read back (every column decoded, as the store's row decoder does).
#[allow(dead_code)] // Decoded to pay for it, never looked at.
#[derive(Debug)]
pub(crate) struct ReadRow {
    pub id: String,
    pub batch_id: String,
    pub seq: i64,
    pub provider: String,
    pub spec: String,
    pub state: i64,
    pub provider_ref: Option<String>,
    pub poll_key: Option<String>,
    pub progress: Option<String>,
    pub outputs: String,
    pub error: Option<String>,
    pub client_ref: String,
    pub labels: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub deadline_at: i64,
    pub revision: i64,
    pub caller: String,
    pub priority: i64,
}

/// A fresh database file with the schema.
fn create_db(path: &Path) -> Res<()> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lib {
    Sqlx,
    Rusqlite,
}

/// Writes: 64 tasks, each inserting one row and awaiting its commit.
async fn writes(lib: Lib, multi: bool) -> Res<(Stats, f64)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("jobs.db");
    create_db(&path)?;
    let spec: Arc<str> = world::sal_spec_json(1).into();
    let (tx, rx) = mpsc::channel::<Write>(4 * GROUP);
    let groups = Arc::new(Groups::default());
    let g = groups.clone();
    let writer = match lib {
        Lib::Sqlx => {
            let conn = sqlx_side::open(&path).await?;
            Writer::Task(tokio::spawn(sqlx_side::writer(conn, rx, multi, g)))
        }
        Lib::Rusqlite => {
            let conn = rusqlite_side::open(&path)?;
            Writer::Thread(
                std::thread::Builder::new()
                    .name("bench-sqlite-writer".into())
                    .spawn(move || rusqlite_side::writer(conn, rx, multi, &g))?,
            )
        }
    };
    let next = Arc::new(AtomicU64::new(0));
    let stats = closed_loop_fn(CALLERS, WARMUP, MEASURE, move |_, _| {
        let row = JobRow::new(next.fetch_add(1, Ordering::Relaxed), &spec);
        let tx = tx.clone();
        async move {
            let (done, answer) = oneshot::channel();
            if tx.send(Write { row, done }).await.is_err() {
                return false;
            }
            answer.await.unwrap_or(false)
        }
    })
    .await;
    // The loop's closure (and with it the last sender) is gone: the writer drains and ends.
    writer.join().await;
    Ok((stats, groups.mean()))
}

enum Writer {
    Task(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

impl Writer {
    async fn join(self) {
        match self {
            Self::Task(t) => {
                let _ = t.await;
            }
            Self::Thread(t) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
    }
}

/// Reads: a stored table of `READ_ROWS` rows, then 64 tasks reading one id (or `READ_MANY`).
async fn reads(path: &Path, ids: &Arc<Vec<String>>, lib: Lib, many: bool) -> Res<Stats> {
    let (tx, rx) = mpsc::channel::<Read>(4 * CALLERS);
    let readers = match lib {
        Lib::Sqlx => sqlx_side::readers(path, rx).await?,
        Lib::Rusqlite => rusqlite_side::readers(path, rx)?,
    };
    let ids = ids.clone();
    let expected = if many { READ_MANY } else { 1 };
    let stats = closed_loop_fn(CALLERS, WARMUP, MEASURE, move |_, _| {
        let n = ids.len();
        let read = if many {
            let pick: Vec<&str> = (0..READ_MANY)
                .map(|_| ids[fastrand_index(n)].as_str())
                .collect();
            ReadIds::Many(serde_json::to_string(&pick).unwrap_or_default())
        } else {
            ReadIds::One(ids[fastrand_index(n)].clone())
        };
        let tx = tx.clone();
        async move {
            let (done, answer) = oneshot::channel();
            if tx.send(Read { ids: read, done }).await.is_err() {
                return false;
            }
            // Random picks may repeat an id; `IN` returns it once.
            matches!(answer.await, Ok(Some(got)) if got >= expected.min(1) && got <= expected)
        }
    })
    .await;
    readers.join().await;
    Ok(stats)
}

pub(crate) enum Readers {
    Tasks(Vec<tokio::task::JoinHandle<()>>),
    Threads(Vec<std::thread::JoinHandle<()>>),
}

impl Readers {
    async fn join(self) {
        match self {
            Self::Tasks(ts) => {
                for t in ts {
                    let _ = t.await;
                }
            }
            Self::Threads(ts) => {
                let _ = tokio::task::spawn_blocking(move || {
                    for t in ts {
                        let _ = t.join();
                    }
                })
                .await;
            }
        }
    }
}

fn value(s: &Stats, unit: &str, vs: Option<f64>) -> String {
    let ratio = vs.map_or(String::from("1.00 x sqlx"), |base| {
        format!(
            "{:.2} x sqlx",
            if base > 0.0 { s.rps() / base } else { 0.0 }
        )
    });
    format!(
        "{:.0} {unit} = {ratio}; p50 {:.2} ms, p99 {:.2} ms; {} errors",
        s.rps(),
        s.p_ms(0.5),
        s.p_ms(0.99),
        s.errors
    )
}

pub async fn sqlite_driver(ctx: &mut Ctx) -> Res<()> {
    let spec_len = world::sal_spec_json(1).len();
    for (multi, how) in [(false, "one INSERT per row"), (true, "multi-row INSERTs")] {
        let (a, a_group) = writes(Lib::Sqlx, multi).await?;
        let (b, b_group) = writes(Lib::Rusqlite, multi).await?;
        ctx.report.row(
            "sqlite-driver",
            &format!("writes, 64 tasks, group commit, {how}: sqlx writer task"),
            format!(
                "{}; {a_group:.1} rows per commit",
                value(&a, "rows/s", None)
            ),
            "-",
            Verdict::Info,
        );
        ctx.report.row(
            "sqlite-driver",
            &format!("writes, 64 tasks, group commit, {how}: rusqlite thread"),
            format!(
                "{}; {b_group:.1} rows per commit",
                value(&b, "rows/s", Some(a.rps()))
            ),
            "-",
            Verdict::Info,
        );
    }
    // One stored table for every read measurement.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("jobs.db");
    create_db(&path)?;
    let rows: Vec<JobRow> = (0..READ_ROWS as u64)
        .map(|n| JobRow::new(n, &world::sal_spec_json(n)))
        .collect();
    rusqlite_side::fill(&path, &rows)?;
    // An open write connection during the reads, as in the store: the WAL and its index stay
    // in place, so the read-only connections never have to create them.
    let _writer = rusqlite_side::open(&path)?;
    let ids = Arc::new(rows.into_iter().map(|r| r.id).collect::<Vec<_>>());
    for (many, how) in [(false, "1 id"), (true, "100 ids (json_each)")] {
        let a = reads(&path, &ids, Lib::Sqlx, many).await?;
        let b = reads(&path, &ids, Lib::Rusqlite, many).await?;
        ctx.report.row(
            "sqlite-driver",
            &format!("reads of {how}, 64 tasks: sqlx pool of 4"),
            value(&a, "calls/s", None),
            "-",
            Verdict::Info,
        );
        ctx.report.row(
            "sqlite-driver",
            &format!("reads of {how}, 64 tasks: rusqlite, 2 threads"),
            value(&b, "calls/s", Some(a.rps())),
            "-",
            Verdict::Info,
        );
    }
    ctx.report.info(
        "sqlite-driver",
        "setup",
        format!(
            "WAL, synchronous=FULL, jobs table + PK + 4 indexes, {spec_len}-byte spec; groups <= {GROUP} rows; reads over {READ_ROWS} rows; 2 s warm-up + 10 s each"
        ),
    );
    Ok(())
}
