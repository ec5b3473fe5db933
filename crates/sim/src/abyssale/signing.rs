//! Webhook signing secret: mint on first read, rotate with a 24 h overlap, revoke.

use std::sync::Arc;
use std::time::Instant;

use adgate_generator::time::unix_now;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::gateway::{error, json_response};
use super::{App, MintedSecret, ROTATION_OVERLAP, Secrets};
use crate::common::{self, lock};

// ---------------------------------------------------------------------------------------------
// Signing secret [AB-TS]

fn secret_body(s: &Secrets) -> Value {
    let (secret, created) = s
        .current
        .as_ref()
        .map(|c| (c.value.clone(), c.created_at_ts))
        .unwrap_or_default();
    json!({
        "secret": secret,
        "created_at_ts": created,
        "rotated_at_ts": s.rotated_at_ts,
        "previous_secret_expires_at_ts": s.previous.as_ref().map(|p| p.2),
    })
}

fn mint(app: &App) -> MintedSecret {
    MintedSecret {
        value: format!("whsec_{}", common::hex_id(&app.rng, 64)),
        created_at_ts: unix_now(),
    }
}

/// Mints the workspace secret on first call; until then deliveries are unsigned [AB-TS].
pub(super) async fn get_signing_secret(State(app): State<Arc<App>>) -> Response {
    let _ = app.live_secrets(); // expire a finished overlap
    let mut s = lock(&app.secrets);
    if s.current.is_none() {
        s.current = Some(mint(&app));
    }
    json_response(StatusCode::OK, secret_body(&s))
}

#[derive(serde::Deserialize)]
pub(super) struct RotateQuery {
    #[serde(default)]
    force: Option<String>,
}

pub(super) async fn rotate_signing_secret(
    State(app): State<Arc<App>>,
    Query(q): Query<RotateQuery>,
) -> Response {
    let force = q.force.as_deref().is_some_and(|f| f == "true" || f == "1");
    let _ = app.live_secrets();
    let mut s = lock(&app.secrets);
    // GUESS: rotating before any secret exists simply mints the first one.
    let Some(old) = s.current.take() else {
        s.current = Some(mint(&app));
        return json_response(StatusCode::OK, secret_body(&s));
    };
    if s.previous.is_some() && !force {
        s.current = Some(old);
        return error(
            StatusCode::CONFLICT,
            "previous_secret_still_active",
            "The previous secret is still valid; wait for it to expire, revoke it, or pass force=true.",
        );
    }
    let overlap = app.cfg.scaled(ROTATION_OVERLAP);
    let now = unix_now();
    s.previous = Some((
        old.value,
        Instant::now() + overlap,
        now + overlap.as_secs_f64().ceil() as u64,
    ));
    s.rotated_at_ts = Some(now);
    s.current = Some(mint(&app));
    json_response(StatusCode::OK, secret_body(&s))
}

/// Ends the overlap. [AB-TS] says the old secret stops verifying "within 60 s"; stricter: at once.
pub(super) async fn revoke_signing_secret(State(app): State<Arc<App>>) -> Response {
    let mut s = lock(&app.secrets);
    s.previous = None;
    json_response(StatusCode::OK, secret_body(&s))
}
