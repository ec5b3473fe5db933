//! What the command line prints and writes: state names, money, one-line job summaries, JSON
//! lines on stdout, and the results file (one JSON line per job).
// This module is the command line's output: printing to stdout is its purpose.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use super::pbjson;
use crate::pb;

pub fn state(job: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified)
}

/// `COMPLETED` for `JOB_STATE_COMPLETED`.
pub fn state_name(s: pb::JobState) -> &'static str {
    let name = s.as_str_name();
    name.strip_prefix("JOB_STATE_").unwrap_or(name)
}

pub fn is_terminal(s: pb::JobState) -> bool {
    matches!(
        s,
        pb::JobState::Completed | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

/// A job that did not produce what was asked (the exit code says so).
pub fn is_failure(s: pb::JobState) -> bool {
    matches!(s, pb::JobState::Failed | pb::JobState::Cancelled)
}

/// Cost per unit (a currency such as `USD`, or a provider's credits), in micros.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Costs(pub BTreeMap<String, i64>);

impl Costs {
    pub fn add(&mut self, cost: Option<&pb::Cost>) {
        if let Some(c) = cost {
            // Gateways before `Cost.unit` only set the currency.
            let unit = if c.unit.is_empty() {
                &c.currency_code
            } else {
                &c.unit
            };
            *self.0.entry(unit.clone()).or_default() += c.micros;
        }
    }

    pub fn of<'a>(jobs: impl IntoIterator<Item = &'a pb::Job>) -> Self {
        let mut c = Self::default();
        for j in jobs {
            c.add(j.cost.as_ref());
        }
        c
    }
}

impl std::fmt::Display for Costs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("0");
        }
        let parts: Vec<String> = self.0.iter().map(|(u, m)| amount(u, *m)).collect();
        f.write_str(&parts.join(" + "))
    }
}

/// `$1.25`, `3.50 EUR`, `12 pictify_credit`.
fn amount(unit: &str, micros: i64) -> String {
    let money = unit.len() == 3 && unit.bytes().all(|b| b.is_ascii_uppercase());
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    if money {
        let cents = abs / 10_000;
        let n = format!("{}.{:02}", cents / 100, cents % 100);
        return if unit == "USD" {
            format!("{sign}${n}")
        } else {
            format!("{sign}{n} {unit}")
        };
    }
    let whole = abs / 1_000_000;
    let frac = abs % 1_000_000;
    if frac == 0 {
        format!("{sign}{whole} {unit}")
    } else {
        let frac = format!("{frac:06}");
        format!("{sign}{whole}.{} {unit}", frac.trim_end_matches('0'))
    }
}

/// `job_… COMPLETED client_ref` plus the output count or the error.
pub fn job_line(job: &pb::Job) -> String {
    let mut s = format!(
        "{:<10} {} {}",
        state_name(state(job)),
        job.id,
        job.client_ref
    );
    if !job.outputs.is_empty() {
        s.push_str(&format!(" ({} output(s))", job.outputs.len()));
    }
    if let Some(e) = &job.error {
        s.push_str(&format!(" {}: {}", e.code, e.message));
    }
    s
}

/// One line of the results file.
pub fn result_json(job: &pb::Job) -> Value {
    let outputs: Vec<Value> = job
        .outputs
        .iter()
        .map(|o| pbjson::to_json(o, "adgate.v1.Output"))
        .collect();
    json!({
        "client_ref": job.client_ref,
        "job_id": job.id,
        "batch_id": job.batch_id,
        "provider": job.provider,
        "state": state_name(state(job)),
        "outputs": outputs,
        "error": job.error.as_ref().map(|e| pbjson::to_json(e, "adgate.v1.JobError")),
        "cost": job.cost.as_ref().map(|c| pbjson::to_json(c, "adgate.v1.Cost")),
    })
}

/// Write the results file (replaced whole, through a temporary file beside it).
pub fn write_results(path: &Path, jobs: &[pb::Job]) -> std::io::Result<()> {
    let mut text = String::new();
    for j in jobs {
        text.push_str(&result_json(j).to_string());
        text.push('\n');
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// One JSON object on stdout (`--json`).
pub fn emit(value: &Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is not worth failing the command over.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// One line of text on stdout.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_sum_per_currency() {
        let jobs = [
            pb::Job {
                cost: Some(pb::Cost {
                    currency_code: "USD".into(),
                    micros: 1_000_000,
                    unit: String::new(),
                }),
                ..Default::default()
            },
            pb::Job {
                cost: Some(pb::Cost {
                    currency_code: "USD".into(),
                    micros: 250_000,
                    unit: "USD".into(),
                }),
                ..Default::default()
            },
            pb::Job::default(),
        ];
        assert_eq!(Costs::of(&jobs).to_string(), "$1.25");
        assert_eq!(Costs::default().to_string(), "0");
        let mut c = Costs::default();
        c.add(Some(&pb::Cost {
            unit: "pictify_credit".into(),
            micros: 3_000_000,
            ..Default::default()
        }));
        c.add(Some(&pb::Cost {
            currency_code: "EUR".into(),
            unit: "EUR".into(),
            micros: 1_500_000,
        }));
        c.add(Some(&pb::Cost {
            unit: "abyssale_credit".into(),
            micros: 500_000,
            ..Default::default()
        }));
        assert_eq!(
            c.to_string(),
            "1.50 EUR + 0.5 abyssale_credit + 3 pictify_credit"
        );
    }

    #[test]
    fn result_lines_carry_ref_state_outputs_and_error() {
        let job = pb::Job {
            id: "job_1".into(),
            client_ref: "ad-1".into(),
            state: pb::JobState::Failed as i32,
            error: Some(pb::JobError {
                code: "DEADLINE_EXCEEDED".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = result_json(&job);
        assert_eq!(v["client_ref"], "ad-1");
        assert_eq!(v["state"], "FAILED");
        assert_eq!(v["error"]["code"], "DEADLINE_EXCEEDED");
        assert_eq!(v["outputs"], json!([]));
        assert!(job_line(&job).starts_with("FAILED     job_1 ad-1 DEADLINE_EXCEEDED"));
    }
}
