//! A tower layer around the gRPC service: one server span per call (RPC semantic conventions,
//! continuing a caller's W3C `traceparent`/`tracestate` from the request metadata) and the
//! `grpc.server.call.duration` histogram (gRFC A66) in `/metrics`.
//!
//! A call ends when its response body does: a unary call with its trailers, a WatchProgress
//! stream when it closes. The status is the `grpc-status` of the trailers (or of the headers for
//! a trailers-only answer); a body dropped before any status means the client went away
//! (CANCELLED).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tonic::body::Body;
use tonic::server::NamedService;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::GrpcMetrics;
use crate::telemetry::TRACE_TARGET;

/// Label of calls to a method the service does not have (keeps label values bounded).
const OTHER_METHOD: &str = "other";

/// Wraps a tonic service `S` (see the module doc).
#[derive(Debug, Clone)]
pub struct RpcTraceLayer {
    metrics: GrpcMetrics,
    local: SocketAddr,
    methods: Arc<HashSet<String>>,
}

impl RpcTraceLayer {
    /// `methods`: the service's method names (anything else is labelled `other`); `local`: the
    /// listener's address, the `server.address`/`server.port` of a request without authority.
    pub fn new(
        metrics: GrpcMetrics,
        local: SocketAddr,
        methods: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            metrics,
            local,
            methods: Arc::new(methods.into_iter().collect()),
        }
    }
}

impl<S> tower_layer::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> RpcTrace<S> {
        RpcTrace {
            inner,
            cfg: self.clone(),
        }
    }
}

/// The service [`RpcTraceLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
    cfg: RpcTraceLayer,
}

impl<S: NamedService> NamedService for RpcTrace<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for RpcTrace<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((S::NAME, ""));
        let known = service == S::NAME && self.cfg.methods.contains(method);
        let label = if known {
            format!("{service}/{method}")
        } else {
            OTHER_METHOD.to_owned()
        };
        // The name the caller dialled (HTTP/2 `:authority`), else the listener's address.
        // Field values are only evaluated when the span is enabled (traces on).
        let authority = req.uri().authority();
        let local = self.cfg.local;
        let address = || authority.map_or_else(|| local.ip().to_string(), |a| a.host().to_owned());
        let port = || {
            authority
                .and_then(http::uri::Authority::port_u16)
                .unwrap_or(local.port())
        };
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "rpc",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = %address(),
            server.port = i64::from(port()),
        );
        if !span.is_disabled() {
            let parent = TraceContextPropagator::new().extract(&Metadata(req.headers()));
            // Fails only when the span is not an OpenTelemetry one, i.e. traces are off.
            let _ = span.set_parent(parent);
        }
        let guard = CallGuard {
            span: span.clone(),
            started: Instant::now(),
            method: label,
            metrics: self.cfg.metrics.clone(),
        };
        let fut = tracing::Instrument::instrument(inner.call(req), span);
        Box::pin(async move {
            let resp = fut.await?;
            let (parts, body) = resp.into_parts();
            let mut observed = ObservedBody {
                inner: body,
                guard: Some(guard),
            };
            // A trailers-only answer (every error of a unary call) carries its status here.
            if let Some(code) = grpc_status(&parts.headers) {
                observed.finish(code);
            }
            Ok(http::Response::from_parts(parts, Body::new(observed)))
        })
    }
}

/// The method names of `service` (`package.Service`) in an encoded descriptor set.
pub fn methods_of(descriptor_set: &[u8], service: &str) -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(descriptor_set) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for file in &set.file {
        for s in &file.service {
            if format!("{}.{}", file.package(), s.name()) == service {
                out.extend(s.method.iter().map(|m| m.name().to_owned()));
            }
        }
    }
    out
}

/// gRPC request metadata as an OpenTelemetry carrier.
struct Metadata<'a>(&'a HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse::<i32>().ok().map(Code::from_i32)
}

/// One call in flight: records it once, when its status is known or its body is dropped.
struct CallGuard {
    span: tracing::Span,
    started: Instant,
    method: String,
    metrics: GrpcMetrics,
}

impl CallGuard {
    fn finish(self, code: Code) {
        self.span
            .record("rpc.grpc.status_code", i64::from(i32::from(code)));
        if is_server_error(code) {
            self.span.record("otel.status_code", "error");
        }
        self.metrics
            .observe_call(&self.method, code, self.started.elapsed().as_secs_f64());
    }
}

/// Statuses the semantic conventions count as a server span error; the rest are the
/// caller's doing (invalid argument, not found, …) and leave the span unset.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A response body that reports its call's end.
struct ObservedBody<RB> {
    inner: RB,
    guard: Option<CallGuard>,
}

impl<RB> ObservedBody<RB> {
    fn finish(&mut self, code: Code) {
        if let Some(g) = self.guard.take() {
            g.finish(code);
        }
    }
}

impl<RB> http_body::Body for ObservedBody<RB>
where
    RB: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = RB::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RB::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.finish(code);
                }
            }
            // tonic reports a failed call in trailers; a body error is a transport failure.
            Poll::Ready(Some(Err(_))) => self.finish(Code::Unknown),
            // Ended without trailers: tonic always sends them, so this is a transport end.
            Poll::Ready(None) => self.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Only once recorded: an empty body with no status yet still has to report one.
        self.guard.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<RB> Drop for ObservedBody<RB> {
    fn drop(&mut self) {
        // Dropped before a status: the client cancelled or the connection went away.
        self.finish(Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_from_the_descriptor() {
        let m = methods_of(crate::pb::FILE_DESCRIPTOR_SET, "adgate.v1.GatewayService");
        for name in ["Submit", "WatchProgress", "ListProviders"] {
            assert!(m.iter().any(|x| x == name), "{name} missing from {m:?}");
        }
        assert!(methods_of(crate::pb::FILE_DESCRIPTOR_SET, "adgate.v1.Nope").is_empty());
    }

    #[test]
    fn status_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&h), Some(Code::NotFound));
        h.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&h), None);
    }

    #[test]
    fn caller_errors_are_not_server_errors() {
        assert!(!is_server_error(Code::InvalidArgument));
        assert!(!is_server_error(Code::NotFound));
        assert!(is_server_error(Code::Unavailable));
        assert!(is_server_error(Code::Internal));
    }
}
