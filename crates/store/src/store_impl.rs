//! The parts of `impl Store` that both backends write the same way, as one macro
//! ([`impl_store!`]) each backend expands with its own methods.
//!
//! A macro rather than a supertrait with a blanket impl: `Store` is one public trait that
//! callers use as `dyn Store`, and `#[async_trait]` must see every method in the same impl.

use std::future::Future;
use std::pin::Pin;

/// What a backend's `with_reader` runs: a read over a connection it lends for the read's
/// duration.
pub(crate) type Read<'c, T> = Pin<Box<dyn Future<Output = crate::Result<T>> + Send + 'c>>;

/// `impl Store for $store`, with what both backends do the same way written once:
/// - the job writes: each builds its `writer::Op` and sends it through the backend's
///   `write_op` (its writer channel);
/// - the reads of `crate::reads`: each runs on a connection the backend's `with_reader` lends
///   (SQLite: on a read thread; PostgreSQL: from its pool). The arguments are owned because a
///   SQLite read runs on another thread.
///
/// The methods given in the braces are the backend's own.
macro_rules! impl_store {
    ($store:ty { $($rest:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::Store for $store {
            async fn submit(
                &self,
                submission: $crate::model::NewSubmission,
            ) -> $crate::Result<$crate::model::SubmitOutcome> {
                self.write_op(|reply| $crate::writer::Op::Submit { submission, reply })
                    .await
            }

            async fn create_attempt(
                &self,
                provider: &str,
                idempotency_key: &str,
                job_ids: &[String],
                now_ms: i64,
            ) -> $crate::Result<i64> {
                self.write_op(|reply| $crate::writer::Op::CreateAttempt {
                    provider: provider.to_owned(),
                    idempotency_key: idempotency_key.to_owned(),
                    job_ids: job_ids.to_vec(),
                    now_ms,
                    reply,
                })
                .await
            }

            async fn apply(
                &self,
                patches: Vec<$crate::model::JobPatch>,
                now_ms: i64,
            ) -> $crate::Result<Vec<$crate::model::JobRecord>> {
                if patches.is_empty() {
                    return Ok(Vec::new());
                }
                self.write_op(|reply| $crate::writer::Op::Apply {
                    patches,
                    now_ms,
                    reply,
                })
                .await
            }

            async fn apply_event(
                &self,
                provider: &str,
                write: $crate::model::EventWrite,
                now_ms: i64,
            ) -> $crate::Result<Option<Vec<$crate::model::JobRecord>>> {
                self.write_op(|reply| $crate::writer::Op::RecordDelivery {
                    provider: provider.to_owned(),
                    write,
                    now_ms,
                    reply,
                })
                .await
            }

            async fn finish_custody(
                &self,
                write: $crate::model::CustodyWrite,
                now_ms: i64,
            ) -> $crate::Result<Option<$crate::model::JobRecord>> {
                self.write_op(|reply| $crate::writer::Op::FinishCustody {
                    write,
                    now_ms,
                    reply,
                })
                .await
                .map(|job| job.map(|j| *j))
            }


            async fn batch_jobs(&self, batch_id: &str) -> $crate::Result<Option<Vec<$crate::model::JobRecord>>> {
                let batch_id = batch_id.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::batch_jobs(conn, &batch_id).await })
                })
                .await
            }

            async fn queued_unassigned(&self, provider: &str, limit: usize) -> $crate::Result<Vec<$crate::model::JobRecord>> {
                let provider = provider.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::queued_unassigned(conn, &provider, limit).await })
                })
                .await
            }

            async fn open_attempts(&self, provider: &str) -> $crate::Result<Vec<$crate::model::Attempt>> {
                let provider = provider.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::open_attempts(conn, &provider).await })
                })
                .await
            }

            async fn active_jobs(&self, provider: &str) -> $crate::Result<Vec<$crate::model::JobRecord>> {
                let provider = provider.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::active_jobs(conn, &provider).await })
                })
                .await
            }

            async fn active_refs(&self, provider: &str) -> $crate::Result<Vec<$crate::ActiveRef>> {
                let provider = provider.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::active_refs(conn, &provider).await })
                })
                .await
            }

            async fn find_by_ref(&self, provider: &str, provider_ref: &str) -> $crate::Result<Option<$crate::model::JobRecord>> {
                let provider = provider.to_owned();
                let provider_ref = provider_ref.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::find_by_ref(conn, &provider, &provider_ref).await })
                })
                .await
            }

            async fn correlation_candidates(&self, provider: &str, correlation_key: &str, limit: usize) -> $crate::Result<Vec<$crate::model::JobRecord>> {
                let provider = provider.to_owned();
                let correlation_key = correlation_key.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::correlation_candidates(conn, &provider, &correlation_key, limit).await })
                })
                .await
            }

            async fn jobs_by_poll_key(&self, provider: &str, poll_key: &str) -> $crate::Result<Vec<$crate::model::JobRecord>> {
                let provider = provider.to_owned();
                let poll_key = poll_key.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::jobs_by_poll_key(conn, &provider, &poll_key).await })
                })
                .await
            }

            async fn expired(&self, now_ms: i64, limit: usize) -> $crate::Result<Vec<String>> {
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::expired(conn, now_ms, limit).await })
                })
                .await
            }

            async fn next_deadline(&self) -> $crate::Result<Option<i64>> {
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::next_deadline(conn).await })
                })
                .await
            }

            async fn kept_events(&self, provider: &str, limit: usize) -> $crate::Result<Vec<$crate::model::KeptEvent>> {
                let provider = provider.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::kept_events(conn, &provider, limit).await })
                })
                .await
            }

            async fn spend_since(&self, caller: &str, provider: &str, unit: &str, since_ms: i64) -> $crate::Result<i64> {
                let caller = caller.to_owned();
                let provider = provider.to_owned();
                let unit = unit.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::spend_since(conn, &caller, &provider, &unit, since_ms).await })
                })
                .await
            }

            async fn queued_entries(&self, provider: &str, limit: usize) -> $crate::Result<Vec<$crate::model::QueuedEntry>> {
                let provider = provider.to_owned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::queued_entries(conn, &provider, limit).await })
                })
                .await
            }

            async fn count_by_state(&self) -> $crate::Result<Vec<$crate::model::StateCount>> {
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::count_by_state(conn).await })
                })
                .await
            }

            async fn list_jobs(&self, filter: &$crate::JobFilter, after: Option<&$crate::PageKey>, limit: usize) -> $crate::Result<$crate::Page<$crate::model::JobRecord>> {
                let filter = filter.clone();
                let after = after.cloned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::list_jobs(conn, &filter, after.as_ref(), limit).await })
                })
                .await
            }

            async fn list_batches(&self, filter: &$crate::BatchFilter, after: Option<&$crate::PageKey>, limit: usize) -> $crate::Result<$crate::Page<$crate::BatchSummary>> {
                let filter = filter.clone();
                let after = after.cloned();
                self.with_reader(move |conn| {
                    Box::pin(async move { $crate::reads::list_batches(conn, &filter, after.as_ref(), limit).await })
                })
                .await
            }

            $($rest)*
        }
    };
}
pub(crate) use impl_store;
