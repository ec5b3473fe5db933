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
use pgdb::PgDb;
use prost_types::value::Kind;
use tonic_types::StatusExt;

const TS: f64 = 0.02;

enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(PgDb),
}

impl Backend {
    async fn new(postgres: bool) -> Self {
        if postgres {
            Self::Postgres(PgDb::create().await)
        } else {
            Self::Sqlite(tempfile::tempdir().unwrap())
        }
    }

    fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => db_url(dir),
            Self::Postgres(db) => db.url(),
        }
    }

    async fn finish(self) {
        if let Self::Postgres(db) = self {
            db.drop_db().await;
        }
    }
}

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
