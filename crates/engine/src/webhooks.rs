//! Inbound provider webhooks: verify, parse, apply or keep (see `events` for the answer rule),
//! and count every delivery by outcome.

use tracing::Instrument;

use crate::engine::{Engine, WebhookOutcome};
use crate::error::WebhookFailure;
use crate::events::{self, Source};
use crate::trace;

impl Engine {
    /// Verify, parse and apply a provider webhook. Duplicate deliveries change nothing; an
    /// event that matches no job yet is kept (see the `events` module for the answer rule).
    /// `query` is the request's query string without `?` (empty when none).
    pub async fn handle_webhook(
        &self,
        provider: &str,
        query: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<WebhookOutcome, WebhookFailure> {
        let Some(rt) = self.shared.providers.get(provider) else {
            self.shared.metrics.webhook(provider, "refused");
            return Err(WebhookFailure::UnknownProvider(provider.to_owned()));
        };
        let mut event = match rt.generator.parse_webhook_query(
            query,
            headers,
            body,
            self.shared.clock.now_system(),
        ) {
            Ok(e) => e,
            Err(e) => {
                self.shared.metrics.webhook(provider, "refused");
                return Err(e.into());
            }
        };
        let kind = event_kind(&event);
        let updates = std::mem::take(&mut event.updates);
        // Applied in a task of its own: the HTTP request may be dropped (the provider gave up
        // waiting), but a resolve-and-commit must never stop half-way (in-flight correlation
        // claims are taken back only at its end).
        let applying = {
            let shared = self.shared.clone();
            let rt = rt.clone();
            let delivery_id = event.delivery_id.clone();
            let bound_job = event.bound_job.clone();
            let span = trace::webhook(provider);
            self.shared.spawn(
                async move {
                    let source = Source::Webhook {
                        delivery_id: delivery_id.as_deref(),
                        bound_job: bound_job.as_deref(),
                    };
                    events::apply_updates(&shared, &rt, updates, source).await
                }
                .instrument(span),
            )
        };
        let applied = applying
            .await
            .map_err(|e| WebhookFailure::Internal(format!("applying a webhook stopped: {e}")))??;
        let Some(applied) = applied else {
            self.shared.metrics.webhook(provider, "duplicate");
            tracing::debug!(
                provider,
                delivery_id = event.delivery_id.as_deref().unwrap_or(""),
                "duplicate webhook delivery"
            );
            return Ok(WebhookOutcome::Duplicate);
        };
        for key in &event.poll_hints {
            rt.tracker.mark_due(key);
        }
        for key in &event.poll_correlated {
            let candidates = self
                .shared
                .store
                .correlation_candidates(&rt.name, key, 1000)
                .await?;
            let mut keys: Vec<&str> = candidates
                .iter()
                .filter_map(|j| j.poll_key.as_deref())
                .collect();
            keys.sort_unstable();
            keys.dedup();
            for k in keys {
                rt.tracker.mark_due(k);
            }
        }
        if applied.kept > 0 {
            self.shared.metrics.webhook(provider, "kept");
            tracing::warn!(
                provider,
                event = kind,
                delivery_id = event.delivery_id.as_deref().unwrap_or(""),
                kept = applied.kept,
                "webhook matched no job yet; kept until its job is known"
            );
            return Ok(WebhookOutcome::Kept {
                updated: applied.changed,
                kept: applied.kept,
            });
        }
        self.shared.metrics.webhook(provider, "applied");
        if applied.changed == 0 {
            // Verified but changed nothing: a late or repeated report for a finished job, or
            // an event the gateway has no use for (a batch event that only hints a poll).
            tracing::info!(
                provider,
                event = kind,
                delivery_id = event.delivery_id.as_deref().unwrap_or(""),
                poll_hints = event.poll_hints.len(),
                "webhook verified; nothing to change"
            );
        }
        Ok(WebhookOutcome::Applied {
            updated: applied.changed,
        })
    }
}

/// The event's kind for logs: what it reports, never its content.
fn event_kind(event: &adgate_generator::WebhookEvent) -> &'static str {
    use adgate_generator::RemoteState;
    match event.updates.first().map(|u| &u.state) {
        Some(RemoteState::Completed) => "completed",
        Some(RemoteState::Failed) => "failed",
        Some(RemoteState::Cancelled) => "cancelled",
        Some(RemoteState::Processing) => "processing",
        Some(RemoteState::NotFound) => "not_found",
        None if !event.poll_hints.is_empty() || !event.poll_correlated.is_empty() => "poll_hint",
        None => "other",
    }
}
