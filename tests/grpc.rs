//! The real server over real sockets, with the in-process sandbox simulators.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use adgate::config::Settings;
use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use adgate::sandbox::{self, Sandbox};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

struct Server {
    grpc: String,
    http: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), adgate::StartError>>,
    _sandbox: Sandbox,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn client(&self) -> GatewayServiceClient<Channel> {
        GatewayServiceClient::connect(self.grpc.clone())
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("server drained within the grace period")
            .unwrap()
            .unwrap();
    }
}

async fn start(toml: &str, env: &[(&str, &str)]) -> Server {
    start_with(toml, env, |_| {}).await
}

async fn start_with(toml: &str, env: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut settings = Settings::from_toml(true, toml, &lookup).unwrap();
    settings.database_url = format!("sqlite://{}", dir.path().join("adgate.db").display());
    let http_addr = http.local_addr().unwrap();
    let sandbox = sandbox::start(&mut settings, http_addr, sandbox::SANDBOX_TIME_SCALE)
        .await
        .unwrap();
    tweak(&mut settings);
    let app = adgate::App::start(&settings).await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(adgate::serve(grpc, http, app, async {
        let _ = rx.await;
    }));
    Server {
        grpc: grpc_url,
        http: format!("http://{http_addr}"),
        stop: Some(tx),
        task,
        _sandbox: sandbox,
        _dir: dir,
    }
}

fn staticadslab_job(brand: &str) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Staticadslab(
            pb::StaticAdsLabImageAd {
                design_template_id: "dt_1".into(),
                brand_id: brand.into(),
                product_id: "prod_1".into(),
                audience_id: "aud_1".into(),
                ..Default::default()
            },
        )),
        client_ref: "ref-1".into(),
        ..Default::default()
    }
}

fn pictify_job() -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Pictify(pb::PictifyRender {
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
        })),
        ..Default::default()
    }
}

