//! The outbox on SQLite: the rows a finishing write adds (inside the writer's transaction),
//! and the deliverer's writes, which go through the writer like every other write.

use super::conn::Conn;
use crate::Result;
use crate::exec::{Exec, args};
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
        conn: &mut Conn,
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
    conn: &mut Conn,
    finished: &[Finished],
    now_ms: i64,
) -> Result<()> {
    if finished.is_empty() {
        return Ok(());
    }
    let mut batches = Vec::new();
    for (batch_id, n) in finished_per_batch(finished) {
        let found = conn
            .optional(
                "UPDATE batches SET open_jobs = open_jobs - ? WHERE id = ? AND notify = 1 \
                 RETURNING caller, notify_url, notify_url_events, open_jobs",
                &args![n, &batch_id],
                |row| Ok((row.text(0)?, row.opt_text(1)?, row.int(2)?, row.int(3)?)),
            )
            .await?;
        if let Some((caller, url, url_events, open_jobs)) = found {
            batches.push(NotifyingBatch {
                id: batch_id,
                caller,
                url,
                url_events,
                open_jobs,
            });
        }
    }
    for event in events_of(finished, &batches) {
        insert_event(conn, &event, now_ms).await?;
    }
    Ok(())
}

async fn insert_event(conn: &mut Conn, e: &NewEvent, now_ms: i64) -> Result<()> {
    if let Some(url) = &e.url {
        let endpoint = crate::notify::url_endpoint(url);
        conn.execute(
            "INSERT INTO notify_outbox (event_id, endpoint, url, kind, job_id, batch_id, \
             created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (event_id, endpoint) DO NOTHING",
            &args![
                &e.event_id,
                &endpoint,
                url,
                e.kind,
                &e.job_id,
                &e.batch_id,
                now_ms,
                now_ms
            ],
        )
        .await?;
    }
    conn.execute(
        "INSERT INTO notify_outbox (event_id, endpoint, url, kind, job_id, batch_id, \
         created_at, next_at) \
         SELECT ?, e.id, e.url, ?, ?, ?, ?, ? FROM notify_endpoints e \
         WHERE e.caller = ? AND (e.events & ?) <> 0 \
         ON CONFLICT (event_id, endpoint) DO NOTHING",
        &args![
            &e.event_id,
            e.kind,
            &e.job_id,
            &e.batch_id,
            now_ms,
            now_ms,
            &e.caller,
            e.kind
        ],
    )
    .await?;
    Ok(())
}

async fn claim(
    conn: &mut Conn,
    now_ms: i64,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<OutboxEntry>> {
    let sql = format!(
        "UPDATE notify_outbox SET next_at = ? WHERE seq IN \
         (SELECT seq FROM notify_outbox WHERE state = {DUE} AND next_at <= ? \
          ORDER BY next_at, seq LIMIT ?) RETURNING {OUTBOX_COLUMNS}"
    );
    let limit = crate::rows::sql_limit(limit);
    let mut out = conn
        .rows(
            &sql,
            &args![now_ms.saturating_add(lease_ms), now_ms, limit],
            entry_from_row,
        )
        .await?;
    // RETURNING gives no order; the deliverer sends oldest first.
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

async fn settle(conn: &mut Conn, settles: &[NotifySettle], now_ms: i64) -> Result<()> {
    for s in settles {
        let (state, next_at, error, failed) = s.outcome.columns(now_ms);
        conn.execute(
            "UPDATE notify_outbox SET state = ?, next_at = ?, \
             last_error = COALESCE(?, last_error), attempts = attempts + ? WHERE seq = ?",
            &args![state, next_at, error, failed, s.seq],
        )
        .await?;
    }
    Ok(())
}
