//! Ad lifecycle: finalising due ads (the one place billing happens), JSON view, finalizer.

use std::cmp::Reverse;
use std::sync::Weak;
use std::time::{Duration, Instant};

use adgate_generator::time::rfc3339;
use serde_json::{Value, json};

use super::{Ad, Inner, OUTPUT_SIDE, Sim, Status};
use crate::common::lock;

impl Sim {
    /// Finalise every ad whose time has come: the one place an ad leaves `processing`, so the
    /// charge happens exactly once, whether a reader or the background task gets there first.
    pub(super) fn finalize_due(&self, inner: &mut Inner, now: Instant) {
        while let Some(Reverse((due, _))) = inner.due.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, id))) = inner.due.pop() else {
                break;
            };
            let Some(ad) = inner.ads.get_mut(&id) else {
                continue;
            };
            if ad.status != Status::Processing {
                continue;
            }
            let price = ad.price();
            inner.reserved_cents = inner.reserved_cents.saturating_sub(price);
            inner.in_flight = inner.in_flight.saturating_sub(1);
            if ad.will_fail {
                // Failed jobs are free [SEED-1].
                ad.status = Status::Failed;
            } else {
                ad.status = Status::Completed;
                inner.spent_cents += price;
                inner.charges += 1;
                self.ledger.charge(&ad.id, ad.idempotency_key.as_deref());
            }
        }
    }

    pub(super) fn ad_json(&self, ad: &Ad, now: Instant) -> Value {
        let r = &ad.request;
        let field = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
        let mut v = json!({
            "id": ad.id,
            "design_template_id": field("design_template_id"),
            "brand_id": field("brand_id"),
            "product_id": field("product_id"),
            "audience_id": field("audience_id"),
            "product_variant_id": field("product_variant_id"),
            "prompt": field("prompt"),
            "options": field("options"),
            "editable": ad.editable,
            "sku_code": if ad.editable { "editable_image_ad" } else { "flat_image_ad" },
            "status": "processing",
            "progress": null,
            "image_url": null,
            "width": null,
            "height": null,
            "current_json_tree": null,
            "figma_render_url": null,
            "initial_figma_render_url": null,
            "error": null,
            "duration_ms": null,
            "batch_id": null,
            "created_at": rfc3339(ad.created_wall),
            "completed_at": null,
        });
        let finished_wall = ad.created_wall + ad.duration;
        match ad.status {
            Status::Processing => {
                let (idx, pct) = ad.progress(now);
                let (step, message) = ad.steps()[idx];
                // GUESS: REST progress uses the same 0..1 scale as the SSE example [SEED-1].
                v["progress"] = json!({"step": step, "message": message, "percentage": pct});
            }
            Status::Completed => {
                v["status"] = json!("completed");
                v["image_url"] = json!(format!("{}/files/{}.png", self.base_url, ad.id));
                v["width"] = json!(OUTPUT_SIDE);
                v["height"] = json!(OUTPUT_SIDE);
                v["duration_ms"] = json!(ad.duration.as_millis() as u64);
                v["completed_at"] = json!(rfc3339(finished_wall));
                if ad.editable {
                    // `current_json_tree` is null until the ad completes [SEED-2].
                    v["current_json_tree"] = json!({"type": "FRAME", "id": "root", "children": []});
                    // GUESS: an editable ad carries its Figma sync renders once completed
                    // (`figma_render_url` / `initial_figma_render_url`, "Figma sync renders"
                    // [SEED-2]); their URL shape is not documented. Before a PATCH the
                    // current render is the initial one.
                    let figma = format!("{}/files/{}-figma.png", self.base_url, ad.id);
                    v["figma_render_url"] = json!(figma);
                    v["initial_figma_render_url"] = json!(figma);
                }
            }
            Status::Failed => {
                v["status"] = json!("failed");
                v["error"] = json!({
                    "code": "PIPELINE_ERROR",
                    "message": "Image generation failed after 3 attempts"
                });
                v["duration_ms"] = json!(ad.duration.as_millis() as u64);
                // GUESS: `completed_at` marks the end of the run for failures too.
                v["completed_at"] = json!(rfc3339(finished_wall));
            }
        }
        v
    }

    /// Current JSON of one ad, after finalising due ads.
    pub(super) fn view(&self, id: &str) -> Option<(Value, Status, usize, f64, Instant)> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        self.finalize_due(&mut inner, now);
        let ad = inner.ads.get(id)?;
        let (idx, pct) = ad.progress(now);
        Some((
            self.ad_json(ad, now),
            ad.status,
            idx,
            pct,
            ad.created + ad.duration,
        ))
    }
}

pub(super) fn spawn_finalizer(sim: Weak<Sim>) {
    let tick = match sim.upgrade() {
        Some(s) => s
            .scaled(s.cfg.job_duration.0 / 10)
            .clamp(Duration::from_millis(2), Duration::from_millis(250)),
        None => return,
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            let Some(s) = sim.upgrade() else { return };
            let mut inner = lock(&s.inner);
            s.finalize_due(&mut inner, Instant::now());
        }
    });
}
