//! Search over stored jobs and batches (ListJobs, ListBatches): the typed filters the store
//! takes, the keyset position a page continues from, and the one SQL builder both backends
//! use. Every value a caller supplied is a bound parameter; the SQL text is assembled only
//! from the fixed fragments here, so no filter can change a query's shape beyond them.
//!
//! Order is newest first by `(created_at, id)`, a total order (ids are unique) that a new job
//! never disturbs below a page's last row unless its clock is behind, so a page position
//! stays valid while jobs arrive.

use adgate_generator::JobState;

use crate::exec::Cols;

/// Which jobs to list. Every condition must hold (AND); an empty filter matches every job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct JobFilter {
    /// `state = X` (several: all must hold, so two different states match nothing).
    pub states: Vec<JobState>,
    /// `state != X`.
    pub not_states: Vec<JobState>,
    pub providers: Vec<String>,
    pub batch_ids: Vec<String>,
    pub callers: Vec<String>,
    pub client_refs: Vec<String>,
    /// `labels.key = value`.
    pub labels: Vec<(String, String)>,
    /// Created at or after this time (Unix ms, inclusive).
    pub created_from_ms: Option<i64>,
    /// Created at or before this time (Unix ms, inclusive).
    pub created_to_ms: Option<i64>,
}

/// Which batches to list (AND of every condition).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BatchFilter {
    pub callers: Vec<String>,
    pub created_from_ms: Option<i64>,
    pub created_to_ms: Option<i64>,
}

/// The sort key of the last row of a page: the next page starts strictly below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub created_at_ms: i64,
    pub id: String,
}

/// One page, newest first, and where the next one starts (`None`: this is the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<PageKey>,
}

/// A batch as ListBatches shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSummary {
    pub id: String,
    pub caller: String,
    pub created_at_ms: i64,
    pub job_count: i64,
    /// Jobs per state, in state order; states without jobs are absent.
    pub counts: Vec<(JobState, u64)>,
    /// What its COMPLETED jobs cost, per unit (millionths), in unit order.
    pub cost: Vec<(String, i64)>,
}

/// A bound value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A query under construction: its text and its arguments, placeholders numbered as added.
pub(crate) struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
    dialect: Dialect,
}

impl Sql {
    fn new(dialect: Dialect, head: &str) -> Sql {
        Sql {
            text: head.to_owned(),
            args: Vec::new(),
            dialect,
        }
    }

    /// Adds `arg` and returns its placeholder.
    fn bind(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        match self.dialect {
            Dialect::Sqlite => "?".to_owned(),
            Dialect::Postgres => format!("${}", self.args.len()),
        }
    }

    /// ` AND <column> <op> <placeholder>` for each value.
    fn each(&mut self, column: &str, op: &str, values: impl IntoIterator<Item = Arg>) {
        for v in values {
            let p = self.bind(v);
            self.text.push_str(&format!(" AND {column} {op} {p}"));
        }
    }

    fn created_range(&mut self, from: Option<i64>, to: Option<i64>) {
        self.each("created_at", ">=", from.map(Arg::Int));
        self.each("created_at", "<=", to.map(Arg::Int));
    }

    /// Keyset continuation, order and limit (one row more than the page, to know whether
    /// another page follows).
    fn page(&mut self, after: Option<&PageKey>, limit: usize) {
        if let Some(k) = after {
            let t = self.bind(Arg::Int(k.created_at_ms));
            let id = self.bind(Arg::Text(k.id.clone()));
            // A row value, so both backends read it as one range on (created_at, id).
            self.text
                .push_str(&format!(" AND (created_at, id) < ({t}, {id})"));
        }
        let n = self.bind(Arg::Int(crate::rows::sql_limit(limit.saturating_add(1))));
        self.text
            .push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {n}"));
    }
}

/// The path SQLite's `json_extract` takes for a top-level key. The filter parser refuses keys
/// holding `"` or `\`, which a quoted path segment cannot express.
fn sqlite_label_path(key: &str) -> String {
    format!("$.\"{key}\"")
}

