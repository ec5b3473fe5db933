//! Output custody's queue: queued in the completing transaction, claimed once, settled by a
//! narrow write that a terminal job accepts, retried or removed.

use adgate_generator::{Custody, CustodyState, JobError, JobState};
use adgate_store::{CustodyWrite, JobPatch, Store};

use super::{T0, job, one, output, submission, submit_ok};

fn completed(id: &str, outputs: u32, keep: bool) -> JobPatch {
    JobPatch {
        state: Some(JobState::Completed),
        outputs: Some((0..outputs).map(output).collect()),
        keep_outputs: keep,
        ..JobPatch::new(id)
    }
}

fn stored(key: &str) -> Custody {
    Custody {
        state: CustodyState::Stored,
        key: key.to_owned(),
        sha256: "ab".repeat(32),
        size_bytes: 1234,
        mime_type: "image/png".to_owned(),
        error: None,
    }
}

pub async fn custody_queue(store: &dyn Store) {
    submit_ok(
        store,
        submission(
            "batch_c",
            vec![
                job("job_keep", "abyssale"),
                job("job_off", "abyssale"),
                job("job_ev", "pictify"),
            ],
            T0,
        ),
    )
    .await;
    // Completed with custody on: outputs PENDING and queued; with custody off: neither.
    let changed = store
        .apply(
            vec![
                completed("job_keep", 2, true),
                completed("job_off", 1, false),
            ],
            T0 + 10,
        )
        .await
        .expect("apply");
    assert_eq!(changed.len(), 2);
    let keep = one(store, "job_keep").await;
    assert!(
        keep.outputs
            .iter()
            .all(|o| o.custody.state == CustodyState::Pending)
    );
    let off = one(store, "job_off").await;
    assert!(off.outputs.iter().all(|o| o.custody.is_off()));
    // Through an event write too (webhooks complete most jobs).
    let ev = store
        .apply_event(
            "pictify",
            adgate_store::EventWrite {
                delivery_id: Some("d1".to_owned()),
                patches: vec![completed("job_ev", 1, true)],
                ..Default::default()
            },
            T0 + 20,
        )
        .await
        .expect("event")
        .expect("new delivery");
    assert_eq!(ev[0].outputs[0].custody.state, CustodyState::Pending);

    // Not due before its time; due once, to one claimer, until the claim runs out.
    assert!(
        store
            .claim_custody("r1", T0, 60_000, 10)
            .await
            .expect("custody store call")
            .is_empty()
    );
    let tasks = store
        .claim_custody("r1", T0 + 30, 60_000, 10)
        .await
        .expect("custody store call");
    let ids: Vec<&str> = tasks.iter().map(|t| t.job_id.as_str()).collect();
    assert_eq!(
        ids,
        ["job_keep", "job_ev"],
        "oldest first, custody-off jobs absent"
    );
    assert!(tasks.iter().all(|t| t.attempts == 0));
    assert_eq!(tasks[0].queued_at_ms, T0 + 10);
    assert!(
        store
            .claim_custody("r2", T0 + 40, 60_000, 10)
            .await
            .expect("custody store call")
            .is_empty()
    );

    // One output stored, the other retried later: one revision, the job still COMPLETED.
    let before = one(store, "job_keep").await;
    let after = store
        .finish_custody(
            CustodyWrite {
                job_id: "job_keep".to_owned(),
                results: vec![(0, stored("job_keep/0"))],
                retry_at_ms: Some(T0 + 5_000),
            },
            T0 + 50,
        )
        .await
        .expect("custody store call")
        .expect("changed");
    assert_eq!(after.revision, before.revision + 1);
    assert_eq!(after.updated_at_ms, T0 + 50);
    assert_eq!(after.state, JobState::Completed);
    assert_eq!(after.completed_at_ms, before.completed_at_ms);
    assert_eq!(after.outputs[0].custody, stored("job_keep/0"));
    assert_eq!(after.outputs[1].custody.state, CustodyState::Pending);
    assert_eq!(
        after.outputs[0].url, before.outputs[0].url,
        "the provider's URL stays"
    );
    assert_eq!(one(store, "job_keep").await, after, "as stored");
    // The retry is due at its time, with the attempt counted.
    assert!(
        store
            .claim_custody("r1", T0 + 4_999, 60_000, 10)
            .await
            .expect("custody store call")
            .is_empty()
    );
    let retry = store
        .claim_custody("r1", T0 + 5_000, 60_000, 10)
        .await
        .expect("custody store call");
    assert_eq!(retry.len(), 1);
    assert_eq!(
        (retry[0].job_id.as_str(), retry[0].attempts),
        ("job_keep", 1)
    );

    // A late duplicate result for a settled output changes nothing.
    let expired = Custody {
        state: CustodyState::Failed,
        error: Some(JobError::new("OUTPUT_EXPIRED", "gone", false)),
        ..Custody::default()
    };
    let last = store
        .finish_custody(
            CustodyWrite {
                job_id: "job_keep".to_owned(),
                results: vec![
                    (0, expired.clone()),
                    (1, expired.clone()),
                    (7, expired.clone()),
                ],
                retry_at_ms: None,
            },
            T0 + 6_000,
        )
        .await
        .expect("custody store call")
        .expect("output 1 changed");
    assert_eq!(
        last.outputs[0].custody,
        stored("job_keep/0"),
        "settled stays"
    );
    assert_eq!(last.outputs[1].custody, expired);
    assert_eq!(last.revision, after.revision + 1);
    // Done: no longer queued (job_ev's claim ran out: it is due again, alone); a patch still
    // cannot touch the terminal job.
    let due = store
        .claim_custody("r1", T0 + 999_999, 60_000, 10)
        .await
        .expect("custody store call");
    let due: Vec<&str> = due.iter().map(|t| t.job_id.as_str()).collect();
    assert_eq!(due, ["job_ev"]);
    let none = store
        .apply(vec![completed("job_keep", 1, true)], T0 + 7_000)
        .await
        .expect("custody store call");
    assert!(none.is_empty(), "terminal jobs take no patch");

    // A claim held by a dead run is due again at once after `release_custody`.
    assert_eq!(
        store
            .finish_custody(
                CustodyWrite {
                    job_id: "job_ev".to_owned(),
                    results: Vec::new(),
                    retry_at_ms: Some(T0 + 8_000),
                },
                T0 + 7_000,
            )
            .await
            .expect("custody store call"),
        None,
        "nothing settled: no new revision"
    );
    let held = store
        .claim_custody("r1", T0 + 8_000, 600_000, 10)
        .await
        .expect("custody store call");
    assert_eq!(held.len(), 1);
    assert!(
        store
            .claim_custody("r1", T0 + 9_000, 600_000, 10)
            .await
            .expect("custody store call")
            .is_empty()
    );
    store
        .release_custody("r1", T0 + 9_000)
        .await
        .expect("custody store call");
    let again = store
        .claim_custody("r1", T0 + 9_000, 600_000, 10)
        .await
        .expect("custody store call");
    assert_eq!(again.len(), 1, "released");
    assert_eq!(again[0].job_id, "job_ev");
}
