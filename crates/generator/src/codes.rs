//! The public job error codes (`Job.error.code`), defined once. Callers switch on these; the
//! provider's own code travels separately in `JobError::provider_code`.

/// The provider reported that the job failed.
pub const PROVIDER_JOB_FAILED: &str = "PROVIDER_JOB_FAILED";
/// The provider refused the request (validation, a permanent error).
pub const PROVIDER_REJECTED: &str = "PROVIDER_REJECTED";
/// The provider refused the gateway's credentials.
pub const PROVIDER_AUTH_FAILED: &str = "PROVIDER_AUTH_FAILED";
/// The provider no longer knows the job (polls missed it repeatedly).
pub const PROVIDER_JOB_NOT_FOUND: &str = "PROVIDER_JOB_NOT_FOUND";
/// The provider finished but its answer lacks the result the job needs.
pub const PROVIDER_RESULT_MISSING: &str = "PROVIDER_RESULT_MISSING";
/// The provider's result expired before the gateway read it.
pub const RESULT_EXPIRED: &str = "RESULT_EXPIRED";
/// The output exists but its URL cannot be delivered (e.g. no webhooks configured).
pub const OUTPUT_URL_UNAVAILABLE: &str = "OUTPUT_URL_UNAVAILABLE";
/// The provider account has no balance left for this job.
pub const INSUFFICIENT_BALANCE: &str = "INSUFFICIENT_BALANCE";
/// The submit may have reached a provider without idempotency keys; not resent.
pub const UNKNOWN_OUTCOME: &str = "UNKNOWN_OUTCOME";
/// The job did not finish before its deadline.
pub const DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
/// The caller cancelled the job.
pub const CANCELLED_BY_CALLER: &str = "CANCELLED_BY_CALLER";
/// A job this one waited for (a design template its ad names) failed or was cancelled; this
/// one was never sent.
pub const DEPENDENCY_FAILED: &str = "DEPENDENCY_FAILED";

// Output custody (on an output's `custody_error`; the job itself stays COMPLETED).

/// The provider's URL was gone (404/410 on every try) before a copy succeeded.
pub const OUTPUT_EXPIRED: &str = "OUTPUT_EXPIRED";
/// The output is larger than the gateway's per-output limit.
pub const OUTPUT_TOO_LARGE: &str = "OUTPUT_TOO_LARGE";
/// No copy could be made within the retry horizon (network errors, 5xx, timeouts, or the
/// output store refusing the write).
pub const OUTPUT_UNREACHABLE: &str = "OUTPUT_UNREACHABLE";
