//! How much of each provider's request budget this process has used, for the web console.
//!
//! Separate from [`crate::engine::ProviderStatus`] because it is a live reading (it changes
//! with every request), while the status describes configuration and health.

use std::time::Duration;

use crate::engine::Engine;

/// One provider's request budget as this process sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetUsage {
    pub provider: String,
    /// Requests counted in the current rolling window. Replicas sharing a database take their
    /// budget from the store: this counts only the requests this replica sent.
    pub used: usize,
    /// Requests the window allows.
    pub limit: u32,
    /// The provider's rolling window.
    pub per: Duration,
    /// The daily cap's reading, `(used, limit)`, where the provider has one.
    pub daily: Option<(usize, u32)>,
}

impl Engine {
    /// Every provider's budget reading, sorted by provider name.
    pub fn budget_usage(&self) -> Vec<BudgetUsage> {
        let mut out: Vec<BudgetUsage> = self
            .shared
            .providers
            .values()
            .map(|rt| BudgetUsage {
                provider: rt.name.clone(),
                used: rt.budget.in_window(),
                limit: rt.limits.budget.requests,
                per: rt.limits.budget.per,
                daily: rt
                    .daily
                    .as_ref()
                    .zip(rt.limits.daily_budget)
                    .map(|(b, cap)| (b.in_window(), cap.requests)),
            })
            .collect();
        out.sort_by(|a, b| a.provider.cmp(&b.provider));
        out
    }
}
