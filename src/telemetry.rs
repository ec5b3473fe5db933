//! OpenTelemetry traces over OTLP/gRPC, configured by the standard `OTEL_*` variables.
//!
//! Off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set:
//! then no exporter exists and no OpenTelemetry layer is installed, so the spans the gateway
//! declares (target [`TRACE_TARGET`]) are disabled callsites that cost a branch each.
//!
//! The gateway's spans are ordinary `tracing` spans bridged by `tracing-opentelemetry`; spans
//! and events under [`TRACE_TARGET`] are for traces only and never reach the log output.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

pub use adgate_generator::TRACE_TARGET;

/// Service name when `OTEL_SERVICE_NAME` is unset.
pub const DEFAULT_SERVICE_NAME: &str = "adgate";

/// Where and as whom spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    pub endpoint: String,
    pub service_name: String,
}

/// A setting among the `OTEL_*` variables that the gateway cannot honour.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "{name}={value:?} is not supported: adgate exports traces over OTLP/gRPC only \
         (unset it or set it to \"grpc\", and point the endpoint at the collector's gRPC port, \
         usually 4317)"
    )]
    Protocol { name: &'static str, value: String },
    #[error("{name} must be an http:// or https:// URL, got {value:?}")]
    Endpoint { name: &'static str, value: String },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

impl TraceConfig {
    /// Read the standard variables through `get`. `Ok(None)`: traces are off.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, TraceError> {
        let set = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        // The per-signal variable wins, as the specification says.
        let endpoint = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|name| set(name).map(|v| (name, v)));
        let Some((name, endpoint)) = endpoint else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(TraceError::Endpoint {
                name,
                value: endpoint,
            });
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = set(name) {
                if value != "grpc" {
                    return Err(TraceError::Protocol { name, value });
                }
                break;
            }
        }
        Ok(Some(Self {
            endpoint,
            service_name: set("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
        }))
    }
}

/// The exporting side of traces: keep it until the gateway has stopped, then [`shutdown`].
///
/// [`shutdown`]: Tracing::shutdown
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    cfg: TraceConfig,
}

impl Tracing {
    /// Build the OTLP/gRPC exporter and its batch processor (which also reads the standard
    /// `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER` and `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT`
    /// variables). Must run inside the Tokio runtime: the gRPC channel's worker is spawned on
    /// it. Nothing is sent until the first batch of spans.
    pub fn start(cfg: &TraceConfig) -> Result<Self, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Self {
            provider,
            cfg: cfg.clone(),
        })
    }

    /// The collector's host and port, for the start-up log (never user info or a path).
    pub fn collector(&self) -> String {
        self.cfg
            .endpoint
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| {
                let a = u.authority()?;
                Some(format!("{}:{}", a.host(), a.port_u16().unwrap_or(4317)))
            })
            .unwrap_or_default()
    }

    pub fn service_name(&self) -> &str {
        &self.cfg.service_name
    }

    /// The layer that turns the gateway's spans into OpenTelemetry spans: every `adgate…`
    /// span and event at INFO or above (log events become span events of the span they happen
    /// in), whatever `RUST_LOG` says about the log output.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        // Source locations, thread ids, the `tracing` target and busy/idle times would add
        // eight attributes to every span and answer no question about a call.
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("adgate"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target("adgate", LevelFilter::INFO))
    }

    /// Export what is still buffered and stop the exporter (bounded by the SDK's timeouts).
    /// Blocks: call it from a blocking thread.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "flushing traces at exit failed");
        }
    }
}

/// Whether a log-output layer should see this metadata: everything but the traces-only target.
pub fn is_log(meta: &tracing::Metadata<'_>) -> bool {
    !meta.target().starts_with(TRACE_TARGET)
}

/// The W3C `traceparent` of `span`'s OpenTelemetry context, when it is being recorded and
/// sampled (what a job keeps so later work can link back to it).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The span a stored `traceparent` names. `None` for anything malformed or all-zero.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([("traceparent".to_owned(), s.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Link `span` to the span a `traceparent` names (a job's Submit). Ignores a malformed value,
/// a span of the same trace (already related by parentage), and does nothing when traces are
/// off.
pub fn link(span: &tracing::Span, traceparent: &str) {
    let Some(sc) = parse_traceparent(traceparent) else {
        return;
    };
    if span.context().span().span_context().trace_id() != sc.trace_id() {
        span.add_link(sc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Option<TraceConfig>, TraceError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceConfig::from_env(&|k| map.get(k).cloned())
    }

    #[test]
    fn off_without_an_endpoint() {
        assert!(cfg(&[]).unwrap().is_none());
        assert!(cfg(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        assert!(
            cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")])
                .unwrap()
                .is_none()
        );
        assert!(
            cfg(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .unwrap()
            .is_none()
        );
        assert!(
            cfg(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn endpoint_and_service_name() {
        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://c:4317");
        assert_eq!(c.service_name, "adgate");
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t:4317"),
            ("OTEL_SERVICE_NAME", "gw-eu"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "https://t:4317");
        assert_eq!(c.service_name, "gw-eu");
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let e = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("OTLP/gRPC only"), "{e}");
        // The per-signal protocol wins over the general one.
        let e = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("TRACES_PROTOCOL"), "{e}");
        assert!(cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]).is_err());
    }

    #[test]
    fn traceparent_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "not a traceparent",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }
}
