//! `GET /v1/image-ads`: the `?ids=` batch poll and the plain cursor list.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Query, State};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};

use super::gateway::json_response;
use super::{DEFAULT_LIST_LIMIT, MAX_IDS, Sim};
use crate::common::lock;

// ---------------------------------------------------------------------------------------------
// GET /v1/image-ads (batch poll / list)
// ---------------------------------------------------------------------------------------------

pub(super) async fn list_ads(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let ctx = match sim.gate(&headers, "GET /v1/image-ads").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resp = match q.get("ids") {
        Some(ids) => batch_poll(&sim, ids),
        None => list_page(&sim, &q),
    };
    sim.finish(&ctx, resp, false).await
}

fn batch_poll(sim: &Sim, ids: &str) -> Response<Body> {
    let ids: Vec<&str> = ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() {
        return sim.validation(
            StatusCode::BAD_REQUEST,
            vec![("ids".into(), "Expected at least one id".into())],
        );
    }
    if ids.len() > MAX_IDS {
        return sim.validation(
            StatusCode::BAD_REQUEST,
            vec![("ids".into(), format!("At most {MAX_IDS} ids per request"))],
        );
    }
    // Stricter reading of [SAL:reference/id-prefixes]: a foreign prefix is a 422, not "unknown".
    if let Some(bad) = ids.iter().find(|s| !s.starts_with("ia_")) {
        return sim.validation(
            StatusCode::UNPROCESSABLE_ENTITY,
            vec![(
                "ids".into(),
                format!("{bad}: expected an id starting with ia_"),
            )],
        );
    }
    let now = Instant::now();
    let mut inner = lock(&sim.inner);
    sim.finalize_due(&mut inner, now);
    let mut seen = HashSet::new();
    // GUESS (providers.md §6 q3): unknown ids are omitted (not an error), known ones come back
    // in request order, duplicates once; the whole set fits one page (`has_more: false`).
    let data: Vec<Value> = ids
        .iter()
        .filter(|id| seen.insert(**id))
        .filter_map(|id| inner.ads.get(*id))
        .map(|ad| sim.ad_json(ad, now))
        .collect();
    drop(inner);
    let body = json!({"data": data, "has_more": false, "meta": sim.meta()});
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

fn list_page(sim: &Sim, q: &HashMap<String, String>) -> Response<Body> {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIST_LIMIT,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            return sim.validation(
                StatusCode::BAD_REQUEST,
                vec![(
                    "limit".into(),
                    "Expected an integer between 1 and 100".into(),
                )],
            );
        }
    };
    let status = q.get("status").map(String::as_str);
    let now = Instant::now();
    let mut inner = lock(&sim.inner);
    sim.finalize_due(&mut inner, now);
    let start = match q.get("starting_after") {
        None => 0,
        Some(after) => match inner.order.iter().position(|id| id == after) {
            Some(p) => p + 1,
            None => {
                return sim.validation(
                    StatusCode::BAD_REQUEST,
                    vec![("starting_after".into(), "Unknown cursor".into())],
                );
            }
        },
    };
    let mut data = Vec::new();
    let mut has_more = false;
    for id in &inner.order[start..] {
        let Some(ad) = inner.ads.get(id) else {
            continue;
        };
        let v = sim.ad_json(ad, now);
        if status.is_some_and(|s| v["status"] != s) {
            continue;
        }
        if data.len() == limit {
            has_more = true;
            break;
        }
        data.push(v);
    }
    drop(inner);
    let body = json!({"data": data, "has_more": has_more, "meta": sim.meta()});
    json_response(StatusCode::OK, body.to_string().into_bytes())
}
