//! The writer task: group commit on PostgreSQL.
//!
//! Like the SQLite writer, one task owns one dedicated connection. Callers send [`Command`]s
//! over a bounded channel; the task takes everything queued (up to [`MAX_GROUP`]), runs it in
//! one `BEGIN … COMMIT`, and answers every caller only after the commit returned.
//! PostgreSQL's commit waits for the WAL flush (`synchronous_commit` on by default), so an
//! answer means "durable", and concurrent Submits share that flush.
//!
//! The connection is the bottleneck — every statement is a round trip, and they run one after
//! the other — so a group is first run without savepoints, its submissions coalesced into a
//! few array statements (`submit` module) and its patches applied in one read and one write
//! per command (`patch` module). Only when something in it fails is the group rolled back and
//! run again with a `SAVEPOINT` per command, so that the failing command fails alone.
//!
//! Every job change committed by a group (new jobs, applied patches) is announced with one
//! `pg_notify('adgate_jobs', '<job id>:<revision>')` per changed job, sent inside the same
//! transaction just before COMMIT: PostgreSQL delivers notifications only when (and if) the
//! transaction commits, so listeners never hear of a change they cannot read.
//!
//! Several replicas each run a writer on the same database, so two groups can wait on each
//! other's row locks (two `apply`s touching the same jobs in opposite orders, or two submits
//! claiming the same request ids in opposite orders). PostgreSQL breaks such a deadlock by
//! failing one statement; that command is rolled back to its savepoint and carried over to the
//! next group, which runs after this one committed and released its locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Mutex, mpsc};

use super::patch::apply;
use super::rows::{db, sqlstate};
use super::submit::{submit, submit_coalesced};
use crate::model::{EventWrite, JobRecord, NewSubmission};
pub(super) use crate::writer::Op;
use crate::writer::{GroupFailure, Pending, Replies, attempt_for_key, group_failure};
use crate::{Result, StoreError};

/// Most commands committed in one transaction (as on SQLite).
pub(super) const MAX_GROUP: usize = 512;

/// How many times a command that lost a deadlock is carried over to a later group before its
/// caller gets the error.
const MAX_TRIES: u8 = 4;

/// How long a group that met a lost connection before its COMMIT keeps being retried on fresh
/// connections before its callers get [`StoreError::Unavailable`]. Nothing of it was
/// committed and no caller was answered, so retrying is safe; a restarted or failed-over
/// database is usually back well within this.
const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// The channel notifications are sent on; `change_feed` listens to it.
pub(super) const CHANNEL: &str = "adgate_jobs";

#[expect(
    clippy::large_enum_variant,
    reason = "`Shutdown` is sent once; boxing would cost an allocation per write"
)]
pub(super) enum Command {
    Write {
        op: Op,
        /// Groups this command was already rolled back from (deadlock victim).
        tries: u8,
    },
    /// Sent by `close()`: stop accepting commands, commit what is queued, exit.
    Shutdown,
}

/// A command of the current group: still to run, or run and holding its answer until the
/// COMMIT (a group that is redone runs it again, replacing what it holds).
struct Item {
    op: Op,
    tries: u8,
}

/// A lost connection (as opposed to an error the server reported): reconnect before the next
/// group. A backend terminated by the server (`pg_terminate_backend`, a restart) reports
/// SQLSTATE 57P01..57P03 before the socket closes: that is lost too.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("57P")),
        _ => true,
    }
}

/// [`connection_lost`] for an error the store already wrapped.
fn lost_store_error(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(_) => true,
        StoreError::Database(inner) => inner
            .downcast_ref::<sqlx::Error>()
            .is_some_and(connection_lost),
        _ => false,
    }
}

