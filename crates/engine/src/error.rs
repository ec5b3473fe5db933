//! The engine's errors. The server maps each variant to a gRPC status in one table.

use adgate_generator::{FieldViolation, WebhookError};
use adgate_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The provider exists in the API but has no credentials configured.
    #[error("provider {0} is not configured on this gateway")]
    ProviderNotConfigured(String),

    /// Spec problems, as (job index, violation relative to the provider spec).
    #[error("{} invalid field(s)", .0.len())]
    Invalid(Vec<(usize, String, FieldViolation)>),

    /// The request id was used before with different content (AIP-155).
    #[error("request_id was already used with different content")]
    RequestIdConflict,

    #[error("job {0} not found")]
    NotFound(String),

    /// The operation is not possible in the job's current state.
    #[error("{0}")]
    FailedPrecondition(String),

    #[error("the gateway is shutting down")]
    ShuttingDown,

    /// At start-up: another live process already runs under this replica id.
    #[error("replica id {0:?} is in use by another live process on this store")]
    ReplicaIdInUse(String),

    #[error("job store failure")]
    Store(#[from] StoreError),
}

/// Why a webhook delivery was refused; the HTTP listener maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum WebhookFailure {
    #[error("no provider named {0} is configured")]
    UnknownProvider(String),
    #[error(transparent)]
    Rejected(#[from] WebhookError),
    #[error("job store failure")]
    Store(#[from] StoreError),
}
