//! Backend-neutral conformance suite for [`Store`].
//!
//! Every function takes a fresh, empty store (`&dyn Store`, or a factory for the tests that
//! reopen), so any backend — SQLite today, PostgreSQL later — runs the same checks by writing
//! one thin test file that builds its store and calls these.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use adgate_generator::{JobError, JobState, Output, Progress};
use adgate_store::{
    EventWrite, JobPatch, JobRecord, NewJob, NewSubmission, StateCount, Store, StoreError,
    SubmitOutcome,
};
use serde_json::json;

pub mod backend;
pub(crate) use backend::backend_tests;
mod corrupt;
mod custody;
mod notify;
mod retention;
pub use retention::{
    delivery_ids_expire, request_ids_expire, retention_beside_submits,
    retention_deletes_old_terminal_jobs, retention_steps_are_bounded,
};
mod search;
pub use corrupt::{CORRUPTING, corrupt_rows_are_reported};
pub use custody::custody_queue;
pub use notify::notify_outbox;
pub use search::{
    search_batches, search_filters, search_pages_while_writing, search_pagination_under_inserts,
};

pub const T0: i64 = 1_700_000_000_000;

pub fn job(id: &str, provider: &str) -> NewJob {
    NewJob {
        id: id.to_owned(),
        provider: provider.to_owned(),
        spec: json!({ "template": "dt_1", "text": { "headline": format!("ad {id}") }, "n": 3 }),
        group_key: None,
        correlation_key: None,
        client_ref: format!("ref-{id}"),
        labels: BTreeMap::from([("team".to_owned(), "growth".to_owned())]),
        deadline_at_ms: T0 + 900_000,
        priority: adgate_store::DEFAULT_PRIORITY,
        cost: None,
        traceparent: None,
    }
}

pub fn submission(batch_id: &str, jobs: Vec<NewJob>, now_ms: i64) -> NewSubmission {
    NewSubmission {
        batch_id: batch_id.to_owned(),
        caller: adgate_store::ANONYMOUS.to_owned(),
        request_id: None,
        content_hash: format!("hash-{batch_id}"),
        jobs,
        now_ms,
        notify: None,
    }
}

pub(crate) fn with_request(mut s: NewSubmission, request_id: &str, hash: &str) -> NewSubmission {
    s.request_id = Some(request_id.to_owned());
    s.content_hash = hash.to_owned();
    s
}

