//! The error taxonomy adapters report. The engine alone decides what each one means for a job
//! (retry, wait, fail, stop the batch); adapters only classify what the provider said.

use std::time::Duration;

/// A field-level problem in a spec, named by its path relative to the provider spec
/// (e.g. `brand_id`); the server prefixes `jobs[i].<provider>.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// 429 or an exhausted rate-limit window. `retry_after` is the provider's figure when it
    /// gave one; the engine applies a conservative default otherwise.
    #[error("rate limited by provider (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },

    /// The wallet or credit balance cannot cover the work (StaticAdsLab/Pictify 402).
    #[error("insufficient balance: {message}")]
    InsufficientBalance { message: String },

    /// The provider rejected the request itself; resending it unchanged cannot succeed.
    #[error("rejected by provider as invalid: {message}")]
    Invalid {
        message: String,
        provider_code: String,
        violations: Vec<FieldViolation>,
    },

    /// Credentials missing, wrong or lacking scope.
    #[error("provider refused our credentials: {message}")]
    Unauthorized { message: String },

    /// Worth retrying later: a connection that failed before the request was sent, a 409
    /// idempotency lock, a 5xx or malformed response from a provider that takes idempotency
    /// keys. An adapter for a provider *without* keys reports a failure that may have created
    /// work as [`GenError::UnknownOutcome`] instead, so `Transient` is always safe to resend.
    #[error("transient provider error: {message}")]
    Transient {
        message: String,
        #[source]
        source: Option<Source>,
    },

    /// Retrying cannot help (plan limits, access denied, unknown resource).
    #[error("permanent provider error: {message}")]
    Permanent {
        message: String,
        provider_code: String,
    },

    /// The request may or may not have reached the provider (timeout or reset after sending).
    /// For a provider without idempotency keys the engine must not resend it.
    #[error("outcome unknown: {message}")]
    UnknownOutcome {
        message: String,
        #[source]
        source: Option<Source>,
    },

    /// The adapter does not support this operation (cancel, streams, webhooks).
    #[error("not supported by this provider: {0}")]
    Unsupported(&'static str),
}

impl GenError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            source: None,
        }
    }

    pub fn transient_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Transient {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn unknown_outcome_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::UnknownOutcome {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Stable UPPER_SNAKE name of the class, for metrics and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::InsufficientBalance { .. } => "INSUFFICIENT_BALANCE",
            Self::Invalid { .. } => "INVALID",
            Self::Unauthorized { .. } => "UNAUTHORIZED",
            Self::Transient { .. } => "TRANSIENT",
            Self::Permanent { .. } => "PERMANENT",
            Self::UnknownOutcome { .. } => "UNKNOWN_OUTCOME",
            Self::Unsupported(_) => "UNSUPPORTED",
        }
    }
}

/// Why a webhook delivery was refused. Each maps to one HTTP status in the server.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// Missing, malformed, forged or stale signature → 401.
    #[error("webhook signature rejected: {0}")]
    BadSignature(&'static str),
    /// Signed correctly but not parseable → 400.
    #[error("webhook payload malformed: {0}")]
    Malformed(String),
    /// The adapter has no secret configured, so it cannot trust any delivery → 401.
    #[error("webhooks are not configured for this provider")]
    NotConfigured,
}
