//! Per provider: follow in-flight jobs until they are terminal (the schedule itself is in
//! `schedule`).
//!
//! Jobs are tracked by *poll key* (a StaticAdsLab ad, a Pictify batch, an Abyssale request).
//! Due keys are polled together in calls of up to `max_keys_per_poll`; a round also takes keys
//! due within half a poll interval, so calls go out full instead of one key at a time. Keys
//! whose jobs are followed by a push stream are skipped until the stream ends, and then polled
//! once more (the final GET the StaticAdsLab documents require).
//!
//! Updates from polls and streams go through [`events::apply_updates`], as webhooks do.

use std::sync::Arc;
use std::time::Duration;

use adgate_generator::{GenError, JobState, RemoteState};
use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::budget::Priority;
use crate::error::EngineError;
use crate::events::{self, Source};
use crate::runtime::{ProviderRuntime, Shared};
use crate::trace;

/// Track every job a previous process left in flight.
pub(crate) async fn resume(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
) -> Result<(), EngineError> {
    // Only (id, ref, key) per job: loading full records here (specs and all) made the
    // start-up heap peak several times the steady state, and glibc keeps such a peak.
    let jobs = shared.store.active_refs(&rt.name).await?;
    for job in &jobs {
        if let Some(key) = &job.poll_key {
            // Due now: the state may have moved on while we were down.
            rt.tracker
                .add_ref(&job.job_id, &job.provider_ref, key, Duration::ZERO);
        }
    }
    if !jobs.is_empty() {
        tracing::info!(provider = %rt.name, jobs = jobs.len(), "resumed tracking");
    }
    Ok(())
}

pub(crate) async fn run(shared: Arc<Shared>, rt: Arc<ProviderRuntime>) {
    let coalesce = rt.limits.poll_interval / 2;
    loop {
        let sleep_until = rt
            .tracker
            .next_due()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = rt.tracker.wake.notified() => continue,
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
        let round = Instant::now();
        let mut keys = rt.tracker.take_due(round, coalesce);
        // One poll call reads one endpoint (one request, one unit of budget).
        keys.sort_by_key(|k| rt.generator.poll_group(k));
        let mut chunks: Vec<&[String]> = Vec::new();
        for group in keys.chunk_by(|a, b| rt.generator.poll_group(a) == rt.generator.poll_group(b))
        {
            chunks.extend(group.chunks(rt.limits.max_keys_per_poll.max(1)));
        }
        for chunk in chunks {
            let waited = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                w = rt.acquire(&shared, Priority::Poll) => w,
            };
            shared.metrics.budget_wait(&rt.name, waited.as_secs_f64());
            // When polls had to wait for budget, the provider's limit is the bottleneck: count
            // the next interval from after the wait, so a saturated provider is polled less
            // and its budget goes to submits, which polls cannot make faster.
            let base = if waited > rt.limits.poll_interval / 2 {
                Instant::now()
            } else {
                round
            };
            poll_chunk(&shared, &rt, chunk, base).await;
        }
    }
}

async fn poll_chunk(
    shared: &Arc<Shared>,
    rt: &Arc<ProviderRuntime>,
    chunk: &[String],
    round: Instant,
) {
    let span = trace::poll_call(shared.span_link, rt, chunk);
    let started = Instant::now();
    let result = rt.generator.poll(chunk).instrument(span.clone()).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.class(),
    };
    shared
        .metrics
        .request(&rt.name, "poll", outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(observed) => {
            rt.observe(shared, observed.rate);
            rt.set_health(true, None);
            if let Err(e) = events::apply_updates(shared, rt, observed.value, Source::Observed)
                .instrument(span)
                .await
            {
                tracing::warn!(provider = %rt.name, error = %e, "applying poll results failed");
            }
        }
        Err(GenError::RateLimited { retry_after }) => {
            rt.block(shared, retry_after.unwrap_or(rt.limits.default_retry_after));
            shared.metrics.retry(&rt.name, "rate_limited");
        }
        Err(e) => {
            rt.set_health(false, Some(e.to_string()));
            shared.metrics.retry(&rt.name, e.class());
        }
    }
    for key in chunk {
        rt.tracker.reschedule(key, &rt.limits, round);
    }
}

/// Open push streams for watched jobs of providers that have them, one per job however many
/// watchers there are, and never more than a tenth of the provider's request budget at once.
pub(crate) async fn stream_watched(shared: &Arc<Shared>, job_ids: &[String]) {
    if !shared.providers.values().any(|rt| rt.limits.push.sse) {
        return;
    }
    let Ok(jobs) = shared.store.get_jobs(job_ids).await else {
        return;
    };
    for job in jobs {
        let Some(rt) = shared.providers.get(&job.provider) else {
            continue;
        };
        if !rt.limits.push.sse || job.state != JobState::Processing {
            continue;
        }
        let (Some(provider_ref), Some(key)) = (job.provider_ref.clone(), job.poll_key.clone())
        else {
            continue;
        };
        // Not every kind of job has a stream (StaticAdsLab: ads do, templates and edits not);
        // opening one would only spend a request on the refusal.
        if !rt.generator.streams(&provider_ref) {
            continue;
        }
        let cap = (rt.limits.budget.requests as usize / 10).max(1);
        if rt.tracker.streaming_count() >= cap || !rt.tracker.set_streaming(&job.id, true) {
            continue;
        }
        let span = trace::stream_call(
            shared.span_link,
            &rt.name,
            &job.id,
            job.traceparent.as_deref(),
        );
        shared.spawn(
            follow_stream(shared.clone(), rt.clone(), job.id, provider_ref, key).instrument(span),
        );
    }
}

async fn follow_stream(
    shared: Arc<Shared>,
    rt: Arc<ProviderRuntime>,
    job_id: String,
    provider_ref: String,
    key: String,
) {
    let waited = tokio::select! {
        _ = shared.shutdown.cancelled() => {
            rt.tracker.set_streaming(&job_id, false);
            return;
        }
        w = rt.acquire(&shared, Priority::Poll) => w,
    };
    shared.metrics.budget_wait(&rt.name, waited.as_secs_f64());
    let started = Instant::now();
    let opened = rt.generator.stream_updates(&provider_ref).await;
    let outcome = if opened.is_ok() { "ok" } else { "error" };
    shared
        .metrics
        .request(&rt.name, "stream", outcome, started.elapsed().as_secs_f64());
    if let Ok(mut stream) = opened {
        loop {
            let item = tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(update)) => {
                    let terminal =
                        matches!(update.state, RemoteState::Failed | RemoteState::Cancelled);
                    if let Err(e) =
                        events::apply_updates(&shared, &rt, vec![update], Source::Observed).await
                    {
                        tracing::warn!(provider = %rt.name, error = %e, "applying a stream update failed");
                    }
                    if terminal {
                        break;
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
    }
    rt.tracker.set_streaming(&job_id, false);
    // The stream ended (complete, error or drop): one final poll reads the outcome.
    rt.tracker.mark_due(&key);
}
