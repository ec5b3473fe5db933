//! The `adgate.v1.GatewayService` implementation: request checks, then one engine call.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use adgate_engine::eta::{Estimates, QueueEstimate};
use adgate_engine::{Engine, JobRequest, SubmitCommand};
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::convert;
use crate::errors::{ApiError, Violation, job_field};
use crate::metrics::GrpcMetrics;
use crate::pb;
use crate::pb::gateway_service_server::GatewayService;
use crate::providers;
use crate::spec_json;

mod search;

/// Most ids one BatchStatus may name.
pub const MAX_BATCH_STATUS_IDS: usize = 1_000;
/// Most jobs one WatchProgress may watch.
pub const MAX_WATCH_IDS: usize = 10_000;
const MAX_REQUEST_ID: usize = 128;
const MAX_ID_LEN: usize = 128;

/// Service knobs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub max_watch_streams: usize,
    pub heartbeat: Duration,
    /// The HTTP listener's base URL, which stored outputs' `stored_url` starts with (empty:
    /// the URLs stay paths).
    pub outputs_base: String,
}

/// The gRPC service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    engine: Engine,
    shutdown: CancellationToken,
    watch_slots: Arc<Semaphore>,
    cfg: ServiceConfig,
    metrics: GrpcMetrics,
}

/// A QUEUED job's place: its estimate, or, for a job whose submit attempt is already
/// recorded (being sent right now, so outside the queue the estimates were read from), first
/// in line and starting now.
fn place(job: &mut pb::Job, r: &adgate_engine::JobRecord, estimate: Option<&QueueEstimate>) {
    if let Some(e) = estimate {
        job.queue_position = e.position;
        job.estimated_start_time = Some(convert::timestamp(e.start_ms));
    } else if r.state == adgate_generator::JobState::Queued && r.attempt_id.is_some() {
        job.queue_position = 0;
        job.estimated_start_time = Some(prost_types::Timestamp::from(SystemTime::now()));
    }
}

impl Gateway {
    /// A job as the API shows it, with what its provider billed for it.
    fn job(&self, r: &adgate_engine::JobRecord) -> pb::Job {
        self.job_billed(r, self.engine.cost(r))
    }

    /// [`Gateway::job`] with its cost already known (`Engine::cost`).
    fn job_billed(
        &self,
        r: &adgate_engine::JobRecord,
        cost: Option<adgate_engine::StoredCost>,
    ) -> pb::Job {
        let mut job = convert::job_billed(r, cost);
        convert::set_outputs_base(&mut job, &self.cfg.outputs_base);
        job
    }

    /// [`Gateway::job_billed`] with the queue position and start estimate of a QUEUED job.
    fn job_estimated(
        &self,
        r: &adgate_engine::JobRecord,
        cost: Option<adgate_engine::StoredCost>,
        estimates: &Estimates,
    ) -> pb::Job {
        let mut job = self.job_billed(r, cost);
        place(&mut job, r, estimates.get(&r.id));
        job
    }

