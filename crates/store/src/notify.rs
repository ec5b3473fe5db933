//! The outbound-webhook outbox, as both backends store it: event kinds, the rows the deliverer
//! claims and settles, and which job changes cause an event.
//!
//! An event row is written in the transaction of the change that causes it (a job becoming
//! terminal; the last unfinished job of a batch finishing), once per endpoint that takes it,
//! so no committed change is ever left without its deliveries.
//!
//! The outbox writes that are the same statements on both backends ([`mark_batches`],
//! [`set_endpoints`], [`disable`], [`redeliver`]) are written here once, over [`Exec`].

#![expect(
    clippy::manual_async_fn,
    reason = "an `async fn` generic over `Exec` makes each caller prove its future `Send` for every lifetime, which rustc cannot (rust-lang/rust#100013); a declared `impl Future + Send` is proven here once"
)]

use adgate_generator::JobState;
use std::future::Future;

use crate::exec::{Cols, Exec, args};
use crate::model::JobRecord;
use crate::reads::Statement;

/// `job.completed`: bit of the event filters stored with endpoints and batches.
pub const JOB_COMPLETED: i64 = 1;
/// `job.failed`.
pub const JOB_FAILED: i64 = 2;
/// `job.cancelled`.
pub const JOB_CANCELLED: i64 = 4;
/// `batch.completed`: every job of the batch is terminal.
pub const BATCH_COMPLETED: i64 = 8;
/// Every event.
pub const ALL_EVENTS: i64 = JOB_COMPLETED | JOB_FAILED | JOB_CANCELLED | BATCH_COMPLETED;

/// The event kinds by their Standard Webhooks `type` names.
pub const EVENT_NAMES: [(&str, i64); 4] = [
    ("job.completed", JOB_COMPLETED),
    ("job.failed", JOB_FAILED),
    ("job.cancelled", JOB_CANCELLED),
    ("batch.completed", BATCH_COMPLETED),
];

/// The `type` of an event kind.
pub fn event_name(kind: i64) -> &'static str {
    EVENT_NAMES
        .iter()
        .find(|(_, k)| *k == kind)
        .map_or("unknown", |(n, _)| n)
}

/// The kind a `type` name stands for.
pub fn event_kind(name: &str) -> Option<i64> {
    EVENT_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
}

/// The event a job's change causes: one when it becomes terminal (terminal states never
/// change again, so a job has at most one event).
pub(crate) fn job_event(before: JobState, after: JobState) -> Option<i64> {
    if before.is_terminal() {
        return None;
    }
    match after {
        JobState::Completed => Some(JOB_COMPLETED),
        JobState::Failed => Some(JOB_FAILED),
        JobState::Cancelled => Some(JOB_CANCELLED),
        _ => None,
    }
}

/// The `webhook-id` of a job's event: stable, so every retry and redelivery carries it.
pub fn job_event_id(job_id: &str) -> String {
    format!("evt_{job_id}")
}

/// The `webhook-id` of a batch's `batch.completed`.
pub fn batch_event_id(batch_id: &str) -> String {
    format!("evt_{batch_id}")
}

/// Where a Submit's events go, stored on its batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchNotify {
    /// The endpoint named in the Submit, with its event filter.
    pub url: Option<(String, i64)>,
}

/// A caller's configured endpoint (from the config; its secret stays in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyEndpoint {
    /// Stable name, e.g. `cfg:growth:crm`.
    pub id: String,
    pub caller: String,
    pub url: String,
    /// Bit mask of the events it takes.
    pub events: i64,
}

/// The endpoint key of a URL named in Submits: deliveries to the same URL share one health
/// record whichever batch named it.
pub fn url_endpoint(url: &str) -> String {
    format!("url:{url}")
}

