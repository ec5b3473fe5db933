//! A read-through cache of job records for the read API (`GetJob`, `BatchStatus` by ids).
//!
//! Reads that miss go to the store, and their answers are kept; every change this process
//! commits is handed to the cache as it is published. Serving a read from memory skips the
//! store's connection hand-off and the JSON decoding of the row, which is most of a read's cost.
//!
//! Correctness rests on two rules, both enforced under the shard's lock:
//! - A change *updates* an entry that is there (if it is newer) but never *creates* one, and
//!   bumps the shard's epoch. Changes to one job can be published out of order (two callers
//!   whose commits finished one after the other), so creating entries from them could leave an
//!   older revision behind once the newer one was evicted.
//! - A store read *creates* an entry only if its shard's epoch has not moved since the read
//!   began: no change to any job of that shard was published meanwhile, so what it read is
//!   still the latest. (A change published before the read began was committed before it, so
//!   the read saw it.) A moved epoch only costs a later miss.
//!
//! Only a single process sees every change it makes; with a shared store other replicas change
//! jobs behind its back, so the engine does not use the cache then (capacity 0). Records in the
//! cache can lag in bookkeeping the read API does not show (the attempt a queued job is linked
//! to changes no revision and is not published).
//!
//! Bounded: each shard holds at most its share of the capacity and drops an arbitrary entry to
//! make room (a miss costs one store read, so no recency tracking is worth its overhead).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::fast::RandomState;

use adgate_store::JobRecord;

/// Shards keep readers on different jobs off each other's lock.
const SHARDS: usize = 64;

pub(crate) struct RecordCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    /// Bumped by every published change to a job of this shard.
    epoch: u64,
    /// Its own seed (not `RecordCache::hasher`'s): keys of one shard share their shard hash's
    /// low bits, which would all land in the same buckets of a map hashed the same way.
    records: HashMap<String, Arc<JobRecord>, RandomState>,
}

impl RecordCache {
    /// A cache of about `capacity` records; 0 turns it off.
    pub(crate) fn new(capacity: usize) -> RecordCache {
        let per_shard = capacity.div_ceil(SHARDS);
        RecordCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard,
            hasher: RandomState::default(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    fn shard(&self, job_id: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(job_id) as usize) % SHARDS;
        // A panic while holding a shard cannot leave it inconsistent (each critical section
        // is a single map operation), so a poisoned lock is still usable.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached record, or the shard's epoch to hand back to [`RecordCache::fill`] after
    /// reading the store.
    pub(crate) fn get(&self, job_id: &str) -> Result<Arc<JobRecord>, u64> {
        let shard = self.shard(job_id);
        match shard.records.get(job_id) {
            Some(r) => Ok(Arc::clone(r)),
            None => Err(shard.epoch),
        }
    }

    /// Keep a record read from the store, unless a change to its shard was published since
    /// the read began (`epoch` from [`RecordCache::get`]).
    pub(crate) fn fill(&self, record: &Arc<JobRecord>, epoch: u64) {
        if !self.enabled() {
            return;
        }
        let mut shard = self.shard(&record.id);
        if shard.epoch != epoch {
            return;
        }
        if shard.records.len() >= self.per_shard
            && !shard.records.contains_key(&record.id)
            && let Some(victim) = shard.records.keys().next().cloned()
        {
            shard.records.remove(&victim);
        }
        shard.records.insert(record.id.clone(), Arc::clone(record));
    }

    /// A committed change, as it is published.
    pub(crate) fn changed(&self, record: &Arc<JobRecord>) {
        if !self.enabled() {
            return;
        }
        let mut shard = self.shard(&record.id);
        shard.epoch = shard.epoch.wrapping_add(1);
        if let Some(cached) = shard.records.get_mut(&record.id)
            && cached.revision <= record.revision
        {
            *cached = Arc::clone(record);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).records.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, revision: i64) -> Arc<JobRecord> {
        Arc::new(JobRecord {
            id: id.to_owned(),
            batch_id: "batch_1".to_owned(),
            provider: "pictify".to_owned(),
            spec: serde_json::Value::Null,
            state: adgate_generator::JobState::Queued,
            provider_ref: None,
            poll_key: None,
            group_key: None,
            correlation_key: None,
            attempt_id: None,
            progress: None,
            outputs: Vec::new(),
            error: None,
            client_ref: String::new(),
            labels: Default::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
            completed_at_ms: None,
            deadline_at_ms: 0,
            revision,
            provider_result: None,
            caller: "anonymous".into(),
            priority: 2,
            cost: None,
            traceparent: None,
        })
    }

    #[test]
    fn a_read_is_kept_and_changes_update_it() {
        let cache = RecordCache::new(128);
        let epoch = cache.get("job_1").expect_err("empty");
        cache.fill(&record("job_1", 1), epoch);
        assert_eq!(cache.get("job_1").map(|r| r.revision), Ok(1));
        cache.changed(&record("job_1", 3));
        assert_eq!(cache.get("job_1").map(|r| r.revision), Ok(3));
        // A change published late (an older revision) never goes back.
        cache.changed(&record("job_1", 2));
        assert_eq!(cache.get("job_1").map(|r| r.revision), Ok(3));
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let cache = RecordCache::new(128);
        let epoch = cache.get("job_1").expect_err("empty");
        // The change is published while the store read is under way...
        cache.changed(&record("job_1", 2));
        // ... so what the read returned may be older: not kept.
        cache.fill(&record("job_1", 1), epoch);
        assert!(cache.get("job_1").is_err());
        // A change never creates an entry on its own either.
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn bounded_and_off_at_zero() {
        let cache = RecordCache::new(SHARDS * 2);
        for n in 0..10_000 {
            let id = format!("job_{n}");
            if let Err(epoch) = cache.get(&id) {
                cache.fill(&record(&id, 1), epoch);
            }
        }
        assert!(cache.len() <= SHARDS * 2, "{}", cache.len());
        let off = RecordCache::new(0);
        let epoch = off.get("job_1").expect_err("empty");
        off.fill(&record("job_1", 1), epoch);
        assert!(off.get("job_1").is_err());
    }
}