    /// Estimates for the queued jobs among `records`; estimates are advice, so a failed
    /// read of the queue leaves them unset rather than failing the call.
    async fn estimates(&self, records: &[&adgate_engine::JobRecord]) -> Estimates {
        match self.engine.queue_estimates(records).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "queue estimates unavailable");
                Estimates::default()
            }
        }
    }

    pub fn new(
        engine: Engine,
        cfg: ServiceConfig,
        shutdown: CancellationToken,
        metrics: GrpcMetrics,
    ) -> Self {
        Self {
            engine,
            shutdown,
            watch_slots: Arc::new(Semaphore::new(cfg.max_watch_streams)),
            cfg,
            metrics,
        }
    }

    fn observe<T>(&self, method: &str, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
        let r = r.map(Response::new).map_err(Status::from);
        self.metrics.record(
            method,
            r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok),
        );
        r
    }

    /// Validate every job and build the engine command. Nothing is stored on error.
    fn submit_command(
        &self,
        req: pb::SubmitRequest,
        caller: Caller,
        traceparent: Option<String>,
    ) -> Result<SubmitCommand, ApiError> {
        let mut violations = Vec::new();
        if req.request_id.chars().count() > MAX_REQUEST_ID {
            violations.push(Violation::new(
                "request_id",
                format!("at most {MAX_REQUEST_ID} characters"),
            ));
        }
        let max = self.engine.max_jobs_per_submit();
        if req.jobs.is_empty() || req.jobs.len() > max {
            violations.push(Violation::new(
                "jobs",
                format!("between 1 and {max} jobs are required"),
            ));
            return Err(ApiError::InvalidJobSpec(violations));
        }
        let configured: HashSet<String> = self.engine.provider_names().into_iter().collect();
        let mut unconfigured = None;
        let mut jobs = Vec::with_capacity(req.jobs.len());
        for (i, spec) in req.jobs.into_iter().enumerate() {
            let deadline = convert::check_envelope(i, &spec, &mut violations);
            let mut conv = Vec::new();
            let Some((field, mut json)) = spec_json::provider_spec(&spec, &mut conv) else {
                violations.push(Violation::new(
                    format!("jobs[{i}].provider"),
                    format!(
                        "exactly one of {} is required",
                        spec_json::proto_providers().join(", ")
                    ),
                ));
                continue;
            };
            violations.extend(
                conv.into_iter()
                    .map(|v| Violation::new(job_field(i, &field, &v.field), v.description)),
            );
            let Some((name, kind)) = spec_json::provider_of(&field, providers::names()) else {
                violations.push(Violation::new(
                    format!("jobs[{i}].{field}"),
                    "no registered provider offers this kind of job",
                ));
                continue;
            };
            if let (Some(kind), Some(o)) = (kind, json.as_object_mut()) {
                o.insert("kind".to_owned(), serde_json::Value::String(kind));
            }
            if !configured.contains(&name) {
                unconfigured.get_or_insert((name, i));
                continue;
            }
            let job = JobRequest {
                provider: name,
                spec: json,
                client_ref: spec.client_ref,
                labels: spec.labels.into_iter().collect(),
                deadline,
            };
            match self.engine.validate(&job) {
                Ok(()) => {}
                Err(adgate_engine::EngineError::Invalid(v)) => {
                    violations.extend(v.into_iter().map(|(_, _, f)| {
                        Violation::new(job_field(i, &field, &f.field), f.description)
                    }));
                }
                Err(e) => return Err(e.into()),
            }
            jobs.push(job);
        }
        if !violations.is_empty() {
            return Err(ApiError::InvalidJobSpec(violations));
        }
        if let Some((name, i)) = unconfigured {
            return Err(ApiError::ProviderNotConfigured {
                field: format!("jobs[{i}].{name}"),
                provider: name,
            });
        }
        let priority = match pb::Priority::try_from(req.priority) {
            Ok(pb::Priority::Unspecified | pb::Priority::Normal) => adgate_engine::DEFAULT_PRIORITY,
            Ok(pb::Priority::Interactive) => 1,
            Ok(pb::Priority::Bulk) => 3,
            Err(_) => {
                return Err(ApiError::InvalidRequest(vec![Violation::new(
                    "priority",
                    format!("unknown priority {}", req.priority),
                )]));
            }
        };
        let notify = match req.notify {
            Some(n) if !(n.url.is_empty() && n.events.is_empty()) => {
                match self.engine.check_notify(&caller.0, &n.url, &n.events) {
                    Ok(target) => Some(target),
                    Err(v) => {
                        return Err(ApiError::InvalidRequest(
                            v.into_iter()
                                .map(|(field, why)| Violation::new(field, why))
                                .collect(),
                        ));
                    }
                }
            }
            _ => None,
        };
        Ok(SubmitCommand {
            request_id: (!req.request_id.is_empty()).then_some(req.request_id),
            jobs,
            caller: caller.0,
            priority,
            traceparent,
            validate_only: req.validate_only,
            notify,
        })
    }

    /// Replays a batch's webhook events. A named caller may replay only its own batches.
    async fn redeliver_inner(
        &self,
        req: Request<pb::RedeliverEventsRequest>,
    ) -> Result<pb::RedeliverEventsResponse, ApiError> {
        let caller = Caller::of(&req);
        let batch_id = req.into_inner().batch_id;
        if batch_id.is_empty() {
            return Err(ApiError::InvalidRequest(vec![Violation::new(
                "batch_id",
                "is required",
            )]));
        }
        let jobs = self.engine.batch_jobs(&batch_id).await?;
        // As for ListBatches: anonymous (no auth) sees everything, a named caller its own.
        let owned = jobs.as_ref().is_some_and(|j| {
            caller.0 == adgate_engine::ANONYMOUS || j.first().is_none_or(|j| j.caller == caller.0)
        });
        if !owned {
            return Err(adgate_engine::EngineError::NotFound(batch_id).into());
        }
        let deliveries = self.engine.redeliver(&batch_id).await?;
        Ok(pb::RedeliverEventsResponse {
            deliveries: i64::try_from(deliveries).unwrap_or(i64::MAX),
        })
    }

    async fn submit_inner(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<pb::SubmitResponse, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        let caller = Caller::of(&req);
        // With traces on, this call's own server span (see `rpc_trace`), so the jobs' later
        // provider calls link to the Submit itself; otherwise the caller's context as sent.
        let traceparent = crate::telemetry::traceparent(&tracing::Span::current()).or_else(|| {
            req.metadata()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 128)
                .map(str::to_owned)
        });
        let cmd = self.submit_command(req.into_inner(), caller, traceparent)?;
        let validate_only = cmd.validate_only;
        let unstored: Vec<(String, String, i64, Option<String>)> = if validate_only {
            cmd.jobs
                .iter()
                .map(|j| {
                    (
                        j.provider.clone(),
                        cmd.caller.clone(),
                        cmd.priority,
                        self.engine.group_key(j),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let reply = self.engine.submit(cmd).await?;
        let (start, completion) = if validate_only {
            let start = self
                .engine
                .estimate_unstored(&unstored)
                .await
                .ok()
                .flatten();
            let typical = unstored
                .iter()
                .filter_map(|j| self.engine.typical_job_ms(&j.0))
                .max()
                .unwrap_or(0);
            (start, start.map(|s| s.saturating_add(typical)))
        } else if !reply.created_providers.is_empty() {
            // Created by this call, so all QUEUED: estimated without reading them back.
            // Estimates are advice: a failed read of the queue leaves them unset rather than
            // failing a Submit that was committed.
            match self.engine.created_estimates(&reply).await {
                Ok(estimates) => estimates,
                Err(e) => {
                    tracing::warn!(error = %e, "submit estimates unavailable");
                    (None, None)
                }
            }
        } else {
            // A replay: the jobs may have moved on since.
            match self.engine.get_jobs(&reply.job_ids).await {
                Ok((records, _)) => {
                    let refs: Vec<&adgate_engine::JobRecord> =
                        records.iter().map(|r| &**r).collect();
                    let estimates = self.estimates(&refs).await;
                    (
                        estimates.values().map(|e| e.start_ms).max(),
                        self.engine.completion_estimate(&refs, &estimates),
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "submit estimates unavailable");
                    (None, None)
                }
            }
        };
        Ok(pb::SubmitResponse {
            batch_id: reply.batch_id,
            job_ids: reply.job_ids,
            replayed: reply.replayed,
            estimated_cost: convert::costs(&reply.estimated_cost),
            estimated_start_time: start.map(convert::timestamp),
            estimated_completion_time: completion.map(convert::timestamp),
        })
    }

    async fn batch_status_inner(
        &self,
        req: pb::BatchStatusRequest,
    ) -> Result<pb::BatchStatusResponse, ApiError> {
        let (records, unknown) =
            match select_ids(&req.job_ids, &req.batch_id, MAX_BATCH_STATUS_IDS)? {
                Selector::Ids(ids) => self.engine.get_jobs(ids).await?,
                Selector::Batch(b) => {
                    let jobs = self
                        .engine
                        .batch_jobs(b)
                        .await?
                        .ok_or_else(|| ApiError::BatchNotFound(b.to_owned()))?;
                    (jobs.into_iter().map(Arc::new).collect(), Vec::new())
                }
            };
        // Each job's cost once: for the sum and for the job itself.
        let billed: Vec<Option<adgate_engine::StoredCost>> =
            records.iter().map(|r| self.engine.cost(r)).collect();
        let cost = adgate_engine::pricing::sum_by_unit(
            billed.iter().flatten().map(|c| (c.unit.as_str(), c.micros)),
        );
        let refs: Vec<&adgate_engine::JobRecord> = records.iter().map(|r| &**r).collect();
        let estimates = self.estimates(&refs).await;
        Ok(pb::BatchStatusResponse {
            cost: convert::costs(&cost),
            estimated_completion_time: self
                .engine
                .completion_estimate(&refs, &estimates)
                .map(convert::timestamp),
            counts: convert::state_counts(refs.iter().copied()),
            jobs: refs
                .iter()
                .zip(billed)
                .map(|(r, cost)| self.job_estimated(r, cost, &estimates))
                .collect(),
            unknown_job_ids: unknown,
        })
    }

    async fn get_job_inner(&self, req: pb::GetJobRequest) -> Result<pb::GetJobResponse, ApiError> {
        check_id("job_id", &req.job_id)?;
        let (mut found, _) = self
            .engine
            .get_jobs(std::slice::from_ref(&req.job_id))
            .await?;
        let rec = found.pop().ok_or(ApiError::JobNotFound(req.job_id))?;
        let estimates = self.estimates(&[&*rec]).await;
        Ok(pb::GetJobResponse {
            job: Some(self.job_estimated(&rec, self.engine.cost(&rec), &estimates)),
        })
    }

    async fn cancel_job_inner(
        &self,
        req: pb::CancelJobRequest,
    ) -> Result<pb::CancelJobResponse, ApiError> {
        check_id("job_id", &req.job_id)?;
        if self.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        let rec = self.engine.cancel(&req.job_id).await?;
        Ok(pb::CancelJobResponse {
            job: Some(self.job(&rec)),
        })
    }

    async fn cancel_batch_inner(
        &self,
        req: pb::CancelBatchRequest,
    ) -> Result<pb::CancelBatchResponse, ApiError> {
        check_id("batch_id", &req.batch_id)?;
        if self.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        let jobs = self
            .engine
            .cancel_batch(&req.batch_id)
            .await
            .map_err(|e| match e {
                adgate_engine::EngineError::NotFound(id) => ApiError::BatchNotFound(id),
                other => other.into(),
            })?;
        Ok(pb::CancelBatchResponse {
            jobs: jobs.iter().map(|r| self.job(r)).collect(),
        })
    }

    async fn watch_inner(&self, req: pb::WatchProgressRequest) -> Result<WatchStream, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        let ids: Vec<String> = match select_ids(&req.job_ids, &req.batch_id, MAX_WATCH_IDS)? {
            Selector::Ids(ids) => {
                let mut seen = HashSet::new();
                ids.iter()
                    .filter(|id| seen.insert(id.as_str()))
                    .cloned()
                    .collect()
            }
            Selector::Batch(b) => {
                let jobs = self
                    .engine
                    .batch_jobs(b)
                    .await?
                    .ok_or_else(|| ApiError::BatchNotFound(b.to_owned()))?;
                jobs.into_iter().map(|j| j.id).collect()
            }
        };
        let permit = self.watch_slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::TooManyWatchStreams {
                limit: self.cfg.max_watch_streams,
            }
        })?;
        let watch = self.engine.watch(ids.clone()).await?;
        if !watch.unknown_ids().is_empty() {
            return Err(ApiError::JobsNotFound(watch.unknown_ids().to_vec()));
        }
        // Queue positions and start estimates for the snapshot's QUEUED jobs (read through
        // the record cache; advice, so a failed read leaves them unset).
        let estimates = match self.engine.get_jobs(&ids).await {
            Ok((records, _))
                if records
                    .iter()
                    .any(|r| r.state == adgate_generator::JobState::Queued) =>
            {
                let refs: Vec<&adgate_engine::JobRecord> = records.iter().map(|r| &**r).collect();
                self.estimates(&refs).await
            }
            _ => Estimates::default(),
        };
        Ok(self.spawn_watch(watch, ids.len(), permit, estimates))
    }

    /// Serve one stream: snapshot, changes, heartbeats; end OK when every job is terminal,
    /// UNAVAILABLE on drain; stop at once when the client leaves.
    ///
    /// No task and no channel per stream: hyper polls the returned stream directly, and the
    /// stream polls the engine's `Watch`, the shutdown token and the heartbeat timer. Back-
    /// pressure is HTTP/2 flow control (hyper stops polling when the client's window is full;
    /// the bus keeps only the latest record per job meanwhile), and a departed client is
    /// noticed at once because hyper drops the stream on RST_STREAM or connection loss, which
    /// drops the `Watch` (unregistering it from the bus) and the permit.
    fn spawn_watch(
        &self,
        watch: adgate_engine::Watch,
        snapshot_len: usize,
        permit: OwnedSemaphorePermit,
        estimates: Estimates,
    ) -> WatchStream {
        self.metrics.watch_streams.inc();
        Box::pin(ProgressStream {
            watch,
            engine: self.engine.clone(),
            outputs_base: self.cfg.outputs_base.clone(),
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            idle: Box::pin(tokio::time::sleep(self.cfg.heartbeat)),
            heartbeat: self.cfg.heartbeat,
            remaining_snapshot: snapshot_len,
            estimates,
            ended: false,
            streams: self.metrics.watch_streams.clone(),
            events: self.metrics.watch_events.clone(),
            _permit: permit,
        })
    }
}

