//! Output custody on PostgreSQL: claiming the custody queue across replicas (on the pool,
//! like job claims) and recording results (in the writer's group, announced on the change
//! feed like every job change).

use sqlx::postgres::{PgConnection, PgPool};

use super::rows::{db, sql_limit};
use crate::Result;
use crate::model::{CustodyTask, CustodyWrite, JobRecord};

/// Queue the copies of jobs that this transaction completes (see
/// `JobRecord::custody_queued_by`).
pub(super) async fn queue(conn: &mut PgConnection, job_ids: &[&str], now_ms: i64) -> Result<()> {
    if job_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO custody_queue (job_id, attempts, queued_at, next_at) \
         SELECT id, 0, $2, $2 FROM UNNEST($1::text[]) AS id ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(job_ids)
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// `SKIP LOCKED`: two replicas claiming at the same moment take different rows instead of
/// one waiting for the other and then taking the same ones; the claim's `next_at` keeps the
/// rows away from every later claim until it runs out.
pub(super) async fn claim(
    pool: &PgPool,
    replica: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<CustodyTask>> {
    let rows = sqlx::query(
        "WITH due AS (SELECT job_id FROM custody_queue WHERE next_at <= $1 \
             ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE custody_queue AS q SET next_at = $3, claimed_by = $4 FROM due \
         WHERE q.job_id = due.job_id \
         RETURNING q.job_id, CAST(q.attempts AS BIGINT), q.queued_at",
    )
    .bind(now_ms)
    .bind(sql_limit(limit))
    .bind(now_ms.saturating_add(lease_ms))
    .bind(replica)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    crate::custody::tasks_from_rows(&rows)
}

/// A replica with a stable identity restarting: its previous run's claims are due now.
pub(super) async fn release(pool: &PgPool, replica: &str, now_ms: i64) -> Result<()> {
    sqlx::query(
        "UPDATE custody_queue SET next_at = LEAST(next_at, $2), claimed_by = NULL \
         WHERE claimed_by = $1",
    )
    .bind(replica)
    .bind(now_ms)
    .execute(pool)
    .await
    .map_err(db)?;
    Ok(())
}

/// Runs inside the writer's group; `changes` gets the job's new revision for the feed.
pub(super) async fn finish(
    conn: &mut PgConnection,
    write: &CustodyWrite,
    now_ms: i64,
    changes: &mut Vec<(String, i64)>,
) -> Result<Option<JobRecord>> {
    let changed = crate::custody::record_results(conn, write, now_ms).await?;
    if let Some(record) = &changed {
        changes.push((record.id.clone(), record.revision));
    }
    Ok(changed)
}
