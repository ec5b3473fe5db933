//! Issue 20, end to end through gRPC: edits of editable StaticAdsLab ads. "A PATCH on an
//! editable image ad sends the resource back to processing. Treat patches as new async jobs"
//! [SEED-1]; an editable ad returns "a PNG plus a JSON tree you can mutate via PATCH and
//! re-render" [SEED-2]. An edit is its own job (`JobSpec.staticadslab_edit`) linked to the ad
//! it edits; every version stays readable; a retried Submit, or a PATCH whose answer was lost,
//! creates one version; an edit of a flat, running or unknown ad is refused before anything is
//! sent. On SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;
mod pgdb;

use std::time::Duration;

use adgate::pb;
use common::*;
use pgdb::Backend;
use prost_types::value::Kind;

const TS: f64 = 0.02;
const PATCH: &str = "PATCH /v1/image-ads/:id";

async fn start(backend: &Backend) -> (Sim, Gateway) {
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(TS)).await;
    let gw = Gateway::start(
        GatewayOpts {
            time_scale: TS,
            webhooks: false,
            toml: "",
            database_url: backend.url(),
        },
        http,
        &[&sal],
    )
    .await;
    (sal, gw)
}

fn editable_ad() -> pb::JobSpec {
    let mut ad = sal_job("brand_edits");
    if let Some(pb::job_spec::Provider::Staticadslab(a)) = &mut ad.provider {
        a.editable = true;
    }
    ad
}

fn headline(text: &str) -> prost_types::Struct {
    prost_types::Struct {
        fields: [
            (
                "type".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::StringValue("FRAME".to_owned())),
                },
            ),
            (
                "headline".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::StringValue(text.to_owned())),
                },
            ),
        ]
        .into(),
    }
}

fn edit_of(job_id: &str, text: &str) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::StaticadslabEdit(
            pb::StaticAdsLabEdit {
                job_id: job_id.to_owned(),
                json_tree: Some(headline(text)),
            },
        )),
        client_ref: format!("edit-{text}"),
        ..Default::default()
    }
}

