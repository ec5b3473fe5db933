//! Lifecycle: finalising due ads, re-renders and templates (the one place billing happens),
//! the image-ad JSON view, the finalizer task.

use std::cmp::Reverse;
use std::sync::Weak;
use std::time::{Duration, Instant};

use adgate_generator::time::rfc3339;
use serde_json::{Value, json};

use super::versions::initial_tree;
use super::{Ad, Inner, PRICE_TEMPLATE, SHORT_JOB_DIVISOR, Sim, Status, output_side};
use crate::common::lock;

impl Sim {
    /// Finalise every ad render and template whose time has come: the one place either leaves
    /// `processing`, so each charge happens exactly once, whether a reader or the background
    /// task gets there first.
    pub(super) fn finalize_due(&self, inner: &mut Inner, now: Instant) {
        while let Some(Reverse((due, _))) = inner.due.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, id))) = inner.due.pop() else {
                break;
            };
            if inner.ads.contains_key(&id) {
                self.finalize_ad(inner, &id, now);
            } else {
                self.finalize_template(inner, &id);
            }
        }
    }

    fn finalize_ad(&self, inner: &mut Inner, id: &str, now: Instant) {
        let Some(ad) = inner.ads.get_mut(id) else {
            return;
        };
        if ad.status != Status::Processing || ad.due() > now {
            return;
        }
        ad.status = if ad.will_fail {
            Status::Failed
        } else {
            Status::Completed
        };
        let tree = (ad.editable && !ad.rerender && !ad.will_fail).then(|| initial_tree(ad));
        let finished = ad.started_wall + ad.duration;
        let status = ad.status;
        if let Some(version) = ad.versions.last_mut() {
            version.status = status;
            version.completed_wall = Some(finished);
            if tree.is_some() {
                version.tree = tree;
            }
        }
        if ad.rerender {
            // GUESS: the docs bill an image ad on completion [SEED-1] and say nothing about a
            // PATCH re-render; not inventing a charge is the stricter reading for the caller's
            // money. Re-renders reserve nothing either.
            return;
        }
        let price = ad.price();
        inner.reserved_cents = inner.reserved_cents.saturating_sub(price);
        inner.in_flight = inner.in_flight.saturating_sub(1);
        // Failed jobs are free [SEED-1].
        if status == Status::Completed {
            inner.spent_cents += price;
            inner.charges += 1;
            self.ledger.charge(&ad.id, ad.idempotency_key.as_deref());
        }
    }

    fn finalize_template(&self, inner: &mut Inner, id: &str) {
        let Some(t) = inner.templates.get_mut(id) else {
            return;
        };
        if t.status != Status::Processing {
            return;
        }
        inner.reserved_cents = inner.reserved_cents.saturating_sub(PRICE_TEMPLATE);
        inner.in_flight = inner.in_flight.saturating_sub(1);
        if t.will_fail {
            // "Failed jobs do not deduct from your wallet" [SEED-1].
            t.status = Status::Failed;
        } else {
            t.status = Status::Completed;
            inner.spent_cents += PRICE_TEMPLATE;
            inner.charges += 1;
            self.ledger.charge(&t.id, t.idempotency_key.as_deref());
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
            // GUESS: not a documented field. The versions endpoints [SEED-2] need a way to
            // learn which `iav_` a PATCH started; the render in progress once it is accepted,
            // the latest one after. Null for flat ads, which have no versions.
            "current_version_id": ad.versions.last().map(|v| v.id.clone()),
            "created_at": rfc3339(ad.created_wall),
            "completed_at": null,
        });
        if lock(&self.faults).sal_no_version_field
            && let Some(o) = v.as_object_mut()
        {
            o.remove("current_version_id");
        }
        // After a PATCH `duration_ms` and `completed_at` describe the latest render.
        let finished_wall = ad.started_wall + ad.duration;
        match ad.status {
            // GUESS: while a PATCH re-renders, every output is null as during the generation:
            // the docs say only that `image_url` is null while processing [SEED-1] and the tree
            // null until generation completes [SEED-2]; a client must not use stale outputs.
            Status::Processing => {
                let (idx, pct) = ad.progress(now);
                let (step, message) = ad.steps()[idx];
                // GUESS: REST progress uses the same 0..1 scale as the SSE example [SEED-1].
                v["progress"] = json!({"step": step, "message": message, "percentage": pct});
            }
            Status::Completed => {
                let number = ad.versions.len().max(1);
                v["status"] = json!("completed");
                v["image_url"] = json!(self.file_url(&ad.id, number, false));
                let side = output_side(ad.editable);
                v["width"] = json!(side);
                v["height"] = json!(side);
                v["duration_ms"] = json!(ad.duration.as_millis() as u64);
                v["completed_at"] = json!(rfc3339(finished_wall));
                if let Some(current) = ad.versions.last() {
                    // `current_json_tree` is null until the ad completes [SEED-2].
                    v["current_json_tree"] = current.tree.clone().unwrap_or(Value::Null);
                    // GUESS: an editable ad carries its Figma sync renders once completed
                    // (`figma_render_url` / `initial_figma_render_url`, "Figma sync renders"
                    // [SEED-2]); their URL shape is not documented. The current render is the
                    // latest version's, the initial one version 1's.
                    v["figma_render_url"] = json!(self.file_url(&ad.id, number, true));
                    v["initial_figma_render_url"] = json!(self.file_url(&ad.id, 1, true));
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
        Some((self.ad_json(ad, now), ad.status, idx, pct, ad.due()))
    }

    /// The URL of version `number`'s PNG (or Figma render). Version 1 keeps the plain
    /// `{id}.png` so a flat ad's output and an editable ad's first render share one shape.
    pub(super) fn file_url(&self, ad_id: &str, number: usize, figma: bool) -> String {
        let version = if number > 1 {
            format!("-v{number}")
        } else {
            String::new()
        };
        let figma = if figma { "-figma" } else { "" };
        format!("{}/files/{ad_id}{version}{figma}.png", self.base_url)
    }
}

pub(super) fn spawn_finalizer(sim: Weak<Sim>) {
    let tick = match sim.upgrade() {
        Some(s) => s
            // Fine enough for the shortest jobs (templates, re-renders) too.
            .scaled(s.cfg.job_duration.0 / (10 * SHORT_JOB_DIVISOR))
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
