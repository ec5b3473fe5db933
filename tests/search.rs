//! Issue 17 "Search", end to end through gRPC on the sandbox: ListJobs filters (every field),
//! newest-first pages whose tokens survive new submits, invalid filters and page tokens refused
//! with INVALID_ARGUMENT naming the field, per-caller visibility with two named tokens, and
//! ListBatches counts and cost. On SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pgdb;

use std::collections::HashSet;
use std::time::Duration;

use adgate::config::Settings;
use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use adgate::sandbox::{self, Sandbox};
use pgdb::Backend;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Client = GatewayServiceClient<Channel>;

const TOKENS: &str = "team-a:tok-a,team-b:tok-b";

struct Server {
    grpc: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), adgate::StartError>>,
    _sandbox: Sandbox,
}

/// A sandbox gateway on port 0 with two named callers, storing in `database_url`.
async fn start(database_url: String) -> Server {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lookup = |k: &str| (k == "ADGATE_AUTH_TOKENS").then(|| TOKENS.to_owned());
    let mut settings = Settings::from_toml(true, "", &lookup).unwrap();
    settings.database_url = database_url;
    let http_addr = http.local_addr().unwrap();
    let sandbox = sandbox::start(&mut settings, http_addr, sandbox::SANDBOX_TIME_SCALE)
        .await
        .unwrap();
    let app = adgate::App::start(&settings).await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(adgate::serve(grpc, http, app, async {
        let _ = rx.await;
    }));
    Server {
        grpc: grpc_url,
        stop: Some(tx),
        task,
        _sandbox: sandbox,
    }
}

impl Server {
    async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = GatewayServiceClient::connect(self.grpc.clone()).await {
                return c;
            }
            assert!(Instant::now() < deadline, "gateway did not come up");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("drained in time")
            .unwrap()
            .unwrap();
    }
}