pub async fn submit_ok(store: &dyn Store, s: NewSubmission) -> Vec<String> {
    match store.submit(s).await.expect("submit") {
        SubmitOutcome::Created { job_ids, .. } => job_ids,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn ids(jobs: &[JobRecord]) -> Vec<&str> {
    jobs.iter().map(|j| j.id.as_str()).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) async fn one(store: &dyn Store, id: &str) -> JobRecord {
    let mut jobs = store.get_jobs(&[id.to_owned()]).await.expect("get_jobs");
    assert_eq!(jobs.len(), 1, "job {id} should exist once");
    jobs.remove(0)
}

fn output(n: u32) -> Output {
    Output {
        url: format!("https://cdn.example/{n}.png"),
        width: 1080,
        height: 1080,
        format: "facebook-feed".to_owned(),
        mime_type: "image/png".to_owned(),
        provider_fields: serde_json::Map::new(),
        custody: Default::default(),
    }
}

/// How many jobs the store holds, in every state.
pub async fn total_jobs(store: &dyn Store) -> u64 {
    store
        .count_by_state()
        .await
        .expect("count")
        .iter()
        .map(|c| c.count)
        .sum()
}

/// Submit stores every field; get_jobs finds them (ignoring unknown and repeated ids);
/// batch_jobs returns submission order; an unknown batch is None.
pub async fn submit_and_read(store: &dyn Store) {
    let mut a = job("job_c", "staticadslab");
    a.group_key = Some("g1".to_owned());
    a.correlation_key = Some("corr-1".to_owned());
    a.labels.insert("campaign".to_owned(), "spring".to_owned());
    let b = job("job_a", "pictify");
    let c = job("job_b", "abyssale");
    let created = store
        .submit(submission("batch_1", vec![a.clone(), b, c], T0))
        .await
        .expect("submit");
    assert_eq!(
        created,
        SubmitOutcome::Created {
            batch_id: "batch_1".to_owned(),
            job_ids: strings(&["job_c", "job_a", "job_b"]),
        }
    );

    let got = one(store, "job_c").await;
    assert_eq!(
        got,
        JobRecord {
            id: "job_c".to_owned(),
            batch_id: "batch_1".to_owned(),
            provider: "staticadslab".to_owned(),
            spec: a.spec.clone(),
            state: JobState::Queued,
            provider_ref: None,
            poll_key: None,
            group_key: Some("g1".to_owned()),
            correlation_key: Some("corr-1".to_owned()),
            attempt_id: None,
            progress: None,
            outputs: Vec::new(),
            error: None,
            client_ref: "ref-job_c".to_owned(),
            labels: a.labels.clone(),
            created_at_ms: T0,
            updated_at_ms: T0,
            completed_at_ms: None,
            deadline_at_ms: T0 + 900_000,
            revision: 1,
            provider_result: None,
            caller: "anonymous".into(),
            priority: 2,
            cost: None,
            traceparent: None,
        }
    );

    let mut found = store
        .get_jobs(&strings(&["job_b", "nope", "job_a", "job_b"]))
        .await
        .expect("get_jobs");
    found.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(ids(&found), ["job_a", "job_b"]);
    assert!(store.get_jobs(&[]).await.expect("empty get").is_empty());

    let batch = store
        .batch_jobs("batch_1")
        .await
        .expect("batch")
        .expect("known batch");
    assert_eq!(ids(&batch), ["job_c", "job_a", "job_b"]);
    assert_eq!(
        store.batch_jobs("batch_unknown").await.expect("batch"),
        None
    );

    // A batch with no jobs is known and empty.
    submit_ok(store, submission("batch_empty", Vec::new(), T0)).await;
    assert_eq!(
        store.batch_jobs("batch_empty").await.expect("batch"),
        Some(Vec::new())
    );
}

/// get_jobs with more ids than one query takes (chunking), plus unknown ids.
pub async fn get_many_jobs(store: &dyn Store) {
    let all: Vec<String> = (0..1_203).map(|i| format!("job_{i:05}")).collect();
    for (n, chunk) in all.chunks(100).enumerate() {
        let jobs = chunk.iter().map(|id| job(id, "pictify")).collect();
        submit_ok(
            store,
            submission(&format!("batch_{n}"), jobs, T0 + n as i64),
        )
        .await;
    }
    let mut asked = all.clone();
    asked.extend((0..50).map(|i| format!("missing_{i}")));
    let mut got: Vec<String> = store
        .get_jobs(&asked)
        .await
        .expect("get_jobs")
        .into_iter()
        .map(|j| j.id)
        .collect();
    got.sort();
    assert_eq!(got, all);
    let batch = store
        .batch_jobs("batch_12")
        .await
        .expect("batch")
        .expect("known");
    assert_eq!(
        ids(&batch),
        all[1_200..].iter().map(String::as_str).collect::<Vec<_>>()
    );
}

/// The same request id and content replays the original ids and stores nothing; different
/// content conflicts and stores nothing; no request id never deduplicates.
pub async fn request_id_dedupe(store: &dyn Store) {
    let first = with_request(
        submission(
            "batch_1",
            vec![job("job_2", "pictify"), job("job_1", "pictify")],
            T0,
        ),
        "req-1",
        "h1",
    );
    submit_ok(store, first).await;

    let again = with_request(
        submission(
            "batch_2",
            vec![job("job_x", "pictify"), job("job_y", "pictify")],
            T0 + 5,
        ),
        "req-1",
        "h1",
    );
    assert_eq!(
        store.submit(again).await.expect("replay"),
        SubmitOutcome::Replayed {
            batch_id: "batch_1".to_owned(),
            job_ids: strings(&["job_2", "job_1"]),
        }
    );
    assert_eq!(store.batch_jobs("batch_2").await.expect("batch"), None);
    assert!(
        store
            .get_jobs(&strings(&["job_x", "job_y"]))
            .await
            .expect("get")
            .is_empty()
    );
    assert_eq!(total_jobs(store).await, 2);

    let different = with_request(
        submission("batch_3", vec![job("job_z", "pictify")], T0 + 6),
        "req-1",
        "h2",
    );
    assert_eq!(
        store.submit(different).await.expect("conflict"),
        SubmitOutcome::Conflict
    );
    assert_eq!(store.batch_jobs("batch_3").await.expect("batch"), None);
    assert_eq!(total_jobs(store).await, 2);

    // The original job is untouched by the replay (still revision 1, same timestamps).
    let original = one(store, "job_1").await;
    assert_eq!((original.revision, original.created_at_ms), (1, T0));

    // Another request id, or none, stores again.
    submit_ok(
        store,
        with_request(
            submission("batch_4", vec![job("job_4", "pictify")], T0),
            "req-2",
            "h1",
        ),
    )
    .await;
    submit_ok(
        store,
        submission("batch_5", vec![job("job_5", "pictify")], T0),
    )
    .await;
    submit_ok(
        store,
        submission("batch_6", vec![job("job_6", "pictify")], T0),
    )
    .await;
    assert_eq!(total_jobs(store).await, 5);
}

/// apply bumps revision and updated_at, skips no-op, unknown and terminal patches, sets
/// completed_at on the terminal transition, and returns exactly the changed jobs.
pub async fn apply_semantics(store: &dyn Store) {
    submit_ok(
        store,
        submission(
            "batch_1",
            vec![job("job_1", "abyssale"), job("job_2", "abyssale")],
            T0,
        ),
    )
    .await;

    let mut start = JobPatch::new("job_1");
    start.state = Some(JobState::Processing);
    start.provider_ref = Some("gen-1".to_owned());
    let changed = store
        .apply(vec![start.clone()], T0 + 10)
        .await
        .expect("apply");
    assert_eq!(changed.len(), 1);
    let j = &changed[0];
    assert_eq!(
        (j.id.as_str(), j.state, j.revision),
        ("job_1", JobState::Processing, 2)
    );
    assert_eq!(j.provider_ref.as_deref(), Some("gen-1"));
    assert_eq!(
        (j.created_at_ms, j.updated_at_ms, j.completed_at_ms),
        (T0, T0 + 10, None)
    );
    assert_eq!(
        &one(store, "job_1").await,
        j,
        "returned record equals the stored one"
    );

    // The same patch again changes nothing: no revision bump, nothing returned.
    assert!(
        store
            .apply(vec![start], T0 + 20)
            .await
            .expect("noop")
            .is_empty()
    );
    // An empty patch, and a patch for an unknown job, are skipped too.
    let skipped = store
        .apply(
            vec![JobPatch::new("job_1"), JobPatch::new("job_unknown")],
            T0 + 20,
        )
        .await
        .expect("skip");
    assert!(skipped.is_empty());
    let stored = one(store, "job_1").await;
    assert_eq!((stored.revision, stored.updated_at_ms), (2, T0 + 10));

    // Progress is a change.
    let mut progress = JobPatch::new("job_1");
    progress.progress = Some(Progress {
        step: "render".to_owned(),
        message: "rendering".to_owned(),
        percentage: 40.0,
    });
    let changed = store
        .apply(vec![progress.clone()], T0 + 30)
        .await
        .expect("progress");
    assert_eq!(changed[0].revision, 3);
    assert_eq!(changed[0].progress, progress.progress);
    assert!(
        store
            .apply(vec![progress], T0 + 31)
            .await
            .expect("same progress")
            .is_empty()
    );

    // Two jobs in one call; two patches to one job count twice and return the job once.
    let mut done = JobPatch::new("job_1");
    done.state = Some(JobState::Completed);
    done.outputs = Some(vec![output(1), output(2)]);
    let mut failed = JobPatch::new("job_2");
    failed.state = Some(JobState::Processing);
    let mut failed_again = JobPatch::new("job_2");
    failed_again.state = Some(JobState::Failed);
    failed_again.error =
        Some(JobError::new("PROVIDER_JOB_FAILED", "boom", false).with_provider_code("X1"));
    let changed = store
        .apply(vec![done, failed, failed_again], T0 + 40)
        .await
        .expect("finish");
    assert_eq!(ids(&changed), ["job_1", "job_2"]);
    let j1 = &changed[0];
    assert_eq!(
        (j1.state, j1.revision, j1.completed_at_ms),
        (JobState::Completed, 4, Some(T0 + 40))
    );
    assert_eq!(j1.outputs, vec![output(1), output(2)]);
    assert_eq!(
        j1.progress.as_ref().map(|p| p.percentage),
        Some(40.0),
        "untouched fields stay"
    );
    let j2 = &changed[1];
    assert_eq!(
        (j2.state, j2.revision, j2.completed_at_ms),
        (JobState::Failed, 3, Some(T0 + 40))
    );
    assert_eq!(
        j2.error.as_ref().map(|e| e.provider_code.as_str()),
        Some("X1")
    );

    // Terminal jobs never change again.
    let mut revive = JobPatch::new("job_1");
    revive.state = Some(JobState::Processing);
    revive.outputs = Some(Vec::new());
    let mut cancel = JobPatch::new("job_2");
    cancel.state = Some(JobState::Cancelled);
    assert!(
        store
            .apply(vec![revive, cancel], T0 + 50)
            .await
            .expect("terminal")
            .is_empty()
    );
    let after = store
        .get_jobs(&strings(&["job_1", "job_2"]))
        .await
        .expect("get");
    for j in after {
        assert!(j.state.is_terminal());
        assert_eq!(j.updated_at_ms, T0 + 40, "{} unchanged", j.id);
    }

    // Non-finite progress from a misbehaving adapter is stored as something readable.
    submit_ok(
        store,
        submission("batch_2", vec![job("job_3", "abyssale")], T0),
    )
    .await;
    let mut nan = JobPatch::new("job_3");
    nan.progress = Some(Progress {
        percentage: f64::NAN,
        ..Progress::default()
    });
    store.apply(vec![nan], T0 + 60).await.expect("nan progress");
    let j3 = one(store, "job_3").await;
    assert!(j3.progress.is_some_and(|p| p.percentage.is_finite()));
}

/// The outbox: create_attempt links jobs, queued_unassigned stops returning them and
/// open_attempts lists the attempt while any of its jobs is still QUEUED.
pub async fn attempts_and_queue(store: &dyn Store) {
    // The later-created batch is submitted first: queue order follows created_at, then seq.
    submit_ok(
        store,
        submission("batch_new", vec![job("job_n1", "pictify")], T0 + 100),
    )
    .await;
    submit_ok(
        store,
        submission(
            "batch_old",
            vec![
                job("job_o2", "pictify"),
                job("job_o1", "pictify"),
                job("job_o3", "pictify"),
            ],
            T0,
        ),
    )
    .await;
    submit_ok(
        store,
        submission("batch_other", vec![job("job_q1", "abyssale")], T0),
    )
    .await;

    let queued = store
        .queued_unassigned("pictify", 10)
        .await
        .expect("queued");
    assert_eq!(ids(&queued), ["job_o2", "job_o1", "job_o3", "job_n1"]);
    let first_two = store.queued_unassigned("pictify", 2).await.expect("queued");
    assert_eq!(ids(&first_two), ["job_o2", "job_o1"]);
    assert!(
        store
            .open_attempts("pictify")
            .await
            .expect("open")
            .is_empty()
    );

    let attempt = store
        .create_attempt(
            "pictify",
            "idem-1",
            &strings(&["job_o3", "job_o2"]),
            T0 + 200,
        )
        .await
        .expect("attempt");
    let queued = store
        .queued_unassigned("pictify", 10)
        .await
        .expect("queued");
    assert_eq!(ids(&queued), ["job_o1", "job_n1"]);
    assert_eq!(one(store, "job_o3").await.attempt_id, Some(attempt));

    let open = store.open_attempts("pictify").await.expect("open");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, attempt);
    assert_eq!(open[0].provider, "pictify");
    assert_eq!(open[0].idempotency_key, "idem-1");
    assert_eq!(open[0].created_at_ms, T0 + 200);
    assert_eq!(
        open[0].job_ids,
        strings(&["job_o3", "job_o2"]),
        "attempt order"
    );
    assert!(
        store
            .open_attempts("abyssale")
            .await
            .expect("open")
            .is_empty()
    );

    let second = store
        .create_attempt("pictify", "idem-2", &strings(&["job_n1"]), T0 + 300)
        .await
        .expect("attempt 2");
    assert_ne!(second, attempt);

    // Resolving the jobs closes the attempt: one job submitted, then the other failed.
    let mut sent = JobPatch::new("job_o3");
    sent.state = Some(JobState::Processing);
    sent.provider_ref = Some("batch_x:0".to_owned());
    store.apply(vec![sent], T0 + 400).await.expect("apply");
    let open = store.open_attempts("pictify").await.expect("open");
    assert_eq!(
        open.iter().map(|a| a.id).collect::<Vec<_>>(),
        [attempt, second]
    );
    assert_eq!(open[0].job_ids, strings(&["job_o2"]));
    assert_eq!(open[1].job_ids, strings(&["job_n1"]));

    let mut failed = JobPatch::new("job_o2");
    failed.state = Some(JobState::Failed);
    store.apply(vec![failed], T0 + 500).await.expect("apply");
    let open = store.open_attempts("pictify").await.expect("open");
    assert_eq!(open.iter().map(|a| a.id).collect::<Vec<_>>(), [second]);

    // A processing or assigned job is not queued-unassigned.
    assert_eq!(
        ids(&store.queued_unassigned("pictify", 10).await.expect("q")),
        ["job_o1"]
    );
    assert_eq!(
        ids(&store.queued_unassigned("abyssale", 10).await.expect("q")),
        ["job_q1"]
    );
    assert!(
        store
            .queued_unassigned("pictify", 0)
            .await
            .expect("q")
            .is_empty()
    );
}

/// Lookups the trackers use: active_jobs, find_by_ref, find_by_correlation, jobs_by_poll_key.
pub async fn tracking_lookups(store: &dyn Store) {
    let corr = |id: &str, provider: &str| {
        let mut j = job(id, provider);
        j.correlation_key = Some("vars-abc".to_owned());
        j
    };
    submit_ok(
        store,
        submission("batch_1", vec![corr("job_1", "pictify")], T0 + 1),
    )
    .await;
    submit_ok(
        store,
        submission("batch_2", vec![corr("job_2", "pictify")], T0 + 2),
    )
    .await;
    submit_ok(
        store,
        submission("batch_3", vec![corr("job_3", "pictify")], T0 + 3),
    )
    .await;
    submit_ok(
        store,
        submission("batch_4", vec![corr("job_4", "abyssale")], T0),
    )
    .await;

    // Never attempted: nothing it could have produced may be matched to it.
    assert_eq!(
        store
            .find_by_correlation("pictify", "vars-abc")
            .await
            .expect("corr"),
        None
    );
    // Attempted but unanswered (a push may outrun the submit's answer): a candidate already,
    // oldest first.
    for (n, id) in ["job_3", "job_2", "job_1", "job_4"].iter().enumerate() {
        let provider = if *id == "job_4" {
            "abyssale"
        } else {
            "pictify"
        };
        store
            .create_attempt(provider, &format!("key-{n}"), &[id.to_string()], T0 + 5)
            .await
            .expect("attempt");
    }
    let early = store
        .correlation_candidates("pictify", "vars-abc", 10)
        .await
        .expect("candidates");
    assert_eq!(ids(&early), ["job_1", "job_2", "job_3"]);
    assert_eq!(
        ids(&store
            .correlation_candidates("pictify", "vars-abc", 2)
            .await
            .expect("candidates")),
        ["job_1", "job_2"]
    );
    assert!(
        store
            .active_jobs("pictify")
            .await
            .expect("active")
            .is_empty()
    );

    let submitted = |id: &str, n: usize| {
        let mut p = JobPatch::new(id);
        p.state = Some(JobState::Processing);
        p.provider_ref = Some(format!("batch_x:{n}"));
        p.poll_key = Some("batch_x".to_owned());
        p
    };
    // Submitted newest first, to show that "oldest" means created_at, not update order.
    store
        .apply(
            vec![
                submitted("job_3", 2),
                submitted("job_2", 1),
                submitted("job_1", 0),
            ],
            T0 + 10,
        )
        .await
        .expect("apply");
    let mut other = submitted("job_4", 0);
    other.poll_key = Some("other".to_owned());
    store.apply(vec![other], T0 + 10).await.expect("apply");

    let hit = store
        .find_by_correlation("pictify", "vars-abc")
        .await
        .expect("corr");
    assert_eq!(hit.map(|j| j.id), Some("job_1".to_owned()));

    // job_1 got an output but is still processing (more images to come): still a candidate,
    // with its outputs, so the engine can tell how many it still expects.
    let mut out = JobPatch::new("job_1");
    out.outputs = Some(vec![output(1)]);
    store.apply(vec![out], T0 + 20).await.expect("apply");
    let hit = store
        .find_by_correlation("pictify", "vars-abc")
        .await
        .expect("corr")
        .expect("job_1");
    assert_eq!((hit.id.as_str(), hit.outputs.len()), ("job_1", 1));
    let mut done = JobPatch::new("job_1");
    done.state = Some(JobState::Completed);
    store.apply(vec![done], T0 + 21).await.expect("apply");
    let hit = store
        .find_by_correlation("pictify", "vars-abc")
        .await
        .expect("corr");
    assert_eq!(hit.map(|j| j.id), Some("job_2".to_owned()));

    // job_2 terminal: next is job_3.
    let mut fail = JobPatch::new("job_2");
    fail.state = Some(JobState::Failed);
    store.apply(vec![fail], T0 + 30).await.expect("apply");
    let hit = store
        .find_by_correlation("pictify", "vars-abc")
        .await
        .expect("corr");
    assert_eq!(hit.map(|j| j.id), Some("job_3".to_owned()));
    assert_eq!(
        store
            .find_by_correlation("pictify", "vars-zzz")
            .await
            .expect("corr"),
        None
    );
    let other = store
        .find_by_correlation("abyssale", "vars-abc")
        .await
        .expect("corr");
    assert_eq!(other.map(|j| j.id), Some("job_4".to_owned()));

    let active = store.active_jobs("pictify").await.expect("active");
    assert_eq!(ids(&active), ["job_3"]);
    // The slim form the trackers resume from: same jobs, same order.
    let refs = store.active_refs("pictify").await.expect("active refs");
    let expected: Vec<adgate_store::ActiveRef> = active
        .iter()
        .map(|j| adgate_store::ActiveRef {
            job_id: j.id.clone(),
            provider_ref: j.provider_ref.clone().expect("tracked jobs have a ref"),
            poll_key: j.poll_key.clone(),
        })
        .collect();
    assert_eq!(refs, expected);

    let by_ref = store
        .find_by_ref("pictify", "batch_x:2")
        .await
        .expect("ref");
    assert_eq!(by_ref.map(|j| j.id), Some("job_3".to_owned()));
    // A terminal job is still found by its reference (late events must find it to ignore it).
    let by_ref = store
        .find_by_ref("pictify", "batch_x:1")
        .await
        .expect("ref");
    assert_eq!(by_ref.map(|j| j.id), Some("job_2".to_owned()));
    assert_eq!(
        store
            .find_by_ref("pictify", "batch_x:9")
            .await
            .expect("ref"),
        None
    );
    assert_eq!(
        store
            .find_by_ref("staticadslab", "batch_x:2")
            .await
            .expect("ref"),
        None
    );

    let mut polled: Vec<String> = store
        .jobs_by_poll_key("pictify", "batch_x")
        .await
        .expect("poll key")
        .into_iter()
        .map(|j| j.id)
        .collect();
    polled.sort();
    assert_eq!(polled, strings(&["job_1", "job_2", "job_3"]));
    assert!(
        store
            .jobs_by_poll_key("abyssale", "batch_x")
            .await
            .expect("pk")
            .is_empty()
    );
}

/// expired: non-terminal jobs whose deadline is at or before now, limited.
pub async fn expiry(store: &dyn Store) {
    assert_eq!(
        store.next_deadline().await.expect("next"),
        None,
        "no jobs yet"
    );
    let with_deadline = |id: &str, at: i64| {
        let mut j = job(id, "staticadslab");
        j.deadline_at_ms = at;
        j
    };
    submit_ok(
        store,
        submission(
            "batch_1",
            vec![
                with_deadline("job_late", T0 + 300),
                with_deadline("job_soon", T0 + 100),
                with_deadline("job_mid", T0 + 200),
                with_deadline("job_done", T0 + 50),
            ],
            T0,
        ),
    )
    .await;
    let mut done = JobPatch::new("job_done");
    done.state = Some(JobState::Cancelled);
    store.apply(vec![done], T0 + 1).await.expect("apply");
    let mut running = JobPatch::new("job_mid");
    running.state = Some(JobState::Processing);
    store.apply(vec![running], T0 + 1).await.expect("apply");
    // The cancelled job's earlier deadline no longer counts.
    assert_eq!(store.next_deadline().await.expect("next"), Some(T0 + 100));

    assert!(
        store
            .expired(T0 + 99, 10)
            .await
            .expect("expired")
            .is_empty()
    );
    let mut due = store.expired(T0 + 200, 10).await.expect("expired");
    due.sort();
    assert_eq!(due, strings(&["job_mid", "job_soon"]));
    assert_eq!(store.expired(T0 + 200, 1).await.expect("expired").len(), 1);
    assert_eq!(
        store.expired(T0 + 1_000, 10).await.expect("expired").len(),
        3
    );
}

/// record_delivery: true for a new id, false for a duplicate, per provider.
pub async fn webhook_deliveries(store: &dyn Store) {
    assert!(
        store
            .record_delivery("pictify", "d-1", T0)
            .await
            .expect("first")
    );
    assert!(
        !store
            .record_delivery("pictify", "d-1", T0 + 1)
            .await
            .expect("dup")
    );
    assert!(
        store
            .record_delivery("abyssale", "d-1", T0)
            .await
            .expect("other provider")
    );
    assert!(
        store
            .record_delivery("pictify", "d-2", T0)
            .await
            .expect("second")
    );

    // A delivery with patches: applied with its id, once.
    submit_ok(
        store,
        submission("batch_w", vec![job("job_w", "pictify")], T0),
    )
    .await;
    let mut done = JobPatch::new("job_w");
    done.state = Some(JobState::Completed);
    done.outputs = Some(vec![output(1)]);
    let changed = store
        .apply_delivery("pictify", "d-3", vec![done.clone()], T0 + 5)
        .await
        .expect("apply delivery")
        .expect("new delivery");
    assert_eq!(
        changed
            .iter()
            .map(|j| (j.id.as_str(), j.state, j.revision))
            .collect::<Vec<_>>(),
        [("job_w", JobState::Completed, 2)]
    );
    // The same delivery again (even carrying something else) changes nothing.
    let mut other = JobPatch::new("job_w");
    other.state = Some(JobState::Failed);
    assert_eq!(
        store
            .apply_delivery("pictify", "d-3", vec![other], T0 + 6)
            .await
            .expect("duplicate"),
        None
    );
    let stored = one(store, "job_w").await;
    assert_eq!((stored.state, stored.revision), (JobState::Completed, 2));
    assert!(
        !store
            .record_delivery("pictify", "d-3", T0)
            .await
            .expect("dup")
    );
}

/// The inbox: an event kept with its delivery id in one write, read back per provider in
/// order, consumed together with the changes it causes; a duplicate delivery keeps nothing.
pub async fn kept_events(store: &dyn Store) {
    let ev = |n: i64| serde_json::json!({"update": {"n": n}});
    let keep = |delivery: &str, n: i64| EventWrite {
        delivery_id: Some(delivery.to_owned()),
        keep: vec![(ev(n), T0 + 1000)],
        ..EventWrite::default()
    };
    assert_eq!(
        store
            .apply_event("pictify", keep("d-1", 1), T0)
            .await
            .expect("keep"),
        Some(Vec::new())
    );
    // Its delivery id is on record: a retry of it keeps nothing more.
    assert_eq!(
        store
            .apply_event("pictify", keep("d-1", 1), T0 + 1)
            .await
            .expect("dup"),
        None
    );
    store
        .apply_event("pictify", keep("d-2", 2), T0 + 2)
        .await
        .expect("keep");
    store
        .apply_event("abyssale", keep("d-1", 3), T0 + 3)
        .await
        .expect("keep other provider");
    let kept = store.kept_events("pictify", 10).await.expect("kept");
    assert_eq!(
        kept.iter()
            .map(|k| (
                k.event.clone(),
                k.delivery_id.as_deref(),
                k.kept_at_ms,
                k.expires_at_ms
            ))
            .collect::<Vec<_>>(),
        [
            (ev(1), Some("d-1"), T0, T0 + 1000),
            (ev(2), Some("d-2"), T0 + 2, T0 + 1000)
        ]
    );
    assert_eq!(
        store.kept_events("pictify", 1).await.expect("kept").len(),
        1
    );
    assert_eq!(
        store.kept_events("abyssale", 10).await.expect("kept").len(),
        1
    );

    // Consumed together with the change it makes (no delivery id: the engine applying it).
    submit_ok(
        store,
        submission("batch_k", vec![job("job_k", "pictify")], T0),
    )
    .await;
    let mut done = JobPatch::new("job_k");
    done.state = Some(JobState::Completed);
    done.outputs = Some(vec![output(1)]);
    let changed = store
        .apply_event(
            "pictify",
            EventWrite {
                patches: vec![done],
                consumed: vec![kept[0].id],
                ..EventWrite::default()
            },
            T0 + 10,
        )
        .await
        .expect("consume")
        .expect("no delivery id: never a duplicate");
    assert_eq!(ids(&changed), ["job_k"]);
    let left = store.kept_events("pictify", 10).await.expect("kept");
    assert_eq!(left.iter().map(|k| k.id).collect::<Vec<_>>(), [kept[1].id]);

    // A new deadline is part of a patch (reconciling an unknown outcome shortens it).
    let mut shorter = JobPatch::new("job_d");
    shorter.deadline_at_ms = Some(T0 + 77);
    submit_ok(
        store,
        submission("batch_d", vec![job("job_d", "abyssale")], T0),
    )
    .await;
    let changed = store.apply(vec![shorter], T0 + 20).await.expect("apply");
    assert_eq!(changed.first().map(|j| j.deadline_at_ms), Some(T0 + 77));
    assert_eq!(one(store, "job_d").await.deadline_at_ms, T0 + 77);
    assert_eq!(
        store.expired(T0 + 77, 10).await.expect("expired"),
        ["job_d".to_owned()]
    );
}

/// A local cancel and an attempt racing for one job never both win: an attempt links only
/// QUEUED jobs, and a patch marked `unattempted_only` skips a job an attempt already took.
pub async fn cancel_and_attempt_race(store: &dyn Store) {
    submit_ok(
        store,
        submission(
            "batch_r",
            vec![job("job_r1", "pictify"), job("job_r2", "pictify")],
            T0,
        ),
    )
    .await;
    let cancel = |id: &str| {
        let mut p = JobPatch::new(id);
        p.state = Some(JobState::Cancelled);
        p.unattempted_only = true;
        p
    };
    // job_r1 cancelled first: the attempt leaves it out.
    assert_eq!(
        ids(&store
            .apply(vec![cancel("job_r1")], T0 + 1)
            .await
            .expect("cancel")),
        ["job_r1"]
    );
    let attempt = store
        .create_attempt(
            "pictify",
            "key-r",
            &["job_r1".into(), "job_r2".into()],
            T0 + 2,
        )
        .await
        .expect("attempt");
    assert_eq!(one(store, "job_r1").await.attempt_id, None);
    assert_eq!(one(store, "job_r2").await.attempt_id, Some(attempt));
    // job_r2 taken by the attempt first: the local cancel changes nothing.
    assert!(
        store
            .apply(vec![cancel("job_r2")], T0 + 3)
            .await
            .expect("cancel")
            .is_empty()
    );
    assert_eq!(one(store, "job_r2").await.state, JobState::Queued);
}

/// count_by_state: one row per (provider, state) that has jobs.
pub async fn counts(store: &dyn Store) {
    assert!(store.count_by_state().await.expect("count").is_empty());
    submit_ok(
        store,
        submission(
            "batch_1",
            vec![
                job("job_1", "pictify"),
                job("job_2", "pictify"),
                job("job_3", "pictify"),
                job("job_4", "abyssale"),
            ],
            T0,
        ),
    )
    .await;
    let mut done = JobPatch::new("job_1");
    done.state = Some(JobState::Completed);
    store.apply(vec![done], T0 + 1).await.expect("apply");
    let mut counts = store.count_by_state().await.expect("count");
    counts.sort_by_key(|c| (c.provider.clone(), c.state.as_i64()));
    let expect = |provider: &str, state, count| StateCount {
        provider: provider.to_owned(),
        state,
        count,
    };
    assert_eq!(
        counts,
        vec![
            expect("abyssale", JobState::Queued, 1),
            expect("pictify", JobState::Queued, 2),
            expect("pictify", JobState::Completed, 1),
        ]
    );
}

/// Everything written before close() is there after reopening the same database.
pub async fn persistence<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = open().await;
    submit_ok(
        &*store,
        with_request(
            submission(
                "batch_1",
                vec![job("job_1", "pictify"), job("job_2", "pictify")],
                T0,
            ),
            "req-1",
            "h1",
        ),
    )
    .await;
    let attempt = store
        .create_attempt("pictify", "idem-1", &strings(&["job_2"]), T0 + 1)
        .await
        .expect("attempt");
    let mut done = JobPatch::new("job_1");
    done.state = Some(JobState::Completed);
    done.outputs = Some(vec![output(7)]);
    let before = store.apply(vec![done], T0 + 2).await.expect("apply");
    assert!(
        store
            .record_delivery("pictify", "d-1", T0)
            .await
            .expect("delivery")
    );
    let job2_before = one(&*store, "job_2").await;
    store.close().await;
    drop(store);

    let store = open().await;
    let batch = store
        .batch_jobs("batch_1")
        .await
        .expect("batch")
        .expect("known");
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0], before[0]);
    assert_eq!(batch[1], job2_before);
    let open_attempts = store.open_attempts("pictify").await.expect("open");
    assert_eq!(open_attempts.len(), 1);
    assert_eq!(
        (open_attempts[0].id, open_attempts[0].job_ids.clone()),
        (attempt, strings(&["job_2"]))
    );
    assert!(
        !store
            .record_delivery("pictify", "d-1", T0)
            .await
            .expect("dup after reopen")
    );
    let replay = with_request(
        submission("batch_9", vec![job("job_9", "pictify")], T0),
        "req-1",
        "h1",
    );
    assert!(matches!(
        store.submit(replay).await.expect("replay"),
        SubmitOutcome::Replayed { .. }
    ));
    // The reopened store keeps working.
    submit_ok(
        &*store,
        submission("batch_2", vec![job("job_3", "pictify")], T0 + 3),
    )
    .await;
    assert_eq!(total_jobs(&*store).await, 3);
    store.close().await;
}

