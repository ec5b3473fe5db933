//! The read side, written once for both backends.
//!
//! - [`Statements`]: every read statement whose shape is the same on SQLite and PostgreSQL,
//!   built from one text for a [`Dialect`]: its placeholders, its insertion-order column
//!   (SQLite's `rowid`, PostgreSQL's `pos`) and SQLite's one planner hint. ListJobs and
//!   ListBatches build theirs with `crate::search`.
//! - [`same_reads_on_both_backends!`]: the functions that run and decode those statements,
//!   expanded once per backend for its connection type.
//!
//! What differs in shape stays with each backend: `get_jobs` (SQLite's padded `IN` lists
//! against PostgreSQL's one array parameter), the replica claims (`SKIP LOCKED`) and the writes.

use adgate_generator::JobState;

use crate::rows::JOB_COLUMNS;
use crate::search::Dialect;

/// Non-terminal, written exactly as the partial indexes are declared on both backends.
pub(crate) const ACTIVE: &str = "state IN (1, 2)";

/// The read statements of [`same_reads_on_both_backends!`], in one backend's dialect.
pub(crate) struct Statements {
    pub batch_jobs: String,
    pub batch_known: String,
    pub queued_unassigned: String,
    pub active_jobs: String,
    pub active_refs: String,
    pub find_by_ref: String,
    pub correlation_candidates: String,
    pub by_poll_key: String,
    pub expired: String,
    pub open_attempts: String,
    pub kept_events: String,
    pub spend_since: String,
    pub queued_entries: String,
    pub count_by_state: String,
}

impl Dialect {
    /// SQL written with `?` placeholders, numbered for PostgreSQL (`$1`, `$2`, …). The
    /// statements given here have no `?` inside literals.
    pub(crate) fn params(self, sql: &str) -> String {
        match self {
            Dialect::Sqlite => sql.to_owned(),
            Dialect::Postgres => crate::notify::postgres_params(sql),
        }
    }

    /// The column that orders rows by insertion, the tie-break after `created_at`.
    pub(crate) fn insertion_order(self) -> &'static str {
        match self {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "pos",
        }
    }
}

