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
        ratio: f64,
        target: &str,
        verdict: Verdict,
    ) {
        self.row(
            scenario,
            figure,
            format!(
                "{:.0} rps = {ratio:.2} x echo; p50 {:.2} ms, p99 {:.2} ms; {} errors",
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
