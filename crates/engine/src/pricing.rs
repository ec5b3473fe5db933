//! What jobs cost and who may spend how much: the adapters' documented prices with the
//! operator's overrides, the estimate stored with each job at Submit (the reservation a spend
//! limit counts), and the per-caller, per-provider daily spend limits.
//!
//! The reservation is the job row itself: its cost column holds the estimate while the job may
//! run, the settled amount once it completed and zero once it failed or was cancelled
//! (`StoredCost`, settled by the store's one state machine). So "spent today" is one indexed
//! sum over the caller's jobs at that provider created since 00:00 UTC, and nothing has to be
//! released or reconciled separately.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use adgate_generator::{Generator, Price};
use adgate_store::StoredCost;
use serde_json::Value;

/// The operator's price settings for one provider (TOML `[providers.<name>]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceOverrides {
    /// Replaces the adapter's unit (e.g. a plan's credits expressed in `USD`).
    pub unit: Option<String>,
    /// Millionths of the unit by price kind (`flat`, `editable`, `image`, `format`, …).
    pub micros_by_kind: BTreeMap<String, i64>,
}

/// One caller's policy (TOML `[callers.<name>]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CallerPolicy {
    /// Share of every provider's request budget relative to other callers with queued jobs.
    pub weight: u32,
    /// Most this caller may spend per UTC day at a provider, in millionths of that provider's
    /// unit. Absent = no limit.
    pub daily_limits: BTreeMap<String, i64>,
}

impl Default for CallerPolicy {
    fn default() -> Self {
        Self {
            weight: 1,
            daily_limits: BTreeMap::new(),
        }
    }
}

/// Callers the operator configured; every other caller gets the default policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallerPolicies(pub BTreeMap<String, CallerPolicy>);

impl CallerPolicies {
    pub fn weight(&self, caller: &str) -> u32 {
        self.0.get(caller).map_or(1, |p| p.weight.max(1))
    }

    pub fn daily_limit(&self, caller: &str, provider: &str) -> Option<i64> {
        self.0.get(caller)?.daily_limits.get(provider).copied()
    }
}

/// The price of a job with `spec` at a provider, overrides applied.
pub(crate) fn price(
    generator: &dyn Generator,
    overrides: &PriceOverrides,
    spec: &Value,
) -> Option<(String, Price)> {
    let mut price = generator.price(spec)?;
    if let Some(m) = overrides.micros_by_kind.get(price.kind) {
        price.micros = *m;
    }
    let unit = overrides
        .unit
        .clone()
        .unwrap_or_else(|| price.unit.to_owned());
    Some((unit, price))
}

/// The estimate stored with a new job.
pub(crate) fn estimate(
    generator: &dyn Generator,
    overrides: &PriceOverrides,
    spec: &Value,
) -> Option<StoredCost> {
    let (unit, price) = price(generator, overrides, spec)?;
    let outputs = if price.per_output {
        i64::from(price.expected_outputs.max(1))
    } else {
        1
    };
    Some(StoredCost {
        unit,
        micros: price.micros.saturating_mul(outputs),
        per_output_micros: price.per_output.then_some(price.micros),
    })
}

/// Per caller, one lock held from reading the day's spend to committing the Submit that
/// reserves more, so two Submits of one caller never both pass a limit that only one fits.
/// (Between replicas on one PostgreSQL store each replica holds its own lock: concurrent
/// Submits of one caller on two replicas can overshoot by at most one Submit per replica,
/// which the README states.)
#[derive(Debug, Default)]
pub(crate) struct SpendLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl SpendLocks {
    pub(crate) fn of(&self, caller: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(caller.to_owned()).or_default().clone()
    }
}

/// Start of the UTC day containing `now_ms`.
pub(crate) fn day_start_ms(now_ms: i64) -> i64 {
    const DAY_MS: i64 = 86_400_000;
    now_ms.div_euclid(DAY_MS) * DAY_MS
}

/// Sums costs per unit, units in first-seen order.
pub fn sum_by_unit<'a>(costs: impl IntoIterator<Item = (&'a str, i64)>) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for (unit, micros) in costs {
        match out.iter_mut().find(|(u, _)| u == unit) {
            Some((_, m)) => *m = m.saturating_add(micros),
            None => out.push((unit.to_owned(), micros)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_start_is_utc_midnight() {
        assert_eq!(day_start_ms(86_400_000 * 3 + 5), 86_400_000 * 3);
        assert_eq!(day_start_ms(86_400_000 * 3), 86_400_000 * 3);
    }

    #[test]
    fn sums_keep_units_apart() {
        let s = sum_by_unit([("USD", 1), ("pictify_credit", 2), ("USD", 3)]);
        assert_eq!(
            s,
            vec![("USD".to_owned(), 4), ("pictify_credit".to_owned(), 2)]
        );
    }
}
