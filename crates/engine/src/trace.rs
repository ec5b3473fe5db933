//! The engine's trace spans and job lifecycle events (target
//! [`adgate_generator::TRACE_TARGET`]: traces only, never logs).
//!
//! A provider call (a submit, a poll) runs in a span of its own, whose provider HTTP requests
//! are its children; it is *linked* to the Submit of the jobs it is about (the `traceparent` a
//! job keeps), since that work happens later, in another trace: a submit call to every job it
//! sends, any other span to the jobs whose changes it commits. A job's changes are span events
//! of whatever span commits them (a provider call, a webhook, a CancelJob).
//!
//! Linking needs the OpenTelemetry bridge, which this crate does not depend on: the server
//! passes it as [`SpanLink`] in the engine's configuration. Without one, or when no trace
//! subscriber listens, every span here is a disabled callsite.

use std::collections::HashSet;

use adgate_generator::{JobState, TRACE_TARGET};
use adgate_store::JobRecord;
use tracing::Level;

/// Most per-job events one call adds to a span (a Submit may carry 10,000 jobs; trace backends
/// keep about a hundred events per span anyway). Past it, one summary event gives the count.
const MAX_JOB_EVENTS: usize = 100;

/// Adds a link from a span to the span a W3C `traceparent` names (ignoring a malformed one).
pub type SpanLink = fn(&tracing::Span, &str);

/// "job submitted", for each job a Submit stored (in the Submit's span).
pub(crate) fn jobs_submitted(batch_id: &str, job_ids: &[String]) {
    if tracing::Span::current().is_disabled() {
        return;
    }
    summary(job_ids.len(), "jobs submitted");
    for id in job_ids.iter().take(MAX_JOB_EVENTS) {
        tracing::event!(
            target: TRACE_TARGET,
            Level::INFO,
            adgate.job.id = %id,
            adgate.batch.id = %batch_id,
            "job submitted"
        );
    }
}

/// Name of the span of a submit call, which is linked to its jobs' Submits when it starts.
const SUBMIT_SPAN: &str = "provider submit";

/// The span of one submit call to a provider, linked to the Submit of each job it sends, with
/// a "job sent to the provider" event per job.
pub(crate) fn submit_call(
    link: Option<SpanLink>,
    provider: &str,
    jobs: &[JobRecord],
) -> tracing::Span {
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        SUBMIT_SPAN,
        otel.name = %format!("{provider} submit"),
        adgate.provider = %provider,
        adgate.jobs = jobs.len(),
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(link) = link {
        link_distinct(link, &span, jobs);
    }
    span.in_scope(|| {
        summary(jobs.len(), "jobs sent to the provider");
        for j in jobs.iter().take(MAX_JOB_EVENTS) {
            tracing::event!(
                target: TRACE_TARGET,
                Level::INFO,
                adgate.job.id = %j.id,
                adgate.batch.id = %j.batch_id,
                "job sent to the provider"
            );
        }
    });
    span
}

/// The span of one poll call (`keys` provider keys). Its links are added as the jobs it
/// changes are committed ([`jobs_changed`]).
pub(crate) fn poll_call(provider: &str, keys: usize) -> tracing::Span {
    tracing::info_span!(
        target: TRACE_TARGET,
        "provider poll",
        otel.name = %format!("{provider} poll"),
        adgate.provider = %provider,
        adgate.keys = keys,
    )
}

/// Committed job changes, as events of the current span (a job's state: queued, processing,
/// completed, …), which is linked to each job's Submit unless it is a submit call (linked when
/// it started).
pub(crate) fn jobs_changed(link: Option<SpanLink>, changed: &[JobRecord]) {
    let span = tracing::Span::current();
    if span.is_disabled() || changed.is_empty() {
        return;
    }
    summary(changed.len(), "jobs changed");
    for rec in changed.iter().take(MAX_JOB_EVENTS) {
        let state = state_name(rec.state);
        tracing::event!(
            target: TRACE_TARGET,
            Level::INFO,
            adgate.job.id = %rec.id,
            adgate.job.state = state,
            adgate.job.revision = rec.revision,
            "job {state}"
        );
    }
    let linked_at_start = span.metadata().is_some_and(|m| m.name() == SUBMIT_SPAN);
    if let Some(link) = link.filter(|_| !linked_at_start) {
        link_distinct(link, &span, changed);
    }
}

/// The span of one inbound provider webhook (an HTTP server span).
pub(crate) fn webhook(provider: &str) -> tracing::Span {
    tracing::info_span!(
        target: TRACE_TARGET,
        "provider webhook",
        otel.name = "POST /webhooks/{provider}",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/webhooks/{provider}",
        adgate.provider = %provider,
    )
}

fn summary(count: usize, what: &'static str) {
    if count > MAX_JOB_EVENTS {
        tracing::event!(target: TRACE_TARGET, Level::INFO, adgate.jobs = count, "{what}");
    }
}

fn link_distinct(link: SpanLink, span: &tracing::Span, jobs: &[JobRecord]) {
    let mut seen = HashSet::new();
    for tp in jobs.iter().filter_map(|j| j.traceparent.as_deref()) {
        if seen.insert(tp) {
            link(span, tp);
        }
    }
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Processing => "processing",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}
