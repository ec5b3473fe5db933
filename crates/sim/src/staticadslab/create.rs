//! `POST /v1/image-ads`: body checks, `Idempotency-Key` replay/lock, template state, wallet
//! reservation.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::gateway::{Ctx, json_response};
use super::request::{
    Scope, cache_answer, detached, fingerprint, idempotency_gate, idempotency_key, read_json,
    release_key,
};
use super::validate::validate_create;
use super::{Ad, Inner, PRICE_EDITABLE, PRICE_FLAT, Sim, Status, TOP_UP_URL, Version};
use crate::common::{dropped_connection, lock};

const ENDPOINT: &str = "POST /v1/image-ads";

// ---------------------------------------------------------------------------------------------
// POST /v1/image-ads
// ---------------------------------------------------------------------------------------------

pub(super) async fn create_ad(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let ctx = match sim.gate(&headers, ENDPOINT).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (resp, created) = create_inner(&sim, &ctx, &headers, body).await;
    // A created ad is on the finaliser's schedule and its key's response is cached by now, so
    // it completes and bills whatever becomes of this answer; a resend with the same key
    // replays it [SAL:reference/idempotency].
    let cut = created && lock(&sim.faults).take_cut();
    let delay = lock(&sim.faults).submit_answer_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if cut {
        sim.ledger.cut();
        return dropped_connection();
    }
    sim.finish(&ctx, resp, true).await
}

async fn create_inner(
    sim: &Arc<Sim>,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: Body,
) -> (Response<Body>, bool) {
    let checked = match read_json(sim, headers, body).await {
        Ok(v) => validate_create(&v)
            .map(|()| v)
            .map_err(|(status, details)| Box::new(sim.validation(status, details))),
        Err(resp) => Err(resp),
    };
    let early = checked.and_then(|v| idempotency_key(sim, headers).map(|k| (v, k)));
    let (value, idem_key) = match early {
        Ok(parts) => parts,
        Err(resp) => {
            tokio::time::sleep(ctx.faults.latency).await;
            return (*resp, false);
        }
    };
    let scope = idem_key.clone().map(|k| (sim.cfg.api_key.clone(), k));
    if let Some(scope) = &scope
        && let Some(resp) = idempotency_gate(sim, scope, &fingerprint(ENDPOINT, &value))
    {
        tokio::time::sleep(ctx.faults.latency).await;
        return (resp, false);
    }
    let insufficient_after = ctx.faults.insufficient_after_charges;
    detached(sim, ctx.faults.latency, move |sim| {
        perform_create(sim, value, idem_key, scope, insufficient_after)
    })
    .await
}

/// The 402 every submit gives when the wallet cannot cover `price` (or the
/// `insufficient_after_charges` fault says so), or `None`. Billing happens on completion, but
/// the wallet must be able to cover what is in flight: stricter reading (GUESS) — accepted work
/// reserves its price until it completes or fails, so the wallet can never go negative and
/// `insufficient_after_charges` counts in-flight work.
pub(super) fn insufficient_balance(
    sim: &Sim,
    inner: &Inner,
    price: u64,
    what: &str,
    insufficient_after: Option<u64>,
) -> Option<Response<Body>> {
    let available = sim
        .cfg
        .wallet
        .map(|w| w.saturating_sub(inner.spent_cents + inner.reserved_cents));
    let over_count = insufficient_after.is_some_and(|n| inner.charges + inner.in_flight >= n);
    if !over_count && available.is_none_or(|a| a >= price) {
        return None;
    }
    let avail = available.unwrap_or(0);
    let msg = format!(
        "Insufficient balance: this {what} costs ${}.{:02} and your available balance is ${}.{:02}. Top up at {TOP_UP_URL}",
        price / 100,
        price % 100,
        avail / 100,
        avail % 100
    );
    Some(sim.error(StatusCode::PAYMENT_REQUIRED, "INSUFFICIENT_BALANCE", &msg))
}

/// "The design template must be in `status: \"completed\"` before you can use it" [SEED-2]:
/// a template this simulator created that is still processing, or failed, is a 422. An id it
/// never created is a template made elsewhere (the dashboard) and is accepted, since the
/// simulator cannot know its state.
fn template_not_ready(
    sim: &Sim,
    inner: &Inner,
    request: &Map<String, Value>,
) -> Option<Response<Body>> {
    let id = request.get("design_template_id").and_then(Value::as_str)?;
    let template = inner.templates.get(id)?;
    if template.status == Status::Completed {
        return None;
    }
    sim.ledger.refused("template_not_completed");
    // GUESS: the code of a relationship 422 is not documented (providers.md §6 q5); the
    // id-prefix page's VALIDATION_ERROR is the nearest documented one.
    Some(sim.validation(
        StatusCode::UNPROCESSABLE_ENTITY,
        vec![(
            "design_template_id".into(),
            format!(
                "Design template {id} is in status {}; it must be completed before use",
                template.status.as_str()
            ),
        )],
    ))
}

fn perform_create(
    sim: &Sim,
    value: Value,
    idem_key: Option<String>,
    scope: Option<Scope>,
    insufficient_after: Option<u64>,
) -> (Response<Body>, bool) {
    let request = match value {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let editable = request
        .get("editable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let price = if editable { PRICE_EDITABLE } else { PRICE_FLAT };
    let now = Instant::now();
    let mut inner = lock(&sim.inner);
    sim.finalize_due(&mut inner, now);
    // A refused request is a pre-queue error: free [SAL:guides/errors-and-billing].
    let refusal = template_not_ready(sim, &inner, &request)
        .or_else(|| insufficient_balance(sim, &inner, price, "image ad", insufficient_after));
    if let Some(resp) = refusal {
        release_key(&mut inner, scope.as_ref());
        return (resp, false);
    }
    let (duration, will_fail) = sim.draw_run(1);
    let id = sim.new_id("ia_");
    let wall = SystemTime::now();
    // Version 1 is the generation itself; only editable ads have versions [SEED-2].
    let versions = if editable {
        vec![Version::new(sim.new_id("iav_"), 1, None, wall)]
    } else {
        Vec::new()
    };
    let ad = Ad {
        id: id.clone(),
        request,
        editable,
        created_wall: wall,
        started: now,
        started_wall: wall,
        duration,
        will_fail,
        rerender: false,
        status: Status::Processing,
        idempotency_key: idem_key.clone(),
        versions,
    };
    let data = sim.ad_json(&ad, now);
    inner.due.push(Reverse((now + duration, id.clone())));
    inner.ads.insert(id.clone(), ad);
    sim.ledger.creation(idem_key.as_deref());
    sim.ledger.created_id(&id);
    inner.order.push(id);
    inner.reserved_cents += price;
    inner.in_flight += 1;
    let body = json!({"data": data, "meta": sim.meta()}).to_string();
    cache_answer(&mut inner, scope, now, StatusCode::ACCEPTED, &body);
    (json_response(StatusCode::ACCEPTED, body.into_bytes()), true)
}