/// The writer loop. Returns once `Shutdown` was received and the queue is drained, or when
/// every sender is gone.
pub(super) async fn run(
    conn: PgConnection,
    options: PgConnectOptions,
    rx: Arc<Mutex<mpsc::Receiver<Command>>>,
    commits: Arc<AtomicU64>,
) {
    let mut conn = Some(conn);
    let mut queued: Vec<Command> = Vec::with_capacity(MAX_GROUP);
    let mut carried: Vec<Item> = Vec::new();
    loop {
        // The queue is shared by the writers: the one holding it waits for the next group
        // while the others run theirs.
        let held = if carried.is_empty() {
            // Wait for the first command, then take whatever else is queued: the group.
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut queued, MAX_GROUP).await == 0 {
                break;
            }
            Some(rx)
        } else {
            // Deadlock victims are waiting: do not block, not even on the queue while another
            // writer holds it waiting for commands; add what is queued if it is free, and go.
            let mut rx = rx.try_lock().ok();
            if let Some(rx) = rx.as_mut() {
                while queued.len() + carried.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(c) => queued.push(c),
                        Err(_) => break,
                    }
                }
            }
            rx
        };
        if let Some(mut rx) = held
            && queued.iter().any(|c| matches!(c, Command::Shutdown))
        {
            // Closing the queue fails every later send (→ `StoreError::Closed`) and keeps what
            // was sent before, which the writers still commit.
            rx.close();
        }
        let mut group: Vec<Item> = std::mem::take(&mut carried);
        for command in queued.drain(..) {
            if let Command::Write { op, tries } = command {
                group.push(Item { op, tries });
            }
        }
        if group.is_empty() {
            continue;
        }
        // A group that meets a lost connection before its COMMIT is run again, whole, on a
        // fresh connection (see RECONNECT_FOR); its callers wait meanwhile.
        let since = tokio::time::Instant::now();
        let mut backoff = std::time::Duration::from_millis(20);
        let mut group = group;
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match options.connect().await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        if since.elapsed() < RECONNECT_FOR {
                            tracing::warn!(error = %e, "store: cannot reconnect the writer yet");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                            continue;
                        }
                        tracing::error!(error = %e, "store: the database stays unreachable");
                        let why = e.to_string();
                        for item in group {
                            item.op.reply().refuse(StoreError::Unavailable(why.clone()));
                        }
                        break;
                    }
                },
            };
            match commit_group(c, group, &commits).await {
                GroupEnd::Committed(next) => {
                    carried = next;
                    break;
                }
                GroupEnd::Failed { lost } => {
                    if lost && let Some(c) = conn.take() {
                        drop(c.close().await);
                    }
                    break;
                }
                GroupEnd::Retry(again) => {
                    if let Some(c) = conn.take() {
                        drop(c.close().await);
                    }
                    tracing::warn!(
                        size = again.len(),
                        "store: the write connection was lost before COMMIT; retrying the group"
                    );
                    group = again;
                }
            }
        }
    }
    if let Some(c) = conn
        && let Err(e) = c.close().await
    {
        tracing::warn!(error = %e, "closing the store's write connection failed");
    }
}

enum GroupEnd {
    /// Committed; these commands lost a deadlock and go into the next group.
    Committed(Vec<Item>),
    /// The group failed as a whole; `lost` when the connection is unusable.
    Failed { lost: bool },
    /// The connection was lost before COMMIT: nothing was committed and nobody answered;
    /// run the group again on a new connection.
    Retry(Vec<Item>),
}

async fn exec(conn: &mut PgConnection, sql: &'static str) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut *conn).await.map(drop)
}

/// Runs one group in one transaction and answers its callers after the commit.
///
/// First the fast way ([`run_fast`]): submissions coalesced, no savepoints, so a group costs
/// a handful of round trips plus two per other command. In PostgreSQL any failed statement
/// aborts the whole transaction, so if anything fails there (a duplicate id, a deadlock, a
/// corrupt row), the group is rolled back and run again op by op, each command in a
/// savepoint of its own: the failing command fails alone, exactly as if there were no fast
/// path. Failures are rare, so the common group pays no savepoints at all.
async fn commit_group(
    conn: &mut PgConnection,
    mut group: Vec<Item>,
    commits: &AtomicU64,
) -> GroupEnd {
    let size = group.len();
    if let Err(end) = begin_locked(conn, &group).await {
        if end.1 {
            return GroupEnd::Retry(group);
        }
        return fail_group(group, end);
    }
    match run_fast(conn, &mut group).await {
        Ok(()) => match exec(conn, "COMMIT").await {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(size, "store: group committed");
                group.into_iter().for_each(|i| i.op.reply().finish(None));
                return GroupEnd::Committed(Vec::new());
            }
            Err(e) => {
                tracing::error!(error = %e, size, "store: commit failed");
                let lost = connection_lost(&e);
                if lost {
                    // The COMMIT may or may not have happened: not retried (a Submit could
                    // be stored twice), its callers are told to retry (request ids make a
                    // Submit's retry safe).
                    let why = format!("the connection broke during COMMIT: {e}");
                    group.into_iter().for_each(|i| {
                        i.op.reply().refuse(StoreError::Unavailable(why.clone()));
                    });
                    return GroupEnd::Failed { lost };
                }
                return fail_group(group, (group_failure(e), lost));
            }
        },
        Err(e) => {
            tracing::debug!(error = %e, size, "store: fast group failed, redoing op by op");
            if lost_store_error(&e) {
                return GroupEnd::Retry(group);
            }
            if let Err(re) = exec(conn, "ROLLBACK").await {
                tracing::error!(error = %re, size, "store: rollback failed");
                return GroupEnd::Retry(group);
            }
        }
    }
    if let Err(end) = begin_locked(conn, &group).await {
        if end.1 {
            return GroupEnd::Retry(group);
        }
        return fail_group(group, end);
    }
    commit_op_by_op(conn, group, commits).await
}

