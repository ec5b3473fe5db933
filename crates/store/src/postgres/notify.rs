//! The outbox on PostgreSQL: the rows a finishing write adds (in the writer's transaction, a
//! few array statements however many jobs finished), and the deliverer's own short
//! transactions on the pool — several replicas' deliverers claim with `SKIP LOCKED`, so each
//! due delivery goes to one of them.

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Row};

use super::rows::db;
use crate::Result;
use crate::notify::{
    DUE, Finished, NotifySettle, NotifyingBatch, OUTBOX_COLUMNS, OutboxEntry, disable,
    entry_from_row, events_of, finished_per_batch, redeliver, set_endpoints, url_endpoint,
};

use crate::rows::sql_limit;

/// The outbox rows of jobs that finished in this write: one UPDATE of the batches' counters
/// and two INSERTs, whatever the number of jobs.
pub(super) async fn record_finished(
    conn: &mut PgConnection,
    finished: &[Finished],
    now_ms: i64,
) -> Result<()> {
    if finished.is_empty() {
        return Ok(());
    }
    // The notifying batches are locked in id order before the UPDATE: two writers (of this
    // process or of two replicas) finishing jobs of the same batches then take those rows in
    // the same order, never waiting on each other in a cycle (which PostgreSQL breaks only
    // after `deadlock_timeout`, failing one group). Most batches do not notify: then this
    // read finds nothing and is the only statement.
    let mut per_batch = finished_per_batch(finished);
    per_batch.sort_unstable();
    let (ids, counts): (Vec<String>, Vec<i64>) = per_batch.into_iter().unzip();
    let notifying = sqlx::query(
        "SELECT 1 FROM batches WHERE id = ANY($1) AND notify = 1 ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    if notifying.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "UPDATE batches AS b SET open_jobs = b.open_jobs - t.n \
         FROM UNNEST($1::text[], $2::bigint[]) AS t(id, n) \
         WHERE b.id = t.id AND b.notify = 1 \
         RETURNING b.id, b.caller, b.notify_url, b.notify_url_events, b.open_jobs",
    )
    .bind(&ids)
    .bind(&counts)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut batches = Vec::with_capacity(rows.len());
    for row in &rows {
        batches.push(NotifyingBatch {
            id: row.try_get(0).map_err(db)?,
            caller: row.try_get(1).map_err(db)?,
            url: row.try_get(2).map_err(db)?,
            url_events: row.try_get(3).map_err(db)?,
            open_jobs: row.try_get(4).map_err(db)?,
        });
    }
    let events = events_of(finished, &batches);
    let mut c = EventColumns::default();
    for e in &events {
        c.event_ids.push(e.event_id.as_str());
        c.kinds.push(e.kind);
        c.job_ids.push(e.job_id.as_deref());
        c.batch_ids.push(e.batch_id.as_str());
        c.callers.push(e.caller.as_str());
        c.endpoints.push(e.url.as_deref().map(url_endpoint));
        c.urls.push(e.url.as_deref());
    }
    // The Submit's endpoint, for the events it takes.
    sqlx::query(
        "INSERT INTO notify_outbox (event_id, endpoint, url, kind, job_id, batch_id, \
         created_at, next_at) \
         SELECT t.event_id, t.endpoint, t.url, t.kind, t.job_id, t.batch_id, $1, $1 \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[]) \
         AS t(event_id, endpoint, url, kind, job_id, batch_id) WHERE t.url IS NOT NULL \
         ON CONFLICT (event_id, endpoint) DO NOTHING",
    )
    .bind(now_ms)
    .bind(&c.event_ids)
    .bind(&c.endpoints)
    .bind(&c.urls)
    .bind(&c.kinds)
    .bind(&c.job_ids)
    .bind(&c.batch_ids)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    // The caller's configured endpoints that take them.
    sqlx::query(
        "INSERT INTO notify_outbox (event_id, endpoint, url, kind, job_id, batch_id, \
         created_at, next_at) \
         SELECT t.event_id, e.id, e.url, t.kind, t.job_id, t.batch_id, $1, $1 \
         FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) \
         AS t(event_id, kind, job_id, batch_id, caller) \
         JOIN notify_endpoints e ON e.caller = t.caller AND (e.events & t.kind) <> 0 \
         ON CONFLICT (event_id, endpoint) DO NOTHING",
    )
    .bind(now_ms)
    .bind(&c.event_ids)
    .bind(&c.kinds)
    .bind(&c.job_ids)
    .bind(&c.batch_ids)
    .bind(&c.callers)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

#[derive(Default)]
struct EventColumns<'a> {
    event_ids: Vec<&'a str>,
    kinds: Vec<i64>,
    job_ids: Vec<Option<&'a str>>,
    batch_ids: Vec<&'a str>,
    callers: Vec<&'a str>,
    endpoints: Vec<Option<String>>,
    urls: Vec<Option<&'a str>>,
}

