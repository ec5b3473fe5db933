//! Retention on PostgreSQL: one bounded delete step in one short transaction.
//!
//! Unlike SQLite, PostgreSQL lets this run beside the writer: the step uses a pool connection,
//! never the writer's, and only locks the old rows it deletes (`FOR UPDATE SKIP LOCKED`, so it
//! never waits for a row the writer holds, and the writer never touches old terminal rows
//! except to skip a patch). Each step is one transaction of at most `limit` rows of each
//! kind, a few milliseconds: no long transaction holds back the xmin horizon, so autovacuum can
//! reclaim the deleted rows' space as soon as it runs (migration 0009 lowers the jobs-related
//! tables' `autovacuum_vacuum_scale_factor` to 0.02 and relies on everything else — autovacuum
//! on, its naptime and cost limits — being the server's defaults).
//!
//! Replicas run retention each on its own schedule; a transaction-level advisory lock lets one
//! step run at a time across the fleet. Two concurrent steps would otherwise each delete some
//! jobs of a batch and each still see the other's uncommitted jobs, so neither would delete the
//! emptied batch. A step that finds the lock taken does nothing and reports nothing deleted:
//! another replica is deleting.
//!
//! Every statement is an index range scan (the `retention_plans` test in
//! `tests/postgres.rs` checks [`PLANNED`] with `EXPLAIN` on a table with enough rows for the
//! planner to choose freely).

use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool};

use super::rows::{db, sql_limit};
use crate::Result;
use crate::retention::{Ids, PurgeCutoffs, PurgeSql, Purged, purge_step};

const LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtext('adgate.retention'))";

// `= ANY(ARRAY(subquery))`, not `IN (subquery)`: the subquery becomes an init plan whose
// few hundred ids the outer delete looks up by primary key. With `IN`, the planner may join
// the subquery against a sequential scan of the whole table (measured: a hash semi-join over
// `jobs` with 20,000 rows, caught by the `retention_plans` test).
pub const DELETE_JOBS: &str = "DELETE FROM jobs WHERE id = ANY(ARRAY(\
         SELECT id FROM jobs WHERE state IN (3, 4, 5) AND completed_at < $1 \
         ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED)) \
     RETURNING batch_id, attempt_id";

/// Runs after `DELETE_JOBS` in the same transaction, so it sees those jobs gone.
pub const DELETE_ATTEMPTS: &str = "DELETE FROM attempts a WHERE a.id = ANY($1::bigint[]) \
     AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.attempt_id = a.id)";

pub const DELETE_BATCHES: &str = "DELETE FROM batches b WHERE b.id = ANY($1::text[]) \
     AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)";

/// Outbound-webhook rows of the batches just deleted (the events go with their batch).
pub const DELETE_OUTBOX: &str = "DELETE FROM notify_outbox o WHERE o.batch_id = ANY($1::text[]) \
     AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = o.batch_id)";

pub const DELETE_REQUEST_IDS: &str = "DELETE FROM request_ids WHERE request_id = ANY(ARRAY(\
         SELECT request_id FROM request_ids WHERE created_at < $1 \
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// By `ctid` (a two-column key has no array form): the rows are locked by the subquery, so
/// their `ctid` cannot change before the delete, which finds them with a TID scan.
pub const DELETE_DELIVERIES: &str = "DELETE FROM webhook_deliveries WHERE ctid = ANY(ARRAY(\
         SELECT ctid FROM webhook_deliveries WHERE received_at < $1 \
         ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// Each statement with the index its plan must use (the age-driven ones) or the indexes
/// that check for remaining jobs (attempts, batches).
pub const PLANNED: &[(&str, &str)] = &[
    (DELETE_JOBS, "jobs_retention"),
    (DELETE_ATTEMPTS, "jobs_attempt"),
    (DELETE_BATCHES, "jobs_batch_seq"),
    (DELETE_REQUEST_IDS, "request_ids_created"),
    (DELETE_DELIVERIES, "webhook_deliveries_received"),
];

impl PurgeSql for PgConnection {
    const DELETE_JOBS: &'static str = DELETE_JOBS;
    const DELETE_ATTEMPTS: &'static str = DELETE_ATTEMPTS;
    const DELETE_BATCHES: &'static str = DELETE_BATCHES;
    const DELETE_OUTBOX: &'static str = DELETE_OUTBOX;
    const DELETE_REQUEST_IDS: &'static str = DELETE_REQUEST_IDS;
    const DELETE_DELIVERIES: &'static str = DELETE_DELIVERIES;

    /// The ids as one array parameter.
    async fn delete_named(&mut self, sql: &'static str, ids: Ids<'_>) -> Result<u64> {
        let query = match ids {
            Ids::Attempts(ids) => sqlx::query(sql).bind(ids.iter().copied().collect::<Vec<_>>()),
            Ids::Batches(ids) => sqlx::query(sql).bind(ids.iter().cloned().collect::<Vec<_>>()),
        };
        Ok(query.execute(&mut *self).await.map_err(db)?.rows_affected())
    }
}

/// One retention step (see `Store::purge`).
pub(super) async fn purge(pool: &PgPool, cutoffs: PurgeCutoffs, limit: usize) -> Result<Purged> {
    let limit = sql_limit(limit);
    let mut tx = pool.begin().await.map_err(db)?;
    let mine: bool = sqlx::query(LOCK)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    if !mine {
        tx.rollback().await.map_err(db)?;
        return Ok(Purged::default());
    }
    let purged = purge_step(&mut *tx, cutoffs, limit).await?;
    tx.commit().await.map_err(db)?;
    Ok(purged)
}
