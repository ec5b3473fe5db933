//! adgate's server: one gRPC API in front of asynchronous ad-image providers (see `providers`).
//!
//! This crate is the thin surface around the engine (`adgate_engine`):
//! - [`cli`]: the client subcommands (`adgate submit|watch|status|download|jobs`) for bulk work.
//! - [`config`]: CLI (`adgate serve`, `adgate sim`), environment (SPEC §5) and TOML settings;
//!   [`config::Secret`] keeps keys and tokens out of logs.
//! - [`providers`]: the provider registry (one row per provider) and limit overrides.
//! - [`sandbox`]: `--sandbox`, the three simulators in-process with webhooks wired back here.
//! - [`service`]: the `adgate.v1.GatewayService` implementation.
//! - [`convert`]: proto messages ↔ the engine's spec JSON and job records.
//! - [`errors`]: the one table from every error to a gRPC (AIP-193) or webhook HTTP status.
//! - [`auth`]: bearer-token caller authentication (per service; health/reflection stay open).
//! - [`health`]: `grpc.health.v1` names for the gateway and each provider.
//! - [`http`]: webhooks, `/metrics`, `/healthz`; [`http_outputs`]: stored outputs (custody).
//! - [`config_custody`]: output custody's `[custody]` table and `ADGATE_CUSTODY_*` variables.
//! - [`console`]: the web console at `/ui` (batches, job cards with images, providers).
//! - [`notify`]: outbound webhook payloads (jobs and batches in the proto JSON mapping).
//! - [`metrics`]: gRPC counters and call latency next to the engine's Prometheus families.
//! - [`telemetry`]: OpenTelemetry traces over OTLP (the standard `OTEL_*` variables).
//! - [`rpc_trace`]: the tower layer giving each gRPC call its span and latency.
//! - [`codec`]: the generated services' codec (prost with a small per-stream encode buffer).
//!
//! [`App::start`] opens the store and starts the engine; [`serve`] runs both listeners until a
//! shutdown future resolves and then drains. Both take already-bound listeners, so tests can
//! bind port 0.

pub mod auth;
pub mod cli;
pub mod codec;
pub mod config;
pub mod config_custody;
pub mod console;
pub mod convert;
pub mod errors;
pub mod filter;
pub mod health;
pub mod http;
pub mod http_outputs;
pub mod metrics;
pub mod notify;
pub mod page_token;
pub mod providers;
pub mod rpc_trace;
pub mod sandbox;
pub mod service;
pub mod spec_json;
pub mod telemetry;

/// Generated protobuf and gRPC code for `adgate.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("adgate.v1");

    /// Descriptor set of `adgate/v1/gateway.proto` and its imports, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("adgate_descriptor");
}

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use adgate_engine::Store;
use adgate_engine::{Engine, EngineConfig, EngineError};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tower_layer::Layer;

use crate::auth::Tokens;
use crate::config::{ConfigError, Settings};
use crate::health::Health;
use crate::metrics::GrpcMetrics;
use crate::pb::gateway_service_server::GatewayServiceServer;
use crate::service::{Gateway, ServiceConfig};

