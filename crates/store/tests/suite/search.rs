//! The search part of the conformance suite: `Store::list_jobs` and `Store::list_batches`
//! (every filter field, newest-first order, keyset pages under concurrent inserts, per-batch
//! counts and cost).

use std::collections::{BTreeMap, HashSet};

use adgate_generator::JobState;
use adgate_store::{
    BatchFilter, JobFilter, JobPatch, JobRecord, NewJob, PageKey, Store, StoredCost,
};

use super::{T0, job, submission, submit_ok};

fn labelled(id: &str, provider: &str, campaign: &str) -> NewJob {
    let mut j = job(id, provider);
    j.labels = BTreeMap::from([
        ("campaign".to_owned(), campaign.to_owned()),
        ("team".to_owned(), "growth".to_owned()),
    ]);
    j
}

async fn submit_as(store: &dyn Store, caller: &str, batch: &str, jobs: Vec<NewJob>, at: i64) {
    let mut s = submission(batch, jobs, at);
    s.caller = caller.to_owned();
    submit_ok(store, s).await;
}

async fn set_state(store: &dyn Store, id: &str, state: JobState) {
    let mut p = JobPatch::new(id);
    p.state = Some(state);
    let changed = store.apply(vec![p], T0 + 10_000).await.expect("apply");
    assert_eq!(changed.len(), 1, "{id} → {state:?}");
}

