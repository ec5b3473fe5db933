//! The console's JSON under `/ui/api/…`, polled by its script, and the views the pages render
//! from (one source for both, so a page and its live updates cannot disagree).
//!
//! - `GET /ui/api/batches/{id}?since=MS`: counts, cost, and the cards of jobs changed at or
//!   after `since` (all of them without it; at most [`MAX_CARDS`]).
//! - `GET /ui/api/batches`: the newest batches.
//! - `GET /ui/api/providers`: each provider's health, budget, queue, ETA and counters.
//!
//! Each answer also carries its part of the page as HTML, so the script never builds markup.

use std::collections::BTreeMap;

use adgate_engine::eta::QueueEstimate;
use adgate_engine::{BudgetUsage, Engine, JobRecord, ProviderStatus};
use adgate_generator::JobState;
use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::ConsoleState;
use super::counters::Counters;
use super::pages;
use crate::auth::Caller;

/// Cards one batch page shows; counts and cost always cover the whole batch.
pub const MAX_CARDS: usize = 500;

/// Every state, in the order the console lists them.
pub const STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Processing,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

#[derive(Debug, Clone, Serialize)]
pub struct Money {
    pub currency: String,
    pub micros: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgressView {
    pub step: String,
    pub message: String,
    pub percentage: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputView {
    pub url: String,
    pub width: u32,
    pub height: u32,
    pub format: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

/// One job card.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub client_ref: String,
    pub provider: String,
    pub state: &'static str,
    pub terminal: bool,
    pub progress: Option<ProgressView>,
    pub outputs: Vec<OutputView>,
    pub error: Option<ErrorView>,
    pub cost: Option<Money>,
    pub updated_at_ms: i64,
    /// For a QUEUED job, the engine's estimate: jobs of its provider sent before it…
    pub queue_position: Option<i64>,
    /// …and when it should be sent (Unix ms).
    pub starts_at_ms: Option<i64>,
}

/// Counts per state (every state present, zeros included) and cost per currency.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub jobs: usize,
    pub counts: BTreeMap<&'static str, usize>,
    pub cost: Vec<Money>,
}

/// A batch page's data.
#[derive(Debug, Clone, Serialize)]
pub struct BatchView {
    pub batch_id: String,
    pub created_at_ms: i64,
    pub totals: Totals,
    /// Every job is terminal: the page stops polling.
    pub done: bool,
    /// When the engine expects every job to be terminal (Unix ms); `None` once they are.
    pub expected_done_at_ms: Option<i64>,
    /// Pass as `since` next time to get only what changed (the newest change seen; a job
    /// changed in that same millisecond is sent again, never missed).
    pub cursor: i64,
    pub jobs: Vec<JobView>,
}

/// Only web URLs become `<img src>`; anything else (a `javascript:` or `data:` URL from a
/// misbehaving provider) is dropped.
fn web_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

pub fn job_view(engine: &Engine, r: &JobRecord, estimate: Option<&QueueEstimate>) -> JobView {
    JobView {
        id: r.id.clone(),
        client_ref: r.client_ref.clone(),
        provider: r.provider.clone(),
        state: r.state.name(),
        terminal: r.state.is_terminal(),
        progress: r.progress.as_ref().map(|p| ProgressView {
            step: p.step.clone(),
            message: p.message.clone(),
            percentage: p.percentage,
        }),
        outputs: r
            .outputs
            .iter()
            .filter(|o| web_url(&o.url))
            .map(|o| OutputView {
                url: o.url.clone(),
                width: o.width,
                height: o.height,
                format: o.format.clone(),
            })
            .collect(),
        error: r.error.as_ref().map(|e| ErrorView {
            code: e.code.clone(),
            message: e.message.clone(),
        }),
        cost: engine.cost(r).map(|c| Money {
            currency: c.unit.clone(),
            micros: c.micros,
        }),
        updated_at_ms: r.updated_at_ms,
        queue_position: estimate.map(|e| e.position),
        starts_at_ms: estimate.map(|e| e.start_ms),
    }
}

/// Counts and cost of `jobs`.
pub fn totals(engine: &Engine, jobs: &[JobRecord]) -> Totals {
    let mut counts: BTreeMap<&'static str, usize> = STATES.iter().map(|s| (s.name(), 0)).collect();
    let mut cost: BTreeMap<String, i64> = BTreeMap::new();
    for j in jobs {
        *counts.entry(j.state.name()).or_default() += 1;
        if let Some(c) = engine.cost(j) {
            let m = cost.entry(c.unit).or_default();
            *m = m.saturating_add(c.micros);
        }
    }
    Totals {
        jobs: jobs.len(),
        counts,
        cost: cost
            .into_iter()
            .map(|(currency, micros)| Money { currency, micros })
            .collect(),
    }
}

/// A batch's view with the cards of jobs changed at or after `since` (all with `None`).
/// Another caller's batch is answered as unknown (as `ListBatches` would not show it).
pub async fn batch_view(
    engine: &Engine,
    caller: &Caller,
    batch_id: &str,
    since: Option<i64>,
) -> Result<Option<BatchView>, adgate_engine::EngineError> {
    let Some(jobs) = engine.batch_jobs(batch_id).await? else {
        return Ok(None);
    };
    let visible = super::listing::visible_callers(caller);
    if !visible.is_empty() && jobs.iter().any(|j| !visible.contains(&j.caller)) {
        return Ok(None);
    }
    let cursor = jobs.iter().map(|j| j.updated_at_ms).max().unwrap_or(0);
    let shown: Vec<&JobRecord> = jobs
        .iter()
        .take(MAX_CARDS)
        .filter(|j| since.is_none_or(|s| j.updated_at_ms >= s))
        .collect();
    // Estimates are a nicety: a failure to make them leaves the cards without.
    let estimates = engine.queue_estimates(&shown).await.unwrap_or_default();
    let views = shown
        .iter()
        .map(|j| job_view(engine, j, estimates.get(&j.id)))
        .collect();
    let all: Vec<&JobRecord> = jobs.iter().collect();
    let expected_done_at_ms = engine.completion_estimate(&all, &estimates);
    Ok(Some(BatchView {
        batch_id: batch_id.to_owned(),
        created_at_ms: jobs.iter().map(|j| j.created_at_ms).min().unwrap_or(0),
        totals: totals(engine, &jobs),
        done: jobs.iter().all(|j| j.state.is_terminal()),
        expected_done_at_ms,
        cursor,
        jobs: views,
    }))
}

/// One provider's row on the provider page.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderView {
    pub name: String,
    /// `SERVING`, `DEGRADED` or `UNREACHABLE` (as `ListProviders` says).
    pub health: String,
    pub reason: String,
    pub budget_used: usize,
    pub budget_limit: u32,
    pub budget_window_secs: f64,
    pub daily_used: Option<usize>,
    pub daily_limit: Option<u32>,
    /// QUEUED jobs (every replica's, from the store).
    pub queued: u64,
    pub processing: u64,
    pub in_flight: usize,
    /// Rough time to send the queue: queued jobs ÷ (budget rate × jobs per submit call). It
    /// ignores polls sharing the budget and provider-side time, so it is a lower bound.
    pub eta_secs: Option<f64>,
    /// `adgate_webhooks` by outcome (applied, kept, duplicate, refused).
    pub webhooks: BTreeMap<String, u64>,
    /// `adgate_provider_requests` by outcome.
    pub requests: BTreeMap<String, u64>,
}