/// One WatchProgress response stream (see [`Gateway::spawn_watch`]).
struct ProgressStream {
    watch: adgate_engine::Watch,
    engine: Engine,
    outputs_base: String,
    // Boxed because both futures are `!Unpin`; two small allocations per stream instead of a
    // task, its future and a channel block.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    idle: Pin<Box<tokio::time::Sleep>>,
    heartbeat: Duration,
    remaining_snapshot: usize,
    ended: bool,
    streams: prometheus_client::metrics::gauge::Gauge,
    events: prometheus_client::metrics::counter::Counter,
    _permit: OwnedSemaphorePermit,
    /// Estimates for the snapshot's QUEUED jobs, taken when the stream opened.
    estimates: Estimates,
}

impl Stream for ProgressStream {
    type Item = Result<pb::WatchProgressResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // Drain first (as a biased select would): a stream ends with UNAVAILABLE once the
        // drain begins, so the client reconnects to another instance and loses nothing.
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(Some(Err(Status::from(ApiError::ShuttingDown))));
        }
        let msg = match this.watch.poll_record(cx) {
            Poll::Ready(Some(rec)) => {
                let snapshot = this.remaining_snapshot > 0;
                this.remaining_snapshot = this.remaining_snapshot.saturating_sub(1);
                let mut job = convert::with_outputs_base(
                    convert::job_billed(&rec, this.engine.cost(&rec)),
                    &this.outputs_base,
                );
                if snapshot && rec.state == adgate_generator::JobState::Queued {
                    place(&mut job, &rec, this.estimates.get(&rec.id));
                }
                pb::WatchProgressResponse {
                    event: Some(pb::watch_progress_response::Event::Job(job)),
                    snapshot,
                }
            }
            Poll::Ready(None) => {
                // Every job terminal: end with OK.
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => pb::WatchProgressResponse {
                    event: Some(pb::watch_progress_response::Event::Heartbeat(
                        pb::Heartbeat {
                            time: Some(prost_types::Timestamp::from(SystemTime::now())),
                        },
                    )),
                    snapshot: false,
                },
                Poll::Pending => return Poll::Pending,
            },
        };
        this.events.inc();
        let next = Instant::now() + this.heartbeat;
        this.idle.as_mut().reset(next);
        Poll::Ready(Some(Ok(msg)))
    }
}