pub(super) async fn set_endpoints_in_tx(
    pool: &PgPool,
    endpoints: &[crate::NotifyEndpoint],
) -> Result<()> {
    let mut conn = pool.acquire().await.map_err(db)?;
    let mut tx = conn.begin().await.map_err(db)?;
    set_endpoints(&mut *tx, endpoints).await?;
    tx.commit().await.map_err(db)
}

/// [`OUTBOX_COLUMNS`] qualified with `o.` (the claim joins the outbox with its own ids).
static O_OUTBOX_COLUMNS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    OUTBOX_COLUMNS
        .split(", ")
        .map(|c| format!("o.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
});

pub(super) async fn claim(
    pool: &PgPool,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<OutboxEntry>> {
    let rows = sqlx::query(&format!(
        "UPDATE notify_outbox AS o SET next_at = $1 FROM \
         (SELECT seq FROM notify_outbox WHERE state = {DUE} AND next_at <= $2 \
          ORDER BY next_at, seq LIMIT $3 FOR UPDATE SKIP LOCKED) AS d \
         WHERE o.seq = d.seq RETURNING {o_columns}",
        o_columns = *O_OUTBOX_COLUMNS
    ))
    .bind(now_ms.saturating_add(lease_ms))
    .bind(now_ms)
    .bind(sql_limit(limit))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut out: Vec<OutboxEntry> = rows
        .iter()
        .map(|row| entry_from_row(row))
        .collect::<Result<_>>()?;
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

pub(super) async fn settle(pool: &PgPool, settles: &[NotifySettle], now_ms: i64) -> Result<()> {
    let mut seqs = Vec::with_capacity(settles.len());
    let mut states = Vec::with_capacity(settles.len());
    let mut next_ats = Vec::with_capacity(settles.len());
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(settles.len());
    let mut failed = Vec::with_capacity(settles.len());
    for s in settles {
        let (state, next_at, error, f) = s.outcome.columns(now_ms);
        seqs.push(s.seq);
        states.push(state);
        next_ats.push(next_at);
        errors.push(error);
        failed.push(f);
    }
    sqlx::query(
        "UPDATE notify_outbox AS o SET state = t.state, next_at = t.next_at, \
         last_error = COALESCE(t.error, o.last_error), attempts = o.attempts + t.failed \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[]) \
         AS t(seq, state, next_at, error, failed) WHERE o.seq = t.seq",
    )
    .bind(&seqs)
    .bind(&states)
    .bind(&next_ats)
    .bind(&errors)
    .bind(&failed)
    .execute(pool)
    .await
    .map_err(db)?;
    Ok(())
}

pub(super) async fn disable_in_tx(
    pool: &PgPool,
    endpoint: &str,
    reason: &str,
    now_ms: i64,
) -> Result<u64> {
    let mut conn = pool.acquire().await.map_err(db)?;
    let mut tx = conn.begin().await.map_err(db)?;
    let parked = disable(&mut *tx, endpoint, reason, now_ms).await?;
    tx.commit().await.map_err(db)?;
    Ok(parked)
}

pub(super) async fn disabled(pool: &PgPool) -> Result<Vec<(String, String)>> {
    sqlx::query_as("SELECT endpoint, reason FROM notify_disabled ORDER BY endpoint")
        .fetch_all(pool)
        .await
        .map_err(db)
}

pub(super) async fn redeliver_in_tx(
    pool: &PgPool,
    batch_id: &str,
    now_ms: i64,
) -> Result<Option<u64>> {
    let mut conn = pool.acquire().await.map_err(db)?;
    let mut tx = conn.begin().await.map_err(db)?;
    let queued = redeliver(&mut *tx, batch_id, now_ms).await?;
    tx.commit().await.map_err(db)?;
    Ok(queued)
}
