//! Retention (`Store::purge`) on any backend: what goes, what stays, and Submits running
//! beside it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use adgate_generator::JobState;
use adgate_store::{JobPatch, PurgeCutoffs, Purged, Store, SubmitOutcome};

use super::{T0, job, one, submission, submit_ok, with_request};

/// Nothing but jobs completed before `before` is old enough.
fn jobs_before(before: i64) -> PurgeCutoffs {
    PurgeCutoffs {
        jobs_completed_before_ms: before,
        request_ids_before_ms: i64::MIN,
        deliveries_before_ms: i64::MIN,
    }
}

async fn finish(store: &dyn Store, ids: &[&str], state: JobState, at: i64) {
    let patches = ids
        .iter()
        .map(|id| JobPatch {
            state: Some(state),
            ..JobPatch::new(*id)
        })
        .collect();
    let changed = store.apply(patches, at).await.expect("apply");
    assert_eq!(changed.len(), ids.len(), "every job became {state:?}");
}

async fn present(store: &dyn Store, ids: &[&str]) -> Vec<String> {
    let wanted: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    let mut got: Vec<String> = store
        .get_jobs(&wanted)
        .await
        .expect("get_jobs")
        .into_iter()
        .map(|j| j.id)
        .collect();
    got.sort();
    got
}

/// Old terminal jobs of every terminal state go with their attempts and their emptied batches;
/// a batch that still has a job stays, and so does the attempt of a job that stays; jobs
/// younger than the cutoff stay; jobs that are not terminal are never deleted, however old.
pub async fn retention_deletes_old_terminal_jobs(store: &dyn Store) {
    // Batch A: three jobs sent in one attempt, all finished long ago → everything goes.
    submit_ok(
        store,
        submission(
            "batch_a",
            vec![
                job("a1", "pictify"),
                job("a2", "pictify"),
                job("a3", "pictify"),
            ],
            T0,
        ),
    )
    .await;
    let attempt_a = store
        .create_attempt(
            "pictify",
            "key-a",
            &["a1".into(), "a2".into(), "a3".into()],
            T0,
        )
        .await
        .expect("attempt a");
    finish(store, &["a1"], JobState::Completed, T0 + 1_000).await;
    finish(store, &["a2"], JobState::Failed, T0 + 1_000).await;
    finish(store, &["a3"], JobState::Cancelled, T0 + 1_000).await;
    // Batch B: one old finished job, one queued and one processing job as old as anything
    // (created at T0) → only the finished one goes; the batch and its attempt stay.
    submit_ok(
        store,
        submission(
            "batch_b",
            vec![
                job("b1", "pictify"),
                job("b2", "pictify"),
                job("b3", "pictify"),
            ],
            T0,
        ),
    )
    .await;
    store
        .create_attempt("pictify", "key-b", &["b1".into(), "b3".into()], T0)
        .await
        .expect("attempt b");
    finish(store, &["b1"], JobState::Completed, T0 + 1_000).await;
    let mut processing = JobPatch::new("b3");
    processing.state = Some(JobState::Processing);
    processing.provider_ref = Some("ref-b3".into());
    store.apply(vec![processing], T0 + 1_000).await.expect("b3");
    // Batch C: finished after the cutoff → stays.
    submit_ok(store, submission("batch_c", vec![job("c1", "pictify")], T0)).await;
    finish(store, &["c1"], JobState::Completed, T0 + 9_000).await;

    let cutoff = T0 + 5_000;
    let purged = store.purge(jobs_before(cutoff), 500).await.expect("purge");
    assert_eq!(
        purged,
        Purged {
            jobs: 4,
            attempts: 1,
            batches: 1,
            ..Purged::default()
        }
    );
    assert!(!purged.maybe_more(500));
    assert_eq!(
        present(store, &["a1", "a2", "a3", "b1", "b2", "b3", "c1"]).await,
        ["b2", "b3", "c1"]
    );
    assert_eq!(store.batch_jobs("batch_a").await.expect("read a"), None);
    let b: Vec<String> = store
        .batch_jobs("batch_b")
        .await
        .expect("read b")
        .expect("batch b stays")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(b, ["b2", "b3"]);
    // The live job still finds its provider reference; batch A's attempt key is free again
    // (a new attempt row), batch B's attempt is still the one its live job names.
    assert_eq!(
        store
            .find_by_ref("pictify", "ref-b3")
            .await
            .expect("find")
            .map(|j| j.id),
        Some("b3".to_owned())
    );
    assert!(one(store, "b3").await.attempt_id.is_some());

    // A second pass finds nothing more; a cutoff far in the future still spares live jobs.
    assert_eq!(
        store.purge(jobs_before(cutoff), 500).await.expect("again"),
        Purged::default()
    );
    let everything = store
        .purge(jobs_before(i64::MAX), 500)
        .await
        .expect("all terminal");
    assert_eq!(
        (everything.jobs, everything.batches),
        (1, 1),
        "only c1 and its batch"
    );
    assert_eq!(present(store, &["b2", "b3", "c1"]).await, ["b2", "b3"]);
    let _ = attempt_a;
}

