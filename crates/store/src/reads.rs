//! The read side, written once for both backends.
//!
//! - [`Statements`]: every read statement whose shape is the same on SQLite and PostgreSQL,
//!   built from one text for a [`Dialect`]: its placeholders, its insertion-order column
//!   (SQLite's `rowid`, PostgreSQL's `pos`) and SQLite's one planner hint. ListJobs and
//!   ListBatches build theirs with `crate::search`.
//! - the functions that run and decode those statements, generic over [`Exec`] (each
//!   backend calls them with its own connection), and ListJobs/ListBatches on any [`Exec`].
//! - [`Statement`]: one statement written with `?` placeholders, in the dialect asked for.
//!
//! What differs in shape stays with each backend: `get_jobs` (SQLite's padded `IN` lists
//! against PostgreSQL's one array parameter), the replica claims (`SKIP LOCKED`) and the writes.

#![expect(
    clippy::manual_async_fn,
    reason = "an `async fn` generic over `Exec` makes each caller prove its future `Send` for every lifetime, which rustc cannot (rust-lang/rust#100013); a declared `impl Future + Send` is proven here once"
)]

use std::future::Future;
use std::sync::{LazyLock, OnceLock};

use adgate_generator::JobState;

use crate::exec::{Cols, Exec, args};
use crate::model::{Attempt, JobRecord, KeptEvent, QueuedEntry, StateCount};
use crate::rows::{JOB_COLUMNS, job_from_row, queued_entry_from_row, sql_limit};
use crate::search::{
    BatchFilter, BatchSummary, Dialect, JobFilter, Page, PageKey, Sql, add_counts,
    batch_counts_query, batch_from_row, batches_query, count_from_row, into_page, jobs_query,
};
use crate::{ActiveRef, Result, StoreError};

/// Non-terminal, written exactly as the partial indexes are declared on both backends.
pub(crate) const ACTIVE: &str = "state IN (1, 2)";

/// The read statements of the functions below, in one backend's dialect.
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
    pub next_deadline: String,
    pub open_attempts: String,
    pub kept_events: String,
    pub spend_since: String,
    pub queued_entries: String,
    pub count_by_state: String,
}

#[cfg(test)]
impl Statements {
    /// Every statement, by name. Destructured, so a statement added to the struct and not
    /// here does not compile.
    pub(crate) fn all(&self) -> Vec<(&'static str, &str)> {
        let Statements {
            batch_jobs,
            batch_known,
            queued_unassigned,
            active_jobs,
            active_refs,
            find_by_ref,
            correlation_candidates,
            by_poll_key,
            expired,
            next_deadline,
            open_attempts,
            kept_events,
            spend_since,
            queued_entries,
            count_by_state,
        } = self;
        vec![
            ("batch_jobs", batch_jobs),
            ("batch_known", batch_known),
            ("queued_unassigned", queued_unassigned),
            ("active_jobs", active_jobs),
            ("active_refs", active_refs),
            ("find_by_ref", find_by_ref),
            ("correlation_candidates", correlation_candidates),
            ("by_poll_key", by_poll_key),
            ("expired", expired),
            ("next_deadline", next_deadline),
            ("open_attempts", open_attempts),
            ("kept_events", kept_events),
            ("spend_since", spend_since),
            ("queued_entries", queued_entries),
            ("count_by_state", count_by_state),
        ]
    }
}

#[cfg(test)]
pub(crate) fn sqlite_statements() -> &'static Statements {
    statements(Dialect::Sqlite)
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
        // SQLite's planner has no statistics: without a hint it can prefer an index that
        // yields the ORDER BY over the one that finds the few rows asked for (checked by
        // `sqlite::plans`). PostgreSQL plans from statistics and gets no hint.
        let hint = |index: &str| match dialect {
            Dialect::Sqlite => format!(" INDEXED BY {index}"),
            Dialect::Postgres => String::new(),
        };
        // Given `created_at >= ?`, SQLite prefers the creation-time index and walks every
        // caller's jobs since then; the caller's own index answers from one range (the
        // caller's jobs since the start of the day, the provider filtered from those rows).
        let spend_hint = hint("jobs_caller_created");
        // Ordered by `deadline_at`, SQLite picked a `(state, created_at)` index (since
        // dropped) and walked every unfinished job.
        let deadline_hint = hint("jobs_deadline");
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
            // `+created_at`: ordering the few rows found is cheap; an index that yields the
            // order (all of the provider's jobs) is not a way to find them.
            find_by_ref: p(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ? AND provider_ref = ? \
                 ORDER BY +created_at, {tie} LIMIT 1"
            )),
            correlation_candidates: p(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ? AND correlation_key = ? \
                 AND {ACTIVE} AND attempt_id IS NOT NULL ORDER BY created_at, {tie} LIMIT ?"
            )),
            by_poll_key: p(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ? AND poll_key = ? \
                 ORDER BY +created_at, {tie}"
            )),
            expired: p(format!(
                "SELECT id FROM jobs{deadline_hint} WHERE {ACTIVE} AND deadline_at <= ? \
                 ORDER BY deadline_at LIMIT ?"
            )),
            next_deadline: p(format!(
                "SELECT MIN(deadline_at) FROM jobs{deadline_hint} WHERE {ACTIVE}"
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

/// A statement written once with `?` placeholders, numbered for PostgreSQL on first use and
/// kept, so a statement run on every write is not rewritten every time.
pub(crate) struct Statement {
    text: &'static str,
    numbered: OnceLock<String>,
}

impl Statement {
    pub(crate) const fn new(text: &'static str) -> Statement {
        Statement {
            text,
            numbered: OnceLock::new(),
        }
    }

    /// The statement in `dialect`.
    pub(crate) fn of(&self, dialect: Dialect) -> &str {
        match dialect {
            Dialect::Sqlite => self.text,
            Dialect::Postgres => self.numbered.get_or_init(|| dialect.params(self.text)),
        }
    }
}

/// The read statements of `dialect`, built once.
fn statements(dialect: Dialect) -> &'static Statements {
    static SQLITE: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Sqlite));
    static POSTGRES: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Postgres));
    match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
    }
}

