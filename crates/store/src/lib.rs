//! adgate's durable job store.
//!
//! - [`Store`]: the one trait the engine talks to. Every write that the API acknowledges goes
//!   through it and is on disk before the call returns.
//! - [`sqlite`]: the default backend (rusqlite on threads of its own, WAL, embedded
//!   migrations). Writes from many callers are group-committed by a single writer thread: one
//!   transaction and one fsync serve every call that arrived while the previous commit was
//!   running.
//! - [`postgres`]: the backend for several replicas (sqlx pool, one writer task per replica,
//!   `SKIP LOCKED` claims, leases).
//! - [`model`]: the records the store returns.
//! - `store_impl`: the part of `impl Store` both backends write the same way (the job writes
//!   and the shared reads), expanded by each backend with its own methods.
//! - `reads` and `rows`: the read statements, their functions and the row decoding, written
//!   once as functions over `exec::Exec`, which each backend's connection implements; the
//!   writer statements, custody results, retention step, migration runner and outbox writes
//!   both backends share are written the same way (`writer`, `custody`, `retention`,
//!   `migrate`, `notify`).
//! - [`retention`]: what [`Store::purge`] deletes (old terminal jobs, expired request and
//!   delivery ids) and reports.
//!
//! The trait is written so that both backends implement it without the engine changing:
//! request-id dedupe is decided by a unique constraint inside the write, never by a
//! read-then-write in the caller.

mod codec;
mod custody;
mod exec;
mod migrate;
pub mod model;
pub mod notify;
pub mod postgres;
mod reads;
pub mod retention;
mod rows;
pub mod search;
pub mod sqlite;
mod store_impl;
mod writer;

use async_trait::async_trait;

pub use model::{
    ANONYMOUS, Attempt, CustodyTask, CustodyWrite, DEFAULT_PRIORITY, EventWrite, JobPatch,
    JobRecord, KeptEvent, NewJob, NewSubmission, QueuedEntry, StateCount, StoredCost,
    SubmitOutcome,
};
pub use notify::{BatchNotify, NotifyEndpoint, NotifyOutcome, NotifySettle, OutboxEntry};
pub use postgres::PgStore;
pub use retention::{PurgeCutoffs, Purged};
pub use search::{BatchFilter, BatchSummary, JobFilter, Page, PageKey};
pub use sqlite::SqliteStore;

/// A change committed by any replica, from a shared backend's change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    Changed {
        job_id: String,
        revision: i64,
    },
    /// The feed was interrupted (reconnect): changes may have been missed, so every watcher
    /// must re-read its jobs.
    Gap,
    /// A replica stopped gracefully and gave its lease back ([`Store::release_lease`]): its
    /// jobs are free now, so a live replica should take them over without waiting.
    Released {
        replica: String,
    },
}

/// An in-flight job as a tracker needs it (see [`Store::active_refs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRef {
    pub job_id: String,
    pub provider_ref: String,
    pub poll_key: Option<String>,
}

/// The answer of a shared request budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetGrant {
    Granted,
    /// Refused; try again after this many milliseconds.
    Wait(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
    /// The database could not be reached (connection lost and not regained in time);
    /// nothing of the write was committed, or, when the connection broke during COMMIT, its
    /// outcome is unknown. Retrying later is the remedy.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Opens the store that `url` names: SQLite for `sqlite:` URLs (the default backend),
/// PostgreSQL for `postgres://` and `postgresql://` URLs (several replicas, SPEC §8).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgStore::open(url).await?))
    } else {
        Err(invalid_url("a sqlite: or postgres://", url))
    }
}

