//! Engine behaviour against a scripted fake provider and a real SQLite store. Provider time is
//! scaled (see `fake::SCALE`): budgets and schedules keep their ratios at 1/100 of the wait.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod fake;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use adgate_engine::{JobRequest, SubmitCommand, codes};
use adgate_generator::{GenError, JobState, Progress, ProviderUpdate, UpdateTarget};
use adgate_store::JobPatch;
use fake::{Fake, Harness, limits, s, spec, start, start_with, wait_until};

fn job(n: usize, deadline: Option<Duration>) -> JobRequest {
    JobRequest {
        provider: "fake".into(),
        spec: spec(n),
        client_ref: format!("ref-{n}"),
        labels: BTreeMap::new(),
        deadline,
    }
}

async fn submit(h: &Harness, n: usize, deadline: Option<Duration>) -> Vec<String> {
    h.engine
        .submit(SubmitCommand::new(
            None,
            (0..n).map(|i| job(i, deadline)).collect(),
        ))
        .await
        .unwrap()
        .job_ids
}

async fn states(h: &Harness, ids: &[String]) -> Vec<JobState> {
    let (jobs, _) = h.engine.get_jobs(ids).await.unwrap();
    jobs.into_iter().map(|j| j.state).collect()
}

async fn wait_terminal(h: &Harness, ids: &[String], limit: Duration) {
    wait_until(limit, || async {
        states(h, ids).await.iter().all(|s| s.is_terminal())
    })
    .await;
}

fn max_in_window(mut times: Vec<tokio::time::Instant>, window: Duration) -> usize {
    times.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[tokio::test]
async fn a_burst_of_1000_jobs_never_exceeds_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(limits());
    fake.state.lock().unwrap().job_duration = s(45.0);
    let h = start(&fake, &dir.path().join("a.db")).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.extend(submit(&h, 100, Some(s(7200.0))).await);
    }
    wait_terminal(&h, &ids, s(7200.0)).await;
    assert!(
        states(&h, &ids)
            .await
            .iter()
            .all(|s| *s == JobState::Completed)
    );
    let calls = fake.calls();
    let peak = max_in_window(calls.iter().map(|c| c.at()).collect(), s(60.0));
    assert!(peak <= 100, "{peak} requests inside one 60 s window");
    let per_job = calls.len() as f64 / 1000.0;
    println!(
        "1000 jobs: {} provider requests ({per_job:.3} per job), peak {peak}/60 s",
        calls.len()
    );
    // The budget above is this test's subject. Requests per job is issue 9's figure, measured by
    // `adgate-bench providers` against the simulators (1.03-1.08); here, at SCALE = 0.01, a poll
    // round is 40 ms of real time and a loaded machine splits rounds: 1.025 on a quiet machine,
    // 1.05-1.06 with both cores saturated by busy loops, 1.206 once in CI (206 polls instead of
    // about 25). The bound still catches a real regression (a poll per job would be 2.0).
    assert!(per_job <= 1.5, "{per_job} requests per job");
    h.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_the_key_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(limits());
    fake.state
        .lock()
        .unwrap()
        .submit_errors
        .push_back(GenError::RateLimited {
            retry_after: Some(s(17.0)),
        });
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 1, None).await;
    wait_terminal(&h, &ids, s(600.0)).await;
    let submits = fake.submits();
    assert_eq!(submits.len(), 2);
    assert!(submits[1].0.duration_since(submits[0].0) >= s(17.0));
    assert_eq!(submits[0].1, submits[1].1, "same idempotency key on retry");
    h.stop().await;
}

#[tokio::test]
async fn transient_errors_back_off_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(limits());
    for _ in 0..4 {
        fake.state
            .lock()
            .unwrap()
            .submit_errors
            .push_back(GenError::transient("503"));
    }
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 1, None).await;
    wait_terminal(&h, &ids, s(600.0)).await;
    assert_eq!(states(&h, &ids).await, vec![JobState::Completed]);
    let submits = fake.submits();
    assert_eq!(submits.len(), 5, "four failures then success");
    assert!(
        submits.iter().all(|s| s.1 == submits[0].1),
        "one key for all retries"
    );
    // Full jitter may pick short waits, but four retries never happen at one instant.
    assert!(submits[4].0 > submits[0].0, "retries are spaced by backoff");
    h.stop().await;
}

