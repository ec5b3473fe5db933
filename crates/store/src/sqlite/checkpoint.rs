//! WAL checkpoints off the commit path.
//!
//! With SQLite's default `wal_autocheckpoint` (1,000 pages), the commit that crosses the
//! threshold runs the checkpoint itself: it copies the WAL into the database file and fsyncs
//! it, inside the writer's COMMIT, so every caller of that group waits for it (profiles put
//! ~5% of all samples and the tail latency there). Instead, this task checkpoints from its own
//! connection every [`INTERVAL`] with `PRAGMA wal_checkpoint(PASSIVE)`, which never blocks
//! the writer or the readers (WAL lets a checkpoint run while a writer appends), and the
//! writer's own auto-checkpoint is raised to a backstop that only fires if this task falls
//! far behind.
//!
//! Durability is unchanged: a commit is durable once its WAL frames are fsynced
//! (`synchronous = FULL` on the writer); the checkpoint only moves committed pages into the
//! database file, and this connection is `synchronous = FULL` too, so SQLite fsyncs the
//! database file before it lets the WAL be reused.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::rows::db;
use crate::Result;

/// How often to checkpoint. Not too often: a page that many commits rewrite (the tail of a
/// table, hot index pages) is copied once per checkpoint, so rarer checkpoints copy less; not
/// too rarely either, so that the WAL stays well under the writer's backstop below even at
/// tens of MB/s of writes. A checkpoint with nothing to copy costs a few microseconds.
const INTERVAL: Duration = Duration::from_millis(500);

/// The writer's `wal_autocheckpoint`, in pages (64 MiB at 4 KiB pages): a safety net that
/// only fires if this task falls far behind.
pub(super) const WRITER_AUTOCHECKPOINT: &str = "16384";

pub(super) struct Checkpointer {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl Checkpointer {
    pub(super) async fn start(options: &SqliteConnectOptions) -> Result<Checkpointer> {
        let conn = options
            .clone()
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await
            .map_err(db)?;
        let (stop, stopped) = oneshot::channel();
        let handle = tokio::spawn(run(conn, stopped));
        Ok(Checkpointer { stop, handle })
    }

    /// Stops the task and closes its connection. (Dropping the `Checkpointer` stops it too:
    /// the task also ends when `stop` is dropped.)
    pub(super) async fn stop(self) {
        // Err means the task is gone already, which is what we want.
        let _ = self.stop.send(());
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "store checkpoint task failed");
        }
    }
}

async fn run(mut conn: SqliteConnection, mut stopped: oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tick.tick() => {
                if let Err(e) = checkpoint(&mut conn).await {
                    tracing::warn!(error = %e, "store: WAL checkpoint failed");
                }
            }
        }
    }
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the checkpoint connection failed");
    }
}

async fn checkpoint(conn: &mut SqliteConnection) -> std::result::Result<(), sqlx::Error> {
    // Returns (busy, log frames, checkpointed frames); PASSIVE never waits, so `busy` only
    // means "try again next tick".
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_all(&mut *conn)
        .await
        .map(drop)
}
