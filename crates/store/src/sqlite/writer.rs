//! The writer thread's loop: the only code that writes to the database.
//!
//! It owns one connection. Callers send [`Command`]s over a bounded channel, each carrying a
//! oneshot for its answer. The thread takes everything that is queued (up to [`MAX_GROUP`]),
//! runs it inside one `BEGIN IMMEDIATE … COMMIT`, and answers every caller only after the
//! commit returned, so an answer always means "on disk" (synchronous = FULL).
//!
//! # Cost model
//!
//! The writer runs on a thread of its own (see `conn`), so a statement is a call into SQLite
//! with a cached prepared statement, not a hand-off to another thread. What is left to save
//! is SQLite's per-statement work (each statement walks its indexes and, inside a
//! transaction, opens a statement journal), so the writer still minimises *statements*:
//!
//! - All submissions of a group are coalesced ([`submit_coalesced`]): one lookup of their
//!   request ids, then multi-row INSERTs into `batches`, `request_ids` and `jobs` for all of
//!   them together — about five statements for a group of 64 single-job submits, where one
//!   SAVEPOINT per op cost six each.
//! - If a coalesced statement fails (a duplicate batch or job id), the transaction is rolled
//!   back — only the submits had run — and redone op by op, each submit in its own
//!   `SAVEPOINT`, so the faulty one fails alone and the others still commit.
//! - `create_attempt` and `apply` (several statements each) keep a SAVEPOINT, so a failing
//!   one rolls back alone; `record_delivery` is one statement that cannot fail for data
//!   reasons and needs none.
//!
//! Application outcomes such as a request-id conflict are not errors at all and write nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use adgate_generator::JobState;
use tokio::sync::mpsc;

use super::conn::Conn;
use super::rows::{JOB_COLUMNS, job_from_row, to_json};
use crate::exec::{Arg, Exec, args};
use crate::model::{EventWrite, JobPatch, JobRecord, NewSubmission, StoredCost, SubmitOutcome};
use crate::retention::{PurgeCutoffs, Purged};
use crate::writer::{GroupFailure, Op, Pending, Replies, Reply, group_failure, pending};
use crate::{Result, StoreError};

/// Most commands committed in one transaction. Bounds the latency of the first caller in a
/// group and the work lost to a rollback; 512 single-job submits commit in a few milliseconds.
pub(super) const MAX_GROUP: usize = 512;

/// Most rows in one multi-row INSERT. 256 rows × 12 parameters (jobs) = 3,072, far below
/// SQLite's limit of 32,766; inserting in power-of-two chunks keeps the set of distinct
/// statements per table (and so the connection's prepared-statement cache) to nine.
const MAX_INSERT_ROWS: usize = 256;

/// One write, with the reply its answer goes back on (see [`crate::writer`]).
pub(super) enum Command {
    /// A job write (the same on both backends).
    Write(Op),
    /// A write of the outbound-webhook deliverer.
    Notify(super::notify::NotifyWrite),
    /// Output custody's queue (claims, releases, results).
    Custody(super::custody::CustodyOp),
    /// One retention step (see `Store::purge` and the `retention` module).
    Purge {
        cutoffs: PurgeCutoffs,
        limit: usize,
        reply: Reply<Purged>,
    },
    /// One incremental-vacuum step (see `Store::reclaim_space`).
    Reclaim { pages: u32, reply: Reply<u64> },
    /// Sent by `close()`: stop accepting commands, commit what is queued, exit.
    Shutdown,
}

crate::writer::replies!(Command { Purge, Reclaim }
    Command::Write(op) => op.reply(),
    Command::Notify(write) => write.reply(),
    Command::Custody(op) => op.reply(),
    Command::Shutdown => Box::new(Nothing),
);

