//! Retention on SQLite: one bounded delete step, and the incremental vacuum that gives the
//! freed pages back to the file system.
//!
//! Both run on the writer thread (commands `Purge` and `Reclaim`), inside the group transaction
//! like any other write and in a savepoint of their own, so a failing step undoes itself alone.
//! That is how they interleave with Submit on SQLite's single writer: a step deletes at most
//! `limit` rows of each kind (a few milliseconds), the engine waits for its answer before it
//! sends the next one, and every Submit that queued meanwhile is ahead of that next step in the
//! writer's channel. No step ever holds the write lock for a whole pass.
//!
//! Every statement is an index range scan over the oldest rows, never a table scan; the unit
//! test at the bottom checks each plan with `EXPLAIN QUERY PLAN`:
//! - old terminal jobs: `jobs_retention` (partial, terminal states, by `completed_at`);
//! - their attempts and batches: only those the deleted jobs named, each checked for a
//!   remaining job through `jobs_attempt` / `jobs_batch_seq`;
//! - request ids: `request_ids_created`; delivery ids: `webhook_deliveries_received`.
//!
//! # Space
//!
//! Deleted rows leave free pages, which SQLite reuses for new rows: with retention on, the
//! file stops growing at the high-water mark of what is retained. To also shrink it (after a
//! backlog is first deleted, or a shorter retention is configured) the database runs with
//! `auto_vacuum = INCREMENTAL`, and [`reclaim`] moves up to `pages` pages from the end of the
//! file into free slots and truncates it (`PRAGMA incremental_vacuum(N)`), a small step at a
//! time like the deletes. The file shrinks on disk when the WAL is next checkpointed.
//! [`enable_incremental_vacuum`] switches a database created before this (auto_vacuum NONE)
//! once, at open.

use std::collections::BTreeSet;
use std::time::Instant;

use super::conn::Conn;
use super::rows::sql_limit;
use crate::exec::{Exec, args};
use crate::retention::{Ids, PurgeCutoffs, PurgeSql, Purged, purge_step};
use crate::{Result, StoreError};

impl PurgeSql for Conn {
    /// Old terminal jobs, oldest first. `INDEXED BY` makes a missing index an error rather than
    /// a silent table scan on every step.
    const DELETE_JOBS: &'static str = "DELETE FROM jobs WHERE rowid IN (\
             SELECT rowid FROM jobs INDEXED BY jobs_retention \
             WHERE state IN (3, 4, 5) AND completed_at < ?1 ORDER BY completed_at LIMIT ?2) \
         RETURNING batch_id, attempt_id";

    /// Attempts named by the jobs just deleted (a JSON array) that no job refers to any more.
    const DELETE_ATTEMPTS: &'static str = "DELETE FROM attempts \
         WHERE id IN (SELECT value FROM json_each(?1)) \
         AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.attempt_id = attempts.id)";

    /// Batches named by the jobs just deleted that have no job left.
    const DELETE_BATCHES: &'static str = "DELETE FROM batches \
         WHERE id IN (SELECT value FROM json_each(?1)) \
         AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.batch_id = batches.id)";

    /// Outbound-webhook rows of the batches just deleted (the events go with their batch).
    const DELETE_OUTBOX: &'static str = "DELETE FROM notify_outbox \
         WHERE batch_id IN (SELECT value FROM json_each(?1)) \
         AND NOT EXISTS (SELECT 1 FROM batches WHERE batches.id = notify_outbox.batch_id)";

    const DELETE_REQUEST_IDS: &'static str = "DELETE FROM request_ids WHERE rowid IN (\
             SELECT rowid FROM request_ids WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)";

    /// `webhook_deliveries` is WITHOUT ROWID: rows are named by their primary key.
    const DELETE_DELIVERIES: &'static str = "DELETE FROM webhook_deliveries \
         WHERE (provider, delivery_id) IN (\
             SELECT provider, delivery_id FROM webhook_deliveries \
             WHERE received_at < ?1 ORDER BY received_at LIMIT ?2)";

    /// The ids as one JSON array (read with `json_each`).
    async fn delete_named(&mut self, sql: &'static str, ids: Ids<'_>) -> Result<u64> {
        let set = match ids {
            Ids::Attempts(ids) => json_array(ids)?,
            Ids::Batches(ids) => json_array(ids)?,
        };
        self.execute(sql, &args![&set]).await
    }
}