async fn ids_of(store: &dyn Store, f: &JobFilter) -> Vec<String> {
    let page = store.list_jobs(f, None, 100).await.expect("list_jobs");
    assert_eq!(page.next, None, "fits one page");
    page.items.into_iter().map(|j| j.id).collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Five jobs over three batches, two callers, two providers and three times:
/// `job_a1`, `job_a2` (team-a, pictify, T0), `job_b1` (team-b, abyssale, T0 + 1000),
/// `job_c1`, `job_c2` (team-a, abyssale, T0 + 2000).
async fn seed(store: &dyn Store) {
    submit_as(
        store,
        "team-a",
        "bat_a",
        vec![
            labelled("job_a1", "pictify", "spring"),
            labelled("job_a2", "pictify", "autumn"),
        ],
        T0,
    )
    .await;
    submit_as(
        store,
        "team-b",
        "bat_b",
        vec![labelled("job_b1", "abyssale", "spring")],
        T0 + 1000,
    )
    .await;
    submit_as(
        store,
        "team-a",
        "bat_c",
        vec![
            labelled("job_c1", "abyssale", "spring"),
            labelled("job_c2", "abyssale", "winter"),
        ],
        T0 + 2000,
    )
    .await;
    set_state(store, "job_a1", JobState::Failed).await;
    set_state(store, "job_c1", JobState::Failed).await;
    set_state(store, "job_b1", JobState::Completed).await;
}

pub async fn search_filters(store: &dyn Store) {
    seed(store).await;
    // Newest first; within one instant by id, descending.
    assert_eq!(
        ids_of(store, &JobFilter::default()).await,
        strs(&["job_c2", "job_c1", "job_b1", "job_a2", "job_a1"])
    );
    let f = |edit: fn(&mut JobFilter)| {
        let mut f = JobFilter::default();
        edit(&mut f);
        f
    };
    let cases: Vec<(JobFilter, Vec<&str>)> = vec![
        (
            f(|f| f.states = vec![JobState::Failed]),
            vec!["job_c1", "job_a1"],
        ),
        (
            f(|f| f.not_states = vec![JobState::Queued]),
            vec!["job_c1", "job_b1", "job_a1"],
        ),
        (
            f(|f| f.states = vec![JobState::Failed, JobState::Queued]),
            vec![],
        ),
        (
            f(|f| f.providers = strs(&["pictify"])),
            vec!["job_a2", "job_a1"],
        ),
        (f(|f| f.batch_ids = strs(&["bat_b"])), vec!["job_b1"]),
        (
            f(|f| f.callers = strs(&["team-a"])),
            vec!["job_c2", "job_c1", "job_a2", "job_a1"],
        ),
        (f(|f| f.client_refs = strs(&["ref-job_a2"])), vec!["job_a2"]),
        (
            f(|f| f.labels = vec![("campaign".into(), "spring".into())]),
            vec!["job_c1", "job_b1", "job_a1"],
        ),
        (
            f(|f| {
                f.states = vec![JobState::Failed];
                f.labels = vec![("campaign".into(), "spring".into())];
                f.callers = strs(&["team-a"]);
            }),
            vec!["job_c1", "job_a1"],
        ),
        (
            f(|f| f.labels = vec![("missing".into(), "spring".into())]),
            vec![],
        ),
        // A value that would be SQL if it were pasted into the query.
        (
            f(|f| f.labels = vec![("campaign".into(), "x' OR '1'='1".into())]),
            vec![],
        ),
        (
            f(|f| {
                f.created_from_ms = Some(T0 + 1000);
                f.created_to_ms = Some(T0 + 1999);
            }),
            vec!["job_b1"],
        ),
        (
            f(|f| f.created_from_ms = Some(T0 + 1000)),
            vec!["job_c2", "job_c1", "job_b1"],
        ),
        (
            f(|f| f.created_to_ms = Some(T0 + 999)),
            vec!["job_a2", "job_a1"],
        ),
    ];
    for (filter, want) in cases {
        assert_eq!(ids_of(store, &filter).await, strs(&want), "{filter:?}");
    }
    // Records come back whole (the same decoder as every other read).
    let page = store
        .list_jobs(&f(|f| f.batch_ids = strs(&["bat_b"])), None, 10)
        .await
        .expect("list");
    let b1: &JobRecord = &page.items[0];
    assert_eq!(
        (b1.caller.as_str(), b1.state),
        ("team-b", JobState::Completed)
    );
    assert_eq!(b1.labels["campaign"], "spring");
}

/// Keyset pages while jobs keep arriving: every job that existed at the first page is seen
/// exactly once, in order, and the new (newer) ones never shift a page.
pub async fn search_pagination_under_inserts(store: &dyn Store) {
    for b in 0..5 {
        let jobs = (0..5)
            .map(|i| job(&format!("job_{b}_{i}"), "pictify"))
            .collect();
        // Two batches share an instant, so ties on created_at are ordered by id.
        submit_ok(
            store,
            submission(&format!("bat_{b}"), jobs, T0 + (b / 2) * 100),
        )
        .await;
    }
    let all = ids_of(store, &JobFilter::default()).await;
    assert_eq!(all.len(), 25);
    let mut seen = Vec::new();
    let mut after: Option<PageKey> = None;
    for round in 0.. {
        let page = store
            .list_jobs(&JobFilter::default(), after.as_ref(), 7)
            .await
            .expect("page");
        assert!(page.items.len() <= 7);
        seen.extend(page.items.iter().map(|j| j.id.clone()));
        // New jobs arrive between pages (newer than anything listed).
        let jobs = (0..3)
            .map(|i| job(&format!("job_new{round}_{i}"), "pictify"))
            .collect();
        submit_ok(
            store,
            submission(&format!("bat_new{round}"), jobs, T0 + 10_000),
        )
        .await;
        match page.next {
            Some(k) => after = Some(k),
            None => break,
        }
        assert!(round < 10, "pagination does not end");
    }
    assert_eq!(seen, all, "no job lost, repeated or reordered");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
}

/// Pages read while another writer submits at the same time (not only between pages): the
/// listing of the jobs that existed at the start comes out whole and in order.
pub async fn search_pages_while_writing(store: &dyn Store) {
    for b in 0..10 {
        let jobs = (0..10)
            .map(|i| job(&format!("job_{b:02}_{i}"), "pictify"))
            .collect();
        submit_ok(store, submission(&format!("bat_{b}"), jobs, T0 + b)).await;
    }
    let all = ids_of(store, &JobFilter::default()).await;
    let writer = async {
        for n in 0..50 {
            let jobs = (0..20)
                .map(|i| job(&format!("job_w{n}_{i}"), "pictify"))
                .collect();
            submit_ok(
                store,
                submission(&format!("bat_w{n}"), jobs, T0 + 1_000 + n),
            )
            .await;
            tokio::task::yield_now().await;
        }
    };
    let reader = async {
        let mut seen = Vec::new();
        let mut after: Option<PageKey> = None;
        loop {
            let page = store
                .list_jobs(&JobFilter::default(), after.as_ref(), 3)
                .await
                .expect("page");
            // Pages of the old jobs only: the new ones are all newer than the first page.
            seen.extend(page.items.into_iter().map(|j| j.id));
            match page.next {
                Some(k) => after = Some(k),
                None => break seen,
            }
        }
    };
    let ((), seen) = tokio::join!(writer, reader);
    let old: Vec<String> = seen
        .into_iter()
        .filter(|id| !id.starts_with("job_w"))
        .collect();
    assert_eq!(old, all, "no job lost, repeated or reordered");
}

pub async fn search_batches(store: &dyn Store) {
    let priced = |id: &str, micros: i64| {
        let mut j = job(id, "staticadslab");
        j.cost = Some(StoredCost {
            unit: "USD".to_owned(),
            micros,
            per_output_micros: None,
        });
        j
    };
    submit_as(
        store,
        "team-a",
        "bat_1",
        vec![
            priced("job_1", 1_000_000),
            priced("job_2", 4_000_000),
            priced("job_3", 1_000_000),
            priced("job_4", 1_000_000),
        ],
        T0,
    )
    .await;
    submit_as(
        store,
        "team-b",
        "bat_2",
        vec![job("job_5", "pictify")],
        T0 + 5,
    )
    .await;
    submit_as(
        store,
        "team-a",
        "bat_3",
        vec![job("job_6", "pictify")],
        T0 + 9,
    )
    .await;
    set_state(store, "job_1", JobState::Completed).await;
    set_state(store, "job_2", JobState::Completed).await;
    set_state(store, "job_3", JobState::Failed).await;

    let page = store
        .list_batches(&BatchFilter::default(), None, 10)
        .await
        .expect("list");
    let order: Vec<&str> = page.items.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(order, ["bat_3", "bat_2", "bat_1"]);
    let b1 = &page.items[2];
    assert_eq!(
        (b1.caller.as_str(), b1.created_at_ms, b1.job_count),
        ("team-a", T0, 4)
    );
    assert_eq!(
        b1.counts,
        vec![
            (JobState::Queued, 1),
            (JobState::Completed, 2),
            (JobState::Failed, 1)
        ]
    );
    // Completed jobs only: the queued job's estimate and the failed job are not spent.
    assert_eq!(b1.cost, vec![("USD".to_owned(), 5_000_000)]);
    assert!(
        page.items[0].cost.is_empty(),
        "an unpriced batch costs nothing"
    );

    let team_a = BatchFilter {
        callers: vec!["team-a".to_owned()],
        ..BatchFilter::default()
    };
    let first = store.list_batches(&team_a, None, 1).await.expect("page 1");
    assert_eq!(first.items[0].id, "bat_3");
    let second = store
        .list_batches(&team_a, first.next.as_ref(), 1)
        .await
        .expect("page 2");
    assert_eq!(second.items[0].id, "bat_1");
    assert_eq!(second.next, None);

    let window = BatchFilter {
        created_from_ms: Some(T0 + 1),
        created_to_ms: Some(T0 + 5),
        ..BatchFilter::default()
    };
    let page = store.list_batches(&window, None, 10).await.expect("window");
    let order: Vec<&str> = page.items.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(order, ["bat_2"]);
}
