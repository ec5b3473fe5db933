//! Every error the server answers with, and the one table that turns each into a gRPC status
//! (AIP-193) or an HTTP status (webhooks).
//!
//! Each gRPC status carries a `google.rpc.ErrorInfo` with domain [`DOMAIN`] and a stable
//! UPPER_SNAKE reason; `BadRequest`, `ResourceInfo`, `PreconditionFailure`, `QuotaFailure` and
//! `RetryInfo` are added where they help the caller. Internal details (store errors) are logged
//! here and never sent.

use std::collections::HashMap;
use std::time::Duration;

use adgate_engine::{EngineError, WebhookFailure};
use adgate_generator::WebhookError;
use http::StatusCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// ErrorInfo domain of every error.
pub const DOMAIN: &str = "adgate";

/// How long a caller should wait before retrying after a drain or a transient store failure.
const RETRY_SOON: Duration = Duration::from_secs(1);
/// Most ids listed in a status message (the full list is in the metadata).
const MAX_IDS_IN_MESSAGE: usize = 10;

/// A field-level problem in a request: the one violation type of the whole gateway (the trait
/// crate's), here with its full request path (`jobs[3].<provider>.brand_id`).
pub use adgate_generator::FieldViolation as Violation;

/// Everything a gateway RPC can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// A job spec is invalid (Submit).
    InvalidJobSpec(Vec<Violation>),
    /// Some other request field is invalid.
    InvalidRequest(Vec<Violation>),
    /// A job names a provider this gateway has no credentials for (`jobs[i].<provider>`).
    ProviderNotConfigured {
        provider: String,
        field: String,
    },
    RequestIdReused,
    JobNotFound(String),
    /// WatchProgress was asked for jobs that do not exist.
    JobsNotFound(Vec<String>),
    BatchNotFound(String),
    /// The operation conflicts with the job's state (cancel of a finished job, …).
    JobStateConflict(String),
    TooManyWatchStreams {
        limit: usize,
    },
    MissingCredentials,
    InvalidCredentials,
    ShuttingDown,
    /// A provider could not do it now; retry later.
    ProviderUnavailable(String),
    /// A Submit would pass a caller's daily spend limit at a provider (nothing stored).
    SpendLimit {
        caller: String,
        provider: String,
        unit: String,
        limit_micros: i64,
        spent_micros: i64,
        requested_micros: i64,
    },
    /// The job store's database is unreachable; the detail is logged, never sent.
    StoreUnavailable(String),
    /// A named caller asked for another caller's jobs or batches (a `caller` filter).
    OtherCallerData {
        caller: String,
    },
    /// A failure inside the gateway; the detail is logged, never sent.
    Internal(String),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ProviderNotConfigured(p) => Self::ProviderNotConfigured {
                field: p.clone(),
                provider: p,
            },
            EngineError::Invalid(v) => Self::InvalidJobSpec(
                v.into_iter()
                    .map(|(i, provider, f)| {
                        Violation::new(job_field(i, &provider, &f.field), f.description)
                    })
                    .collect(),
            ),
            EngineError::RequestIdConflict => Self::RequestIdReused,
            EngineError::NotFound(id) => Self::JobNotFound(id),
            EngineError::FailedPrecondition(m) => Self::JobStateConflict(m),
            EngineError::ShuttingDown => Self::ShuttingDown,
            // Only `Engine::start` refuses an identity, before any call is served; were one
            // to see it, another process being this replica is UNAVAILABLE to this one.
            EngineError::ReplicaIdInUse(_) => Self::ShuttingDown,
            EngineError::Internal(e) => Self::Internal(e),
            EngineError::StoreUnavailable(e) => Self::StoreUnavailable(e),
            EngineError::SpendLimit {
                caller,
                provider,
                unit,
                limit_micros,
                spent_micros,
                requested_micros,
            } => Self::SpendLimit {
                caller,
                provider,
                unit,
                limit_micros,
                spent_micros,
                requested_micros,
            },
            EngineError::ProviderUnavailable(m) => Self::ProviderUnavailable(m),
        }
    }
}

/// `jobs[i].<provider>.<field>`, or `jobs[i].<provider>` for a whole-spec problem.
pub fn job_field(index: usize, provider: &str, field: &str) -> String {
    if field.is_empty() {
        format!("jobs[{index}].{provider}")
    } else {
        format!("jobs[{index}].{provider}.{field}")
    }
}

fn list(ids: &[String]) -> String {
    let mut s = ids
        .iter()
        .take(MAX_IDS_IN_MESSAGE)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > MAX_IDS_IN_MESSAGE {
        s.push_str(&format!(" and {} more", ids.len() - MAX_IDS_IN_MESSAGE));
    }
    s
}

