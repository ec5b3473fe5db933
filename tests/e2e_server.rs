//! Issue 3, end to end: the real `adgate` binary under grpcurl (reflection, health), SIGTERM
//! with an open stream and a restart on the same database, and the Submit validation matrix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::process::Command;
use std::time::Duration;

use adgate::pb;
use common::*;
use tonic::Code;
use tonic_types::StatusExt;

fn run_grpcurl(args: &[&str]) -> String {
    let out = Command::new(grpcurl()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binary_sandbox_answers_grpcurl_reflection_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Proc::spawn(
        &["serve", "--sandbox"],
        &[("ADGATE_DATABASE_URL", db_url(&dir))],
    );
    let addr = proc.grpc.trim_start_matches("http://").to_owned();

    let list = run_grpcurl(&["-plaintext", &addr, "list"]);
    for svc in [
        "adgate.v1.GatewayService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            list.lines().any(|l| l.trim() == svc),
            "`list` lacks {svc}:\n{list}"
        );
    }

    let svc = run_grpcurl(&["-plaintext", &addr, "describe", "adgate.v1.GatewayService"]);
    for rpc in [
        "rpc Submit ( .adgate.v1.SubmitRequest ) returns ( .adgate.v1.SubmitResponse )",
        "rpc BatchStatus ( .adgate.v1.BatchStatusRequest ) returns ( .adgate.v1.BatchStatusResponse )",
        "rpc WatchProgress ( .adgate.v1.WatchProgressRequest ) returns ( stream .adgate.v1.WatchProgressResponse )",
        "rpc GetJob",
        "rpc CancelJob",
        "rpc ListProviders",
    ] {
        assert!(svc.contains(rpc), "describe service lacks {rpc:?}:\n{svc}");
    }

    let job = run_grpcurl(&["-plaintext", &addr, "describe", "adgate.v1.Job"]);
    assert!(job.contains("adgate.v1.Job is a message"), "{job}");
    for field in [
        ".adgate.v1.JobState state = 5;",
        "repeated .adgate.v1.Output outputs = 7;",
        ".adgate.v1.JobError error = 8;",
        "int64 revision = 15;",
    ] {
        assert!(job.contains(field), "describe Job lacks {field:?}:\n{job}");
    }

    for service in [
        "",
        "adgate.v1.GatewayService",
        "adgate.provider.staticadslab",
    ] {
        let body = format!(r#"{{"service":"{service}"}}"#);
        let out = run_grpcurl(&[
            "-plaintext",
            "-d",
            &body,
            &addr,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(out.contains(r#""status": "SERVING""#), "{service:?}: {out}");
    }
    // An unknown service is NOT_FOUND, so SERVING above is not a blanket answer.
    let out = Command::new(grpcurl())
        .args([
            "-plaintext",
            "-d",
            r#"{"service":"adgate.provider.nope"}"#,
            &addr,
            "grpc.health.v1.Health/Check",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "unknown health service must fail");

    // And a JSON Submit through reflection works as in the README.
    let submit = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"jobs":[{"staticadslab":{"design_template_id":"dt_1","brand_id":"brand_1","product_id":"prod_1","audience_id":"aud_1"}}]}"#,
        &addr,
        "adgate.v1.GatewayService/Submit",
    ]);
    assert!(submit.contains("\"jobIds\""), "{submit}");

    proc.sigterm();
    let st = proc.wait_exit(Duration::from_secs(15)).await;
    assert!(
        st.success(),
        "exit status {st:?}; log:\n{}",
        proc.log_dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_unavailable_exits_zero_and_jobs_survive_restart() {
    // The provider outlives the gateway: a simulator owned by the test, so the restarted
    // process finds the same ads. 0.05: ads take 3 s, long enough to still be running.
    const TS: f64 = 0.05;
    let (_, unused) = http_listener().await;
    let sal = sim(
        STATICADSLAB,
        unused,
        false,
        adgate_sim::SimConfig {
            time_scale: TS,
            job_duration: (Duration::from_secs(60), Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("ADGATE_DATABASE_URL", db_url(&dir)),
        (
            "ADGATE_CONFIG",
            config_file(
                &dir,
                &format!("time_scale = {TS}\ngrace_period_secs = 5\nheartbeat_secs = 0.2\n"),
            ),
        ),
        ("ADGATE_STATICADSLAB_API_KEY", sal.key.clone()),
        ("ADGATE_STATICADSLAB_BASE_URL", sal.handle.base_url.clone()),
    ];
    let mut proc = Proc::spawn(&["serve"], &env);
    let mut client = connect(&proc.grpc).await;
    let reply = submit(
        &mut client,
        (0..5).map(|i| sal_job(&format!("brand_{i}"))).collect(),
    )
    .await;
    let mut stream = client
        .watch_progress(pb::WatchProgressRequest {
            batch_id: reply.batch_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..5 {
        let m = stream.message().await.unwrap().unwrap();
        assert!(m.snapshot);
    }
    // Make sure the ads reached the provider before the signal (in-flight work exists).
    wait_for(
        "5 ads created at the provider",
        Duration::from_secs(10),
        || {
            let n = sal.ledger().creations();
            async move { (n >= 5).then_some(()) }
        },
    )
    .await;

    let signalled = tokio::time::Instant::now();
    proc.sigterm();
    let end = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("stream ends after SIGTERM");
        match m {
            Ok(Some(msg)) => {
                if let Some(pb::watch_progress_response::Event::Job(j)) = msg.event {
                    assert!(!is_terminal(&j), "ads take 3 s; {j:?}");
                }
            }
            other => break other,
        }
    };
    let status = end.expect_err("the stream must not end OK: its jobs are not terminal");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let st = proc.wait_exit(Duration::from_secs(5 + 2)).await;
    assert_eq!(st.code(), Some(0), "log:\n{}", proc.log_dump());
    println!("SIGTERM → exit 0 in {:?}", signalled.elapsed());
    drop(proc);

    // Restart on the same database: every job is there and completes, charged once.
    let proc = Proc::spawn(&["serve"], &env);
    let mut client = connect(&proc.grpc).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    assert_eq!(jobs.len(), 5);
    for j in &jobs {
        assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
        assert_eq!(j.outputs.len(), 1, "{j:?}");
    }
    let one = get_job(&mut client, &reply.job_ids[0]).await;
    assert_eq!(one.id, reply.job_ids[0]);
    assert_eq!(sal.ledger().creations(), 5, "no ad created twice");
    assert!(sal.ledger().charges_by_job().values().all(|&n| n == 1));
}

/// One invalid job per row, at index 1 behind a valid job.
fn bad_jobs() -> Vec<(&'static str, pb::JobSpec, &'static str)> {
    use pb::job_spec::Provider;
    let sal = |f: &dyn Fn(&mut pb::StaticAdsLabImageAd)| {
        let mut j = sal_job("brand_1");
        if let Some(Provider::Staticadslab(m)) = &mut j.provider {
            f(m);
        }
        j
    };
    let pic = |f: &dyn Fn(&mut pb::PictifyRender)| {
        let mut j = pictify_job("tmpl_a", "Ada");
        if let Some(Provider::Pictify(m)) = &mut j.provider {
            f(m);
        }
        j
    };
    let aby = |f: &dyn Fn(&mut pb::AbyssaleGeneration)| {
        let mut j = abyssale_job(&["facebook-feed"]);
        if let Some(Provider::Abyssale(m)) = &mut j.provider {
            f(m);
        }
        j
    };
    let env = |f: &dyn Fn(&mut pb::JobSpec)| {
        let mut j = sal_job("brand_1");
        f(&mut j);
        j
    };
    vec![
        (
            "missing oneof",
            pb::JobSpec {
                client_ref: "x".into(),
                ..Default::default()
            },
            "jobs[1].provider",
        ),
        (
            "prod_ id as brand_id",
            sal(&|m| m.brand_id = "prod_1".into()),
            "jobs[1].staticadslab.brand_id",
        ),
        (
            "empty design_template_id",
            sal(&|m| m.design_template_id.clear()),
            "jobs[1].staticadslab.design_template_id",
        ),
        (
            "oversized prompt",
            sal(&|m| m.prompt = "p".repeat(4001)),
            "jobs[1].staticadslab.prompt",
        ),
        (
            "NaN quality",
            pic(&|m| m.quality = Some(f64::NAN)),
            "jobs[1].pictify.quality",
        ),
        (
            "quality 1.5",
            pic(&|m| m.quality = Some(1.5)),
            "jobs[1].pictify.quality",
        ),
        (
            "bad layout",
            pic(&|m| m.layout = "Not A Layout!".into()),
            "jobs[1].pictify.layout",
        ),
        (
            "non-UUID design_id",
            aby(&|m| m.design_id = "design-123".into()),
            "jobs[1].abyssale.design_id",
        ),
        (
            "duplicate format names",
            aby(&|m| m.format_names = vec!["facebook-feed".into(), "facebook-feed".into()]),
            "jobs[1].abyssale.format_names[1]",
        ),
        (
            "compression 101",
            aby(&|m| m.file_compression_level = 101),
            "jobs[1].abyssale.file_compression_level",
        ),
        (
            "compression -1",
            aby(&|m| m.file_compression_level = -1),
            "jobs[1].abyssale.file_compression_level",
        ),
        (
            "too-long client_ref",
            env(&|j| j.client_ref = "r".repeat(257)),
            "jobs[1].client_ref",
        ),
        (
            "too many labels",
            env(&|j| {
                j.labels = (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect();
            }),
            "jobs[1].labels",
        ),
        (
            "deadline 0",
            env(&|j| j.deadline = Some(prost_types::Duration::default())),
            "jobs[1].deadline",
        ),
        (
            "deadline 25 h",
            env(&|j| {
                j.deadline = Some(prost_types::Duration {
                    seconds: 25 * 3600,
                    nanos: 0,
                });
            }),
            "jobs[1].deadline",
        ),
    ]
}

fn violations(s: &tonic::Status) -> Vec<String> {
    let d = s.get_error_details();
    assert_eq!(
        d.error_info().map(|i| i.reason.as_str()),
        Some("INVALID_JOB_SPEC"),
        "{s:?}"
    );
    d.bad_request()
        .expect("BadRequest details")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_matrix_is_invalid_argument_with_field_paths_and_stores_nothing() {
    const TS: f64 = 0.05;
    let (http, http_addr) = http_listener().await;
    let sal = sim(STATICADSLAB, http_addr, false, sim_config(TS)).await;
    let pic = sim(PICTIFY, http_addr, false, sim_config(TS)).await;
    let aby = sim(ABYSSALE, http_addr, false, sim_config(TS)).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        GatewayOpts {
            time_scale: TS,
            webhooks: false,
            toml: "",
            database_url: db_url(&dir),
        },
        http,
        &[&sal, &pic, &aby],
    )
    .await;
    let mut client = gw.client().await;

    let mut cases: Vec<(&str, pb::SubmitRequest, String)> = bad_jobs()
        .into_iter()
        .map(|(name, bad, field)| {
            (
                name,
                pb::SubmitRequest {
                    request_id: format!("req-{name}"),
                    jobs: vec![sal_job("brand_ok"), bad],
                    ..Default::default()
                },
                field.to_owned(),
            )
        })
        .collect();
    cases.push((
        "request_id too long",
        pb::SubmitRequest {
            request_id: "r".repeat(129),
            jobs: vec![sal_job("brand_1")],
            ..Default::default()
        },
        "request_id".into(),
    ));
    cases.push(("0 jobs", pb::SubmitRequest::default(), "jobs".into()));
    cases.push((
        "too many jobs",
        pb::SubmitRequest {
            request_id: String::new(),
            jobs: vec![sal_job("brand_1"); adgate::config::DEFAULT_MAX_JOBS_PER_SUBMIT + 1],
            ..Default::default()
        },
        "jobs".into(),
    ));

    for (name, req, field) in cases {
        let err = client.submit(req).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        let fields = violations(&err);
        assert!(
            fields.contains(&field),
            "{name}: violations {fields:?} should name {field}"
        );
        assert!(
            !fields.iter().any(|f| f.starts_with("jobs[0]")),
            "{name}: the valid job was blamed: {fields:?}"
        );
        let stored = gw.stored_jobs().await;
        assert!(
            stored.values().all(|&n| n == 0),
            "{name}: stored {stored:?}"
        );
    }
    // Nothing reached a provider, and a refused request_id was not burned.
    for s in [&sal, &pic, &aby] {
        assert_eq!(s.ledger().total_requests(), 0, "{}", s.name);
    }
    let ok = client
        .submit(pb::SubmitRequest {
            request_id: "req-NaN quality".into(),
            jobs: vec![sal_job("brand_ok"), pictify_job("tmpl_a", "Ada")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ok.replayed);
    assert_eq!(batch(&mut client, &ok.batch_id).await.len(), 2);
    let stored: i64 = gw.stored_jobs().await.values().sum();
    assert_eq!(stored, 2, "only the valid submit is stored");
    gw.stop().await;
}