/// The states `jobs_unsuccessful` indexes (its `WHERE state IN (4, 5)`).
const UNSUCCESSFUL: [JobState; 2] = [JobState::Failed, JobState::Cancelled];

/// `SELECT <columns> FROM jobs WHERE … ORDER BY created_at DESC, id DESC LIMIT limit + 1`.
pub(crate) fn jobs_query(
    dialect: Dialect,
    columns: &str,
    f: &JobFilter,
    after: Option<&PageKey>,
    limit: usize,
) -> Sql {
    let mut q = Sql::new(dialect, &format!("SELECT {columns} FROM jobs WHERE TRUE"));
    let states = |v: &[JobState]| v.iter().map(|s| Arg::Int(s.as_i64())).collect::<Vec<_>>();
    let texts = |v: &[String]| v.iter().cloned().map(Arg::Text).collect::<Vec<_>>();
    q.each("state", "=", states(&f.states));
    if !f.states.is_empty() && f.states.iter().all(|s| UNSUCCESSFUL.contains(s)) {
        // Spelled as the partial index `jobs_unsuccessful` is: SQLite uses a partial index
        // only for a query holding its WHERE term word for word.
        let [a, b] = UNSUCCESSFUL.map(JobState::as_i64);
        q.text.push_str(&format!(" AND state IN ({a}, {b})"));
    }
    q.each("state", "<>", states(&f.not_states));
    // No index leads with the provider any more (a handful of values, one in three jobs):
    // on SQLite, `+provider` keeps the planner from taking `jobs_queue` for the equality and
    // sorting all the provider's jobs, so it walks `jobs_created` newest first instead.
    let provider = match dialect {
        Dialect::Sqlite => "+provider",
        Dialect::Postgres => "provider",
    };
    q.each(provider, "=", texts(&f.providers));
    q.each("batch_id", "=", texts(&f.batch_ids));
    q.each("caller", "=", texts(&f.callers));
    q.each("client_ref", "=", texts(&f.client_refs));
    for (key, value) in &f.labels {
        let k = q.bind(Arg::Text(match dialect {
            Dialect::Sqlite => sqlite_label_path(key),
            Dialect::Postgres => key.clone(),
        }));
        let value = q.bind(Arg::Text(value.clone()));
        let expr = match dialect {
            Dialect::Sqlite => format!(" AND json_extract(labels, {k}) = {value}"),
            Dialect::Postgres => format!(" AND (labels::jsonb ->> {k}) = {value}"),
        };
        q.text.push_str(&expr);
    }
    q.created_range(f.created_from_ms, f.created_to_ms);
    q.page(after, limit);
    q
}

/// `SELECT id, caller, created_at, job_count FROM batches WHERE … LIMIT limit + 1`.
pub(crate) fn batches_query(
    dialect: Dialect,
    f: &BatchFilter,
    after: Option<&PageKey>,
    limit: usize,
) -> Sql {
    let mut q = Sql::new(
        dialect,
        "SELECT id, caller, created_at, job_count FROM batches WHERE TRUE",
    );
    q.each("caller", "=", f.callers.iter().cloned().map(Arg::Text));
    q.created_range(f.created_from_ms, f.created_to_ms);
    q.page(after, limit);
    q
}

/// One GROUP BY over the page's batches (the `jobs_batch_seq` index): rows of
/// `(batch_id, state, cost_unit, count, sum of cost_micros)`.
pub(crate) fn batch_counts_query(dialect: Dialect, batch_ids: &[String]) -> Sql {
    let mut q = Sql::new(dialect, "");
    let marks: Vec<String> = batch_ids
        .iter()
        .map(|id| q.bind(Arg::Text(id.clone())))
        .collect();
    let sum = match dialect {
        Dialect::Sqlite => "COALESCE(SUM(cost_micros), 0)",
        Dialect::Postgres => "COALESCE(SUM(cost_micros), 0)::BIGINT",
    };
    q.text = format!(
        "SELECT batch_id, state, cost_unit, COUNT(*), {sum} FROM jobs \
         WHERE batch_id IN ({}) GROUP BY batch_id, state, cost_unit",
        marks.join(", ")
    );
    q
}

