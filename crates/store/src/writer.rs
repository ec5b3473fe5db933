//! How both backends' writer tasks answer their callers: one command shape, typed replies.
//!
//! Each backend has one writer task that runs the commands queued up in one transaction
//! (group commit; see `sqlite::writer` and `postgres::writer`). Every command carries its
//! caller's [`Reply`], typed by what that command answers, so a caller can never receive the
//! answer of another kind of command. The writer holds the computed answer in the reply until
//! the group's COMMIT returned, and sends the group's failure instead when it did not commit.
//! The job writes both backends take are one enum, [`Op`]; a writer's other commands live
//! with it. A command enum names its variants once in [`replies!`], which gives it
//! [`Replies::reply`] and [`Replies::fail`], so failing a command is not written per variant
//! and per backend.
//!
//! The statements that are the same on both backends but for their placeholders (attempt
//! creation, request-id replay, delivery ids and kept events) are written once too, as
//! functions over [`Exec`] that each writer calls with its connection.

#![expect(
    clippy::manual_async_fn,
    reason = "an `async fn` generic over `Exec` makes each caller prove its future `Send` for every lifetime, which rustc cannot (rust-lang/rust#100013); a declared `impl Future + Send` is proven here once"
)]

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::exec::{Exec, args};
use crate::model::{CustodyWrite, EventWrite, JobPatch, JobRecord, NewSubmission, SubmitOutcome};
use crate::reads::Statement;
use crate::{Result, StoreError};

/// The shared form of a failure that hits a whole group (BEGIN or COMMIT failed): every caller
/// in the group gets the same error, so it is reference-counted.
pub(crate) type GroupFailure = Arc<StoreError>;

/// A driver's error that ended a group (BEGIN, COMMIT or a savepoint failed), as the
/// database error every caller of the group gets.
pub(crate) fn group_failure(e: impl std::error::Error + Send + Sync + 'static) -> GroupFailure {
    Arc::new(StoreError::Database(Box::new(e)))
}

/// One caller's copy of the group's failure: the same variant, so `Unavailable` (a lost
/// connection, which callers may retry) and `Closed` stay what they are.
pub(crate) fn group_error(e: &GroupFailure) -> StoreError {
    match &**e {
        StoreError::Database(_) => {
            StoreError::Database(Box::new(SharedDatabaseError(Arc::clone(e))))
        }
        StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
        StoreError::Closed => StoreError::Closed,
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::InvalidUrl(why) => StoreError::InvalidUrl(why.clone()),
    }
}

/// The driver error inside a shared [`StoreError::Database`], shown as that error itself, so
/// each caller's error reads as it did when the group failure was the driver's error.
struct SharedDatabaseError(GroupFailure);

impl SharedDatabaseError {
    fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match &*self.0 {
            StoreError::Database(inner) => &**inner,
            other => other,
        }
    }
}

impl std::fmt::Debug for SharedDatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.inner(), f)
    }
}

impl std::fmt::Display for SharedDatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.inner(), f)
    }
}

impl std::error::Error for SharedDatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner().source()
    }
}

/// A command's reply, whatever the type of its answer.
pub(crate) trait Pending: Send {
    /// Sends the held answer, or `failure` instead when the group did not commit.
    fn finish(self: Box<Self>, failure: Option<&GroupFailure>);
    /// Sends `e` at once, whatever is held (the group's outcome is decided).
    fn refuse(self: Box<Self>, e: StoreError);
    /// Holds `e` as the answer: the command failed alone, the rest of its group goes on.
    fn hold_error(&mut self, e: StoreError);
}

/// The channel back to one caller, and the answer computed for it, held until the COMMIT.
pub(crate) struct Reply<T> {
    tx: oneshot::Sender<Result<T>>,
    held: Option<Result<T>>,
}

impl<T> Reply<T> {
    /// Holds `result` (replacing what an earlier run of the command held: a group that is
    /// redone, op by op or on a new connection, runs its commands again).
    pub(crate) fn hold(&mut self, result: Result<T>) {
        self.held = Some(result);
    }
}

impl<T: Send> Pending for Reply<T> {
    fn finish(self: Box<Self>, failure: Option<&GroupFailure>) {
        let result = match failure {
            Some(e) => Err(group_error(e)),
            // Nothing held: the command never ran, so its caller must not believe it did.
            None => self.held.unwrap_or(Err(StoreError::Closed)),
        };
        // The caller may have been cancelled; its write still committed, as documented.
        drop(self.tx.send(result));
    }

