//! Hostile callers and hostile webhook senders against the real binary (SPEC §7: bad input
//! never panics the server and never changes stored state), caller authentication on every
//! RPC, secrets never printed, and the Python example client end to end.
//!
//! The issue-3 validation matrix lives in `tests/e2e_server.rs`; this file covers what an
//! attacker or a broken client sends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use adgate_generator::signature;
use support::*;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const TOKEN: &str = "caller-token-Zq81xVw3";
const SCALE: f64 = 0.05;

fn bearer<T>(mut req: tonic::Request<T>, token: &str) -> tonic::Request<T> {
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    req
}

/// Jobs in the store, from `/metrics` (the gauge is refreshed from the store per scrape).
async fn stored_jobs(http: &str) -> f64 {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_sum(&text, "adgate_jobs{", &[])
}

async fn start(tag: &str, extra_env: &[(&str, &str)]) -> (Sims, GatewaySpec, Gateway) {
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, tag, |_, _| {}).await;
    let mut env = sims.env();
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let spec = GatewaySpec::new(http_port, &format!("time_scale = {SCALE}\n"), env);
    let gw = spec.spawn();
    connect_with_token(&spec.grpc_url()).await;
    (sims, spec, gw)
}

async fn connect_with_token(url: &str) -> GatewayServiceClient<Channel> {
    let start = std::time::Instant::now();
    loop {
        if let Ok(mut c) = GatewayServiceClient::connect(url.to_owned()).await
            && c.list_providers(bearer(
                tonic::Request::new(pb::ListProvidersRequest {}),
                TOKEN,
            ))
            .await
            .is_ok()
        {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wrap<T>(token: Option<&str>, r: T) -> tonic::Request<T> {
    match token {
        Some(t) => bearer(tonic::Request::new(r), t),
        None => tonic::Request::new(r),
    }
}

fn submit(jobs: Vec<pb::JobSpec>) -> pb::SubmitRequest {
    pb::SubmitRequest {
        request_id: String::new(),
        jobs,
        ..Default::default()
    }
}

fn pictify_quality(q: f64) -> pb::JobSpec {
    let mut j = pictify_job(1);
    if let Some(pb::job_spec::Provider::Pictify(p)) = &mut j.provider {
        p.quality = Some(q);
    }
    j
}

/// Table-driven hostile gRPC input: each case → the documented code with a useful message,
/// and the store stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_grpc_input_and_webhooks() {
    let (sims, spec, mut gw) = start("hostile", &[("ADGATE_AUTH_TOKENS", TOKEN)]).await;
    let mut c = connect_with_token(&spec.grpc_url()).await;
    let c = &mut c;
    let mut c = c.clone().max_decoding_message_size(64 << 20);

    let mut sal_bad_prefix = sal_job(1);
    if let Some(pb::job_spec::Provider::Staticadslab(s)) = &mut sal_bad_prefix.provider {
        s.brand_id = "prod_wrong".into();
        s.design_template_id = "brand_x".into();
    }
    let mut sal_empty = sal_job(1);
    if let Some(pb::job_spec::Provider::Staticadslab(s)) = &mut sal_empty.provider {
        s.brand_id.clear();
    }
    let mut sal_huge_prompt = sal_job(1);
    if let Some(pb::job_spec::Provider::Staticadslab(s)) = &mut sal_huge_prompt.provider {
        s.prompt = "x".repeat(100_000);
    }
    let mut aby_long_design = abyssale_job(1);
    if let Some(pb::job_spec::Provider::Abyssale(a)) = &mut aby_long_design.provider {
        a.design_id = "d".repeat(10_000);
    }
    // An enum number the proto does not define, as prost encodes it on the wire.
    let mut unknown_enum = pictify_job(1);
    if let Some(pb::job_spec::Provider::Pictify(p)) = &mut unknown_enum.provider {
        p.format = 99;
    }
    let bytes = prost::Message::encode_to_vec(&submit(vec![unknown_enum.clone()]));
    let decoded: pb::SubmitRequest = prost::Message::decode(bytes.as_slice()).unwrap();
    let mut huge_ref = sal_job(1);
    huge_ref.client_ref = "r".repeat(5 << 20);

    let cases: Vec<(&str, pb::SubmitRequest, &[Code], &str)> = vec![
        ("no jobs", submit(vec![]), &[Code::InvalidArgument], "jobs"),
        (
            "missing oneof",
            submit(vec![pb::JobSpec::default()]),
            &[Code::InvalidArgument],
            "jobs[0].provider",
        ),
        (
            "wrong id prefixes",
            submit(vec![sal_bad_prefix]),
            &[Code::InvalidArgument],
            "brand_id",
        ),
        (
            "empty id",
            submit(vec![sal_empty]),
            &[Code::InvalidArgument],
            "brand_id",
        ),
        (
            "oversized prompt",
            submit(vec![sal_huge_prompt]),
            &[Code::InvalidArgument],
            "prompt",
        ),
        (
            "oversized design id",
            submit(vec![aby_long_design]),
            &[Code::InvalidArgument],
            "design_id",
        ),
        (
            "too many jobs",
            submit((0..10_001).map(|_| pb::JobSpec::default()).collect()),
            &[Code::InvalidArgument],
            "jobs",
        ),
        (
            "NaN quality",
            submit(vec![pictify_quality(f64::NAN)]),
            &[Code::InvalidArgument],
            "quality",
        ),
        (
            "quality out of range",
            submit(vec![pictify_quality(7.5)]),
            &[Code::InvalidArgument],
            "quality",
        ),
        (
            "unknown enum value",
            decoded,
            &[Code::InvalidArgument],
            "format",
        ),
        (
            "request_id too long",
            pb::SubmitRequest {
                request_id: "q".repeat(10_000),
                jobs: vec![sal_job(1)],
                ..Default::default()
            },
            &[Code::InvalidArgument],
            "request_id",
        ),
        (
            "message over 4 MiB",
            submit(vec![huge_ref]),
            &[Code::OutOfRange, Code::ResourceExhausted],
            "",
        ),
    ];
    for (name, req, codes, field) in cases {
        let err = c
            .submit(bearer(tonic::Request::new(req), TOKEN))
            .await
            .expect_err(name);
        assert!(
            codes.contains(&err.code()),
            "{name}: got {:?} {}",
            err.code(),
            err.message()
        );
        assert!(!err.message().is_empty(), "{name}: empty message");
        if !field.is_empty() {
            let fields: Vec<String> = tonic_types::StatusExt::get_details_bad_request(&err)
                .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
                .unwrap_or_default();
            let detail = format!("{} {fields:?}", err.message());
            assert!(
                detail.contains(field),
                "{name}: error does not name {field}: {detail}"
            );
        }
        println!(
            "{name}: {:?} {}",
            err.code(),
            err.message().chars().take(120).collect::<String>()
        );
    }

    // Garbage and oversized metadata: refused (or the stream reset), never a crash.
    let mut req = bearer(
        tonic::Request::new(pb::GetJobRequest {
            job_id: "job_x".into(),
        }),
        TOKEN,
    );
    req.metadata_mut().insert(
        "x-garbage",
        MetadataValue::try_from("\u{7f}ÿ".replace('ÿ', "y"))
            .unwrap_or(MetadataValue::from_static("z")),
    );
    req.metadata_mut().insert_bin(
        "x-bin-bin",
        tonic::metadata::MetadataValue::from_bytes(&[0, 1, 2, 255]),
    );
    assert_eq!(
        c.get_job(req).await.unwrap_err().code(),
        Code::NotFound,
        "garbage metadata is ignored"
    );
    let mut req = bearer(
        tonic::Request::new(pb::GetJobRequest {
            job_id: "job_x".into(),
        }),
        TOKEN,
    );
    req.metadata_mut().insert(
        "x-huge",
        MetadataValue::try_from("h".repeat(1 << 20)).unwrap(),
    );
    let huge = c.get_job(req).await.expect_err("1 MiB of metadata");
    println!("oversized metadata: {:?} {}", huge.code(), huge.message());
    // Oversized headers end that HTTP/2 connection; carry on over a fresh one.
    let c = &mut connect_with_token(&spec.grpc_url()).await;
    let mut req = bearer(
        tonic::Request::new(pb::GetJobRequest {
            job_id: "job_x".into(),
        }),
        TOKEN,
    );
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from("Bearer \t junk").unwrap(),
    );
    assert_eq!(
        c.get_job(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // WatchProgress: unknown ids → NOT_FOUND; 100,000 ids → INVALID_ARGUMENT.
    let c2 = &mut connect_with_token(&spec.grpc_url()).await;
    let err = c2
        .watch_progress(bearer(
            tonic::Request::new(pb::WatchProgressRequest {
                job_ids: vec!["job_doesnotexist".into()],
                batch_id: String::new(),
            }),
            TOKEN,
        ))
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(
        err.message().contains("job_doesnotexist"),
        "{}",
        err.message()
    );
    let err = c2
        .watch_progress(bearer(
            tonic::Request::new(pb::WatchProgressRequest {
                job_ids: (0..100_000).map(|i| format!("job_{i:020}")).collect(),
                batch_id: String::new(),
            }),
            TOKEN,
        ))
        .await
        .expect_err("100k ids");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("job_ids"), "{}", err.message());
    let err = c2
        .get_job(bearer(
            tonic::Request::new(pb::GetJobRequest {
                job_id: "job_nope".into(),
            }),
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Webhooks: every hostile delivery → the right status, nothing changes.
    let http = spec.http_url();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = br#"{"event":"render.completed","timestamp":"2026-01-01T00:00:00Z","data":{"templateId":"tmpl_reliability","variables":{"n":"item-1"},"url":"http://evil.example/x.png"}}"#;
    let psecret = sims.accounts["pictify"].webhook_secret.as_bytes().to_vec();
    let asecret = sims.accounts["abyssale"].webhook_secret.as_bytes().to_vec();
    let aby_body = br#"{"generation_request_id":"497f6eca-6276-4993-bfeb-53cbbbba6f08","is_finalized":true,"banners":[]}"#;
    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        Option<String>,
        &'static str,
        u16,
    );
    let webhook_cases: Vec<Case> = vec![
        (
            "forged",
            "pictify",
            body.to_vec(),
            Some(signature::header_value(b"not-the-secret", "", now, body)),
            "application/json",
            401,
        ),
        (
            "stale",
            "pictify",
            body.to_vec(),
            Some(signature::header_value(&psecret, "", now - 3600, body)),
            "application/json",
            401,
        ),
        (
            "future-dated",
            "pictify",
            body.to_vec(),
            Some(signature::header_value(&psecret, "", now + 3600, body)),
            "application/json",
            401,
        ),
        (
            "unsigned",
            "pictify",
            body.to_vec(),
            None,
            "application/json",
            401,
        ),
        (
            "oversized",
            "pictify",
            vec![b' '; 2 << 20],
            Some(signature::header_value(&psecret, "", now, b"{}")),
            "application/json",
            413,
        ),
        (
            "wrong content type",
            "pictify",
            body.to_vec(),
            Some(signature::header_value(&psecret, "", now, body)),
            "text/plain",
            415,
        ),
        (
            "signed, not JSON",
            "pictify",
            b"this is not json".to_vec(),
            Some(signature::header_value(
                &psecret,
                "",
                now,
                b"this is not json",
            )),
            "application/json",
            400,
        ),
        (
            "abyssale forged",
            "abyssale",
            aby_body.to_vec(),
            Some(signature::header_value(
                b"nope",
                adgate_abyssale::SIGNATURE_PREFIX,
                now,
                aby_body,
            )),
            "application/json",
            401,
        ),
        (
            "abyssale signed, not JSON",
            "abyssale",
            b"\xff\xfe garbage".to_vec(),
            Some(signature::header_value(
                &asecret,
                adgate_abyssale::SIGNATURE_PREFIX,
                now,
                b"\xff\xfe garbage",
            )),
            "application/json",
            400,
        ),
        (
            "unknown provider",
            "nosuch",
            body.to_vec(),
            None,
            "application/json",
            404,
        ),
    ];
    // No connection reuse: after an early 413 the listener closes the connection without
    // reading the body, and a pooled client would send the next case into that dead socket.
    let web = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for (name, provider, body, sig, ctype, want) in webhook_cases {
        let header = if provider == "abyssale" {
            "x-abyssale-signature"
        } else {
            "x-pictify-signature"
        };
        let mut r = web
            .post(format!("{http}/webhooks/{provider}"))
            .header("content-type", ctype)
            .header("x-pictify-event", "render.completed")
            .body(body);
        if let Some(s) = sig {
            r = r.header(header, s);
        }
        let resp = match r.send().await {
            Ok(resp) => resp,
            // The listener answers 413 from Content-Length and closes without reading the
            // body, so the client may see its upload cut (broken pipe) before the answer.
            Err(e) if want == 413 && e.is_request() => {
                println!("webhook {name}: refused before the body was read ({e})");
                continue;
            }
            Err(e) => panic!("webhook {name}: {e}"),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, want, "webhook {name}: {text}");
        println!(
            "webhook {name}: {status} {}",
            text.chars().take(100).collect::<String>()
        );
    }

    assert_eq!(stored_jobs(&http).await, 0.0, "hostile input stored jobs");
    assert!(gw.child.try_wait().unwrap().is_none(), "gateway died");
    gw.sigterm();
    let st = gw.wait_exit(Duration::from_secs(15)).await.expect("exit");
    assert!(st.success(), "exit status {st:?}");
    assert!(!spec.log_text().contains("panicked"), "panic in log");
    sims.shutdown();
}

/// With `ADGATE_AUTH_TOKENS`, all seven GatewayService RPCs refuse a missing or wrong token with
/// UNAUTHENTICATED; health and reflection answer without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_auth_on_every_rpc_but_not_health_or_reflection() {
    let (sims, spec, gw) = start(
        "auth",
        &[("ADGATE_AUTH_TOKENS", &format!("other-token,{TOKEN}"))],
    )
    .await;
    let ch = Channel::from_shared(spec.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = GatewayServiceClient::new(ch.clone());
    for token in [None, Some("wrong-token"), Some("")] {
        let codes = [
            c.submit(wrap(token, submit(vec![sal_job(1)])))
                .await
                .err()
                .map(|e| e.code()),
            c.batch_status(wrap(
                token,
                pb::BatchStatusRequest {
                    job_ids: vec!["job_x".into()],
                    batch_id: String::new(),
                },
            ))
            .await
            .err()
            .map(|e| e.code()),
            c.get_job(wrap(
                token,
                pb::GetJobRequest {
                    job_id: "job_x".into(),
                },
            ))
            .await
            .err()
            .map(|e| e.code()),
            c.cancel_job(wrap(
                token,
                pb::CancelJobRequest {
                    job_id: "job_x".into(),
                },
            ))
            .await
            .err()
            .map(|e| e.code()),
            c.cancel_batch(wrap(
                token,
                pb::CancelBatchRequest {
                    batch_id: "bat_x".into(),
                },
            ))
            .await
            .err()
            .map(|e| e.code()),
            c.list_providers(wrap(token, pb::ListProvidersRequest {}))
                .await
                .err()
                .map(|e| e.code()),
            c.watch_progress(wrap(
                token,
                pb::WatchProgressRequest {
                    job_ids: vec!["job_x".into()],
                    batch_id: String::new(),
                },
            ))
            .await
            .err()
            .map(|e| e.code()),
        ];
        assert_eq!(codes, [Some(Code::Unauthenticated); 7], "token {token:?}");
    }
    // The right token passes the interceptor (the RPC then answers on its own merits).
    let ok = c
        .get_job(bearer(
            tonic::Request::new(pb::GetJobRequest {
                job_id: "job_x".into(),
            }),
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(ok.code(), Code::NotFound);

    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer {msg:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"adgate.v1.GatewayService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    drop(gw);
    sims.shutdown();
}

/// Distinctive provider keys, webhook secrets and caller tokens never appear in anything the
/// binary prints: start-up, Submit, a webhook rejection, an auth failure, provider errors
/// (a wrong key at one provider), `--help`, and a bad-config failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_output() {
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "secret", |_, _| {}).await;
    let mut env = sims.env();
    // StaticAdsLab gets a key the simulator refuses: provider auth errors get logged.
    let bad_key = "sal_WRONG_key_Qm4t9bXr2";
    for (k, v) in env.iter_mut() {
        if k == "ADGATE_STATICADSLAB_API_KEY" {
            *v = bad_key.to_owned();
        }
    }
    env.push(("ADGATE_AUTH_TOKENS".into(), TOKEN.into()));
    env.push(("RUST_LOG".into(), "debug".into()));
    let spec = GatewaySpec::new(http_port, &format!("time_scale = {SCALE}\n"), env.clone());
    let mut gw = spec.spawn();
    let mut c = connect_with_token(&spec.grpc_url()).await;
    let reply = c
        .submit(bearer(
            tonic::Request::new(submit(vec![sal_job(1), pictify_job(1), abyssale_job(1)])),
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let _ = c
        .get_job(bearer(
            tonic::Request::new(pb::GetJobRequest {
                job_id: "job_x".into(),
            }),
            "wrong-token-Hx9",
        ))
        .await;
    let _ = reqwest::Client::new()
        .post(format!("{}/webhooks/pictify", spec.http_url()))
        .header("content-type", "application/json")
        .header("x-pictify-signature", "t=1,v1=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    wait_for("jobs terminal", Duration::from_secs(30), || {
        let mut c = c.clone();
        let ids = reply.job_ids.clone();
        async move {
            let mut r = tonic::Request::new(pb::BatchStatusRequest {
                job_ids: ids,
                batch_id: String::new(),
            });
            r = bearer(r, TOKEN);
            c.batch_status(r)
                .await
                .is_ok_and(|r| r.into_inner().jobs.iter().all(is_terminal))
        }
    })
    .await;
    gw.sigterm();
    gw.wait_exit(Duration::from_secs(15)).await.expect("exit");

    // --help, and a bad config (an unknown provider section next to a key in the file).
    let mut outputs = vec![spec.log_text()];
    for args in [vec!["--help"], vec!["serve", "--help"]] {
        let o = std::process::Command::new(BIN)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .output()
            .unwrap();
        outputs.push(
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        );
    }
    let bad = spec.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "auth_tokens = [\"{TOKEN}\"]\n[providers.pictify]\napi_key = \"{}\"\nrequests = 0\n",
            sims.accounts["pictify"].api_key
        ),
    )
    .unwrap();
    let o = std::process::Command::new(BIN)
        .args(["serve", "--config", bad.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .env("ADGATE_GRPC_ADDR", "not-an-address")
        .output()
        .unwrap();
    assert!(!o.status.success(), "bad config accepted");
    let bad_out = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        bad_out.trim().lines().count(),
        1,
        "bad config: not one line: {bad_out}"
    );
    outputs.push(bad_out + &String::from_utf8_lossy(&o.stdout));

    let mut secrets = vec![TOKEN.to_owned(), bad_key.to_owned()];
    for a in sims.accounts.values() {
        secrets.push(a.api_key.clone());
        secrets.push(a.webhook_secret.clone());
    }
    let all = outputs.join("\n");
    assert!(all.len() > 1000, "suspiciously little output captured");
    for s in &secrets {
        // On failure, say where: the line, with the secret masked.
        if let Some(line) = all.lines().find(|l| l.contains(s.as_str())) {
            panic!(
                "a secret appears in output: {}",
                line.replace(s.as_str(), "<SECRET>")
            );
        }
    }
    println!(
        "secrets: {} secrets absent from {} bytes of output",
        secrets.len(),
        all.len()
    );
    sims.shutdown();
}

/// The Python example against the real binary in sandbox mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_submits_and_watches() {
    let root = env!("CARGO_MANIFEST_DIR");
    let py = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    match py {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "python3 with grpcio and grpcio-tools is required for this test \
             (pip install grpcio-tools); CI installs it"
        ),
    }
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let http_port = free_port();
    let env = vec![
        (
            "ADGATE_GRPC_ADDR".to_owned(),
            format!("127.0.0.1:{grpc_port}"),
        ),
        (
            "ADGATE_HTTP_ADDR".to_owned(),
            format!("127.0.0.1:{http_port}"),
        ),
        (
            "ADGATE_DATABASE_URL".to_owned(),
            format!("sqlite://{}", dir.path().join("a.db").display()),
        ),
    ];
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = run_binary(
        &["serve".to_owned(), "--sandbox".to_owned()],
        &env,
        log.try_clone().unwrap(),
        log,
    );
    let url = format!("http://127.0.0.1:{grpc_port}");
    connect(&url, Duration::from_secs(20)).await;
    let generated = std::process::Command::new("bash")
        .arg(format!("{root}/examples/python/generate.sh"))
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "generate.sh failed: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(format!("{root}/examples/python/submit_and_watch.py"))
            .args([
                "--target",
                &format!("127.0.0.1:{grpc_port}"),
                "--timeout",
                "60",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "submit_and_watch.py failed:\n{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.contains("batch "), "{out}");
}
