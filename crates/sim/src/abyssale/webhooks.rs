//! Webhook delivery: the queue worker, reorder/delay/duplicate faults, retries and the signed POST.

use std::sync::Weak;
use std::time::Duration;

use adgate_generator::time::unix_now;
use axum::http::header;
use tokio::sync::mpsc;

use super::{App, Delivery, WEBHOOK_EVENT, WEBHOOK_RETRY_LADDER, WEBHOOK_TIMEOUT};
use crate::common::WebhookRecord;
use crate::signing;

// ---------------------------------------------------------------------------------------------
// Webhook delivery

/// Sends queued deliveries. Holds only a weak reference so it ends with the simulator.
pub(super) async fn delivery_worker(app: Weak<App>, mut rx: mpsc::UnboundedReceiver<Delivery>) {
    while let Some(first) = rx.recv().await {
        let Some(faults) = app.upgrade().map(|a| (a.faults(), a.cfg.clone())) else {
            return;
        };
        let (faults, cfg) = faults;
        let mut batch = vec![first];
        if faults.webhook_reorder {
            // Gather whatever else becomes pending shortly, then send newest first.
            tokio::time::sleep(
                cfg.scaled(Duration::from_secs(2))
                    .max(Duration::from_millis(100)),
            )
            .await;
            while let Ok(d) = rx.try_recv() {
                batch.push(d);
            }
            batch.reverse();
        }
        if !faults.webhook_delay.is_zero() {
            tokio::time::sleep(faults.webhook_delay).await;
        }
        for d in batch {
            let Some(a) = app.upgrade() else {
                return;
            };
            if a.faults().suppress_webhooks {
                // A lost push: Abyssale believes it delivered, so no retry follows.
                a.ledger.webhook(WebhookRecord {
                    event: WEBHOOK_EVENT.to_owned(),
                    delivery_id: d.delivery_id.clone(),
                    status: None,
                    suppressed: true,
                });
                continue;
            }
            let ok = attempt(&a, &d).await;
            let weak = app.clone();
            tokio::spawn(async move {
                follow_up(weak, d, ok).await;
            });
        }
    }
}

/// Retries (up to 6 attempts in all) and the duplicate fault.
async fn follow_up(app: Weak<App>, d: Delivery, mut ok: bool) {
    for delay in WEBHOOK_RETRY_LADDER {
        if ok {
            break;
        }
        let Some(scaled) = app.upgrade().map(|a| a.cfg.scaled(delay)) else {
            return;
        };
        tokio::time::sleep(scaled).await;
        let Some(a) = app.upgrade() else {
            return;
        };
        ok = attempt(&a, &d).await;
    }
    if ok
        && let Some(a) = app.upgrade()
        && a.faults().webhook_duplicate
    {
        let _ = attempt(&a, &d).await;
    }
}

/// One POST. `t` is fresh per attempt; the delivery id is not [AB-TS] README.
async fn attempt(app: &App, d: &Delivery) -> bool {
    let t = unix_now();
    let mut req = app
        .http
        .post(&d.url)
        .timeout(app.cfg.scaled(WEBHOOK_TIMEOUT).max(Duration::from_secs(1)))
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Abyssale-Delivery-Id", &d.delivery_id)
        .body(d.body.clone());
    if let Some(value) = signing::abyssale_header(&app.live_secrets(), t, &d.body) {
        req = req.header("X-Abyssale-Signature", value);
    }
    let status = req.send().await.ok().map(|r| r.status().as_u16());
    app.ledger.webhook(WebhookRecord {
        event: WEBHOOK_EVENT.to_owned(),
        delivery_id: d.delivery_id.clone(),
        status,
        suppressed: false,
    });
    status.is_some_and(|s| (200..300).contains(&s))
}
