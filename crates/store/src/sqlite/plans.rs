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
    ("spend_since", Some("jobs_caller_created")),
    ("queued_entries", Some("jobs_queue")),
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

/// Each search walks an index in page order (newest first) and stops after one page: none
/// sorts what it found, which on a provider's or a state's jobs means sorting hundreds of
/// thousands of rows for one page.
#[test]
fn every_search_walks_an_index_in_page_order() {
    use crate::search::{Dialect, JobFilter, PageKey, jobs_query};
    use adgate_generator::JobState;

    let conn = rusqlite::Connection::open_in_memory().expect("memory db");
    for (_, sql) in MIGRATIONS {
        conn.execute_batch(sql).expect("migration");
    }
    let texts = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let cases: Vec<(&str, JobFilter, &str)> = vec![
        ("no filter", JobFilter::default(), "jobs_created"),
        (
            "caller",
            JobFilter {
                callers: texts(&["team-b"]),
                ..JobFilter::default()
            },
            "jobs_caller_created",
        ),
        (
            "provider",
            JobFilter {
                providers: texts(&["pictify"]),
                ..JobFilter::default()
            },
            "jobs_created",
        ),
        (
            "state = QUEUED",
            JobFilter {
                states: vec![JobState::Queued],
                ..JobFilter::default()
            },
            "jobs_created",
        ),
        (
            "state = FAILED and a label",
            JobFilter {
                states: vec![JobState::Failed],
                labels: vec![("campaign".into(), "spring".into())],
                ..JobFilter::default()
            },
            "jobs_unsuccessful",
        ),
        (
            "provider and state = CANCELLED",
            JobFilter {
                providers: texts(&["pictify"]),
                states: vec![JobState::Cancelled],
                ..JobFilter::default()
            },
            "jobs_unsuccessful",
        ),
    ];
    let after = PageKey {
        created_at_ms: 1,
        id: "job_1".into(),
    };
    for (name, filter, index) in cases {
        for page in [None, Some(&after)] {
            let q = jobs_query(Dialect::Sqlite, "id", &filter, page, 100);
            let steps = plan(&conn, &q.text);
            assert!(
                steps.iter().any(|s| s.contains(&format!("INDEX {index} "))
                    || s.ends_with(&format!("INDEX {index}"))),
                "{name}: does not walk {index}: {steps:?}"
            );
            assert!(
                !steps.iter().any(|s| s.contains("TEMP B-TREE")),
                "{name}: sorts its rows: {steps:?}"
            );
        }
    }
}
