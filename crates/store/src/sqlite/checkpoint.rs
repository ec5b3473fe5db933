//! WAL checkpoints off the commit path.
//!
//! With SQLite's default `wal_autocheckpoint` (1,000 pages), the commit that crosses the
//! threshold runs the checkpoint itself: it copies the WAL into the database file and fsyncs
//! it, inside the writer's COMMIT, so every caller of that group waits for it (profiles put
//! ~5% of all samples and the tail latency there). Instead, a thread of its own checkpoints from its own
//! connection every [`INTERVAL`] with `PRAGMA wal_checkpoint(PASSIVE)`, which never blocks
//! the writer or the readers (WAL lets a checkpoint run while a writer appends), and the
//! writer's own auto-checkpoint is raised to a backstop that only fires if this thread falls
//! far behind.
//!
//! Durability is unchanged: a commit is durable once its WAL frames are fsynced
//! (`synchronous = FULL` on the writer); the checkpoint only moves committed pages into the
//! database file, and this connection is `synchronous = FULL` too, so SQLite fsyncs the
//! database file before it lets the WAL be reused.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::conn::{Conn, Location};
use super::threads::join_all;
use crate::exec::Exec;
use crate::{Result, StoreError};

/// How often to checkpoint. Not too often: a page that many commits rewrite (the tail of a
/// table, hot index pages) is copied once per checkpoint, so rarer checkpoints copy less; not
/// too rarely either, so that the WAL stays well under the writer's backstop below even at
/// tens of MB/s of writes. A checkpoint with nothing to copy costs a few microseconds.
const INTERVAL: Duration = Duration::from_millis(500);

/// The writer's `wal_autocheckpoint`, in pages (64 MiB at 4 KiB pages): a safety net that
/// only fires if this thread falls far behind.
pub(super) const WRITER_AUTOCHECKPOINT: &str = "16384";

pub(super) struct Checkpointer {
    /// Dropped to stop the thread.
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(location: &Location, busy: Duration) -> Result<Checkpointer> {
        let conn = location.open(busy)?;
        conn.pragma("synchronous", "FULL")?;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("adgate-sqlite-checkpoint".to_owned())
            .spawn(move || run(conn, &stopped))
            .map_err(|e| StoreError::Database(Box::new(e)))?;
        Ok(Checkpointer { stop, thread })
    }

    /// Stops the thread and closes its connection.
    pub(super) async fn stop(self) {
        drop(self.stop);
        join_all("checkpoint", vec![self.thread]).await;
    }
}

fn run(mut conn: Conn, stopped: &mpsc::Receiver<()>) {
    // A message or a dropped sender both mean stop; only a timeout means "tick".
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
        // Returns (busy, log frames, checkpointed frames); PASSIVE never waits, so `busy`
        // only means "try again next tick".
        let done =
            super::conn::block_on(conn.rows("PRAGMA wal_checkpoint(PASSIVE)", &[], |_| Ok(())));
        if let Err(e) = done {
            tracing::warn!(error = %e, "store: WAL checkpoint failed");
        }
    }
}
