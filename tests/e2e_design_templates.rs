//! Issue 20, end to end through gRPC: StaticAdsLab design templates as a kind of job
//! (`JobSpec.staticadslab_design_template`). "POST /v1/image-ads and POST
//! /v1/design-templates are asynchronous" [SEED-1]: a template job is sent once with an
//! idempotency key, polled, and completes with its `dt_` id as the job's provider id and the
//! template resource as `provider_result` (a template has no image). Billed $0.25 on
//! completion, free when failed [SEED-2]. An ad may use it once it is completed ("The design
//! template must be in status: completed before you can use it" [SEED-2]). On SQLite and on
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;
mod pgdb;

use std::time::Duration;

use adgate::pb;
use adgate_sim::SimConfig;
use common::*;
use pgdb::Backend;
use prost_types::value::Kind;
use tonic_types::StatusExt;

const TS: f64 = 0.02;

fn text(v: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    }
}

fn template_job(name: &str) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::StaticadslabDesignTemplate(
            pb::StaticAdsLabDesignTemplate {
                body: Some(prost_types::Struct {
                    fields: [("name".to_owned(), text(name))].into(),
                }),
            },
        )),
        client_ref: format!("template-{name}"),
        ..Default::default()
    }
}

fn ad_with_template(dt: &str) -> pb::JobSpec {
    let mut ad = sal_job("brand_templates");
    if let Some(pb::job_spec::Provider::Staticadslab(a)) = &mut ad.provider {
        a.design_template_id = dt.to_owned();
    }
    ad
}

async fn start(backend: &Backend, cfg: SimConfig) -> (Sim, Gateway) {
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, cfg).await;
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

