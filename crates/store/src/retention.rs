//! What retention deletes and what one step of it reports (see [`crate::Store::purge`]).
//!
//! Both backends delete in steps of a bounded number of rows, each step one short transaction
//! driven by an index range scan, so a pass over a large backlog never holds the SQLite writer
//! or a PostgreSQL row lock for long: Submits interleave between steps. The engine chooses the
//! ages (configuration) and drives the steps (`adgate_engine`'s retention task). The step
//! itself, [`purge_step`], is written once over each backend's [`PurgeSql`].

#![expect(
    clippy::manual_async_fn,
    reason = "an `async fn` generic over `Exec` makes each caller prove its future `Send` for every lifetime, which rustc cannot (rust-lang/rust#100013); a declared `impl Future + Send` is proven here once"
)]

use std::collections::BTreeSet;
use std::future::Future;

use crate::Result;
use crate::exec::{Cols, Exec, args};

/// Age limits of one retention step, as Unix milliseconds: rows older than these go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeCutoffs {
    /// Terminal jobs (COMPLETED, FAILED, CANCELLED) that became terminal before this are
    /// deleted, with the attempts and batches that no longer have any job. A job that is not
    /// terminal is never deleted, however old.
    pub jobs_completed_before_ms: i64,
    /// Submit request ids claimed before this expire: a replay afterwards is a new request.
    pub request_ids_before_ms: i64,
    /// Inbound webhook delivery ids first received before this are forgotten.
    pub deliveries_before_ms: i64,
}

/// Rows one step (or a whole pass) deleted, by table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub jobs: u64,
    pub attempts: u64,
    pub batches: u64,
    pub request_ids: u64,
    pub deliveries: u64,
}

impl Purged {
    /// Every row deleted.
    pub fn total(&self) -> u64 {
        self.jobs + self.attempts + self.batches + self.request_ids + self.deliveries
    }

    /// True when a step with this `limit` may have left rows behind: one of the age-driven
    /// deletions was cut off at the limit. (Attempts and batches follow their jobs.)
    pub fn maybe_more(&self, limit: usize) -> bool {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        self.jobs >= limit || self.request_ids >= limit || self.deliveries >= limit
    }

    /// Adds another step's counts to these.
    pub fn add(&mut self, other: &Purged) {
        self.jobs += other.jobs;
        self.attempts += other.attempts;
        self.batches += other.batches;
        self.request_ids += other.request_ids;
        self.deliveries += other.deliveries;
    }
}

/// Ids a retention step deletes by, bound as one parameter (see [`PurgeSql::delete_named`]).
pub(crate) enum Ids<'a> {
    Attempts(&'a BTreeSet<i64>),
    Batches(&'a BTreeSet<String>),
}

/// What a retention step needs of a backend beyond [`Exec`]: its statements, and a way to
/// bind a set of ids as one parameter (a JSON array on SQLite; on PostgreSQL an array, which
/// an [`crate::exec::Arg`] cannot carry).
pub(crate) trait PurgeSql: Exec {
    /// Old terminal jobs (a cutoff and a limit), `RETURNING batch_id, attempt_id`.
    const DELETE_JOBS: &'static str;
    /// Attempts of a set of ids that no job names any more.
    const DELETE_ATTEMPTS: &'static str;
    /// Batches of a set of ids that have no job left.
    const DELETE_BATCHES: &'static str;
    /// Outbox rows of a set of batch ids whose batch is gone.
    const DELETE_OUTBOX: &'static str;
    /// Request ids before a cutoff, up to a limit.
    const DELETE_REQUEST_IDS: &'static str;
    /// Webhook delivery ids before a cutoff, up to a limit.
    const DELETE_DELIVERIES: &'static str;

    /// Runs `sql` with `ids` as its one parameter; the number of rows it deleted.
    fn delete_named<'a>(
        &'a mut self,
        sql: &'static str,
        ids: Ids<'a>,
    ) -> impl Future<Output = Result<u64>> + Send + 'a;
}

/// The batches and attempts named by the job rows a retention step deleted
/// (`RETURNING batch_id, attempt_id`).
fn named_by_deleted(row: &dyn Cols) -> Result<(String, Option<i64>)> {
    Ok((row.text(0)?, row.opt_int(1)?))
}

/// One bounded retention step inside the caller's transaction.
pub(crate) fn purge_step<E: PurgeSql>(
    conn: &mut E,
    cutoffs: PurgeCutoffs,
    limit: i64,
) -> impl Future<Output = Result<Purged>> + Send {
    async move {
        let args = args![cutoffs.jobs_completed_before_ms, limit];
        let gone = conn.rows(E::DELETE_JOBS, &args, named_by_deleted).await?;
        let mut purged = Purged {
            jobs: u64::try_from(gone.len()).unwrap_or(u64::MAX),
            ..Purged::default()
        };
        if !gone.is_empty() {
            let mut batches = BTreeSet::new();
            let mut attempts = BTreeSet::new();
            for (batch, attempt) in gone {
                batches.insert(batch);
                attempts.extend(attempt);
            }
            if !attempts.is_empty() {
                purged.attempts = conn
                    .delete_named(E::DELETE_ATTEMPTS, Ids::Attempts(&attempts))
                    .await?;
            }
            purged.batches = conn
                .delete_named(E::DELETE_BATCHES, Ids::Batches(&batches))
                .await?;
            conn.delete_named(E::DELETE_OUTBOX, Ids::Batches(&batches))
                .await?;
        }
        for (sql, cutoff, count) in [
            (
                E::DELETE_REQUEST_IDS,
                cutoffs.request_ids_before_ms,
                &mut purged.request_ids,
            ),
            (
                E::DELETE_DELIVERIES,
                cutoffs.deliveries_before_ms,
                &mut purged.deliveries,
            ),
        ] {
            *count = conn.execute(sql, &args![cutoff, limit]).await?;
        }
        Ok(purged)
    }
}