/// The writer loop, driven by the writer thread (`conn::block_on`). Returns when every sender
/// is gone or after a `Shutdown` once the queue is drained; closes the connection on the way
/// out so the WAL is checkpointed.
pub(super) async fn run(mut conn: Conn, mut rx: mpsc::Receiver<Command>, commits: Arc<AtomicU64>) {
    let mut queued: Vec<Command> = Vec::with_capacity(MAX_GROUP);
    // `recv_many` waits for the first command and then takes whatever else is already queued
    // without waiting: this is the group. Under no load a group is one command and commits at
    // once; under load, commands pile up while the previous fsync runs and share the next one.
    while rx.recv_many(&mut queued, MAX_GROUP).await > 0 {
        let mut group = Vec::with_capacity(queued.len());
        for command in queued.drain(..) {
            match command {
                // Closing the receiver makes every later send fail (→ `StoreError::Closed`)
                // while keeping what was sent before, which the loop still commits; once that
                // is drained `recv_many` returns 0 and the loop ends.
                Command::Shutdown => rx.close(),
                other => group.push(other),
            }
        }
        if !group.is_empty() {
            commit_group(&mut conn, group, &commits).await;
        }
    }
    if let Err(e) = conn.close() {
        tracing::warn!(error = %e, "closing the store's write connection failed");
    }
}

async fn exec(conn: &mut Conn, sql: &'static str) -> Result<()> {
    conn.execute(sql, &[]).await.map(drop)
}

/// Runs one group in one transaction and answers its callers after the commit.
///
/// Order inside the group: every `Submit` first (coalesced, see [`submit_coalesced`]), then
/// the other commands in arrival order. Reordering is safe because no command of a group can
/// depend on another command of the same group: a caller learns ids and outcomes only from
/// an answer, and answers are sent after the COMMIT. Submits keep their arrival order among
/// themselves, which is what request-id dedupe needs (the first one claims the id).
async fn commit_group(conn: &mut Conn, group: Vec<Command>, commits: &AtomicU64) {
    let size = group.len();
    let mut answers: Vec<Box<dyn Pending>> = Vec::with_capacity(size);
    let mut submits: Vec<(PreparedSubmit, SubmitReply)> = Vec::new();
    let mut others: Vec<Command> = Vec::new();
    for command in group {
        match command {
            // Encoding happens before anything is written, so a submission that cannot be
            // encoded fails alone and never claims its request id.
            Command::Write(Op::Submit { submission, reply }) => {
                match PreparedSubmit::new(submission) {
                    Ok(prepared) => submits.push((prepared, reply)),
                    Err(e) => answers.push(pending(reply, Err(e)).0),
                }
            }
            Command::Shutdown => {} // filtered out by `run`
            other => others.push(other),
        }
    }

    // IMMEDIATE takes the write lock up front: with one writer in the process it never waits,
    // and if another process holds the file it waits (busy_timeout) here rather than failing
    // halfway through the group. Holding it also makes the request-id lookup in
    // `submit_coalesced` a safe read-then-write: nobody else can write until COMMIT.
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
        tracing::error!(error = %e, size, "store: cannot begin a write transaction");
        abort_group(group_failure(e), answers, submits, others);
        return;
    }

    if !submits.is_empty() {
        match submit_coalesced(conn, &submits).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in submits.drain(..).zip(outcomes) {
                    answers.push(pending(reply, Ok(outcome)).0);
                }
            }
            Err(e) => {
                // One of the coalesced statements failed (a duplicate batch or job id, say).
                // Nothing but the submits has run in this transaction yet, so rolling it all
                // back loses nothing; then redo the submits one by one, each in a SAVEPOINT,
                // so that only the faulty one fails — the old, slower path, taken only on
                // errors. ROLLBACK may fail if SQLite already ended the transaction itself
                // (I/O errors do); BEGIN tells whether we can go on.
                tracing::debug!(error = ?e, "store: coalesced submit failed, redoing op by op");
                drop(exec(conn, "ROLLBACK").await);
                if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
                    tracing::error!(error = %e, size, "store: cannot begin a write transaction");
                    abort_group(group_failure(e), answers, submits, others);
                    return;
                }
                let mut rest = submits.drain(..);
                while let Some((prepared, reply)) = rest.next() {
                    match in_savepoint_begin(conn).await {
                        Ok(()) => {}
                        Err(e) => {
                            let rest: Vec<_> =
                                std::iter::once((prepared, reply)).chain(rest).collect();
                            broken_group(conn, e, size, answers, rest, others).await;
                            return;
                        }
                    }
                    let result = submit(conn, &prepared).await;
                    let end = in_savepoint_end(conn, result.is_ok()).await;
                    answers.push(pending(reply, result).0);
                    if let Err(e) = end {
                        let rest: Vec<_> = rest.collect();
                        broken_group(conn, e, size, answers, rest, others).await;
                        return;
                    }
                }
            }
        }
    }

    let mut commands = others.into_iter();
    while let Some(command) = commands.next() {
        match run_command(conn, command).await {
            Ok(answer) => answers.push(answer),
            Err((broken, e)) => {
                answers.push(broken);
                broken_group(conn, e, size, answers, Vec::new(), commands.collect()).await;
                return;
            }
        }
    }

    match exec(conn, "COMMIT").await {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(size, "store: group committed");
            answers.into_iter().for_each(|a| a.finish(None));
        }
        Err(e) => {
            tracing::error!(error = %e, size, "store: commit failed");
            let e = group_failure(e);
            // A failed COMMIT can leave the transaction open (e.g. SQLITE_BUSY); end it.
            if let Err(re) = exec(conn, "ROLLBACK").await {
                tracing::debug!(error = %re, "store: rollback after failed commit");
            }
            answers.into_iter().for_each(|a| a.finish(Some(&e)));
        }
    }
}

