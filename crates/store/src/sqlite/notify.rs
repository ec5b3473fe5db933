//! The outbox on SQLite: the rows a finishing write adds (inside the writer's transaction),
//! and the deliverer's writes, which go through the writer like every other write.

use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::rows::db;
use crate::Result;
use crate::notify::{
    DUE, Finished, NewEvent, NotifySettle, NotifyingBatch, OUTBOX_COLUMNS, OutboxEntry, disable,
    entry_from_row, events_of, finished_per_batch, redeliver, set_endpoints,
};
use crate::writer::Reply;

/// A write of the deliverer, each with its own typed answer.
pub(in crate::sqlite) enum NotifyWrite {
    SetEndpoints {
        endpoints: Vec<crate::NotifyEndpoint>,
        reply: Reply<()>,
    },
    Claim {
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
        reply: Reply<Vec<OutboxEntry>>,
    },
    Settle {
        settles: Vec<NotifySettle>,
        now_ms: i64,
        reply: Reply<()>,
    },
    Disable {
        endpoint: String,
        reason: String,
        now_ms: i64,
        reply: Reply<u64>,
    },
    Redeliver {
        batch_id: String,
        now_ms: i64,
        reply: Reply<Option<u64>>,
    },
}

impl NotifyWrite {
    /// Runs it; the answer waits for the group's COMMIT like every other.
    pub(in crate::sqlite) async fn run(
        self,
        conn: &mut SqliteConnection,
    ) -> (Box<dyn crate::writer::Pending>, bool) {
        use crate::writer::pending;
        match self {
            Self::SetEndpoints { endpoints, reply } => {
                pending(reply, set_endpoints(conn, &endpoints).await)
            }
            Self::Claim {
                now_ms,
                lease_ms,
                limit,
                reply,
            } => pending(reply, claim(conn, now_ms, lease_ms, limit).await),
            Self::Settle {
                settles,
                now_ms,
                reply,
            } => pending(reply, settle(conn, &settles, now_ms).await),
            Self::Disable {
                endpoint,
                reason,
                now_ms,
                reply,
            } => pending(reply, disable(conn, &endpoint, &reason, now_ms).await),
            Self::Redeliver {
                batch_id,
                now_ms,
                reply,
            } => pending(reply, redeliver(conn, &batch_id, now_ms).await),
        }
    }
}

crate::writer::replies!(NotifyWrite {
    SetEndpoints,
    Claim,
    Settle,
    Disable,
    Redeliver
});

/// The outbox rows of jobs that finished in this write (inside its savepoint).
pub(super) async fn record_finished(
    conn: &mut SqliteConnection,
    finished: &[Finished],
    now_ms: i64,
) -> Result<()> {
    if finished.is_empty() {
        return Ok(());
    }
    let mut batches = Vec::new();
    for (batch_id, n) in finished_per_batch(finished) {
        let row = sqlx::query(
            "UPDATE batches SET open_jobs = open_jobs - ? WHERE id = ? AND notify = 1 \
             RETURNING caller, notify_url, notify_url_events, open_jobs",
        )
        .bind(n)
        .bind(&batch_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
        if let Some(row) = row {
            batches.push(NotifyingBatch {
                id: batch_id,
                caller: row.try_get(0).map_err(db)?,
                url: row.try_get(1).map_err(db)?,
                url_events: row.try_get(2).map_err(db)?,
                open_jobs: row.try_get(3).map_err(db)?,
            });
        }
    }
    for event in events_of(finished, &batches) {
        insert_event(conn, &event, now_ms).await?;
    }
    Ok(())
}

async fn insert_event(conn: &mut SqliteConnection, e: &NewEvent, now_ms: i64) -> Result<()> {
    if let Some(url) = &e.url {
        sqlx::query(
            "INSERT INTO notify_outbox (event_id, endpoint, url, kind, job_id, batch_id, \
             created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (event_id, endpoint) DO NOTHING",
        )
        .bind(&e.event_id)
        .bind(crate::notify::url_endpoint(url))
        .bind(url)
        .bind(e.kind)
        .bind(&e.job_id)
        .bind(&e.batch_id)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    sqlx::query(
        "INSERT INTO notify_outbox (event_id, endpoint, url, kind, job_id, batch_id, \
         created_at, next_at) \
         SELECT ?, e.id, e.url, ?, ?, ?, ?, ? FROM notify_endpoints e \
         WHERE e.caller = ? AND (e.events & ?) <> 0 \
         ON CONFLICT (event_id, endpoint) DO NOTHING",
    )
    .bind(&e.event_id)
    .bind(e.kind)
    .bind(&e.job_id)
    .bind(&e.batch_id)
    .bind(now_ms)
    .bind(now_ms)
    .bind(&e.caller)
    .bind(e.kind)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

async fn claim(
    conn: &mut SqliteConnection,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<OutboxEntry>> {
    let rows = sqlx::query(&format!(
        "UPDATE notify_outbox SET next_at = ? WHERE seq IN \
         (SELECT seq FROM notify_outbox WHERE state = {DUE} AND next_at <= ? \
          ORDER BY next_at, seq LIMIT ?) RETURNING {OUTBOX_COLUMNS}"
    ))
    .bind(now_ms.saturating_add(lease_ms))
    .bind(now_ms)
    .bind(crate::rows::sql_limit(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut out: Vec<OutboxEntry> = rows
        .iter()
        .map(|row| entry_from_row(row))
        .collect::<Result<_>>()?;
    // RETURNING gives no order; the deliverer sends oldest first.
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

async fn settle(conn: &mut SqliteConnection, settles: &[NotifySettle], now_ms: i64) -> Result<()> {
    for s in settles {
        let (state, next_at, error, failed) = s.outcome.columns(now_ms);
        sqlx::query(
            "UPDATE notify_outbox SET state = ?, next_at = ?, \
             last_error = COALESCE(?, last_error), attempts = attempts + ? WHERE seq = ?",
        )
        .bind(state)
        .bind(next_at)
        .bind(error)
        .bind(failed)
        .bind(s.seq)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}