async fn one_job(client: &Client, spec: pb::JobSpec, request_id: &str) -> pb::Job {
    let mut c = client.clone();
    let reply = c
        .submit(pb::SubmitRequest {
            request_id: request_id.to_owned(),
            jobs: vec![spec],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let jobs = wait_batch_terminal(client, &reply.batch_id, Duration::from_secs(30)).await;
    jobs.into_iter().next().unwrap()
}

/// An editable ad, then an edit of it: the edit re-renders as a new version with a new image
/// and the new tree; the original keeps its image and tree; both versions are readable at the
/// provider. The same edit submitted again with its request id creates nothing.
async fn edit_and_both_versions_readable(postgres: bool) {
    let backend = Backend::new(postgres).await;
    let (sal, gw) = start(&backend).await;
    let client = gw.client().await;

    let original = one_job(&client, editable_ad(), "").await;
    assert_eq!(original.state(), pb::JobState::Completed, "{original:?}");
    assert_eq!(original.cost.as_ref().map(|c| c.micros), Some(4_000_000));
    let first = original.staticadslab.clone().unwrap();
    assert!(first.version_id.starts_with("iav_"), "{first:?}");

    let edit = one_job(&client, edit_of(&original.id, "Summer"), "edit-summer-1").await;
    assert_eq!(edit.state(), pb::JobState::Completed, "{edit:?}");
    assert_eq!(edit.provider, "staticadslab");
    let second = edit.staticadslab.clone().unwrap();
    assert!(second.version_id.starts_with("iav_"), "{second:?}");
    assert_ne!(second.version_id, first.version_id);
    assert_eq!(second.current_json_tree, Some(headline("Summer")));
    assert_eq!(edit.outputs.len(), 1);
    assert_eq!(edit.cost, None, "a re-render's price is not documented");
    assert_ne!(edit.outputs[0].url, original.outputs[0].url, "a new image");
    assert!(
        edit.provider_job_id
            .starts_with(&format!("{}/iav_", original.provider_job_id)),
        "{}",
        edit.provider_job_id
    );

    // The original is unchanged: its version, image and tree.
    let mut c = client.clone();
    let again = get_job(&mut c, &original.id).await;
    assert_eq!(again.outputs, original.outputs);
    assert_eq!(again.staticadslab, original.staticadslab);

    // Both versions at the provider, each with its own image.
    let versions: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/image-ads/{}/versions",
            sal.handle.base_url, original.provider_job_id
        ))
        .header("x-api-key", &sal.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = versions["data"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{versions}");
    assert_eq!(list[0]["id"], first.version_id.as_str());
    assert_eq!(list[1]["id"], second.version_id.as_str());
    assert_eq!(list[1]["image_url"], edit.outputs[0].url.as_str());

    // Retried with the same request id: the same job, no second PATCH, no third version.
    let mut c = client.clone();
    let replay = c
        .submit(pb::SubmitRequest {
            request_id: "edit-summer-1".to_owned(),
            jobs: vec![edit_of(&original.id, "Summer")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.job_ids, std::slice::from_ref(&edit.id));
    assert_eq!(sal.ledger().requests(PATCH), 1);
    assert_eq!(
        sal.ledger().total_charges(),
        1,
        "only the ad itself is billed"
    );

    // An edit of the edit edits the same ad: a third version.
    let third = one_job(&client, edit_of(&edit.id, "Autumn"), "").await;
    assert_eq!(third.state(), pb::JobState::Completed, "{third:?}");
    assert!(third.provider_job_id.starts_with(&original.provider_job_id));
    assert_eq!(
        third.staticadslab.unwrap().current_json_tree,
        Some(headline("Autumn"))
    );
    println!(
        "edits (postgres={postgres}): {} PATCH for 2 edits, {} polls of image ads in all",
        sal.ledger().requests(PATCH),
        sal.ledger().requests("GET /v1/image-ads")
    );
    drop(c);
    gw.stop().await;
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_re_renders_and_both_versions_stay_readable_sqlite() {
    edit_and_both_versions_readable(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_re_renders_and_both_versions_stay_readable_postgres() {
    edit_and_both_versions_readable(true).await;
}

/// The PATCH reached StaticAdsLab and made a version, but its answer was lost: the gateway
/// resends it with the same idempotency key, the provider replays, and there is one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_patch_answer_is_resent_with_its_key_and_makes_one_version() {
    let backend = Backend::new(false).await;
    let (sal, gw) = start(&backend).await;
    let client = gw.client().await;
    let original = one_job(&client, editable_ad(), "").await;
    assert_eq!(original.state(), pb::JobState::Completed, "{original:?}");
    sal.handle.update_faults(|f| f.cut_after_create = 1);
    let edit = one_job(&client, edit_of(&original.id, "Winter"), "").await;
    assert_eq!(edit.state(), pb::JobState::Completed, "{edit:?}");
    let ledger = sal.ledger();
    assert_eq!(ledger.count_cut(), 1, "the answer was cut");
    assert_eq!(
        ledger.requests(PATCH),
        2,
        "sent again after the lost answer"
    );
    assert_eq!(ledger.replays(), 1, "the second PATCH was a replay");
    let twice: Vec<_> = ledger
        .creations_by_key()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "a key made two versions: {twice:?}");
    assert_eq!(
        edit.staticadslab.unwrap().current_json_tree,
        Some(headline("Winter"))
    );
    drop(client);
    gw.stop().await;
    backend.finish().await;
}

/// Edits that cannot be made are refused with FAILED_PRECONDITION saying why, and nothing is
/// stored or sent: a flat ad, an ad still running, a job that does not exist, a template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_flat_running_or_unknown_ads_are_refused_and_nothing_is_sent() {
    let backend = Backend::new(false).await;
    let (sal, gw) = start(&backend).await;
    let client = gw.client().await;
    let flat = one_job(&client, sal_job("brand_flat"), "").await;
    assert_eq!(flat.state(), pb::JobState::Completed);
    let mut c = client.clone();
    let running_batch = submit(&mut c, vec![editable_ad()]).await;
    let running = running_batch.job_ids[0].clone();
    for (target, why) in [
        (flat.id.as_str(), "flat ad"),
        (running.as_str(), "COMPLETED"),
        ("job_doesnotexist0000", "does not exist"),
    ] {
        let err = c
            .submit(pb::SubmitRequest {
                request_id: String::new(),
                jobs: vec![sal_job("brand_fine"), edit_of(target, "x")],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains(why) && err.message().contains("jobs[1]"),
            "{why}: {}",
            err.message()
        );
    }
    assert_eq!(sal.ledger().requests(PATCH), 0);
    // The refused Submits stored nothing: once the running ad has finished, only the two ads
    // above were ever posted (the `brand_fine` ads of the refused Submits never were).
    wait_batch_terminal(&client, &running_batch.batch_id, Duration::from_secs(30)).await;
    assert_eq!(sal.ledger().requests("POST /v1/image-ads"), 2);
    let mut c2 = client.clone();
    let listed = c2
        .batch_status(pb::BatchStatusRequest {
            job_ids: Vec::new(),
            batch_id: running_batch.batch_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    drop(c);
    gw.stop().await;
    backend.finish().await;
}

/// `current_version_id` is not a documented field. Against a provider without it, the PATCH's
/// version is found in the versions list and the edit reads its own version when polled: the
/// edit still completes with its own image, tree and `iav_` id, and the original keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_completes_without_the_undocumented_version_field() {
    let backend = Backend::new(false).await;
    let (sal, gw) = start(&backend).await;
    sal.handle.update_faults(|f| f.sal_no_version_field = true);
    let client = gw.client().await;
    let original = one_job(&client, editable_ad(), "").await;
    assert_eq!(original.state(), pb::JobState::Completed, "{original:?}");
    let edit = one_job(&client, edit_of(&original.id, "Plain"), "").await;
    assert_eq!(edit.state(), pb::JobState::Completed, "{edit:?}");
    let typed = edit.staticadslab.clone().unwrap();
    assert!(typed.version_id.starts_with("iav_"), "{typed:?}");
    assert_eq!(typed.current_json_tree, Some(headline("Plain")));
    assert_ne!(edit.outputs[0].url, original.outputs[0].url);
    assert_eq!(sal.ledger().requests(PATCH), 1);
    assert!(
        sal.ledger().requests("GET /v1/image-ads/:id/versions") >= 1,
        "{:?}",
        sal.ledger().requests_by_endpoint()
    );
    drop(client);
    gw.stop().await;
    backend.finish().await;
}
