//! OpenTelemetry traces and gRPC latency metrics of the real binary (issue 19), against an
//! in-process OTLP/gRPC receiver: a caller's `traceparent` continues into the Submit's server
//! span; provider HTTP client spans exist and their calls link back to that Submit; job
//! lifecycle events are recorded; `grpc_server_call_duration_seconds` is in `/metrics`; and
//! with no endpoint configured nothing is exported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use adgate::pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use support::*;
use tonic::metadata::MetadataValue;

const SCALE: f64 = 0.05;
/// The caller's trace and span, as its own tracer would send them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// Everything exported to the receiver: each request, and each span with its resource's
/// `service.name`.
#[derive(Default, Clone)]
struct Received {
    requests: Arc<Mutex<usize>>,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        *self.requests.lock().unwrap() += 1;
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Received {
    /// Serve OTLP/gRPC on `addr` (port 0: any) until the test ends; returns the bound port.
    async fn serve(&self, addr: &str) -> u16 {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot bind the OTLP receiver on {addr}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let svc = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        port
    }

    /// The first span matching `pred`, waiting (bounded) for the exporter's next batches.
    async fn wait_span(&self, what: &str, pred: impl Fn(&Span) -> bool) -> Span {
        self.wait(what, |spans| spans.iter().find(|s| pred(s)).cloned())
            .await
    }

    /// What `found` finds among every span received so far, waiting (bounded) for it.
    async fn wait<T>(&self, what: &str, found: impl Fn(&[Span]) -> Option<T>) -> T {
        let start = std::time::Instant::now();
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|(_, s)| s.clone())
                .collect();
            if let Some(t) = found(&spans) {
                return t;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{} ({})", s.name, hex(&s.trace_id)))
                    .collect();
                panic!("timed out waiting for {what}; spans received: {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn has_event(span: &Span, name: &str, job_id: &str) -> bool {
    span.events.iter().any(|e| {
        e.name == name && string_attr(&e.attributes, "adgate.job.id").as_deref() == Some(job_id)
    })
}

fn links_to(span: &Span, trace_id: &str, span_id: &[u8]) -> bool {
    span.links
        .iter()
        .any(|l| hex(&l.trace_id) == trace_id && l.span_id == span_id)
}

async fn metrics(spec: &GatewaySpec) -> String {
    reqwest::get(format!("{}/metrics", spec.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_continues_the_callers_trace_and_its_provider_calls_link_back() {
    let received = Received::default();
    let otlp_port = received.serve("127.0.0.1:0").await;
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "otel", |_, _| {}).await;
    let mut env = sims.env();
    for (k, v) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{otlp_port}"),
        ),
        ("OTEL_SERVICE_NAME", "adgate-trace-test".to_owned()),
        // Export every 100 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ] {
        env.push((k.to_owned(), v));
    }
    let spec = GatewaySpec::new(http_port, &format!("time_scale = {SCALE}\n"), env);
    let mut gw = spec.spawn();
    let mut client = spec.connect(&mut gw, Duration::from_secs(30)).await;

    // StaticAdsLab is polled (and streamed); Pictify reports by webhook.
    let mut req = tonic::Request::new(pb::SubmitRequest {
        jobs: vec![sal_job(1), pictify_job(2), sal_job(3)],
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{TRACE_ID}-{PARENT_ID}-01")).unwrap(),
    );
    req.metadata_mut()
        .insert("tracestate", MetadataValue::from_static("caller=7"));
    // StaticAdsLab refuses the next request once (429): its span records the error.
    sims.get("staticadslab").update_faults(|f| f.burst_429 = 1);
    let reply = client.submit(req).await.unwrap().into_inner();
    let (sal, pictify, polled) = (
        reply.job_ids[0].clone(),
        reply.job_ids[1].clone(),
        reply.job_ids[2].clone(),
    );
    // Watching the ad makes the gateway follow it on StaticAdsLab's push stream too.
    let mut watch = client
        .watch_progress(pb::WatchProgressRequest {
            job_ids: vec![sal.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(60), async {
        while watch.message().await.unwrap().is_some() {}
    })
    .await
    .expect("the watch ends when the ad is done");
    wait_all_terminal(
        &client,
        &reply.job_ids,
        Duration::from_secs(60),
        "the traced jobs",
        &spec,
    )
    .await;
    let missing = client
        .get_job(pb::GetJobRequest {
            job_id: "job_does_not_exist".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // The Submit's server span continues the caller's trace, with the RPC conventions.
    let submit = received
        .wait_span("the Submit server span", |s| {
            s.name == "adgate.v1.GatewayService/Submit" && hex(&s.trace_id) == TRACE_ID
        })
        .await;
    assert_eq!(
        hex(&submit.parent_span_id),
        PARENT_ID,
        "parented by the caller's span"
    );
    assert_eq!(submit.kind, SpanKind::Server as i32);
    let a = &submit.attributes;
    assert_eq!(string_attr(a, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        string_attr(a, "rpc.service").as_deref(),
        Some("adgate.v1.GatewayService")
    );
    assert_eq!(string_attr(a, "rpc.method").as_deref(), Some("Submit"));
    assert_eq!(int_attr(a, "rpc.grpc.status_code"), Some(0));
    assert_eq!(
        string_attr(a, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        int_attr(a, "server.port"),
        Some(i64::from(spec.grpc_port)),
        "{a:?}"
    );
    assert_eq!(
        submit.trace_state, "caller=7",
        "the caller's tracestate is kept"
    );
    assert!(
        has_event(&submit, "job submitted", &sal),
        "{:?}",
        submit.events
    );
    let service = received
        .spans
        .lock()
        .unwrap()
        .iter()
        .find(|(_, s)| s.span_id == submit.span_id)
        .map(|(svc, _)| svc.clone());
    assert_eq!(
        service.as_deref(),
        Some("adgate-trace-test"),
        "OTEL_SERVICE_NAME"
    );

    // A failed call records its status on its span.
    let not_found = received
        .wait_span("the GetJob server span", |s| {
            s.name == "adgate.v1.GatewayService/GetJob"
        })
        .await;
    assert_eq!(
        int_attr(&not_found.attributes, "rpc.grpc.status_code"),
        Some(tonic::Code::NotFound as i64)
    );

    // The StaticAdsLab submit calls: traces of their own, linked to the Submit, with the job's
    // "sent" and "processing" events and their HTTP requests as child client spans. The
    // first POST was refused (429) and retried.
    let sal_port: i64 = sims
        .get("staticadslab")
        .base_url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (sal_submit, post) = received
        .wait(
            "an accepted StaticAdsLab POST in a submit call linked to the Submit",
            |spans| {
                spans
                    .iter()
                    .filter(|s| {
                        s.name == "staticadslab submit"
                            && links_to(s, TRACE_ID, &submit.span_id)
                            && has_event(s, "job sent to the provider", &sal)
                    })
                    .find_map(|call| {
                        let post = spans.iter().find(|s| {
                            s.kind == SpanKind::Client as i32
                                && s.parent_span_id == call.span_id
                                && int_attr(&s.attributes, "http.response.status_code")
                                    .is_some_and(|c| (200..300).contains(&c))
                        })?;
                        Some((call.clone(), post.clone()))
                    })
            },
        )
        .await;
    assert!(
        has_event(&sal_submit, "job processing", &sal),
        "{:?}",
        sal_submit.events
    );
    assert_eq!(post.trace_id, sal_submit.trace_id);
    let a = &post.attributes;
    assert_eq!(
        string_attr(a, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        string_attr(a, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(int_attr(a, "server.port"), Some(sal_port));
    let url = string_attr(a, "url.full").unwrap();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{sal_port}/")),
        "{url}"
    );
    assert!(string_attr(a, "error.type").is_none());
    let refused = received
        .wait_span("the refused StaticAdsLab request", |s| {
            s.kind == SpanKind::Client as i32
                && int_attr(&s.attributes, "http.response.status_code") == Some(429)
        })
        .await;
    assert_eq!(int_attr(&refused.attributes, "server.port"), Some(sal_port));
    assert_eq!(
        string_attr(&refused.attributes, "error.type").as_deref(),
        Some("429")
    );
    assert_eq!(
        refused.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    // No provider request span carries a key or a query string.
    let keys: Vec<String> = sims.accounts.values().map(|a| a.api_key.clone()).collect();
    for (_, s) in received.spans.lock().unwrap().iter() {
        if let Some(url) = string_attr(&s.attributes, "url.full") {
            assert!(!url.contains('?'), "{url}");
            assert!(
                keys.iter().all(|k| !url.contains(k.as_str())),
                "a key in {url}"
            );
        }
    }

    // The stream the gateway followed for the watched ad, and the watch itself.
    received
        .wait_span("the StaticAdsLab stream linked to the Submit", |s| {
            s.name == "staticadslab stream" && links_to(s, TRACE_ID, &submit.span_id)
        })
        .await;
    let watched = received
        .wait_span("the WatchProgress server span", |s| {
            s.name == "adgate.v1.GatewayService/WatchProgress"
        })
        .await;
    assert_eq!(
        int_attr(&watched.attributes, "rpc.grpc.status_code"),
        Some(0)
    );

    // The unwatched ad is polled to its end: the poll that saw it complete is linked to the
    // Submit from the start (as every poll of a job the gateway follows is).
    received
        .wait_span("the poll that completed the unwatched ad", |s| {
            s.name == "staticadslab poll"
                && has_event(s, "job completed", &polled)
                && links_to(s, TRACE_ID, &submit.span_id)
        })
        .await;

    // Later work on each job (a poll, a stream or a webhook) is linked to the Submit and
    // records the job's end.
    for (job, what) in [(&sal, "StaticAdsLab"), (&pictify, "Pictify")] {
        let done = received
            .wait_span(
                &format!("the {what} job's completion, linked to the Submit"),
                |s| has_event(s, "job completed", job) && links_to(s, TRACE_ID, &submit.span_id),
            )
            .await;
        assert_ne!(hex(&done.trace_id), TRACE_ID);
    }

    // Latency by method and status, in gRFC A66's names.
    let text = metrics(&spec).await;
    let count = |method: &str, status: &str| {
        metric_sum(
            &text,
            "grpc_server_call_duration_seconds_count",
            &[
                &format!("grpc_method=\"adgate.v1.GatewayService/{method}\""),
                &format!("grpc_status=\"{status}\""),
            ],
        )
    };
    assert_eq!(count("Submit", "OK"), 1.0, "{text}");
    assert!(count("BatchStatus", "OK") >= 1.0, "{text}");
    assert_eq!(count("WatchProgress", "OK"), 1.0, "{text}");
    assert_eq!(count("GetJob", "NOT_FOUND"), 1.0, "{text}");
    assert!(text.contains("# TYPE grpc_server_call_duration_seconds histogram"));
    assert!(
        text.lines().any(
            |l| l.starts_with("grpc_server_call_duration_seconds_bucket{")
                && l.contains("grpc_method=\"adgate.v1.GatewayService/Submit\"")
                && l.contains("le=\"+Inf\"")
        ),
        "{text}"
    );
    sims.shutdown();
}

/// With `OTEL_SERVICE_NAME` but no endpoint, nothing is exported, not even to the OTLP/gRPC
/// default port on this host (4317, where this receiver listens): checked after the gateway
/// exited, by when an exporter would have flushed everything it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_without_an_endpoint() {
    let received = Received::default();
    received.serve("127.0.0.1:4317").await;
    let http_port = free_port();
    let sims = Sims::start(SCALE, http_port, "nootel", |_, _| {}).await;
    let mut env = sims.env();
    env.push(("OTEL_SERVICE_NAME".to_owned(), "adgate-untraced".to_owned()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()));
    let spec = GatewaySpec::new(http_port, &format!("time_scale = {SCALE}\n"), env);
    let mut gw = spec.spawn();
    let mut client = spec.connect(&mut gw, Duration::from_secs(30)).await;
    let mut req = tonic::Request::new(pb::SubmitRequest {
        jobs: vec![sal_job(1)],
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{TRACE_ID}-{PARENT_ID}-01")).unwrap(),
    );
    let reply = client.submit(req).await.unwrap().into_inner();
    wait_all_terminal(
        &client,
        &reply.job_ids,
        Duration::from_secs(60),
        "the job",
        &spec,
    )
    .await;
    // The latency histogram does not depend on traces.
    let text = metrics(&spec).await;
    assert_eq!(
        metric_sum(
            &text,
            "grpc_server_call_duration_seconds_count",
            &[
                "grpc_method=\"adgate.v1.GatewayService/Submit\"",
                "grpc_status=\"OK\""
            ]
        ),
        1.0,
        "{text}"
    );
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(
        *received.requests.lock().unwrap(),
        0,
        "an export request arrived"
    );
    sims.shutdown();
}
