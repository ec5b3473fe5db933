//! The batches list: the newest batches with their counts and cost.
//!
//! The engine has no batch listing yet (`ListBatches` is being built), so this process keeps
//! the ids of the batches submitted through it ([`RecentBatches`], fed by `Submit`), newest
//! first, and reads each one's jobs for its row. A finished batch no longer changes, so its
//! row is kept and not read again. Batches submitted before a restart or through another
//! replica are not listed (the page says so); they open by id.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use adgate_engine::Engine;

use super::api;
use super::pages::BatchRow;

/// Batches remembered; older ones drop off the list (they still open by id).
pub const REMEMBERED: usize = 50;

/// What the list page says about its source.
pub const NOTE: &str = "Batches submitted to this gateway process since it started, newest \
    first; older batches, and those submitted through another replica, open by id.";

#[derive(Debug, Clone)]
struct Entry {
    batch_id: String,
    /// Set once every job of the batch is terminal.
    finished: Option<BatchRow>,
}

/// The ids of recently submitted batches, newest first (shared by `Submit` and the console).
#[derive(Debug, Clone, Default)]
pub struct RecentBatches(Arc<Mutex<VecDeque<Entry>>>);

impl RecentBatches {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A Submit created (or replayed) `batch_id`: it goes to the top.
    pub fn record(&self, batch_id: &str) {
        let mut q = self.lock();
        let prior = q
            .iter()
            .position(|e| e.batch_id == batch_id)
            .and_then(|i| q.remove(i));
        q.push_front(prior.unwrap_or_else(|| Entry {
            batch_id: batch_id.to_owned(),
            finished: None,
        }));
        q.truncate(REMEMBERED);
    }

    fn snapshot(&self) -> Vec<Entry> {
        self.lock().iter().cloned().collect()
    }

    fn finish(&self, row: &BatchRow) {
        if let Some(e) = self.lock().iter_mut().find(|e| e.batch_id == row.batch_id) {
            e.finished = Some(row.clone());
        }
    }

    /// The rows, newest first. A batch the store cannot read right now is left out.
    pub async fn rows(&self, engine: &Engine) -> Vec<BatchRow> {
        let mut rows = Vec::new();
        for e in self.snapshot() {
            if let Some(row) = e.finished {
                rows.push(row);
                continue;
            }
            let Ok(Some(jobs)) = engine.batch_jobs(&e.batch_id).await else {
                continue;
            };
            let row = BatchRow {
                batch_id: e.batch_id.clone(),
                created_at_ms: jobs.iter().map(|j| j.created_at_ms).min().unwrap_or(0),
                totals: api::totals(engine, &jobs),
            };
            if jobs.iter().all(|j| j.state.is_terminal()) {
                self.finish(&row);
            }
            rows.push(row);
        }
        rows
    }
}

/// The newest batches first, and a note to show above them.
pub async fn recent(engine: &Engine, batches: &RecentBatches) -> (Vec<BatchRow>, String) {
    (batches.rows(engine).await, NOTE.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: &RecentBatches) -> Vec<String> {
        r.snapshot().into_iter().map(|e| e.batch_id).collect()
    }

    #[test]
    fn newest_first_without_duplicates_and_bounded() {
        let r = RecentBatches::default();
        r.record("bat_a");
        r.record("bat_b");
        r.record("bat_a");
        assert_eq!(ids(&r), ["bat_a", "bat_b"]);
        for i in 0..REMEMBERED + 5 {
            r.record(&format!("bat_{i}"));
        }
        let all = ids(&r);
        assert_eq!(all.len(), REMEMBERED);
        assert_eq!(all[0], format!("bat_{}", REMEMBERED + 4));
        assert!(!all.contains(&"bat_a".to_owned()));
    }
}