type SubmitReply = Reply<SubmitOutcome>;

/// The transaction is in an unknown state (a savepoint statement, or a statement that cannot
/// fail for data reasons, failed): roll it all back and fail the whole group rather than
/// commit half of something.
async fn broken_group(
    conn: &mut Conn,
    e: StoreError,
    size: usize,
    answers: Vec<Box<dyn Pending>>,
    submits: Vec<(PreparedSubmit, SubmitReply)>,
    others: Vec<Command>,
) {
    tracing::error!(error = ?e, size, "store: write transaction broken, rolling back");
    if let Err(re) = exec(conn, "ROLLBACK").await {
        tracing::warn!(error = %re, "store: rollback failed");
    }
    abort_group(group_failure(e), answers, submits, others);
}

/// Fails every caller of a group that will not commit.
fn abort_group(
    e: GroupFailure,
    answers: Vec<Box<dyn Pending>>,
    submits: Vec<(PreparedSubmit, SubmitReply)>,
    others: Vec<Command>,
) {
    answers.into_iter().for_each(|a| a.finish(Some(&e)));
    for (_, reply) in submits {
        Box::new(reply).finish(Some(&e));
    }
    others.into_iter().for_each(|c| c.fail(&e));
}

async fn in_savepoint_begin(conn: &mut Conn) -> Result<()> {
    exec(conn, "SAVEPOINT op").await
}

/// Releases the savepoint, first undoing the command's partial writes when it failed.
async fn in_savepoint_end(conn: &mut Conn, ok: bool) -> Result<()> {
    if !ok {
        exec(conn, "ROLLBACK TO op").await?;
    }
    exec(conn, "RELEASE op").await
}

/// Runs a command's body in a savepoint of its own, so that a failure undoes this command
/// alone. `$unrun` is its reply when the savepoint cannot begin (the group is then broken);
/// `$run` runs it and gives `(reply, ok)`. Evaluates to `run_command`'s result.
macro_rules! in_savepoint {
    ($conn:ident, $unrun:expr, $run:expr) => {
        match in_savepoint_begin($conn).await {
            Err(e) => Err(($unrun, e)),
            Ok(()) => {
                let (answer, ok) = $run;
                match in_savepoint_end($conn, ok).await {
                    Ok(()) => Ok(answer),
                    Err(e) => Err((answer, e)),
                }
            }
        }
    };
}