/// A step deletes at most `limit` jobs, oldest first, and says when more may be left.
pub async fn retention_steps_are_bounded(store: &dyn Store) {
    let ids: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
    submit_ok(
        store,
        submission(
            "batch_s",
            ids.iter().map(|id| job(id, "pictify")).collect(),
            T0,
        ),
    )
    .await;
    // s4 finished first, s0 last: the oldest by completion go first.
    for (i, id) in ids.iter().enumerate() {
        let at = T0 + 1_000 - i64::try_from(i).expect("small") * 10;
        finish(store, &[id.as_str()], JobState::Completed, at).await;
    }
    let step = |n| async move { store.purge(jobs_before(T0 + 2_000), n).await.expect("step") };
    let first = step(2).await;
    assert_eq!(
        (first.jobs, first.batches, first.maybe_more(2)),
        (2, 0, true)
    );
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(present(store, &all).await, ["s0", "s1", "s2"]);
    let second = step(2).await;
    assert_eq!((second.jobs, second.maybe_more(2)), (2, true));
    let last = step(2).await;
    assert_eq!((last.jobs, last.batches, last.maybe_more(2)), (1, 1, false));
    assert_eq!(store.batch_jobs("batch_s").await.expect("read"), None);
}

/// A request id replays within its window; once it expired, the same id is a new request
/// (with other content too: no conflict), and its old batch is untouched.
pub async fn request_ids_expire(store: &dyn Store) {
    let first = with_request(
        submission("batch_r1", vec![job("r1", "pictify")], T0),
        "req-1",
        "hash-1",
    );
    submit_ok(store, first).await;
    let window = |before| PurgeCutoffs {
        jobs_completed_before_ms: i64::MIN,
        request_ids_before_ms: before,
        deliveries_before_ms: i64::MIN,
    };
    // Claimed at T0: not older than a cutoff at T0, so it stays.
    assert_eq!(
        store
            .purge(window(T0), 500)
            .await
            .expect("purge")
            .request_ids,
        0
    );
    let replay = with_request(
        submission("batch_r2", vec![job("r2", "pictify")], T0 + 10),
        "req-1",
        "hash-1",
    );
    assert_eq!(
        store.submit(replay).await.expect("replay"),
        SubmitOutcome::Replayed {
            batch_id: "batch_r1".into(),
            job_ids: vec!["r1".into()],
        }
    );
    assert_eq!(
        store
            .purge(window(T0 + 1), 500)
            .await
            .expect("purge")
            .request_ids,
        1
    );
    // After expiry: new content under the same id is a new request, not ALREADY_EXISTS.
    let renewed = with_request(
        submission("batch_r3", vec![job("r3", "pictify")], T0 + 20),
        "req-1",
        "hash-other",
    );
    assert_eq!(submit_ok(store, renewed).await, ["r3"]);
    assert_eq!(present(store, &["r1", "r3"]).await, ["r1", "r3"]);
    // And the id now names the new batch.
    let again = with_request(
        submission("batch_r4", vec![job("r4", "pictify")], T0 + 30),
        "req-1",
        "hash-other",
    );
    assert!(matches!(
        store.submit(again).await.expect("replay new"),
        SubmitOutcome::Replayed { batch_id, .. } if batch_id == "batch_r3"
    ));
}

/// Delivery ids are forgotten after their cutoff: the provider's next delivery with that id
/// counts as new.
pub async fn delivery_ids_expire(store: &dyn Store) {
    assert!(
        store
            .record_delivery("pictify", "del-1", T0)
            .await
            .expect("new")
    );
    assert!(
        store
            .record_delivery("abyssale", "del-2", T0 + 100)
            .await
            .expect("new")
    );
    let window = |before| PurgeCutoffs {
        jobs_completed_before_ms: i64::MIN,
        request_ids_before_ms: i64::MIN,
        deliveries_before_ms: before,
    };
    assert_eq!(
        store
            .purge(window(T0), 500)
            .await
            .expect("purge")
            .deliveries,
        0
    );
    assert!(
        !store
            .record_delivery("pictify", "del-1", T0 + 1)
            .await
            .expect("dup")
    );
    assert_eq!(
        store
            .purge(window(T0 + 50), 500)
            .await
            .expect("purge")
            .deliveries,
        1
    );
    assert!(
        store
            .record_delivery("pictify", "del-1", T0 + 200)
            .await
            .expect("new again")
    );
    assert!(
        !store
            .record_delivery("abyssale", "del-2", T0 + 200)
            .await
            .expect("still dup")
    );
}

