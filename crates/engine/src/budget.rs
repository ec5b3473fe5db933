//! The request budget one provider key allows, shared by submits, polls and stream opens.
//!
//! The providers document *rolling* windows ("100 requests per 60 s", "10 per second"). A token
//! bucket sized to the limit would let a full burst through and then refill continuously, which
//! a rolling window refuses: after 100 requests at t=0 the 101st is refused until t=60, while a
//! bucket would allow one at t=0.6. So the budget keeps the send times of the last `limit`
//! requests and admits a request only when fewer than `limit` fall inside the window. The
//! window is widened by a small margin because the provider counts a request when it *arrives*,
//! which is after we stamp it.
//!
//! Corrections from the provider win: a 429's Retry-After, or rate-limit headers that report an
//! exhausted window, block every caller until the stated reset.
//!
//! Two priorities: submits go first, because polling later costs nothing (one poll then covers
//! more finished jobs) while submitting later delays work. A poll that has waited two full
//! windows stops yielding, so polling is never starved.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use adgate_generator::{RateLimitSnapshot, RequestBudget};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Submit,
    Poll,
}

#[derive(Debug)]
struct State {
    sent: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    submit_waiters: usize,
}

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    window: Duration,
    // A std Mutex: the critical sections are a few deque operations and never await.
    state: Mutex<State>,
    // Wakes waiters when the window may have changed (a block lifted, a submit waiter left).
    changed: Notify,
    /// See `paced_until`; off for a daily cap.
    paced: bool,
}

impl Budget {
    pub fn new(budget: RequestBudget) -> Self {
        let window = budget.per + (budget.per / 50).max(Duration::from_millis(50));
        Self {
            limit: budget.requests.max(1) as usize,
            window,
            state: Mutex::new(State {
                sent: VecDeque::new(),
                blocked_until: None,
                submit_waiters: 0,
            }),
            changed: Notify::new(),
            paced: true,
        }
    }

    /// A cap that is never paced (a provider's daily request cap: pacing spreads the burst of
    /// a short window; it must not spread a day's requests over the day).
    pub fn unpaced(budget: RequestBudget) -> Self {
        Self {
            paced: false,
            ..Self::new(budget)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until one more request fits the budget, and count it. Returns how long it waited.
    pub async fn acquire(&self, priority: Priority) -> Duration {
        let started = Instant::now();
        // Decrements `submit_waiters` however this future ends (success or cancellation).
        let mut guard = SubmitWaiter {
            budget: self,
            registered: false,
        };
        loop {
            let wake_at = {
                let mut s = self.lock();
                let now = Instant::now();
                while s
                    .sent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    s.sent.pop_front();
                }
                let blocked = s.blocked_until.filter(|b| *b > now);
                let yields = priority == Priority::Poll
                    && s.submit_waiters > 0
                    && now.duration_since(started) < self.window * 2;
                let paced_until = self.paced_until(&s);
                let paced = paced_until.is_some_and(|p| p > now);
                if blocked.is_none() && s.sent.len() < self.limit && !yields && !paced {
                    s.sent.push_back(now);
                    if guard.registered {
                        s.submit_waiters -= 1;
                        guard.registered = false;
                        self.changed.notify_waiters();
                    }
                    return now.duration_since(started);
                }
                if priority == Priority::Submit && !guard.registered {
                    s.submit_waiters += 1;
                    guard.registered = true;
                }
                let window_free = if s.sent.len() >= self.limit {
                    s.sent.front().map(|t| *t + self.window)
                } else {
                    None
                };
                let poll_unyield = yields.then(|| started + self.window * 2);
                [
                    blocked,
                    window_free,
                    poll_unyield,
                    paced_until.filter(|p| *p > now),
                ]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(now + Duration::from_millis(10))
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.changed.notified() => {}
            }
        }
    }

    /// Once the window is half used, requests are paced `window / limit` apart: a rolling
    /// window alone lets its whole limit through in one burst the moment it frees, so a job
    /// arriving just after a burst would wait a full window however fair the order (the
    /// dispatcher promises a new caller the next slot or the one after). A busy window still
    /// carries exactly `limit` requests; an idle one still takes half its limit at once.
    fn paced_until(&self, s: &State) -> Option<Instant> {
        if !self.paced || 2 * s.sent.len() < self.limit {
            return None;
        }
        let spacing = self.window / u32::try_from(self.limit).unwrap_or(u32::MAX).max(1);
        s.sent.back().map(|last| *last + spacing)
    }

    /// When the next `count` requests can go, from now, if nothing else used the budget: the
    /// rolling window replayed forward from the requests it holds (and any block). What queue
    /// start estimates are computed from.
    pub fn projected_slots(&self, count: usize) -> Vec<Duration> {
        let now = Instant::now();
        let s = self.lock();
        let start = s.blocked_until.filter(|b| *b > now).unwrap_or(now);
        let mut window: VecDeque<Instant> = s
            .sent
            .iter()
            .copied()
            .filter(|t| now.duration_since(*t) < self.window)
            .collect();
        drop(s);
        let mut out = Vec::with_capacity(count);
        let spacing = self.window / u32::try_from(self.limit).unwrap_or(u32::MAX).max(1);
        for _ in 0..count {
            while window.front().is_some_and(|t| *t + self.window <= start) {
                window.pop_front();
            }
            let mut at = if window.len() >= self.limit {
                window
                    .front()
                    .map_or(start, |t| (*t + self.window).max(start))
            } else {
                start
            };
            if self.paced
                && 2 * window.len() >= self.limit
                && let Some(last) = window.back()
            {
                at = at.max(*last + spacing);
            }
            window.push_back(at);
            while window.len() > self.limit {
                window.pop_front();
            }
            out.push(at.saturating_duration_since(now));
        }
        out
    }

    /// Block every caller for `wait` (a 429's Retry-After or a default).
    pub fn block_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut s = self.lock();
        if s.blocked_until.is_none_or(|b| b < until) {
            s.blocked_until = Some(until);
        }
    }

