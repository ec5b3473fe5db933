//! `POST /v1/image-ads`: body checks, `Idempotency-Key` replay/lock, wallet reservation.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use super::gateway::{Ctx, json_response};
use super::validate::validate_create;
use super::{
    Ad, IDEMPOTENCY_LOCK, IDEMPOTENCY_TTL, IdemEntry, MAX_BODY, MAX_IDEMPOTENCY_KEY,
    PRICE_EDITABLE, PRICE_FLAT, Sim, Status, TOP_UP_URL,
};
use crate::common::{dropped_connection, lock};

// ---------------------------------------------------------------------------------------------
// POST /v1/image-ads
// ---------------------------------------------------------------------------------------------

pub(super) async fn create_ad(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let ctx = match sim.gate(&headers, "POST /v1/image-ads").await {
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
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        tokio::time::sleep(ctx.faults.latency).await;
        // GUESS: the 413 code is not documented [SAL:reference/errors].
        let resp = sim.error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "Request body exceeds the 15 MB limit",
        );
        return (resp, false);
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
    let early = match (is_json, parsed) {
        (false, _) => Err(sim.validation(
            StatusCode::BAD_REQUEST,
            vec![("Content-Type".into(), "Expected application/json".into())],
        )),
        (true, Err(_)) => Err(sim.validation(
            StatusCode::BAD_REQUEST,
            vec![("body".into(), "Body is not valid JSON".into())],
        )),
        (true, Ok(v)) => match validate_create(&v) {
            Ok(()) => Ok(v),
            Err((status, details)) => Err(sim.validation(status, details)),
        },
    };
    let value = match early {
        Ok(v) => v,
        Err(resp) => {
            tokio::time::sleep(ctx.faults.latency).await;
            return (resp, false);
        }
    };
    let idem_key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Some(k.to_owned()),
        Some(_) => {
            tokio::time::sleep(ctx.faults.latency).await;
            let resp = sim.validation(
                StatusCode::BAD_REQUEST,
                vec![(
                    "Idempotency-Key".into(),
                    format!("Must be 1..={MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                )],
            );
            return (resp, false);
        }
    };
    let scope = idem_key.clone().map(|k| (sim.cfg.api_key.clone(), k));
    if let Some(scope) = &scope
        && let Some(resp) = idempotency_gate(sim, scope, &value)
    {
        tokio::time::sleep(ctx.faults.latency).await;
        return (resp, false);
    }
    // The work runs in its own task: a client that gives up (timeout, reset) does not cancel
    // it, so a retry with the same key finds the cached response, as on a real server.
    let task_sim = sim.clone();
    let latency = ctx.faults.latency;
    let insufficient_after = ctx.faults.insufficient_after_charges;
    let work = tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        perform_create(&task_sim, value, idem_key, scope, insufficient_after)
    });
    match work.await {
        Ok(done) => done,
        Err(_) => (
            sim.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "An unexpected error occurred",
            ),
            false,
        ),
    }
}

/// Replay, conflict, or take the lock. `None` = this request owns the key now.
fn idempotency_gate(sim: &Sim, scope: &(String, String), body: &Value) -> Option<Response<Body>> {
    let now = Instant::now();
    let mut inner = lock(&sim.inner);
    let ttl = sim.scaled(IDEMPOTENCY_TTL);
    let lock_ttl = sim.scaled(IDEMPOTENCY_LOCK);
    match inner.idem.get(scope) {
        Some(IdemEntry::Done {
            body: cached_body,
            at,
            status,
            response,
        }) if now.duration_since(*at) < ttl => {
            if cached_body != body {
                // Open question 2 (providers.md §6): unknown. Stricter reading: refuse with 422
                // (a permanent error — resending the same mismatched pair cannot succeed).
                return Some(sim.error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "IDEMPOTENCY_CONFLICT",
                    "This Idempotency-Key was already used with a different request body",
                ));
            }
            sim.ledger.replay();
            let mut resp = json_response(*status, response.to_vec());
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Some(resp);
        }
        Some(IdemEntry::InProgress { since, .. }) if now.duration_since(*since) < lock_ttl => {
            // GUESS (providers.md §6 q1): the loser of the 30 s lock gets 409.
            return Some(sim.error(
                StatusCode::CONFLICT,
                "IDEMPOTENCY_CONFLICT",
                "Another request with the same Idempotency-Key is in progress. Retry later.",
            ));
        }
        _ => {}
    }
    inner.idem.insert(
        scope.clone(),
        IdemEntry::InProgress {
            body: body.clone(),
            since: now,
        },
    );
    None
}

fn perform_create(
    sim: &Sim,
    value: Value,
    idem_key: Option<String>,
    scope: Option<(String, String)>,
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
    // Billing happens on completion, but the wallet must be able to cover what is in flight:
    // stricter reading (GUESS) — an accepted ad reserves its price until it completes or fails,
    // so the wallet can never go negative and `insufficient_after_charges` counts in-flight ads.
    let available = sim
        .cfg
        .wallet
        .map(|w| w.saturating_sub(inner.spent_cents + inner.reserved_cents));
    let over_count = insufficient_after.is_some_and(|n| inner.charges + inner.in_flight >= n);
    if over_count || available.is_some_and(|a| a < price) {
        if let Some(scope) = &scope {
            // GUESS: error responses are not cached; the key may be retried after a top-up.
            inner.idem.remove(scope);
        }
        let avail = available.unwrap_or(0);
        let msg = format!(
            "Insufficient balance: this image ad costs ${}.{:02} and your available balance is ${}.{:02}. Top up at {TOP_UP_URL}",
            price / 100,
            price % 100,
            avail / 100,
            avail % 100
        );
        return (
            sim.error(StatusCode::PAYMENT_REQUIRED, "INSUFFICIENT_BALANCE", &msg),
            false,
        );
    }
    let (lo, hi) = sim.cfg.job_duration;
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let span = (hi - lo).as_secs_f64();
    let (jitter, will_fail) = {
        let mut r = lock(&sim.rng);
        (r.f64() * span, r.f64() < sim.cfg.failure_ratio)
    };
    let duration = sim.scaled(lo + Duration::from_secs_f64(jitter));
    let id = sim.new_id("ia_");
    let ad = Ad {
        id: id.clone(),
        request,
        editable,
        created: now,
        created_wall: SystemTime::now(),
        duration,
        will_fail,
        status: Status::Processing,
        idempotency_key: idem_key.clone(),
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
    if let Some(scope) = scope {
        let cached_body = match inner.idem.get(&scope) {
            Some(IdemEntry::InProgress { body, .. }) => body.clone(),
            _ => Value::Null,
        };
        inner.idem.insert(
            scope,
            IdemEntry::Done {
                body: cached_body,
                at: now,
                status: StatusCode::ACCEPTED,
                response: Bytes::from(body.clone()),
            },
        );
    }
    (json_response(StatusCode::ACCEPTED, body.into_bytes()), true)
}