#[tokio::test]
async fn unknown_outcome_is_never_resent_without_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.idempotency = false;
    let fake = Fake::new(l);
    fake.state
        .lock()
        .unwrap()
        .submit_errors
        .push_back(GenError::UnknownOutcome {
            message: "502 after the request was sent".into(),
            source: None,
        });
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 1, None).await;
    wait_terminal(&h, &ids, s(600.0)).await;
    let (jobs, _) = h.engine.get_jobs(&ids).await.unwrap();
    assert_eq!(jobs[0].state, JobState::Failed);
    assert_eq!(jobs[0].error.as_ref().unwrap().code, codes::UNKNOWN_OUTCOME);
    assert_eq!(fake.submits().len(), 1, "not resent");
    h.stop().await;
}

#[tokio::test]
async fn a_refused_connection_is_retried_even_without_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.idempotency = false;
    let fake = Fake::new(l);
    fake.state
        .lock()
        .unwrap()
        .submit_errors
        .push_back(GenError::transient("connection refused before sending"));
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 1, None).await;
    wait_terminal(&h, &ids, s(600.0)).await;
    assert_eq!(states(&h, &ids).await, vec![JobState::Completed]);
    assert_eq!(
        fake.submits().len(),
        2,
        "retried once the request was known not to be sent"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_restart_resends_an_open_attempt_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let fake = Fake::new(limits());
    fake.state
        .lock()
        .unwrap()
        .submit_errors
        .push_back(GenError::RateLimited {
            retry_after: Some(s(3600.0)),
        });
    let h = start(&fake, &db).await;
    let ids = submit(&h, 1, None).await;
    wait_until(s(60.0), || async { !fake.submits().is_empty() }).await;
    h.stop().await;

    let fake2 = Fake::new(limits());
    let h2 = start(&fake2, &db).await;
    wait_terminal(&h2, &ids, s(600.0)).await;
    assert_eq!(states(&h2, &ids).await, vec![JobState::Completed]);
    assert_eq!(fake2.submits().len(), 1);
    assert_eq!(
        fake.submits()[0].1,
        fake2.submits()[0].1,
        "key survives the restart"
    );
    h2.stop().await;
}

#[tokio::test]
async fn a_restart_fails_an_open_attempt_without_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let mut l = limits();
    l.idempotency = false;
    let fake = Fake::new(l.clone());
    fake.state
        .lock()
        .unwrap()
        .submit_errors
        .push_back(GenError::RateLimited {
            retry_after: Some(s(3600.0)),
        });
    let h = start(&fake, &db).await;
    let ids = submit(&h, 1, None).await;
    wait_until(s(60.0), || async { !fake.submits().is_empty() }).await;
    h.stop().await;

    let fake2 = Fake::new(l);
    let h2 = start(&fake2, &db).await;
    wait_terminal(&h2, &ids, s(60.0)).await;
    let (jobs, _) = h2.engine.get_jobs(&ids).await.unwrap();
    assert_eq!(jobs[0].error.as_ref().unwrap().code, codes::UNKNOWN_OUTCOME);
    assert!(fake2.submits().is_empty(), "never resent after a crash");
    h2.stop().await;
}

#[tokio::test]
async fn insufficient_balance_stops_the_batch_without_a_retry_storm() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.max_concurrent_submits = 1;
    let fake = Fake::new(l);
    fake.state.lock().unwrap().balance_for = Some(5);
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 20, None).await;
    wait_terminal(&h, &ids, s(600.0)).await;
    let (jobs, _) = h.engine.get_jobs(&ids).await.unwrap();
    let completed = jobs
        .iter()
        .filter(|j| j.state == JobState::Completed)
        .count();
    let broke: Vec<_> = jobs
        .iter()
        .filter(|j| {
            j.error
                .as_ref()
                .is_some_and(|e| e.code == codes::INSUFFICIENT_BALANCE)
        })
        .collect();
    assert_eq!(completed, 5);
    assert_eq!(broke.len(), 15);
    assert_eq!(
        fake.submits().len(),
        6,
        "one refused call, then the batch stops"
    );
    h.stop().await;
}

