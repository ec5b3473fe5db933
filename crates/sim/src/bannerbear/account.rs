//! `GET /v5/account`: the workspace, plan, quota and the key's description [V5-SPEC],
//! [BB-V5]; reachable with any valid key [MCP] http.ts. GETs never consume quota [HELP-251].

use std::sync::Arc;
use std::time::SystemTime;

use adgate_generator::time::rfc3339;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::gateway::json_response;
use super::{App, UNLIMITED_QUOTA};
use crate::common::lock;

/// CONFLICT: the docs sample describes the key as `{permissions, scope}` [BB-V5]; the spec as
/// `{name, scopes[], allowed_origins[]}` [V5-SPEC]@a9ca682. The spec wins; `scopes: []` means
/// full access [V5-SPEC], [MCP] scopes.ts.
pub(super) async fn get_account(State(app): State<Arc<App>>) -> Response {
    let used = lock(&app.inner).credits_used;
    let max = app.quota().unwrap_or(UNLIMITED_QUOTA);
    json_response(
        StatusCode::OK,
        json!({
            "uid": "SimWorkspace0000001",
            "workspace": "Simulated workspace",
            // GUESS: plan name.
            "plan": "sim",
            "quota": {"max": max, "current": used, "remaining": max.saturating_sub(used)},
            "ai_quota": {"max": 0, "current": 0, "remaining": 0},
            "api_key": {"name": "sim", "scopes": [], "allowed_origins": []},
            "created_at": rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600)),
        }),
    )
}
