//! Push-subscription checks: every [`Limits::push_check_interval`], under the request budget,
//! ask the adapter how its push subscriptions are ([`Generator::check_push`]), make the changes
//! it asks for (resume a paused one, create a missing one, delete an unverifiable one; one
//! request each, also under the budget), and keep the reading for health, `ListProviders` and
//! metrics.
//!
//! Why: Pictify pauses a subscription after five failed deliveries
//! [PX-DOCREPO:concepts/webhooks.mdx] and says so only through its subscriptions API. While it
//! is paused no push arrives; the lost-push backstop polls finish the jobs, but Pictify's polls
//! carry no URLs ([PX-PY], [SEED-3]), so rendered items end `OUTPUT_URL_UNAVAILABLE` — an
//! operator must see it within one interval.
//!
//! On a shared store every replica checks (one request per replica per interval, taken from
//! the fleet-wide budget); the readings agree because they read the same provider state.
//!
//! [`Limits::push_check_interval`]: adgate_generator::Limits::push_check_interval
//! [`Generator::check_push`]: adgate_generator::Generator::check_push

use std::sync::Arc;
use std::time::Duration;

use adgate_generator::{PushAction, PushSubscription};
use tokio::time::Instant;

use crate::budget::Priority;
use crate::runtime::{ProviderRuntime, Shared};

/// Statuses a subscription can be reported in; every one gets a gauge so a change shows as a
/// 1 moving from one series to another.
const STATUSES: [&str; 4] = ["active", "paused", "failed", "missing"];

pub(crate) async fn run(shared: Arc<Shared>, rt: Arc<ProviderRuntime>, every: Duration) {
    // The first check at start-up: a subscription paused while the gateway was down shows now.
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            () = check_once(&shared, &rt) => {}
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One reading and the changes it calls for.
pub(crate) async fn check_once(shared: &Arc<Shared>, rt: &Arc<ProviderRuntime>) {
    let waited = rt.acquire(shared, Priority::Poll).await;
    shared.metrics.budget_wait(&rt.name, waited.as_secs_f64());
    let started = Instant::now();
    let result = rt.generator.check_push().await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.class(),
    };
    shared.metrics.request(
        &rt.name,
        "check_push",
        outcome,
        started.elapsed().as_secs_f64(),
    );
    let mut health = match result {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) => {
            // The last reading stays: an unreachable subscriptions API says nothing new.
            tracing::warn!(provider = %rt.name, error = %e, "checking push subscriptions failed");
            return;
        }
    };
    let mut after = Vec::with_capacity(health.subscriptions.len());
    for sub in std::mem::take(&mut health.subscriptions) {
        if sub.action == PushAction::None {
            after.push(sub);
            continue;
        }
        let waited = rt.acquire(shared, Priority::Poll).await;
        shared.metrics.budget_wait(&rt.name, waited.as_secs_f64());
        let started = Instant::now();
        let r = rt.generator.fix_push(&sub).await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) => e.class(),
        };
        shared.metrics.request(
            &rt.name,
            "fix_push",
            outcome,
            started.elapsed().as_secs_f64(),
        );
        match r {
            Ok(fixed) => {
                tracing::warn!(provider = %rt.name, subscription = %sub.id, event = %sub.event,
                    action = ?sub.action, was = %sub.status,
                    now = fixed.as_ref().map_or("deleted", |f| f.status.as_str()),
                    "changed a push subscription");
                after.extend(fixed);
            }
            Err(e) => {
                tracing::warn!(provider = %rt.name, subscription = %sub.id, event = %sub.event,
                    action = ?sub.action, error = %e, "changing a push subscription failed");
                after.push(PushSubscription {
                    action: PushAction::None,
                    ..sub
                });
            }
        }
    }
    health.subscriptions = after;
    for sub in &health.subscriptions {
        if !sub.is_active() {
            tracing::warn!(provider = %rt.name, subscription = %sub.id, event = %sub.event,
                status = %sub.status, "push subscription is not active: its pushes do not arrive");
        }
        for status in STATUSES {
            shared
                .metrics
                .push_subscription(&rt.name, &sub.event, status, status == sub.status);
        }
    }
    *rt.push.lock().unwrap_or_else(|e| e.into_inner()) = Some(health);
}
