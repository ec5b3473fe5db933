//! The `Generator` trait and the limits descriptor.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde_json::Value;

use crate::error::{FieldViolation, GenError, WebhookError};
use crate::model::ProviderUpdate;

/// A provider's request budget: at most `requests` in any rolling `per` window, per API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBudget {
    pub requests: u32,
    pub per: Duration,
}

/// Which push channels an adapter can use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushChannels {
    /// Per-job server-sent events ([`Generator::stream_updates`]).
    pub sse: bool,
    /// Signed webhooks ([`Generator::parse_webhook`]) — true only when a secret is configured
    /// and the provider can reach the gateway (public URL set).
    pub webhooks: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CancelSupport {
    #[default]
    None,
    /// Cancel works on a whole poll key (e.g. a Pictify batch): all its jobs go together.
    PerPollKey,
    /// Each job can be cancelled on its own.
    PerJob,
}

/// What the engine needs to know to drive a provider well. Defaults come from the provider's
/// documents; every field can be overridden from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Jobs per submit call (StaticAdsLab 1, Pictify 100, Abyssale 1).
    pub max_items_per_submit: usize,
    /// Poll keys per poll call (StaticAdsLab 80 ids, Pictify/Abyssale 1).
    pub max_keys_per_poll: usize,
    /// Never poll the same key more often than this.
    pub min_poll_interval: Duration,
    /// First spacing between polls of one key.
    pub poll_interval: Duration,
    /// When `Some`, spacing doubles after each poll that finds the key still running, up to
    /// this ceiling (Abyssale's SDK: 3 s doubling to 30 s).
    pub max_poll_interval: Option<Duration>,
    /// Don't poll a freshly submitted key before this much time has passed: the provider's
    /// documented minimum job duration. Polls before it can only answer "processing".
    pub first_poll_after: Duration,
    /// Shared by submits, polls and streams.
    pub budget: RequestBudget,
    /// Wait applied after a 429 that carried no Retry-After.
    pub default_retry_after: Duration,
    pub max_concurrent_submits: usize,
    /// Whether the provider honours an `Idempotency-Key`; without it the engine never
    /// resubmits a call whose outcome is unknown.
    pub idempotency: bool,
    pub push: PushChannels,
    pub cancel: CancelSupport,
    pub default_deadline: Duration,
    /// How long a job usually takes at this provider, per its documents. With webhooks, the
    /// first backstop poll (for a push that never came) waits this long.
    pub typical_job_duration: Duration,
    /// The longest a job may take per the provider's documents. A job whose submit outcome is
    /// unknown at a provider without idempotency waits this long (plus a margin) for a
    /// callback before it fails `UNKNOWN_OUTCOME`.
    pub longest_job_duration: Duration,
    /// At most this many poll keys may be running (submitted, not yet terminal) at once; a new
    /// submit waits while the cap is reached (Pictify: concurrent batches per plan, 1 / 3 / 10
    /// [PX-LIVE:api-reference/batch]). `None` = no cap beyond `max_concurrent_submits`.
    pub max_running_poll_keys: Option<usize>,
    /// A second, longer request budget on top of `budget` (Pictify: requests per day per plan
    /// [PX-LIVE:authentication]). `None` = none documented.
    pub daily_budget: Option<RequestBudget>,
    /// How often the engine calls [`Generator::check_push`]; `None` = never (nothing to check).
    pub push_check_interval: Option<Duration>,
    /// With webhooks, backstop polls may drift this far apart (or 1.9 × the longest poll
    /// spacing, if longer): the most a lost push costs beyond its job's end. A gateway promise
    /// rather than a provider fact, so every adapter sets [`LOST_PUSH_BOUND`]; it is a field
    /// because `time_scale` scales it with the other durations.
    pub lost_push_bound: Duration,
}