/// Runs one non-submit command. `Err` only when the transaction is broken (a savepoint
/// statement failed, or `record_delivery`, which has no savepoint, failed).
async fn run_command(
    conn: &mut Conn,
    command: Command,
) -> std::result::Result<Box<dyn Pending>, (Box<dyn Pending>, StoreError)> {
    match command {
        // A bare delivery id: one statement, `ON CONFLICT DO NOTHING`: it cannot fail for data
        // reasons and a statement is atomic on its own, so it needs no SAVEPOINT (two fewer
        // statements and no subjournal). Whatever does make it fail
        // (I/O, disk full) may have ended the transaction, so that failure breaks the group.
        Command::Write(Op::RecordDelivery {
            provider,
            write:
                EventWrite {
                    delivery_id: Some(delivery_id),
                    patches,
                    keep,
                    consumed,
                },
            now_ms,
            reply,
        }) if patches.is_empty() && keep.is_empty() && consumed.is_empty() => {
            match crate::writer::record_delivery(conn, &provider, &delivery_id, now_ms).await {
                Ok(new) => Ok(pending(reply, Ok(new.then(Vec::new))).0),
                Err(e) => Err((Box::new(reply), e)),
            }
        }
        // Otherwise the id, the changes, the kept and the consumed events in one savepoint,
        // so all or none stay.
        Command::Write(Op::RecordDelivery {
            provider,
            write,
            now_ms,
            reply,
        }) => in_savepoint!(
            conn,
            Box::new(reply),
            pending(reply, event_write(conn, &provider, write, now_ms).await)
        ),
        // Several statements each: a SAVEPOINT makes a failure undo this command alone.
        Command::Write(Op::CreateAttempt {
            provider,
            idempotency_key,
            job_ids,
            now_ms,
            reply,
        }) => in_savepoint!(
            conn,
            Box::new(reply),
            pending(
                reply,
                create_attempt(conn, &provider, &idempotency_key, &job_ids, now_ms).await
            )
        ),
        Command::Write(Op::Apply {
            patches,
            now_ms,
            reply,
        }) => in_savepoint!(
            conn,
            Box::new(reply),
            pending(reply, apply(conn, patches, now_ms).await)
        ),
        Command::Write(Op::FinishCustody {
            write,
            now_ms,
            reply,
        }) => in_savepoint!(
            conn,
            Box::new(reply),
            pending(
                reply,
                super::custody::finish(conn, write, now_ms)
                    .await
                    .map(|job| job.map(Box::new))
            )
        ),
        Command::Notify(write) => in_savepoint!(conn, write.reply(), write.run(conn).await),
        Command::Custody(op) => {
            in_savepoint!(conn, op.reply(), super::custody::run(conn, op).await)
        }
        Command::Purge {
            cutoffs,
            limit,
            reply,
        } => in_savepoint!(
            conn,
            Box::new(reply),
            pending(reply, super::retention::purge(conn, cutoffs, limit).await)
        ),
        Command::Reclaim { pages, reply } => in_savepoint!(
            conn,
            Box::new(reply),
            pending(reply, super::retention::reclaim(conn, pages).await)
        ),
        Command::Write(Op::Submit { .. }) | Command::Shutdown => Ok(Box::new(Nothing)),
    }
}

/// The answer of a command that has none (`Shutdown`, which `run` filters out earlier).
struct Nothing;

impl Pending for Nothing {
    fn finish(self: Box<Self>, _failure: Option<&GroupFailure>) {}
    fn refuse(self: Box<Self>, _e: StoreError) {}
    fn hold_error(&mut self, _e: StoreError) {}
}

/// `{head} VALUES {row}, {row}, …` for 1, 2, 4, … [`MAX_INSERT_ROWS`] rows, indexed by log2.
fn multi_row_inserts(head: &str, row: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut rows = 1;
    while rows <= MAX_INSERT_ROWS {
        let values = vec![row; rows].join(", ");
        statements.push(format!("{head} VALUES {values}"));
        rows *= 2;
    }
    statements
}

