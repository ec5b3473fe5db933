//! Output custody's queue, the parts written once for both backends: the decoder of claimed
//! tasks and [`record_results`], the step that records one copy attempt's results. Claims
//! differ in shape (PostgreSQL's `SKIP LOCKED` across replicas) and stay with each backend.

#![expect(
    clippy::manual_async_fn,
    reason = "an `async fn` generic over `Exec` makes each caller prove its future `Send` for every lifetime, which rustc cannot (rust-lang/rust#100013); a declared `impl Future + Send` is proven here once"
)]

use std::future::Future;
use std::sync::LazyLock;

use crate::exec::{Cols, Exec, args};
use crate::model::{CustodyTask, CustodyWrite, JobRecord};
use crate::reads::Statement;
use crate::rows::{JOB_COLUMNS, job_from_row};
use crate::search::Dialect;
use crate::{Result, codec};

/// Decodes `RETURNING job_id, attempts, queued_at` (attempts as a BIGINT on both backends),
/// oldest first.
pub(crate) fn tasks_from_rows<R: Cols>(rows: &[R]) -> Result<Vec<CustodyTask>> {
    let tasks = rows
        .iter()
        .map(|row| task_from_row(row))
        .collect::<Result<Vec<_>>>()?;
    Ok(oldest_first(tasks))
}

/// Decodes one row of `RETURNING job_id, attempts, queued_at`.
pub(crate) fn task_from_row(row: &dyn Cols) -> Result<CustodyTask> {
    let attempts = row.int(1)?;
    Ok(CustodyTask {
        job_id: row.text(0)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        queued_at_ms: row.int(2)?,
    })
}

/// `RETURNING` gives no order; custody copies the oldest first.
pub(crate) fn oldest_first(mut tasks: Vec<CustodyTask>) -> Vec<CustodyTask> {
    tasks.sort_by_key(|t| t.queued_at_ms);
    tasks
}

/// The job row as read for update: PostgreSQL locks it against other replicas' writers;
/// SQLite's single writer needs no lock.
fn select_job(dialect: Dialect) -> &'static str {
    static SQLITE: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"));
    static POSTGRES: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"));
    match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
    }
}

fn update_outputs(dialect: Dialect) -> &'static str {
    static SQLITE: LazyLock<String> = LazyLock::new(|| text(Dialect::Sqlite));
    static POSTGRES: LazyLock<String> = LazyLock::new(|| text(Dialect::Postgres));
    fn text(dialect: Dialect) -> String {
        dialect.params(&format!(
            "UPDATE jobs SET outputs = ?, updated_at = ?, revision = revision + 1 \
             WHERE id = ? RETURNING {JOB_COLUMNS}"
        ))
    }
    match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
    }
}

static RETRY_LATER: Statement = Statement::new(
    "UPDATE custody_queue SET attempts = attempts + 1, next_at = ?, \
     claimed_by = NULL WHERE job_id = ?",
);

static DONE: Statement = Statement::new("DELETE FROM custody_queue WHERE job_id = ?");

/// One copy attempt's results, inside the writer's group: the job after them, `None` when its
/// outputs did not change. The job's outputs change only when the results add something
/// (`JobRecord::with_custody`); the queue entry is retried later or deleted.
pub(crate) fn record_results<E: Exec>(
    conn: &mut E,
    write: &CustodyWrite,
    now_ms: i64,
) -> impl Future<Output = Result<Option<JobRecord>>> + Send {
    async move {
        let mut changed = None;
        let current = conn
            .optional(select_job(E::DIALECT), &args![&write.job_id], job_from_row)
            .await?;
        if let Some(current) = current
            && let Some(next) = current.with_custody(&write.results)
        {
            let outputs = codec::to_json(&next.outputs, "outputs")?;
            let args = args![&outputs, now_ms, &write.job_id];
            changed = Some(
                conn.one(update_outputs(E::DIALECT), &args, job_from_row)
                    .await?,
            );
        }
        match write.retry_at_ms {
            Some(at) => {
                let sql = RETRY_LATER.of(E::DIALECT);
                conn.execute(sql, &args![at, &write.job_id]).await?
            }
            None => {
                conn.execute(DONE.of(E::DIALECT), &args![&write.job_id])
                    .await?
            }
        };
        Ok(changed)
    }
}
