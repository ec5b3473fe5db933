//! Issue 20: an edit of an editable StaticAdsLab ad survives `kill -9` between its `PATCH`
//! and the answer. The real binary is killed while StaticAdsLab holds the PATCH's answer (the
//! new version already exists at the provider); after a restart on the same store the gateway
//! resends the open attempt with the same idempotency key, the provider replays, and there is
//! exactly one new version, which the edit job completes with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::time::Duration;

use adgate::pb;
use support::*;

const SCALE: f64 = 0.05;

fn editable_ad() -> pb::JobSpec {
    let mut ad = sal_job(1);
    if let Some(pb::job_spec::Provider::Staticadslab(a)) = &mut ad.provider {
        a.editable = true;
    }
    ad
}

async fn terminal(
    client: &mut pb::gateway_service_client::GatewayServiceClient<tonic::transport::Channel>,
    id: &str,
) -> pb::Job {
    let ids = vec![id.to_owned()];
    let mut last = None;
    for _ in 0..600 {
        if let Some(js) = statuses(client, &ids).await
            && let Some(j) = js.into_iter().next()
        {
            if is_terminal(&j) {
                return j;
            }
            last = Some(j);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} not terminal within 30 s: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_patch_and_its_answer_makes_one_version() {
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "crashedit", |_, _| {}).await;
    let toml = format!("time_scale = {SCALE}\n");
    let spec = GatewaySpec::new(http_port, &toml, sims.env());
    let url = spec.grpc_url();
    let gw = spec.spawn();
    let mut client = connect(&url, Duration::from_secs(20)).await;

    let ad_id = client
        .submit(pb::SubmitRequest {
            request_id: String::new(),
            jobs: vec![editable_ad()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job_ids[0]
        .clone();
    let ad = terminal(&mut client, &ad_id).await;
    assert_eq!(state(&ad), pb::JobState::Completed, "{ad:?}");

    // StaticAdsLab makes the version at once but holds the PATCH's answer; kill -9 meanwhile.
    let sal = sims.get("staticadslab");
    sal.update_faults(|f| f.submit_answer_delay = Duration::from_secs(30));
    let tree = prost_types::Struct {
        fields: [(
            "headline".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(
                    "After the crash".into(),
                )),
            },
        )]
        .into(),
    };
    let edit_id = client
        .submit(pb::SubmitRequest {
            request_id: "crash-edit-1".to_owned(),
            jobs: vec![pb::JobSpec {
                provider: Some(pb::job_spec::Provider::StaticadslabEdit(
                    pb::StaticAdsLabEdit {
                        job_id: ad_id.clone(),
                        json_tree: Some(tree.clone()),
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job_ids[0]
        .clone();
    wait_for(
        "the PATCH to reach StaticAdsLab",
        Duration::from_secs(20),
        || {
            let l = sal.ledger.clone();
            async move { l.creations() >= 2 }
        },
    )
    .await;
    gw.kill9();
    sal.update_faults(|f| f.submit_answer_delay = Duration::ZERO);

    let _gw = spec.spawn();
    let mut client = connect(&url, Duration::from_secs(20)).await;
    let edit = terminal(&mut client, &edit_id).await;
    assert_eq!(state(&edit), pb::JobState::Completed, "{edit:?}");
    let typed = edit.staticadslab.clone().unwrap();
    assert_eq!(typed.current_json_tree, Some(tree));
    let l = &sal.ledger;
    assert_eq!(
        l.requests("PATCH /v1/image-ads/:id"),
        2,
        "resent once after the restart"
    );
    assert_eq!(l.replays(), 1, "the resend was a replay");
    let twice: Vec<_> = l
        .creations_by_key()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "a key made work twice: {twice:?}");
    assert_eq!(l.creations(), 2, "the ad and one version");
    println!(
        "kill -9 between PATCH and answer: 2 PATCH requests (1 replay), 1 version, edit {} \
         COMPLETED with version {}",
        edit.id, typed.version_id
    );
    sims.shutdown();
}