fn req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn job(provider: &str, client_ref: &str, campaign: &str) -> pb::JobSpec {
    let provider = match provider {
        "staticadslab" => pb::job_spec::Provider::Staticadslab(pb::StaticAdsLabImageAd {
            design_template_id: "dt_1".into(),
            brand_id: "brand_1".into(),
            product_id: "prod_1".into(),
            audience_id: "aud_1".into(),
            ..Default::default()
        }),
        _ => pb::job_spec::Provider::Pictify(pb::PictifyRender {
            template_uid: "tmpl_hello".into(),
            variables: Some(prost_types::Struct {
                fields: [(
                    "name".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("Ada".into())),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        }),
    };
    pb::JobSpec {
        provider: Some(provider),
        client_ref: client_ref.into(),
        labels: [("campaign".to_owned(), campaign.to_owned())].into(),
        ..Default::default()
    }
}

async fn submit(c: &mut Client, token: &str, jobs: Vec<pb::JobSpec>) -> pb::SubmitResponse {
    c.submit(req(
        pb::SubmitRequest {
            jobs,
            ..Default::default()
        },
        token,
    ))
    .await
    .unwrap()
    .into_inner()
}

async fn list(
    c: &mut Client,
    token: &str,
    filter: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListJobsResponse, tonic::Status> {
    c.list_jobs(req(
        pb::ListJobsRequest {
            page_size,
            page_token: page_token.into(),
            filter: filter.into(),
        },
        token,
    ))
    .await
    .map(tonic::Response::into_inner)
}

/// Ids of every job `filter` matches for `token` (one page of up to 1,000).
async fn ids(c: &mut Client, token: &str, filter: &str) -> Vec<String> {
    let page = list(c, token, filter, 1_000, "").await.unwrap();
    assert!(page.next_page_token.is_empty());
    page.jobs.into_iter().map(|j| j.id).collect()
}

fn set(v: &[String]) -> HashSet<&str> {
    v.iter().map(String::as_str).collect()
}

/// The `filter` field violation of an INVALID_ARGUMENT (or PERMISSION_DENIED) status.
fn violation(status: &tonic::Status, code: Code, field: &str) -> String {
    assert_eq!(status.code(), code, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .expect("a BadRequest detail");
    assert_eq!(bad.field_violations.len(), 1, "{bad:?}");
    assert_eq!(bad.field_violations[0].field, field);
    bad.field_violations[0].description.clone()
}

async fn search_end_to_end(postgres: bool) {
    let backend = Backend::new(postgres).await;
    let server = start(backend.url()).await;
    let mut c = server.client().await;

    let a1 = submit(
        &mut c,
        "tok-a",
        vec![
            job("staticadslab", "a-0", "spring"),
            job("staticadslab", "a-1", "spring"),
            job("staticadslab", "a-2", "spring"),
            job("pictify", "a-3", "autumn"),
            job("pictify", "a-4", "autumn"),
        ],
    )
    .await;
    let b1 = submit(
        &mut c,
        "tok-b",
        vec![
            job("staticadslab", "b-0", "spring"),
            job("staticadslab", "b-1", "spring"),
        ],
    )
    .await;

    // Everything settles in the sandbox; states are compared only once they stop moving.
    let deadline = Instant::now() + Duration::from_secs(60);
    for token in ["tok-a", "tok-b"] {
        while !ids(&mut c, token, "state = QUEUED").await.is_empty()
            || !ids(&mut c, token, "state = PROCESSING").await.is_empty()
        {
            assert!(Instant::now() < deadline, "jobs did not settle");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Each caller sees only its own jobs, newest first.
    let all_a = list(&mut c, "tok-a", "", 0, "").await.unwrap().jobs;
    assert_eq!(
        set(&all_a.iter().map(|j| j.id.clone()).collect::<Vec<_>>()),
        set(&a1.job_ids)
    );
    assert!(
        all_a
            .iter()
            .all(|j| j.caller == "team-a" && j.batch_id == a1.batch_id)
    );
    let times: Vec<_> = all_a
        .iter()
        .map(|j| j.create_time.unwrap())
        .map(|t| (t.seconds, t.nanos))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    assert_eq!(set(&ids(&mut c, "tok-b", "").await), set(&b1.job_ids));
    // Another caller's batch is simply not there.
    let filter = format!("batch_id = \"{}\"", a1.batch_id);
    assert!(ids(&mut c, "tok-b", &filter).await.is_empty());
    assert_eq!(ids(&mut c, "tok-a", &filter).await.len(), 5);
    // Naming another caller is refused, naming oneself is fine.
    let err = list(&mut c, "tok-a", "caller = \"team-b\"", 0, "")
        .await
        .unwrap_err();
    assert!(violation(&err, Code::PermissionDenied, "filter").contains("team-a"));
    assert_eq!(ids(&mut c, "tok-a", "caller = \"team-a\"").await.len(), 5);

    // Every field.
    let by_ref = |r: &str| {
        all_a
            .iter()
            .find(|j| j.client_ref == r)
            .map(|j| j.id.clone())
            .unwrap()
    };
    let spring = ids(&mut c, "tok-a", "labels.campaign = \"spring\"").await;
    assert_eq!(
        set(&spring),
        set(&[by_ref("a-0"), by_ref("a-1"), by_ref("a-2")])
    );
    let pictify = ids(&mut c, "tok-a", "provider = \"pictify\"").await;
    assert_eq!(set(&pictify), set(&[by_ref("a-3"), by_ref("a-4")]));
    assert_eq!(
        ids(&mut c, "tok-a", "client_ref = \"a-1\"").await,
        vec![by_ref("a-1")]
    );
    let completed: Vec<String> = all_a
        .iter()
        .filter(|j| j.state() == pb::JobState::Completed)
        .map(|j| j.id.clone())
        .collect();
    assert_eq!(
        set(&ids(&mut c, "tok-a", "state = COMPLETED").await),
        set(&completed)
    );
    let not_completed = ids(&mut c, "tok-a", "state != JOB_STATE_COMPLETED").await;
    assert_eq!(not_completed.len() + completed.len(), 5);
    let both = format!(
        "provider = \"staticadslab\" AND labels.campaign = \"spring\" AND batch_id = \"{}\"",
        a1.batch_id
    );
    assert_eq!(set(&ids(&mut c, "tok-a", &both).await), set(&spring));

    // create_time: a later batch is inside `>= its time`, the first one is not.
    let a2 = submit(&mut c, "tok-a", vec![job("pictify", "a-5", "winter")]).await;
    let newest = list(&mut c, "tok-a", "", 1, "")
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(newest.id, a2.job_ids[0]);
    let t = newest.create_time.unwrap();
    let at = format!("{t}");
    let since = ids(&mut c, "tok-a", &format!("create_time >= \"{at}\"")).await;
    assert!(since.contains(&a2.job_ids[0]));
    let before = ids(&mut c, "tok-a", &format!("create_time < \"{at}\"")).await;
    assert!(!before.contains(&a2.job_ids[0]));
    assert_eq!(since.len() + before.len(), 6);

    // Pages of 2 while team-a keeps submitting: every job listed at the start is seen once,
    // in order, and the new ones never shift a page.
    let expected: Vec<String> = ids(&mut c, "tok-a", "").await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut a_batches = vec![a1.batch_id.clone(), a2.batch_id.clone()];
    for round in 0..10 {
        let page = list(&mut c, "tok-a", "", 2, &token).await.unwrap();
        assert!(page.jobs.len() <= 2);
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        let more = submit(
            &mut c,
            "tok-a",
            vec![job("pictify", &format!("new-{round}"), "x")],
        );
        a_batches.push(more.await.batch_id);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(token.is_empty(), "pagination ended");
    assert_eq!(seen, expected);

    // A token belongs to its filter; a broken one is refused too.
    let page = list(&mut c, "tok-a", "labels.campaign = \"spring\"", 1, "")
        .await
        .unwrap();
    let err = list(&mut c, "tok-a", "", 1, &page.next_page_token)
        .await
        .unwrap_err();
    assert!(violation(&err, Code::InvalidArgument, "page_token").contains("another filter"));
    let err = list(&mut c, "tok-a", "", 1, "not-a-token")
        .await
        .unwrap_err();
    violation(&err, Code::InvalidArgument, "page_token");
    // …and so is a token of team-a's listing used by team-b (its visible set differs).
    let page = list(&mut c, "tok-a", "", 1, "").await.unwrap();
    let err = list(&mut c, "tok-b", "", 1, &page.next_page_token)
        .await
        .unwrap_err();
    violation(&err, Code::InvalidArgument, "page_token");

    // Invalid filters name the offending term.
    for (filter, names) in [
        ("colour = \"red\"", "colour"),
        ("state = DONE", "state = DONE"),
        ("state = FAILED OR state = QUEUED", "OR"),
        (
            "create_time > \"last tuesday\"",
            "create_time > \"last tuesday\"",
        ),
        ("labels.campaign != \"spring\"", "labels.campaign"),
    ] {
        let err = list(&mut c, "tok-a", filter, 0, "").await.unwrap_err();
        let why = violation(&err, Code::InvalidArgument, "filter");
        assert!(why.contains(names), "{filter}: {why}");
    }
    let err = list(&mut c, "tok-a", "", -1, "").await.unwrap_err();
    violation(&err, Code::InvalidArgument, "page_size");

    // ListBatches: team-a's own batches, newest first, counts and cost as BatchStatus has them.
    let batches = c
        .list_batches(req(pb::ListBatchesRequest::default(), "tok-a"))
        .await
        .unwrap()
        .into_inner()
        .batches;
    let listed: Vec<String> = batches.iter().map(|b| b.id.clone()).collect();
    assert_eq!(set(&listed), set(&a_batches));
    assert_eq!(listed.len(), a_batches.len());
    assert!(batches.iter().all(|b| b.caller == "team-a"));
    assert_eq!(batches.last().unwrap().id, a1.batch_id);
    let first = batches.last().unwrap();
    assert_eq!(first.job_count, 5);
    assert_eq!(first.counts.iter().map(|s| s.count).sum::<i32>(), 5);
    let status = c
        .batch_status(req(
            pb::BatchStatusRequest {
                batch_id: a1.batch_id.clone(),
                ..Default::default()
            },
            "tok-a",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.counts, status.counts);
    assert_eq!(first.cost, status.cost);
    let page_size = i32::try_from(a_batches.len()).unwrap();
    let page = c
        .list_batches(req(
            pb::ListBatchesRequest {
                page_size: page_size - 1,
                ..Default::default()
            },
            "tok-a",
        ))
        .await
        .unwrap()
        .into_inner();
    let rest = c
        .list_batches(req(
            pb::ListBatchesRequest {
                page_size: page_size - 1,
                page_token: page.next_page_token,
                ..Default::default()
            },
            "tok-a",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.batches.len(), 1);
    assert_eq!(rest.batches[0].id, a1.batch_id);
    assert!(rest.next_page_token.is_empty());
    let theirs = c
        .list_batches(req(
            pb::ListBatchesRequest {
                filter: "caller = \"team-b\"".into(),
                ..Default::default()
            },
            "tok-b",
        ))
        .await
        .unwrap()
        .into_inner()
        .batches;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].id, b1.batch_id);
    let err = c
        .list_batches(req(
            pb::ListBatchesRequest {
                filter: "state = FAILED".into(),
                ..Default::default()
            },
            "tok-b",
        ))
        .await
        .unwrap_err();
    assert!(violation(&err, Code::InvalidArgument, "filter").contains("state"));

    server.stop().await;
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_on_sqlite() {
    search_end_to_end(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_on_postgres() {
    search_end_to_end(true).await;
}