static JOB_INSERTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    multi_row_inserts(
        "INSERT INTO jobs (id, batch_id, seq, provider, spec, state, group_key, \
         correlation_key, outputs, client_ref, labels, created_at, updated_at, deadline_at, \
         revision, caller, priority, cost_unit, cost_micros, cost_per_output_micros, \
         traceparent)",
        &format!(
            "(?, ?, ?, ?, ?, {queued}, ?, ?, '[]', ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            queued = JobState::Queued.as_i64()
        ),
    )
});

static BATCH_INSERTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    multi_row_inserts(
        "INSERT INTO batches (id, created_at, job_count, caller)",
        "(?, ?, ?, ?)",
    )
});

/// No `ON CONFLICT`: the coalesced path has checked that these ids are new (under the write
/// lock), so a conflict here is a bug to surface, and it sends the group to the op-by-op path.
static REQUEST_ID_INSERTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    multi_row_inserts(
        "INSERT INTO request_ids (request_id, content_hash, batch_id, created_at)",
        "(?, ?, ?, ?)",
    )
});

/// `SELECT … FROM request_ids WHERE request_id IN (?, …)` for each of [`LOOKUP_SIZES`].
static REQUEST_ID_LOOKUPS: LazyLock<Vec<String>> = LazyLock::new(|| {
    LOOKUP_SIZES
        .iter()
        .map(|&n| {
            let marks = vec!["?"; n].join(", ");
            format!(
                "SELECT request_id, content_hash, batch_id FROM request_ids \
                 WHERE request_id IN ({marks})"
            )
        })
        .collect()
});

/// `IN` list sizes of the request-id lookup; a chunk is padded to the next size (by repeating
/// its last id) so that only these few statements exist in the prepared cache.
const LOOKUP_SIZES: [usize; 5] = [1, 4, 16, 64, 256];

/// Inserts `rows` with as few statements as possible: chunks of the largest power of two
/// that fits (600 rows → 256 + 256 + 64 + 16 + 8), each one multi-row INSERT.
async fn insert_rows<'q, T>(
    conn: &mut Conn,
    statements: &[String],
    rows: &'q [T],
    bind: impl Fn(&mut Vec<Arg<'q>>, &'q T),
) -> Result<()> {
    let mut rest = rows;
    let mut args = Vec::new();
    while !rest.is_empty() {
        let mut level = 0;
        while level + 1 < statements.len() && (1usize << (level + 1)) <= rest.len() {
            level += 1;
        }
        let (chunk, tail) = rest.split_at(1usize << level);
        args.clear();
        for row in chunk {
            bind(&mut args, row);
        }
        conn.execute(&statements[level], &args).await?;
        rest = tail;
    }
    Ok(())
}

/// A job with its JSON columns already encoded, ready to bind.
struct EncodedJob {
    id: String,
    provider: String,
    spec: String,
    group_key: Option<String>,
    correlation_key: Option<String>,
    client_ref: String,
    labels: String,
    deadline_at_ms: i64,
    priority: i64,
    cost: Option<StoredCost>,
    traceparent: Option<String>,
}

/// A submission with its JSON encoded. Kept (not consumed) by the coalesced path, so that
/// the op-by-op fallback can run it again.
struct PreparedSubmit {
    batch_id: String,
    caller: String,
    request_id: Option<String>,
    content_hash: String,
    now_ms: i64,
    jobs: Vec<EncodedJob>,
    notify: Option<crate::notify::BatchNotify>,
}

impl PreparedSubmit {
    fn new(s: NewSubmission) -> Result<PreparedSubmit> {
        let mut jobs = Vec::with_capacity(s.jobs.len());
        for job in s.jobs {
            jobs.push(EncodedJob {
                spec: to_json(&job.spec, "spec")?,
                labels: to_json(&job.labels, "labels")?,
                id: job.id,
                provider: job.provider,
                group_key: job.group_key,
                correlation_key: job.correlation_key,
                client_ref: job.client_ref,
                deadline_at_ms: job.deadline_at_ms,
                priority: job.priority,
                cost: job.cost,
                traceparent: job.traceparent,
            });
        }
        Ok(PreparedSubmit {
            batch_id: s.batch_id,
            caller: s.caller,
            request_id: s.request_id,
            content_hash: s.content_hash,
            now_ms: s.now_ms,
            jobs,
            notify: s.notify,
        })
    }

