//! The query plans SQLite picks for the reads, on the real schema.
//!
//! SQLite plans without statistics, and an index added for one query can take over another:
//! the search indexes (migration 5) made `find_by_ref` and `by_poll_key` walk every job of the
//! provider in `created_at` order to find one row, and the deadline reads walk every unfinished
//! job. Each read here must go straight to its rows.

use super::MIGRATIONS;
use crate::reads::sqlite_statements;

/// The index each read must search (`None`: any index, but never a scan of `jobs`).
const EXPECTED: &[(&str, Option<&str>)] = &[
    ("batch_jobs", Some("jobs_batch_seq")),
    ("batch_known", None),
    ("queued_unassigned", None),
    ("active_jobs", Some("jobs_tracked")),
    ("active_refs", Some("jobs_tracked")),
    ("find_by_ref", Some("jobs_provider_ref")),
    ("correlation_candidates", Some("jobs_correlation")),
    ("by_poll_key", Some("jobs_poll_key")),
    ("expired", Some("jobs_deadline")),
    ("next_deadline", Some("jobs_deadline")),
    ("open_attempts", None),
    ("kept_events", Some("kept_events_provider")),
    ("spend_since", Some("jobs_caller_spend")),
    ("queued_entries", Some("jobs_provider_state")),
    // Counts every job by design (the gauges); a covering index, not the table.
    ("count_by_state", None),
];

fn plan(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    let params = sql.matches('?').count();
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let values: Vec<i64> = vec![1; params];
    stmt.query_map(rusqlite::params_from_iter(values), |row| {
        row.get::<_, String>(3)
    })
    .and_then(|rows| rows.collect())
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[test]
fn every_read_searches_its_index() {
    let conn = rusqlite::Connection::open_in_memory().expect("memory db");
    for (_, sql) in MIGRATIONS {
        conn.execute_batch(sql).expect("migration");
    }
    let statements = sqlite_statements().all();
    assert_eq!(
        statements.len(),
        EXPECTED.len(),
        "a read without an expected plan"
    );
    for (name, sql) in statements {
        let Some((_, index)) = EXPECTED.iter().find(|(n, _)| *n == name) else {
            panic!("no expected plan for {name}");
        };
        let steps = plan(&conn, sql);
        assert!(
            name == "count_by_state"
                || !steps
                    .iter()
                    .any(|s| s.starts_with("SCAN jobs ") || s == "SCAN jobs"),
            "{name} scans the jobs table: {steps:?}"
        );
        if let Some(index) = index {
            assert!(
                steps.iter().any(|s| s.contains(&format!("INDEX {index} "))
                    || s.ends_with(&format!("INDEX {index}"))),
                "{name} does not search {index}: {steps:?}"
            );
        }
    }
}
