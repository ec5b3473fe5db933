//! What every POST/PATCH shares: reading the JSON body, the `Idempotency-Key` header and its
//! replay/conflict/lock gate, caching the answer, and running the work detached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::gateway::json_response;
use super::{
    IDEMPOTENCY_LOCK, IDEMPOTENCY_TTL, IdemEntry, Inner, MAX_BODY, MAX_IDEMPOTENCY_KEY, Sim,
};
use crate::common::lock;

/// (API key, idempotency key): keys are scoped per API key [SAL:reference/idempotency].
pub(super) type Scope = (String, String);

/// An early answer instead of work, boxed (a `Response` is large).
pub(super) type Refusal = Box<Response<Body>>;

/// The body as JSON: 413 above 15 MB, 400 `VALIDATION_ERROR` for another content type or
/// invalid JSON. Shape checks are the caller's.
pub(super) async fn read_json(
    sim: &Sim,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, Refusal> {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        // GUESS: the 413 code is not documented [SAL:reference/errors].
        return Err(Box::new(sim.error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "Request body exceeds the 15 MB limit",
        )));
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(Box::new(sim.validation(
            StatusCode::BAD_REQUEST,
            vec![("Content-Type".into(), "Expected application/json".into())],
        )));
    }
    serde_json::from_slice(&bytes).map_err(|_| {
        Box::new(sim.validation(
            StatusCode::BAD_REQUEST,
            vec![("body".into(), "Body is not valid JSON".into())],
        ))
    })
}

/// The `Idempotency-Key` header, if any; a present but unusable one is a 400.
pub(super) fn idempotency_key(sim: &Sim, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(k.to_owned())),
        Some(_) => Err(Box::new(sim.validation(
            StatusCode::BAD_REQUEST,
            vec![(
                "Idempotency-Key".into(),
                format!("Must be 1..={MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            )],
        ))),
    }
}

/// What a key's first use is compared with. GUESS: the docs define a replay as "same key +
/// same body" [SEED-0] but keys are per API key, not per endpoint [SAL:reference/idempotency];
/// the stricter reading counts the method and path as part of the request, so one key reused
/// on another endpoint (or on another ad's PATCH) gets the conflict answer, never a replay of
/// an unrelated response.
pub(super) fn fingerprint(endpoint: &str, body: &Value) -> Value {
    json!({"endpoint": endpoint, "body": body})
}

/// Replay, conflict, or take the lock. `None` = this request owns the key now.
pub(super) fn idempotency_gate(
    sim: &Sim,
    scope: &Scope,
    request: &Value,
) -> Option<Response<Body>> {
    let now = Instant::now();
    let mut inner = lock(&sim.inner);
    let ttl = sim.scaled(IDEMPOTENCY_TTL);
    let lock_ttl = sim.scaled(IDEMPOTENCY_LOCK);
    match inner.idem.get(scope) {
        Some(IdemEntry::Done {
            body: cached,
            at,
            status,
            response,
        }) if now.duration_since(*at) < ttl => {
            if cached != request {
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
            body: request.clone(),
            since: now,
        },
    );
    None
}

/// Cache a successful answer under the key the request locked.
pub(super) fn cache_answer(
    inner: &mut Inner,
    scope: Option<Scope>,
    now: Instant,
    status: StatusCode,
    body: &str,
) {
    let Some(scope) = scope else { return };
    let request = match inner.idem.get(&scope) {
        Some(IdemEntry::InProgress { body, .. }) => body.clone(),
        _ => Value::Null,
    };
    inner.idem.insert(
        scope,
        IdemEntry::Done {
            body: request,
            at: now,
            status,
            response: Bytes::from(body.to_owned()),
        },
    );
}

/// Free the key after a refusal. GUESS: error responses are not cached; the key may be retried
/// once the cause (balance, template state, ad state) is gone.
pub(super) fn release_key(inner: &mut Inner, scope: Option<&Scope>) {
    if let Some(scope) = scope {
        inner.idem.remove(scope);
    }
}

/// Run `work` after the injected latency in its own task: a client that gives up (timeout,
/// reset) does not cancel it, so a retry with the same key finds the cached response, as on a
/// real server. The flag says whether work was created.
pub(super) async fn detached<F>(
    sim: &Arc<Sim>,
    latency: Duration,
    work: F,
) -> (Response<Body>, bool)
where
    F: FnOnce(&Sim) -> (Response<Body>, bool) + Send + 'static,
{
    let task_sim = sim.clone();
    let handle = tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        work(&task_sim)
    });
    match handle.await {
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