    fn job_ids(&self) -> Vec<String> {
        self.jobs.iter().map(|j| j.id.clone()).collect()
    }

    fn created(&self) -> SubmitOutcome {
        SubmitOutcome::Created {
            batch_id: self.batch_id.clone(),
            job_ids: self.job_ids(),
        }
    }
}

/// One row of the jobs INSERT: a job and what it takes from its submission.
struct JobRow<'a> {
    submit: &'a PreparedSubmit,
    seq: i64,
    job: &'a EncodedJob,
}

fn bind_job<'q>(args: &mut Vec<Arg<'q>>, row: &'q JobRow<'q>) {
    let cost = row.job.cost.as_ref();
    args.extend(args![
        &row.job.id,
        &row.submit.batch_id,
        row.seq,
        &row.job.provider,
        &row.job.spec,
        &row.job.group_key,
        &row.job.correlation_key,
        &row.job.client_ref,
        &row.job.labels,
        row.submit.now_ms,
        row.submit.now_ms,
        row.job.deadline_at_ms,
        &row.submit.caller,
        row.job.priority,
        cost.map(|c| c.unit.as_str()),
        cost.map(|c| c.micros),
        cost.and_then(|c| c.per_output_micros),
        &row.job.traceparent,
    ]);
}

fn bind_batch<'q>(args: &mut Vec<Arg<'q>>, s: &'q &'q PreparedSubmit) {
    let job_count = i64::try_from(s.jobs.len()).unwrap_or(i64::MAX);
    args.extend(args![&s.batch_id, s.now_ms, job_count, &s.caller]);
}

fn bind_request_id<'q>(args: &mut Vec<Arg<'q>>, s: &'q &'q PreparedSubmit) {
    args.extend(args![&s.request_id, &s.content_hash, &s.batch_id, s.now_ms]);
}

/// Writes the rows of new submissions: their batches, their request ids (when `claim`), and
/// all their jobs, each table with a few multi-row INSERTs.
async fn insert_submissions(conn: &mut Conn, fresh: &[&PreparedSubmit], claim: bool) -> Result<()> {
    insert_rows(conn, &BATCH_INSERTS, fresh, bind_batch).await?;
    let notifying: Vec<(&str, &crate::notify::BatchNotify)> = fresh
        .iter()
        .filter_map(|s| Some((s.batch_id.as_str(), s.notify.as_ref()?)))
        .collect();
    crate::notify::mark_batches(conn, &notifying).await?;
    if claim {
        let claimed: Vec<&PreparedSubmit> = fresh
            .iter()
            .copied()
            .filter(|s| s.request_id.is_some())
            .collect();
        insert_rows(conn, &REQUEST_ID_INSERTS, &claimed, bind_request_id).await?;
    }
    let rows: Vec<JobRow<'_>> = fresh
        .iter()
        .flat_map(|s| {
            s.jobs.iter().zip(0i64..).map(move |(job, seq)| JobRow {
                submit: s,
                seq,
                job,
            })
        })
        .collect();
    insert_rows(conn, &JOB_INSERTS, &rows, bind_job).await
}

/// What the coalesced path decided for one submission.
enum Plan<'a> {
    Create,
    /// The request id was stored by an earlier transaction with the same content.
    ReplayStored(String),
    /// The request id was claimed by an earlier submission of this group, same content.
    ReplayInGroup(&'a PreparedSubmit),
    Conflict,
}

