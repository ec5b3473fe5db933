//! Progress fan-out to watchers.
//!
//! Modelled on tonic-health's reporter/service pair: the engine publishes every committed job
//! change once; each watcher holds a small slot that keeps only the *latest* record per job it
//! watches. A slow watcher therefore costs at most one record per watched job — memory stays
//! bounded without dropping anything a client needs, because a newer revision supersedes an
//! older one. Watchers never touch providers: many watchers of one job cost one poll.
//!
//! When the event source may have missed changes (a multi-replica listener reconnecting), the
//! bus marks every watcher for resync and each re-reads its jobs from the store.
//!
//! Memory: a gateway holds up to 10,000 streams, most of them watching a single job, so the
//! per-watcher state is sized for that case — no hash map per watcher, no task, no channel. A
//! [`Watch`] is polled directly (it implements `Stream`), and the publisher wakes it through a
//! `Waker` kept in its slot.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use adgate_store::{JobRecord, Store, StoreError};

/// Above this many pending records a slot switches from a linear-scan `Vec` to a map.
const FEW: usize = 16;

/// Latest record per job not yet taken by the watcher.
#[derive(Debug)]
enum Pending {
    /// Watchers of a few jobs (the common case: one): a linear scan over a handful of entries
    /// is cheaper than a hash table and allocates nothing until the first change.
    Few(Vec<Arc<JobRecord>>),
    /// Watchers of many jobs: keeps a publish O(1) however far behind the watcher is.
    Many(HashMap<String, Arc<JobRecord>>),
}

impl Default for Pending {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl Pending {
    fn is_empty(&self) -> bool {
        match self {
            Self::Few(v) => v.is_empty(),
            Self::Many(m) => m.is_empty(),
        }
    }

    fn put(&mut self, record: &Arc<JobRecord>) {
        match self {
            Self::Few(v) => {
                if let Some(old) = v.iter_mut().find(|r| r.id == record.id) {
                    if old.revision < record.revision {
                        *old = record.clone();
                    }
                } else if v.len() < FEW {
                    v.push(record.clone());
                } else {
                    let mut m: HashMap<String, Arc<JobRecord>> =
                        v.drain(..).map(|r| (r.id.clone(), r)).collect();
                    m.insert(record.id.clone(), record.clone());
                    *self = Self::Many(m);
                }
            }
            Self::Many(m) => {
                let newer = m
                    .get(&record.id)
                    .is_none_or(|old| old.revision < record.revision);
                if newer {
                    m.insert(record.id.clone(), record.clone());
                }
            }
        }
    }

