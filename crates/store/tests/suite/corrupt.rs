//! Rows the store cannot decode (written by hand, a bug or another tool) are reported as
//! `Corrupt`, never panicked on, and a write that meets one fails alone: nothing of it stays.

use std::future::Future;

use adgate_generator::JobState;
use adgate_store::{EventWrite, JobPatch, Store, StoreError};

use super::{T0, job, submission, submit_ok};

/// The statements that corrupt the two jobs; the backend's test runs them on its own
/// connection.
pub const CORRUPTING: [&str; 2] = [
    "UPDATE jobs SET labels = 'not json' WHERE id = 'job_1'",
    "UPDATE jobs SET state = 42 WHERE id = 'job_2'",
];

pub async fn corrupt_rows_are_reported<F, Fut>(store: &dyn Store, corrupt: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    submit_ok(
        store,
        submission(
            "batch_1",
            vec![job("job_1", "pictify"), job("job_2", "pictify")],
            T0,
        ),
    )
    .await;
    corrupt().await;
    let err = store
        .get_jobs(&["job_1".to_owned()])
        .await
        .expect_err("corrupt labels");
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("job_1")),
        "{err:?}"
    );
    let err = store
        .get_jobs(&["job_2".to_owned()])
        .await
        .expect_err("corrupt state");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let err = store.count_by_state().await.expect_err("corrupt state");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    // A patch to a corrupt job fails alone, and the writer keeps serving.
    let mut patch = JobPatch::new("job_1");
    patch.state = Some(JobState::Processing);
    assert!(matches!(
        store.apply(vec![patch], T0).await,
        Err(StoreError::Corrupt(_))
    ));
    // A delivery whose patch cannot be applied is not recorded either: the provider's retry
    // of it will be applied, not dropped as a duplicate.
    let mut patch = JobPatch::new("job_1");
    patch.state = Some(JobState::Completed);
    assert!(matches!(
        store
            .apply_delivery("pictify", "d-1", vec![patch], T0)
            .await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(
        store
            .record_delivery("pictify", "d-1", T0)
            .await
            .expect("still writing; d-1 not on record")
    );
    // Nor is an event kept by it: all of a delivery's writes stay, or none.
    let mut patch = JobPatch::new("job_1");
    patch.state = Some(JobState::Completed);
    let write = EventWrite {
        delivery_id: Some("d-2".to_owned()),
        patches: vec![patch],
        keep: vec![(serde_json::json!({"k": 1}), T0 + 1)],
        consumed: Vec::new(),
    };
    assert!(matches!(
        store.apply_event("pictify", write, T0).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(
        store
            .kept_events("pictify", 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .record_delivery("pictify", "d-2", T0)
            .await
            .expect("d-2 not on record")
    );
    store.close().await;
}
