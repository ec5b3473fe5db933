//! Rendering: one batch at a time, `concurrency` item workers, and the webhook payloads.

use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use adgate_generator::time::rfc3339;
use axum::body::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::subscriptions::subscribed;
use super::webhooks::{dispatch, spawn_delivery};
use super::{App, BatchStatus, Delivery, Image, ItemState, OUTPUT_HEIGHT, OUTPUT_WIDTH};

// ---------------------------------------------------------------------------------------------
// Rendering

pub(super) async fn run_batches(app: Weak<App>, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(id) = rx.recv().await {
        let Some(app) = app.upgrade() else { return };
        if app.plan.is_some() {
            // Admission already capped the running batches at the plan's figure: they run
            // side by side, as the plan's "concurrent batches" says.
            tokio::spawn(async move { run_batch(&app, &id).await });
        } else {
            run_batch(&app, &id).await;
        }
    }
}

async fn run_batch(app: &Arc<App>, id: &str) {
    let workers = {
        let mut inner = app.lock();
        let Some(b) = inner.batches.get_mut(id) else {
            return;
        };
        if b.status == BatchStatus::Pending {
            b.status = BatchStatus::Processing;
            b.started_at = Some(SystemTime::now());
            b.started = Some(Instant::now());
            b.concurrency.min(b.items.len()).max(1)
        } else {
            0
        }
    };
    let handles: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(app.clone(), id.to_owned())))
        .collect();
    for h in handles {
        let _ = h.await;
    }
    finish_batch(app, id);
}

async fn worker(app: Arc<App>, id: String) {
    loop {
        let index = {
            let mut inner = app.lock();
            let Some(b) = inner.batches.get_mut(&id) else {
                return;
            };
            if b.status != BatchStatus::Processing {
                return;
            }
            let Some(index) = b.items.iter().position(|i| i.state == ItemState::Queued) else {
                return;
            };
            b.items[index].state = ItemState::Rendering;
            index
        };
        tokio::time::sleep(app.item_duration()).await;
        for d in finish_item(&app, &id, index) {
            dispatch(&app, &id, d);
        }
    }
}

/// Mark one item done and build its webhooks (if a subscription exists): one
/// `render.completed` per image (one image per layout), or one `render.failed`.
fn finish_item(app: &App, id: &str, index: usize) -> Vec<Delivery> {
    let mut inner = app.lock();
    let inner = &mut *inner;
    let (on_completed, on_failed) = (
        subscribed_to(inner, "render.completed"),
        subscribed_to(inner, "render.failed"),
    );
    let Some(b) = inner.batches.get_mut(id) else {
        return Vec::new();
    };
    if b.status == BatchStatus::Cancelled {
        b.items[index].state = ItemState::Skipped;
        return Vec::new();
    }
    let now = rfc3339(SystemTime::now());
    let last =
        b.items.iter().enumerate().all(|(i, it)| {
            i == index || !matches!(it.state, ItemState::Queued | ItemState::Rendering)
        });
    if last {
        // The batch stops running with its last render, before that render's webhook goes out.
        app.ledger.span_end(id);
    }
    let item = &mut b.items[index];
    let mut out = Vec::new();
    match item.fail {
        Some((code, message)) => {
            item.state = ItemState::Failed(code, message);
            // [PX-LIVE:concepts/webhooks] shows no variables on render.failed; none are sent.
            let data = json!({
                "type": "image", "templateId": b.template_uid,
                "error": message, "errorCode": code,
            });
            if on_failed {
                out.push(envelope(app, "render.failed", data));
            }
        }
        None => {
            item.state = ItemState::Rendered;
            // GUESS: one credit per image (an item with three layouts makes three images);
            // the documents bill renders without saying how layouts count.
            for _ in 0..b.images_per_item {
                let image_id = app.id("img_");
                inner.charged += 1;
                app.ledger
                    .charge(&format!("{id}:{index}"), b.idempotency_key.as_deref());
                inner.images.insert(
                    image_id.clone(),
                    Image {
                        artwork: b.artwork,
                        extension: b.format.clone(),
                    },
                );
                // [SEED-3] payload plus width/height from [PX-LIVE:concepts/webhooks]; the
                // event names no layout (none is documented on render.completed).
                let data = json!({
                    "type": "image", "source": "api", "imageId": image_id,
                    "url": format!("{}/renders/{image_id}.{}", app.base, b.format),
                    "templateId": b.template_uid, "variables": item.variables,
                    "width": OUTPUT_WIDTH, "height": OUTPUT_HEIGHT, "renderedAt": now,
                });
                if on_completed {
                    out.push(envelope(app, "render.completed", data));
                }
            }
        }
    }
    out
}

fn envelope(app: &App, event: &'static str, data: Value) -> Delivery {
    let body = json!({"event": event, "timestamp": rfc3339(SystemTime::now()), "data": data});
    Delivery {
        event,
        delivery_id: app.id("del_"),
        body: Bytes::from(body.to_string()),
    }
}

fn finish_batch(app: &Arc<App>, id: &str) {
    let (delivery, held) = {
        let mut inner = app.lock();
        let Some(b) = inner.batches.get_mut(id) else {
            return;
        };
        app.ledger.span_end(id);
        for item in &mut b.items {
            if matches!(item.state, ItemState::Queued | ItemState::Rendering) {
                item.state = ItemState::Skipped;
            }
        }
        let completed = b
            .items
            .iter()
            .filter(|i| i.state == ItemState::Rendered)
            .count();
        let failed = b
            .items
            .iter()
            .filter(|i| matches!(i.state, ItemState::Failed(..)))
            .count();
        if b.status != BatchStatus::Cancelled {
            b.status = match (completed, failed) {
                (_, 0) => BatchStatus::Completed,
                (0, _) => BatchStatus::Failed,
                _ => BatchStatus::Partial,
            };
            b.completed_at = Some(SystemTime::now());
            b.finished = Some(Instant::now());
        }
        let duration = b.started.map_or(0, |s| s.elapsed().as_millis() as u64);
        // batch.failed when every item failed, batch.completed otherwise (including partial
        // and cancelled) — the event list names both [PX-DOCREPO], the split is a GUESS.
        let event = if b.status == BatchStatus::Failed {
            "batch.failed"
        } else {
            "batch.completed"
        };
        let data = json!({
            "batchId": id, "templateUid": b.template_uid, "status": b.status.as_str(),
            "totalCount": b.items.len(), "completedCount": completed, "failedCount": failed,
            "duration": duration,
        });
        let held = std::mem::take(&mut b.held);
        drop(inner);
        let delivery = subscribed(app, event).then(|| envelope(app, event, data));
        (delivery, held)
    };
    let Some(delivery) = delivery else { return };
    if held.is_empty() && !app.faults().webhook_reorder {
        spawn_delivery(app, vec![delivery]);
    } else {
        // webhook_reorder: the batch's events go out newest first, batch.completed leading.
        let mut all = held;
        all.push(delivery);
        all.reverse();
        spawn_delivery(app, all);
    }
}

fn subscribed_to(inner: &super::Inner, event: &str) -> bool {
    inner.subscriptions.iter().any(|s| s.event == event)
}
