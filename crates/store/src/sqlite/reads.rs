//! The read connections: a fixed set of `query_only` connections behind a semaphore.
//!
//! Why not `sqlx::SqlitePool`: its `acquire` pings the connection before handing it out
//! (`test_before_acquire`) and pings it again, from a spawned task, when it is returned. With
//! SQLite each ping is a round trip to the connection's worker thread, so a one-row `GetJob`
//! cost three cross-thread hand-offs and a task spawn instead of one. The pings guard against
//! network connections that died while idle; a SQLite connection is an open file and does not
//! die that way, and a failing query reports its own error.
//!
//! Cancellation is safe: if a caller drops its future mid-query, sqlx's worker thread still
//! finishes or abandons the statement and resets it (so no read transaction stays open and
//! pins an old snapshot), and any later command on the connection queues behind it.

use std::sync::{Mutex, PoisonError};

use sqlx::ConnectOptions;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::rows::db;
use crate::{Result, StoreError};

pub(super) struct ReadPool {
    /// Connections not in use. Invariant: one per available permit, so a caller holding a
    /// permit always finds one here (a guard returns its connection before its permit).
    idle: Mutex<Vec<SqliteConnection>>,
    permits: Semaphore,
    size: u32,
}

impl ReadPool {
    /// Opens `size` connections up front (a few file handles; no lazy-connect latency on the
    /// first reads).
    pub(super) async fn open(options: &SqliteConnectOptions, size: u32) -> Result<ReadPool> {
        let mut idle = Vec::with_capacity(size as usize);
        for _ in 0..size {
            match options.connect().await {
                Ok(conn) => idle.push(conn),
                Err(e) => {
                    for conn in idle {
                        drop(conn.close().await);
                    }
                    return Err(db(e));
                }
            }
        }
        Ok(ReadPool {
            idle: Mutex::new(idle),
            permits: Semaphore::new(size as usize),
            size,
        })
    }

    /// A connection for one read; waits (fairly) while all are in use. `Closed` after `close`.
    pub(super) async fn get(&self) -> Result<ReadConn<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let conn = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .ok_or(StoreError::Closed)?;
        Ok(ReadConn {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    /// Waits for every read in flight, then closes the connections; later reads fail with
    /// [`StoreError::Closed`]. Harmless when called twice.
    pub(super) async fn close(&self) {
        // All permits = no reader left. A second `close` gets `Err` here (closed) and returns.
        let Ok(all) = self.permits.acquire_many(self.size).await else {
            return;
        };
        self.permits.close();
        drop(all);
        let conns = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for conn in conns {
            if let Err(e) = conn.close().await {
                tracing::debug!(error = %e, "closing a read connection failed");
            }
        }
    }
}

/// A borrowed read connection; goes back to the pool on drop.
pub(super) struct ReadConn<'a> {
    pool: &'a ReadPool,
    conn: Option<SqliteConnection>,
    // Dropped after `drop` below has returned the connection (fields drop after the body).
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for ReadConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        // Only `drop` takes it.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}
