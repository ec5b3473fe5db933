//! Output custody on SQLite: the custody queue's writes, run by the writer task (each in its
//! own savepoint, like every multi-statement command).

use sqlx::sqlite::SqliteConnection;

use super::rows::db;
use crate::Result;
use crate::model::{CustodyTask, CustodyWrite, JobRecord};
use crate::writer::{Pending, Reply, pending};

/// A custody write of the SQLite writer alone, with the reply its answer goes back on (a
/// custody result is a job write: `crate::writer::Op::FinishCustody`).
pub(crate) enum CustodyOp {
    Claim {
        replica: String,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
        reply: Reply<Vec<CustodyTask>>,
    },
    Release {
        now_ms: i64,
        reply: Reply<()>,
    },
}

crate::writer::replies!(CustodyOp { Claim, Release });

/// Queue the copy of a job that this transaction completes (see `JobRecord::custody_queued_by`).
pub(super) async fn queue(conn: &mut SqliteConnection, job_id: &str, now_ms: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO custody_queue (job_id, attempts, queued_at, next_at) VALUES (?, 0, ?, ?) \
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(job_id)
    .bind(now_ms)
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Runs one custody write; the answer waits for the group's COMMIT like every other.
pub(super) async fn run(conn: &mut SqliteConnection, op: CustodyOp) -> (Box<dyn Pending>, bool) {
    match op {
        CustodyOp::Claim {
            replica,
            now_ms,
            lease_ms,
            limit,
            reply,
        } => pending(reply, claim(conn, &replica, now_ms, lease_ms, limit).await),
        CustodyOp::Release { now_ms, reply } => pending(reply, release(conn, now_ms).await),
    }
}

/// One process owns a SQLite file: every claim on record is a previous run's.
async fn release(conn: &mut SqliteConnection, now_ms: i64) -> Result<()> {
    sqlx::query(
        "UPDATE custody_queue SET next_at = MIN(next_at, ?), claimed_by = NULL \
         WHERE claimed_by IS NOT NULL",
    )
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

async fn claim(
    conn: &mut SqliteConnection,
    replica: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<CustodyTask>> {
    let rows = sqlx::query(
        "UPDATE custody_queue SET next_at = ?, claimed_by = ? WHERE job_id IN (\
             SELECT job_id FROM custody_queue WHERE next_at <= ? ORDER BY next_at LIMIT ?) \
         RETURNING job_id, attempts, queued_at",
    )
    .bind(now_ms.saturating_add(lease_ms))
    .bind(replica)
    .bind(now_ms)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    crate::custody::tasks_from_rows(&rows)
}

pub(super) async fn finish(
    conn: &mut SqliteConnection,
    write: CustodyWrite,
    now_ms: i64,
) -> Result<Option<JobRecord>> {
    crate::custody::record_results(conn, &write, now_ms).await
}