/// All times are Unix milliseconds, chosen by the caller (the engine's clock), so tests can
/// drive time and two replicas agree on one format.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Store a batch of new jobs (state QUEUED), deduplicated by `request_id`: the same id with
    /// the same `content_hash` returns the original batch and job ids and stores nothing; with a
    /// different hash it returns [`SubmitOutcome::Conflict`]. Group-committed.
    async fn submit(&self, submission: NewSubmission) -> Result<SubmitOutcome>;

    /// Jobs by id, in no particular order; unknown ids are simply absent.
    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<JobRecord>>;

    /// Every job of a batch in submission order, or `None` when the batch is unknown.
    async fn batch_jobs(&self, batch_id: &str) -> Result<Option<Vec<JobRecord>>>;

    /// QUEUED jobs of a provider that no attempt covers yet, oldest first.
    async fn queued_unassigned(&self, provider: &str, limit: usize) -> Result<Vec<JobRecord>>;

    /// Record a submit attempt (the outbox) and link its jobs to it, before any HTTP call.
    /// Only jobs still QUEUED are linked (one cancelled meanwhile stays out). Returns the
    /// attempt id. Group-committed.
    async fn create_attempt(
        &self,
        provider: &str,
        idempotency_key: &str,
        job_ids: &[String],
        now_ms: i64,
    ) -> Result<i64>;

    /// Attempts of a provider that still have QUEUED jobs (created but never resolved), with
    /// those jobs' ids. Used at start-up to resume or to apply the unknown-outcome rule.
    async fn open_attempts(&self, provider: &str) -> Result<Vec<Attempt>>;

    /// Apply patches in one group-committed transaction. A patch to a terminal job, or one that
    /// changes nothing, is skipped. Each changed job gets `revision + 1` and `updated_at = now`
    /// (and `completed_at` when it becomes terminal). Returns the changed jobs after the change.
    async fn apply(&self, patches: Vec<JobPatch>, now_ms: i64) -> Result<Vec<JobRecord>>;

    /// Non-terminal jobs of a provider that have a provider reference (being tracked).
    async fn active_jobs(&self, provider: &str) -> Result<Vec<JobRecord>>;

    /// What a tracker resumes from — `(job id, provider ref, poll key)` of every job
    /// [`Store::active_jobs`] returns, in the same order — without loading full records (specs,
    /// outputs, labels): at start-up with 100,000 jobs in flight that is the difference between
    /// a few MB and a few hundred MB of transient heap. Backends should override the default,
    /// which loads the full records.
    async fn active_refs(&self, provider: &str) -> Result<Vec<ActiveRef>> {
        Ok(self
            .active_jobs(provider)
            .await?
            .into_iter()
            .filter_map(|j| {
                Some(ActiveRef {
                    provider_ref: j.provider_ref?,
                    poll_key: j.poll_key,
                    job_id: j.id,
                })
            })
            .collect())
    }

    /// The job that a provider reference names.
    async fn find_by_ref(&self, provider: &str, provider_ref: &str) -> Result<Option<JobRecord>>;

    /// Non-terminal jobs with this correlation key that have been sent (or are being sent:
    /// they have an attempt, with or without a provider reference yet), oldest first, at most
    /// `limit`. A push may arrive before the submit's answer, so an attempt is enough; a job
    /// never attempted cannot have produced anything. Whether a candidate still expects
    /// outputs (one image, or one per layout) is the engine's decision.
    async fn correlation_candidates(
        &self,
        provider: &str,
        correlation_key: &str,
        limit: usize,
    ) -> Result<Vec<JobRecord>>;

    /// The first of [`Store::correlation_candidates`].
    async fn find_by_correlation(
        &self,
        provider: &str,
        correlation_key: &str,
    ) -> Result<Option<JobRecord>> {
        Ok(self
            .correlation_candidates(provider, correlation_key, 1)
            .await?
            .into_iter()
            .next())
    }

    /// All jobs sharing a poll key (a Pictify batch).
    async fn jobs_by_poll_key(&self, provider: &str, poll_key: &str) -> Result<Vec<JobRecord>>;

    /// Ids of non-terminal jobs whose deadline is at or before `now_ms`.
    async fn expired(&self, now_ms: i64, limit: usize) -> Result<Vec<String>>;

    /// The earliest deadline of a non-terminal job, if any (one index lookup).
    async fn next_deadline(&self) -> Result<Option<i64>>;

    /// Remember a webhook delivery id and apply the patches it carries, in one transaction:
    /// `None` (and nothing applied) for a delivery seen before, else the changed jobs as
    /// [`Store::apply`] returns them. One transaction, so a delivery is on record exactly when
    /// its changes are: a failed apply leaves the id unrecorded and the provider's retry of the
    /// same delivery is applied, not dropped as a duplicate.
    async fn apply_delivery(
        &self,
        provider: &str,
        delivery_id: &str,
        patches: Vec<JobPatch>,
        now_ms: i64,
    ) -> Result<Option<Vec<JobRecord>>> {
        self.apply_event(
            provider,
            EventWrite {
                delivery_id: Some(delivery_id.to_owned()),
                patches,
                ..EventWrite::default()
            },
            now_ms,
        )
        .await
    }

    /// Everything one provider event writes, in one transaction (see [`EventWrite`]): `None`
    /// (and nothing written) when its delivery id was seen before, else the changed jobs as
    /// [`Store::apply`] returns them. Group-committed.
    async fn apply_event(
        &self,
        provider: &str,
        write: EventWrite,
        now_ms: i64,
    ) -> Result<Option<Vec<JobRecord>>>;

    /// Kept events of a provider, oldest first, at most `limit`.
    async fn kept_events(&self, provider: &str, limit: usize) -> Result<Vec<KeptEvent>>;

    /// Remember a webhook delivery id. True when it was new, false for a duplicate.
    async fn record_delivery(
        &self,
        provider: &str,
        delivery_id: &str,
        now_ms: i64,
    ) -> Result<bool> {
        Ok(self
            .apply_delivery(provider, delivery_id, Vec::new(), now_ms)
            .await?
            .is_some())
    }

    /// Job counts per provider and state, for metrics.
    async fn count_by_state(&self) -> Result<Vec<StateCount>>;

    /// Up to `limit` QUEUED jobs of a provider (unattempted), oldest first, without their
    /// records: what queue positions are computed from.
    async fn queued_entries(&self, provider: &str, limit: usize) -> Result<Vec<QueuedEntry>>;

    /// What `caller` has spent or reserved at `provider` on jobs created since `since_ms`
    /// (the sum of their cost columns: estimates while running, settled when completed, zero
    /// when failed or cancelled), in millionths of `unit`.
    async fn spend_since(
        &self,
        caller: &str,
        provider: &str,
        unit: &str,
        since_ms: i64,
    ) -> Result<i64>;

    /// Jobs matching `filter`, newest first by `(created_at, id)`, at most `limit`, starting
    /// strictly below `after` (the previous page's [`Page::next`]).
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Page<JobRecord>>;

    /// Batches matching `filter`, newest first by `(created_at, id)`, with their jobs'
    /// counts per state and the cost of their completed jobs per unit.
    async fn list_batches(
        &self,
        filter: &BatchFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Page<BatchSummary>>;

    // ---- Outbound webhooks (the outbox: see [`notify`]).

    /// Replace the configured endpoints (from the config, at start-up) that finishing jobs
    /// address. Replicas sharing a store must share their config.
    async fn set_notify_endpoints(&self, endpoints: Vec<NotifyEndpoint>) -> Result<()>;

    /// Up to `limit` deliveries due at `now_ms`, oldest first, each leased until
    /// `now_ms + lease_ms` (a deliverer that dies leaves them due again then).
    async fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>>;

    /// Record what became of claimed deliveries.
    async fn settle_notifications(&self, settles: Vec<NotifySettle>, now_ms: i64) -> Result<()>;

    /// Switch an endpoint off: its due deliveries are parked, and so are later ones as the
    /// deliverer meets them. Returns how many were parked.
    async fn disable_endpoint(&self, endpoint: &str, reason: &str, now_ms: i64) -> Result<u64>;

    /// Endpoints switched off, with why.
    async fn disabled_endpoints(&self) -> Result<Vec<(String, String)>>;

    /// Every delivery of a batch's events due again now (same event ids); the endpoints they
    /// go to are switched on again with their parked deliveries. `None` for an unknown batch,
    /// else how many deliveries were queued.
    async fn redeliver_batch(&self, batch_id: &str, now_ms: i64) -> Result<Option<u64>>;
    // ---- Output custody: copies of completed jobs' outputs (queued by `apply` and
    // `apply_event` when a patch with `keep_outputs` completes a job).

    /// Claim up to `limit` custody tasks that are due (`next_at <= now_ms`), oldest due first,
    /// for `replica` until `now_ms + lease_ms`: no other claim returns them before then (on
    /// PostgreSQL, `FOR UPDATE SKIP LOCKED`, so replicas claiming at once split the work).
    async fn claim_custody(
        &self,
        replica: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<CustodyTask>>;

    /// At start-up: custody tasks claimed by `replica`'s previous run (on SQLite, by anyone:
    /// one process owns the file) are due again now rather than when that claim runs out.
    async fn release_custody(&self, replica: &str, now_ms: i64) -> Result<()>;

    /// Record one custody attempt: the settled outputs' custody fields, and the task retried
    /// at `retry_at_ms` or removed. The narrow change a COMPLETED job accepts (its state and
    /// every other field stay): the job's revision goes up by one and `updated_at` to `now_ms`
    /// when an output changed. Returns the job after the change, `None` when nothing changed.
    async fn finish_custody(&self, write: CustodyWrite, now_ms: i64) -> Result<Option<JobRecord>>;
    /// One retention step (see [`retention`]): deletes at most `limit` terminal jobs that
    /// became terminal before `cutoffs.jobs_completed_before_ms` (oldest first) with their
    /// attempts and batches once those have no job left, at most `limit` request ids and at
    /// most `limit` delivery ids older than their cutoffs, in one short transaction. The
    /// caller repeats while [`Purged::maybe_more`] says so, letting other writes in between.
    async fn purge(&self, cutoffs: PurgeCutoffs, limit: usize) -> Result<Purged>;

    /// Gives up to `pages` free database pages back to the file system and returns how many
    /// free pages remain (the caller repeats while that is not 0). SQLite's incremental
    /// vacuum; backends whose server reclaims space itself (PostgreSQL's autovacuum) keep
    /// the default, which does nothing.
    async fn reclaim_space(&self, _pages: u32) -> Result<u64> {
        Ok(0)
    }

    /// Number of write transactions committed so far (group-commit observability).
    fn commit_count(&self) -> u64;

    // ---- Several replicas on one database (SPEC §8). Single-process backends keep the
    // defaults: one process owns everything, its budget is local and its bus sees every change.

    /// True for backends that several replicas share. The engine then claims work by lease,
    /// takes over orphans, shares provider budgets through the store and follows the feed.
    fn is_shared(&self) -> bool {
        false
    }

    /// Claim up to `limit` QUEUED jobs of a provider that no attempt covers and that no other
    /// live replica owns (`SELECT … FOR UPDATE SKIP LOCKED`): unowned jobs, jobs whose owner's
    /// lease expired, and jobs `replica` already owns (it may have left some for a later call).
    /// They become owned by `replica`. Claiming is a sign of life: `replica`'s lease is
    /// extended to at least `now_ms + lease_ms`.
    async fn claim_queued(
        &self,
        provider: &str,
        _replica: &str,
        _now_ms: i64,
        _lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        self.queued_unassigned(provider, limit).await
    }

    /// The heartbeat: extend `replica`'s lease (which covers every job it owns) to
    /// `now_ms + lease_ms`. Returns how many non-terminal jobs it owns.
    async fn renew_leases(&self, _replica: &str, _now_ms: i64, _lease_ms: i64) -> Result<u64> {
        Ok(0)
    }

    /// Take over non-terminal jobs of a provider whose owner's lease has expired and that
    /// either have a provider reference (to track) or an attempt (to resume or fail).
    async fn claim_orphans(
        &self,
        _provider: &str,
        _replica: &str,
        _now_ms: i64,
        _lease_ms: i64,
        _limit: usize,
    ) -> Result<Vec<JobRecord>> {
        Ok(Vec::new())
    }

    /// At start-up of a replica with a stable identity: the non-terminal jobs `replica`
    /// already owns (left by its previous run) that have a provider reference or an attempt,
    /// locked as [`Store::claim_orphans`] locks them so that a replica taking them over at the
    /// same moment gets each job or this one does, never both. Extends `replica`'s lease.
    async fn claim_own(
        &self,
        _provider: &str,
        _replica: &str,
        _now_ms: i64,
        _lease_ms: i64,
    ) -> Result<Vec<JobRecord>> {
        Ok(Vec::new())
    }

    /// A graceful goodbye: `replica`'s lease lapses at once, so live and starting replicas
    /// take its jobs over without waiting for it to expire, and announce it on the change
    /// feed ([`FeedEvent::Released`]). Final for this handle: it no longer extends `replica`'s
    /// lease (renewals and claims in flight are waited for; later ones do nothing).
    async fn release_lease(&self, _replica: &str, _now_ms: i64) -> Result<()> {
        Ok(())
    }

    /// Make `replica` this process's identity among the replicas sharing the store, for as
    /// long as the handle (or the process) lives. False when another live process holds it.
    async fn claim_identity(&self, _replica: &str) -> Result<bool> {
        Ok(true)
    }

    /// Count one request against a provider's fleet-wide rolling window of `limit` requests
    /// per `window_ms`, atomically across replicas; also refuses while a block is in force.
    async fn take_budget(
        &self,
        _provider: &str,
        _limit: u32,
        _window_ms: i64,
        _now_ms: i64,
        _waiter: &str,
    ) -> Result<BudgetGrant> {
        Ok(BudgetGrant::Granted)
    }

    /// Refuse every replica's requests to a provider until `until_ms` (a 429's Retry-After).
    async fn block_budget(&self, _provider: &str, _until_ms: i64) -> Result<()> {
        Ok(())
    }

    /// Changes committed by any replica (LISTEN/NOTIFY), or `None` for a single process.
    async fn change_feed(&self) -> Result<Option<tokio::sync::mpsc::Receiver<FeedEvent>>> {
        Ok(None)
    }

    /// Flush and stop the writer; later writes fail with [`StoreError::Closed`].
    async fn close(&self);
}

/// The error for a URL of another scheme than `expected`; names only the scheme it got, since
/// the rest of a URL may hold a password.
pub(crate) fn invalid_url(expected: &str, url: &str) -> StoreError {
    StoreError::InvalidUrl(format!(
        "expected {expected} URL, got {:?}",
        url.split(':').next().unwrap_or_default()
    ))
}

/// A backend's `Debug`: its name and commit count, never its connection settings.
pub(crate) fn debug_store(
    f: &mut std::fmt::Formatter<'_>,
    name: &str,
    commits: &std::sync::atomic::AtomicU64,
) -> std::fmt::Result {
    f.debug_struct(name)
        .field(
            "commits",
            &commits.load(std::sync::atomic::Ordering::Relaxed),
        )
        .finish_non_exhaustive()
}