fn field_violations(v: Vec<Violation>) -> Vec<tonic_types::FieldViolation> {
    v.into_iter()
        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
        .collect()
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        to_status(e)
    }
}

/// The table: code, reason, message and extra details for each error.
pub fn to_status(err: ApiError) -> Status {
    use ApiError as E;
    let mut d = ErrorDetails::new();
    let mut meta: HashMap<String, String> = HashMap::new();
    let (code, reason, message) = match err {
        E::InvalidJobSpec(v) => {
            let msg = format!("{} invalid field(s) in jobs; nothing was stored", v.len());
            d.set_bad_request(field_violations(v));
            (Code::InvalidArgument, "INVALID_JOB_SPEC", msg)
        }
        E::InvalidRequest(v) => {
            let msg = match v.as_slice() {
                [one] => format!("{}: {}", one.field, one.description),
                _ => format!("{} invalid field(s)", v.len()),
            };
            d.set_bad_request(field_violations(v));
            (Code::InvalidArgument, "INVALID_REQUEST", msg)
        }
        E::ProviderNotConfigured { provider, field } => {
            d.add_precondition_failure_violation(
                "PROVIDER_NOT_CONFIGURED",
                field.clone(),
                format!(
                    "set ADGATE_{}_API_KEY to enable {provider}",
                    provider.to_ascii_uppercase()
                ),
            );
            meta.insert("provider".into(), provider.clone());
            meta.insert("field".into(), field);
            (
                Code::FailedPrecondition,
                "PROVIDER_NOT_CONFIGURED",
                format!("provider {provider} is not configured on this gateway"),
            )
        }
        E::RequestIdReused => (
            Code::AlreadyExists,
            "REQUEST_ID_REUSED",
            "request_id was already used with different content".to_owned(),
        ),
        E::JobNotFound(id) => {
            d.set_resource_info("adgate.v1.Job", id.clone(), "", "no job with this id");
            meta.insert("job_id".into(), id.clone());
            (
                Code::NotFound,
                "JOB_NOT_FOUND",
                format!("job {id} not found"),
            )
        }
        E::JobsNotFound(ids) => {
            let shown = list(&ids);
            d.set_resource_info("adgate.v1.Job", ids.join(","), "", "no jobs with these ids");
            meta.insert("job_ids".into(), ids.join(","));
            (
                Code::NotFound,
                "JOB_NOT_FOUND",
                format!("unknown job id(s): {shown}"),
            )
        }
        E::BatchNotFound(id) => {
            d.set_resource_info("adgate.v1.Batch", id.clone(), "", "no batch with this id");
            meta.insert("batch_id".into(), id.clone());
            (
                Code::NotFound,
                "BATCH_NOT_FOUND",
                format!("batch {id} not found"),
            )
        }
        E::JobStateConflict(msg) => {
            d.add_precondition_failure_violation("JOB_STATE", "job", msg.clone());
            (Code::FailedPrecondition, "JOB_STATE_CONFLICT", msg)
        }
        E::TooManyWatchStreams { limit } => {
            d.add_quota_failure_violation(
                "watch_streams",
                format!("at most {limit} concurrent WatchProgress streams"),
            );
            d.set_retry_info(Some(Duration::from_secs(5)));
            meta.insert("limit".into(), limit.to_string());
            (
                Code::ResourceExhausted,
                "WATCH_STREAMS_EXHAUSTED",
                "too many concurrent WatchProgress streams; retry later".to_owned(),
            )
        }
        E::OtherCallerData { caller } => {
            d.set_bad_request(vec![tonic_types::FieldViolation::new(
                "filter",
                format!("caller {caller} may list only its own jobs and batches"),
            )]);
            meta.insert("caller".into(), caller.clone());
            (
                Code::PermissionDenied,
                "OTHER_CALLER_DATA",
                format!("caller {caller} may list only its own jobs and batches"),
            )
        }
        E::MissingCredentials => (
            Code::Unauthenticated,
            "MISSING_CREDENTIALS",
            "missing `authorization: Bearer <token>` metadata".to_owned(),
        ),
        E::InvalidCredentials => (
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
            "invalid bearer token".to_owned(),
        ),
        E::ShuttingDown => {
            d.set_retry_info(Some(RETRY_SOON));
            (
                Code::Unavailable,
                "SHUTTING_DOWN",
                "the gateway is shutting down; retry (another instance may serve you)".to_owned(),
            )
        }
        E::ProviderUnavailable(m) => {
            d.set_retry_info(Some(RETRY_SOON));
            (Code::Unavailable, "PROVIDER_UNAVAILABLE", m)
        }
        E::SpendLimit {
            caller,
            provider,
            unit,
            limit_micros,
            spent_micros,
            requested_micros,
        } => {
            let amount = |m: i64| format!("{:.2} {unit}", m as f64 / 1e6);
            let subject = format!("callers/{caller}/providers/{provider}/spend:daily");
            d.add_quota_failure_violation(
                subject.clone(),
                format!(
                    "daily spend limit {} at {provider}: {} spent or reserved today, this request \
                     needs {}",
                    amount(limit_micros),
                    amount(spent_micros),
                    amount(requested_micros)
                ),
            );
            meta.insert("caller".into(), caller.clone());
            meta.insert("provider".into(), provider.clone());
            meta.insert("unit".into(), unit.clone());
            meta.insert("limit_micros".into(), limit_micros.to_string());
            meta.insert("spent_micros".into(), spent_micros.to_string());
            meta.insert("requested_micros".into(), requested_micros.to_string());
            (
                Code::ResourceExhausted,
                "SPEND_LIMIT_EXCEEDED",
                format!(
                    "caller {caller} would pass its daily spend limit at {provider} ({} spent or \
                     reserved today + {} requested > {}); nothing was stored",
                    amount(spent_micros),
                    amount(requested_micros),
                    amount(limit_micros)
                ),
            )
        }
        E::StoreUnavailable(e) => {
            tracing::warn!(error = %e, "job store unreachable");
            d.set_retry_info(Some(RETRY_SOON));
            (
                Code::Unavailable,
                "STORE_UNAVAILABLE",
                "the job store is unreachable; nothing was acknowledged, retry (with the same \
                 request_id, a Submit is never stored twice)"
                    .to_owned(),
            )
        }
        E::Internal(e) => {
            tracing::error!(error = %e, "internal failure");
            (
                Code::Internal,
                "STORE_FAILURE",
                "internal storage error".to_owned(),
            )
        }
    };
    d.set_error_info(reason, DOMAIN, meta);
    Status::with_error_details(code, message, d)
}