/// Answers every command of a group with the error that ended it.
fn fail_group(group: Vec<Item>, (e, lost): (GroupFailure, bool)) -> GroupEnd {
    group.into_iter().for_each(|i| i.op.fail(&e));
    GroupEnd::Failed { lost }
}

/// BEGIN, then the group's locks ([`prelock`]). On failure the transaction is closed and the
/// error is returned with whether the connection is lost.
async fn begin_locked(
    conn: &mut PgConnection,
    group: &[Item],
) -> std::result::Result<(), (GroupFailure, bool)> {
    if let Err(e) = exec(conn, "BEGIN").await {
        tracing::error!(error = %e, size = group.len(), "store: cannot begin a write transaction");
        let lost = connection_lost(&e);
        return Err((group_failure(e), lost));
    }
    if let Err(e) = prelock(conn, group).await {
        tracing::error!(error = %e, size = group.len(), "store: cannot lock the rows of a write group");
        let mut lost = connection_lost(&e);
        if !lost && exec(conn, "ROLLBACK").await.is_err() {
            lost = true;
        }
        return Err((group_failure(e), lost));
    }
    Ok(())
}

/// The whole group without savepoints: every submission in [`submit_coalesced`]'s few
/// statements (the ones it leaves over, one by one), every other command in order, then the
/// notifications. Each command holds its answer; any error means the transaction is aborted
/// and must be rolled back.
async fn run_fast(conn: &mut PgConnection, group: &mut [Item]) -> Result<()> {
    let mut changes: Vec<(String, i64)> = Vec::new();
    // Submissions first: they only create rows, so running them ahead of the group's other
    // writes changes no outcome (as on SQLite).
    let submits: Vec<&NewSubmission> = group
        .iter()
        .filter_map(|item| match &item.op {
            Op::Submit { submission, .. } => Some(submission),
            _ => None,
        })
        .collect();
    if !submits.is_empty() {
        let mut outcomes = submit_coalesced(conn, &submits, &mut changes)
            .await?
            .into_iter();
        for item in group.iter_mut() {
            if let Op::Submit { submission, reply } = &mut item.op {
                let outcome = match outcomes.next().flatten() {
                    Some(o) => o,
                    // A request id claimed before: replayed or refused against the stored row.
                    None => submit(conn, submission, &mut changes).await?,
                };
                reply.hold(Ok(outcome));
            }
        }
    }
    for item in group.iter_mut() {
        if !matches!(item.op, Op::Submit { .. }) {
            run_op(conn, &mut item.op, &mut changes).await?;
        }
    }
    if !changes.is_empty() {
        notify(conn, &changes).await.map_err(db)?;
    }
    Ok(())
}

