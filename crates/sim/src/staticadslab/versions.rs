//! Editable ads: `PATCH /v1/image-ads/{id}` ("Editable ads only; sends the ad back to
//! processing; creates a new `iav_` version" [SEED-1], [SAL:resources/editable-image-ads]),
//! `GET /v1/image-ads/{id}/versions` and `/versions/{versionId}` [SEED-2], and the JSON tree an
//! editable ad completes with.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use adgate_generator::time::rfc3339;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::gateway::{Ctx, json_response};
use super::list::page_limit;
use super::request::{
    Refusal, Scope, cache_answer, detached, fingerprint, idempotency_gate, idempotency_key,
    read_json, release_key,
};
use super::{Ad, EDITABLE_SIDE, Inner, SHORT_JOB_DIVISOR, Sim, Status};
use crate::common::lock;

/// GUESS: the docs name the PATCH but not its body. `current_json_tree` is the resource field
/// holding the tree [SEED-2], so the body sets that field and nothing else.
const TREE_FIELD: &str = "current_json_tree";

/// One render of an editable ad: version 1 is the generation, each PATCH adds the next.
#[derive(Debug)]
pub(super) struct Version {
    pub(super) id: String,
    pub(super) number: usize,
    /// The tree this version renders: a PATCH's tree from the start; version 1's is invented
    /// when the generation completes (null until then, as on the ad [SEED-2]).
    pub(super) tree: Option<Value>,
    pub(super) status: Status,
    pub(super) created_wall: SystemTime,
    pub(super) completed_wall: Option<SystemTime>,
}

impl Version {
    pub(super) fn new(id: String, number: usize, tree: Option<Value>, wall: SystemTime) -> Self {
        Self {
            id,
            number,
            tree,
            status: Status::Processing,
            created_wall: wall,
            completed_wall: None,
        }
    }
}

/// The tree an editable ad completes with. GUESS: no document shows the tree's schema; it is "a
/// JSON tree you can mutate via PATCH" whose node ids `node_overrides` name [SEED-2]. A small
/// Figma-like frame with stable ids, with the ad's overrides applied (an override naming a
/// node the frame lacks adds that node).
pub(super) fn initial_tree(ad: &Ad) -> Value {
    let headline = ad
        .request
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or("Your headline here");
    let mut children = vec![
        json!({"id": "node-headline", "type": "TEXT", "name": "Headline", "characters": headline}),
        json!({"id": "node-hero", "type": "RECTANGLE", "name": "Hero",
               "fills": [{"type": "IMAGE", "imageUrl": null}]}),
        json!({"id": "node-cta", "type": "TEXT", "name": "Call to action", "characters": "Shop now"}),
    ];
    let overrides = ad.request.get("node_overrides").and_then(Value::as_object);
    for (node, ov) in overrides.into_iter().flatten() {
        let pos = children.iter().position(|c| c["id"] == node.as_str());
        if let Some(text) = ov.get("characters") {
            match pos {
                Some(i) => children[i]["characters"] = text.clone(),
                None => children
                    .push(json!({"id": node, "type": "TEXT", "name": node, "characters": text})),
            }
        } else if let Some(url) = ov.get("imageFillUrl") {
            let fills = json!([{"type": "IMAGE", "imageUrl": url}]);
            match pos {
                Some(i) => children[i]["fills"] = fills,
                None => children
                    .push(json!({"id": node, "type": "RECTANGLE", "name": node, "fills": fills})),
            }
        }
    }
    json!({
        "id": "node-root", "type": "FRAME", "name": "Ad",
        "width": EDITABLE_SIDE, "height": EDITABLE_SIDE, "children": children,
    })
}

impl Sim {
    /// `{id, image_ad_id, version, status, current_json_tree, image_url, created_at,
    /// completed_at}`; `image_url` is null until the version completed, as on the ad [SEED-1].
    fn version_json(&self, ad_id: &str, v: &Version) -> Value {
        let image_url =
            (v.status == Status::Completed).then(|| self.file_url(ad_id, v.number, false));
        json!({
            "id": v.id,
            "image_ad_id": ad_id,
            "version": v.number,
            "status": v.status.as_str(),
            "current_json_tree": v.tree,
            "image_url": image_url,
            "created_at": rfc3339(v.created_wall),
            "completed_at": v.completed_wall.map(rfc3339),
        })
    }

    /// The ad behind `id` if it exists (404) and is editable (422).
    fn editable_ad<'a>(&self, inner: &'a Inner, id: &str) -> Result<&'a Ad, Refusal> {
        match inner.ads.get(id) {
            None => Err(Box::new(self.error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("Image ad {id} not found"),
            ))),
            // GUESS: the code is not documented; the docs only say "editable ads only" [SEED-2]
            // and give 422 for a relationship the request violates [SAL:reference/errors].
            Some(ad) if !ad.editable => Err(Box::new(self.error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "NOT_EDITABLE",
                &format!("Image ad {id} is not editable (flat_image_ad); only editable image ads have a JSON tree and versions"),
            ))),
            Some(ad) => Ok(ad),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PATCH /v1/image-ads/{id}