/// "A lost push costs at most about a minute" (README, events in any order). Without this
/// floor a provider with a short poll spacing had its webhook backstop 1.9 × that spacing
/// apart: Pictify (5 s) was polled every 9.5 s for batch after batch waiting in line behind
/// its plan's concurrency cap, 0.33 requests per job where its budget target is 0.1.
pub const LOST_PUSH_BOUND: Duration = Duration::from_secs(60);

/// The state of one push subscription at the provider, as the adapter read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    /// The provider's id of the subscription (`wh_…`), or empty when none exists.
    pub id: String,
    /// The event it delivers (`render.completed`).
    pub event: String,
    /// `active`, `paused`, `failed`, or `missing` when the gateway needs it and none exists.
    pub status: String,
    /// What the configuration asks to be done about it; the engine calls
    /// [`Generator::fix_push`] for every subscription whose action is not `None`, one request
    /// each, under the request budget.
    pub action: PushAction,
}

/// A change to a push subscription that the adapter asks the engine to make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PushAction {
    #[default]
    None,
    /// Resume a paused subscription.
    Resume,
    /// Create the missing subscription for `event` (the adapter keeps its secret).
    Create,
    /// Delete a subscription of this gateway's that it can no longer verify (its secret was
    /// shown once, to a previous process).
    Delete,
}

impl PushSubscription {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// The health of a provider's push channel ([`Generator::check_push`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushHealth {
    pub subscriptions: Vec<PushSubscription>,
}

impl PushHealth {
    /// Why pushes may not arrive, or `None` when every subscription is active.
    pub fn degraded_reason(&self) -> Option<String> {
        let bad: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|s| !s.is_active())
            .map(|s| {
                if s.id.is_empty() {
                    format!(
                        "no {} subscription targets this gateway's webhook URL",
                        s.event
                    )
                } else {
                    format!("{} subscription {} is {}", s.event, s.id, s.status)
                }
            })
            .collect();
        (!bad.is_empty()).then(|| {
            format!(
                "{}: its pushes may not arrive; jobs finish by polling",
                bad.join(", ")
            )
        })
    }
}

/// A rate-limit reading from a provider's response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSnapshot {
    pub limit: Option<u32>,
    pub remaining: u32,
    /// Time until the window resets (converted from Unix time where the provider uses it).
    pub reset_after: Duration,
}

/// A value together with the rate-limit headers of the response that carried it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<T> {
    pub value: T,
    pub rate: Option<RateLimitSnapshot>,
}

impl<T> Observed<T> {
    pub fn new(value: T, rate: Option<RateLimitSnapshot>) -> Self {
        Self { value, rate }
    }
}

/// One job inside a submit call.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitItem {
    pub job_id: String,
    pub spec: Value,
}

/// One provider call's worth of jobs. `idempotency_key` is stable across retries and restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitBatch {
    pub idempotency_key: String,
    pub items: Vec<SubmitItem>,
}

/// A job the provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub job_id: String,
    /// The provider's reference for this job (`ia_…`, `batch_x:3`, a UUID).
    pub provider_ref: String,
    /// True when the provider said it replayed an earlier response for this key.
    pub replayed: bool,
}

/// A verified webhook, parsed into updates.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WebhookEvent {
    /// The provider's delivery id, stable across its retries; used to drop duplicates.
    pub delivery_id: Option<String>,
    pub updates: Vec<ProviderUpdate>,
    /// Poll keys worth polling now (e.g. Pictify `batch.completed` names a batch).
    pub poll_hints: Vec<String>,
    /// Correlation keys whose in-flight jobs' poll keys are worth polling now: an event says
    /// something happened to one of them without saying which (Pictify `render.failed` names
    /// only the template).
    pub poll_correlated: Vec<String>,
    /// The gateway job this delivery was addressed to, when the adapter put the job's identity
    /// into something the provider echoes (Abyssale's `callback_url`) and verified it. Lets a
    /// callback bind to its job even when the submit's answer (the provider ref) never came.
    pub bound_job: Option<String>,
}

pub type UpdateStream = BoxStream<'static, Result<ProviderUpdate, GenError>>;