#[tokio::test]
async fn polls_are_batched_80_ids_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.budget.requests = 10_000;
    // Unscaled poll spacing: a round applies 250 updates to a real database, which takes real
    // milliseconds that the 1/100 scale would otherwise let overlap the next round.
    l.poll_interval = Duration::from_millis(500);
    l.first_poll_after = Duration::from_millis(500);
    let fake = Fake::new(l);
    fake.state.lock().unwrap().job_duration = s(3600.0);
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 250, Some(s(7200.0))).await;
    // Submits spread over real milliseconds may split the first round; after it, every key
    // sits on the same poll grid and each round is exactly four calls.
    wait_until(Duration::from_secs(30), || async {
        fake.polls().len() >= 16
    })
    .await;
    let polls = fake.polls();
    let n = polls.len();
    for round in [&polls[n - 8..n - 4], &polls[n - 4..]] {
        let sizes: Vec<usize> = round.iter().map(|p| p.1.len()).collect();
        assert_eq!(sizes, vec![80, 80, 80, 10]);
        let covered: HashSet<&String> = round.iter().flat_map(|p| p.1.iter()).collect();
        assert_eq!(covered.len(), ids.len(), "one round covers every job once");
    }
    h.stop().await;
}

#[tokio::test]
async fn jobs_fail_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(limits());
    fake.state.lock().unwrap().job_duration = s(3600.0);
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 3, Some(s(60.0))).await;
    wait_terminal(&h, &ids, s(120.0)).await;
    let (jobs, _) = h.engine.get_jobs(&ids).await.unwrap();
    for j in jobs {
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.error.as_ref().unwrap().code, codes::DEADLINE_EXCEEDED);
    }
    h.stop().await;
}

/// A deadline is kept to the millisecond it names, not to the sweeper's next periodic pass:
/// here the periodic pass is 60 s away, and a job submitted later with an earlier deadline
/// than the one the sweeper waits for still fails on time.
#[tokio::test]
async fn a_deadline_fails_its_job_at_that_deadline_not_at_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(limits());
    fake.state.lock().unwrap().job_duration = s(3600.0);
    let h = start_with(&fake, &dir.path().join("a.db"), |c| {
        c.sweep_interval = Duration::from_secs(60);
    })
    .await;
    let later = submit(&h, 1, Some(Duration::from_secs(3))).await;
    let sooner_submitted = std::time::Instant::now();
    let sooner = submit(&h, 1, Some(Duration::from_millis(300))).await;
    wait_terminal(&h, &sooner, Duration::from_secs(2)).await;
    assert!(
        sooner_submitted.elapsed() >= Duration::from_millis(300),
        "failed before its deadline"
    );
    let (jobs, _) = h.engine.get_jobs(&sooner).await.unwrap();
    assert_eq!(
        jobs[0].error.as_ref().unwrap().code,
        codes::DEADLINE_EXCEEDED
    );
    assert!(
        !states(&h, &later).await[0].is_terminal(),
        "the 3 s deadline has not passed yet"
    );
    wait_terminal(&h, &later, Duration::from_secs(5)).await;
    let (jobs, _) = h.engine.get_jobs(&later).await.unwrap();
    assert_eq!(
        jobs[0].error.as_ref().unwrap().code,
        codes::DEADLINE_EXCEEDED
    );
    h.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_tracking_from_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let fake = Fake::new(limits());
    fake.state.lock().unwrap().job_duration = s(120.0);
    let h = start(&fake, &db).await;
    let ids = submit(&h, 10, None).await;
    wait_until(s(120.0), || async {
        states(&h, &ids)
            .await
            .iter()
            .all(|s| *s == JobState::Processing)
    })
    .await;
    h.stop().await;

    // The provider keeps running the jobs while the gateway is down.
    let fake2 = Fake::new(limits());
    {
        let old = fake.state.lock().unwrap();
        let mut new = fake2.state.lock().unwrap();
        new.accepted_at = old.accepted_at.clone();
        new.job_duration = old.job_duration;
    }
    let h2 = start(&fake2, &db).await;
    wait_terminal(&h2, &ids, s(600.0)).await;
    assert!(
        states(&h2, &ids)
            .await
            .iter()
            .all(|s| *s == JobState::Completed)
    );
    assert!(fake2.submits().is_empty(), "nothing resubmitted");
    assert!(!fake2.polls().is_empty());
    h2.stop().await;
}

