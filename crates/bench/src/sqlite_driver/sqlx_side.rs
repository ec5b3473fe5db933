//! (a) sqlx, as adgate's SQLite store drives it today: a tokio task owns the write connection
//! and commits groups; reads go to a fixed set of connections (no pool pings). Every statement
//! is a round trip to the connection's own worker thread over sqlx's channel.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{Mutex, mpsc};

use super::{GROUP, Groups, JobRow, Read, ReadIds, ReadRow, Write, chunk_sizes, insert_sql};
use crate::Res;

/// sqlx's read connections (adgate's store opens a handful; 4 here, 2 per core).
const READERS: usize = 4;

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
}

pub(super) async fn open(path: &Path) -> Res<SqliteConnection> {
    Ok(options(path).connect().await?)
}

/// The writer task: take what is waiting (up to `GROUP`), one transaction, answer everyone.
pub(super) async fn writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Write>,
    multi: bool,
    groups: Arc<Groups>,
) {
    let mut group: Vec<Write> = Vec::with_capacity(GROUP);
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let ok = commit(&mut conn, &group, multi).await.is_ok();
        groups.add(group.len());
        for w in group.drain(..) {
            let _ = w.done.send(ok);
        }
    }
    let _ = conn.close().await;
}

fn bind_row<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    r: &'q JobRow,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    q.bind(r.id.as_str())
        .bind(r.batch_id.as_str())
        .bind(0_i64)
        .bind("staticadslab")
        .bind(r.spec.as_str())
        .bind(1_i64)
        .bind("[]")
        .bind(r.client_ref.as_str())
        .bind("{}")
        .bind(r.now)
        .bind(r.now)
        .bind(r.now + 86_400_000)
        .bind(1_i64)
        .bind("anonymous")
        .bind(2_i64)
}

async fn commit(conn: &mut SqliteConnection, group: &[Write], multi: bool) -> Res<()> {
    let mut tx = conn.begin().await?;
    if multi {
        let mut at = 0;
        for size in chunk_sizes(group.len()) {
            // sqlx caches the prepared statement per SQL text (at most `CHUNKS.len()` texts).
            let sql = insert_sql(size);
            let mut q = sqlx::query(&sql);
            for w in &group[at..at + size] {
                q = bind_row(q, &w.row);
            }
            q.execute(&mut *tx).await?;
            at += size;
        }
    } else {
        let sql = insert_sql(1);
        for w in group {
            bind_row(sqlx::query(&sql), &w.row)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

pub(super) fn decode(row: &SqliteRow) -> Result<ReadRow, sqlx::Error> {
    Ok(ReadRow {
        id: row.try_get(0)?,
        batch_id: row.try_get(1)?,
        seq: row.try_get(2)?,
        provider: row.try_get(3)?,
        spec: row.try_get(4)?,
        state: row.try_get(5)?,
        provider_ref: row.try_get(6)?,
        poll_key: row.try_get(7)?,
        progress: row.try_get(8)?,
        outputs: row.try_get(9)?,
        error: row.try_get(10)?,
        client_ref: row.try_get(11)?,
        labels: row.try_get(12)?,
        created_at: row.try_get(13)?,
        updated_at: row.try_get(14)?,
        completed_at: row.try_get(15)?,
        deadline_at: row.try_get(16)?,
        revision: row.try_get(17)?,
        caller: row.try_get(18)?,
        priority: row.try_get(19)?,
    })
}

async fn read(conn: &mut SqliteConnection, ids: &ReadIds) -> Result<usize, sqlx::Error> {
    let rows = match ids {
        ReadIds::One(id) => sqlx::query(&super::select_one_sql())
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .into_iter()
            .collect::<Vec<_>>(),
        ReadIds::Many(json) => {
            sqlx::query(&super::select_many_sql())
                .bind(json.as_str())
                .fetch_all(&mut *conn)
                .await?
        }
    };
    let decoded: Result<Vec<ReadRow>, _> = rows.iter().map(decode).collect();
    Ok(decoded?.len())
}

/// `READERS` tasks, each owning a connection, taking reads from one shared queue.
pub(super) async fn readers(path: &Path, rx: mpsc::Receiver<Read>) -> Res<super::Readers> {
    let rx = Arc::new(Mutex::new(rx));
    let mut tasks = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let mut conn = options(path).read_only(true).connect().await?;
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(r) = next else { break };
                let got = read(&mut conn, &r.ids).await.ok();
                let _ = r.done.send(got);
            }
            let _ = conn.close().await;
        }));
    }
    Ok(super::Readers::Tasks(tasks))
}
