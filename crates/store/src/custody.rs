//! Output custody's queue, the parts written once for both backends: the decoder of claimed
//! tasks and the step that records one copy attempt's results (expanded per backend by
//! [`same_custody_on_both_backends!`]). Claims differ in shape (PostgreSQL's `SKIP LOCKED`
//! across replicas) and stay with each backend.

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::Result;
use crate::model::CustodyTask;

/// Decodes `RETURNING job_id, attempts, queued_at` (attempts as a BIGINT on both backends),
/// oldest first.
pub(crate) fn tasks_from_rows<'r, R>(rows: &'r [R]) -> Result<Vec<CustodyTask>>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut tasks = rows
        .iter()
        .map(|row| {
            let attempts: i64 = crate::rows::get(row, 1)?;
            Ok(CustodyTask {
                job_id: crate::rows::get(row, 0)?,
                attempts: u32::try_from(attempts).unwrap_or(0),
                queued_at_ms: crate::rows::get(row, 2)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    tasks.sort_by_key(|t| t.queued_at_ms);
    Ok(tasks)
}

/// `record_results`: one copy attempt's results, inside the writer's group. The job's
/// outputs change only when the results add something (`JobRecord::with_custody`); the queue
/// entry is retried later or deleted. `$lock` is how the job row is read for update.
macro_rules! same_custody_on_both_backends {
    ($conn:ty, $dialect:expr, $lock:literal) => {
        static SELECT_JOB: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            $dialect.params(&format!(
                "SELECT {} FROM jobs WHERE id = ?{}",
                $crate::rows::JOB_COLUMNS,
                $lock
            ))
        });

        static UPDATE_OUTPUTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            $dialect.params(&format!(
                "UPDATE jobs SET outputs = ?, updated_at = ?, revision = revision + 1 \
                 WHERE id = ? RETURNING {}",
                $crate::rows::JOB_COLUMNS
            ))
        });

        static RETRY_LATER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            $dialect.params(
                "UPDATE custody_queue SET attempts = attempts + 1, next_at = ?, \
                 claimed_by = NULL WHERE job_id = ?",
            )
        });

        static DONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            $dialect.params("DELETE FROM custody_queue WHERE job_id = ?")
        });

        /// The job after the results, `None` when its outputs did not change.
        pub(super) async fn record_results(
            conn: &mut $conn,
            write: &$crate::model::CustodyWrite,
            now_ms: i64,
        ) -> $crate::Result<Option<$crate::model::JobRecord>> {
            let mut changed = None;
            if let Some(row) = sqlx::query(&SELECT_JOB)
                .bind(&write.job_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err($crate::rows::db)?
                && let Some(next) = $crate::rows::job_from_row(&row)?.with_custody(&write.results)
            {
                let row = sqlx::query(&UPDATE_OUTPUTS)
                    .bind($crate::codec::to_json(&next.outputs, "outputs")?)
                    .bind(now_ms)
                    .bind(&write.job_id)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err($crate::rows::db)?;
                changed = Some($crate::rows::job_from_row(&row)?);
            }
            match write.retry_at_ms {
                Some(at) => sqlx::query(&RETRY_LATER).bind(at).bind(&write.job_id),
                None => sqlx::query(&DONE).bind(&write.job_id),
            }
            .execute(&mut *conn)
            .await
            .map_err($crate::rows::db)?;
            Ok(changed)
        }
    };
}

pub(crate) use same_custody_on_both_backends;