// ---------------------------------------------------------------------------------------------

pub(super) async fn patch_ad(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let ctx = match sim.gate(&headers, "PATCH /v1/image-ads/:id").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (resp, created) = patch_inner(&sim, &ctx, id, &headers, body).await;
    // A PATCH is a submit too ("Treat patches as new async jobs" [SEED-1]): the lost and late
    // answer faults apply once the new version exists, which then re-renders whatever becomes
    // of this answer; a resend with the same key replays it.
    let cut = created && lock(&sim.faults).take_cut();
    let delay = lock(&sim.faults).submit_answer_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if cut {
        sim.ledger.cut();
        return crate::common::dropped_connection();
    }
    sim.finish(&ctx, resp, true).await
}

/// The body's tree, or the details of a 400. GUESS (stricter, as for the create body): any
/// other field is refused rather than ignored.
fn validate_patch(body: &Value) -> Result<Map<String, Value>, Vec<(String, String)>> {
    let Some(obj) = body.as_object() else {
        return Err(vec![("body".into(), "Expected a JSON object".into())]);
    };
    let mut problems: Vec<(String, String)> = obj
        .keys()
        .filter(|k| k.as_str() != TREE_FIELD)
        .map(|k| (k.clone(), "Unknown field".into()))
        .collect();
    let tree = match obj.get(TREE_FIELD) {
        None | Some(Value::Null) => {
            problems.push((TREE_FIELD.into(), "Required".into()));
            None
        }
        Some(Value::Object(t)) => Some(t.clone()),
        Some(_) => {
            problems.push((TREE_FIELD.into(), "Expected an object".into()));
            None
        }
    };
    match tree {
        Some(t) if problems.is_empty() => Ok(t),
        _ => Err(problems),
    }
}

async fn patch_inner(
    sim: &Arc<Sim>,
    ctx: &Ctx,
    id: String,
    headers: &HeaderMap,
    body: Body,
) -> (Response<Body>, bool) {
    let checked = match read_json(sim, headers, body).await {
        Ok(v) => validate_patch(&v)
            .map(|tree| (v, tree))
            .map_err(|d| Box::new(sim.validation(StatusCode::BAD_REQUEST, d))),
        Err(resp) => Err(resp),
    };
    let early = checked.and_then(|parts| idempotency_key(sim, headers).map(|k| (parts, k)));
    let ((value, tree), idem_key) = match early {
        Ok(parts) => parts,
        Err(resp) => {
            tokio::time::sleep(ctx.faults.latency).await;
            return (*resp, false);
        }
    };
    // "Idempotency-Key: on POST and PATCH" [SAL:reference/idempotency]. The gate comes before
    // the ad's state is checked: a resend of an accepted PATCH finds the ad processing (because
    // of that very PATCH) and must replay, not get 409.
    let scope = idem_key.clone().map(|k| (sim.cfg.api_key.clone(), k));
    if let Some(scope) = &scope {
        let print = fingerprint(&format!("PATCH /v1/image-ads/{id}"), &value);
        if let Some(resp) = idempotency_gate(sim, scope, &print) {
            tokio::time::sleep(ctx.faults.latency).await;
            return (resp, false);
        }
    }
    detached(sim, ctx.faults.latency, move |sim| {
        perform_patch(sim, &id, tree, idem_key, scope)
    })
    .await
}

