//! What retention deletes and what one step of it reports (see [`crate::Store::purge`]).
//!
//! Both backends delete in steps of a bounded number of rows, each step one short transaction
//! driven by an index range scan, so a pass over a large backlog never holds the SQLite writer
//! or a PostgreSQL row lock for long: Submits interleave between steps. The engine chooses the
//! ages (configuration) and drives the steps (`adgate_engine`'s retention task).

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

/// The batches and attempts named by the job rows a retention step deleted
/// (`RETURNING batch_id, attempt_id`), either backend's rows.
pub(crate) fn named_by_deleted<'r, R>(
    rows: &'r [R],
) -> crate::Result<(
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<i64>,
)>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut batches = std::collections::BTreeSet::new();
    let mut attempts = std::collections::BTreeSet::new();
    for row in rows {
        batches.insert(row.try_get::<String, _>(0).map_err(crate::rows::db)?);
        if let Some(attempt) = row.try_get::<Option<i64>, _>(1).map_err(crate::rows::db)? {
            attempts.insert(attempt);
        }
    }
    Ok((batches, attempts))
}

/// One bounded retention step inside the caller's transaction, expanded per backend for its
/// connection type. The backend module names the statements (`DELETE_JOBS` returning
/// `batch_id, attempt_id`; `DELETE_ATTEMPTS`, `DELETE_BATCHES` and `DELETE_OUTBOX` taking
/// one set of ids; `DELETE_REQUEST_IDS` and `DELETE_DELIVERIES` taking a cutoff and a limit)
/// and `$set`, which turns a set of ids into that one parameter (a JSON array on SQLite, an
/// array on PostgreSQL).
macro_rules! same_purge_step_on_both_backends {
    ($conn:ty, $set:path) => {
        pub(super) async fn purge_step(
            conn: &mut $conn,
            cutoffs: $crate::retention::PurgeCutoffs,
            limit: i64,
        ) -> $crate::Result<$crate::retention::Purged> {
            use $crate::rows::db;
            let gone = sqlx::query(DELETE_JOBS)
                .bind(cutoffs.jobs_completed_before_ms)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            let mut purged = $crate::retention::Purged {
                jobs: u64::try_from(gone.len()).unwrap_or(u64::MAX),
                ..$crate::retention::Purged::default()
            };
            if !gone.is_empty() {
                let (batches, attempts) = $crate::retention::named_by_deleted(&gone)?;
                if !attempts.is_empty() {
                    purged.attempts = sqlx::query(DELETE_ATTEMPTS)
                        .bind($set(&attempts)?)
                        .execute(&mut *conn)
                        .await
                        .map_err(db)?
                        .rows_affected();
                }
                purged.batches = sqlx::query(DELETE_BATCHES)
                    .bind($set(&batches)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?
                    .rows_affected();
                sqlx::query(DELETE_OUTBOX)
                    .bind($set(&batches)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
            }
            for (sql, cutoff, count) in [
                (
                    DELETE_REQUEST_IDS,
                    cutoffs.request_ids_before_ms,
                    &mut purged.request_ids,
                ),
                (
                    DELETE_DELIVERIES,
                    cutoffs.deliveries_before_ms,
                    &mut purged.deliveries,
                ),
            ] {
                *count = sqlx::query(sql)
                    .bind(cutoff)
                    .bind(limit)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?
                    .rows_affected();
            }
            Ok(purged)
        }
    };
}

pub(crate) use same_purge_step_on_both_backends;
