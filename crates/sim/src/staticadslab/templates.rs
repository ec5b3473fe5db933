//! Design templates: `POST /v1/design-templates` (asynchronous, 202 → processing → completed |
//! failed [SEED-1]), `GET /v1/design-templates/{id}` and the template's JSON. The `?ids=` poll
//! and the plain list live in `list.rs`; finalising and billing in `lifecycle.rs`.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use adgate_generator::time::rfc3339;
use axum::body::Body;
use axum::extract::{Path, State};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::create::insufficient_balance;
use super::gateway::{Ctx, json_response};
use super::request::{
    Scope, cache_answer, detached, fingerprint, idempotency_gate, idempotency_key, read_json,
    release_key,
};
use super::{PRICE_TEMPLATE, SHORT_JOB_DIVISOR, Sim, Status, TEMPLATE_STEPS, run_progress};
use crate::common::lock;

const ENDPOINT: &str = "POST /v1/design-templates";

#[derive(Debug)]
pub(super) struct Template {
    pub(super) id: String,
    pub(super) request: Map<String, Value>,
    pub(super) created: Instant,
    pub(super) created_wall: SystemTime,
    pub(super) duration: Duration,
    pub(super) will_fail: bool,
    pub(super) status: Status,
    pub(super) idempotency_key: Option<String>,
}

impl Sim {
    /// `{id, status, progress, error, request, created_at, completed_at}`.
    pub(super) fn template_json(&self, t: &Template, now: Instant) -> Value {
        let finished = rfc3339(t.created_wall + t.duration);
        let (progress, error, completed_at) = match t.status {
            Status::Processing => {
                let (idx, pct) = run_progress(t.created, t.duration, now, TEMPLATE_STEPS.len());
                let (step, message) = TEMPLATE_STEPS[idx];
                let progress = json!({"step": step, "message": message, "percentage": pct});
                (progress, Value::Null, Value::Null)
            }
            Status::Completed => (Value::Null, Value::Null, json!(finished)),
            // GUESS: the docs show PIPELINE_ERROR for a failed image ad only
            // [SAL:guides/errors-and-billing]; templates share the async-job lifecycle [SEED-1],
            // so they reuse the code. `completed_at` marks the end of a failed run, as for ads.
            Status::Failed => (
                Value::Null,
                json!({
                    "code": "PIPELINE_ERROR",
                    "message": "Design template processing failed after 3 attempts"
                }),
                json!(finished),
            ),
        };
        json!({
            "id": t.id,
            "status": t.status.as_str(),
            "progress": progress,
            "error": error,
            // GUESS: no document we have lists a design template's request or resource
            // fields. The simulator takes any JSON object and echoes it whole here rather
            // than invent a schema an adapter could come to rely on.
            "request": t.request,
            "created_at": rfc3339(t.created_wall),
            "completed_at": completed_at,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// POST /v1/design-templates
// ---------------------------------------------------------------------------------------------

pub(super) async fn create_template(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let ctx = match sim.gate(&headers, ENDPOINT).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resp = create_inner(&sim, &ctx, &headers, body).await;
    // The submit-only faults (`submit_answer_delay`, `cut_after_create`) are documented for
    // `POST /v1/image-ads` alone, so they do not apply here.
    sim.finish(&ctx, resp, true).await
}

async fn create_inner(
    sim: &Arc<Sim>,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: Body,
) -> Response<Body> {
    let checked = read_json(sim, headers, body).await.and_then(|v| match v {
        Value::Object(m) => Ok(m),
        _ => Err(Box::new(sim.validation(
            StatusCode::BAD_REQUEST,
            vec![("body".into(), "Expected a JSON object".into())],
        ))),
    });
    let early = checked.and_then(|m| idempotency_key(sim, headers).map(|k| (m, k)));
    let (request, idem_key) = match early {
        Ok(parts) => parts,
        Err(resp) => {
            tokio::time::sleep(ctx.faults.latency).await;
            return *resp;
        }
    };
    let scope = idem_key.clone().map(|k| (sim.cfg.api_key.clone(), k));
    if let Some(scope) = &scope {
        let print = fingerprint(ENDPOINT, &Value::Object(request.clone()));
        if let Some(resp) = idempotency_gate(sim, scope, &print) {
            tokio::time::sleep(ctx.faults.latency).await;
            return resp;
        }
    }
    let insufficient_after = ctx.faults.insufficient_after_charges;
    detached(sim, ctx.faults.latency, move |sim| {
        perform_create(sim, request, idem_key, scope, insufficient_after)
    })
    .await
    .0
}

fn perform_create(
    sim: &Sim,
    request: Map<String, Value>,
    idem_key: Option<String>,
    scope: Option<Scope>,
    insufficient_after: Option<u64>,
) -> (Response<Body>, bool) {
    let now = Instant::now();
    let mut inner = lock(&sim.inner);
    sim.finalize_due(&mut inner, now);
    // Templates are billed like ads (on completion, $0.25), so they reserve like ads too.
    if let Some(resp) = insufficient_balance(
        sim,
        &inner,
        PRICE_TEMPLATE,
        "design template",
        insufficient_after,
    ) {
        release_key(&mut inner, scope.as_ref());
        return (resp, false);
    }
    let (duration, will_fail) = sim.draw_run(SHORT_JOB_DIVISOR);
    let id = sim.new_id("dt_");
    let template = Template {
        id: id.clone(),
        request,
        created: now,
        created_wall: SystemTime::now(),
        duration,
        will_fail,
        status: Status::Processing,
        idempotency_key: idem_key.clone(),
    };
    let data = sim.template_json(&template, now);
    inner.due.push(Reverse((now + duration, id.clone())));
    inner.templates.insert(id.clone(), template);
    inner.template_order.push(id.clone());
    inner.reserved_cents += PRICE_TEMPLATE;
    inner.in_flight += 1;
    sim.ledger.creation(idem_key.as_deref());
    sim.ledger.created_id(&id);
    let body = json!({"data": data, "meta": sim.meta()}).to_string();
    cache_answer(&mut inner, scope, now, StatusCode::ACCEPTED, &body);
    (json_response(StatusCode::ACCEPTED, body.into_bytes()), true)
}

// ---------------------------------------------------------------------------------------------
// GET /v1/design-templates/{id}
// ---------------------------------------------------------------------------------------------

/// GUESS: "SSE is available for image ads" [SEED-1] only, so `Accept: text/event-stream` is
/// ignored here and the answer is always the JSON resource.
pub(super) async fn get_template(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let ctx = match sim.gate(&headers, "GET /v1/design-templates/:id").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let now = Instant::now();
    let data = {
        let mut inner = lock(&sim.inner);
        sim.finalize_due(&mut inner, now);
        inner.templates.get(&id).map(|t| sim.template_json(t, now))
    };
    let resp = match data {
        Some(data) => sim.success(StatusCode::OK, data),
        None => sim.error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Design template {id} not found"),
        ),
    };
    sim.finish(&ctx, resp, false).await
}
