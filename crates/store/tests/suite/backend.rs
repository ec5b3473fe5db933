//! The tests every backend runs, declared once: [`Backend`] is what a backend's test file
//! supplies (a fresh database, a store opened on it, raw SQL for corrupting rows), and
//! [`backend_tests!`] expands one `#[tokio::test]` per shared check for it.

use std::sync::Arc;

use adgate_store::{Store, StoreError};

/// A database of its own for one test, and how to open a store on it. Dropping it removes
/// the database.
#[allow(async_fn_in_trait)]
pub trait Backend: Sized {
    type Store: Store + 'static;
    async fn create() -> Self;
    async fn open(&self) -> Self::Store;
    /// Runs statements on the database directly, beside the store.
    async fn execute_raw(&self, statements: &[&str]);
}

/// A fresh database and a store on it.
pub async fn fresh<B: Backend>() -> (B, B::Store) {
    let db = B::create().await;
    let store = db.open().await;
    (db, store)
}

pub async fn persistence_across_reopen<B: Backend>() {
    let db = B::create().await;
    let db = &db;
    super::persistence(|| async move { Arc::new(db.open().await) as Arc<dyn Store> }).await;
}

pub async fn with_shared_store<B: Backend, F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future,
{
    let (_db, store) = fresh::<B>().await;
    let store: Arc<dyn Store> = Arc::new(store);
    check(Arc::clone(&store)).await;
    store.close().await;
}

/// Writes queued before `close()` are flushed and on disk; later writes and reads fail with
/// `Closed`.
pub async fn close_flushes_then_rejects_writes<B: Backend>() {
    let (db, store) = fresh::<B>().await;
    super::close_then_write(&store).await;
    let read = store.get_jobs(&["job_1".to_owned()]).await;
    assert!(matches!(read, Err(StoreError::Closed)), "{read:?}");
    drop(store);

    let store = db.open().await;
    let jobs = store
        .batch_jobs("batch_1")
        .await
        .expect("batch")
        .expect("flushed");
    assert_eq!(jobs.len(), 1);
    assert_eq!(store.batch_jobs("batch_2").await.expect("batch"), None);
    store.close().await;
}

pub async fn corrupt_rows_are_reported_not_panicked_on<B: Backend>() {
    let (db, store) = fresh::<B>().await;
    super::corrupt_rows_are_reported(&store, || db.execute_raw(&super::CORRUPTING)).await;
    store.close().await;
}

/// One `#[tokio::test]` per conformance function (each on a fresh database) and per shared
/// check above, for the backend `$backend` (a type implementing [`Backend`]).
macro_rules! backend_tests {
    ($backend:ty) => {
        $crate::suite::backend_tests!(@each $backend;
            submit_and_read,
            get_many_jobs,
            request_id_dedupe,
            apply_semantics,
            attempts_and_queue,
            tracking_lookups,
            expiry,
            webhook_deliveries,
            kept_events,
            cancel_and_attempt_race,
            counts,
            failing_command_is_isolated,
            coalesced_group_mixes_replays_conflicts_and_fresh_submits,
            attempt_key_reuse,
            single_replica_claims,
            provider_results_round_trip,
            callers_costs_and_fair_queue,
            search_filters,
            search_pagination_under_inserts,
            search_pages_while_writing,
            search_batches,
            notify_outbox,
            custody_queue,
            retention_deletes_old_terminal_jobs,
            retention_steps_are_bounded,
            request_ids_expire,
            delivery_ids_expire,
        );
        $crate::suite::backend_tests!(@shared $backend;
            retention_beside_submits,
            group_commit,
            single_job_submits_from_64_callers,
        );
        $crate::suite::backend_tests!(@own $backend;
            persistence_across_reopen,
            close_flushes_then_rejects_writes,
            corrupt_rows_are_reported_not_panicked_on,
        );
    };
    (@each $backend:ty; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_db, store) = $crate::suite::backend::fresh::<$backend>().await;
            $crate::suite::$name(&store).await;
            adgate_store::Store::close(&store).await;
        }
    )*};
    (@shared $backend:ty; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            $crate::suite::backend::with_shared_store::<$backend, _, _>(|store| async move {
                $crate::suite::$name(store).await;
            })
            .await;
        }
    )*};
    (@own $backend:ty; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            $crate::suite::backend::$name::<$backend>().await;
        }
    )*};
}
pub(crate) use backend_tests;