/// Largest gRPC request message (tonic answers OUT_OF_RANGE above it).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Why the gateway could not start or stopped abnormally. Displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open job store: {0}")]
    Store(String),
    #[error("cannot start engine: {0}")]
    Engine(String),
    #[error(
        "replica id {0:?} is in use by another live process on this database; \
         give each process its own ADGATE_REPLICA_ID"
    )]
    ReplicaIdInUse(String),
    #[error("cannot listen on {name} {addr}: {source}")]
    Listen {
        name: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the sandbox simulators: {0}")]
    Sandbox(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(String),
    #[error("HTTP server failed: {0}")]
    Http(String),
    #[error("output custody: {0}")]
    Custody(String),
}

/// A started gateway: store open, engine running, not yet listening.
pub struct App {
    engine: Engine,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    service: ServiceConfig,
    tokens: Tokens,
    grace: Duration,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Build the providers, open the store and start the engine (which resumes stored jobs).
    pub async fn start(settings: &Settings) -> Result<Self, StartError> {
        let providers = providers::build(settings)?;
        // SQLite by default; `postgres://…` lets several replicas act as one gateway.
        let store: Arc<dyn Store> = adgate_engine::open_store(&settings.database_url)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        let shutdown = CancellationToken::new();
        // Where stored outputs are served: their URLs in answers and webhook payloads.
        let outputs_base = settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", settings.http_addr));
        let config = EngineConfig {
            providers,
            max_jobs_per_submit: settings.max_jobs_per_submit,
            lease: settings.lease,
            replica_id: settings.replica_id.clone(),
            kept_event_ttl: settings.kept_event_ttl,
            retention: settings.retention,
            callers: settings.callers.clone(),
            span_link: Some(telemetry::link),
            notify: adgate_engine::notify::NotifyConfig {
                payloads: Some(std::sync::Arc::new(notify::ApiPayloads::new(
                    outputs_base.clone(),
                ))),
                ..settings.notify.clone()
            },
            custody: match &settings.custody.store {
                Some(spec) => {
                    let store = adgate_engine::OutputStore::open(spec)
                        .map_err(|e| StartError::Custody(e.to_string()))?;
                    tracing::info!(store = ?store, "output custody on");
                    Some(settings.custody.engine_config(store))
                }
                None => None,
            },
            ..EngineConfig::default()
        };
        let engine = Engine::start(store.clone(), config, shutdown.clone())
            .await
            .map_err(|e| match e {
                EngineError::ReplicaIdInUse(id) => StartError::ReplicaIdInUse(id),
                other => StartError::Engine(other.to_string()),
            })?;
        Ok(Self {
            engine,
            store,
            shutdown,
            service: ServiceConfig {
                max_watch_streams: settings.max_watch_streams,
                heartbeat: settings.heartbeat,
                outputs_base,
            },
            tokens: Tokens::new(
                settings
                    .auth_tokens
                    .iter()
                    .map(|t| auth::NamedToken::parse(t.expose()))
                    .collect(),
            ),
            grace: settings.grace_period,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Serve gRPC on `grpc` and HTTP on `http` until `shutdown` resolves, then drain: health
/// NOT_SERVING, streams end with UNAVAILABLE, listeners stop, in-flight calls finish within
/// the grace period, and the store is closed.
pub async fn serve(
    grpc: TcpListener,
    http: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let token = app.shutdown.clone();
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| StartError::Grpc(e.to_string()))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| StartError::Http(e.to_string()))?;

    let metrics = GrpcMetrics::default();
    let mut registry = Registry::default();
    app.engine.metrics().register(&mut registry);
    metrics.register(&mut registry);
    let draining = Arc::new(AtomicBool::new(false));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter, app.engine.clone());
    health.refresh().await;
    health.spawn_refresher(token.clone());

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo, BadRequest, …: lets grpcurl print error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Grpc(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Grpc(e.to_string()))?;

    let gateway = Gateway::new(
        app.engine.clone(),
        app.service.clone(),
        token.clone(),
        metrics.clone(),
    );
    // Outside the authentication interceptor, so refused calls are traced and timed too.
    let api = rpc_trace::RpcTraceLayer::new(
        metrics,
        grpc_addr,
        rpc_trace::methods_of(
            pb::FILE_DESCRIPTOR_SET,
            GatewayServiceServer::<Gateway>::NAME,
        ),
    )
    .layer(InterceptedService::new(
        GatewayServiceServer::new(gateway).max_decoding_message_size(MAX_REQUEST_BYTES),
        app.tokens.clone().interceptor(),
    ));
    let max_streams =
        u32::try_from(app.service.max_watch_streams.saturating_add(1024)).unwrap_or(u32::MAX);
    let grpc_server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(max_streams))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc).with_nodelay(Some(true)),
            token.clone().cancelled_owned(),
        );
    let router = http::router(http::HttpState {
        engine: app.engine.clone(),
        registry: Arc::new(registry),
        draining: draining.clone(),
        tokens: app.tokens.clone(),
    });
    let http_server =
        axum::serve(http, router).with_graceful_shutdown(token.clone().cancelled_owned());

    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(async move { http_server.await });
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        providers = %app.engine.provider_names().join(","),
        replica = %app.engine.replica_id(),
        auth = app.tokens.enabled(),
        "adgate serving"
    );

    let mut failure = None;
    let (mut grpc_done, mut http_done) = (false, false);
    tokio::select! {
        () = shutdown => tracing::info!("shutdown requested; draining"),
        r = &mut grpc_task => {
            grpc_done = true;
            failure = Some(StartError::Grpc(join_message(r.map(|r| r.map_err(|e| e.to_string())))));
        }
        r = &mut http_task => {
            http_done = true;
            failure = Some(StartError::Http(join_message(r.map(|r| r.map_err(|e| e.to_string())))));
        }
    }

    // Drain, in order: stop advertising, end streams, stop listening, wait (bounded).
    draining.store(true, Ordering::Release);
    health.drain().await;
    token.cancel();
    let wait = async {
        if !grpc_done {
            let _ = (&mut grpc_task).await;
        }
        if !http_done {
            let _ = (&mut http_task).await;
        }
        // Every engine task ends before the store closes: submits already on their way to a
        // provider record its answer (a provider without idempotency keys could not be asked
        // again), and no poll, webhook or sweep commit meets a closed store.
        app.engine.stopped(app.grace).await;
    };
    let drained = tokio::time::timeout(app.grace, wait).await.is_ok();
    if !drained {
        tracing::warn!(grace = ?app.grace, "grace period over; closing remaining connections");
        grpc_task.abort();
        http_task.abort();
    }
    // Replicas: hand this one's jobs to the others now rather than after its lease lapses
    // (the renewal loop ended with the token). Not after an overrun grace: a submit still
    // under way could be resent by the taker while this process records its answer; keeping
    // the lease only delays the takeover.
    if drained && let Err(e) = app.engine.release_leases().await {
        tracing::warn!(error = %e, "releasing the lease failed; other replicas wait for it to lapse");
    }
    app.store.close().await;
    tracing::info!("adgate stopped");
    failure.map_or(Ok(()), Err)
}