    fn refuse(self: Box<Self>, e: StoreError) {
        drop(self.tx.send(Err(e)));
    }

    fn hold_error(&mut self, e: StoreError) {
        self.held = Some(Err(e));
    }
}

/// `reply` holding `result`, ready to be finished at COMMIT, and whether `result` is a
/// success (the caller releases or rolls back its savepoint on that).
pub(crate) fn pending<T: Send + 'static>(
    mut reply: Reply<T>,
    result: Result<T>,
) -> (Box<dyn Pending>, bool) {
    let ok = result.is_ok();
    reply.hold(result);
    (Box::new(reply), ok)
}

/// Implements [`Replies`] for a command enum: `replies!(Op { A, B })` for variants that each
/// have a `reply` field, then optional `pattern => expression` arms for the others (a nested
/// command enum, a command without a caller).
macro_rules! replies {
    ($ty:ident { $($variant:ident),+ $(,)? } $($pat:pat => $reply:expr),* $(,)?) => {
        impl $crate::writer::Replies for $ty {
            fn reply(self) -> Box<dyn $crate::writer::Pending> {
                match self {
                    $( $ty::$variant { reply, .. } => Box::new(reply), )+
                    $( $pat => $reply, )*
                }
            }
        }
    };
}
pub(crate) use replies;

/// A job write, the same on both backends, with the reply its answer goes back on. Each
/// backend's writer takes these and its own commands besides.
pub(crate) enum Op {
    Submit {
        submission: NewSubmission,
        reply: Reply<SubmitOutcome>,
    },
    CreateAttempt {
        provider: String,
        idempotency_key: String,
        job_ids: Vec<String>,
        now_ms: i64,
        reply: Reply<i64>,
    },
    Apply {
        patches: Vec<JobPatch>,
        now_ms: i64,
        reply: Reply<Vec<JobRecord>>,
    },
    /// Everything one provider event writes (see `Store::apply_event`); `None` for a
    /// duplicate delivery.
    RecordDelivery {
        provider: String,
        write: EventWrite,
        now_ms: i64,
        reply: Reply<Option<Vec<JobRecord>>>,
    },
    /// One custody attempt's results (see `Store::finish_custody`): the job after them,
    /// `None` when nothing changed.
    FinishCustody {
        write: CustodyWrite,
        now_ms: i64,
        /// Boxed: a record is large, and every command of a queue is as large as this one.
        reply: Reply<Option<Box<JobRecord>>>,
    },
}

replies!(Op {
    Submit,
    CreateAttempt,
    Apply,
    RecordDelivery,
    FinishCustody
});

/// A command enum of a writer (see [`replies!`]).
pub(crate) trait Replies: Sized {
    /// The command's reply, with whatever it holds.
    fn reply(self) -> Box<dyn Pending>;

    /// Answers a command that will not commit with its group's failure.
    fn fail(self, e: &GroupFailure) {
        self.reply().finish(Some(e));
    }
}

/// Sends the command `make` builds around a new reply to a writer, and waits for the answer
/// (given after the commit).
pub(crate) async fn send<C, T>(
    writes: &mpsc::Sender<C>,
    make: impl FnOnce(Reply<T>) -> C,
) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    writes
        .send(make(Reply { tx, held: None }))
        .await
        .map_err(|_| StoreError::Closed)?;
    // A dropped reply means the writer stopped before answering (closed, or its task died).
    rx.await.map_err(|_| StoreError::Closed)?
}

/// A second attempt with an idempotency key that another provider's attempt already has.
#[derive(Debug, thiserror::Error)]
#[error("idempotency key {key:?} already names an attempt of provider {owner:?}")]
pub(crate) struct KeyOwnedByOtherProvider {
    pub(crate) key: String,
    pub(crate) owner: String,
}

static INSERT_ATTEMPT: Statement = Statement::new(
    "INSERT INTO attempts (provider, idempotency_key, created_at) VALUES (?, ?, ?) \
     ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
);

static ATTEMPT_OF_KEY: Statement =
    Statement::new("SELECT id, provider FROM attempts WHERE idempotency_key = ?");