/// An HTTP answer for a webhook delivery: status, stable reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

/// Why the webhook listener refused a delivery.
#[derive(Debug)]
pub enum WebhookReject {
    UnsupportedMediaType,
    TooLarge { limit: usize },
    Engine(WebhookFailure),
}

/// The webhook table.
pub fn webhook_status(err: WebhookReject) -> HttpError {
    use WebhookReject as R;
    let (status, reason, message) = match err {
        R::UnsupportedMediaType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "content-type must be application/json".to_owned(),
        ),
        R::TooLarge { limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("body exceeds {limit} bytes"),
        ),
        R::Engine(WebhookFailure::UnknownProvider(p)) => (
            StatusCode::NOT_FOUND,
            "UNKNOWN_PROVIDER",
            format!("no provider named {p:?} is configured"),
        ),
        R::Engine(WebhookFailure::Rejected(WebhookError::BadSignature(why))) => (
            StatusCode::UNAUTHORIZED,
            "INVALID_SIGNATURE",
            format!("signature rejected: {why}"),
        ),
        R::Engine(WebhookFailure::Rejected(WebhookError::NotConfigured)) => (
            StatusCode::UNAUTHORIZED,
            "WEBHOOKS_NOT_CONFIGURED",
            "no webhook secret is configured for this provider".to_owned(),
        ),
        R::Engine(WebhookFailure::Rejected(WebhookError::Malformed(why))) => (
            StatusCode::BAD_REQUEST,
            "MALFORMED_PAYLOAD",
            format!("payload malformed: {why}"),
        ),
        R::Engine(WebhookFailure::ShuttingDown) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "SHUTTING_DOWN",
            "the gateway is shutting down; retry".to_owned(),
        ),
        R::Engine(WebhookFailure::Internal(e)) => {
            tracing::error!(error = %e, "job store failure while applying a webhook");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "STORE_FAILURE",
                "internal storage error".to_owned(),
            )
        }
    };
    HttpError {
        status,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use adgate_generator::FieldViolation;

    use super::*;

    fn reason(s: &Status) -> String {
        let d = s.get_error_details();
        let info = d.error_info().unwrap();
        assert_eq!(info.domain, DOMAIN);
        info.reason.clone()
    }

    #[test]
    fn engine_errors_map_to_canonical_codes() {
        let cases: Vec<(EngineError, Code, &str)> = vec![
            (
                EngineError::ProviderNotConfigured("pictify".into()),
                Code::FailedPrecondition,
                "PROVIDER_NOT_CONFIGURED",
            ),
            (
                EngineError::RequestIdConflict,
                Code::AlreadyExists,
                "REQUEST_ID_REUSED",
            ),
            (
                EngineError::NotFound("job_x".into()),
                Code::NotFound,
                "JOB_NOT_FOUND",
            ),
            (
                EngineError::FailedPrecondition("done".into()),
                Code::FailedPrecondition,
                "JOB_STATE_CONFLICT",
            ),
            (
                EngineError::ShuttingDown,
                Code::Unavailable,
                "SHUTTING_DOWN",
            ),
            (
                EngineError::ProviderUnavailable("pictify could not cancel now".into()),
                Code::Unavailable,
                "PROVIDER_UNAVAILABLE",
            ),
            (
                EngineError::Internal("row 7 secret".into()),
                Code::Internal,
                "STORE_FAILURE",
            ),
        ];
        for (e, code, want) in cases {
            let s = to_status(e.into());
            assert_eq!(s.code(), code, "{s:?}");
            assert_eq!(reason(&s), want);
            assert!(
                !s.message().contains("row 7"),
                "store internals leaked: {}",
                s.message()
            );
        }
    }

    #[test]
    fn invalid_specs_name_the_job_and_field() {
        let e = EngineError::Invalid(vec![
            (
                3,
                "staticadslab".into(),
                FieldViolation::new("brand_id", "must start with brand_"),
            ),
            (
                0,
                "pictify".into(),
                FieldViolation::new("", "must be a JSON object"),
            ),
        ]);
        let s = to_status(e.into());
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(reason(&s), "INVALID_JOB_SPEC");
        let d = s.get_error_details();
        let fields: Vec<&str> = d
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["jobs[3].staticadslab.brand_id", "jobs[0].pictify"]);
    }

    #[test]
    fn retry_and_resource_details() {
        let s = to_status(ApiError::ShuttingDown);
        assert!(s.get_error_details().retry_info().is_some());
        let s = to_status(ApiError::JobNotFound("job_1".into()));
        let d = s.get_error_details();
        assert_eq!(d.resource_info().unwrap().resource_name, "job_1");
        assert_eq!(d.error_info().unwrap().metadata["job_id"], "job_1");
        let s = to_status(ApiError::TooManyWatchStreams { limit: 3 });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.get_error_details().retry_info().is_some());
        let s = to_status(ApiError::MissingCredentials);
        assert_eq!(
            (s.code(), reason(&s).as_str()),
            (Code::Unauthenticated, "MISSING_CREDENTIALS")
        );
    }

    #[test]
    fn every_reason_is_upper_snake() {
        let all = [
            ApiError::InvalidJobSpec(vec![]),
            ApiError::InvalidRequest(vec![Violation::new("job_id", "required")]),
            ApiError::ProviderNotConfigured {
                provider: "p".into(),
                field: "jobs[0].p".into(),
            },
            ApiError::RequestIdReused,
            ApiError::JobNotFound("j".into()),
            ApiError::JobsNotFound(vec!["a".into(), "b".into()]),
            ApiError::BatchNotFound("b".into()),
            ApiError::JobStateConflict("x".into()),
            ApiError::TooManyWatchStreams { limit: 1 },
            ApiError::MissingCredentials,
            ApiError::InvalidCredentials,
            ApiError::ShuttingDown,
            ApiError::ProviderUnavailable("x".into()),
            ApiError::Internal("x".into()),
        ];
        for e in all {
            let r = reason(&to_status(e));
            assert!(
                r.len() <= 63
                    && r.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    && !r.ends_with('_'),
                "{r}"
            );
        }
    }

    #[test]
    fn webhook_table() {
        let cases = [
            (WebhookReject::UnsupportedMediaType, 415),
            (WebhookReject::TooLarge { limit: 1 }, 413),
            (
                WebhookReject::Engine(WebhookFailure::UnknownProvider("x".into())),
                404,
            ),
            (
                WebhookReject::Engine(WebhookFailure::Rejected(WebhookError::BadSignature(
                    "stale",
                ))),
                401,
            ),
            (
                WebhookReject::Engine(WebhookFailure::Rejected(WebhookError::NotConfigured)),
                401,
            ),
            (
                WebhookReject::Engine(WebhookFailure::Rejected(WebhookError::Malformed(
                    "x".into(),
                ))),
                400,
            ),
            (
                WebhookReject::Engine(WebhookFailure::Internal("x".into())),
                500,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(webhook_status(e).status.as_u16(), code);
        }
    }
}
