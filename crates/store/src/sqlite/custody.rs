//! Output custody on SQLite: the custody queue's writes, run by the writer thread (each in its
//! own savepoint, like every multi-statement command).

use super::conn::Conn;
use crate::Result;
use crate::exec::{Exec, args};
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
pub(super) async fn queue(conn: &mut Conn, job_id: &str, now_ms: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO custody_queue (job_id, attempts, queued_at, next_at) VALUES (?, 0, ?, ?) \
         ON CONFLICT (job_id) DO NOTHING",
        &args![job_id, now_ms, now_ms],
    )
    .await?;
    Ok(())
}

/// Runs one custody write; the answer waits for the group's COMMIT like every other.
pub(super) async fn run(conn: &mut Conn, op: CustodyOp) -> (Box<dyn Pending>, bool) {
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
async fn release(conn: &mut Conn, now_ms: i64) -> Result<()> {
    conn.execute(
        "UPDATE custody_queue SET next_at = MIN(next_at, ?), claimed_by = NULL \
         WHERE claimed_by IS NOT NULL",
        &args![now_ms],
    )
    .await?;
    Ok(())
}

async fn claim(
    conn: &mut Conn,
    replica: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<CustodyTask>> {
    let tasks = conn
        .rows(
            "UPDATE custody_queue SET next_at = ?, claimed_by = ? WHERE job_id IN (\
                 SELECT job_id FROM custody_queue WHERE next_at <= ? ORDER BY next_at LIMIT ?) \
             RETURNING job_id, attempts, queued_at",
            &args![now_ms.saturating_add(lease_ms), replica, now_ms, limit],
            crate::custody::task_from_row,
        )
        .await?;
    Ok(crate::custody::oldest_first(tasks))
}

pub(super) async fn finish(
    conn: &mut Conn,
    write: CustodyWrite,
    now_ms: i64,
) -> Result<Option<JobRecord>> {
    crate::custody::record_results(conn, &write, now_ms).await
}