fn health(p: &ProviderStatus) -> (String, String) {
    let info = crate::convert::provider(p);
    let name = crate::pb::ProviderHealth::try_from(info.health)
        .map(|h| h.as_str_name())
        .unwrap_or("PROVIDER_HEALTH_UNSPECIFIED");
    (
        name.trim_start_matches("PROVIDER_HEALTH_").to_owned(),
        info.reason,
    )
}

/// Queued jobs ÷ (requests per second × jobs per request).
pub fn eta_secs(queued: u64, usage: &BudgetUsage, items_per_submit: usize) -> Option<f64> {
    if queued == 0 {
        return Some(0.0);
    }
    let per = usage.per.as_secs_f64();
    if per <= 0.0 || usage.limit == 0 {
        return None;
    }
    let jobs_per_sec = f64::from(usage.limit) / per * items_per_submit.max(1) as f64;
    Some(queued as f64 / jobs_per_sec)
}

pub async fn provider_views(state: &ConsoleState) -> Vec<ProviderView> {
    let engine = &state.engine;
    let mut by_state: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    // A store that cannot be read shows zero queued jobs rather than no page.
    if let Ok(counts) = engine.store().count_by_state().await {
        for c in counts {
            *by_state.entry((c.provider, c.state.name())).or_default() += c.count;
        }
    }
    let usage = engine.budget_usage();
    let counters = Counters::read(&state.registry);
    engine
        .providers()
        .iter()
        .map(|p| {
            let (health, reason) = health(p);
            let queued = by_state
                .get(&(p.name.clone(), JobState::Queued.name()))
                .copied()
                .unwrap_or(0);
            let processing = by_state
                .get(&(p.name.clone(), JobState::Processing.name()))
                .copied()
                .unwrap_or(0);
            let u = usage.iter().find(|u| u.provider == p.name);
            ProviderView {
                name: p.name.clone(),
                health,
                reason,
                budget_used: u.map_or(0, |u| u.used),
                budget_limit: p.limits.budget.requests,
                budget_window_secs: p.limits.budget.per.as_secs_f64(),
                daily_used: u.and_then(|u| u.daily.map(|d| d.0)),
                daily_limit: u.and_then(|u| u.daily.map(|d| d.1)),
                queued,
                processing,
                in_flight: p.in_flight,
                eta_secs: u.and_then(|u| eta_secs(queued, u, p.limits.max_items_per_submit)),
                webhooks: counters.by_outcome("adgate_webhooks_total", &p.name),
                requests: counters.by_outcome("adgate_provider_requests_total", &p.name),
            }
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct SinceQuery {
    since: Option<i64>,
}

fn not_found(what: &str) -> Response {
    let body = serde_json::json!({"error": {"code": 404, "reason": "NOT_FOUND",
        "message": format!("no batch {what:?}")}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

fn unavailable(e: &adgate_engine::EngineError) -> Response {
    tracing::warn!(error = %e, "console: reading the store failed");
    let body = serde_json::json!({"error": {"code": 503, "reason": "UNAVAILABLE",
        "message": "the job store cannot be read right now"}});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `GET /ui/api/batches/{id}`: the view plus each changed card and the counts as HTML the
/// page swaps in (one renderer, [`pages`], for the first load and every update).
pub async fn batch(
    State(state): State<ConsoleState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<SinceQuery>,
) -> Response {
    match batch_view(&state.engine, &caller, &id, q.since).await {
        Ok(Some(v)) => {
            let cards: BTreeMap<&str, String> = v
                .jobs
                .iter()
                .map(|j| (j.id.as_str(), pages::card(j)))
                .collect();
            Json(serde_json::json!({
                "batch": &v,
                "cards": cards,
                "counts_html": pages::chips(&v.totals),
                "cost_text": pages::costs(&v.totals.cost),
                "eta_text": pages::eta_text(&v),
            }))
            .into_response()
        }
        Ok(None) => not_found(&id),
        Err(e) => unavailable(&e),
    }
}

/// `GET /ui/api/batches`: the newest batches, and the list as HTML.
pub async fn batches(
    State(state): State<ConsoleState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let (rows, note) = super::listing::recent(&state.engine, &caller).await;
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"batch_id": r.batch_id, "created_at_ms": r.created_at_ms,
                "totals": r.totals})
        })
        .collect();
    Json(serde_json::json!({
        "batches": list,
        "note": note,
        "html": pages::batches_list(&rows, &note),
    }))
    .into_response()
}

/// `GET /ui/api/providers`: the rows, and the table body as HTML.
pub async fn providers(State(state): State<ConsoleState>) -> Response {
    let views = provider_views(&state).await;
    Json(serde_json::json!({"providers": &views, "rows_html": pages::provider_rows(&views)}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_web_urls_become_images() {
        assert!(web_url("http://127.0.0.1:1/a.png"));
        assert!(web_url("HTTPS://cdn.example/a.png"));
        assert!(!web_url("javascript:alert(1)"));
        assert!(!web_url("data:image/png;base64,AAAA"));
        assert!(!web_url(""));
    }

    #[test]
    fn eta_divides_the_queue_by_the_budget_rate() {
        let u = BudgetUsage {
            provider: "p".into(),
            used: 3,
            limit: 10,
            per: Duration::from_secs(1),
            daily: None,
        };
        assert_eq!(eta_secs(0, &u, 1), Some(0.0));
        assert_eq!(eta_secs(50, &u, 1), Some(5.0));
        // A call carries up to 100 jobs (Pictify): the queue drains 100 times faster.
        assert_eq!(eta_secs(1000, &u, 100), Some(1.0));
        let none = BudgetUsage { limit: 0, ..u };
        assert_eq!(eta_secs(5, &none, 1), None);
    }
}