/// Splits `rows` (one more than `limit` when another page follows) into a page.
pub(crate) fn into_page<T>(
    mut items: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> PageKey,
) -> Page<T> {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(key) } else { None };
    Page { items, next }
}

/// A `(batch_id, state, cost_unit, count, micros)` row of [`batch_counts_query`].
pub(crate) struct CountRow {
    pub batch_id: String,
    pub state: i64,
    pub unit: Option<String>,
    pub count: i64,
    pub micros: i64,
}

/// Decodes a [`batches_query`] row (either backend's), counts and cost still empty.
pub(crate) fn batch_from_row(row: &dyn Cols) -> crate::Result<BatchSummary> {
    Ok(BatchSummary {
        id: row.text(0)?,
        caller: row.text(1)?,
        created_at_ms: row.int(2)?,
        job_count: row.int(3)?,
        counts: Vec::new(),
        cost: Vec::new(),
    })
}

/// Decodes a [`batch_counts_query`] row (either backend's).
pub(crate) fn count_from_row(row: &dyn Cols) -> crate::Result<CountRow> {
    Ok(CountRow {
        batch_id: row.text(0)?,
        state: row.int(1)?,
        unit: row.opt_text(2)?,
        count: row.int(3)?,
        micros: row.int(4)?,
    })
}

/// Fills each batch's counts and completed cost from the GROUP BY rows.
pub(crate) fn add_counts(batches: &mut [BatchSummary], rows: Vec<CountRow>) -> crate::Result<()> {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<&str, BTreeMap<i64, u64>> = BTreeMap::new();
    let mut costs: BTreeMap<&str, BTreeMap<String, i64>> = BTreeMap::new();
    for r in &rows {
        *counts
            .entry(&r.batch_id)
            .or_default()
            .entry(r.state)
            .or_default() += u64::try_from(r.count).unwrap_or(0);
        if r.state == JobState::Completed.as_i64()
            && let Some(unit) = &r.unit
        {
            let sum = costs
                .entry(&r.batch_id)
                .or_default()
                .entry(unit.clone())
                .or_default();
            *sum = sum.saturating_add(r.micros);
        }
    }
    for b in batches.iter_mut() {
        if let Some(per_state) = counts.get(b.id.as_str()) {
            b.counts = per_state
                .iter()
                .map(|(raw, n)| {
                    JobState::from_i64(*raw).map(|s| (s, *n)).ok_or_else(|| {
                        crate::StoreError::Corrupt(format!(
                            "batch {}: unknown job state {raw}",
                            b.id
                        ))
                    })
                })
                .collect::<crate::Result<_>>()?;
        }
        if let Some(per_unit) = costs.get(b.id.as_str()) {
            b.cost = per_unit.iter().map(|(u, m)| (u.clone(), *m)).collect();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered_and_values_bound() {
        let f = JobFilter {
            states: vec![JobState::Failed],
            labels: vec![("campaign".into(), "spring' OR 1=1".into())],
            ..JobFilter::default()
        };
        let q = jobs_query(Dialect::Postgres, "id", &f, None, 10);
        assert!(q.text.contains("state = $1"), "{}", q.text);
        assert!(q.text.contains("(labels::jsonb ->> $2) = $3"), "{}", q.text);
        assert!(q.text.ends_with("LIMIT $4"), "{}", q.text);
        assert!(
            !q.text.contains("spring"),
            "values are never in the SQL text"
        );
        assert_eq!(q.args[3], Arg::Int(11));
    }

    #[test]
    fn page_takes_one_extra_row_to_know_whether_more_follow() {
        let key = |n: &i64| PageKey {
            created_at_ms: *n,
            id: n.to_string(),
        };
        let p = into_page(vec![5, 4, 3], 2, key);
        assert_eq!(p.items, vec![5, 4]);
        assert_eq!(p.next.map(|k| k.created_at_ms), Some(4));
        let p = into_page(vec![5, 4], 2, key);
        assert_eq!(p.next, None);
    }
}
