//! `GET /v1/image-ads` and `GET /v1/design-templates`: the `?ids=` batch poll and the plain
//! cursor list, which page alike [SAL:reference/pagination].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Query, State};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};

use super::gateway::json_response;
use super::{DEFAULT_LIST_LIMIT, Inner, MAX_IDS, MAX_LIST_LIMIT, Sim};
use crate::common::{Faults, lock};

/// What a list returns. Templates are polled "with `?ids=`" like ads [SEED-1],
/// [SAL:resources/design-templates]; GUESS: their lists follow the same pagination rules and
/// the same `sal_ids_unpaged` / `sal_page_cap` faults, since one pagination page governs every
/// list [SAL:reference/pagination].
#[derive(Debug, Clone, Copy)]
enum Kind {
    Ads,
    Templates,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Ads => "ia_",
            Kind::Templates => "dt_",
        }
    }

    fn order(self, inner: &Inner) -> &[String] {
        match self {
            Kind::Ads => &inner.order,
            Kind::Templates => &inner.template_order,
        }
    }

    fn contains(self, inner: &Inner, id: &str) -> bool {
        match self {
            Kind::Ads => inner.ads.contains_key(id),
            Kind::Templates => inner.templates.contains_key(id),
        }
    }

    fn json(self, sim: &Sim, inner: &Inner, id: &str, now: Instant) -> Option<Value> {
        match self {
            Kind::Ads => inner.ads.get(id).map(|ad| sim.ad_json(ad, now)),
            Kind::Templates => inner.templates.get(id).map(|t| sim.template_json(t, now)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GET /v1/image-ads, GET /v1/design-templates (batch poll / list)
// ---------------------------------------------------------------------------------------------

pub(super) async fn list_ads(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    list(&sim, &headers, &q, Kind::Ads, "GET /v1/image-ads").await
}

pub(super) async fn list_templates(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    list(
        &sim,
        &headers,
        &q,
        Kind::Templates,
        "GET /v1/design-templates",
    )
    .await
}

async fn list(
    sim: &Sim,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    kind: Kind,
    endpoint: &str,
) -> Response<Body> {
    let ctx = match sim.gate(headers, endpoint).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resp = match q.get("ids") {
        Some(ids) => batch_poll(sim, ids, q, &ctx.faults, kind),
        None => list_page(sim, q, &ctx.faults, kind),
    };
    sim.finish(&ctx, resp, false).await
}

/// `limit` as [SAL:reference/pagination] defines it: default 20, at most 100 (more → 400).
/// Errors are boxed responses (a `Response` is large).
pub(super) fn page_limit(
    sim: &Sim,
    q: &HashMap<String, String>,
) -> Result<usize, Box<Response<Body>>> {
    match q.get("limit").map(|l| l.parse::<usize>()) {
        None => Ok(DEFAULT_LIST_LIMIT),
        Some(Ok(n)) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(Box::new(sim.validation(
            StatusCode::BAD_REQUEST,
            vec![(
                "limit".into(),
                format!("Expected an integer between 1 and {MAX_LIST_LIMIT}"),
            )],
        ))),
    }
}

fn batch_poll(
    sim: &Sim,
    ids: &str,
    q: &HashMap<String, String>,
    faults: &Faults,
    kind: Kind,
) -> Response<Body> {
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
    let prefix = kind.prefix();
    if let Some(bad) = ids.iter().find(|s| !s.starts_with(prefix)) {
        return sim.validation(
            StatusCode::UNPROCESSABLE_ENTITY,
            vec![(
                "ids".into(),
                format!("{bad}: expected an id starting with {prefix}"),
            )],
        );
    }
    // providers.md §6 q4 leaves open whether `?ids=` pages; the docs' sentence "When `ids=` is
    // provided, cursor p[agination …]" is cut off [SAL:reference/pagination]. Stricter reading
    // (default): it pages like every list — `limit` (default 20, max 100), `has_more`, and
    // `starting_after=<last id of the previous page>`. `sal_ids_unpaged` is the other reading.
    let limit = if faults.sal_ids_unpaged {
        usize::MAX
    } else {
        match page_limit(sim, q) {
            Ok(n) => n.min(faults.sal_page_cap.unwrap_or(usize::MAX).max(1)),
            Err(r) => return *r,
        }
    };
    let now = Instant::now();
    let mut inner = lock(&sim.inner);
    sim.finalize_due(&mut inner, now);
    let mut seen = HashSet::new();
    // GUESS (providers.md §6 q3): unknown ids are omitted (not an error), known ones come back
    // in request order, duplicates once.
    let matched: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| seen.insert(*id))
        .filter(|id| kind.contains(&inner, id))
        .collect();
    // The cursor names the last item of the previous page, so the next page starts after it in
    // the answer's order; an id that is not in the answer is an unknown cursor (400), as on
    // the plain list.
    let start = match (faults.sal_ids_unpaged, q.get("starting_after")) {
        (true, _) | (false, None) => 0,
        (false, Some(after)) => match matched.iter().position(|id| id == after) {
            Some(p) => p + 1,
            None => {
                drop(inner);
                return sim.validation(
                    StatusCode::BAD_REQUEST,
                    vec![("starting_after".into(), "Unknown cursor".into())],
                );
            }
        },
    };
    let rest = &matched[start..];
    let has_more = rest.len() > limit;
    let data: Vec<Value> = rest
        .iter()
        .take(limit)
        .filter_map(|id| kind.json(sim, &inner, id, now))
        .collect();
    drop(inner);
    let body = json!({"data": data, "has_more": has_more, "meta": sim.meta()});
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

fn list_page(
    sim: &Sim,
    q: &HashMap<String, String>,
    faults: &Faults,
    kind: Kind,
) -> Response<Body> {
    let limit = match page_limit(sim, q) {
        Ok(n) => n.min(faults.sal_page_cap.unwrap_or(usize::MAX).max(1)),
        Err(r) => return *r,
    };
    let status = q.get("status").map(String::as_str);
    let now = Instant::now();
    let mut inner = lock(&sim.inner);
    sim.finalize_due(&mut inner, now);
    let order = kind.order(&inner);
    let start = match q.get("starting_after") {
        None => 0,
        Some(after) => match order.iter().position(|id| id == after) {
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
    for id in &order[start..] {
        let Some(v) = kind.json(sim, &inner, id, now) else {
            continue;
        };
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