/// A provider adapter. Implementations translate between the engine's model and one
/// provider's HTTP API and nothing more: no retries, sleeps, budgets or persistence.
#[async_trait]
pub trait Generator: Send + Sync + 'static {
    /// Short lowercase name used in config, metrics and the API (`staticadslab`).
    fn name(&self) -> &'static str;

    fn limits(&self) -> Limits;

    /// Check a spec before anything is stored. Paths are relative to the spec.
    fn validate(&self, spec: &Value) -> Result<(), Vec<FieldViolation>>;

    /// Jobs with the same group key may share one submit call (Pictify: template and render
    /// options). `None` means any jobs may be grouped.
    fn group_key(&self, _spec: &Value) -> Option<String> {
        None
    }

    /// A key that webhook updates may use instead of a provider reference
    /// ([`crate::UpdateTarget::Correlation`]).
    fn correlation_key(&self, _spec: &Value) -> Option<String> {
        None
    }

    /// How many images a job with `spec` produces when a push delivers them one at a time
    /// (Pictify renders one image per layout, each in its own `render.completed`): a job
    /// completes once it holds this many outputs. An update carrying them all at once (a poll,
    /// an Abyssale callback) completes it regardless.
    fn expected_outputs(&self, _spec: &Value) -> usize {
        1
    }

    /// The gateway job a spec builds on, if any (a StaticAdsLab edit names the editable ad it
    /// edits). The engine reads that job at Submit and asks [`Generator::bind_reference`].
    fn referenced_job(&self, _spec: &Value) -> Option<String> {
        None
    }

    /// Whether a job with `spec` may build on `job`, and the spec to store, completed with
    /// what the provider needs from it (the edited ad's id). `Err` says why not; the Submit is
    /// then refused with FAILED_PRECONDITION and nothing is stored or sent.
    fn bind_reference(&self, spec: &Value, job: &crate::JobView<'_>) -> Result<Value, String> {
        let _ = job;
        Ok(spec.clone())
    }

    /// What a job with `spec` costs, by the provider's documents (every documented provider
    /// bills completed work only). `None` where nothing is documented for this kind of job.
    fn price(&self, _spec: &Value) -> Option<crate::Price> {
        None
    }

    /// The job of the same Submit that a job with `spec` waits for, as the caller named it:
    /// `(path of the naming field, that job's client_ref)` (a StaticAdsLab ad naming a design
    /// template created by the same Submit). The engine resolves it at Submit, holds the job
    /// QUEUED until that job completes, then calls [`Generator::bind_awaited`]; a failed or
    /// cancelled awaited job fails this one with `DEPENDENCY_FAILED`, unsent.
    fn awaits(&self, _spec: &Value) -> Option<(String, String)> {
        None
    }

    /// The spec to send once the awaited job completed (the template's `dt_` id filled in);
    /// `Err` says why that job cannot serve (the job then fails `DEPENDENCY_FAILED`).
    fn bind_awaited(&self, spec: &Value, job: &crate::JobView<'_>) -> Result<Value, String> {
        let _ = job;
        Ok(spec.clone())
    }

    /// Whether a poll key is polled at [`Limits::min_poll_interval`] from the start instead
    /// of the provider's usual schedule: a kind of job much faster than the provider's main
    /// one ("2 seconds works for design templates (faster pipeline)", 4 s and a first poll at
    /// 30 s for image ads [SEED-1]).
    fn polled_fast(&self, _poll_key: &str) -> bool {
        false
    }

    /// Whether [`Generator::stream_updates`] can follow this job, for providers with
    /// [`PushChannels::sse`]: a provider may offer a stream for one kind of job only.
    fn streams(&self, _provider_ref: &str) -> bool {
        true
    }

    /// Keys of different groups are never polled in one call: they are read from different
    /// endpoints (StaticAdsLab image ads and design templates), and one poll call must be one
    /// request, since that is what the engine takes from the budget for it.
    fn poll_group(&self, _poll_key: &str) -> &'static str {
        ""
    }

    /// Whether a job with `spec` is the one an event carrying `fields` names (see
    /// [`crate::UpdateTarget::Correlated`]). Only called for jobs whose correlation key matched.
    fn correlates(&self, _spec: &Value, _fields: &serde_json::Map<String, Value>) -> bool {
        false
    }

    /// A fingerprint of everything a job with `spec` was submitted with that an event may
    /// echo back (Pictify: the template and every variable, as printed). Equal to
    /// [`Generator::event_fingerprint`] of an event that carries exactly that, which lets the
    /// engine find the job in one lookup among thousands of unfinished jobs of one template
    /// instead of scanning them. A hint only: a job it names is still checked with
    /// [`Generator::correlates`]. `None` (the default): correlation is by scan only.
    fn job_fingerprint(&self, _spec: &Value) -> Option<u64> {
        None
    }

    /// The fingerprint of an event with correlation `key` carrying `fields` (see
    /// [`Generator::job_fingerprint`]).
    fn event_fingerprint(
        &self,
        _key: &str,
        _fields: &serde_json::Map<String, Value>,
    ) -> Option<u64> {
        None
    }

    /// The key polls are made by. Several jobs may share one (a Pictify batch).
    fn poll_key(&self, provider_ref: &str) -> String {
        provider_ref.to_owned()
    }

    /// Submit one call's worth of jobs. On success every item is accepted.
    async fn submit(&self, batch: SubmitBatch) -> Result<Observed<Vec<Accepted>>, GenError>;

    /// Ask for the state of up to `max_keys_per_poll` poll keys in one call. Updates target
    /// provider refs; a key the provider does not know yields `RemoteState::NotFound` for it.
    async fn poll(&self, keys: &[String]) -> Result<Observed<Vec<ProviderUpdate>>, GenError>;

    /// Open a push stream for one job (StaticAdsLab SSE). The stream ends after a terminal
    /// event or when the connection drops; the engine then polls once more.
    async fn stream_updates(&self, _provider_ref: &str) -> Result<UpdateStream, GenError> {
        Err(GenError::Unsupported("stream_updates"))
    }

    /// Verify a webhook's signature and parse it. Must be constant-time in the signature and
    /// reject timestamps more than the tolerance away from `now`.
    fn parse_webhook(
        &self,
        _headers: &http::HeaderMap,
        _body: &[u8],
        _now: SystemTime,
    ) -> Result<WebhookEvent, WebhookError> {
        Err(WebhookError::NotConfigured)
    }

    /// [`Generator::parse_webhook`] for providers that deliver to a URL the gateway chose per
    /// job, query string included (`query` without the `?`, empty when absent).
    fn parse_webhook_query(
        &self,
        _query: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<WebhookEvent, WebhookError> {
        self.parse_webhook(headers, body, now)
    }

    /// Cancel at the provider, by poll key (see [`Limits::cancel`]).
    async fn cancel(&self, _poll_key: &str) -> Result<(), GenError> {
        Err(GenError::Unsupported("cancel"))
    }

    /// Read the push channel's state at the provider (e.g. Pictify webhook subscriptions, which
    /// it pauses after five failed deliveries). Called by the engine every
    /// [`Limits::push_check_interval`] after taking one unit of the request budget, so an
    /// implementation makes exactly one request. `Ok(None)` = nothing to check.
    async fn check_push(&self) -> Result<Option<PushHealth>, GenError> {
        Ok(None)
    }

    /// Carry out `sub.action` (one request, under the budget) and return the subscription as
    /// it is afterwards (`None` once deleted).
    async fn fix_push(
        &self,
        _sub: &PushSubscription,
    ) -> Result<Option<PushSubscription>, GenError> {
        Err(GenError::Unsupported("fix_push"))
    }

    /// Why the adapter is degraded even when reachable (e.g. Pictify without webhooks cannot
    /// deliver URLs). `None` when fully functional.
    fn degraded_reason(&self) -> Option<String> {
        None
    }
}