impl Drop for ProgressStream {
    fn drop(&mut self) {
        // Dropping `watch` unregisters it from the bus; `_permit` frees the stream slot.
        self.streams.dec();
    }
}

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchProgressResponse, Status>> + Send + 'static>>;

enum Selector<'a> {
    Ids(&'a [String]),
    Batch(&'a str),
}

/// Exactly one of `job_ids` and `batch_id`, within limits.
fn select_ids<'a>(ids: &'a [String], batch: &'a str, max: usize) -> Result<Selector<'a>, ApiError> {
    match (ids.is_empty(), batch.is_empty()) {
        (true, true) | (false, false) => Err(ApiError::InvalidRequest(vec![Violation::new(
            "job_ids",
            "set exactly one of job_ids and batch_id",
        )])),
        (false, true) => {
            if ids.len() > max {
                return Err(ApiError::InvalidRequest(vec![Violation::new(
                    "job_ids",
                    format!("at most {max} ids per call"),
                )]));
            }
            if let Some(i) = ids
                .iter()
                .position(|id| id.is_empty() || id.len() > MAX_ID_LEN)
            {
                return Err(ApiError::InvalidRequest(vec![Violation::new(
                    format!("job_ids[{i}]"),
                    format!("must be 1–{MAX_ID_LEN} characters"),
                )]));
            }
            Ok(Selector::Ids(ids))
        }
        (true, false) => {
            check_id("batch_id", batch)?;
            Ok(Selector::Batch(batch))
        }
    }
}

fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ApiError::InvalidRequest(vec![Violation::new(
            field,
            format!("required, 1–{MAX_ID_LEN} characters"),
        )]));
    }
    Ok(())
}