    /// Apply a provider's rate-limit headers: an exhausted window blocks until its reset.
    pub fn observe(&self, snapshot: Option<RateLimitSnapshot>) {
        if let Some(s) = snapshot
            && s.remaining == 0
        {
            self.block_for(s.reset_after);
        }
    }

    /// The window the budget enforces (the provider's, plus the arrival margin).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Requests counted in the current window (for metrics and tests).
    pub fn in_window(&self) -> usize {
        let mut s = self.lock();
        let now = Instant::now();
        while s
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            s.sent.pop_front();
        }
        s.sent.len()
    }
}

struct SubmitWaiter<'a> {
    budget: &'a Budget,
    registered: bool,
}

impl Drop for SubmitWaiter<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.budget.lock().submit_waiters -= 1;
            self.budget.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn budget(n: u32, secs: u64) -> Arc<Budget> {
        Arc::new(Budget::new(RequestBudget {
            requests: n,
            per: Duration::from_secs(secs),
        }))
    }

    /// Paced, a busy budget still carries its whole limit per window, evenly: after the first
    /// half-window burst, one request every window / limit.
    #[tokio::test(start_paused = true)]
    async fn pacing_keeps_the_full_rate_evenly_spaced() {
        let b = budget(10, 1);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..45 {
            b.acquire(Priority::Submit).await;
            at.push(start.elapsed());
        }
        // The window is widened by its margin (50 ms): 10 per 1.05 s, 105 ms apart.
        let gaps: Vec<Duration> = at.windows(2).skip(10).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| *g <= Duration::from_millis(106)),
            "{gaps:?}"
        );
        // 5 at once, 5 paced until the window is full; the burst leaves the window at 1.05 s,
        // from when every request is 105 ms after the previous: the full rate.
        assert!(
            at[44] <= Duration::from_millis(1050 + 34 * 105 + 10),
            "{:?}",
            at[44]
        );
        assert!(
            at[10] >= Duration::from_millis(1050),
            "never more than 10 per window"
        );
        let projected = b.projected_slots(3);
        assert!(projected[0] <= Duration::from_millis(106), "{projected:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_limit_in_any_window() {
        let b = budget(100, 60);
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (b, times) = (b.clone(), times.clone());
            tasks.push(tokio::spawn(async move {
                b.acquire(Priority::Submit).await;
                times.lock().unwrap().push(Instant::now());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut t = times.lock().unwrap().clone();
        t.sort();
        assert_eq!(t.len(), 1000);
        for i in 100..t.len() {
            assert!(
                t[i].duration_since(t[i - 100]) >= Duration::from_secs(60),
                "101 requests inside one 60 s window at {i}"
            );
        }
        // 1000 requests at 100/min need at least 9 full windows after the first burst.
        assert!(t[999].duration_since(t[0]) >= Duration::from_secs(9 * 60));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_blocks_everyone() {
        let b = budget(10, 1);
        b.block_for(Duration::from_secs(17));
        let start = Instant::now();
        b.acquire(Priority::Poll).await;
        assert!(start.elapsed() >= Duration::from_secs(17));
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_headers_block_until_reset() {
        let b = budget(10, 1);
        b.observe(Some(RateLimitSnapshot {
            limit: Some(10),
            remaining: 0,
            reset_after: Duration::from_secs(5),
        }));
        let start = Instant::now();
        b.acquire(Priority::Submit).await;
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn submits_go_before_polls_but_polls_are_not_starved() {
        let b = budget(1, 10);
        b.acquire(Priority::Submit).await; // window now full until ~t=10
        let order = Arc::new(Mutex::new(Vec::new()));
        let poll = {
            let (b, order) = (b.clone(), order.clone());
            tokio::spawn(async move {
                b.acquire(Priority::Poll).await;
                order.lock().unwrap().push("poll");
            })
        };
        tokio::task::yield_now().await;
        let submit = {
            let (b, order) = (b.clone(), order.clone());
            tokio::spawn(async move {
                b.acquire(Priority::Submit).await;
                order.lock().unwrap().push("submit");
            })
        };
        submit.await.unwrap();
        poll.await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec!["submit", "poll"]);
    }
}
