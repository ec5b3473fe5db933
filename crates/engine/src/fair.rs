//! Weighted fair queuing of one provider's request budget among callers.
//!
//! The unit served is one submit *request* (a chunk of jobs the provider takes in one call):
//! the budget counts requests, so a caller whose jobs pack 100 to a call is not charged 100
//! times. Each caller has a virtual time; serving a chunk advances it by `1 / weight`, and the
//! next chunk is always the one of the caller with the smallest virtual time (start-time fair
//! queuing). A caller that was idle re-enters at the current virtual time, so it cannot claim
//! the budget it did not use — and a caller alone is served back to back (nothing is kept
//! idle for callers who have nothing queued). Within one caller, jobs go by priority
//! (interactive, normal, bulk), then age.
//!
//! The same order answers "how many requests are ahead of this job" for queue positions and
//! start estimates ([`FairOrder::plan`] without state), so what the gateway promises is what
//! its dispatcher does.

use std::collections::HashMap;

use adgate_store::JobRecord;

use crate::pricing::CallerPolicies;

/// Virtual times of the callers one dispatcher serves, kept across its passes.
#[derive(Debug, Default)]
pub(crate) struct FairState {
    virtual_time: HashMap<String, f64>,
    /// The virtual time of the last chunk served: where a caller returning from idle starts.
    now: f64,
}

/// One queued job as the fair order sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub caller: &'a str,
    pub priority: i64,
    pub created_at_ms: i64,
    /// Jobs of one group may share a request; others never do.
    pub group: Option<&'a str>,
}

impl<'a> Entry<'a> {
    pub(crate) fn of(job: &'a JobRecord) -> Self {
        Entry {
            caller: &job.caller,
            priority: job.priority,
            created_at_ms: job.created_at_ms,
            group: job.group_key.as_deref(),
        }
    }
}

/// Chunks (as indices into the entries) in the order they are to be sent.
pub(crate) struct FairOrder;

impl FairOrder {
    /// Orders `entries` into requests of at most `max_items` jobs of one caller and one group,
    /// callers interleaved by weighted fair share. With `state`, the callers' virtual times
    /// carry over from earlier passes and are advanced by this plan's chunks as they are
    /// served (see [`FairState::served`]); without, every caller starts level.
    pub(crate) fn plan(
        entries: &[Entry<'_>],
        max_items: usize,
        policies: &CallerPolicies,
        state: Option<&FairState>,
    ) -> Vec<Vec<usize>> {
        let max_items = max_items.max(1);
        // Per caller: its jobs by priority, then age (stable: ties keep claim order).
        let mut callers: Vec<&str> = Vec::new();
        let mut per_caller: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            per_caller
                .entry(e.caller)
                .or_insert_with(|| {
                    callers.push(e.caller);
                    Vec::new()
                })
                .push(i);
        }
        let mut queues: Vec<(f64, f64, std::vec::IntoIter<Vec<usize>>)> = callers
            .iter()
            .map(|c| {
                let mut idx = per_caller.remove(c).unwrap_or_default();
                idx.sort_by_key(|&i| (entries[i].priority, entries[i].created_at_ms));
                let chunks = chunk_by_group(&idx, entries, max_items);
                let start = state.map_or(0.0, |s| s.start_of(c));
                let step = 1.0 / f64::from(policies.weight(c).max(1));
                (start, step, chunks.into_iter())
            })
            .collect();
        let mut order: Vec<Vec<usize>> = Vec::new();
        let mut heads: Vec<Option<Vec<usize>>> = queues.iter_mut().map(|q| q.2.next()).collect();
        loop {
            // The caller with the smallest virtual time that still has a chunk; ties go to
            // the caller seen first (oldest head).
            let mut best: Option<usize> = None;
            for (i, h) in heads.iter().enumerate() {
                if h.is_some() && best.is_none_or(|b| queues[i].0 < queues[b].0) {
                    best = Some(i);
                }
            }
            let Some(b) = best else {
                break;
            };
            if let Some(chunk) = heads[b].take() {
                order.push(chunk);
            }
            queues[b].0 += queues[b].1;
            heads[b] = queues[b].2.next();
        }
        order
    }
}

impl FairState {
    /// Where `caller` starts: its own virtual time, or the current one after being idle.
    fn start_of(&self, caller: &str) -> f64 {
        self.virtual_time
            .get(caller)
            .copied()
            .unwrap_or(self.now)
            .max(self.now)
    }