/// Every submission of a group with a handful of statements: one lookup of the request ids
/// already stored, then multi-row INSERTs of batches, request ids and jobs for all the new
/// submissions together. Request-id dedupe is decided here, in arrival order, against both
/// the stored ids and those claimed earlier in the group (the same outcomes the op-by-op
/// path gets from `ON CONFLICT DO NOTHING`). Any database error fails the whole block; the
/// caller then rolls back and redoes the group op by op.
async fn submit_coalesced(
    conn: &mut Conn,
    submits: &[(PreparedSubmit, SubmitReply)],
) -> Result<Vec<SubmitOutcome>> {
    // Request ids already stored, with (content hash, batch id).
    let mut stored: HashMap<String, (String, String)> = HashMap::new();
    let mut wanted: Vec<&str> = submits
        .iter()
        .filter_map(|(s, _)| s.request_id.as_deref())
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    for chunk in wanted.chunks(LOOKUP_SIZES[LOOKUP_SIZES.len() - 1]) {
        let level = LOOKUP_SIZES
            .iter()
            .position(|&n| n >= chunk.len())
            .unwrap_or(LOOKUP_SIZES.len() - 1);
        let last = chunk.last().copied().unwrap_or_default();
        let args: Vec<Arg<'_>> = chunk
            .iter()
            .copied()
            .chain(std::iter::repeat_n(last, LOOKUP_SIZES[level] - chunk.len()))
            .map(Arg::Text)
            .collect();
        let rows = conn
            .rows(&REQUEST_ID_LOOKUPS[level], &args, |row| {
                Ok((row.text(0)?, (row.text(1)?, row.text(2)?)))
            })
            .await?;
        stored.extend(rows);
    }

    let mut claimed: HashMap<&str, &PreparedSubmit> = HashMap::new();
    let mut plans = Vec::with_capacity(submits.len());
    for (s, _) in submits {
        let plan = match s.request_id.as_deref() {
            None => Plan::Create,
            Some(request_id) => {
                if let Some((hash, batch_id)) = stored.get(request_id) {
                    if *hash == s.content_hash {
                        Plan::ReplayStored(batch_id.clone())
                    } else {
                        Plan::Conflict
                    }
                } else if let Some(first) = claimed.get(request_id) {
                    if first.content_hash == s.content_hash {
                        Plan::ReplayInGroup(first)
                    } else {
                        Plan::Conflict
                    }
                } else {
                    claimed.insert(request_id, s);
                    Plan::Create
                }
            }
        };
        plans.push(plan);
    }

    let fresh: Vec<&PreparedSubmit> = submits
        .iter()
        .zip(&plans)
        .filter(|(_, plan)| matches!(plan, Plan::Create))
        .map(|((s, _), _)| s)
        .collect();
    insert_submissions(conn, &fresh, true).await?;

    let mut outcomes = Vec::with_capacity(submits.len());
    for ((s, _), plan) in submits.iter().zip(plans) {
        outcomes.push(match plan {
            Plan::Create => s.created(),
            Plan::ReplayStored(batch_id) => SubmitOutcome::Replayed {
                job_ids: crate::writer::stored_job_ids(conn, &batch_id).await?,
                batch_id,
            },
            Plan::ReplayInGroup(first) => SubmitOutcome::Replayed {
                batch_id: first.batch_id.clone(),
                job_ids: first.job_ids(),
            },
            Plan::Conflict => SubmitOutcome::Conflict,
        });
    }
    Ok(outcomes)
}

/// One submission on its own (the fallback path; runs inside its caller's SAVEPOINT).
async fn submit(conn: &mut Conn, s: &PreparedSubmit) -> Result<SubmitOutcome> {
    if let Some(request_id) = &s.request_id {
        // Claim the request id first. The unique key decides, inside this transaction, whether
        // this is the first time: no read-then-write race, the same rule a PostgreSQL backend
        // gets from `INSERT … ON CONFLICT DO NOTHING`.
        let claimed = conn
            .execute(
                "INSERT INTO request_ids (request_id, content_hash, batch_id, created_at) \
                 VALUES (?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                &args![request_id, &s.content_hash, &s.batch_id, s.now_ms],
            )
            .await?;
        if claimed == 0 {
            return crate::writer::replay(conn, request_id, &s.content_hash).await;
        }
    }
    // The request id (if any) is claimed above, hence `claim = false`.
    insert_submissions(conn, &[s], false).await?;
    Ok(s.created())
}