fn abyssale_job() -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Abyssale(pb::AbyssaleGeneration {
            design_id: "497f6eca-6276-4993-bfeb-53cbbbba6f08".into(),
            format_names: vec!["facebook-feed".into(), "facebook-post".into()],
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_then_watch_to_completion_on_every_provider() {
    let server = start("", &[]).await;
    let mut client = server.client().await;

    let providers = client
        .list_providers(pb::ListProvidersRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = providers
        .providers
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    // The sandbox serves every registered provider.
    let mut registered: Vec<&str> = adgate::providers::names().collect();
    registered.sort_unstable();
    assert_eq!(names, registered);

    let reply = client
        .submit(pb::SubmitRequest {
            request_id: "req-1".into(),
            jobs: vec![staticadslab_job("brand_1"), pictify_job(), abyssale_job()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.job_ids.len(), 3);
    assert!(!reply.replayed);

    let mut stream = client
        .watch_progress(pb::WatchProgressRequest {
            batch_id: reply.batch_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut snapshots = 0;
    let mut last = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("stream ended in time");
        let Some(msg) = msg.unwrap() else { break };
        if msg.snapshot {
            snapshots += 1;
        }
        if let Some(pb::watch_progress_response::Event::Job(job)) = msg.event {
            last.insert(job.id.clone(), job);
        }
    }
    assert_eq!(snapshots, 3, "one snapshot message per job");
    for id in &reply.job_ids {
        let job = &last[id];
        assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
        assert!(!job.outputs.is_empty(), "{job:?}");
    }
    let abyssale = &last[&reply.job_ids[2]];
    assert_eq!(abyssale.outputs.len(), 2, "one output per format");

    // The same request id and content replays; different content conflicts.
    let again = client
        .submit(pb::SubmitRequest {
            request_id: "req-1".into(),
            jobs: vec![staticadslab_job("brand_1"), pictify_job(), abyssale_job()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.job_ids, reply.job_ids);
    let conflict = client
        .submit(pb::SubmitRequest {
            request_id: "req-1".into(),
            jobs: vec![staticadslab_job("brand_2")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);

    let status = client
        .batch_status(pb::BatchStatusRequest {
            job_ids: vec![reply.job_ids[0].clone(), "job_nope".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.jobs.len(), 1);
    assert_eq!(status.unknown_job_ids, ["job_nope"]);
    assert_eq!(status.counts[0].state(), pb::JobState::Completed);

    let metrics = reqwest::get(format!("{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("adgate_grpc_server_handled"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_with_field_paths_and_nothing_is_stored() {
    let server = start("", &[]).await;
    let mut client = server.client().await;
    let err = client
        .submit(pb::SubmitRequest {
            jobs: vec![
                staticadslab_job("brand_1"),
                pb::JobSpec::default(),
                staticadslab_job("brnd_1"),
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let d = err.get_error_details();
    assert_eq!(d.error_info().unwrap().reason, "INVALID_JOB_SPEC");
    let fields: Vec<&str> = d
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert!(fields.contains(&"jobs[1].provider"), "{fields:?}");
    assert!(
        fields.contains(&"jobs[2].staticadslab.brand_id"),
        "{fields:?}"
    );

    let nf = client
        .get_job(pb::GetJobRequest {
            job_id: "job_missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), Code::NotFound);
    assert_eq!(
        nf.get_error_details().error_info().unwrap().reason,
        "JOB_NOT_FOUND"
    );

    let watch = client
        .watch_progress(pb::WatchProgressRequest {
            job_ids: vec!["job_missing".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(watch.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_api_but_not_health() {
    let server = start("", &[("ADGATE_AUTH_TOKENS", "t0ken")]).await;
    let mut client = server.client().await;
    let err = client
        .list_providers(pb::ListProvidersRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::ListProvidersRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer t0ken".parse().unwrap());
    assert!(client.list_providers(req).await.is_ok());

    let channel = Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "adgate.v1.GatewayService", "adgate.provider.pictify"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_open_streams_with_unavailable() {
    // Jobs that take a long time, so the stream is still open when the drain begins.
    let server = start("grace_period_secs = 5\nheartbeat_secs = 0.2", &[]).await;
    let mut client = server.client().await;
    let reply = client
        .submit(pb::SubmitRequest {
            jobs: vec![staticadslab_job("brand_1")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = client
        .watch_progress(pb::WatchProgressRequest {
            job_ids: reply.job_ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.snapshot);
    let grpc = server.grpc.clone();
    server.stop().await;
    // Everything buffered comes first; the stream must then end with UNAVAILABLE, not OK —
    // unless the job happened to finish before the drain.
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if let Some(pb::watch_progress_response::Event::Job(j)) = m.event
                    && j.state() == pb::JobState::Completed
                {
                    return;
                }
            }
            Ok(None) => panic!("stream ended OK although its job was not terminal"),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                break;
            }
        }
    }
    assert!(
        GatewayServiceClient::connect(grpc).await.is_err(),
        "listener closed after drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_provider_and_stream_cap_and_heartbeats() {
    let server = start_with("max_watch_streams = 1\nheartbeat_secs = 0.05", &[], |s| {
        s.providers.get_mut("abyssale").unwrap().api_key = None;
    })
    .await;
    let mut client = server.client().await;
    let err = client
        .submit(pb::SubmitRequest {
            jobs: vec![staticadslab_job("brand_1"), abyssale_job()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let info = err.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "PROVIDER_NOT_CONFIGURED");
    assert_eq!(info.metadata["field"], "jobs[1].abyssale");

    let reply = client
        .submit(pb::SubmitRequest {
            jobs: vec![pictify_job()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let watch = || pb::WatchProgressRequest {
        job_ids: reply.job_ids.clone(),
        ..Default::default()
    };
    let mut stream = client.watch_progress(watch()).await.unwrap().into_inner();
    let second = client.watch_progress(watch()).await.unwrap_err();
    assert_eq!(second.code(), Code::ResourceExhausted);
    // Jobs take at least 1.5 s in the sandbox and Pictify reports no progress in between;
    // heartbeats come every 0.05 s of idleness.
    let mut heartbeats = 0;
    while let Some(m) = stream.message().await.unwrap() {
        if matches!(
            m.event,
            Some(pb::watch_progress_response::Event::Heartbeat(_))
        ) {
            heartbeats += 1;
        }
    }
    assert!(heartbeats > 0, "an idle stream gets heartbeats");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_watcher_frees_its_stream_slot_at_once() {
    // One stream slot: a second stream can only open once the first client's departure has
    // been noticed (its Watch dropped and its permit released).
    let server = start("max_watch_streams = 1\nheartbeat_secs = 30", &[]).await;
    let mut client = server.client().await;
    let reply = client
        .submit(pb::SubmitRequest {
            jobs: vec![staticadslab_job("brand_1")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let watch = || pb::WatchProgressRequest {
        job_ids: reply.job_ids.clone(),
        ..Default::default()
    };
    let mut stream = client.watch_progress(watch()).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().unwrap().snapshot);
    drop(stream); // RST_STREAM; the connection stays open
    let left = std::time::Instant::now();
    loop {
        match client.watch_progress(watch()).await {
            Ok(_) => break,
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
        }
        assert!(
            left.elapsed() < Duration::from_secs(1),
            "the departure was not noticed within 1 s (heartbeat is 30 s)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}