#[tokio::test]
async fn a_watcher_gets_a_snapshot_then_changes_then_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(limits());
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 3, None).await;
    let mut watch = h.engine.watch(ids.clone()).await.unwrap();
    let mut seen = Vec::new();
    while let Some(rec) = watch.next().await {
        seen.push(rec);
    }
    // Snapshot: one record per job first.
    let first: HashSet<&str> = seen[..3].iter().map(|r| r.id.as_str()).collect();
    assert_eq!(first.len(), 3);
    for id in &ids {
        let revs: Vec<i64> = seen
            .iter()
            .filter(|r| &r.id == id)
            .map(|r| r.revision)
            .collect();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "revisions increase: {revs:?}"
        );
        let last = seen.iter().rev().find(|r| &r.id == id).unwrap();
        assert_eq!(last.state, JobState::Completed);
    }
    assert!(watch.finished());
    h.stop().await;
}

#[tokio::test]
async fn a_resync_delivers_changes_the_bus_never_saw() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(limits());
    fake.state.lock().unwrap().job_duration = s(3600.0);
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 1, Some(s(7200.0))).await;
    let mut watch = h.engine.watch(ids.clone()).await.unwrap();
    let snap = watch.next().await.unwrap();
    // A change committed behind the bus's back (as another replica would).
    let progress = Progress {
        step: "render".into(),
        message: "halfway".into(),
        percentage: 50.0,
    };
    h.store
        .apply(
            vec![JobPatch {
                progress: Some(progress.clone()),
                ..JobPatch::new(ids[0].clone())
            }],
            0,
        )
        .await
        .unwrap();
    h.engine.resync_watchers();
    let next = tokio::time::timeout(s(5.0), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(next.revision > snap.revision);
    assert_eq!(next.progress, Some(progress));
    h.stop().await;
}

#[tokio::test]
async fn many_watchers_share_one_stream_and_add_no_polls() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.push.sse = true;
    let fake = Fake::new(l);
    {
        let mut st = fake.state.lock().unwrap();
        st.job_duration = s(30.0);
        st.stream_script = vec![ProviderUpdate::processing(
            UpdateTarget::ProviderRef(String::new()),
            None,
        )];
    }
    let h = start(&fake, &dir.path().join("a.db")).await;
    let ids = submit(&h, 1, None).await;
    wait_until(s(60.0), || async {
        states(&h, &ids).await == vec![JobState::Processing]
    })
    .await;
    let mut watches = Vec::new();
    for _ in 0..20 {
        watches.push(h.engine.watch(ids.clone()).await.unwrap());
    }
    wait_terminal(&h, &ids, s(600.0)).await;
    let streams = fake
        .calls()
        .iter()
        .filter(|c| matches!(c, fake::Call::Stream { .. }))
        .count();
    assert_eq!(streams, 1, "one stream for twenty watchers");
    // 30 s job, 4 s polls after a 4 s wait: a handful of polls, independent of watchers.
    assert!(fake.polls().len() <= 10, "{} polls", fake.polls().len());
    for w in &mut watches {
        let mut last = None;
        while let Some(r) = w.next().await {
            last = Some(r);
        }
        assert_eq!(last.unwrap().state, JobState::Completed);
    }
    h.stop().await;
}

#[tokio::test]
async fn concurrent_submits_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(limits());
    let h = start(&fake, &dir.path().join("a.db")).await;
    let before = h.store.commit_count();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let engine = h.engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .submit(SubmitCommand::new(
                    Some(format!("req-{i}")),
                    vec![job(i, None)],
                ))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let commits = h.store.commit_count() - before;
    println!("200 concurrent submits: {commits} commits");
    assert!(commits < 200, "{commits} commits for 200 submits");
    h.stop().await;
}

