//! The engine's errors. The server maps each variant to a gRPC status in one table. Store
//! failures become the engine's own [`EngineError::ShuttingDown`] (the store is closing) or
//! [`EngineError::Internal`] (anything else: logged by the server, never sent to a caller), so
//! the server never sees the store's error type.

use adgate_generator::{FieldViolation, WebhookError};
use adgate_store::StoreError;

/// A store error with its source chain, for logs.
fn describe(e: &StoreError) -> String {
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

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

    /// The provider could not do it now (unreachable, rate-limited, a transient refusal):
    /// the same call may succeed later.
    #[error("{0}")]
    ProviderUnavailable(String),

    /// At start-up: another live process already runs under this replica id.
    #[error("replica id {0:?} is in use by another live process on this store")]
    ReplicaIdInUse(String),

    /// A Submit would take a caller past its daily spend limit at a provider (nothing stored).
    #[error(
        "caller {caller} may spend {limit_micros} micro-{unit} a day at {provider}; \
         {spent_micros} are spent or reserved today and this request needs {requested_micros}"
    )]
    SpendLimit {
        caller: String,
        provider: String,
        unit: String,
        limit_micros: i64,
        spent_micros: i64,
        requested_micros: i64,
    },

    /// The job store's database cannot be reached now (the detail is for logs only): the
    /// same call may succeed later.
    #[error("the job store is unreachable: {0}")]
    StoreUnavailable(String),

    /// Something failed inside the gateway (the job store): the detail is for logs only.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => Self::ShuttingDown,
            StoreError::Unavailable(why) => Self::StoreUnavailable(why),
            other => Self::Internal(describe(&other)),
        }
    }
}

/// Why a webhook delivery was refused; the HTTP listener maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum WebhookFailure {
    #[error("no provider named {0} is configured")]
    UnknownProvider(String),
    #[error(transparent)]
    Rejected(#[from] WebhookError),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The event could not be recorded (the job store): the provider should retry.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for WebhookFailure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => Self::ShuttingDown,
            other => Self::Internal(describe(&other)),
        }
    }
}
