//! Webhook delivery: reorder/delay/duplicate faults, signing, retries and the pause.

use std::sync::Arc;

use axum::http::header;

use super::{App, Delivery, MAX_WEBHOOK_ATTEMPTS, WEBHOOK_BACKOFF};
use crate::common::{WebhookRecord, WebhookTarget};
use crate::signing;

pub(super) fn dispatch(app: &Arc<App>, id: &str, d: Delivery) {
    if app.faults().webhook_reorder
        && let Some(b) = app.lock().batches.get_mut(id)
    {
        b.held.push(d);
        return;
    }
    spawn_delivery(app, vec![d]);
}

/// Deliver `deliveries` one after another, each with its full retry schedule.
pub(super) fn spawn_delivery(app: &Arc<App>, deliveries: Vec<Delivery>) {
    let Some(target) = app.cfg.webhook.clone() else {
        return;
    };
    let app = app.clone();
    tokio::spawn(async move {
        let delay = app.faults().webhook_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        for d in deliveries {
            deliver(&app, &target, &d).await;
        }
    });
}

async fn deliver(app: &App, target: &WebhookTarget, d: &Delivery) {
    if app.faults().suppress_webhooks {
        // A lost push: Pictify believes it delivered, so no retry and no pause follow.
        app.ledger.webhook(WebhookRecord {
            event: d.event.to_owned(),
            delivery_id: d.delivery_id.clone(),
            status: None,
            suppressed: true,
        });
        return;
    }
    for (attempt, wait) in WEBHOOK_BACKOFF
        .iter()
        .take(MAX_WEBHOOK_ATTEMPTS)
        .enumerate()
    {
        if app.lock().webhooks_paused {
            return;
        }
        let status = send_once(app, target, d).await;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            if app.faults().webhook_duplicate {
                let _ = send_once(app, target, d).await;
            }
            return;
        }
        if attempt + 1 < MAX_WEBHOOK_ATTEMPTS {
            tokio::time::sleep(app.cfg.scaled(*wait)).await;
        }
    }
    app.lock().webhooks_paused = true;
}

/// One signed POST; records the attempt and returns its status (None = no response).
async fn send_once(app: &App, target: &WebhookTarget, d: &Delivery) -> Option<u16> {
    let t = adgate_generator::time::unix_now();
    // v1 = hex(HMAC-SHA256(secret, "<t>.<raw body>")) [PX-LIVE:security/webhook-verification].
    let sig = signing::pictify_header(&target.secret, t, &d.body);
    let status = app
        .http
        .post(&target.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Pictify-Signature", sig)
        .header("X-Pictify-Event", d.event)
        .header("X-Pictify-Delivery-Id", &d.delivery_id)
        .body(d.body.clone())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16());
    app.ledger.webhook(WebhookRecord {
        event: d.event.to_owned(),
        delivery_id: d.delivery_id.clone(),
        status,
        suppressed: false,
    });
    status
}
