//! Following jobs as their updates arrive: the latest state of each job, counts per state,
//! rate, ETA and cost so far, shown as a redrawn bar per state on a terminal, one line per
//! change otherwise, or one JSON object per change with `--json`.
// This module is the command line's live output: printing to stdout is its purpose.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::output::{self, Costs, state, state_name};
use super::pbjson;
use crate::pb;

/// How updates are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars redrawn in place (stdout is a terminal).
    Bar,
    /// One line per job state change.
    Plain,
    /// One JSON object per job state change.
    Json,
}

const STATES: [pb::JobState; 5] = [
    pb::JobState::Queued,
    pb::JobState::Processing,
    pb::JobState::Completed,
    pb::JobState::Failed,
    pb::JobState::Cancelled,
];
const BAR_WIDTH: usize = 30;

struct Known {
    state: pb::JobState,
    revision: i64,
    cost: Option<pb::Cost>,
}

/// The latest known state of every watched job.
pub struct Tracker {
    mode: Mode,
    label: String,
    jobs: HashMap<String, Known>,
    /// Jobs expected (from Submit or the first snapshot); grows if more are seen.
    expected: usize,
    start: Instant,
    /// Jobs that became terminal while watching (the rate counts only these).
    finished_here: usize,
    drawn_lines: usize,
    /// The gateway's own estimate of when every job is terminal, when it gives one.
    gateway_eta: Option<SystemTime>,
}

impl Tracker {
    pub fn new(mode: Mode, label: String, expected: usize) -> Self {
        Self {
            mode,
            label,
            jobs: HashMap::new(),
            expected,
            start: Instant::now(),
            finished_here: 0,
            drawn_lines: 0,
            gateway_eta: None,
        }
    }

    /// Apply one job message; prints it unless it is a first sighting (snapshot) or stale.
    pub fn update(&mut self, job: &pb::Job) {
        let new_state = state(job);
        let previous = self.jobs.get(&job.id).map(|k| (k.state, k.revision));
        if let Some((_, rev)) = previous
            && rev >= job.revision
        {
            return;
        }
        self.jobs.insert(
            job.id.clone(),
            Known {
                state: new_state,
                revision: job.revision,
                cost: job.cost.clone(),
            },
        );
        self.expected = self.expected.max(self.jobs.len());
        let Some((old_state, _)) = previous else {
            return;
        };
        if old_state == new_state {
            return;
        }
        if output::is_terminal(new_state) && !output::is_terminal(old_state) {
            self.finished_here += 1;
        }
        match self.mode {
            Mode::Bar => {}
            Mode::Plain => output::line(&format!(
                "[{}/{}] {}",
                self.terminal(),
                self.expected,
                output::job_line(job)
            )),
            Mode::Json => output::emit(&json!({"event": "job", "job": pbjson::job_json(job)})),
        }
    }

    pub fn count(&self, s: pb::JobState) -> usize {
        self.jobs.values().filter(|k| k.state == s).count()
    }

    pub fn terminal(&self) -> usize {
        self.jobs
            .values()
            .filter(|k| output::is_terminal(k.state))
            .count()
    }

    pub fn costs(&self) -> Costs {
        let mut c = Costs::default();
        for k in self.jobs.values() {
            c.add(k.cost.as_ref());
        }
        c
    }

    /// Jobs per second finishing while watched, once there is something to measure.
    fn rate(&self) -> Option<f64> {
        let secs = self.start.elapsed().as_secs_f64();
        (self.finished_here > 0 && secs > 0.5).then(|| self.finished_here as f64 / secs)
    }

    pub fn set_gateway_eta(&mut self, at: Option<SystemTime>) {
        self.gateway_eta = at;
    }

    /// Time left: the gateway's estimate when it gives one, else the current rate's.
    pub fn eta(&self) -> Option<Duration> {
        if let Some(at) = self.gateway_eta {
            return Some(at.duration_since(SystemTime::now()).unwrap_or_default());
        }
        let left = self.expected.saturating_sub(self.terminal());
        let rate = self.rate()?;
        Duration::try_from_secs_f64(left as f64 / rate).ok()
    }