/// Retention deleting a backlog in small steps while 32 callers keep submitting: every
/// acknowledged Submit is stored, no old job survives, and Submits are acknowledged all
/// through the pass: the longest time without an acknowledgement is a small part of the
/// pass, under half of it (a pass that held the writer, or a lock Submit needs, for its whole
/// length would leave one gap nearly as long as the pass).
pub async fn retention_beside_submits(store: Arc<dyn Store>) {
    const OLD_BATCHES: usize = 80;
    const PER_BATCH: usize = 100;
    const STEP: usize = 100;
    const CALLERS: usize = 32;
    let mut old_ids = Vec::new();
    for b in 0..OLD_BATCHES {
        let ids: Vec<String> = (0..PER_BATCH).map(|j| format!("old_{b}_{j}")).collect();
        submit_ok(
            &*store,
            submission(
                &format!("old_batch_{b}"),
                ids.iter().map(|id| job(id, "pictify")).collect(),
                T0,
            ),
        )
        .await;
        let patches = ids
            .iter()
            .map(|id| JobPatch {
                state: Some(JobState::Completed),
                ..JobPatch::new(id.clone())
            })
            .collect();
        store.apply(patches, T0 + 1_000).await.expect("finish");
        old_ids.extend(ids);
    }

    let done = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (store, done, acknowledged) = (
                Arc::clone(&store),
                Arc::clone(&done),
                Arc::clone(&acknowledged),
            );
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut n = 0;
                // At least a few each, then until the pass is over.
                while n < 5 || !done.load(Ordering::Acquire) {
                    let id = format!("new_{c}_{n}");
                    let s = submission(
                        &format!("new_batch_{c}_{n}"),
                        vec![job(&id, "pictify")],
                        T0 + 100_000,
                    );
                    submit_ok(&*store, s).await;
                    acknowledged.lock().expect("acks").push(Instant::now());
                    mine.push(id);
                    n += 1;
                }
                mine
            })
        })
        .collect();

    let pass = async {
        let mut total = Purged::default();
        let mut steps = 0;
        let started = Instant::now();
        loop {
            let step = store
                .purge(jobs_before(T0 + 50_000), STEP)
                .await
                .expect("purge step");
            total.add(&step);
            steps += 1;
            if !step.maybe_more(STEP) {
                break;
            }
            tokio::task::yield_now().await;
        }
        (total, steps, started, Instant::now())
    };
    let (total, steps, started, ended) = tokio::time::timeout(Duration::from_secs(60), pass)
        .await
        .expect("the pass ends within a minute");
    done.store(true, Ordering::Release);
    let mut new_ids = Vec::new();
    for caller in callers {
        new_ids.extend(
            tokio::time::timeout(Duration::from_secs(30), caller)
                .await
                .expect("callers stop")
                .expect("caller task"),
        );
    }

    let old_total = u64::try_from(OLD_BATCHES * PER_BATCH).expect("small");
    assert_eq!(total.jobs, old_total);
    assert_eq!(total.batches, u64::try_from(OLD_BATCHES).expect("small"));
    assert!(steps > OLD_BATCHES * PER_BATCH / STEP, "{steps} steps");
    let stored = store.get_jobs(&new_ids).await.expect("read new");
    assert_eq!(
        stored.len(),
        new_ids.len(),
        "every acknowledged Submit is stored"
    );
    assert!(store.get_jobs(&old_ids).await.expect("read old").is_empty());
    // The longest stretch of the pass without an acknowledged Submit.
    let mut marks: Vec<Instant> = acknowledged
        .lock()
        .expect("acks")
        .iter()
        .copied()
        .filter(|t| *t > started && *t < ended)
        .collect();
    marks.sort();
    let acks_during = marks.len();
    marks.insert(0, started);
    marks.push(ended);
    let longest = marks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let pass = ended - started;
    assert!(
        acks_during > 0 && longest * 2 < pass,
        "Submits stalled during the pass: {acks_during} acknowledged in {steps} steps over \
         {pass:?}, longest gap {longest:?}"
    );
}