    /// A chunk of `caller`'s was sent.
    pub(crate) fn served(&mut self, caller: &str, policies: &CallerPolicies) {
        let start = self.start_of(caller);
        self.now = start;
        let step = 1.0 / f64::from(policies.weight(caller).max(1));
        self.virtual_time.insert(caller.to_owned(), start + step);
        // Callers far behind the current time have been idle: forget them (bounded memory).
        if self.virtual_time.len() > 1024 {
            let now = self.now;
            self.virtual_time.retain(|_, v| *v >= now);
        }
    }
}

/// `idx` (one caller's jobs, in order) cut into requests: jobs of one group together, in
/// first-seen order of groups, at most `max` per request; ungrouped jobs one per request
/// unless the provider takes several ungrouped items at once.
fn chunk_by_group(idx: &[usize], entries: &[Entry<'_>], max: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
    let mut at: HashMap<Option<&str>, usize> = HashMap::new();
    for &i in idx {
        let g = entries[i].group;
        let k = *at.entry(g).or_insert_with(|| {
            groups.push((g, Vec::new()));
            groups.len() - 1
        });
        groups[k].1.push(i);
    }
    groups
        .into_iter()
        .flat_map(|(_, jobs)| jobs.chunks(max).map(<[usize]>::to_vec).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::CallerPolicy;

    fn entries(spec: &[(&'static str, i64, i64)]) -> Vec<Entry<'static>> {
        spec.iter()
            .map(|&(caller, priority, created_at_ms)| Entry {
                caller,
                priority,
                created_at_ms,
                group: None,
            })
            .collect()
    }

    fn callers_in(order: &[Vec<usize>], e: &[Entry<'_>]) -> String {
        order.iter().map(|c| &e[c[0]].caller[..1]).collect()
    }

    #[test]
    fn a_second_caller_is_served_next_not_after_the_first_callers_backlog() {
        let mut spec: Vec<(&str, i64, i64)> = (0..10).map(|t| ("a", 2, t)).collect();
        spec.push(("b", 2, 100));
        let e = entries(&spec);
        let order = FairOrder::plan(&e, 1, &CallerPolicies::default(), None);
        assert_eq!(callers_in(&order, &e), "abaaaaaaaaa");
    }

    #[test]
    fn weights_share_the_budget() {
        let spec: Vec<(&str, i64, i64)> = (0..6)
            .map(|t| ("a", 2, t))
            .chain((0..6).map(|t| ("b", 2, t)))
            .collect();
        let e = entries(&spec);
        let mut p = CallerPolicies::default();
        p.0.insert(
            "a".into(),
            CallerPolicy {
                weight: 2,
                ..Default::default()
            },
        );
        let order = FairOrder::plan(&e, 1, &p, None);
        assert_eq!(&callers_in(&order, &e)[..9], "abaabaaba");
    }

    #[test]
    fn priority_orders_one_callers_jobs_only() {
        let e = entries(&[("a", 3, 0), ("a", 1, 5), ("a", 2, 1), ("b", 3, 2)]);
        let order = FairOrder::plan(&e, 1, &CallerPolicies::default(), None);
        let flat: Vec<usize> = order.into_iter().flatten().collect();
        // a's interactive job first; b (bulk) still gets the second slot.
        assert_eq!(flat, vec![1, 3, 2, 0]);
    }

    #[test]
    fn an_idle_caller_cannot_bank_budget() {
        let policies = CallerPolicies::default();
        let mut state = FairState::default();
        for _ in 0..50 {
            state.served("a", &policies);
        }
        // b arrives after a has been served 50 times: it alternates with a, it does not get
        // 50 requests in a row.
        let spec: Vec<(&str, i64, i64)> = (0..5)
            .map(|t| ("a", 2, t))
            .chain((0..5).map(|t| ("b", 2, 100 + t)))
            .collect();
        let e = entries(&spec);
        let order = FairOrder::plan(&e, 1, &policies, Some(&state));
        assert_eq!(&callers_in(&order, &e)[..4], "baba");
    }

    #[test]
    fn groups_pack_into_requests() {
        let mut e = entries(&[("a", 2, 0), ("a", 2, 1), ("a", 2, 2), ("b", 2, 3)]);
        for x in e.iter_mut() {
            x.group = Some("g");
        }
        let order = FairOrder::plan(&e, 2, &CallerPolicies::default(), None);
        assert_eq!(order, vec![vec![0, 1], vec![3], vec![2]]);
    }
}