/// 200 concurrent single-job submits all succeed and share far fewer than 200 commits.
/// Returns the number of commits they used.
pub async fn group_commit(store: Arc<dyn Store>) -> u64 {
    const CALLERS: usize = 200;
    let before = store.commit_count();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .submit(submission(
                        &format!("batch_{i}"),
                        vec![job(&format!("job_{i}"), "pictify")],
                        T0,
                    ))
                    .await
            })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.expect("task").expect("submit");
        assert!(
            matches!(outcome, SubmitOutcome::Created { .. }),
            "{outcome:?}"
        );
    }
    let used = store.commit_count() - before;
    eprintln!("group commit: {CALLERS} concurrent submits used {used} commits");
    assert!(used >= 1, "commits are counted");
    assert!(
        used < 100,
        "{CALLERS} submits used {used} commits: no grouping"
    );
    assert_eq!(total_jobs(&*store).await, CALLERS as u64);
    used
}

/// 64 callers each submitting one job at a time, 50 times: every submit succeeds, and they
/// share far fewer commits than calls (group commit under a closed loop, the Submit
/// benchmark's shape). Prints the rate (`-- --nocapture`).
pub async fn single_job_submits_from_64_callers(store: Arc<dyn Store>) {
    const CALLERS: usize = 64;
    const EACH: usize = 50;
    let started = std::time::Instant::now();
    let commits = store.commit_count();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..EACH {
                    let id = format!("{c}_{i}");
                    submit_ok(
                        &*store,
                        submission(
                            &format!("batch_{id}"),
                            vec![job(&format!("job_{id}"), "pictify")],
                            T0,
                        ),
                    )
                    .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    let commits = store.commit_count() - commits;
    let calls = CALLERS * EACH;
    eprintln!(
        "64 callers: {calls} single-job submits in {secs:.2}s ({:.0}/s), {commits} commits",
        calls as f64 / secs
    );
    assert!(
        (commits as usize) < calls / 4,
        "{commits} commits for {calls} calls"
    );
    assert_eq!(total_jobs(&*store).await, calls as u64);
}

/// close() commits what was already sent, and every later write fails with Closed.
pub async fn close_then_write(store: &dyn Store) {
    // The submit is polled first, so it is queued before close() asks the writer to stop.
    let (queued, ()) = tokio::join!(
        store.submit(submission("batch_1", vec![job("job_1", "pictify")], T0)),
        store.close()
    );
    assert!(
        matches!(queued, Ok(SubmitOutcome::Created { .. })),
        "{queued:?}"
    );
    // Closing twice is harmless.
    store.close().await;

    let submit = store
        .submit(submission("batch_2", vec![job("job_2", "pictify")], T0))
        .await;
    assert!(matches!(submit, Err(StoreError::Closed)), "{submit:?}");
    let attempt = store
        .create_attempt("pictify", "k", &strings(&["job_1"]), T0)
        .await;
    assert!(matches!(attempt, Err(StoreError::Closed)), "{attempt:?}");
    let mut patch = JobPatch::new("job_1");
    patch.state = Some(JobState::Processing);
    let apply = store.apply(vec![patch], T0).await;
    assert!(matches!(apply, Err(StoreError::Closed)), "{apply:?}");
    let delivery = store.record_delivery("pictify", "d", T0).await;
    assert!(matches!(delivery, Err(StoreError::Closed)), "{delivery:?}");
}

// ---- Behaviour every backend shares that tests/sqlite.rs still checks with its own copies
// (a_failing_command_does_not_abort_its_group, create_attempt_reuses_an_existing_key). Until
// it calls these instead, they are unused in its build.

/// One failing command (a duplicate job id) rolls back alone: its batch row and request id
/// are not stored, the commands around it (very likely in the same group) commit, and a
/// corrected retry with the same request id is created.
pub async fn failing_command_is_isolated(store: &dyn Store) {
    submit_ok(
        store,
        submission("batch_1", vec![job("job_1", "pictify")], T0),
    )
    .await;
    let dup = with_request(
        submission(
            "batch_dup",
            vec![job("job_2", "pictify"), job("job_1", "pictify")],
            T0,
        ),
        "req-dup",
        "h",
    );
    let (a, bad, c) = tokio::join!(
        store.submit(submission("batch_a", vec![job("job_a", "pictify")], T0)),
        store.submit(dup),
        store.submit(submission("batch_c", vec![job("job_c", "pictify")], T0)),
    );
    assert!(matches!(a, Ok(SubmitOutcome::Created { .. })), "{a:?}");
    assert!(matches!(bad, Err(StoreError::Database(_))), "{bad:?}");
    assert!(matches!(c, Ok(SubmitOutcome::Created { .. })), "{c:?}");
    assert_eq!(store.batch_jobs("batch_dup").await.expect("batch"), None);
    assert!(
        store
            .get_jobs(&strings(&["job_2"]))
            .await
            .expect("get")
            .is_empty()
    );
    let fixed = with_request(
        submission("batch_dup", vec![job("job_2", "pictify")], T0),
        "req-dup",
        "h",
    );
    assert!(matches!(
        store.submit(fixed).await,
        Ok(SubmitOutcome::Created { .. })
    ));
    assert_eq!(total_jobs(store).await, 4);
}

/// One group mixing fresh submits, replays and conflicts (against a stored request id and
/// against one claimed earlier in the same group): the coalesced write path (where a backend has one) must give each
/// the outcome the op-by-op path gives. Then a group where one submit fails (duplicate job
/// id): the group is redone op by op, the faulty submit fails alone and does not keep its
/// request id, so a later submit of the same group claims it.
pub async fn coalesced_group_mixes_replays_conflicts_and_fresh_submits(store: &dyn Store) {
    submit_ok(
        store,
        with_request(
            submission(
                "batch_a",
                vec![job("job_a2", "pictify"), job("job_a1", "pictify")],
                T0,
            ),
            "req-a",
            "ha",
        ),
    )
    .await;

    // Polled in order, so queued in this order (and most likely committed as one group).
    let (replay_stored, conflict_stored, fresh_b, replay_b, conflict_b, plain) = tokio::join!(
        store.submit(with_request(
            submission("batch_x", vec![job("job_x", "pictify")], T0),
            "req-a",
            "ha"
        )),
        store.submit(with_request(
            submission("batch_y", vec![job("job_y", "pictify")], T0),
            "req-a",
            "zz"
        )),
        store.submit(with_request(
            submission(
                "batch_b",
                vec![job("job_b1", "pictify"), job("job_b2", "pictify")],
                T0
            ),
            "req-b",
            "hb",
        )),
        store.submit(with_request(
            submission("batch_b2", vec![job("job_b3", "pictify")], T0),
            "req-b",
            "hb"
        )),
        store.submit(with_request(
            submission("batch_b3", vec![job("job_b4", "pictify")], T0),
            "req-b",
            "no"
        )),
        store.submit(submission("batch_p", vec![job("job_p", "pictify")], T0)),
    );
    assert_eq!(
        replay_stored.expect("replay"),
        SubmitOutcome::Replayed {
            batch_id: "batch_a".to_owned(),
            job_ids: strings(&["job_a2", "job_a1"]),
        }
    );
    assert_eq!(conflict_stored.expect("conflict"), SubmitOutcome::Conflict);
    assert_eq!(
        fresh_b.expect("fresh"),
        SubmitOutcome::Created {
            batch_id: "batch_b".to_owned(),
            job_ids: strings(&["job_b1", "job_b2"]),
        }
    );
    assert_eq!(
        replay_b.expect("replay in group"),
        SubmitOutcome::Replayed {
            batch_id: "batch_b".to_owned(),
            job_ids: strings(&["job_b1", "job_b2"]),
        }
    );
    assert_eq!(
        conflict_b.expect("conflict in group"),
        SubmitOutcome::Conflict
    );
    assert!(
        matches!(plain, Ok(SubmitOutcome::Created { .. })),
        "{plain:?}"
    );
    for batch in ["batch_x", "batch_y", "batch_b2", "batch_b3"] {
        assert_eq!(
            store.batch_jobs(batch).await.expect("batch"),
            None,
            "{batch}"
        );
    }
    let b = store
        .batch_jobs("batch_b")
        .await
        .expect("batch")
        .expect("stored");
    assert_eq!(
        b.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["job_b1", "job_b2"]
    );
    assert_eq!(
        store
            .get_jobs(&strings(&["job_p"]))
            .await
            .expect("get")
            .len(),
        1
    );

    // A failing submit (job_a1 exists) in a group with a fresh one and a later one reusing
    // its request id.
    let (ok, bad, reuse) = tokio::join!(
        store.submit(submission("batch_ok", vec![job("job_ok", "pictify")], T0)),
        store.submit(with_request(
            submission(
                "batch_bad",
                vec![job("job_c", "pictify"), job("job_a1", "pictify")],
                T0
            ),
            "req-c",
            "hc",
        )),
        store.submit(with_request(
            submission("batch_c", vec![job("job_c2", "pictify")], T0),
            "req-c",
            "hc"
        )),
    );
    assert!(matches!(ok, Ok(SubmitOutcome::Created { .. })), "{ok:?}");
    assert!(matches!(bad, Err(StoreError::Database(_))), "{bad:?}");
    assert_eq!(
        reuse.expect("reuse"),
        SubmitOutcome::Created {
            batch_id: "batch_c".to_owned(),
            job_ids: strings(&["job_c2"]),
        }
    );
    assert_eq!(store.batch_jobs("batch_bad").await.expect("batch"), None);
    assert!(
        store
            .get_jobs(&strings(&["job_c"]))
            .await
            .expect("get")
            .is_empty()
    );
    // The unchanged original.
    let a1 = store.get_jobs(&strings(&["job_a1"])).await.expect("get");
    assert_eq!((a1[0].batch_id.as_str(), a1[0].revision), ("batch_a", 1));
}

/// create_attempt with a key that exists reuses that attempt; the same key for another
/// provider is an error.
pub async fn attempt_key_reuse(store: &dyn Store) {
    submit_ok(
        store,
        submission("batch_1", vec![job("job_1", "pictify")], T0),
    )
    .await;
    let ids = strings(&["job_1"]);
    let first = store
        .create_attempt("pictify", "idem-1", &ids, T0)
        .await
        .expect("first");
    let again = store
        .create_attempt("pictify", "idem-1", &ids, T0 + 1)
        .await
        .expect("again");
    assert_eq!(first, again);
    assert_eq!(store.open_attempts("pictify").await.expect("open").len(), 1);
    let other = store.create_attempt("abyssale", "idem-1", &ids, T0).await;
    assert!(matches!(other, Err(StoreError::Database(_))), "{other:?}");
}

/// With a single replica, claim_queued hands out exactly what queued_unassigned lists, in
/// queue order, and hands the same jobs to the same replica again while no attempt covers
/// them (a dispatcher that held jobs back must get them back); attempted jobs leave it.
pub async fn single_replica_claims(store: &dyn Store) {
    submit_ok(
        store,
        submission("batch_new", vec![job("job_n1", "pictify")], T0 + 100),
    )
    .await;
    submit_ok(
        store,
        submission(
            "batch_old",
            vec![job("job_o2", "pictify"), job("job_o1", "pictify")],
            T0,
        ),
    )
    .await;
    submit_ok(
        store,
        submission("batch_other", vec![job("job_q1", "abyssale")], T0),
    )
    .await;
    let now = T0 + 1_000;
    let claimed = store
        .claim_queued("pictify", "replica-1", now, 30_000, 10)
        .await
        .expect("claim");
    assert_eq!(ids(&claimed), ["job_o2", "job_o1", "job_n1"]);
    assert_eq!(
        ids(&store.queued_unassigned("pictify", 10).await.expect("q")),
        ids(&claimed)
    );
    let first = store
        .claim_queued("pictify", "replica-1", now + 10, 30_000, 1)
        .await
        .expect("claim");
    assert_eq!(ids(&first), ["job_o2"]);
    let again = store
        .claim_queued("pictify", "replica-1", now + 20, 30_000, 10)
        .await
        .expect("claim again");
    assert_eq!(ids(&again), ["job_o2", "job_o1", "job_n1"]);
    assert_eq!(
        again[0],
        one(store, "job_o2").await,
        "claiming is no visible change"
    );
    assert_eq!(again[0].revision, 1);

    store
        .create_attempt("pictify", "idem-1", &strings(&["job_o2"]), now + 30)
        .await
        .expect("attempt");
    let rest = store
        .claim_queued("pictify", "replica-1", now + 40, 30_000, 10)
        .await
        .expect("claim");
    assert_eq!(ids(&rest), ["job_o1", "job_n1"]);
    assert!(
        store
            .claim_queued("pictify", "replica-1", now + 40, 30_000, 0)
            .await
            .expect("claim 0")
            .is_empty()
    );
    // Leases are renewable by their owner whatever the backend (a single process holds none).
    store
        .renew_leases("replica-1", now + 50, 30_000)
        .await
        .expect("renew");
}

/// The provider's own fields (issue 20): a job-level `provider_result` and per-output
/// `provider_fields` round-trip; a job that never had a result reads `None` (as do rows
/// stored before the column existed: NULL); a patch without one keeps the stored value; the
/// same result again is no change.
pub async fn provider_results_round_trip(store: &dyn Store) {
    submit_ok(
        store,
        submission("batch_1", vec![job("job_1", "staticadslab")], T0),
    )
    .await;
    assert_eq!(one(store, "job_1").await.provider_result, None);

    let result = json!({
        "current_json_tree": {"type": "FRAME", "id": "root", "children": []},
        "figma_render_url": "https://figma.example/render.png",
        "sku_code": "editable_image_ad",
        "duration_ms": 41_250,
    });
    let mut out = output(1);
    out.provider_fields =
        json!({"id": "3f6a", "sharing_id": "sh_1", "file": {"filename": "a.png"}})
            .as_object()
            .cloned()
            .expect("object");
    let mut done = JobPatch::new("job_1");
    done.state = Some(JobState::Processing);
    done.outputs = Some(vec![out.clone()]);
    done.provider_result = Some(result.clone());
    let changed = store
        .apply(vec![done.clone()], T0 + 10)
        .await
        .expect("apply");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].provider_result.as_ref(), Some(&result));
    assert_eq!(changed[0].outputs, vec![out.clone()]);
    let stored = one(store, "job_1").await;
    assert_eq!(
        &stored, &changed[0],
        "returned record equals the stored one"
    );

    // The same result again changes nothing.
    assert!(
        store
            .apply(vec![done], T0 + 20)
            .await
            .expect("noop")
            .is_empty()
    );
    // A patch that carries no result keeps the stored one.
    let mut progress = JobPatch::new("job_1");
    progress.state = Some(JobState::Completed);
    let changed = store.apply(vec![progress], T0 + 30).await.expect("apply");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].provider_result.as_ref(), Some(&result));
    assert_eq!(changed[0].outputs[0].provider_fields, out.provider_fields);
}

