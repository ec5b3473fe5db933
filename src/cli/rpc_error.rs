//! A gateway error as a person reads it: code and message, the ErrorInfo reason, and every
//! detail that says what to fix (BadRequest field violations, precondition failures, the
//! resource not found, when to retry), decoded from the status details (AIP-193).

use tonic::Status;
use tonic_types::StatusExt;

/// Several lines: `CODE: message [REASON]`, then one indented line per detail.
pub fn describe_status(status: &Status) -> String {
    describe_with(status, &|field| field.to_owned())
}

/// As [`describe_status`], with each violation's field rewritten by `field` (the submit
/// command names the file line of `jobs[i]`).
pub fn describe_with(status: &Status, field: &dyn Fn(&str) -> String) -> String {
    let details = status.get_error_details();
    let mut s = format!("{:?}: {}", status.code(), status.message());
    match details.error_info() {
        Some(info) => s.push_str(&format!(" [{}]", info.reason)),
        // No ErrorInfo: the answer is the transport's, not the gateway's.
        None if status.code() == tonic::Code::Unavailable => {
            s.push_str(" (no gateway answered: is it running at --target?)");
        }
        None => {}
    }
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            s.push_str(&format!("\n  {}: {}", field(&v.field), v.description));
        }
    }
    if let Some(pre) = details.precondition_failure() {
        for v in &pre.violations {
            s.push_str(&format!(
                "\n  {} {}: {}",
                v.r#type, v.subject, v.description
            ));
        }
    }
    if let Some(r) = details.resource_info() {
        s.push_str(&format!(
            "\n  {} {}: {}",
            r.resource_type, r.resource_name, r.description
        ));
    }
    if let Some(q) = details.quota_failure() {
        for v in &q.violations {
            s.push_str(&format!("\n  {}: {}", v.subject, v.description));
        }
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        s.push_str(&format!("\n  retry after {:.1}s", delay.as_secs_f64()));
    }
    s
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::{ErrorDetails, FieldViolation};

    use super::*;

    #[test]
    fn reason_and_violations_are_shown() {
        let mut d = ErrorDetails::new();
        d.set_bad_request(vec![FieldViolation::new(
            "jobs[1].staticadslab.brand_id",
            "must start with brand_",
        )]);
        d.set_error_info(
            "INVALID_JOB_SPEC",
            "adgate",
            std::collections::HashMap::<String, String>::new(),
        );
        let st = Status::with_error_details(Code::InvalidArgument, "1 invalid field(s)", d);
        let s = describe_with(&st, &|f| format!("line 9 ({f})"));
        assert!(
            s.starts_with("InvalidArgument: 1 invalid field(s) [INVALID_JOB_SPEC]"),
            "{s}"
        );
        assert!(
            s.contains("\n  line 9 (jobs[1].staticadslab.brand_id): must start with brand_"),
            "{s}"
        );
    }
}