/// The careful way: each command in a savepoint, so one that fails is rolled back alone;
/// deadlock victims are carried over to the next group.
async fn commit_op_by_op(
    conn: &mut PgConnection,
    group: Vec<Item>,
    commits: &AtomicU64,
) -> GroupEnd {
    let size = group.len();
    let mut answers: Vec<Box<dyn Pending>> = Vec::with_capacity(size);
    let mut carried: Vec<Item> = Vec::new();
    // (job id, revision) of every change this group makes, announced before COMMIT.
    let mut changes: Vec<(String, i64)> = Vec::new();
    let mut items = group.into_iter();
    let mut broken: Option<sqlx::Error> = None;
    for mut item in items.by_ref() {
        let mark = changes.len();
        if let Err(e) = exec(conn, "SAVEPOINT op").await {
            answers.push(item.op.reply());
            broken = Some(e);
            break;
        }
        let result = run_op(conn, &mut item.op, &mut changes).await;
        let end = if result.is_ok() {
            exec(conn, "RELEASE SAVEPOINT op").await
        } else {
            changes.truncate(mark);
            // Undo this command's partial writes only (and leave PostgreSQL's aborted
            // sub-transaction state); RELEASE then pops the savepoint.
            match exec(conn, "ROLLBACK TO SAVEPOINT op").await {
                Ok(()) => exec(conn, "RELEASE SAVEPOINT op").await,
                Err(e) => Err(e),
            }
        };
        match result {
            Err(e)
                if matches!(sqlstate(&e).as_deref(), Some("40P01" | "40001"))
                    && item.tries + 1 < MAX_TRIES =>
            {
                tracing::debug!(tries = item.tries, "store: write lost a deadlock, retrying");
                carried.push(Item {
                    tries: item.tries + 1,
                    ..item
                });
            }
            Err(e) => {
                let mut reply = item.op.reply();
                reply.hold_error(e);
                answers.push(reply);
            }
            Ok(()) => answers.push(item.op.reply()),
        }
        if let Err(e) = end {
            broken = Some(e);
            break;
        }
    }
    if broken.is_none() && !changes.is_empty() {
        broken = notify(conn, &changes).await.err();
    }
    if let Some(e) = broken {
        // The transaction is in an unknown state: give up on the whole group rather than
        // commit half of something.
        let mut lost = connection_lost(&e);
        tracing::error!(error = %e, size, "store: write transaction broken, rolling back");
        let e = group_failure(e);
        if !lost && let Err(re) = exec(conn, "ROLLBACK").await {
            // Still inside a transaction, or worse: start the next group on a new connection.
            tracing::warn!(error = %re, "store: rollback failed");
            lost = true;
        }
        answers.into_iter().for_each(|a| a.finish(Some(&e)));
        carried.into_iter().chain(items).for_each(|i| i.op.fail(&e));
        return GroupEnd::Failed { lost };
    }

    match exec(conn, "COMMIT").await {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(size, "store: group committed");
            answers.into_iter().for_each(|a| a.finish(None));
            GroupEnd::Committed(carried)
        }
        Err(e) => {
            let lost = connection_lost(&e);
            tracing::error!(error = %e, size, "store: commit failed");
            let e = group_failure(e);
            answers.into_iter().for_each(|a| a.finish(Some(&e)));
            carried.into_iter().for_each(|i| i.op.fail(&e));
            GroupEnd::Failed { lost }
        }
    }
}