    fn take(&mut self) -> Vec<Arc<JobRecord>> {
        match std::mem::take(self) {
            Self::Few(v) => v,
            Self::Many(m) => m.into_values().collect(),
        }
    }
}

#[derive(Debug, Default)]
struct SlotState {
    pending: Pending,
    /// The watcher's task, woken by a publish or a resync request.
    waker: Option<Waker>,
    resync: bool,
}

#[derive(Debug, Default)]
struct Slot {
    // A std Mutex, not tokio's: it is held for a push, a drain or a waker swap, never across an
    // await, and `publish` must take it synchronously under the registry lock. A Waker in the
    // state (instead of a `Notify`) lets `Watch` be polled directly as a `Stream`, without a
    // boxed `notified()` future per watcher.
    state: Mutex<SlotState>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The watchers of one job. Almost always exactly one, so that case is stored inline instead
/// of in a one-element `Vec` (one allocation less per watcher).
#[derive(Debug)]
enum Watchers {
    One(u64, Arc<Slot>),
    Many(Vec<(u64, Arc<Slot>)>),
}

impl Watchers {
    fn iter(&self) -> impl Iterator<Item = &Arc<Slot>> {
        let (one, many) = match self {
            Self::One(_, s) => (Some(s), None),
            Self::Many(v) => (None, Some(v.iter().map(|(_, s)| s))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn push(&mut self, id: u64, slot: Arc<Slot>) {
        match self {
            Self::One(a, s) => *self = Self::Many(vec![(*a, s.clone()), (id, slot)]),
            Self::Many(v) => v.push((id, slot)),
        }
    }

    /// Remove watcher `id`; true when no watcher is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Self::One(a, _) => *a == id,
            Self::Many(v) => {
                v.retain(|(w, _)| *w != id);
                v.is_empty()
            }
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    by_job: HashMap<Arc<str>, Watchers>,
    watchers: usize,
}

/// Cheap-clone handle over the registry.
#[derive(Debug, Clone, Default)]
pub struct Bus {
    // A std Mutex: publish and (un)register hold it for a map lookup and never await. One lock
    // for the whole bus is enough: a publish is one hash lookup plus one short slot lock per
    // watcher of that job, and wakers are woken after it is released.
    registry: Arc<Mutex<Registry>>,
    next_id: Arc<AtomicU64>,
}

impl Bus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hand a committed change to every watcher of that job.
    pub fn publish(&self, record: Arc<JobRecord>) {
        // Wake outside the registry lock: waking a task may unpark a worker thread (a futex
        // syscall), which must not lengthen the critical section every publish and every
        // stream open/close contend on.
        let mut wake: Option<Waker> = None;
        let mut more: Vec<Waker> = Vec::new();
        {
            let reg = self.lock();
            let Some(watchers) = reg.by_job.get(record.id.as_str()) else {
                return;
            };
            for slot in watchers.iter() {
                let mut st = slot.lock();
                st.pending.put(&record);
                if let Some(w) = st.waker.take() {
                    if wake.is_none() {
                        wake = Some(w);
                    } else {
                        more.push(w);
                    }
                }
            }
        }
        wake.into_iter().chain(more).for_each(Waker::wake);
    }

    /// Tell every watcher to re-read its jobs (changes may have been missed).
    pub fn resync_all(&self) {
        let mut wakers = Vec::new();
        {
            let reg = self.lock();
            for slot in reg.by_job.values().flat_map(Watchers::iter) {
                let mut st = slot.lock();
                st.resync = true;
                wakers.extend(st.waker.take());
            }
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    pub fn is_watched(&self, job_id: &str) -> bool {
        self.lock().by_job.contains_key(job_id)
    }

    pub fn watcher_count(&self) -> usize {
        self.lock().watchers
    }

    /// Register a watcher for `job_ids`, then read their current state. Registering first
    /// means no change committed after the snapshot can be missed; the revision filter in
    /// [`Watch::next`] drops anything the snapshot already covers.
    pub async fn watch(
        &self,
        store: Arc<dyn Store>,
        job_ids: Vec<String>,
    ) -> Result<Watch, StoreError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        let mut jobs: Vec<Watched> = job_ids
            .iter()
            .map(|j| Watched {
                id: Arc::from(j.as_str()),
                seen: 0,
                open: false,
            })
            .collect();
        jobs.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        jobs.dedup_by(|a, b| a.id == b.id);
        jobs.shrink_to_fit();
        {
            let mut reg = self.lock();
            for job in &jobs {
                match reg.by_job.get_mut(&job.id) {
                    Some(w) => w.push(id, slot.clone()),
                    None => {
                        reg.by_job
                            .insert(job.id.clone(), Watchers::One(id, slot.clone()));
                    }
                }
            }
            reg.watchers += 1;
        }
        // From here on, dropping `watch` (an error below included) unregisters.
        let mut watch = Watch {
            bus: self.clone(),
            store,
            id,
            slot,
            jobs,
            open: 0,
            ready: VecDeque::new(),
            unknown: Vec::new(),
            resync: None,
        };
        let mut records: Vec<Arc<JobRecord>> = watch
            .store
            .get_jobs(&job_ids)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        records.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        // The snapshot in request order.
        for job in job_ids {
            match records.binary_search_by(|r| r.id.as_str().cmp(&job)) {
                Ok(i) => watch.offer(records[i].clone()),
                Err(_) => watch.unknown.push(job),
            }
        }
        watch.ready.shrink_to_fit();
        Ok(watch)
    }

    fn unregister(&self, id: u64, jobs: &[Watched]) {
        let mut reg = self.lock();
        reg.watchers = reg.watchers.saturating_sub(1);
        for job in jobs {
            if let Some(w) = reg.by_job.get_mut(&job.id)
                && w.remove(id)
            {
                reg.by_job.remove(&job.id);
            }
        }
    }
}

/// One watched job: the last revision handed out (0 = none yet) and whether it was then
/// still non-terminal.
#[derive(Debug)]
struct Watched {
    id: Arc<str>,
    seen: i64,
    open: bool,
}

type Reread = Pin<Box<dyn Future<Output = Result<Vec<JobRecord>, StoreError>> + Send>>;

/// One watcher's view: the snapshot first, then each change, ending when every known watched
/// job is terminal. Dropping it unregisters at once.
pub struct Watch {
    bus: Bus,
    store: Arc<dyn Store>,
    id: u64,
    slot: Arc<Slot>,
    /// Sorted by id (binary search), deduplicated.
    jobs: Vec<Watched>,
    /// How many `jobs` were last delivered in a non-terminal state.
    open: usize,
    ready: VecDeque<Arc<JobRecord>>,
    unknown: Vec<String>,
    /// A resync's store read in progress.
    resync: Option<Reread>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("id", &self.id)
            .field("jobs", &self.jobs.len())
            .field("open", &self.open)
            .finish()
    }
}

impl Watch {
    /// Ids that were not found when the watch started.
    pub fn unknown_ids(&self) -> &[String] {
        &self.unknown
    }

    /// True once every known watched job has been delivered in a terminal state.
    pub fn finished(&self) -> bool {
        self.ready.is_empty() && self.open == 0
    }

    fn offer(&mut self, rec: Arc<JobRecord>) {
        let Ok(i) = self.jobs.binary_search_by(|j| (*j.id).cmp(rec.id.as_str())) else {
            return;
        };
        let job = &mut self.jobs[i];
        if job.seen >= rec.revision {
            return;
        }
        job.seen = rec.revision;
        let open = !rec.state.is_terminal();
        match (job.open, open) {
            (false, true) => self.open += 1,
            (true, false) => self.open -= 1,
            _ => {}
        }
        job.open = open;
        self.ready.push_back(rec);
    }

    /// The next record to send, or `None` when every watched job is terminal. Cancel-safe.
    pub async fn next(&mut self) -> Option<Arc<JobRecord>> {
        std::future::poll_fn(|cx| self.poll_record(cx)).await
    }

    /// Poll form of [`Watch::next`]: registers the task's waker with the bus when nothing is
    /// ready.
    pub fn poll_record(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<JobRecord>>> {
        // After a failed re-read, retry on the next wake-up rather than at once (no busy loop
        // against a failing store) and rather than ending the stream.
        let mut retry_later = false;
        loop {
            if let Some(rec) = self.ready.pop_front() {
                return Poll::Ready(Some(rec));
            }
            if self.open == 0 {
                return Poll::Ready(None);
            }
            if let Some(reread) = self.resync.as_mut() {
                let result = std::task::ready!(reread.as_mut().poll(cx));
                self.resync = None;
                match result {
                    Ok(records) => records.into_iter().for_each(|r| self.offer(Arc::new(r))),
                    Err(_) => {
                        self.slot.lock().resync = true;
                        retry_later = true;
                    }
                }
                continue;
            }
            let drained = {
                let mut st = self.slot.lock();
                if st.resync && !retry_later {
                    st.resync = false;
                    drop(st);
                    let ids: Vec<String> = self
                        .jobs
                        .iter()
                        .filter(|j| j.open)
                        .map(|j| j.id.to_string())
                        .collect();
                    let store = self.store.clone();
                    self.resync = Some(Box::pin(async move { store.get_jobs(&ids).await }));
                    continue;
                }
                if st.pending.is_empty() {
                    // Registered under the slot lock, so a publish after the check wakes us.
                    if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        st.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                st.pending.take()
            };
            for rec in drained {
                self.offer(rec);
            }
        }
    }
}

impl futures_util::Stream for Watch {
    type Item = Arc<JobRecord>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_record(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.bus.unregister(self.id, &self.jobs);
    }
}
