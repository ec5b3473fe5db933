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
//! creation, request-id replay, delivery ids and kept events) are written once too, in
//! [`same_in_both_writers!`], expanded in each writer for its connection type.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::model::{CustodyWrite, EventWrite, JobPatch, JobRecord, NewSubmission, SubmitOutcome};
use crate::{Result, StoreError};

/// The shared form of a failure that hits a whole group (BEGIN or COMMIT failed): every caller
/// in the group gets the same error, so it is reference-counted.
pub(crate) type GroupFailure = Arc<sqlx::Error>;

pub(crate) fn group_error(e: &GroupFailure) -> StoreError {
    StoreError::Database(Box::new(Arc::clone(e)))
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

/// The writer statements that are the same on both backends, expanded once per backend for
/// its connection type (`$params` numbers the placeholders, as in `notify`). What differs in
/// shape (PostgreSQL's array statements) stays with each backend's writer.
macro_rules! same_in_both_writers {
    ($conn:ty, $params:path) => {
        /// The attempt `idempotency_key` names, created when the key is new. An existing key
        /// (an engine retrying after a restart, or a replica resuming a dead one's attempt)
        /// gives its attempt again, so the key keeps naming one outbox entry.
        async fn attempt_for_key(
            conn: &mut $conn,
            provider: &str,
            idempotency_key: &str,
            now_ms: i64,
        ) -> $crate::Result<i64> {
            use sqlx::Row;
            use $crate::rows::db;
            let inserted = sqlx::query(&$params(
                "INSERT INTO attempts (provider, idempotency_key, created_at) VALUES (?, ?, ?) \
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            ))
            .bind(provider)
            .bind(idempotency_key)
            .bind(now_ms)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
            if let Some(row) = inserted {
                return row.try_get(0).map_err(db);
            }
            let row = sqlx::query(&$params(
                "SELECT id, provider FROM attempts WHERE idempotency_key = ?",
            ))
            .bind(idempotency_key)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
            let owner: String = row.try_get(1).map_err(db)?;
            if owner != provider {
                return Err($crate::StoreError::Database(Box::new(
                    $crate::writer::KeyOwnedByOtherProvider {
                        key: idempotency_key.to_owned(),
                        owner,
                    },
                )));
            }
            row.try_get(0).map_err(db)
        }

        /// Creates (or reuses, see `attempt_for_key`) the attempt of `idempotency_key` and
        /// links the jobs to it (`link_jobs`, each backend's own statement).
        async fn create_attempt(
            conn: &mut $conn,
            provider: &str,
            idempotency_key: &str,
            job_ids: &[String],
            now_ms: i64,
        ) -> $crate::Result<i64> {
            let attempt_id = attempt_for_key(conn, provider, idempotency_key, now_ms).await?;
            link_jobs(conn, attempt_id, job_ids).await?;
            Ok(attempt_id)
        }

        /// The job ids of a stored batch, in submission order.
        async fn stored_job_ids(
            conn: &mut $conn,
            batch_id: &str,
        ) -> std::result::Result<Vec<String>, sqlx::Error> {
            use sqlx::Row;
            sqlx::query(&$params(
                "SELECT id FROM jobs WHERE batch_id = ? ORDER BY seq",
            ))
            .bind(batch_id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect()
        }

        /// The answer to a submission whose request id is stored already (it lost the claim):
        /// the stored batch again when the content matches, else a conflict.
        pub(super) async fn replay(
            conn: &mut $conn,
            request_id: &str,
            content_hash: &str,
        ) -> $crate::Result<$crate::model::SubmitOutcome> {
            use sqlx::Row;
            use $crate::rows::db;
            let row = sqlx::query(&$params(
                "SELECT content_hash, batch_id FROM request_ids WHERE request_id = ?",
            ))
            .bind(request_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
            let hash: String = row.try_get(0).map_err(db)?;
            if hash != content_hash {
                return Ok($crate::model::SubmitOutcome::Conflict);
            }
            let batch_id: String = row.try_get(1).map_err(db)?;
            let job_ids = stored_job_ids(conn, &batch_id).await.map_err(db)?;
            Ok($crate::model::SubmitOutcome::Replayed { batch_id, job_ids })
        }

        /// Remembers a webhook delivery id: true when it is new.
        async fn record_delivery(
            conn: &mut $conn,
            provider: &str,
            delivery_id: &str,
            now_ms: i64,
        ) -> std::result::Result<bool, sqlx::Error> {
            let done = sqlx::query(&$params(
                "INSERT INTO webhook_deliveries (provider, delivery_id, received_at) \
                 VALUES (?, ?, ?) ON CONFLICT (provider, delivery_id) DO NOTHING",
            ))
            .bind(provider)
            .bind(delivery_id)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        /// The start of an event write (see `Store::apply_event`): records its delivery id
        /// and keeps the events it asks to keep. False, with nothing written, for a delivery
        /// seen before.
        async fn record_event(
            conn: &mut $conn,
            provider: &str,
            write: &$crate::model::EventWrite,
            now_ms: i64,
        ) -> $crate::Result<bool> {
            use $crate::rows::db;
            if let Some(id) = &write.delivery_id
                && !record_delivery(conn, provider, id, now_ms)
                    .await
                    .map_err(db)?
            {
                return Ok(false);
            }
            let sql = $params(
                "INSERT INTO kept_events (provider, delivery_id, event, kept_at, expires_at) \
                 VALUES (?, ?, ?, ?, ?)",
            );
            for (event, expires_at) in &write.keep {
                sqlx::query(&sql)
                    .bind(provider)
                    .bind(&write.delivery_id)
                    .bind($crate::codec::to_json(event, "kept event")?)
                    .bind(now_ms)
                    .bind(expires_at)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
            }
            Ok(true)
        }
    };
}
pub(crate) use same_in_both_writers;