/// The attempt `idempotency_key` names, created when the key is new. An existing key (an
/// engine retrying after a restart, or a replica resuming a dead one's attempt) gives its
/// attempt again, so the key keeps naming one outbox entry. The jobs are linked to it by each
/// backend's own statement.
pub(crate) fn attempt_for_key<E: Exec>(
    conn: &mut E,
    provider: &str,
    idempotency_key: &str,
    now_ms: i64,
) -> impl Future<Output = Result<i64>> + Send {
    async move {
        let d = E::DIALECT;
        let args = args![provider, idempotency_key, now_ms];
        if let Some(id) = conn
            .optional(INSERT_ATTEMPT.of(d), &args, |row| row.int(0))
            .await?
        {
            return Ok(id);
        }
        let args = args![idempotency_key];
        let (id, owner) = conn
            .one(ATTEMPT_OF_KEY.of(d), &args, |row| {
                Ok((row.int(0)?, row.text(1)?))
            })
            .await?;
        if owner != provider {
            return Err(StoreError::Database(Box::new(KeyOwnedByOtherProvider {
                key: idempotency_key.to_owned(),
                owner,
            })));
        }
        Ok(id)
    }
}

static STORED_JOB_IDS: Statement =
    Statement::new("SELECT id FROM jobs WHERE batch_id = ? ORDER BY seq");

/// The job ids of a stored batch, in submission order.
pub(crate) fn stored_job_ids<E: Exec>(
    conn: &mut E,
    batch_id: &str,
) -> impl Future<Output = Result<Vec<String>>> + Send {
    async move {
        let sql = STORED_JOB_IDS.of(E::DIALECT);
        conn.rows(sql, &args![batch_id], |row| row.text(0)).await
    }
}

static REQUEST_ID: Statement =
    Statement::new("SELECT content_hash, batch_id FROM request_ids WHERE request_id = ?");

/// The answer to a submission whose request id is stored already (it lost the claim): the
/// stored batch again when the content matches, else a conflict.
pub(crate) fn replay<E: Exec>(
    conn: &mut E,
    request_id: &str,
    content_hash: &str,
) -> impl Future<Output = Result<SubmitOutcome>> + Send {
    async move {
        let sql = REQUEST_ID.of(E::DIALECT);
        let (hash, batch_id) = conn
            .one(sql, &args![request_id], |row| {
                Ok((row.text(0)?, row.text(1)?))
            })
            .await?;
        if hash != content_hash {
            return Ok(SubmitOutcome::Conflict);
        }
        let job_ids = stored_job_ids(conn, &batch_id).await?;
        Ok(SubmitOutcome::Replayed { batch_id, job_ids })
    }
}

static INSERT_DELIVERY: Statement = Statement::new(
    "INSERT INTO webhook_deliveries (provider, delivery_id, received_at) \
     VALUES (?, ?, ?) ON CONFLICT (provider, delivery_id) DO NOTHING",
);

/// Remembers a webhook delivery id: true when it is new.
pub(crate) fn record_delivery<E: Exec>(
    conn: &mut E,
    provider: &str,
    delivery_id: &str,
    now_ms: i64,
) -> impl Future<Output = Result<bool>> + Send {
    async move {
        let sql = INSERT_DELIVERY.of(E::DIALECT);
        let done = conn
            .execute(sql, &args![provider, delivery_id, now_ms])
            .await?;
        Ok(done == 1)
    }
}

static KEEP_EVENT: Statement = Statement::new(
    "INSERT INTO kept_events (provider, delivery_id, event, kept_at, expires_at) \
     VALUES (?, ?, ?, ?, ?)",
);

/// The start of an event write (see `Store::apply_event`): records its delivery id and keeps
/// the events it asks to keep. False, with nothing written, for a delivery seen before.
pub(crate) fn record_event<E: Exec>(
    conn: &mut E,
    provider: &str,
    write: &EventWrite,
    now_ms: i64,
) -> impl Future<Output = Result<bool>> + Send {
    async move {
        if let Some(id) = &write.delivery_id
            && !record_delivery(conn, provider, id, now_ms).await?
        {
            return Ok(false);
        }
        let sql = KEEP_EVENT.of(E::DIALECT);
        for (event, expires_at) in &write.keep {
            let event = crate::codec::to_json(event, "kept event")?;
            let args = args![provider, &write.delivery_id, &event, now_ms, *expires_at];
            conn.execute(sql, &args).await?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_group_failure_keeps_its_variant_and_message() {
        let lost = Arc::new(StoreError::Unavailable("gone".into()));
        assert!(matches!(group_error(&lost), StoreError::Unavailable(w) if w == "gone"));
        assert!(matches!(
            group_error(&Arc::new(StoreError::Closed)),
            StoreError::Closed
        ));
        let io = std::io::Error::other("disk on fire");
        let e = group_error(&group_failure(io));
        let StoreError::Database(inner) = &e else {
            panic!("expected a database error, got {e:?}");
        };
        assert_eq!(inner.to_string(), "disk on fire");
    }
}