fn join_message(r: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "stopped unexpectedly".to_owned(),
        Ok(Err(e)) => e,
        Err(e) => e.to_string(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// `adgate serve`: bind, start the sandbox if asked, start the engine, serve until a signal.
pub async fn run(mut settings: Settings) -> Result<(), StartError> {
    let grpc = TcpListener::bind(settings.grpc_addr)
        .await
        .map_err(|source| StartError::Listen {
            name: "ADGATE_GRPC_ADDR",
            addr: settings.grpc_addr,
            source,
        })?;
    let http = TcpListener::bind(settings.http_addr)
        .await
        .map_err(|source| StartError::Listen {
            name: "ADGATE_HTTP_ADDR",
            addr: settings.http_addr,
            source,
        })?;
    let _sandbox = if settings.sandbox {
        settings.custody.sandbox_default(&settings.database_url);
        let addr = http.local_addr().map_err(StartError::Sandbox)?;
        Some(
            sandbox::start(&mut settings, addr, sandbox::SANDBOX_TIME_SCALE)
                .await
                .map_err(StartError::Sandbox)?,
        )
    } else {
        None
    };
    if settings.enabled_providers().is_empty() {
        tracing::warn!("no provider is configured: set ADGATE_<PROVIDER>_API_KEY or use --sandbox");
    }
    let app = App::start(&settings).await?;
    serve(grpc, http, app, shutdown_signal()).await
}

/// `adgate sim`: every provider's simulator alone, until a signal.
pub async fn run_sims(args: config::SimArgs) -> Result<(), StartError> {
    let cfg = adgate_sim::SimConfig {
        api_key: args.api_key,
        time_scale: args.time_scale,
        ..adgate_sim::SimConfig::default()
    };
    let mut handles = Vec::new();
    for sim in adgate_sim::SIMULATORS {
        let port = args
            .sim_ports
            .iter()
            .rev()
            .find(|(name, _)| name == sim.name)
            .map_or(0, |(_, p)| *p);
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(StartError::Sandbox)?;
        let h = (sim.spawn_on)(listener, cfg.clone())
            .await
            .map_err(StartError::Sandbox)?;
        tracing::info!(provider = sim.name, url = %h.base_url, "simulator running");
        handles.push(h);
    }
    shutdown_signal().await;
    for h in handles {
        h.shutdown();
    }
    Ok(())
}
