//! The outbox part of the conformance suite: outbound-webhook rows written in the transaction
//! of the change that causes them, filtered per endpoint, `batch.completed` once, and the
//! deliverer's claim / settle / disable / redeliver.

use adgate_generator::JobState;
use adgate_store::notify::{ALL_EVENTS, BATCH_COMPLETED, JOB_COMPLETED};
use adgate_store::{
    BatchNotify, JobPatch, NotifyEndpoint, NotifyOutcome, NotifySettle, OutboxEntry, Store,
};

use super::{T0, job, submission, submit_ok};

async fn set(store: &dyn Store, patches: &[(&str, JobState)], at: i64) -> usize {
    let patches = patches
        .iter()
        .map(|(id, s)| {
            let mut p = JobPatch::new(*id);
            p.state = Some(*s);
            p
        })
        .collect();
    store.apply(patches, at).await.expect("apply").len()
}

/// (event id, endpoint) of every due row, in outbox order.
fn keys(rows: &[OutboxEntry]) -> Vec<(String, String)> {
    rows.iter()
        .map(|r| (r.event_id.clone(), r.endpoint.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    v.sort();
    v
}

async fn claim_sorted(store: &dyn Store, at: i64) -> Vec<OutboxEntry> {
    let mut rows = store
        .claim_notifications(at, 1_000, 100)
        .await
        .expect("claim");
    rows.sort_by(|a, b| (&a.event_id, &a.endpoint).cmp(&(&b.event_id, &b.endpoint)));
    rows
}

pub async fn notify_outbox(store: &dyn Store) {
    store
        .set_notify_endpoints(vec![
            NotifyEndpoint {
                id: "cfg:team:crm".into(),
                caller: "team".into(),
                url: "https://crm.example/hook".into(),
                events: JOB_COMPLETED | BATCH_COMPLETED,
            },
            NotifyEndpoint {
                id: "cfg:other:x".into(),
                caller: "other".into(),
                url: "https://other.example/hook".into(),
                events: ALL_EVENTS,
            },
        ])
        .await
        .expect("endpoints");
    let mut b1 = submission(
        "b1",
        vec![
            job("j1", "pictify"),
            job("j2", "pictify"),
            job("j3", "pictify"),
        ],
        T0,
    );
    b1.caller = "team".into();
    b1.notify = Some(BatchNotify {
        url: Some(("https://hook.example/x".into(), ALL_EVENTS)),
    });
    submit_ok(store, b1).await;
    let mut b2 = submission("b2", vec![job("j4", "pictify")], T0);
    b2.caller = "team".into();
    submit_ok(store, b2).await;

    // Not terminal: no event. Terminal: one per endpoint that takes it, at once.
    assert_eq!(set(store, &[("j1", JobState::Processing)], T0 + 1).await, 1);
    assert!(claim_sorted(store, T0 + 2).await.is_empty());
    set(store, &[("j1", JobState::Completed)], T0 + 3).await;
    let first = claim_sorted(store, T0 + 4).await;
    assert_eq!(
        keys(&first),
        pairs(&[
            ("evt_j1", "cfg:team:crm"),
            ("evt_j1", "url:https://hook.example/x")
        ])
    );
    assert!(first.iter().all(|r| r.kind == JOB_COMPLETED
        && r.job_id.as_deref() == Some("j1")
        && r.batch_id == "b1"
        && r.attempts == 0));
    // Leased: not claimed again before the lease ends.
    assert!(claim_sorted(store, T0 + 5).await.is_empty());

    // The last two jobs in one write: their events, filtered, and batch.completed once.
    set(
        store,
        &[("j2", JobState::Failed), ("j3", JobState::Cancelled)],
        T0 + 10,
    )
    .await;
    // A batch that notifies nobody writes nothing; a terminal job never changes again.
    set(store, &[("j4", JobState::Completed)], T0 + 11).await;
    assert_eq!(set(store, &[("j2", JobState::Completed)], T0 + 12).await, 0);
    let second = claim_sorted(store, T0 + 20).await;
    assert_eq!(
        keys(&second),
        pairs(&[
            ("evt_b1", "cfg:team:crm"),
            ("evt_b1", "url:https://hook.example/x"),
            ("evt_j2", "url:https://hook.example/x"),
            ("evt_j3", "url:https://hook.example/x"),
        ])
    );
    let batch_event = second
        .iter()
        .find(|r| r.event_id == "evt_b1")
        .expect("present");
    assert_eq!(
        (batch_event.kind, batch_event.job_id.as_deref()),
        (BATCH_COMPLETED, None)
    );

    // Settle: delivered rows are done; a retry comes back at its time with one more attempt;
    // the first claim's lease has ended, so its rows are due again.
    let mut settles: Vec<NotifySettle> = second
        .iter()
        .map(|r| NotifySettle {
            seq: r.seq,
            outcome: NotifyOutcome::Delivered,
        })
        .collect();
    let crm_j1 = first
        .iter()
        .find(|r| r.endpoint == "cfg:team:crm")
        .expect("present");
    let url_j1 = first
        .iter()
        .find(|r| r.endpoint != "cfg:team:crm")
        .expect("present");
    settles.push(NotifySettle {
        seq: crm_j1.seq,
        outcome: NotifyOutcome::Retry {
            next_at_ms: T0 + 5_000,
            error: "HTTP 500".into(),
        },
    });
    settles.push(NotifySettle {
        seq: url_j1.seq,
        outcome: NotifyOutcome::GiveUp {
            error: "HTTP 500".into(),
        },
    });
    store
        .settle_notifications(settles, T0 + 21)
        .await
        .expect("present");
    assert!(claim_sorted(store, T0 + 4_999).await.is_empty());
    let retried = claim_sorted(store, T0 + 5_000).await;
    assert_eq!(keys(&retried), pairs(&[("evt_j1", "cfg:team:crm")]));
    assert_eq!(retried[0].attempts, 1);

    // Disabled: its due rows are parked (the one leased now too, once settled as parked).
    store
        .settle_notifications(
            vec![NotifySettle {
                seq: retried[0].seq,
                outcome: NotifyOutcome::Retry {
                    next_at_ms: T0 + 6_000,
                    error: "HTTP 500".into(),
                },
            }],
            T0 + 5_001,
        )
        .await
        .expect("present");
    assert_eq!(
        store
            .disable_endpoint("cfg:team:crm", "failing", T0 + 5_002)
            .await
            .expect("present"),
        1
    );
    assert_eq!(
        store.disabled_endpoints().await.expect("present"),
        vec![("cfg:team:crm".to_owned(), "failing".to_owned())]
    );
    assert!(claim_sorted(store, T0 + 60_000).await.is_empty());

    // Redelivery: every row of the batch due again, same ids, attempts reset, endpoint on.
    assert_eq!(
        store
            .redeliver_batch("nope", T0 + 70_000)
            .await
            .expect("present"),
        None
    );
    assert_eq!(
        store
            .redeliver_batch("b1", T0 + 70_000)
            .await
            .expect("present"),
        Some(6)
    );
    assert!(
        store
            .disabled_endpoints()
            .await
            .expect("present")
            .is_empty()
    );
    let again = claim_sorted(store, T0 + 70_000).await;
    assert_eq!(
        keys(&again),
        pairs(&[
            ("evt_b1", "cfg:team:crm"),
            ("evt_b1", "url:https://hook.example/x"),
            ("evt_j1", "cfg:team:crm"),
            ("evt_j1", "url:https://hook.example/x"),
            ("evt_j2", "url:https://hook.example/x"),
            ("evt_j3", "url:https://hook.example/x"),
        ])
    );
    assert!(again.iter().all(|r| r.attempts == 0));

    // Retention: the events go with their batch once its last job is deleted.
    let cutoffs = adgate_store::PurgeCutoffs {
        jobs_completed_before_ms: i64::MAX,
        request_ids_before_ms: i64::MAX,
        deliveries_before_ms: i64::MAX,
    };
    while store.purge(cutoffs, 500).await.expect("purge").jobs > 0 {}
    assert_eq!(
        store
            .redeliver_batch("b1", T0 + 80_000)
            .await
            .expect("redeliver"),
        None
    );
    assert!(claim_sorted(store, i64::MAX / 2).await.is_empty());
}