/// Takes, in one canonical order, the locks the group's commands will wait on: first the rows
/// of every job an `apply` or `create_attempt` touches (sorted by id), then one advisory lock
/// per request id a `submit` claims (sorted by key). Every replica's writer locks in this
/// order, so two groups can wait for each other but never in a cycle: no deadlock between
/// writers however their commands interleave. (Claims and lease renewals use `SKIP LOCKED`
/// and never wait at all.) Without this, two replicas applying patches to the same jobs in
/// opposite orders deadlock, and PostgreSQL takes `deadlock_timeout` (1 s) to notice.
async fn prelock(conn: &mut PgConnection, group: &[Item]) -> std::result::Result<(), sqlx::Error> {
    let mut job_ids: Vec<&str> = Vec::new();
    let mut request_keys: Vec<i64> = Vec::new();
    for item in group {
        match &item.op {
            Op::Apply { patches, .. } => job_ids.extend(patches.iter().map(|p| p.job_id.as_str())),
            Op::CreateAttempt { job_ids: ids, .. } => {
                job_ids.extend(ids.iter().map(String::as_str))
            }
            Op::Submit { submission, .. } => {
                request_keys.extend(submission.request_id.as_deref().map(request_lock_key))
            }
            Op::RecordDelivery { write, .. } => {
                job_ids.extend(write.patches.iter().map(|p| p.job_id.as_str()))
            }
            Op::FinishCustody { write, .. } => job_ids.push(write.job_id.as_str()),
        }
    }
    if !job_ids.is_empty() {
        job_ids.sort_unstable();
        job_ids.dedup();
        sqlx::query("SELECT 1 FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&job_ids)
            .execute(&mut *conn)
            .await?;
    }
    if !request_keys.is_empty() {
        request_keys.sort_unstable();
        request_keys.dedup();
        // `unnest` yields the keys in array order and each row is locked as it is produced.
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k")
            .bind(&request_keys)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The advisory lock key of a request id: 64 bits of its SHA-256, in a namespace of its own
/// (a collision only makes two submits wait for each other).
fn request_lock_key(request_id: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("adgate.request_id:{request_id}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// One `pg_notify` per changed job, with its latest revision.
async fn notify(
    conn: &mut PgConnection,
    changes: &[(String, i64)],
) -> std::result::Result<(), sqlx::Error> {
    let mut latest: HashMap<&str, i64> = HashMap::with_capacity(changes.len());
    let mut order: Vec<&str> = Vec::with_capacity(changes.len());
    for (id, revision) in changes {
        match latest.get_mut(id.as_str()) {
            Some(r) => *r = (*r).max(*revision),
            None => {
                latest.insert(id, *revision);
                order.push(id);
            }
        }
    }
    let payloads: Vec<String> = order
        .iter()
        .map(|id| format!("{id}:{}", latest.get(id).copied().unwrap_or_default()))
        .collect();
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(&payloads)
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// Runs one command; its answer is held in its reply. On an error nothing is held: the
/// caller decides (abort the fast path, carry a deadlock victim over, or hold the error).
async fn run_op(
    conn: &mut PgConnection,
    op: &mut Op,
    changes: &mut Vec<(String, i64)>,
) -> Result<()> {
    match op {
        Op::Submit { submission, reply } => {
            reply.hold(Ok(submit(conn, submission, changes).await?))
        }
        Op::CreateAttempt {
            provider,
            idempotency_key,
            job_ids,
            now_ms,
            reply,
        } => reply.hold(Ok(create_attempt(
            conn,
            provider,
            idempotency_key,
            job_ids,
            *now_ms,
        )
        .await?)),
        Op::Apply {
            patches,
            now_ms,
            reply,
        } => reply.hold(Ok(apply(conn, patches, *now_ms, changes).await?)),
        Op::RecordDelivery {
            provider,
            write,
            now_ms,
            reply,
        } => reply.hold(Ok(
            event_write(conn, provider, write, *now_ms, changes).await?
        )),
        Op::FinishCustody {
            write,
            now_ms,
            reply,
        } => reply.hold(Ok(super::custody::finish(conn, write, *now_ms, changes)
            .await?
            .map(Box::new))),
    }
    Ok(())
}

/// Everything one provider event writes: `None` (and nothing written) for a delivery seen
/// before. All or nothing: it runs in the group's transaction (and, on the op-by-op path, in
/// its own savepoint), so a failed apply also un-records the id and un-keeps (or re-keeps)
/// the events.
async fn event_write(
    conn: &mut PgConnection,
    provider: &str,
    write: &EventWrite,
    now_ms: i64,
    changes: &mut Vec<(String, i64)>,
) -> Result<Option<Vec<JobRecord>>> {
    if !crate::writer::record_event(conn, provider, write, now_ms).await? {
        return Ok(None);
    }
    if !write.consumed.is_empty() {
        sqlx::query("DELETE FROM kept_events WHERE id = ANY($1)")
            .bind(&write.consumed)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    if write.patches.is_empty() {
        return Ok(Some(Vec::new()));
    }
    apply(conn, &write.patches, now_ms, changes).await.map(Some)
}

/// Creates (or reuses, see `attempt_for_key`) the attempt of `idempotency_key` and links the
/// jobs to it.
async fn create_attempt(
    conn: &mut PgConnection,
    provider: &str,
    idempotency_key: &str,
    job_ids: &[String],
    now_ms: i64,
) -> Result<i64> {
    let attempt_id = attempt_for_key(conn, provider, idempotency_key, now_ms).await?;
    link_jobs(conn, attempt_id, job_ids).await?;
    Ok(attempt_id)
}

/// Links jobs to their attempt (see `create_attempt`).
async fn link_jobs(conn: &mut PgConnection, attempt_id: i64, job_ids: &[String]) -> Result<()> {
    if !job_ids.is_empty() {
        // Linking is bookkeeping, not a change a caller sees: revision and updated_at stay,
        // and nothing is announced. A job listed twice keeps its last position.
        sqlx::query(
            "UPDATE jobs SET attempt_id = $1, attempt_seq = t.n - 1 \
             FROM (SELECT id, max(n) AS n FROM UNNEST($2::text[]) WITH ORDINALITY AS u(id, n) \
                   GROUP BY id) AS t \
             WHERE jobs.id = t.id AND jobs.state = 1",
        )
        .bind(attempt_id)
        .bind(job_ids)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}
