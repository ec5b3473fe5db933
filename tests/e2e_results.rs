//! Issue 20, end to end through gRPC: nothing the provider returns is lost. A StaticAdsLab
//! editable ad reaches the caller with its JSON tree, Figma renders, SKU and duration
//! (StaticAdsLab "Image ads" fields [SEED-2]); Abyssale banners keep their own fields (`id`,
//! `sharing_id`, `file.filename`, `template` [AB-TS] `Banner`) and the request its API
//! `version` stamp; Pictify images keep `render.completed`'s `imageId` and `renderedAt`
//! [SEED-3].

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use adgate::pb;
use common::*;
use prost_types::value::Kind;

const TS: f64 = 0.02;

fn field<'a>(s: &'a prost_types::Struct, key: &str) -> &'a Kind {
    s.fields
        .get(key)
        .and_then(|v| v.kind.as_ref())
        .unwrap_or_else(|| panic!("no {key} in {s:?}"))
}

fn text<'a>(s: &'a prost_types::Struct, key: &str) -> &'a str {
    match field(s, key) {
        Kind::StringValue(v) => v,
        other => panic!("{key} is not a string: {other:?}"),
    }
}

async fn start_gw(
    http: tokio::net::TcpListener,
    sims: &[&Sim],
    webhooks: bool,
    dir: &tempfile::TempDir,
) -> Gateway {
    Gateway::start(
        GatewayOpts {
            time_scale: TS,
            webhooks,
            toml: "",
            database_url: db_url(dir),
        },
        http,
        sims,
    )
    .await
}

/// An editable ad completes with its JSON tree (which the provider's `PATCH` mutates) and
/// Figma renders on the typed `staticadslab` message; a flat ad has no tree. What is typed
/// is not repeated in `provider_result`, which keeps the rest verbatim (`created_at`,
/// `completed_at`, the echoed inputs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staticadslab_editable_ad_reaches_the_caller_with_its_json_tree_and_figma_renders() {
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(TS)).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(http, &[&sal], false, &dir).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let mut editable = sal_job("brand_editable");
    if let Some(pb::job_spec::Provider::Staticadslab(ad)) = &mut editable.provider {
        ad.editable = true;
    }
    let reply = submit(&mut c, vec![editable, sal_job("brand_flat")]).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    assert_eq!(jobs.len(), 2);
    for j in &jobs {
        assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
    }
    let (e, flat) = (&jobs[0], &jobs[1]);

    let ad = e.staticadslab.as_ref().expect("typed StaticAdsLab fields");
    assert_eq!(ad.sku_code, "editable_image_ad");
    assert!(ad.editable);
    let tree = ad.current_json_tree.as_ref().expect("the JSON tree");
    assert_eq!(text(tree, "type"), "FRAME");
    assert!(ad.figma_render_url.starts_with("http"), "{ad:?}");
    assert!(ad.initial_figma_render_url.starts_with("http"), "{ad:?}");
    assert!(ad.duration.is_some(), "duration_ms is set once finished");
    let rest = e.provider_result.as_ref().expect("provider_result");
    assert_eq!(text(rest, "brand_id"), "brand_editable");
    assert!(!text(rest, "created_at").is_empty());
    assert!(!text(rest, "completed_at").is_empty());
    for typed in [
        "current_json_tree",
        "figma_render_url",
        "sku_code",
        "duration_ms",
        "image_url",
        "status",
        "id",
    ] {
        assert!(
            !rest.fields.contains_key(typed),
            "{typed} repeated: {rest:?}"
        );
    }

    let ad = flat
        .staticadslab
        .as_ref()
        .expect("typed StaticAdsLab fields");
    assert_eq!(ad.sku_code, "flat_image_ad");
    assert!(!ad.editable);
    assert!(ad.current_json_tree.is_none(), "a flat ad has no JSON tree");
    assert!(ad.figma_render_url.is_empty());

    // GetJob gives the same view as the batch.
    let again = get_job(&mut c, &e.id).await;
    assert_eq!(again.staticadslab, e.staticadslab);
    assert_eq!(again.provider_result, e.provider_result);
    gw.stop().await;
}

/// Each banner's own fields reach the caller on its output; the request's fields on the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_banner_fields_reach_the_caller() {
    let (http, addr) = http_listener().await;
    let aby = sim(ABYSSALE, addr, false, sim_config(TS)).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(http, &[&aby], false, &dir).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let reply = submit(&mut c, vec![abyssale_job(&["facebook-feed", "iab-medium"])]).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    let j = &jobs[0];
    assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
    assert_eq!(j.outputs.len(), 2, "{j:?}");
    for o in &j.outputs {
        let f = o.provider_fields.as_ref().expect("provider_fields");
        assert!(!text(f, "id").is_empty());
        assert!(!text(f, "sharing_id").is_empty());
        let Kind::StructValue(file) = field(f, "file") else {
            panic!("file is not an object: {f:?}");
        };
        assert!(!text(file, "filename").is_empty());
        assert!(
            !file.fields.contains_key("cdn_url"),
            "the mapped URL is not repeated"
        );
        assert!(
            !file.fields.contains_key("type"),
            "the mapped type is not repeated"
        );
        let Kind::StructValue(template) = field(f, "template") else {
            panic!("template is not an object: {f:?}");
        };
        assert_eq!(text(template, "id"), DESIGN_ID);
        assert!(
            !f.fields.contains_key("format"),
            "format is fully mapped: {f:?}"
        );
    }
    let r = j.provider_result.as_ref().expect("provider_result");
    assert!(text(r, "version").starts_with('v'), "{r:?}");
    gw.stop().await;
}

/// A `render.completed` event's own fields reach the caller on the image it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictify_render_fields_reach_the_caller() {
    let (http, addr) = http_listener().await;
    let pic = sim(
        PICTIFY,
        addr,
        true,
        adgate_sim::SimConfig {
            time_scale: TS,
            job_duration: (Duration::from_secs(1), Duration::from_secs(2)),
            ..adgate_sim::SimConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(http, &[&pic], true, &dir).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let reply = submit(&mut c, vec![pictify_job("tmpl_fields", "Ada")]).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(15)).await;
    let j = &jobs[0];
    assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
    let f = j.outputs[0]
        .provider_fields
        .as_ref()
        .expect("provider_fields");
    assert!(text(f, "imageId").starts_with("img_"), "{f:?}");
    assert!(!text(f, "renderedAt").is_empty());
    assert_eq!(text(f, "templateId"), "tmpl_fields");
    for mapped in ["url", "width", "height"] {
        assert!(!f.fields.contains_key(mapped), "{mapped} repeated: {f:?}");
    }
    gw.stop().await;
}