/// Callers and costs (issue 17): the caller and priority are stored on jobs; the cost is the
/// estimate while the job may run, settled at completion (per output when priced so), zero
/// when it fails; `spend_since` sums one caller's cost at one provider in one unit since a
/// time; the queue is read head-of-every-caller first, so one caller's backlog never hides
/// another caller's first job.
pub async fn callers_costs_and_fair_queue(store: &dyn Store) {
    let priced = |id: &str, micros: i64, per_output: Option<i64>| NewJob {
        cost: Some(adgate_store::StoredCost {
            unit: "pictify_credit".into(),
            micros,
            per_output_micros: per_output,
        }),
        ..job(id, "pictify")
    };
    let mut team_a = submission(
        "batch_a",
        (0..30)
            .map(|i| priced(&format!("job_a{i:02}"), 2_000_000, Some(1_000_000)))
            .collect(),
        T0,
    );
    team_a.caller = "team-a".into();
    submit_ok(store, team_a).await;
    let mut team_b = submission(
        "batch_b",
        vec![NewJob {
            priority: 1,
            ..priced("job_b00", 5_000_000, None)
        }],
        T0 + 50,
    );
    team_b.caller = "team-b".into();
    submit_ok(store, team_b).await;

    let b = one(store, "job_b00").await;
    assert_eq!((b.caller.as_str(), b.priority), ("team-b", 1));
    assert_eq!(one(store, "job_a00").await.caller, "team-a");
    // Reserved: estimates of unfinished jobs.
    let spent = |caller: &'static str, since: i64| async move {
        store
            .spend_since(caller, "pictify", "pictify_credit", since)
            .await
            .expect("spend")
    };
    assert_eq!(spent("team-a", T0).await, 60_000_000);
    assert_eq!(spent("team-b", T0).await, 5_000_000);
    assert_eq!(spent("team-b", T0 + 51).await, 0, "created before `since`");
    assert_eq!(
        store
            .spend_since("team-a", "pictify", "USD", T0)
            .await
            .expect("spend"),
        0,
        "other units apart"
    );

    // A claim of 5 from a 31-job queue holds team-b's job, not just team-a's oldest five.
    let claimed = store
        .claim_queued("pictify", "replica-1", T0 + 100, 60_000, 5)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 5);
    assert!(claimed.iter().any(|j| j.id == "job_b00"), "{claimed:?}");

    // Settled: three outputs at 1 credit each; a failure costs nothing.
    let mut done = JobPatch::new("job_a00");
    done.state = Some(JobState::Completed);
    done.outputs = Some(vec![output(1), output(2), output(3)]);
    let mut failed = JobPatch::new("job_a01");
    failed.state = Some(JobState::Failed);
    failed.error = Some(JobError::new("X", "no", false));
    let mut fixed = JobPatch::new("job_b00");
    fixed.state = Some(JobState::Completed);
    fixed.outputs = Some(vec![output(1), output(2)]);
    store
        .apply(vec![done, failed, fixed], T0 + 200)
        .await
        .expect("apply");
    assert_eq!(
        one(store, "job_a00").await.cost.expect("cost").micros,
        3_000_000
    );
    assert_eq!(one(store, "job_a01").await.cost.expect("cost").micros, 0);
    assert_eq!(
        one(store, "job_b00").await.cost.expect("cost").micros,
        5_000_000,
        "a fixed price does not depend on outputs"
    );
    assert_eq!(spent("team-a", T0).await, 3_000_000 + 28 * 2_000_000);
}
