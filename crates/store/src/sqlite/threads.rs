//! The read threads: a fixed set of `query_only` connections, each owned by a thread of its
//! own, taking reads from one queue.
//!
//! A read is a closure over a [`Conn`], sent with a oneshot for its answer: one hand-off to
//! the thread and one back, however many statements the read runs, where sqlx's driver made
//! two per statement. In WAL mode readers never block the writer nor each other, and each
//! read sees the last committed state, which includes every acknowledged write.
//!
//! A caller that stops waiting (its future dropped) does not cancel its read: the thread
//! finishes it and the answer is dropped. Every statement is reset when its cached handle is
//! returned, so no read transaction stays open and pins an old snapshot.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::conn::Conn;
use crate::{Result, StoreError};

type ReadJob = Box<dyn FnOnce(&mut Conn) + Send>;

pub(super) struct ReadThreads {
    /// `None` once closed: later reads fail with [`StoreError::Closed`].
    queue: Mutex<Option<mpsc::Sender<ReadJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ReadThreads {
    /// Starts one thread per connection.
    pub(super) fn start(conns: Vec<Conn>) -> Result<ReadThreads> {
        let (queue, jobs) = mpsc::channel::<ReadJob>();
        let jobs = Arc::new(Mutex::new(jobs));
        let mut threads = Vec::with_capacity(conns.len());
        for (i, mut conn) in conns.into_iter().enumerate() {
            let jobs = Arc::clone(&jobs);
            let spawned = std::thread::Builder::new()
                .name(format!("adgate-sqlite-read-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job, so one
                        // idle thread waits on the queue and the others on the lock.
                        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match next {
                            Ok(job) => job(&mut conn),
                            // Every sender is gone: closed, and the queue is drained.
                            Err(mpsc::RecvError) => break,
                        }
                    }
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    // The started threads end when `queue` is dropped on return.
                    return Err(StoreError::Database(Box::new(e)));
                }
            }
        }
        Ok(ReadThreads {
            queue: Mutex::new(Some(queue)),
            threads: Mutex::new(threads),
        })
    }

    /// Runs `read` on a read connection and returns its answer.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| drop(tx.send(read(conn))));
        {
            let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let queue = queue.as_ref().ok_or(StoreError::Closed)?;
            queue.send(job).map_err(|_| StoreError::Closed)?;
        }
        // A dropped sender means the thread died mid-read (a panic): report it as closed
        // rather than waiting forever.
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets the reads already queued finish, then stops the threads and closes their
    /// connections; later reads fail with [`StoreError::Closed`]. Harmless when called twice.
    pub(super) async fn close(&self) {
        drop(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        join_all("read", threads).await;
    }
}

/// Waits, off the async threads, for `threads` to end.
pub(super) async fn join_all(what: &'static str, threads: Vec<JoinHandle<()>>) {
    if threads.is_empty() {
        return;
    }
    let joined = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(JoinHandle::join)
            .filter(|joined| joined.is_err())
            .count()
    })
    .await;
    match joined {
        Ok(0) => {}
        Ok(panicked) => tracing::error!(panicked, what, "store threads panicked"),
        Err(e) => tracing::error!(error = %e, what, "waiting for store threads failed"),
    }
}