    /// Redraw the bars (terminal mode only).
    pub fn draw(&mut self) {
        if self.mode != Mode::Bar {
            return;
        }
        let mut lines = vec![self.headline()];
        let total = self.expected.max(1);
        for s in STATES {
            let n = self.count(s);
            let filled = (n * BAR_WIDTH).div_ceil(total).min(BAR_WIDTH);
            let filled = if n == 0 { 0 } else { filled.max(1) };
            lines.push(format!(
                "  {:<11}{}{} {:>6}",
                state_name(s),
                "█".repeat(filled),
                "░".repeat(BAR_WIDTH - filled),
                n
            ));
        }
        let mut out = std::io::stdout().lock();
        let mut text = String::new();
        if self.drawn_lines > 0 {
            text.push_str(&format!("\x1b[{}A", self.drawn_lines));
        }
        for l in &lines {
            text.push_str("\r\x1b[2K");
            text.push_str(l);
            text.push('\n');
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        self.drawn_lines = lines.len();
    }

    fn headline(&self) -> String {
        let rate = self
            .rate()
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
        // `~`: estimated here from the rate, not by the gateway.
        let approx = if self.gateway_eta.is_some() { "" } else { "~" };
        let eta = self
            .eta()
            .map_or_else(|| "-".to_owned(), |d| format!("{approx}{}", clock(d)));
        format!(
            "{}  {}/{} done  {} jobs/s  ETA {}  cost {}  ({} elapsed)",
            self.label,
            self.terminal(),
            self.expected,
            rate,
            eta,
            self.costs(),
            clock(self.start.elapsed())
        )
    }

    /// The closing summary, in the output mode.
    pub fn summary(&self, jobs: &[pb::Job]) {
        let mut counts: Vec<(pb::JobState, usize)> = STATES
            .iter()
            .map(|s| (*s, jobs.iter().filter(|j| state(j) == *s).count()))
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort_by_key(|(s, _)| *s as i32);
        let costs = Costs::of(jobs);
        let elapsed = self.start.elapsed();
        match self.mode {
            Mode::Json => {
                let by_state: serde_json::Map<String, serde_json::Value> = counts
                    .iter()
                    .map(|(s, n)| (state_name(*s).to_owned(), json!(n)))
                    .collect();
                let cost: serde_json::Map<String, serde_json::Value> =
                    costs.0.iter().map(|(c, m)| (c.clone(), json!(m))).collect();
                output::emit(&json!({
                    "event": "summary",
                    "jobs": jobs.len(),
                    "counts": by_state,
                    "cost_micros": cost,
                    "elapsed_seconds": elapsed.as_secs_f64(),
                }));
            }
            Mode::Bar | Mode::Plain => {
                let text: Vec<String> = counts
                    .iter()
                    .map(|(s, n)| format!("{n} {}", state_name(*s)))
                    .collect();
                output::line(&format!(
                    "{}: {} jobs: {}; cost {}; {}",
                    self.label,
                    jobs.len(),
                    text.join(", "),
                    costs,
                    clock(elapsed)
                ));
            }
        }
    }
}

/// `1m05s`, `42s`, `1h02m`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, s: pb::JobState, revision: i64) -> pb::Job {
        pb::Job {
            id: id.into(),
            state: s as i32,
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn stale_updates_are_ignored_and_counts_follow_revisions() {
        let mut t = Tracker::new(Mode::Bar, "b".into(), 2);
        t.update(&job("a", pb::JobState::Queued, 1));
        t.update(&job("b", pb::JobState::Queued, 1));
        t.update(&job("a", pb::JobState::Completed, 3));
        t.update(&job("a", pb::JobState::Processing, 2));
        assert_eq!(t.count(pb::JobState::Completed), 1);
        assert_eq!(t.count(pb::JobState::Queued), 1);
        assert_eq!(t.terminal(), 1);
        assert_eq!(t.finished_here, 1);
        // The gateway's estimate wins over the local rate.
        t.set_gateway_eta(Some(SystemTime::now() + Duration::from_secs(90)));
        let eta = t.eta().unwrap();
        assert!(
            eta > Duration::from_secs(80) && eta <= Duration::from_secs(90),
            "{eta:?}"
        );
    }

    #[test]
    fn clocks_read_naturally() {
        assert_eq!(clock(Duration::from_secs(42)), "42s");
        assert_eq!(clock(Duration::from_secs(65)), "1m05s");
        assert_eq!(clock(Duration::from_secs(3720)), "1h02m");
    }
}
