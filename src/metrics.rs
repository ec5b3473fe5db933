//! The Prometheus registry served at `/metrics`: the engine's families plus gRPC counters and
//! the per-call latency histogram.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_method: String,
    pub grpc_code: String,
}

/// Labels of `grpc.server.call.duration` as gRFC A66 names them: the full method
/// (`adgate.v1.GatewayService/Submit`, or `other`) and the status code's name (`OK`,
/// `NOT_FOUND`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub grpc_method: String,
    pub grpc_status: String,
}

/// Bucket bounds in seconds: a subset of gRFC A66's, from a cached read (well under a
/// millisecond) to a long WatchProgress stream.
const CALL_BUCKETS: [f64; 20] = [
    0.0001, 0.0003, 0.0006, 0.001, 0.002, 0.004, 0.008, 0.016, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 100.0, 300.0,
];

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

/// gRPC server metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    /// Call duration, from the request's arrival to the end of the response (a stream's end).
    pub call_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    /// RPCs answered, by method and status code (a stream counts once, by how it opened).
    pub handled: Family<GrpcLabels, Counter>,
    /// Open WatchProgress streams.
    pub watch_streams: Gauge,
    /// Messages sent on WatchProgress streams.
    pub watch_events: Counter,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        Self {
            call_duration: Family::new_with_constructor(call_histogram),
            handled: Family::default(),
            watch_streams: Gauge::default(),
            watch_events: Counter::default(),
        }
    }
}

impl GrpcMetrics {
    /// One finished call of `method` (the histogram's label: full method or `other`).
    pub fn observe_call(&self, method: &str, code: tonic::Code, seconds: f64) {
        self.call_duration
            .get_or_create(&CallLabels {
                grpc_method: method.to_owned(),
                grpc_status: status_name(code).to_owned(),
            })
            .observe(seconds);
    }

    pub fn record(&self, method: &str, code: tonic::Code) {
        self.handled
            .get_or_create(&GrpcLabels {
                grpc_method: method.to_owned(),
                grpc_code: format!("{code:?}"),
            })
            .inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "grpc_server_call_duration",
            "Duration of gRPC calls as the server sees them (grpc.server.call.duration)",
            Unit::Seconds,
            self.call_duration.clone(),
        );
        registry.register(
            "adgate_grpc_server_handled",
            "gRPC calls answered, by method and code",
            self.handled.clone(),
        );
        registry.register(
            "adgate_watch_streams",
            "open WatchProgress streams",
            self.watch_streams.clone(),
        );
        registry.register(
            "adgate_watch_events",
            "messages sent on WatchProgress streams",
            self.watch_events.clone(),
        );
    }
}

/// A status code's canonical name, as gRPC documents it and gRFC A66 labels it.
pub fn status_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
