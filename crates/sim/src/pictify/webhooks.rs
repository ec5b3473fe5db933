//! Webhook delivery: reorder/delay/duplicate faults, signing with each subscription's own
//! secret, retries and the per-subscription pause.

use std::sync::Arc;

use axum::http::header;

use super::subscriptions::{is_active, pause_after_failures, targets};
use super::{App, Delivery, MAX_WEBHOOK_ATTEMPTS, WEBHOOK_BACKOFF};
use crate::common::WebhookRecord;
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
    let app = app.clone();
    tokio::spawn(async move {
        let delay = app.faults().webhook_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        for d in deliveries {
            // Every active subscription to the event gets it, signed with its own secret.
            for (uid, url, secret) in targets(&app, d.event) {
                deliver(&app, &uid, &url, &secret, &d).await;
            }
        }
    });
}

async fn deliver(app: &App, uid: &str, url: &str, secret: &str, d: &Delivery) {
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
        if !is_active(app, uid) {
            return;
        }
        let status = send_once(app, url, secret, d).await;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            if app.faults().webhook_duplicate {
                let _ = send_once(app, url, secret, d).await;
            }
            return;
        }
        if attempt + 1 < MAX_WEBHOOK_ATTEMPTS {
            tokio::time::sleep(app.cfg.scaled(*wait)).await;
        }
    }
    pause_after_failures(app, uid);
}

/// One signed POST; records the attempt and returns its status (None = no response).
async fn send_once(app: &App, url: &str, secret: &str, d: &Delivery) -> Option<u16> {
    let t = adgate_generator::time::unix_now();
    // v1 = hex(HMAC-SHA256(secret, "<t>.<raw body>")) [PX-LIVE:security/webhook-verification].
    let sig = signing::pictify_header(secret, t, &d.body);
    let status = app
        .http
        .post(url)
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