/// Creates (or reuses, see `attempt_for_key`) the attempt of `idempotency_key` and links the
/// jobs to it.
async fn create_attempt(
    conn: &mut Conn,
    provider: &str,
    idempotency_key: &str,
    job_ids: &[String],
    now_ms: i64,
) -> Result<i64> {
    let attempt_id =
        crate::writer::attempt_for_key(conn, provider, idempotency_key, now_ms).await?;
    link_jobs(conn, attempt_id, job_ids).await?;
    Ok(attempt_id)
}

/// Links jobs to their attempt (see `create_attempt`).
async fn link_jobs(conn: &mut Conn, attempt_id: i64, job_ids: &[String]) -> Result<()> {
    for (position, job_id) in job_ids.iter().enumerate() {
        // Linking is bookkeeping, not a change a caller sees: revision and updated_at stay.
        // Only a job still QUEUED joins an attempt: one cancelled meanwhile is never sent.
        let position = i64::try_from(position).unwrap_or(i64::MAX);
        conn.execute(
            "UPDATE jobs SET attempt_id = ?, attempt_seq = ? WHERE id = ? AND state = 1",
            &args![attempt_id, position, job_id],
        )
        .await?;
    }
    Ok(())
}

static SELECT_JOB: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"));

static UPDATE_JOB: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET state = ?, provider_ref = ?, poll_key = ?, progress = ?, outputs = ?, \
         error = ?, updated_at = ?, completed_at = ?, deadline_at = ?, provider_result = ?, \
         cost_micros = ?, revision = revision + 1 WHERE id = ? RETURNING {JOB_COLUMNS}"
    )
});

async fn apply(conn: &mut Conn, patches: Vec<JobPatch>, now_ms: i64) -> Result<Vec<JobRecord>> {
    let mut changed: Vec<JobRecord> = Vec::new();
    // Position in `changed` of each job already changed by an earlier patch of this call.
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut finished: Vec<crate::notify::Finished> = Vec::new();
    for patch in patches {
        let found = conn
            .optional(&SELECT_JOB, &args![&patch.job_id], job_from_row)
            .await?;
        let Some(current) = found else {
            continue; // unknown job
        };
        let Some(next) = current.patched(&patch, now_ms) else {
            continue;
        };
        let progress = next
            .progress
            .as_ref()
            .map(|p| to_json(p, "progress"))
            .transpose()?;
        let outputs = to_json(&next.outputs, "outputs")?;
        let error = next
            .error
            .as_ref()
            .map(|e| to_json(e, "error"))
            .transpose()?;
        let provider_result = next
            .provider_result
            .as_ref()
            .map(|r| to_json(r, "provider_result"))
            .transpose()?;
        let args = args![
            next.state.as_i64(),
            &next.provider_ref,
            &next.poll_key,
            &progress,
            &outputs,
            &error,
            now_ms,
            next.completed_at_ms,
            next.deadline_at_ms,
            &provider_result,
            next.cost.as_ref().map(|c| c.micros),
            &patch.job_id,
        ];
        // Read back from the row just written, inside the same transaction.
        let record = conn.one(&UPDATE_JOB, &args, job_from_row).await?;
        finished.extend(crate::notify::Finished::of(current.state, &record));
        if record.custody_queued_by(&current) {
            super::custody::queue(conn, &record.id, now_ms).await?;
        }
        match position.get(&record.id) {
            Some(&i) => changed[i] = record,
            None => {
                position.insert(record.id.clone(), changed.len());
                changed.push(record);
            }
        }
    }
    super::notify::record_finished(conn, &finished, now_ms).await?;
    Ok(changed)
}

/// The body of an event write (see `Store::apply_event`), inside the caller's savepoint.
async fn event_write(
    conn: &mut Conn,
    provider: &str,
    write: EventWrite,
    now_ms: i64,
) -> Result<Option<Vec<JobRecord>>> {
    if !crate::writer::record_event(conn, provider, &write, now_ms).await? {
        return Ok(None);
    }
    for id in &write.consumed {
        conn.execute("DELETE FROM kept_events WHERE id = ?", &args![*id])
            .await?;
    }
    apply(conn, write.patches, now_ms).await.map(Some)
}