/// One delivery to make: an event for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub event_id: String,
    pub endpoint: String,
    pub url: String,
    pub kind: i64,
    /// `None` for `batch.completed`.
    pub job_id: Option<String>,
    pub batch_id: String,
    pub created_at_ms: i64,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// What became of a claimed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyOutcome {
    Delivered,
    /// Failed; due again at `next_at_ms`.
    Retry {
        next_at_ms: i64,
        error: String,
    },
    /// Failed for the last time (the retry horizon is over, or the endpoint is gone).
    GiveUp {
        error: String,
    },
    /// Its endpoint is disabled: kept until a redelivery re-enables it.
    Park,
    /// Not attempted (its payload is not ready yet); due again at `next_at_ms`.
    Later {
        next_at_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySettle {
    pub seq: i64,
    pub outcome: NotifyOutcome,
}

/// Outbox row states.
pub(crate) const DUE: i64 = 0;
pub(crate) const DELIVERED: i64 = 1;
pub(crate) const GIVEN_UP: i64 = 2;
pub(crate) const PARKED: i64 = 3;

impl NotifyOutcome {
    /// (state, next_at, error, counts as a failed attempt).
    pub(crate) fn columns(&self, now_ms: i64) -> (i64, i64, Option<&str>, i64) {
        match self {
            Self::Delivered => (DELIVERED, now_ms, None, 0),
            Self::Retry { next_at_ms, error } => (DUE, *next_at_ms, Some(error), 1),
            Self::GiveUp { error } => (GIVEN_UP, now_ms, Some(error), 1),
            Self::Park => (PARKED, now_ms, None, 0),
            Self::Later { next_at_ms } => (DUE, *next_at_ms, None, 0),
        }
    }
}

/// A job that became terminal in a write, with what its event needs.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub job_id: String,
    pub batch_id: String,
    pub caller: String,
    pub kind: i64,
}

impl Finished {
    /// `Some` when `after` (the job as written) finished in this change from `before`.
    pub(crate) fn of(before: JobState, after: &JobRecord) -> Option<Self> {
        Some(Self {
            kind: job_event(before, after.state)?,
            job_id: after.id.clone(),
            batch_id: after.batch_id.clone(),
            caller: after.caller.clone(),
        })
    }
}

/// A notifying batch as the finishing write left it.
#[derive(Debug, Clone)]
pub(crate) struct NotifyingBatch {
    pub id: String,
    pub caller: String,
    pub url: Option<String>,
    pub url_events: i64,
    pub open_jobs: i64,
}

/// One outbox row to insert (the caller's configured endpoints are joined in SQL).
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub event_id: String,
    pub kind: i64,
    pub job_id: Option<String>,
    pub batch_id: String,
    pub caller: String,
    /// The Submit's endpoint, when it takes this kind.
    pub url: Option<String>,
}

/// The events of `finished` jobs of notifying `batches` (those not listed do not notify),
/// plus `batch.completed` for each batch left without unfinished jobs.
pub(crate) fn events_of(finished: &[Finished], batches: &[NotifyingBatch]) -> Vec<NewEvent> {
    let mut out = Vec::new();
    for f in finished {
        let Some(b) = batches.iter().find(|b| b.id == f.batch_id) else {
            continue;
        };
        out.push(NewEvent {
            event_id: job_event_id(&f.job_id),
            kind: f.kind,
            job_id: Some(f.job_id.clone()),
            batch_id: b.id.clone(),
            caller: f.caller.clone(),
            url: b.url.clone().filter(|_| b.url_events & f.kind != 0),
        });
    }
    for b in batches.iter().filter(|b| b.open_jobs <= 0) {
        out.push(NewEvent {
            event_id: batch_event_id(&b.id),
            kind: BATCH_COMPLETED,
            job_id: None,
            batch_id: b.id.clone(),
            caller: b.caller.clone(),
            url: b
                .url
                .clone()
                .filter(|_| b.url_events & BATCH_COMPLETED != 0),
        });
    }
    out
}

