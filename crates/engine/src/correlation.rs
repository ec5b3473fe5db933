//! Exact correlation: unfinished jobs by the fingerprint of what an event would echo back
//! (see `Generator::job_fingerprint`).
//!
//! A Pictify `render.completed` names its job only by template and variables. Scanning the
//! oldest unfinished jobs of the template finds it when completions come in submission order,
//! but a plan that runs ten batches side by side completes jobs a thousand places apart: an
//! event whose job lies past the scanned window was kept and retried by the inbox, whose
//! passes hold the resolving lock, so webhook answers slowed past the provider's timeout, its
//! retries piled up, and once it paused the subscription the remaining images were never
//! delivered. With this index such an event finds its job in one lookup.
//!
//! In memory and per process: it holds the jobs this process stored, from their Submit until
//! they are terminal. An event for any other job (stored by another replica, or before a
//! restart), or one that echoes only some variables, falls back to the scan.

use std::collections::HashMap;
use std::sync::Mutex;

pub(crate) struct ExactIndex {
    enabled: bool,
    by_fingerprint: Mutex<HashMap<u64, Vec<Box<str>>, foldhash::fast::RandomState>>,
}

impl ExactIndex {
    /// Off for a store shared by replicas: they finish each other's jobs, which this process
    /// would never see leave the index.
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            by_fingerprint: Mutex::default(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn insert(&self, fingerprint: u64, job_id: &str) {
        if !self.enabled {
            return;
        }
        lock(&self.by_fingerprint)
            .entry(fingerprint)
            .or_default()
            .push(job_id.into());
    }

    pub(crate) fn remove(&self, fingerprint: u64, job_id: &str) {
        let mut map = lock(&self.by_fingerprint);
        if let Some(ids) = map.get_mut(&fingerprint) {
            ids.retain(|id| &**id != job_id);
            if ids.is_empty() {
                map.remove(&fingerprint);
            }
        }
    }

    /// Jobs with this fingerprint (unordered; possibly none).
    pub(crate) fn get(&self, fingerprint: u64) -> Vec<String> {
        lock(&self.by_fingerprint)
            .get(&fingerprint)
            .map(|ids| ids.iter().map(|id| id.to_string()).collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.by_fingerprint).values().map(Vec::len).sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_found_by_fingerprint_until_removed() {
        let index = ExactIndex::new(true);
        index.insert(7, "job_a");
        index.insert(7, "job_b");
        index.insert(8, "job_c");
        let mut seven = index.get(7);
        seven.sort();
        assert_eq!(seven, ["job_a", "job_b"]);
        index.remove(7, "job_a");
        assert_eq!(index.get(7), ["job_b"]);
        index.remove(7, "job_b");
        index.remove(8, "job_unknown");
        assert!(index.get(7).is_empty());
        assert_eq!(
            index.len(),
            1,
            "an emptied fingerprint leaves nothing behind"
        );
        let off = ExactIndex::new(false);
        off.insert(7, "job_a");
        assert!(off.get(7).is_empty());
    }
}
