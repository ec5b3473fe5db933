//! Prometheus families the engine records. Cheap to clone (families are `Arc` inside).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub provider: String,
    pub endpoint: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub provider: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub provider: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub provider: String,
    pub outcome: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

#[derive(Clone, Debug)]
pub struct EngineMetrics {
    pub provider_requests: Family<RequestLabels, Counter>,
    pub provider_latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub budget_wait_seconds: Family<ProviderLabels, Counter<f64, AtomicU64>>,
    pub in_flight: Family<ProviderLabels, Gauge>,
    pub jobs: Family<StateLabels, Gauge>,
    pub retries: Family<OutcomeLabels, Counter>,
    pub webhooks: Family<OutcomeLabels, Counter>,
    pub watchers: Gauge,
    pub leases: Family<ReplicaLabels, Gauge>,
    pub budget_granted: Family<ReplicaProviderLabels, Counter>,
    pub push_subscriptions: Family<PushLabels, Gauge>,
    /// Settled cost of completed jobs, in millionths of each unit.
    pub spend_micros: Family<SpendLabels, Counter>,
    /// Jobs stored by Submit, by provider and caller.
    pub submitted: Family<CallerLabels, Counter>,
    /// Outbound webhook deliveries by event type and outcome.
    pub notify_deliveries: Family<NotifyLabels, Counter>,
    /// Outbound webhook endpoints disabled after a run of failures.
    pub notify_disabled: Counter,
    /// Output custody: outputs copied, bytes copied, outputs given up on (by code).
    pub custody_stored: Family<ProviderLabels, Counter>,
    pub custody_bytes: Family<ProviderLabels, Counter>,
    pub custody_failed: Family<CodeLabels, Counter>,
    /// Rows deleted by retention, by table.
    pub retention_deleted: Family<TableLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabels {
    pub event: String,
    /// `delivered`, `failed` (will be retried), `given_up`, `parked` (endpoint disabled).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub provider: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallerLabels {
    pub provider: String,
    pub caller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpendLabels {
    pub provider: String,
    pub caller: String,
    pub unit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub provider: String,
    pub event: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaProviderLabels {
    pub provider: String,
    pub replica: String,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            provider_requests: Family::default(),
            provider_latency: Family::new_with_constructor(latency_histogram),
            budget_wait_seconds: Family::default(),
            in_flight: Family::default(),
            jobs: Family::default(),
            retries: Family::default(),
            webhooks: Family::default(),
            watchers: Gauge::default(),
            leases: Family::default(),
            budget_granted: Family::default(),
            push_subscriptions: Family::default(),
            spend_micros: Family::default(),
            submitted: Family::default(),
            notify_deliveries: Family::default(),
            notify_disabled: Counter::default(),
            custody_stored: Family::default(),
            custody_bytes: Family::default(),
            custody_failed: Family::default(),
            retention_deleted: Family::default(),
        }
    }
}

impl EngineMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "adgate_custody_outputs_stored",
            "Outputs copied into the gateway's output store",
            self.custody_stored.clone(),
        );
        registry.register(
            "adgate_custody_stored_bytes",
            "Bytes copied into the gateway's output store",
            self.custody_bytes.clone(),
        );
        registry.register(
            "adgate_custody_outputs_failed",
            "Outputs no copy could be made of, by custody error code",
            self.custody_failed.clone(),
        );
        registry.register(
            "adgate_provider_requests",
            "Provider HTTP requests by endpoint and outcome",
            self.provider_requests.clone(),
        );
        registry.register(
            "adgate_provider_request_duration_seconds",
            "Provider request latency",
            self.provider_latency.clone(),
        );
        registry.register(
            "adgate_budget_wait_seconds",
            "Time spent waiting for a provider's request budget",
            self.budget_wait_seconds.clone(),
        );
        registry.register(
            "adgate_provider_in_flight_jobs",
            "Jobs submitted to a provider and being tracked",
            self.in_flight.clone(),
        );
        registry.register(
            "adgate_jobs",
            "Jobs in the store by provider and state",
            self.jobs.clone(),
        );
        registry.register(
            "adgate_provider_retries",
            "Retried or deferred provider calls by reason",
            self.retries.clone(),
        );
        registry.register(
            "adgate_webhooks",
            "Webhook deliveries by outcome",
            self.webhooks.clone(),
        );
        registry.register(
            "adgate_leases_held",
            "Jobs this replica holds a lease on (shared stores)",
            self.leases.clone(),
        );
        registry.register(
            "adgate_budget_granted",
            "Provider requests granted from the fleet-wide budget, per replica",
            self.budget_granted.clone(),
        );
        registry.register(
            "adgate_provider_push_subscriptions",
            "1 for the status of each push subscription (active, paused, failed, missing) at the last check",
            self.push_subscriptions.clone(),
        );
        registry.register(
            "adgate_jobs_submitted",
            "Jobs stored by Submit, by provider and caller",
            self.submitted.clone(),
        );
        registry.register(
            "adgate_spend_micros",
            "Settled cost of completed jobs in millionths of the unit (USD or a provider's credits), by provider and caller",
            self.spend_micros.clone(),
        );
        registry.register(
            "adgate_notify_deliveries",
            "Outbound webhook delivery attempts by event type and outcome (delivered, failed, given_up, parked)",
            self.notify_deliveries.clone(),
        );
        registry.register(
            "adgate_notify_endpoints_disabled",
            "Outbound webhook endpoints disabled after a run of failed deliveries",
            self.notify_disabled.clone(),
        );
        registry.register(
            "adgate_store_retention_deleted",
            "Rows deleted by retention (old terminal jobs, their attempts and batches, expired request and delivery ids), by table",
            self.retention_deleted.clone(),
        );
        registry.register(
            "adgate_active_watchers",
            "Open WatchProgress streams",
            self.watchers.clone(),
        );
    }

    pub fn request(&self, provider: &str, endpoint: &str, outcome: &str, secs: f64) {
        self.provider_requests
            .get_or_create(&RequestLabels {
                provider: provider.to_owned(),
                endpoint: endpoint.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.provider_latency
            .get_or_create(&EndpointLabels {
                provider: provider.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .observe(secs);
    }

    pub fn retry(&self, provider: &str, reason: &str) {
        self.retries
            .get_or_create(&OutcomeLabels {
                provider: provider.to_owned(),
                outcome: reason.to_owned(),
            })
            .inc();
    }

    pub fn webhook(&self, provider: &str, outcome: &str) {
        self.webhooks
            .get_or_create(&OutcomeLabels {
                provider: provider.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn budget_granted(&self, provider: &str, replica: &str) {
        self.budget_granted
            .get_or_create(&ReplicaProviderLabels {
                provider: provider.to_owned(),
                replica: replica.to_owned(),
            })
            .inc();
    }

    pub fn push_subscription(&self, provider: &str, event: &str, status: &str, on: bool) {
        self.push_subscriptions
            .get_or_create(&PushLabels {
                provider: provider.to_owned(),
                event: event.to_owned(),
                status: status.to_owned(),
            })
            .set(i64::from(on));
    }

    pub fn budget_wait(&self, provider: &str, secs: f64) {
        self.budget_wait_seconds
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .inc_by(secs);
    }

    pub fn retention_deleted(&self, table: &str, rows: u64) {
        self.retention_deleted
            .get_or_create(&TableLabels {
                table: table.to_owned(),
            })
            .inc_by(rows);
    }

    /// Rows retention has deleted from `table` (tests and benchmarks).
    pub fn retention_deleted_rows(&self, table: &str) -> u64 {
        self.retention_deleted
            .get_or_create(&TableLabels {
                table: table.to_owned(),
            })
            .get()
    }

    /// Count of requests recorded for a provider and outcome (tests and benchmarks).
    pub fn requests_with_outcome(&self, provider: &str, endpoint: &str, outcome: &str) -> u64 {
        self.provider_requests
            .get_or_create(&RequestLabels {
                provider: provider.to_owned(),
                endpoint: endpoint.to_owned(),
                outcome: outcome.to_owned(),
            })
            .get()
    }
}
