//! The Prometheus registry served at `/metrics`: the engine's families plus gRPC counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_method: String,
    pub grpc_code: String,
}

/// gRPC server metrics. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct GrpcMetrics {
    /// RPCs answered, by method and status code (a stream counts once, by how it opened).
    pub handled: Family<GrpcLabels, Counter>,
    /// Open WatchProgress streams.
    pub watch_streams: Gauge,
    /// Messages sent on WatchProgress streams.
    pub watch_events: Counter,
}

impl GrpcMetrics {
    pub fn record(&self, method: &str, code: tonic::Code) {
        self.handled
            .get_or_create(&GrpcLabels {
                grpc_method: method.to_owned(),
                grpc_code: format!("{code:?}"),
            })
            .inc();
    }

    pub fn register(&self, registry: &mut Registry) {
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