/// How many jobs of each batch finished, for the `open_jobs` counters.
pub(crate) fn finished_per_batch(finished: &[Finished]) -> Vec<(String, i64)> {
    let mut counts: Vec<(String, i64)> = Vec::new();
    for f in finished {
        match counts.iter_mut().find(|(b, _)| *b == f.batch_id) {
            Some((_, n)) => *n += 1,
            None => counts.push((f.batch_id.clone(), 1)),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(job: &str, batch: &str, kind: i64) -> Finished {
        Finished {
            job_id: job.into(),
            batch_id: batch.into(),
            caller: "c".into(),
            kind,
        }
    }

    #[test]
    fn only_entering_a_terminal_state_is_an_event() {
        assert_eq!(
            job_event(JobState::Processing, JobState::Completed),
            Some(JOB_COMPLETED)
        );
        assert_eq!(
            job_event(JobState::Queued, JobState::Cancelled),
            Some(JOB_CANCELLED)
        );
        assert_eq!(job_event(JobState::Queued, JobState::Processing), None);
        assert_eq!(job_event(JobState::Completed, JobState::Completed), None);
    }

    #[test]
    fn events_follow_the_filters_and_batch_completion() {
        let batches = [
            NotifyingBatch {
                id: "b1".into(),
                caller: "c".into(),
                url: Some("https://x".into()),
                url_events: JOB_FAILED | BATCH_COMPLETED,
                open_jobs: 0,
            },
            NotifyingBatch {
                id: "b2".into(),
                caller: "c".into(),
                url: None,
                url_events: 0,
                open_jobs: 3,
            },
        ];
        let evs = events_of(
            &[
                finished("j1", "b1", JOB_COMPLETED),
                finished("j2", "b1", JOB_FAILED),
                finished("j3", "b2", JOB_COMPLETED),
                finished("j4", "b3", JOB_COMPLETED),
            ],
            &batches,
        );
        let summary: Vec<(&str, i64, bool)> = evs
            .iter()
            .map(|e| (e.event_id.as_str(), e.kind, e.url.is_some()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("evt_j1", JOB_COMPLETED, false),
                ("evt_j2", JOB_FAILED, true),
                ("evt_j3", JOB_COMPLETED, false),
                ("evt_b1", BATCH_COMPLETED, true),
            ]
        );
        assert_eq!(
            finished_per_batch(&[finished("a", "b1", 1), finished("b", "b1", 2)]),
            vec![("b1".to_owned(), 2)]
        );
    }

    #[test]
    fn names_round_trip() {
        for (name, kind) in EVENT_NAMES {
            assert_eq!(event_kind(name), Some(kind));
            assert_eq!(event_name(kind), name);
        }
        assert_eq!(event_kind("job.updated"), None);
    }
}

/// The columns [`entry_from_row`] expects, in this order.
pub(crate) const OUTBOX_COLUMNS: &str =
    "seq, event_id, endpoint, url, kind, job_id, batch_id, created_at, attempts";

/// Decodes one outbox row selected with [`OUTBOX_COLUMNS`] (SQLite's or PostgreSQL's).
pub(crate) fn entry_from_row(row: &dyn Cols) -> crate::Result<OutboxEntry> {
    Ok(OutboxEntry {
        seq: row.int(0)?,
        event_id: row.text(1)?,
        endpoint: row.text(2)?,
        url: row.text(3)?,
        kind: row.int(4)?,
        job_id: row.opt_text(5)?,
        batch_id: row.text(6)?,
        created_at_ms: row.int(7)?,
        attempts: row.int(8)?,
    })
}

/// SQL written with `?` placeholders, numbered for PostgreSQL (`$1`, `$2`, …). The
/// statements given here have no `?` inside literals.
pub(crate) fn postgres_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

// The outbox writes below are the same statements on both backends. The other writes differ
// in shape (PostgreSQL's array statements, `SKIP LOCKED`) and live with each backend.

static MARK_BATCH: Statement = Statement::new(
    "UPDATE batches SET notify = 1, notify_url = ?, notify_url_events = ?, \
     open_jobs = job_count WHERE id = ?",
);

/// Marks new batches whose events go somewhere, inside the Submit's transaction.
pub(crate) fn mark_batches<E: Exec>(
    conn: &mut E,
    batches: &[(&str, &BatchNotify)],
) -> impl Future<Output = crate::Result<()>> + Send {
    async move {
        let sql = MARK_BATCH.of(E::DIALECT);
        for (id, notify) in batches {
            let (url, events) = match &notify.url {
                Some((u, e)) => (Some(u.as_str()), *e),
                None => (None, 0i64),
            };
            conn.execute(sql, &args![url, events, *id]).await?;
        }
        Ok(())
    }
}

/// Replaces the configured endpoints.
pub(crate) fn set_endpoints<E: Exec>(
    conn: &mut E,
    endpoints: &[NotifyEndpoint],
) -> impl Future<Output = crate::Result<()>> + Send {
    async move {
        conn.execute("DELETE FROM notify_endpoints", &[]).await?;
        let sql = E::DIALECT
            .params("INSERT INTO notify_endpoints (id, caller, url, events) VALUES (?, ?, ?, ?)");
        for e in endpoints {
            conn.execute(&sql, &args![&e.id, &e.caller, &e.url, e.events])
                .await?;
        }
        Ok(())
    }
}

/// Disables an endpoint and parks its due deliveries; how many were parked.
pub(crate) fn disable<E: Exec>(
    conn: &mut E,
    endpoint: &str,
    reason: &str,
    now_ms: i64,
) -> impl Future<Output = crate::Result<u64>> + Send {
    async move {
        let sql = E::DIALECT.params(
            "INSERT INTO notify_disabled (endpoint, disabled_at, reason) VALUES (?, ?, ?) \
             ON CONFLICT (endpoint) DO UPDATE SET disabled_at = excluded.disabled_at, \
             reason = excluded.reason",
        );
        conn.execute(&sql, &args![endpoint, now_ms, reason]).await?;
        let sql = E::DIALECT.params(&format!(
            "UPDATE notify_outbox SET state = {PARKED} WHERE endpoint = ? AND state = {DUE}"
        ));
        conn.execute(&sql, &args![endpoint]).await
    }
}

/// Every delivery of a batch due again (same ids, attempts reset), its endpoints switched on
/// with their parked deliveries. `None` for an unknown batch.
pub(crate) fn redeliver<E: Exec>(
    conn: &mut E,
    batch_id: &str,
    now_ms: i64,
) -> impl Future<Output = crate::Result<Option<u64>>> + Send {
    async move {
        let d = E::DIALECT;
        let known = conn
            .optional(
                &d.params("SELECT 1 FROM batches WHERE id = ?"),
                &args![batch_id],
                |_| Ok(()),
            )
            .await?;
        if known.is_none() {
            return Ok(None);
        }
        let sql = d.params("SELECT DISTINCT endpoint FROM notify_outbox WHERE batch_id = ?");
        let endpoints = conn.rows(&sql, &args![batch_id], |row| row.text(0)).await?;
        let enable = d.params("DELETE FROM notify_disabled WHERE endpoint = ?");
        let unpark = d.params(&format!(
            "UPDATE notify_outbox SET state = {DUE}, next_at = ? \
             WHERE endpoint = ? AND state = {PARKED}"
        ));
        for endpoint in &endpoints {
            conn.execute(&enable, &args![endpoint]).await?;
            conn.execute(&unpark, &args![now_ms, endpoint]).await?;
        }
        let sql = d.params(&format!(
            "UPDATE notify_outbox SET state = {DUE}, next_at = ?, attempts = 0 WHERE batch_id = ?"
        ));
        let queued = conn.execute(&sql, &args![now_ms, batch_id]).await?;
        Ok(Some(queued))
    }
}

#[cfg(test)]
mod params_tests {
    use crate::search::Dialect;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            super::postgres_params("UPDATE t SET a = ?, b = ? WHERE id = ?"),
            "UPDATE t SET a = $1, b = $2 WHERE id = $3"
        );
        assert_eq!(Dialect::Sqlite.params("a = ?"), "a = ?");
    }
}
