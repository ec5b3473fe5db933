//! The writer task: group commit on PostgreSQL.
//!
//! Like the SQLite writer, one task owns one dedicated connection. Callers send [`Command`]s
//! over a bounded channel; the task takes everything queued (up to [`MAX_GROUP`]), runs it in
//! one `BEGIN … COMMIT` with a `SAVEPOINT` per command, and answers every caller only after
//! the commit returned. PostgreSQL's commit waits for the WAL flush (`synchronous_commit` on by
//! default), so an answer means "durable", and concurrent Submits share that flush.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use adgate_generator::JobState;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::rows::{JOB_COLUMNS, db, job_from_row, sanitize_progress, sqlstate, to_json};
use crate::model::{JobPatch, JobRecord, NewSubmission, SubmitOutcome};
use crate::{Result, StoreError};

/// Most commands committed in one transaction (as on SQLite).
pub(super) const MAX_GROUP: usize = 512;

/// How many times a command that lost a deadlock is carried over to a later group before its
/// caller gets the error.
const MAX_TRIES: u8 = 4;

/// The channel notifications are sent on; `change_feed` listens to it.
pub(super) const CHANNEL: &str = "adgate_jobs";

/// One write.
pub(super) enum Op {
    Submit(NewSubmission),
    CreateAttempt {
        provider: String,
        idempotency_key: String,
        job_ids: Vec<String>,
        now_ms: i64,
    },
    Apply {
        patches: Vec<JobPatch>,
        now_ms: i64,
    },
    RecordDelivery {
        provider: String,
        delivery_id: String,
        now_ms: i64,
    },
}

/// The answer to an [`Op`], of the matching variant.
#[derive(Debug)]
pub(super) enum Answer {
    Submit(SubmitOutcome),
    Attempt(i64),
    Apply(Vec<JobRecord>),
    Delivery(bool),
}

pub(super) enum Command {
    Write {
        op: Op,
        reply: oneshot::Sender<Result<Answer>>,
        /// Groups this command was already rolled back from (deadlock victim).
        tries: u8,
    },
    /// Sent by `close()`: stop accepting commands, commit what is queued, exit.
    Shutdown,
}

/// A command of the current group: still to run, or run and waiting for the COMMIT.
struct Item {
    op: Op,
    reply: oneshot::Sender<Result<Answer>>,
    tries: u8,
}

/// An error that hits a whole group (BEGIN, NOTIFY or COMMIT failed): every caller gets it.
type GroupFailure = Arc<sqlx::Error>;

fn group_error(e: &GroupFailure) -> StoreError {
    StoreError::Database(Box::new(Arc::clone(e)))
}

/// A lost connection (as opposed to an error the server reported): reconnect before the next
/// group.
fn connection_lost(e: &sqlx::Error) -> bool {
    !matches!(e, sqlx::Error::Database(_))
}

