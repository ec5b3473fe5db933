//! The engine's trace spans and job lifecycle events (target
//! [`adgate_generator::TRACE_TARGET`]: traces only, never logs).
//!
//! A provider call (a submit, a poll, a push stream) runs in a span of its own, whose provider
//! HTTP requests are its children; it is *linked* to the Submit of the jobs it is about (the
//! `traceparent` a job keeps), since that work happens later, in another trace. Submit, poll
//! and stream spans are linked when they start (to the jobs they send or follow; see
//! [`JobLinks`]); any other span (a webhook, a CancelJob) to the jobs whose changes it commits.
//! A job's changes are span events of whatever span commits them.
//!
//! Linking needs the OpenTelemetry bridge, which this crate does not depend on: the server
//! passes it as [`SpanLink`] in the engine's configuration. Without one, or when no trace
//! subscriber listens, every span here is a disabled callsite.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use adgate_generator::{JobState, TRACE_TARGET};
use adgate_store::JobRecord;

use crate::runtime::ProviderRuntime;
use crate::schedule::TrackerState;
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

/// Name of the span of a poll call.
const POLL_SPAN: &str = "provider poll";
/// Name of the span of a push stream followed for a job.
const STREAM_SPAN: &str = "provider stream";

/// The span of one poll call for `keys`, linked to the Submits of the jobs they follow.
pub(crate) fn poll_call(
    link: Option<SpanLink>,
    rt: &ProviderRuntime,
    keys: &[String],
) -> tracing::Span {
    let provider = &rt.name;
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        POLL_SPAN,
        otel.name = %format!("{provider} poll"),
        adgate.provider = %provider,
        adgate.keys = keys.len(),
    );
    if let Some(link) = link.filter(|_| !span.is_disabled()) {
        let jobs: Vec<String> = keys
            .iter()
            .flat_map(|k| rt.tracker.jobs_of_key(k))
            .collect();
        for tp in rt.links.of(&jobs) {
            link(&span, &tp);
        }
    }
    span
}

/// The span of a push stream followed for one job (open, updates, end), linked to its Submit.
pub(crate) fn stream_call(
    link: Option<SpanLink>,
    provider: &str,
    job_id: &str,
    traceparent: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        STREAM_SPAN,
        otel.name = %format!("{provider} stream"),
        adgate.provider = %provider,
        adgate.job.id = %job_id,
    );
    if let (Some(link), Some(tp)) = (link, traceparent)
        && !span.is_disabled()
    {
        link(&span, tp);
    }
    span
}

/// The Submit `traceparent` of each job a provider is following, while traces are on, so a
/// poll that changes nothing is still linked to the Submits of the jobs it asked about.
/// Filled when a provider accepts jobs; emptied as they end. A job resumed after a restart is
/// not in it (its polls are linked only when they change it).
#[derive(Debug, Default)]
pub(crate) struct JobLinks {
    by_job: Mutex<HashMap<String, Arc<str>>>,
}

impl JobLinks {
    /// Remember the jobs just accepted and tracked, when the current span is traced (traces
    /// on).
    pub(crate) fn remember(&self, jobs: &[JobRecord], tracker: &TrackerState) {
        if tracing::Span::current().is_disabled() {
            return;
        }
        // Jobs of one Submit share one traceparent: share one allocation too.
        let mut shared: HashMap<&str, Arc<str>> = HashMap::new();
        let mut map = self.lock();
        for j in jobs {
            if let Some(tp) = j.traceparent.as_deref()
                && tracker.has_job(&j.id)
            {
                let tp = shared.entry(tp).or_insert_with(|| Arc::from(tp)).clone();
                map.insert(j.id.clone(), tp);
            }
        }
        // A job that ended between the check above and the insert was forgotten before it
        // was remembered: drop such leftovers once they could matter.
        if map.len() > 2 * tracker.job_count() + 1024 {
            map.retain(|id, _| tracker.has_job(id));
        }
    }

    pub(crate) fn forget(&self, job_id: &str) {
        self.lock().remove(job_id);
    }

    /// The distinct traceparents of `jobs`.
    fn of(&self, jobs: &[String]) -> Vec<Arc<str>> {
        let map = self.lock();
        let mut seen = HashSet::new();
        jobs.iter()
            .filter_map(|j| map.get(j))
            .filter(|tp| seen.insert(Arc::as_ptr(tp)))
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<str>>> {
        self.by_job.lock().unwrap_or_else(|e| e.into_inner())
    }
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
    let linked_at_start = span
        .metadata()
        .is_some_and(|m| [SUBMIT_SPAN, POLL_SPAN, STREAM_SPAN].contains(&m.name()));
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
