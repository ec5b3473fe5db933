//! Output custody on SQLite: the custody queue's writes, run by the writer task (each in its
//! own savepoint, like every multi-statement command).

use sqlx::sqlite::SqliteConnection;

use super::rows::db;
use crate::Result;
use crate::model::{CustodyTask, CustodyWrite, JobRecord};

/// One custody write and what it answers.
pub(crate) enum CustodyOp {
    Claim {
        replica: String,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    },
    Release {
        now_ms: i64,
    },
    Finish {
        write: CustodyWrite,
        now_ms: i64,
    },
}

#[derive(Debug)]
pub(crate) enum CustodyAnswer {
    Claimed(Vec<CustodyTask>),
    Released,
    Finished(Option<Box<JobRecord>>),
}

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

pub(super) async fn run(conn: &mut SqliteConnection, op: CustodyOp) -> Result<CustodyAnswer> {
    match op {
        CustodyOp::Claim {
            replica,
            now_ms,
            lease_ms,
            limit,
        } => claim(conn, &replica, now_ms, lease_ms, limit)
            .await
            .map(CustodyAnswer::Claimed),
        // One process owns a SQLite file: every claim on record is a previous run's.
        CustodyOp::Release { now_ms } => {
            sqlx::query(
                "UPDATE custody_queue SET next_at = MIN(next_at, ?), claimed_by = NULL \
                 WHERE claimed_by IS NOT NULL",
            )
            .bind(now_ms)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
            Ok(CustodyAnswer::Released)
        }
        CustodyOp::Finish { write, now_ms } => record_results(conn, &write, now_ms)
            .await
            .map(|job| CustodyAnswer::Finished(job.map(Box::new))),
    }
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

crate::custody::same_custody_on_both_backends!(
    SqliteConnection,
    crate::search::Dialect::Sqlite,
    ""
);