/// A batch's jobs in submission order; `None` when there is no such batch.
pub(crate) fn batch_jobs<E: Exec>(
    conn: &mut E,
    batch_id: &str,
) -> impl Future<Output = Result<Option<Vec<JobRecord>>>> + Send {
    async move {
        let sql = statements(E::DIALECT);
        let jobs = conn
            .rows(&sql.batch_jobs, &args![batch_id], job_from_row)
            .await?;
        if !jobs.is_empty() {
            return Ok(Some(jobs));
        }
        // No jobs: an empty batch, or no batch at all.
        let known = conn
            .optional(&sql.batch_known, &args![batch_id], |_| Ok(()))
            .await?;
        Ok(known.map(|()| Vec::new()))
    }
}

pub(crate) fn queued_unassigned<E: Exec>(
    conn: &mut E,
    provider: &str,
    limit: usize,
) -> impl Future<Output = Result<Vec<JobRecord>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).queued_unassigned;
        conn.rows(sql, &args![provider, sql_limit(limit)], job_from_row)
            .await
    }
}

pub(crate) fn active_jobs<E: Exec>(
    conn: &mut E,
    provider: &str,
) -> impl Future<Output = Result<Vec<JobRecord>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).active_jobs;
        conn.rows(sql, &args![provider], job_from_row).await
    }
}

pub(crate) fn correlation_candidates<E: Exec>(
    conn: &mut E,
    provider: &str,
    correlation_key: &str,
    limit: usize,
) -> impl Future<Output = Result<Vec<JobRecord>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).correlation_candidates;
        let args = args![provider, correlation_key, sql_limit(limit)];
        conn.rows(sql, &args, job_from_row).await
    }
}

pub(crate) fn jobs_by_poll_key<E: Exec>(
    conn: &mut E,
    provider: &str,
    poll_key: &str,
) -> impl Future<Output = Result<Vec<JobRecord>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).by_poll_key;
        conn.rows(sql, &args![provider, poll_key], job_from_row)
            .await
    }
}

pub(crate) fn find_by_ref<E: Exec>(
    conn: &mut E,
    provider: &str,
    provider_ref: &str,
) -> impl Future<Output = Result<Option<JobRecord>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).find_by_ref;
        conn.optional(sql, &args![provider, provider_ref], job_from_row)
            .await
    }
}

pub(crate) fn active_refs<E: Exec>(
    conn: &mut E,
    provider: &str,
) -> impl Future<Output = Result<Vec<ActiveRef>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).active_refs;
        conn.rows(sql, &args![provider], |row| {
            Ok(ActiveRef {
                job_id: row.text(0)?,
                provider_ref: row.text(1)?,
                poll_key: row.opt_text(2)?,
            })
        })
        .await
    }
}

pub(crate) fn expired<E: Exec>(
    conn: &mut E,
    now_ms: i64,
    limit: usize,
) -> impl Future<Output = Result<Vec<String>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).expired;
        conn.rows(sql, &args![now_ms, sql_limit(limit)], |row| row.text(0))
            .await
    }
}

pub(crate) fn next_deadline<E: Exec>(
    conn: &mut E,
) -> impl Future<Output = Result<Option<i64>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).next_deadline;
        let rows = conn.rows(sql, &args![], |row| row.opt_int(0)).await?;
        Ok(rows.into_iter().next().flatten())
    }
}