fn perform_patch(
    sim: &Sim,
    id: &str,
    tree: Map<String, Value>,
    idem_key: Option<String>,
    scope: Option<Scope>,
) -> (Response<Body>, bool) {
    let now = Instant::now();
    let mut inner = lock(&sim.inner);
    sim.finalize_due(&mut inner, now);
    let refusal = match sim.editable_ad(&inner, id) {
        Err(resp) => Some(*resp),
        // GUESS: the docs do not say what a PATCH of an ad that is not completed gets. A
        // processing ad has no tree to edit yet (or is already re-rendering); a failed one has
        // no completed render. 409 CONFLICT: the request conflicts with the ad's state.
        Ok(ad) if ad.status != Status::Completed => Some(sim.error(
            StatusCode::CONFLICT,
            "CONFLICT",
            &format!(
                "Image ad {id} is {}; only a completed editable ad can be edited",
                if ad.status == Status::Processing {
                    "still processing"
                } else {
                    "failed"
                }
            ),
        )),
        Ok(_) => None,
    };
    if let Some(resp) = refusal {
        release_key(&mut inner, scope.as_ref());
        return (resp, false);
    }
    let (duration, will_fail) = sim.draw_run(SHORT_JOB_DIVISOR);
    let version_id = sim.new_id("iav_");
    let wall = SystemTime::now();
    let Some(ad) = inner.ads.get_mut(id) else {
        return (
            sim.error(StatusCode::NOT_FOUND, "NOT_FOUND", "Image ad not found"),
            false,
        );
    };
    let number = ad.versions.len() + 1;
    ad.versions.push(Version::new(
        version_id.clone(),
        number,
        Some(Value::Object(tree)),
        wall,
    ));
    ad.started = now;
    ad.started_wall = wall;
    ad.duration = duration;
    // `failure_ratio` applies to re-renders as to any job: the docs say to "treat patches as new
    // async jobs" [SEED-1], and a job can fail.
    ad.will_fail = will_fail;
    ad.rerender = true;
    ad.status = Status::Processing;
    let data = sim.ad_json(ad, now);
    inner.due.push(Reverse((now + duration, id.to_owned())));
    // A version is created work: counted per idempotency key like an ad, never charged.
    sim.ledger.creation(idem_key.as_deref());
    sim.ledger.created_id(&version_id);
    let body = json!({"data": data, "meta": sim.meta()}).to_string();
    cache_answer(&mut inner, scope, now, StatusCode::ACCEPTED, &body);
    (json_response(StatusCode::ACCEPTED, body.into_bytes()), true)
}

// ---------------------------------------------------------------------------------------------
// GET /v1/image-ads/{id}/versions[/{versionId}]
// ---------------------------------------------------------------------------------------------

/// `{data: [Version], has_more, meta}`, oldest first. GUESS: the docs list the endpoint
/// without its order or paging [SEED-2]; versions are numbered so oldest-first reads
/// naturally, and it pages like every list [SAL:reference/pagination] (`limit` default 20,
/// max 100, `has_more`, `starting_after=<version id>`).
pub(super) async fn list_versions(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let ctx = match sim.gate(&headers, "GET /v1/image-ads/:id/versions").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resp = versions_page(&sim, &id, &q, ctx.faults.sal_page_cap);
    sim.finish(&ctx, resp, false).await
}

fn versions_page(
    sim: &Sim,
    id: &str,
    q: &HashMap<String, String>,
    page_cap: Option<usize>,
) -> Response<Body> {
    let limit = match page_limit(sim, q) {
        Ok(n) => n.min(page_cap.unwrap_or(usize::MAX).max(1)),
        Err(r) => return *r,
    };
    let mut inner = lock(&sim.inner);
    sim.finalize_due(&mut inner, Instant::now());
    let ad = match sim.editable_ad(&inner, id) {
        Ok(ad) => ad,
        Err(resp) => return *resp,
    };
    let start = match q.get("starting_after") {
        None => 0,
        Some(after) => match ad.versions.iter().position(|v| &v.id == after) {
            Some(p) => p + 1,
            None => {
                return sim.validation(
                    StatusCode::BAD_REQUEST,
                    vec![("starting_after".into(), "Unknown cursor".into())],
                );
            }
        },
    };
    let rest = &ad.versions[start..];
    let data: Vec<Value> = rest
        .iter()
        .take(limit)
        .map(|v| sim.version_json(id, v))
        .collect();
    let has_more = rest.len() > limit;
    drop(inner);
    let body = json!({"data": data, "has_more": has_more, "meta": sim.meta()});
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

pub(super) async fn get_version(
    State(sim): State<Arc<Sim>>,
    Path((id, version_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    let ctx = match sim
        .gate(&headers, "GET /v1/image-ads/:id/versions/:versionId")
        .await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resp = {
        let mut inner = lock(&sim.inner);
        sim.finalize_due(&mut inner, Instant::now());
        match sim.editable_ad(&inner, &id) {
            Err(resp) => *resp,
            Ok(ad) => match ad.versions.iter().find(|v| v.id == version_id) {
                Some(v) => sim.success(StatusCode::OK, sim.version_json(&id, v)),
                None => sim.error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    &format!("Version {version_id} of image ad {id} not found"),
                ),
            },
        }
    };
    sim.finish(&ctx, resp, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_body_needs_an_object_tree_and_nothing_else() {
        let tree = json!({"id": "node-root", "children": []});
        assert!(validate_patch(&json!({"current_json_tree": tree})).is_ok());
        let fields = |v: Value| -> Vec<String> {
            validate_patch(&v)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.0)
                .collect()
        };
        assert_eq!(fields(json!({})), ["current_json_tree"]);
        assert_eq!(
            fields(json!({"current_json_tree": [1]})),
            ["current_json_tree"]
        );
        assert_eq!(fields(json!([1])), ["body"]);
        assert_eq!(
            fields(json!({"tree": {}, "current_json_tree": {}})),
            ["tree"]
        );
    }
}