/// A template completes with its `dt_` id and its resource, once charged; an ad then uses it.
async fn template_then_ad(postgres: bool) {
    let backend = Backend::new(postgres).await;
    let (sal, gw) = start(&backend, sim_config(TS)).await;
    let client = gw.client().await;
    let mut c = client.clone();

    let reply = submit(&mut c, vec![template_job("spring")]).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    let t = &jobs[0];
    assert_eq!(t.state(), pb::JobState::Completed, "{t:?}");
    assert_eq!(t.provider, "staticadslab");
    assert!(t.provider_job_id.starts_with("dt_"), "{t:?}");
    assert!(t.outputs.is_empty(), "a template has no image: {t:?}");
    // Billed $0.25 on completion [SEED-2].
    assert_eq!(
        t.cost,
        Some(pb::Cost {
            currency_code: "USD".into(),
            micros: 250_000,
            unit: "USD".into(),
        })
    );
    assert!(
        t.staticadslab.is_none(),
        "the typed image-ad fields are not for templates"
    );
    // The template resource as StaticAdsLab returned it, minus what is typed.
    let result = t.provider_result.as_ref().expect("the template resource");
    let request = match result.fields.get("request").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => s,
        other => panic!("request not echoed: {other:?}"),
    };
    assert_eq!(
        request.fields.get("name").and_then(|v| v.kind.as_ref()),
        Some(&Kind::StringValue("spring".to_owned()))
    );
    let ledger = sal.ledger();
    assert_eq!(ledger.requests("POST /v1/design-templates"), 1);
    assert_eq!(ledger.charges_by_job().get(&t.provider_job_id), Some(&1));

    // The ad names the completed template and completes.
    let reply = submit(&mut c, vec![ad_with_template(&t.provider_job_id)]).await;
    let ads = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    assert_eq!(ads[0].state(), pb::JobState::Completed, "{:?}", ads[0]);
    assert_eq!(ads[0].cost.as_ref().map(|c| c.micros), Some(1_000_000));
    assert_eq!(ledger.total_charges(), 2);
    println!(
        "design template (postgres={postgres}): 1 POST, {} template polls; ad completed with it",
        ledger.requests("GET /v1/design-templates")
    );
    drop(c);
    gw.stop().await;
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_design_template_completes_with_its_id_and_an_ad_uses_it_sqlite() {
    template_then_ad(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_design_template_completes_with_its_id_and_an_ad_uses_it_postgres() {
    template_then_ad(true).await;
}

/// A failed template fails its job with the provider's code and costs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_design_template_fails_the_job_and_is_free() {
    let backend = Backend::new(false).await;
    let cfg = SimConfig {
        failure_ratio: 1.0,
        ..sim_config(TS)
    };
    let (sal, gw) = start(&backend, cfg).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let reply = submit(&mut c, vec![template_job("doomed")]).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    let t = &jobs[0];
    assert_eq!(t.state(), pb::JobState::Failed, "{t:?}");
    let e = t.error.as_ref().unwrap();
    assert_eq!(e.code, "PROVIDER_JOB_FAILED");
    assert_eq!(e.provider_code, "PIPELINE_ERROR");
    assert_eq!(t.cost, None, "failed jobs are not billed");
    assert_eq!(sal.ledger().total_charges(), 0);
    assert_eq!(sal.ledger().requests("POST /v1/design-templates"), 1);
    drop(c);
    gw.stop().await;
    backend.finish().await;
}

/// A template spec without a body, or with a field the gateway does not know, is refused with
/// paths under the proto's own field name, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_design_template_is_refused_with_its_path_and_nothing_is_sent() {
    let backend = Backend::new(false).await;
    let (sal, gw) = start(&backend, sim_config(TS)).await;
    let mut c = gw.client().await;
    let empty = pb::JobSpec {
        provider: Some(pb::job_spec::Provider::StaticadslabDesignTemplate(
            pb::StaticAdsLabDesignTemplate { body: None },
        )),
        ..Default::default()
    };
    let err = c
        .submit(pb::SubmitRequest {
            request_id: String::new(),
            jobs: vec![template_job("fine"), empty],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .expect("BadRequest details")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(
        fields,
        ["jobs[1].staticadslab_design_template.body"],
        "{err:?}"
    );
    assert_eq!(sal.ledger().requests("POST /v1/design-templates"), 0);
    drop(c);
    gw.stop().await;
    backend.finish().await;
}

fn ad_waiting_for(template_ref: &str, i: usize) -> pb::JobSpec {
    let mut ad = sal_job("brand_templates");
    if let Some(pb::job_spec::Provider::Staticadslab(a)) = &mut ad.provider {
        a.design_template_id = String::new();
        a.design_template_ref = template_ref.to_owned();
    }
    ad.client_ref = format!("ad-{i}");
    ad
}

/// A template and 20 ads that name it in one Submit: the ads wait QUEUED (saying for what),
/// nothing is sent for them before the template completes (StaticAdsLab would refuse them:
/// the simulator counts such refusals), then all 20 go with the template's `dt_` id. With a
/// restart of the gateway while they wait.
async fn template_and_its_ads(postgres: bool) {
    let backend = Backend::new(postgres).await;
    let (sal, gw) = start(&backend, sim_config(TS)).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let mut jobs = vec![template_job("launch")];
    jobs.extend((0..20).map(|i| ad_waiting_for("template-launch", i)));
    let reply = submit(&mut c, jobs).await;
    let ad_ids: Vec<String> = reply.job_ids[1..].to_vec();
    // Held, and saying so.
    let waiting = wait_for(
        "ads waiting for their template",
        Duration::from_secs(10),
        || {
            let mut c = client.clone();
            let ids = ad_ids.clone();
            async move {
                let r = c
                    .batch_status(pb::BatchStatusRequest {
                        job_ids: ids,
                        batch_id: String::new(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                r.jobs
                    .iter()
                    .find(|j| {
                        j.progress
                            .as_ref()
                            .is_some_and(|p| p.step == "waiting_for_job")
                    })
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(waiting.state(), pb::JobState::Queued);
    assert!(
        waiting
            .progress
            .unwrap()
            .message
            .contains(&reply.job_ids[0])
    );
    // A restart while they wait: the store alone decides.
    drop(c);
    gw.stop().await;
    let (http, _) = http_listener().await;
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
    let client = gw.client().await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(60)).await;
    let template = &jobs[0];
    assert_eq!(template.state(), pb::JobState::Completed, "{template:?}");
    for ad in &jobs[1..] {
        assert_eq!(ad.state(), pb::JobState::Completed, "{ad:?}");
        let used = ad
            .provider_result
            .as_ref()
            .and_then(|r| r.fields.get("design_template_id"))
            .and_then(|v| v.kind.as_ref());
        assert_eq!(
            used,
            Some(&Kind::StringValue(template.provider_job_id.clone())),
            "{ad:?}"
        );
    }
    let ledger = sal.ledger();
    assert_eq!(
        ledger.refusals("template_not_completed"),
        0,
        "an ad was sent before its template completed"
    );
    assert_eq!(ledger.requests("POST /v1/design-templates"), 1);
    assert_eq!(ledger.requests("POST /v1/image-ads"), 20);
    assert_eq!(ledger.total_charges(), 21);
    println!(
        "template + 20 ads (postgres={postgres}): 1 template POST, 20 ad POSTs, {} template \
         polls, {} ad polls, 0 refused early",
        ledger.requests("GET /v1/design-templates"),
        ledger.requests("GET /v1/image-ads")
    );
    gw.stop().await;
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_wait_for_the_template_of_their_submit_then_use_it_sqlite() {
    template_and_its_ads(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_wait_for_the_template_of_their_submit_then_use_it_postgres() {
    template_and_its_ads(true).await;
}

/// The template fails: its 20 ads fail `DEPENDENCY_FAILED` naming it, none is sent, nothing is
/// charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_template_fails_its_ads_unsent_and_free() {
    let backend = Backend::new(false).await;
    let cfg = SimConfig {
        failure_ratio: 1.0,
        ..sim_config(TS)
    };
    let (sal, gw) = start(&backend, cfg).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let mut jobs = vec![template_job("launch")];
    jobs.extend((0..20).map(|i| ad_waiting_for("template-launch", i)));
    let reply = submit(&mut c, jobs).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    assert_eq!(jobs[0].state(), pb::JobState::Failed);
    for ad in &jobs[1..] {
        assert_eq!(ad.state(), pb::JobState::Failed, "{ad:?}");
        let e = ad.error.as_ref().unwrap();
        assert_eq!(e.code, "DEPENDENCY_FAILED", "{e:?}");
        assert!(e.message.contains(&jobs[0].id), "{e:?}");
    }
    assert_eq!(sal.ledger().requests("POST /v1/image-ads"), 0);
    assert_eq!(sal.ledger().total_charges(), 0);
    drop(c);
    gw.stop().await;
    backend.finish().await;
}

/// An ad naming a template that is not in its Submit is refused at its field; nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_naming_no_template_of_its_submit_is_refused() {
    let backend = Backend::new(false).await;
    let (sal, gw) = start(&backend, sim_config(TS)).await;
    let mut c = gw.client().await;
    for (jobs, why) in [
        (
            vec![template_job("a"), ad_waiting_for("template-b", 0)],
            "no other job",
        ),
        (
            vec![
                template_job("a"),
                ad_waiting_for("template-a", 0),
                ad_waiting_for("ad-0", 1),
            ],
            "itself waits",
        ),
    ] {
        let err = c
            .submit(pb::SubmitRequest {
                request_id: String::new(),
                jobs,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let v = err
            .get_error_details()
            .bad_request()
            .expect("BadRequest details")
            .field_violations
            .clone();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].field.ends_with(".staticadslab.design_template_ref"),
            "{v:?}"
        );
        assert!(v[0].description.contains(why), "{v:?}");
    }
    assert_eq!(sal.ledger().total_requests(), 0);
    drop(c);
    gw.stop().await;
    backend.finish().await;
}
