//! (b) rusqlite on dedicated threads: the writer thread owns the write connection and runs a
//! whole group (BEGIN, the inserts from `prepare_cached` statements, COMMIT) without leaving
//! the thread; the only hand-offs are the queue in and one oneshot per answer. Readers are
//! threads owning a connection each.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::ToSql;
use rusqlite::{Connection, OpenFlags, Row};
use tokio::sync::mpsc;

use super::{GROUP, Groups, JobRow, Read, ReadIds, ReadRow, Write, chunk_sizes, insert_sql};
use crate::Res;

/// Reader threads (one per core).
const READERS: usize = 2;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Room for every multi-row shape plus the single-row and read statements.
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

pub(super) fn open(path: &Path) -> Res<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    Ok(conn)
}

/// The writer thread: block for the first command, take what else is waiting (up to `GROUP`),
/// one transaction, answer everyone.
pub(super) fn writer(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Write>,
    multi: bool,
    groups: &Groups,
) {
    let mut group: Vec<Write> = Vec::with_capacity(GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let ok = commit(&mut conn, &group, multi).is_ok();
        groups.add(group.len());
        for w in group.drain(..) {
            let _ = w.done.send(ok);
        }
    }
}

const STATE: i64 = 1;
const SEQ: i64 = 0;
const REVISION: i64 = 1;
const PRIORITY: i64 = 2;

/// The 15 parameters of one row, in `INSERT_COLUMNS` order.
fn push_params<'a>(out: &mut Vec<&'a dyn ToSql>, r: &'a JobRow, deadline: &'a i64) {
    out.extend_from_slice(&[
        &r.id as &dyn ToSql,
        &r.batch_id,
        &SEQ,
        &"staticadslab",
        &r.spec,
        &STATE,
        &"[]",
        &r.client_ref,
        &"{}",
        &r.now,
        &r.now,
        deadline,
        &REVISION,
        &"anonymous",
        &PRIORITY,
    ]);
}

fn commit(conn: &mut Connection, group: &[Write], multi: bool) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let deadlines: Vec<i64> = group.iter().map(|w| w.row.now + 86_400_000).collect();
    {
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(super::INSERT_PARAMS * 256);
        if multi {
            let mut at = 0;
            for size in chunk_sizes(group.len()) {
                let mut stmt = tx.prepare_cached(&insert_sql(size))?;
                params.clear();
                for (w, d) in group[at..at + size].iter().zip(&deadlines[at..at + size]) {
                    push_params(&mut params, &w.row, d);
                }
                stmt.execute(params.as_slice())?;
                at += size;
            }
        } else {
            let mut stmt = tx.prepare_cached(&insert_sql(1))?;
            for (w, d) in group.iter().zip(&deadlines) {
                params.clear();
                push_params(&mut params, &w.row, d);
                stmt.execute(params.as_slice())?;
            }
        }
    }
    tx.commit()
}

/// Stores `rows` in one transaction (the read measurements' table).
pub(super) fn fill(path: &Path, rows: &[JobRow]) -> Res<()> {
    let mut conn = open(path)?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(&insert_sql(1))?;
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(super::INSERT_PARAMS);
        let deadlines: Vec<i64> = rows.iter().map(|r| r.now + 86_400_000).collect();
        for (r, d) in rows.iter().zip(&deadlines) {
            params.clear();
            push_params(&mut params, r, d);
            stmt.execute(params.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn decode(row: &Row<'_>) -> rusqlite::Result<ReadRow> {
    Ok(ReadRow {
        id: row.get(0)?,
        batch_id: row.get(1)?,
        seq: row.get(2)?,
        provider: row.get(3)?,
        spec: row.get(4)?,
        state: row.get(5)?,
        provider_ref: row.get(6)?,
        poll_key: row.get(7)?,
        progress: row.get(8)?,
        outputs: row.get(9)?,
        error: row.get(10)?,
        client_ref: row.get(11)?,
        labels: row.get(12)?,
        created_at: row.get(13)?,
        updated_at: row.get(14)?,
        completed_at: row.get(15)?,
        deadline_at: row.get(16)?,
        revision: row.get(17)?,
        caller: row.get(18)?,
        priority: row.get(19)?,
    })
}

fn read(conn: &Connection, ids: &ReadIds) -> rusqlite::Result<usize> {
    let (sql, arg) = match ids {
        ReadIds::One(id) => (super::select_one_sql(), id),
        ReadIds::Many(json) => (super::select_many_sql(), json),
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([arg], decode)?;
    let mut n = 0;
    for r in rows {
        r?;
        n += 1;
    }
    Ok(n)
}

/// `READERS` threads, each owning a read-only connection, taking reads from one shared queue
/// (the thread holding the lock waits on the queue, the others on the lock).
pub(super) fn readers(path: &Path, rx: mpsc::Receiver<Read>) -> Res<super::Readers> {
    let rx = Arc::new(Mutex::new(rx));
    let mut threads = Vec::with_capacity(READERS);
    for i in 0..READERS {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(8);
        let rx = rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("bench-sqlite-reader-{i}"))
                .spawn(move || {
                    loop {
                        let next = rx
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .blocking_recv();
                        let Some(r) = next else { break };
                        let got = read(&conn, &r.ids).ok();
                        let _ = r.done.send(got);
                    }
                })?,
        );
    }
    Ok(super::Readers::Threads(threads))
}
