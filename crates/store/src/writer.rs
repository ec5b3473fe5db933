//! How both backends' writer tasks answer their callers: one command shape, typed replies.
//!
//! Each backend has one writer task that runs the commands queued up in one transaction
//! (group commit; see `sqlite::writer` and `postgres::writer`). Every command carries its
//! caller's [`Reply`], typed by what that command answers, so a caller can never receive the
//! answer of another kind of command. The writer holds the computed answer in the reply until
//! the group's COMMIT returned, and sends the group's failure instead when it did not commit.
//! A command enum names its variants once in [`replies!`], which gives it [`Replies::reply`]
//! and [`Replies::fail`]: nothing is written per variant and per backend.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

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

/// The channel back to one caller, with the answer computed for it until the COMMIT.
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

/// A command enum of a writer (see [`replies!`]).
pub(crate) trait Replies: Sized {
    /// The command's reply, with whatever it holds.
    fn reply(self) -> Box<dyn Pending>;

    /// Answers a command that will not commit with its group's failure.
    fn fail(self, e: &GroupFailure) {
        self.reply().finish(Some(e));
    }
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