#[tonic::async_trait]
impl GatewayService for Gateway {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let r = self.submit_inner(request).await;
        self.observe("Submit", r)
    }

    async fn batch_status(
        &self,
        request: Request<pb::BatchStatusRequest>,
    ) -> Result<Response<pb::BatchStatusResponse>, Status> {
        let r = self.batch_status_inner(request.into_inner()).await;
        self.observe("BatchStatus", r)
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = self.list_jobs_inner(request).await;
        self.observe("ListJobs", r)
    }

    async fn list_batches(
        &self,
        request: Request<pb::ListBatchesRequest>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let r = self.list_batches_inner(request).await;
        self.observe("ListBatches", r)
    }

    async fn redeliver_events(
        &self,
        request: Request<pb::RedeliverEventsRequest>,
    ) -> Result<Response<pb::RedeliverEventsResponse>, Status> {
        let r = self.redeliver_inner(request).await;
        self.observe("RedeliverEvents", r)
    }

    type WatchProgressStream = WatchStream;

    async fn watch_progress(
        &self,
        request: Request<pb::WatchProgressRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        let r = self.watch_inner(request.into_inner()).await;
        self.observe("WatchProgress", r)
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let r = self.get_job_inner(request.into_inner()).await;
        self.observe("GetJob", r)
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let r = self.cancel_job_inner(request.into_inner()).await;
        self.observe("CancelJob", r)
    }

    async fn cancel_batch(
        &self,
        request: Request<pb::CancelBatchRequest>,
    ) -> Result<Response<pb::CancelBatchResponse>, Status> {
        let r = self.cancel_batch_inner(request.into_inner()).await;
        self.observe("CancelBatch", r)
    }

    async fn list_providers(
        &self,
        _request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let providers = self
            .engine
            .providers()
            .iter()
            .map(convert::provider)
            .collect();
        self.observe("ListProviders", Ok(pb::ListProvidersResponse { providers }))
    }
}