impl Statements {
    pub(crate) fn new(dialect: Dialect) -> Statements {
        let tie = dialect.insertion_order();
        let queued = JobState::Queued.as_i64();
        // SQLite's planner, given `created_at >= ?`, prefers the creation-time index and
        // walks every caller's jobs since then; the spend index answers from one range.
        let spend_hint = match dialect {
            Dialect::Sqlite => " INDEXED BY jobs_caller_spend",
            Dialect::Postgres => "",
        };
        let p = |sql: String| dialect.params(&sql);
        Statements {
            batch_jobs: p(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = ? ORDER BY seq"
            )),
            batch_known: p("SELECT 1 FROM batches WHERE id = ?".to_owned()),
            // The head of every caller's queue, not the oldest jobs overall: ranked within each
            // caller (priority, then age) and taken rank by rank, so one caller's 10,000 queued
            // jobs never hide another caller's first job from the dispatcher (which orders them
            // by weighted fair share).
            queued_unassigned: p(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE id IN (\
                     SELECT id FROM (\
                         SELECT id, created_at, {tie} AS tie, ROW_NUMBER() OVER (\
                             PARTITION BY caller ORDER BY priority, created_at, {tie}) AS rn \
                         FROM jobs WHERE provider = ? AND state = {queued} \
                         AND attempt_id IS NULL) ranked \
                     ORDER BY rn, created_at, tie LIMIT ?) \
                 ORDER BY created_at, {tie}"
            )),
            active_jobs: p(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ? AND {ACTIVE} \
                 AND provider_ref IS NOT NULL ORDER BY created_at, {tie}"
            )),
            // Only what a tracker resumes from (see `Store::active_refs`); same filter and
            // order as `active_jobs`.
            active_refs: p(format!(
                "SELECT id, provider_ref, poll_key FROM jobs WHERE provider = ? AND {ACTIVE} \
                 AND provider_ref IS NOT NULL ORDER BY created_at, {tie}"
            )),
            find_by_ref: p(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ? AND provider_ref = ? \
                 ORDER BY created_at, {tie} LIMIT 1"
            )),
            correlation_candidates: p(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ? AND correlation_key = ? \
                 AND {ACTIVE} AND attempt_id IS NOT NULL ORDER BY created_at, {tie} LIMIT ?"
            )),
            by_poll_key: p(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ? AND poll_key = ? \
                 ORDER BY created_at, {tie}"
            )),
            expired: p(format!(
                "SELECT id FROM jobs WHERE {ACTIVE} AND deadline_at <= ? \
                 ORDER BY deadline_at LIMIT ?"
            )),
            // Driven from `jobs` (provider, state = QUEUED, attempt_id set) so the cost follows
            // the open work, not the ever-growing attempts table.
            open_attempts: p(format!(
                "SELECT a.id, a.idempotency_key, a.created_at, j.id FROM jobs j \
                 JOIN attempts a ON a.id = j.attempt_id \
                 WHERE j.provider = ? AND j.state = {queued} AND j.attempt_id IS NOT NULL \
                 AND a.provider = j.provider \
                 ORDER BY a.id, j.attempt_seq, j.{tie}"
            )),
            kept_events: p(
                "SELECT id, provider, delivery_id, event, kept_at, expires_at \
                 FROM kept_events WHERE provider = ? ORDER BY id LIMIT ?"
                    .to_owned(),
            ),
            // PostgreSQL's SUM of a BIGINT is NUMERIC: the cast keeps one decoded type.
            spend_since: p(format!(
                "SELECT CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM jobs{spend_hint} \
                 WHERE caller = ? AND provider = ? AND created_at >= ? AND cost_unit = ?"
            )),
            queued_entries: p(format!(
                "SELECT id, caller, priority, created_at, group_key FROM jobs \
                 WHERE provider = ? AND state = {queued} AND attempt_id IS NULL \
                 ORDER BY created_at, {tie} LIMIT ?"
            )),
            count_by_state: "SELECT provider, state, COUNT(*) FROM jobs \
                 GROUP BY provider, state ORDER BY provider, state"
                .to_owned(),
        }
    }
}

