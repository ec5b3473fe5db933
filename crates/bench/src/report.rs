//! The table every run prints.

use crate::load::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    Info,
}

impl From<bool> for Verdict {
    fn from(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub value: String,
    pub target: String,
    pub verdict: Verdict,
}

#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn row(
        &mut self,
        scenario: &str,
        figure: &str,
        value: String,
        target: &str,
        verdict: Verdict,
    ) {
        let row = Row {
            scenario: scenario.to_owned(),
            figure: figure.to_owned(),
            value,
            target: target.to_owned(),
            verdict,
        };
        eprintln!(
            "  [{}] {}: {} (target {})",
            row.scenario, row.figure, row.value, row.target
        );
        self.rows.push(row);
    }

    pub fn info(&mut self, scenario: &str, figure: &str, value: String) {
        self.row(scenario, figure, value, "-", Verdict::Info);
    }

    pub fn unary(
        &mut self,
        scenario: &str,
        figure: &str,
        s: &Stats,
        ratios: &str,
        target: &str,
        verdict: Verdict,
    ) {
        self.row(
            scenario,
            figure,
            format!(
                "{:.0} rps = {ratios}; p50 {:.2} ms, p99 {:.2} ms; {} errors",
                s.rps(),
                s.p_ms(0.5),
                s.p_ms(0.99),
                s.errors
            ),
            target,
            verdict,
        );
    }

    /// A Markdown table (pastes into BENCHMARKS.md as is).
    pub fn render(&self) -> String {
        let mut out =
            String::from("| scenario | figure | result | target | met |\n|---|---|---|---|---|\n");
        for r in &self.rows {
            let v = match r.verdict {
                Verdict::Met => "yes",
                Verdict::Missed => "**no**",
                Verdict::Info => "",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.scenario, r.figure, r.value, r.target, v
            ));
        }
        out
    }
}

/// The headline of a row's value for the summary: the text before its first `;` or ` (`
/// (e.g. `8824 rps = 0.17 x echo = 0.43 x pgbench`).
fn headline(value: &str) -> &str {
    let end = [value.find(';'), value.find(" (")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(value.len());
    value[..end].trim()
}

/// One row per figure over several runs' reports (first-seen order): each run's headline value
/// and how many runs met the target (blank for figures without one).
pub fn summary(reports: &[Report]) -> String {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in reports.iter().flat_map(|r| &r.rows) {
        let key = (r.scenario.as_str(), r.figure.as_str());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut out = String::from("| scenario | figure |");
    for i in 1..=reports.len() {
        out.push_str(&format!(" run {i} |"));
    }
    out.push_str(" target | met |\n|---|---|");
    out.push_str(&"---|".repeat(reports.len() + 2));
    out.push('\n');
    for (scenario, figure) in keys {
        let mut target = "-";
        let (mut met, mut judged) = (0usize, 0usize);
        out.push_str(&format!("| {scenario} | {figure} |"));
        for report in reports {
            let row = report
                .rows
                .iter()
                .find(|r| r.scenario == scenario && r.figure == figure);
            match row {
                Some(r) => {
                    out.push_str(&format!(" {} |", headline(&r.value)));
                    if r.target != "-" {
                        target = &r.target;
                    }
                    match r.verdict {
                        Verdict::Met => {
                            met += 1;
                            judged += 1;
                        }
                        Verdict::Missed => judged += 1,
                        Verdict::Info => {}
                    }
                }
                None => out.push_str(" - |"),
            }
        }
        let tally = if judged > 0 {
            format!("{met}/{}", reports.len())
        } else {
            String::new()
        };
        out.push_str(&format!(" {target} | {tally} |\n"));
    }
    out
}