/// The writer loop. Returns once `Shutdown` was received and the queue is drained, or when
/// every sender is gone.
pub(super) async fn run(
    conn: PgConnection,
    options: PgConnectOptions,
    mut rx: mpsc::Receiver<Command>,
    commits: Arc<AtomicU64>,
) {
    let mut conn = Some(conn);
    let mut queued: Vec<Command> = Vec::with_capacity(MAX_GROUP);
    let mut carried: Vec<Item> = Vec::new();
    loop {
        if carried.is_empty() {
            // Wait for the first command, then take whatever else is queued: the group.
            if rx.recv_many(&mut queued, MAX_GROUP).await == 0 {
                break;
            }
        } else {
            // Deadlock victims are waiting: do not block, add what is queued and go.
            while queued.len() + carried.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => queued.push(c),
                    Err(_) => break,
                }
            }
        }
        let mut group: Vec<Item> = std::mem::take(&mut carried);
        for command in queued.drain(..) {
            match command {
                // Closing the receiver fails every later send (→ `StoreError::Closed`) and
                // keeps what was sent before, which the loop still commits.
                Command::Shutdown => rx.close(),
                Command::Write { op, reply, tries } => group.push(Item { op, reply, tries }),
            }
        }
        if group.is_empty() {
            continue;
        }
        // (Re)connect if the previous connection was lost.
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match options.connect().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    let e = Arc::new(e);
                    tracing::error!(error = %e, "store: cannot reconnect the writer");
                    for item in group {
                        drop(item.reply.send(Err(group_error(&e))));
                    }
                    continue;
                }
            },
        };
        match commit_group(c, group, &commits).await {
            GroupEnd::Committed(next) => carried = next,
            GroupEnd::Failed { lost } => {
                if lost && let Some(c) = conn.take() {
                    drop(c.close().await);
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
}

async fn exec(conn: &mut PgConnection, sql: &'static str) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut *conn).await.map(drop)
}

/// Runs one group in one transaction and answers its callers after the commit.
async fn commit_group(conn: &mut PgConnection, group: Vec<Item>, commits: &AtomicU64) -> GroupEnd {
    let size = group.len();
    if let Err(e) = exec(conn, "BEGIN").await {
        let lost = connection_lost(&e);
        let e = Arc::new(e);
        tracing::error!(error = %e, size, "store: cannot begin a write transaction");
        group
            .into_iter()
            .for_each(|i| drop(i.reply.send(Err(group_error(&e)))));
        return GroupEnd::Failed { lost };
    }

    if let Err(e) = prelock(conn, &group).await {
        let mut lost = connection_lost(&e);
        let e = Arc::new(e);
        tracing::error!(error = %e, size, "store: cannot lock the rows of a write group");
        if !lost && exec(conn, "ROLLBACK").await.is_err() {
            lost = true;
        }
        group
            .into_iter()
            .for_each(|i| drop(i.reply.send(Err(group_error(&e)))));
        return GroupEnd::Failed { lost };
    }

    let mut answers: Vec<(oneshot::Sender<Result<Answer>>, Result<Answer>)> =
        Vec::with_capacity(size);
    let mut carried: Vec<Item> = Vec::new();
    // (job id, revision) of every change this group makes, announced before COMMIT.
    let mut changes: Vec<(String, i64)> = Vec::new();
    let mut items = group.into_iter();
    let mut broken: Option<sqlx::Error> = None;
    for item in items.by_ref() {
        let mark = changes.len();
        if let Err(e) = exec(conn, "SAVEPOINT op").await {
            answers.push((item.reply, Err(StoreError::Closed)));
            broken = Some(e);
            break;
        }
        let result = run_op(conn, &item.op, &mut changes).await;
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
        let deadlocked = matches!(
            &result,
            Err(e) if matches!(sqlstate(e).as_deref(), Some("40P01" | "40001"))
        );
        if deadlocked && item.tries + 1 < MAX_TRIES {
            tracing::debug!(tries = item.tries, "store: write lost a deadlock, retrying");
            carried.push(Item {
                tries: item.tries + 1,
                ..item
            });
        } else {
            answers.push((item.reply, result));
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
        let e = Arc::new(e);
        tracing::error!(error = %e, size, "store: write transaction broken, rolling back");
        if !lost && let Err(re) = exec(conn, "ROLLBACK").await {
            // Still inside a transaction, or worse: start the next group on a new connection.
            tracing::warn!(error = %re, "store: rollback failed");
            lost = true;
        }
        answers
            .into_iter()
            .for_each(|(tx, _)| drop(tx.send(Err(group_error(&e)))));
        carried
            .into_iter()
            .chain(items)
            .for_each(|i| drop(i.reply.send(Err(group_error(&e)))));
        return GroupEnd::Failed { lost };
    }

    match exec(conn, "COMMIT").await {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(size, "store: group committed");
            // A caller that gave up no longer listens; its write still committed.
            answers.into_iter().for_each(|(tx, r)| drop(tx.send(r)));
            GroupEnd::Committed(carried)
        }
        Err(e) => {
            let lost = connection_lost(&e);
            let e = Arc::new(e);
            tracing::error!(error = %e, size, "store: commit failed");
            answers
                .into_iter()
                .for_each(|(tx, _)| drop(tx.send(Err(group_error(&e)))));
            carried
                .into_iter()
                .for_each(|i| drop(i.reply.send(Err(group_error(&e)))));
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
            Op::Submit(s) => request_keys.extend(s.request_id.as_deref().map(request_lock_key)),
            Op::RecordDelivery { .. } => {}
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

async fn run_op(
    conn: &mut PgConnection,
    op: &Op,
    changes: &mut Vec<(String, i64)>,
) -> Result<Answer> {
    match op {
        Op::Submit(s) => submit(conn, s, changes).await.map(Answer::Submit),
        Op::CreateAttempt {
            provider,
            idempotency_key,
            job_ids,
            now_ms,
        } => create_attempt(conn, provider, idempotency_key, job_ids, *now_ms)
            .await
            .map(Answer::Attempt),
        Op::Apply { patches, now_ms } => apply(conn, patches, *now_ms, changes)
            .await
            .map(Answer::Apply),
        Op::RecordDelivery {
            provider,
            delivery_id,
            now_ms,
        } => record_delivery(conn, provider, delivery_id, *now_ms)
            .await
            .map(Answer::Delivery),
    }
}

/// Every job of a submission in one statement, whatever their number: the columns travel as
/// arrays and `UNNEST … WITH ORDINALITY` gives each its position in the batch. Rows are
/// inserted in batch order, so `pos` (the queue's tie-breaker) follows it.
static INSERT_JOBS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO jobs (id, batch_id, seq, provider, spec, state, group_key, correlation_key, \
         outputs, client_ref, labels, created_at, updated_at, deadline_at, revision) \
         SELECT t.id, $1, t.n - 1, t.provider, t.spec, {queued}, t.group_key, \
         t.correlation_key, '[]', t.client_ref, t.labels, $2, $2, t.deadline_at, 1 \
         FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
         $9::text[], $10::bigint[]) WITH ORDINALITY \
         AS t(id, provider, spec, group_key, correlation_key, client_ref, labels, deadline_at, n) \
         ORDER BY t.n",
        queued = JobState::Queued.as_i64()
    )
});

async fn submit(
    conn: &mut PgConnection,
    s: &NewSubmission,
    changes: &mut Vec<(String, i64)>,
) -> Result<SubmitOutcome> {
    if let Some(request_id) = &s.request_id {
        // The unique key decides: the first transaction to insert the id wins, a concurrent
        // one (another replica's writer) waits on it and then does nothing. No read-then-write.
        let claimed = sqlx::query(
            "INSERT INTO request_ids (request_id, content_hash, batch_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(request_id)
        .bind(&s.content_hash)
        .bind(&s.batch_id)
        .bind(s.now_ms)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        if claimed.rows_affected() == 0 {
            // READ COMMITTED: this statement sees the winner's committed row.
            let row =
                sqlx::query("SELECT content_hash, batch_id FROM request_ids WHERE request_id = $1")
                    .bind(request_id)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db)?;
            let hash: String = row.try_get(0).map_err(db)?;
            if hash != s.content_hash {
                return Ok(SubmitOutcome::Conflict);
            }
            let batch_id: String = row.try_get(1).map_err(db)?;
            let job_ids = sqlx::query("SELECT id FROM jobs WHERE batch_id = $1 ORDER BY seq")
                .bind(&batch_id)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?
                .iter()
                .map(|r| r.try_get::<String, _>(0).map_err(db))
                .collect::<Result<Vec<_>>>()?;
            return Ok(SubmitOutcome::Replayed { batch_id, job_ids });
        }
    }

    let job_count = i64::try_from(s.jobs.len()).unwrap_or(i64::MAX);
    sqlx::query("INSERT INTO batches (id, created_at, job_count) VALUES ($1, $2, $3)")
        .bind(&s.batch_id)
        .bind(s.now_ms)
        .bind(job_count)
        .execute(&mut *conn)
        .await
        .map_err(db)?;

    if !s.jobs.is_empty() {
        let n = s.jobs.len();
        let mut ids = Vec::with_capacity(n);
        let mut providers = Vec::with_capacity(n);
        let mut specs = Vec::with_capacity(n);
        let mut group_keys = Vec::with_capacity(n);
        let mut correlation_keys = Vec::with_capacity(n);
        let mut client_refs = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        let mut deadlines = Vec::with_capacity(n);
        for job in &s.jobs {
            ids.push(job.id.as_str());
            providers.push(job.provider.as_str());
            specs.push(to_json(&job.spec, "spec")?);
            group_keys.push(job.group_key.as_deref());
            correlation_keys.push(job.correlation_key.as_deref());
            client_refs.push(job.client_ref.as_str());
            labels.push(to_json(&job.labels, "labels")?);
            deadlines.push(job.deadline_at_ms);
        }
        sqlx::query(&INSERT_JOBS)
            .bind(&s.batch_id)
            .bind(s.now_ms)
            .bind(&ids)
            .bind(&providers)
            .bind(&specs)
            .bind(&group_keys)
            .bind(&correlation_keys)
            .bind(&client_refs)
            .bind(&labels)
            .bind(&deadlines)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }

    changes.extend(s.jobs.iter().map(|j| (j.id.clone(), 1)));
    Ok(SubmitOutcome::Created {
        batch_id: s.batch_id.clone(),
        job_ids: s.jobs.iter().map(|j| j.id.clone()).collect(),
    })
}

#[derive(Debug, thiserror::Error)]
#[error("idempotency key {key:?} already names an attempt of provider {owner:?}")]
struct KeyOwnedByOtherProvider {
    key: String,
    owner: String,
}

async fn create_attempt(
    conn: &mut PgConnection,
    provider: &str,
    idempotency_key: &str,
    job_ids: &[String],
    now_ms: i64,
) -> Result<i64> {
    let inserted = sqlx::query(
        "INSERT INTO attempts (provider, idempotency_key, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(provider)
    .bind(idempotency_key)
    .bind(now_ms)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let attempt_id: i64 = match inserted {
        Some(row) => row.try_get(0).map_err(db)?,
        None => {
            // The key exists already (an engine retrying after a restart, or a replica
            // resuming a dead one's attempt): reuse that attempt.
            let row = sqlx::query("SELECT id, provider FROM attempts WHERE idempotency_key = $1")
                .bind(idempotency_key)
                .fetch_one(&mut *conn)
                .await
                .map_err(db)?;
            let owner: String = row.try_get(1).map_err(db)?;
            if owner != provider {
                return Err(StoreError::Database(Box::new(KeyOwnedByOtherProvider {
                    key: idempotency_key.to_owned(),
                    owner,
                })));
            }
            row.try_get(0).map_err(db)?
        }
    };
    if !job_ids.is_empty() {
        // Linking is bookkeeping, not a change a caller sees: revision and updated_at stay,
        // and nothing is announced. A job listed twice keeps its last position.
        sqlx::query(
            "UPDATE jobs SET attempt_id = $1, attempt_seq = t.n - 1 \
             FROM (SELECT id, max(n) AS n FROM UNNEST($2::text[]) WITH ORDINALITY AS u(id, n) \
                   GROUP BY id) AS t \
             WHERE jobs.id = t.id",
        )
        .bind(attempt_id)
        .bind(job_ids)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(attempt_id)
}

/// Locks the row: another replica's writer cannot change the job between this read and the
/// UPDATE below (no lost update), it waits for this group's COMMIT instead.
static SELECT_JOB: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"));

static UPDATE_JOB: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET state = $1, provider_ref = $2, poll_key = $3, progress = $4, \
         outputs = $5, error = $6, updated_at = $7, completed_at = $8, \
         revision = revision + 1 WHERE id = $9 RETURNING {JOB_COLUMNS}"
    )
});