pub(crate) fn open_attempts<E: Exec>(
    conn: &mut E,
    provider: &str,
) -> impl Future<Output = Result<Vec<Attempt>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).open_attempts;
        let rows = conn
            .rows(sql, &args![provider], |row| {
                Ok((row.int(0)?, row.text(1)?, row.int(2)?, row.text(3)?))
            })
            .await?;
        let mut attempts: Vec<Attempt> = Vec::new();
        for (id, idempotency_key, created_at_ms, job_id) in rows {
            // Rows come ordered by attempt id, so an attempt's jobs are adjacent.
            match attempts.last_mut() {
                Some(last) if last.id == id => last.job_ids.push(job_id),
                _ => attempts.push(Attempt {
                    id,
                    provider: provider.to_owned(),
                    idempotency_key,
                    job_ids: vec![job_id],
                    created_at_ms,
                }),
            }
        }
        Ok(attempts)
    }
}

pub(crate) fn kept_events<E: Exec>(
    conn: &mut E,
    provider: &str,
    limit: usize,
) -> impl Future<Output = Result<Vec<KeptEvent>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).kept_events;
        conn.rows(sql, &args![provider, sql_limit(limit)], |row| {
            let event = row.text(3)?;
            crate::codec::kept_event(
                row.int(0)?,
                row.text(1)?,
                row.opt_text(2)?,
                &event,
                row.int(4)?,
                row.int(5)?,
            )
        })
        .await
    }
}

pub(crate) fn spend_since<E: Exec>(
    conn: &mut E,
    caller: &str,
    provider: &str,
    unit: &str,
    since_ms: i64,
) -> impl Future<Output = Result<i64>> + Send {
    async move {
        let sql = &statements(E::DIALECT).spend_since;
        let args = args![caller, provider, since_ms, unit];
        conn.one(sql, &args, |row| row.int(0)).await
    }
}

pub(crate) fn queued_entries<E: Exec>(
    conn: &mut E,
    provider: &str,
    limit: usize,
) -> impl Future<Output = Result<Vec<QueuedEntry>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).queued_entries;
        conn.rows(
            sql,
            &args![provider, sql_limit(limit)],
            queued_entry_from_row,
        )
        .await
    }
}

pub(crate) fn count_by_state<E: Exec>(
    conn: &mut E,
) -> impl Future<Output = Result<Vec<StateCount>>> + Send {
    async move {
        let sql = &statements(E::DIALECT).count_by_state;
        conn.rows(sql, &[], |row| {
            let raw = row.int(1)?;
            let state = JobState::from_i64(raw)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown job state {raw}")))?;
            let count = row.int(2)?;
            Ok(StateCount {
                provider: row.text(0)?,
                state,
                count: u64::try_from(count).unwrap_or(0),
            })
        })
        .await
    }
}

/// Runs a query built by `crate::search`, decoding each row with `decode`.
fn search<E: Exec, T: Send>(
    conn: &mut E,
    q: &Sql,
    decode: impl FnMut(&dyn Cols) -> Result<T> + Send,
) -> impl Future<Output = Result<Vec<T>>> + Send {
    async move {
        let args: Vec<_> = q.args.iter().map(crate::exec::Arg::from).collect();
        conn.rows(&q.text, &args, decode).await
    }
}

/// One page of ListJobs (the query is built by `crate::search`).
pub(crate) fn list_jobs<E: Exec>(
    conn: &mut E,
    filter: &JobFilter,
    after: Option<&PageKey>,
    limit: usize,
) -> impl Future<Output = Result<Page<JobRecord>>> + Send {
    async move {
        let q = jobs_query(E::DIALECT, JOB_COLUMNS, filter, after, limit);
        let jobs = search(conn, &q, job_from_row).await?;
        Ok(into_page(jobs, limit, |j| PageKey {
            created_at_ms: j.created_at_ms,
            id: j.id.clone(),
        }))
    }
}

/// One page of ListBatches, with each batch's job counts by state.
pub(crate) fn list_batches<E: Exec>(
    conn: &mut E,
    filter: &BatchFilter,
    after: Option<&PageKey>,
    limit: usize,
) -> impl Future<Output = Result<Page<BatchSummary>>> + Send {
    async move {
        let q = batches_query(E::DIALECT, filter, after, limit);
        let batches = search(conn, &q, batch_from_row).await?;
        let mut page = into_page(batches, limit, |b| PageKey {
            created_at_ms: b.created_at_ms,
            id: b.id.clone(),
        });
        if page.items.is_empty() {
            return Ok(page);
        }
        let ids: Vec<String> = page.items.iter().map(|b| b.id.clone()).collect();
        let q = batch_counts_query(E::DIALECT, &ids);
        let counts = search(conn, &q, count_from_row).await?;
        add_counts(&mut page.items, counts)?;
        Ok(page)
    }
}