/// The read functions whose statements are in [`Statements`], expanded once per backend for
/// its connection type and dialect. Each takes the connection to read on.
macro_rules! same_reads_on_both_backends {
    ($db:ty, $conn:ty, $dialect:expr) => {
        use std::sync::LazyLock;

        use adgate_generator::JobState;
        use sqlx::Row;

        use $crate::model::{Attempt, JobRecord, KeptEvent, QueuedEntry, StateCount};
        use $crate::reads::Statements;
        use $crate::rows::{JOB_COLUMNS, db, job_from_row, jobs_from_rows, sql_limit};
        use $crate::search::{
            Arg, BatchFilter, BatchSummary, JobFilter, Page, PageKey, Sql, add_counts,
            batch_counts_query, batch_from_row, batches_query, count_from_row, into_page,
            jobs_query,
        };
        use $crate::{ActiveRef, Result, StoreError};

        static STATEMENTS: LazyLock<Statements> = LazyLock::new(|| Statements::new($dialect));

        /// A batch's jobs in submission order; `None` when there is no such batch.
        pub(super) async fn batch_jobs(
            conn: &mut $conn,
            batch_id: &str,
        ) -> Result<Option<Vec<JobRecord>>> {
            let rows = sqlx::query(&STATEMENTS.batch_jobs)
                .bind(batch_id)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            if !rows.is_empty() {
                return jobs_from_rows(&rows).map(Some);
            }
            // No jobs: an empty batch, or no batch at all.
            let known = sqlx::query(&STATEMENTS.batch_known)
                .bind(batch_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
            Ok(known.map(|_| Vec::new()))
        }

        async fn jobs_by(
            conn: &mut $conn,
            sql: &str,
            provider: &str,
            key: Option<&str>,
            limit: Option<usize>,
        ) -> Result<Vec<JobRecord>> {
            let mut query = sqlx::query(sql).bind(provider);
            if let Some(key) = key {
                query = query.bind(key);
            }
            if let Some(limit) = limit {
                query = query.bind(sql_limit(limit));
            }
            let rows = query.fetch_all(&mut *conn).await.map_err(db)?;
            jobs_from_rows(&rows)
        }

        pub(super) async fn queued_unassigned(
            conn: &mut $conn,
            provider: &str,
            limit: usize,
        ) -> Result<Vec<JobRecord>> {
            jobs_by(
                conn,
                &STATEMENTS.queued_unassigned,
                provider,
                None,
                Some(limit),
            )
            .await
        }

        pub(super) async fn active_jobs(
            conn: &mut $conn,
            provider: &str,
        ) -> Result<Vec<JobRecord>> {
            jobs_by(conn, &STATEMENTS.active_jobs, provider, None, None).await
        }

        pub(super) async fn correlation_candidates(
            conn: &mut $conn,
            provider: &str,
            correlation_key: &str,
            limit: usize,
        ) -> Result<Vec<JobRecord>> {
            let sql = &STATEMENTS.correlation_candidates;
            jobs_by(conn, sql, provider, Some(correlation_key), Some(limit)).await
        }

        pub(super) async fn jobs_by_poll_key(
            conn: &mut $conn,
            provider: &str,
            poll_key: &str,
        ) -> Result<Vec<JobRecord>> {
            jobs_by(
                conn,
                &STATEMENTS.by_poll_key,
                provider,
                Some(poll_key),
                None,
            )
            .await
        }

        pub(super) async fn find_by_ref(
            conn: &mut $conn,
            provider: &str,
            provider_ref: &str,
        ) -> Result<Option<JobRecord>> {
            let row = sqlx::query(&STATEMENTS.find_by_ref)
                .bind(provider)
                .bind(provider_ref)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
            row.as_ref().map(job_from_row).transpose()
        }

        pub(super) async fn active_refs(
            conn: &mut $conn,
            provider: &str,
        ) -> Result<Vec<ActiveRef>> {
            let rows = sqlx::query(&STATEMENTS.active_refs)
                .bind(provider)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            rows.iter()
                .map(|row| {
                    Ok(ActiveRef {
                        job_id: row.try_get(0).map_err(db)?,
                        provider_ref: row.try_get(1).map_err(db)?,
                        poll_key: row.try_get(2).map_err(db)?,
                    })
                })
                .collect()
        }

        pub(super) async fn expired(
            conn: &mut $conn,
            now_ms: i64,
            limit: usize,
        ) -> Result<Vec<String>> {
            sqlx::query(&STATEMENTS.expired)
                .bind(now_ms)
                .bind(sql_limit(limit))
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?
                .iter()
                .map(|row| row.try_get(0).map_err(db))
                .collect()
        }

        pub(super) async fn open_attempts(
            conn: &mut $conn,
            provider: &str,
        ) -> Result<Vec<Attempt>> {
            let rows = sqlx::query(&STATEMENTS.open_attempts)
                .bind(provider)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            let mut attempts: Vec<Attempt> = Vec::new();
            for row in &rows {
                let id: i64 = row.try_get(0).map_err(db)?;
                let job_id: String = row.try_get(3).map_err(db)?;
                // Rows come ordered by attempt id, so an attempt's jobs are adjacent.
                match attempts.last_mut() {
                    Some(last) if last.id == id => last.job_ids.push(job_id),
                    _ => attempts.push(Attempt {
                        id,
                        provider: provider.to_owned(),
                        idempotency_key: row.try_get(1).map_err(db)?,
                        job_ids: vec![job_id],
                        created_at_ms: row.try_get(2).map_err(db)?,
                    }),
                }
            }
            Ok(attempts)
        }

        pub(super) async fn kept_events(
            conn: &mut $conn,
            provider: &str,
            limit: usize,
        ) -> Result<Vec<KeptEvent>> {
            let rows = sqlx::query(&STATEMENTS.kept_events)
                .bind(provider)
                .bind(sql_limit(limit))
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            rows.iter()
                .map(|row| {
                    let event: String = row.try_get(3).map_err(db)?;
                    $crate::codec::kept_event(
                        row.try_get(0).map_err(db)?,
                        row.try_get(1).map_err(db)?,
                        row.try_get(2).map_err(db)?,
                        &event,
                        row.try_get(4).map_err(db)?,
                        row.try_get(5).map_err(db)?,
                    )
                })
                .collect()
        }

        pub(super) async fn spend_since(
            conn: &mut $conn,
            caller: &str,
            provider: &str,
            unit: &str,
            since_ms: i64,
        ) -> Result<i64> {
            let row = sqlx::query(&STATEMENTS.spend_since)
                .bind(caller)
                .bind(provider)
                .bind(since_ms)
                .bind(unit)
                .fetch_one(&mut *conn)
                .await
                .map_err(db)?;
            row.try_get(0).map_err(db)
        }

        pub(super) async fn queued_entries(
            conn: &mut $conn,
            provider: &str,
            limit: usize,
        ) -> Result<Vec<QueuedEntry>> {
            let rows = sqlx::query(&STATEMENTS.queued_entries)
                .bind(provider)
                .bind(sql_limit(limit))
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            rows.iter()
                .map($crate::rows::queued_entry_from_row)
                .collect()
        }

        pub(super) async fn count_by_state(conn: &mut $conn) -> Result<Vec<StateCount>> {
            let rows = sqlx::query(&STATEMENTS.count_by_state)
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            rows.iter()
                .map(|row| {
                    let raw: i64 = row.try_get(1).map_err(db)?;
                    let state = JobState::from_i64(raw)
                        .ok_or_else(|| StoreError::Corrupt(format!("unknown job state {raw}")))?;
                    let count: i64 = row.try_get(2).map_err(db)?;
                    Ok(StateCount {
                        provider: row.try_get(0).map_err(db)?,
                        state,
                        count: u64::try_from(count).unwrap_or(0),
                    })
                })
                .collect()
        }
        fn bound(q: &Sql) -> sqlx::query::Query<'_, $db, <$db as sqlx::Database>::Arguments<'_>> {
            q.args
                .iter()
                .fold(sqlx::query(&q.text), |query, a| match a {
                    Arg::Text(t) => query.bind(t.as_str()),
                    Arg::Int(i) => query.bind(*i),
                })
        }

        /// One page of ListJobs (the query is built by `crate::search`).
        pub(super) async fn list_jobs(
            conn: &mut $conn,
            filter: &JobFilter,
            after: Option<&PageKey>,
            limit: usize,
        ) -> Result<Page<JobRecord>> {
            let q = jobs_query($dialect, JOB_COLUMNS, filter, after, limit);
            let rows = bound(&q).fetch_all(&mut *conn).await.map_err(db)?;
            Ok(into_page(jobs_from_rows(&rows)?, limit, |j| PageKey {
                created_at_ms: j.created_at_ms,
                id: j.id.clone(),
            }))
        }

        /// One page of ListBatches, with each batch's job counts by state.
        pub(super) async fn list_batches(
            conn: &mut $conn,
            filter: &BatchFilter,
            after: Option<&PageKey>,
            limit: usize,
        ) -> Result<Page<BatchSummary>> {
            let q = batches_query($dialect, filter, after, limit);
            let rows = bound(&q).fetch_all(&mut *conn).await.map_err(db)?;
            let batches = rows
                .iter()
                .map(batch_from_row)
                .collect::<Result<Vec<_>>>()?;
            let mut page = into_page(batches, limit, |b| PageKey {
                created_at_ms: b.created_at_ms,
                id: b.id.clone(),
            });
            if page.items.is_empty() {
                return Ok(page);
            }
            let ids: Vec<String> = page.items.iter().map(|b| b.id.clone()).collect();
            let q = batch_counts_query($dialect, &ids);
            let rows = bound(&q).fetch_all(&mut *conn).await.map_err(db)?;
            let counts = rows
                .iter()
                .map(count_from_row)
                .collect::<Result<Vec<_>>>()?;
            add_counts(&mut page.items, counts)?;
            Ok(page)
        }
    };
}

pub(crate) use same_reads_on_both_backends;