/// One retention step (see `Store::purge`), inside the writer's transaction.
pub(super) async fn purge(conn: &mut Conn, cutoffs: PurgeCutoffs, limit: usize) -> Result<Purged> {
    purge_step(conn, cutoffs, sql_limit(limit)).await
}

fn json_array<T: serde::Serialize>(items: &BTreeSet<T>) -> Result<String> {
    serde_json::to_string(items).map_err(|e| StoreError::Corrupt(format!("retention ids: {e}")))
}

/// Frees up to `pages` pages from the end of the file, inside the writer's transaction, and
/// returns how many free pages remain — or 0 when this step freed none: a database without
/// incremental auto-vacuum (in memory, or a file whose one-time VACUUM could not run) keeps
/// its free pages for reuse, and the caller must not loop on them.
pub(super) async fn reclaim(conn: &mut Conn, pages: u32) -> Result<u64> {
    let before = freelist(conn).await?;
    if before == 0 {
        return Ok(0);
    }
    // A PRAGMA takes no bound parameters; `pages` is a number, so formatting it is safe.
    conn.execute(&format!("PRAGMA incremental_vacuum({pages})"), &[])
        .await?;
    let after = freelist(conn).await?;
    Ok(if after < before { after } else { 0 })
}

async fn freelist(conn: &mut Conn) -> Result<u64> {
    let free = conn
        .one("PRAGMA freelist_count", &[], |row| row.int(0))
        .await?;
    Ok(u64::try_from(free).unwrap_or(0))
}

/// `PRAGMA auto_vacuum` values.
const AUTO_VACUUM_INCREMENTAL: i64 = 2;

/// Makes sure a file database runs with `auto_vacuum = INCREMENTAL`, before the writer thread
/// starts and before any reader connects.
///
/// A file created by this build has it from the start (the write connection asks for it
/// before the first table exists). A file created before it (auto_vacuum NONE) can only be
/// switched by rewriting it with `VACUUM`, once: that takes about as long as copying the file
/// and needs as much free disk again, and it runs here, at open, before the gateway serves
/// (logged with its duration). If it cannot run (another process holds the database, the
/// disk is full) the store still opens: deleted rows' pages are then reused but never given
/// back, so the file stays at its largest size until a later open succeeds.
pub(super) async fn enable_incremental_vacuum(conn: &mut Conn) -> Result<()> {
    let mode = conn
        .one("PRAGMA auto_vacuum", &[], |row| row.int(0))
        .await?;
    if mode == AUTO_VACUUM_INCREMENTAL {
        return Ok(());
    }
    let started = Instant::now();
    tracing::info!(
        "store: rewriting the database once (VACUUM) to turn on incremental auto-vacuum, so \
         that space freed by retention goes back to the file system"
    );
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL", &[])
        .await?;
    match conn.execute("VACUUM", &[]).await {
        Ok(_) => tracing::info!(
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "store: incremental auto-vacuum is on"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "store: could not rewrite the database for incremental auto-vacuum; space freed \
             by retention is reused but not returned to the file system until a later start \
             succeeds"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::sqlite::conn::Location;

    /// Every retention statement reads through an index: `EXPLAIN QUERY PLAN` shows no full
    /// scan of a table (`SCAN <table>` without an index) — only `json_each`, the short list
    /// of ids a step just deleted, is scanned.
    #[tokio::test]
    async fn every_retention_statement_is_an_index_range_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        let mut conn = Location::parse(&url)
            .expect("url")
            .open(std::time::Duration::from_secs(5))
            .expect("connect");
        for (sql, index) in [
            (Conn::DELETE_JOBS, "jobs_retention"),
            (Conn::DELETE_ATTEMPTS, "jobs_attempt"),
            (Conn::DELETE_BATCHES, "jobs_batch_seq"),
            (Conn::DELETE_REQUEST_IDS, "request_ids_created"),
            (Conn::DELETE_DELIVERIES, "webhook_deliveries_received"),
        ] {
            let plan: Vec<String> = conn
                .rows(&format!("EXPLAIN QUERY PLAN {sql}"), &[], |row| row.text(3))
                .await
                .expect("explain");
            let text = plan.join(" | ");
            eprintln!("{text}");
            assert!(text.contains(index), "{sql}\nshould use {index}: {text}");
            for step in &plan {
                let full_scan = step.starts_with("SCAN ")
                    && !step.contains("INDEX")
                    && !step.contains("json_each");
                assert!(!full_scan, "{sql}\nscans a table: {text}");
            }
        }
        conn.close().expect("close");
        crate::Store::close(&store).await;
    }
}
