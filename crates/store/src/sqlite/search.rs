//! ListJobs and ListBatches on SQLite: runs the shared queries of `crate::search` on a read
//! connection.

use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnection};

use super::rows::{JOB_COLUMNS, db, jobs_from_rows};
use crate::Result;
use crate::model::JobRecord;
use crate::search::{
    Arg, BatchFilter, BatchSummary, Dialect, JobFilter, Page, PageKey, Sql, add_counts,
    batch_counts_query, batch_from_row, batches_query, count_from_row, into_page, jobs_query,
};

fn bound(q: &Sql) -> Query<'_, sqlx::Sqlite, SqliteArguments<'_>> {
    q.args
        .iter()
        .fold(sqlx::query(&q.text), |query, a| match a {
            Arg::Text(t) => query.bind(t.as_str()),
            Arg::Int(i) => query.bind(*i),
        })
}

pub(super) async fn list_jobs(
    conn: &mut SqliteConnection,
    filter: &JobFilter,
    after: Option<&PageKey>,
    limit: usize,
) -> Result<Page<JobRecord>> {
    let q = jobs_query(Dialect::Sqlite, JOB_COLUMNS, filter, after, limit);
    let rows = bound(&q).fetch_all(conn).await.map_err(db)?;
    Ok(into_page(jobs_from_rows(&rows)?, limit, |j| PageKey {
        created_at_ms: j.created_at_ms,
        id: j.id.clone(),
    }))
}

pub(super) async fn list_batches(
    conn: &mut SqliteConnection,
    filter: &BatchFilter,
    after: Option<&PageKey>,
    limit: usize,
) -> Result<Page<BatchSummary>> {
    let q = batches_query(Dialect::Sqlite, filter, after, limit);
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
    let q = batch_counts_query(Dialect::Sqlite, &ids);
    let rows = bound(&q).fetch_all(conn).await.map_err(db)?;
    let counts = rows
        .iter()
        .map(count_from_row)
        .collect::<Result<Vec<_>>>()?;
    add_counts(&mut page.items, counts)?;
    Ok(page)
}