async fn apply(
    conn: &mut PgConnection,
    patches: &[JobPatch],
    now_ms: i64,
    changes: &mut Vec<(String, i64)>,
) -> Result<Vec<JobRecord>> {
    let mut changed: Vec<JobRecord> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for patch in patches {
        let Some(row) = sqlx::query(&SELECT_JOB)
            .bind(&patch.job_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?
        else {
            continue; // unknown job
        };
        let current = job_from_row(&row)?;
        if current.state.is_terminal() {
            continue; // terminal states never change again
        }
        let mut next = current.clone();
        if let Some(state) = patch.state {
            next.state = state;
        }
        if let Some(provider_ref) = &patch.provider_ref {
            next.provider_ref = Some(provider_ref.clone());
        }
        if let Some(poll_key) = &patch.poll_key {
            next.poll_key = Some(poll_key.clone());
        }
        if let Some(progress) = &patch.progress {
            next.progress = Some(sanitize_progress(progress.clone()));
        }
        if let Some(outputs) = &patch.outputs {
            next.outputs = outputs.clone();
        }
        if let Some(error) = &patch.error {
            next.error = Some(error.clone());
        }
        if next == current {
            continue; // changes nothing: no revision bump, no event
        }
        let completed_at = if next.state.is_terminal() {
            Some(now_ms)
        } else {
            current.completed_at_ms
        };
        let row = sqlx::query(&UPDATE_JOB)
            .bind(next.state.as_i64())
            .bind(&next.provider_ref)
            .bind(&next.poll_key)
            .bind(
                next.progress
                    .as_ref()
                    .map(|p| to_json(p, "progress"))
                    .transpose()?,
            )
            .bind(to_json(&next.outputs, "outputs")?)
            .bind(
                next.error
                    .as_ref()
                    .map(|e| to_json(e, "error"))
                    .transpose()?,
            )
            .bind(now_ms)
            .bind(completed_at)
            .bind(&patch.job_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
        let record = job_from_row(&row)?;
        changes.push((record.id.clone(), record.revision));
        match position.get(&record.id) {
            Some(&i) => changed[i] = record,
            None => {
                position.insert(record.id.clone(), changed.len());
                changed.push(record);
            }
        }
    }
    Ok(changed)
}

async fn record_delivery(
    conn: &mut PgConnection,
    provider: &str,
    delivery_id: &str,
    now_ms: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO webhook_deliveries (provider, delivery_id, received_at) \
         VALUES ($1, $2, $3) ON CONFLICT (provider, delivery_id) DO NOTHING",
    )
    .bind(provider)
    .bind(delivery_id)
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}