#[tokio::test]
async fn request_ids_replay_and_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(limits());
    let h = start(&fake, &dir.path().join("a.db")).await;
    let cmd = SubmitCommand::new(Some("r1".into()), vec![job(1, None), job(2, None)]);
    let a = h.engine.submit(cmd.clone()).await.unwrap();
    let b = h.engine.submit(cmd.clone()).await.unwrap();
    assert_eq!(a.job_ids, b.job_ids);
    assert!(b.replayed && !a.replayed);
    let mut other = cmd;
    other.jobs.pop();
    let err = h.engine.submit(other).await.unwrap_err();
    assert!(matches!(err, adgate_engine::EngineError::RequestIdConflict));
    let invalid = h
        .engine
        .submit(SubmitCommand::new(
            None,
            vec![JobRequest {
                spec: serde_json::json!({}),
                ..job(0, None)
            }],
        ))
        .await
        .unwrap_err();
    assert!(matches!(invalid, adgate_engine::EngineError::Invalid(v) if v[0].2.field == "n"));
    let _ = Arc::clone(&h.store);
    h.stop().await;
}

/// A drain waits for every engine task: submits whose answers are still on their way record
/// them before the store closes. Without the wait the store would close under them and the
/// provider's answers (its references) would be lost until a restart resent the attempts.
#[tokio::test]
async fn a_drain_waits_for_in_flight_submits_and_loses_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("drain.db");
    let fake = Fake::new(limits());
    fake.state.lock().unwrap().submit_delay = Duration::from_millis(300);
    let h = start(&fake, &db).await;
    let ids = submit(&h, 12, None).await;
    wait_until(s(600.0), || async { fake.submits().len() >= 3 }).await;
    h.shutdown.cancel();
    assert!(
        h.engine.stopped(Duration::from_secs(10)).await,
        "tasks ended"
    );
    h.store.close().await;
    let accepted: Vec<String> = fake
        .state
        .lock()
        .unwrap()
        .accepted_at
        .keys()
        .cloned()
        .collect();
    assert!(!accepted.is_empty());
    let store = adgate_store::SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let jobs = adgate_store::Store::get_jobs(&store, &ids).await.unwrap();
    let recorded: HashSet<String> = jobs.iter().filter_map(|j| j.provider_ref.clone()).collect();
    for r in &accepted {
        assert!(
            recorded.contains(r),
            "provider accepted {r} but the answer was lost"
        );
    }
    println!(
        "drain: {} of 12 submits answered in flight, all {} recorded",
        accepted.len(),
        recorded.len()
    );
    adgate_store::Store::close(&store).await;
}

/// Calls that find no fresh queue snapshot (64 watch streams opening at once, say) read the
/// queue once between them, not once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_estimates_share_one_queue_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    // Jobs stored before the engine starts: it has no snapshot of their queue yet.
    let ids: Vec<String> = (0..300).map(|i| format!("job_{i}")).collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    {
        let store = adgate_store::SqliteStore::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let submission = adgate_store::NewSubmission {
            batch_id: "batch_1".into(),
            caller: adgate_store::ANONYMOUS.into(),
            request_id: None,
            content_hash: "h".into(),
            jobs: ids
                .iter()
                .enumerate()
                .map(|(i, id)| adgate_store::NewJob {
                    id: id.clone(),
                    provider: "fake".into(),
                    spec: spec(i),
                    group_key: None,
                    correlation_key: None,
                    client_ref: format!("ref-{i}"),
                    labels: BTreeMap::new(),
                    deadline_at_ms: now_ms + 7_200_000,
                    priority: 2,
                    cost: None,
                    traceparent: None,
                })
                .collect(),
            now_ms,
            notify: None,
        };
        adgate_store::Store::submit(&store, submission)
            .await
            .unwrap();
        adgate_store::Store::close(&store).await;
    }
    let fake = Fake::new(limits());
    fake.state.lock().unwrap().job_duration = s(45.0);
    let h = start(&fake, &db).await;
    let records = h.store.get_jobs(&ids).await.unwrap();
    assert_eq!(records.len(), 300);
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let engine = h.engine.clone();
            let records = records.clone();
            tokio::spawn(async move {
                let refs: Vec<_> = records.iter().collect();
                engine.queue_estimates(&refs).await.unwrap().len()
            })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap() > 0, "every call gets estimates");
    }
    assert_eq!(h.engine.queue_snapshots_built(), 1);
    h.stop().await;
}
