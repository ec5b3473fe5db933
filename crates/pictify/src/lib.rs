//! adgate's Pictify adapter: a pure translator behind [`adgate_generator::Generator`].
//!
//! - [`spec`]: the caller's spec (`template_uid`, `variables`, `format`, `quality`, `layout`),
//!   its validation, the group key and the correlation key.
//! - [`wire`]: Pictify's request/response/event types (camelCase, tolerant).
//! - [`results`]: batch results → per-item updates.
//! - [`webhook`]: `X-Pictify-Signature` verification and event translation.
//! - [`errors`]: error bodies and `X-RateLimit-*` headers → `GenError` / `RateLimitSnapshot`.
//!
//! Conventions the engine relies on:
//! - One submit = one `POST /templates/{uid}/batch-render` of up to `batch_size` (100) items that
//!   share a group key; item *i* gets provider ref `"{batchId}:{i}"` and poll key `batchId`.
//! - Pictify's poll returns no URLs ([PX-PY], [SEED-3]); URLs come only in `render.completed`
//!   webhooks, which name the template and the variable values, so those updates target
//!   `UpdateTarget::Correlated` (template + the variables the event carries). Without usable webhooks (secret and
//!   public URL), a rendered item ends `Failed` with `OUTPUT_URL_UNAVAILABLE`.
//! - A batch Pictify does not know (404 on results) yields one update with
//!   `UpdateTarget::PollKey(batchId)` and `RemoteState::NotFound`: it stands for every item of
//!   that batch.

pub mod errors;
pub mod results;
pub mod spec;
pub mod subscriptions;
pub mod webhook;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use adgate_generator::transport::{self, Effect};
use adgate_generator::{
    Accepted, CancelSupport, FieldViolation, GenError, Generator, Limits, Observed,
    ProviderContext, ProviderUpdate, PushAction, PushChannels, PushHealth, PushSubscription,
    RemoteState, RequestBudget, SubmitBatch, UpdateTarget, WebhookError, WebhookEvent,
};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::spec::Spec;
use crate::subscriptions::{ManagedSecrets, Plan, URL_EVENT, WebhookSecrets};
use crate::wire::{BatchRenderRequest, BatchRenderResponse, BatchResults};

pub const NAME: &str = "pictify";
pub const DEFAULT_BASE_URL: &str = "https://api.pictify.io";
/// Variable sets per `batch-render` [PX-LIVE:…/batch/render], [SEED-3].
pub const MAX_BATCH_SIZE: usize = 100;
/// Free plan [PX-LIVE:authentication].
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 60;
/// [PX-PY] uses 30 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the subscriptions are read (one request). Pictify pauses a subscription only
/// after five failed deliveries spread over hours (1 min, 5 min, 30 min, 2 h
/// [PX-DOCREPO:concepts/webhooks.mdx]), so minutes of delay in noticing cost little, while the
/// Free plan's 1,000 requests a day [PX-LIVE:authentication] make every request count: every
/// 15 min is 96 requests a day, under a tenth of the Free cap.
pub const DEFAULT_PUSH_CHECK_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Adapter configuration. `Debug` redacts the API key and the webhook secret.
#[derive(Clone)]
pub struct PictifyConfig {
    pub api_key: String,
    pub base_url: String,
    /// The default secret: verifies every event that has no secret of its own.
    pub webhook_secret: Option<String>,
    /// Per-event secrets: each Pictify subscription is for one event and has its own secret
    /// [PX-LIVE:concepts/webhooks].
    pub webhook_secrets: BTreeMap<String, String>,
    /// True when `ADGATE_PUBLIC_URL` is set, i.e. Pictify can reach our webhook endpoint.
    pub webhooks_reachable: bool,
    /// Where Pictify delivers to (`{ADGATE_PUBLIC_URL}/webhooks/pictify`): the subscriptions
    /// whose `targetUrl` is this one are the gateway's.
    pub webhook_url: Option<String>,
    /// The account's plan: its concurrent-batch, item and daily caps.
    pub plan: Plan,
    /// Ask Pictify to resume a subscription of ours that it paused.
    pub resume_subscriptions: bool,
    /// Create the subscriptions the gateway needs (one per event in
    /// [`subscriptions::EVENTS`]) at the first check, keep their secrets in memory, delete
    /// ones targeting this gateway that it cannot verify, and resume paused ones.
    pub manage_subscriptions: bool,
    pub batch_size: usize,
    pub requests_per_minute: u32,
    pub request_timeout: Duration,
}

impl PictifyConfig {
    /// Documented defaults around an API key.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            webhook_secret: None,
            webhook_secrets: BTreeMap::new(),
            webhooks_reachable: false,
            webhook_url: None,
            plan: Plan::Free,
            resume_subscriptions: false,
            manage_subscriptions: false,
            batch_size: MAX_BATCH_SIZE,
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    fn secrets(&self) -> WebhookSecrets {
        WebhookSecrets {
            default: self.webhook_secret.clone(),
            by_event: self.webhook_secrets.clone(),
        }
    }

    /// URLs arrive only in `render.completed`, so webhooks are usable when its deliveries can
    /// be verified (its own secret or the default) and Pictify can reach us.
    fn webhooks_usable(&self) -> bool {
        (self.secrets().covers(URL_EVENT) || self.manage_subscriptions) && self.webhooks_reachable
    }
}

impl fmt::Debug for PictifyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PictifyConfig")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "webhook_secrets",
                &self.webhook_secrets.keys().collect::<Vec<_>>(),
            )
            .field("webhooks_reachable", &self.webhooks_reachable)
            .field("webhook_url", &self.webhook_url)
            .field("plan", &self.plan)
            .field("resume_subscriptions", &self.resume_subscriptions)
            .field("manage_subscriptions", &self.manage_subscriptions)
            .field("batch_size", &self.batch_size)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// The Pictify adapter.
#[derive(Debug)]
pub struct Pictify {
    cfg: PictifyConfig,
    base: String,
    http: reqwest::Client,
    /// Why `render.completed` pushes are not arriving, from the last `check_push` (the
    /// subscription is paused, failed or missing). While set, a poll that finds an item
    /// rendered fails it `OUTPUT_URL_UNAVAILABLE` at once instead of waiting for a URL that
    /// a paused subscription will not deliver: Pictify's results carry no URLs ([PX-PY],
    /// [SEED-3]), so polling can recover an item's state but never its image.
    url_push_down: std::sync::Mutex<Option<String>>,
    /// Subscriptions this process created (`manage_subscriptions`), with their secrets.
    managed: ManagedSecrets,
}

fn config_error(field: &str, description: &str) -> GenError {
    GenError::Invalid {
        message: format!("invalid Pictify configuration: {field} {description}"),
        provider_code: "CONFIG".to_owned(),
        violations: vec![FieldViolation::new(field, description)],
    }
}

/// Ids that go into URL paths.
fn path_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

impl Pictify {
    pub fn new(cfg: PictifyConfig) -> Result<Self, GenError> {
        if cfg.api_key.trim().is_empty() || cfg.api_key.bytes().any(|c| c.is_ascii_control()) {
            return Err(config_error(
                "api_key",
                "must be a non-empty printable string",
            ));
        }
        let base = cfg.base_url.trim_end_matches('/').to_owned();
        let url_ok = reqwest::Url::parse(&base)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !url_ok {
            return Err(config_error("base_url", "must be an http(s) URL"));
        }
        if cfg.webhook_secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(config_error("webhook_secret", "must not be empty when set"));
        }
        for (event, secret) in &cfg.webhook_secrets {
            if !subscriptions::EVENTS.contains(&event.as_str())
                && !matches!(event.as_str(), "binding.updated" | "binding.failed")
            {
                return Err(config_error(
                    "webhook_secrets",
                    "names an event Pictify does not send (render.completed, render.failed, \
                     batch.completed, batch.failed, binding.updated, binding.failed)",
                ));
            }
            if secret.is_empty() {
                return Err(config_error(
                    "webhook_secrets",
                    "must not hold an empty secret",
                ));
            }
        }
        if !(1..=MAX_BATCH_SIZE).contains(&cfg.batch_size) {
            return Err(config_error("batch_size", "must be between 1 and 100"));
        }
        if cfg.requests_per_minute == 0 {
            return Err(config_error("requests_per_minute", "must be at least 1"));
        }
        if cfg.request_timeout.is_zero() {
            return Err(config_error("request_timeout", "must be positive"));
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .user_agent(concat!("adgate-pictify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GenError::transient_from("could not build the HTTP client", e))?;
        Ok(Self {
            cfg,
            base,
            http,
            url_push_down: std::sync::Mutex::new(None),
            managed: ManagedSecrets::default(),
        })
    }

    /// Send a request; return status, headers and body, or the transport error.
    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        effect: Effect,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GenError> {
        let req = req
            .bearer_auth(&self.cfg.api_key)
            .header(http::header::ACCEPT, "application/json");
        let resp = transport::send(NAME, req, effect).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport::body_lost(NAME, status.is_success(), e, effect))?;
        Ok((status, headers, body))
    }

    async fn poll_one(&self, key: &str) -> Result<Observed<Vec<ProviderUpdate>>, GenError> {
        if !path_safe(key) {
            return Ok(Observed::new(vec![not_found(key)], None));
        }
        let url = format!("{}/templates/batch/{key}/results", self.base);
        let (status, headers, body) = self.call(self.http.get(url), Effect::Read).await?;
        let rate = errors::rate_snapshot(&headers, SystemTime::now());
        if status == StatusCode::NOT_FOUND {
            return Ok(Observed::new(vec![not_found(key)], rate));
        }
        if !status.is_success() {
            return Err(errors::map_status(status, &headers, &body));
        }
        let results: BatchResults = serde_json::from_slice(&body).map_err(|e| {
            GenError::transient_from("Pictify batch results were not valid JSON", e)
        })?;
        let down = self
            .url_push_down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut updates =
            results::translate(key, &results, self.cfg.webhooks_usable() && down.is_none());
        if let Some(why) = down {
            for u in &mut updates {
                if let Some(e) = u
                    .error
                    .as_mut()
                    .filter(|e| e.code == results::OUTPUT_URL_UNAVAILABLE)
                {
                    e.message = format!(
                        "Pictify rendered the image but returns its URL only in a \
                         render.completed webhook, and {why}: the URL cannot be recovered \
                         by polling"
                    );
                }
            }
        }
        Ok(Observed::new(updates, rate))
    }
}

/// Every item of an unknown batch.
fn not_found(batch_id: &str) -> ProviderUpdate {
    ProviderUpdate::with_state(
        UpdateTarget::PollKey(batch_id.to_owned()),
        RemoteState::NotFound,
    )
}

fn invalid_batch(message: impl Into<String>) -> GenError {
    GenError::Invalid {
        message: message.into(),
        provider_code: String::new(),
        violations: Vec::new(),
    }
}

#[async_trait]
impl Generator for Pictify {
    fn name(&self) -> &'static str {
        NAME
    }

    fn limits(&self) -> Limits {
        let plan = self.cfg.plan;
        Limits {
            // The plan's item cap, unless configured otherwise (see `build`).
            max_items_per_submit: self.cfg.batch_size.min(plan.max_items_per_batch()),
            max_keys_per_poll: 1,
            min_poll_interval: Duration::from_secs(2),
            // The seed's polling loop checks every 5 s [SEED-3].
            poll_interval: Duration::from_secs(5),
            max_poll_interval: None,
            // No documented minimum render time; a batch is queued then rendered, so a poll
            // sooner than 2 s can only say "pending" (GUESS).
            first_poll_after: Duration::from_secs(2),
            budget: RequestBudget {
                requests: self.cfg.requests_per_minute,
                per: Duration::from_secs(60),
            },
            default_retry_after: Duration::from_secs(60),
            // Free plan: 1 concurrent batch [PX-LIVE:api-reference/batch] (Pro 3, Business 10);
            // a submit in flight is a batch about to run.
            max_concurrent_submits: plan.concurrent_batches(),
            idempotency: true,
            push: PushChannels {
                sse: false,
                webhooks: self.cfg.webhooks_usable(),
            },
            cancel: CancelSupport::PerPollKey,
            default_deadline: Duration::from_secs(15 * 60),
            // GUESS: Pictify documents no render time; a templated image renders in seconds.
            // With webhooks this is when a lost `render.completed` is first looked for.
            typical_job_duration: Duration::from_secs(10),
            // GUESS: nothing documented; the deadline's default is the outer bound anyway.
            longest_job_duration: Duration::from_secs(10 * 60),
            lost_push_bound: adgate_generator::LOST_PUSH_BOUND,
            // A batch runs from its submit until it is terminal; the plan caps how many run.
            max_running_poll_keys: Some(plan.concurrent_batches()),
            daily_budget: Some(RequestBudget {
                requests: plan.requests_per_day(),
                per: Duration::from_secs(24 * 3600),
            }),
            push_check_interval: self
                .cfg
                .webhooks_usable()
                .then_some(DEFAULT_PUSH_CHECK_INTERVAL),
        }
    }

    fn validate(&self, spec: &Value) -> Result<(), Vec<FieldViolation>> {
        Spec::parse(spec).map(|_| ())
    }

    /// Pictify bills plan credits per rendered image (its documents give no money price;
    /// plans differ): one credit per image by default, per layout when several are asked.
    fn price(&self, spec: &Value) -> Option<adgate_generator::Price> {
        let layouts = spec
            .get("layouts")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        Some(adgate_generator::Price {
            unit: "pictify_credit",
            kind: "image",
            micros: 1_000_000,
            per_output: true,
            expected_outputs: u32::try_from(layouts.max(1)).unwrap_or(u32::MAX),
        })
    }

    fn group_key(&self, spec: &Value) -> Option<String> {
        Spec::parse(spec).ok().map(|s| s.group_key())
    }

    fn correlation_key(&self, spec: &Value) -> Option<String> {
        Spec::parse(spec).ok().map(|s| s.correlation_key())
    }

    fn expected_outputs(&self, spec: &Value) -> usize {
        Spec::parse(spec).map_or(1, |s| s.images())
    }

    fn correlates(&self, spec: &Value, fields: &serde_json::Map<String, Value>) -> bool {
        Spec::parse(spec).is_ok_and(|s| spec::variables_match(&s.variables, fields))
    }

    fn job_fingerprint(&self, spec: &Value) -> Option<u64> {
        Spec::parse(spec)
            .ok()
            .map(|s| spec::fingerprint(&s.correlation_key(), &s.variables))
    }

    fn event_fingerprint(&self, key: &str, fields: &serde_json::Map<String, Value>) -> Option<u64> {
        // The correlation key is the template (`spec::correlation_key`).
        Some(spec::fingerprint(key, fields))
    }

    fn poll_key(&self, provider_ref: &str) -> String {
        provider_ref
            .rsplit_once(':')
            .map_or(provider_ref, |(batch, _)| batch)
            .to_owned()
    }

    async fn submit(&self, batch: SubmitBatch) -> Result<Observed<Vec<Accepted>>, GenError> {
        if batch.items.is_empty() || batch.items.len() > self.cfg.batch_size {
            return Err(invalid_batch(format!(
                "a Pictify batch takes 1–{} items, got {}",
                self.cfg.batch_size,
                batch.items.len()
            )));
        }
        let mut specs = Vec::with_capacity(batch.items.len());
        for (i, item) in batch.items.iter().enumerate() {
            let spec = Spec::parse(&item.spec).map_err(|violations| GenError::Invalid {
                message: format!("item {i} ({}) has an invalid Pictify spec", item.job_id),
                provider_code: String::new(),
                violations,
            })?;
            specs.push(spec);
        }
        let first = &specs[0];
        let group = first.group_key();
        if specs.iter().any(|s| s.group_key() != group) {
            return Err(invalid_batch(
                "items of one Pictify batch must share template, format, quality, layout and \
                 concurrency",
            ));
        }
        let body = BatchRenderRequest {
            variable_sets: specs.iter().map(|s| &s.variables).collect(),
            format: first.format(),
            quality: first.quality(),
            layout: first.layout.as_deref(),
            layouts: (!first.layouts.is_empty()).then_some(first.layouts.as_slice()),
            concurrency: first.concurrency,
        };
        let url = format!(
            "{}/templates/{}/batch-render",
            self.base, first.template_uid
        );
        let req = self
            .http
            .post(url)
            .header("Idempotency-Key", &batch.idempotency_key)
            .json(&body);
        let (status, headers, raw) = self.call(req, Effect::Write).await?;
        let rate = errors::rate_snapshot(&headers, SystemTime::now());
        if !status.is_success() {
            return Err(errors::map_status(status, &headers, &raw));
        }
        let created: BatchRenderResponse = serde_json::from_slice(&raw).map_err(|e| {
            // The batch may exist; resending with the same Idempotency-Key replays it.
            GenError::transient_from("Pictify batch-render response was not valid JSON", e)
        })?;
        if !path_safe(&created.batch_id) {
            return Err(GenError::transient(
                "Pictify batch-render response carried an unusable batchId",
            ));
        }
        if let Some(total) = created.total_items
            && total != batch.items.len() as u64
        {
            tracing::warn!(
                batch_id = %created.batch_id,
                sent = batch.items.len(),
                total,
                "Pictify reported a different item count; missing items will fail at the end"
            );
        }
        // Pictify documents no replay marker; honour the common header names if present.
        let replayed = ["idempotent-replayed", "idempotency-replayed"]
            .iter()
            .any(|h| headers.get(*h).is_some_and(|v| v.as_bytes() == b"true"));
        let accepted = batch
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| Accepted {
                job_id: item.job_id.clone(),
                provider_ref: format!("{}:{i}", created.batch_id),
                replayed,
            })
            .collect();
        Ok(Observed::new(accepted, rate))
    }

    /// `max_keys_per_poll` is 1; if given more keys, they are polled one after another.
    async fn poll(&self, keys: &[String]) -> Result<Observed<Vec<ProviderUpdate>>, GenError> {
        let mut updates = Vec::new();
        let mut rate = None;
        for key in keys {
            let observed = self.poll_one(key).await?;
            updates.extend(observed.value);
            rate = observed.rate.or(rate);
        }
        Ok(Observed::new(updates, rate))
    }

    fn parse_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<WebhookEvent, WebhookError> {
        // Each subscription signs with its own secret: pick it by the (unsigned) event header.
        // A forged header only selects another of our secrets, which then fails to verify; a
        // verified body whose event differs from the header is refused too.
        let secrets = self.cfg.secrets();
        let event = headers
            .get(webhook::EVENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|e| !e.is_empty());
        // Candidates: the secret of a subscription this process created for the event, then
        // the configured one (its own, else the default).
        let mut candidates: Vec<String> = Vec::new();
        if let Some(e) = event {
            candidates.extend(self.managed.secret_for(e));
        }
        candidates.extend(secrets.for_event(event).map(str::to_owned));
        let mut result = Err(WebhookError::NotConfigured);
        for secret in &candidates {
            result = webhook::parse(Some(secret), headers, body, now);
            if result.is_ok() {
                break;
            }
        }
        let parsed = result?;
        if let Some(e) = event {
            let envelope: Option<wire::WebhookEnvelope> = serde_json::from_slice(body).ok();
            if envelope.is_some_and(|env| env.event != e) {
                return Err(WebhookError::Malformed(
                    "X-Pictify-Event does not match the event in the body".to_owned(),
                ));
            }
        }
        Ok(parsed)
    }

    async fn check_push(&self) -> Result<Option<PushHealth>, GenError> {
        let Some(target) = self.cfg.webhook_url.as_deref() else {
            return Ok(None);
        };
        if !self.cfg.webhooks_usable() {
            return Ok(None);
        }
        let url = format!("{}/webhook-subscriptions", self.base);
        let (status, headers, body) = self.call(self.http.get(url), Effect::Read).await?;
        if !status.is_success() {
            return Err(errors::map_status(status, &headers, &body));
        }
        let list = subscriptions::parse_list(&body).ok_or_else(|| {
            GenError::transient("Pictify webhook-subscriptions list was not understood")
        })?;
        let manage = self.cfg.manage_subscriptions;
        let configured = self.cfg.secrets();
        let mut health = PushHealth::default();
        for s in list
            .iter()
            .filter(|s| subscriptions::same_target(&s.target_url, target))
            .filter(|s| subscriptions::EVENTS.contains(&s.event.as_str()))
        {
            // Managing: the gateway owns every subscription to its URL. One that neither this
            // process created nor a per-event configured secret covers was made by an earlier
            // process, whose secret (shown once) is gone; its deliveries would only be
            // refused, so it is replaced. (The default secret cannot tell: it may sign nothing.)
            let verifiable = self.managed.uid_for(&s.event).as_deref() == Some(s.uid.as_str())
                || configured.by_event.contains_key(&s.event);
            let action = if manage && !verifiable {
                PushAction::Delete
            } else if (manage || self.cfg.resume_subscriptions) && s.status == "paused" {
                // `failed` is not documented as resumable; only `paused` is asked to resume.
                PushAction::Resume
            } else {
                PushAction::None
            };
            health.subscriptions.push(PushSubscription {
                id: s.uid.clone(),
                event: s.event.clone(),
                status: s.status.clone(),
                action,
            });
        }
        // Managing: every event the gateway uses; otherwise only the one that carries URLs is
        // worth reporting missing.
        let needed: &[&str] = if manage {
            &subscriptions::EVENTS
        } else {
            &[URL_EVENT]
        };
        for event in needed {
            let kept = health
                .subscriptions
                .iter()
                .any(|s| s.event == *event && s.action != PushAction::Delete);
            if !kept {
                health.subscriptions.push(PushSubscription {
                    id: String::new(),
                    event: (*event).to_owned(),
                    status: "missing".to_owned(),
                    action: if manage {
                        PushAction::Create
                    } else {
                        PushAction::None
                    },
                });
            }
        }
        // URLs are lost only when every render.completed subscription of ours is paused or
        // failed and none is about to be resumed. "missing" only degrades health: the
        // operator's subscription may target this gateway through another URL (a proxy).
        let url_subs: Vec<&PushSubscription> = health
            .subscriptions
            .iter()
            .filter(|s| s.event == URL_EVENT && s.status != "missing")
            .collect();
        let down = (!url_subs.is_empty()
            && url_subs.iter().all(|s| {
                matches!(s.status.as_str(), "paused" | "failed") && s.action == PushAction::None
            }))
        .then(|| {
            let states: Vec<String> = url_subs
                .iter()
                .map(|s| format!("subscription {} is {}", s.id, s.status))
                .collect();
            format!("its render.completed {}", states.join(", "))
        });
        *self.url_push_down.lock().unwrap_or_else(|e| e.into_inner()) = down;
        Ok(Some(health))
    }

    async fn fix_push(&self, sub: &PushSubscription) -> Result<Option<PushSubscription>, GenError> {
        let bad_id = || GenError::Permanent {
            message: "not a Pictify subscription id".to_owned(),
            provider_code: "NOT_FOUND".to_owned(),
        };
        match sub.action {
            PushAction::None => Ok(Some(sub.clone())),
            PushAction::Resume => {
                if !path_safe(&sub.id) {
                    return Err(bad_id());
                }
                let url = format!("{}/webhook-subscriptions/{}/resume", self.base, sub.id);
                let (status, headers, body) = self.call(self.http.post(url), Effect::Write).await?;
                if !status.is_success() {
                    return Err(errors::map_status(status, &headers, &body));
                }
                Ok(Some(PushSubscription {
                    status: "active".to_owned(),
                    action: PushAction::None,
                    ..sub.clone()
                }))
            }
            PushAction::Delete => {
                if !path_safe(&sub.id) {
                    return Err(bad_id());
                }
                let url = format!("{}/webhook-subscriptions/{}", self.base, sub.id);
                let (status, headers, body) =
                    self.call(self.http.delete(url), Effect::Write).await?;
                // Already gone is as good as deleted.
                if !status.is_success() && status != StatusCode::NOT_FOUND {
                    return Err(errors::map_status(status, &headers, &body));
                }
                self.managed.forget(&sub.id);
                Ok(None)
            }
            PushAction::Create => {
                let Some(target) = self.cfg.webhook_url.as_deref() else {
                    return Err(config_error(
                        "webhook_url",
                        "is needed to create a subscription",
                    ));
                };
                let url = format!("{}/webhook-subscriptions", self.base);
                let body = serde_json::json!({
                    "event": sub.event, "targetUrl": target, "platform": "custom",
                });
                // Not resendable blindly: a lost answer may have created a subscription whose
                // secret we never saw; the next check deletes it (unverifiable) and recreates.
                let (status, headers, raw) = self
                    .call(self.http.post(url).json(&body), Effect::Write)
                    .await?;
                if !status.is_success() {
                    return Err(errors::map_status(status, &headers, &raw));
                }
                let created = subscriptions::parse_created(&raw).ok_or_else(|| {
                    GenError::transient(
                        "Pictify webhook-subscriptions create answer was not understood",
                    )
                })?;
                self.managed
                    .keep(&created.event, &created.uid, created.secret);
                Ok(Some(PushSubscription {
                    id: created.uid,
                    event: created.event,
                    status: created.status,
                    action: PushAction::None,
                }))
            }
        }
    }

    async fn cancel(&self, poll_key: &str) -> Result<(), GenError> {
        if !path_safe(poll_key) {
            return Err(GenError::Permanent {
                message: "not a Pictify batch id".to_owned(),
                provider_code: "NOT_FOUND".to_owned(),
            });
        }
        let url = format!("{}/templates/batch/{poll_key}/cancel", self.base);
        let (status, headers, body) = self.call(self.http.post(url), Effect::Write).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(errors::map_status(status, &headers, &body))
        }
    }

    fn degraded_reason(&self) -> Option<String> {
        let missing = match (
            self.cfg.secrets().covers(URL_EVENT) || self.cfg.manage_subscriptions,
            self.cfg.webhooks_reachable,
        ) {
            (true, true) => return None,
            (false, false) => "ADGATE_PUBLIC_URL and ADGATE_PICTIFY_WEBHOOK_SECRET are",
            (false, true) => "ADGATE_PICTIFY_WEBHOOK_SECRET is",
            (true, false) => "ADGATE_PUBLIC_URL is",
        };
        Some(format!(
            "Pictify returns rendered image URLs only through signed render.completed webhooks \
             and {missing} not set: rendered items fail with OUTPUT_URL_UNAVAILABLE"
        ))
    }
}

/// Build the adapter from the gateway's resolved settings (the registry's one line).
pub fn build(cx: &ProviderContext<'_>) -> Result<Arc<dyn Generator>, GenError> {
    let mut cfg = PictifyConfig::new(cx.api_key);
    cfg.base_url = cx.base_url.to_owned();
    cfg.webhook_secret = cx.webhook_secret.map(str::to_owned);
    cfg.webhook_secrets = cx
        .webhook_secrets
        .iter()
        .map(|(e, s)| ((*e).to_owned(), (*s).to_owned()))
        .collect();
    cfg.webhooks_reachable = cx.webhook_url.is_some();
    cfg.webhook_url = cx.webhook_url.clone();
    cfg.resume_subscriptions = cx.resume_subscriptions;
    cfg.manage_subscriptions = cx.manage_subscriptions;
    if let Some(p) = cx.plan {
        cfg.plan = Plan::parse(p)
            .ok_or_else(|| config_error("plan", "must be one of free, pro, business"))?;
    }
    cfg.requests_per_minute = cfg.plan.requests_per_minute();
    cfg.request_timeout = cx.request_timeout;
    if let Some(n) = cx.max_items_per_submit {
        cfg.batch_size = n;
    }
    // A plan's budget is given per minute; other windows are applied to the limits only.
    if let (Some(r), None) = (
        cx.requests,
        cx.window.filter(|w| *w != Duration::from_secs(60)),
    ) {
        cfg.requests_per_minute = r;
    }
    Ok(Arc::new(Pictify::new(cfg)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn adapter(secret: Option<&str>, reachable: bool) -> Pictify {
        let mut cfg = PictifyConfig::new("pk_test_secret_key");
        cfg.webhook_secret = secret.map(str::to_owned);
        cfg.webhooks_reachable = reachable;
        Pictify::new(cfg).unwrap()
    }

    #[test]
    fn debug_redacts_secrets() {
        let p = adapter(Some("whsec_super_secret"), true);
        let s = format!("{p:?}");
        assert!(
            !s.contains("pk_test_secret_key") && !s.contains("whsec_super_secret"),
            "{s}"
        );
        assert!(s.contains("<redacted>"));
    }

    #[test]
    fn config_is_checked() {
        let bad = |f: fn(&mut PictifyConfig)| {
            let mut c = PictifyConfig::new("k");
            f(&mut c);
            Pictify::new(c).is_err()
        };
        assert!(bad(|c| c.api_key = String::new()));
        assert!(bad(|c| c.base_url = "ftp://x".into()));
        assert!(bad(|c| c.batch_size = 101));
        assert!(bad(|c| c.batch_size = 0));
        assert!(bad(|c| c.requests_per_minute = 0));
        assert!(bad(|c| c.webhook_secret = Some(String::new())));
        assert!(!bad(|c| c.base_url = "http://127.0.0.1:9/".into()));
    }

    #[test]
    fn limits_follow_the_documents() {
        let l = adapter(None, false).limits();
        // Free plan: 10 items per batch (the plan table, stricter than the endpoint's 100).
        assert_eq!(l.max_items_per_submit, 10);
        assert_eq!(l.max_keys_per_poll, 1);
        assert_eq!(l.budget.requests, 60);
        assert_eq!(l.cancel, CancelSupport::PerPollKey);
        assert!(l.idempotency && !l.push.webhooks && !l.push.sse);
        assert!(adapter(Some("s"), true).limits().push.webhooks);
        assert!(!adapter(Some("s"), false).limits().push.webhooks);
    }

    #[test]
    fn degraded_without_webhooks() {
        assert!(adapter(Some("s"), true).degraded_reason().is_none());
        let r = adapter(None, true).degraded_reason().unwrap();
        assert!(r.contains("ADGATE_PICTIFY_WEBHOOK_SECRET") && !r.contains("ADGATE_PUBLIC_URL"));
        assert!(
            adapter(Some("s"), false)
                .degraded_reason()
                .unwrap()
                .contains("ADGATE_PUBLIC_URL")
        );
    }

    #[test]
    fn keys() {
        let p = adapter(None, false);
        assert_eq!(p.poll_key("batch_abc:17"), "batch_abc");
        let spec = json!({"template_uid": "tmpl_a", "variables": {"b": 2, "a": 1}});
        let same =
            json!({"template_uid": "tmpl_a", "variables": {"a": 1, "b": 2}, "format": "png"});
        assert_eq!(p.correlation_key(&spec), p.correlation_key(&same));
        assert_eq!(p.group_key(&spec), p.group_key(&same));
        assert!(p.validate(&json!({"template_uid": "tmpl_a"})).is_err());
        assert_eq!(p.name(), "pictify");
    }

    fn delivery(event: &str, secret: &str, body: &str) -> HeaderMap {
        let t = adgate_generator::time::unix_now();
        let sig =
            adgate_generator::signature::header_value(secret.as_bytes(), "", t, body.as_bytes());
        let mut h = HeaderMap::new();
        h.insert(webhook::SIGNATURE_HEADER, sig.parse().unwrap());
        h.insert(webhook::EVENT_HEADER, event.parse().unwrap());
        h
    }

    const RENDER: &str = r#"{"event":"render.completed","timestamp":"2026-01-29T10:30:00Z","data":{"type":"image","imageId":"img_1","url":"https://cdn.pictify.io/r/1.png","templateId":"tmpl_a","variables":{"t":"x"}}}"#;
    const BATCH: &str = r#"{"event":"batch.completed","timestamp":"2026-01-29T10:30:00Z","data":{"batchId":"batch_1","status":"completed"}}"#;

    /// Issue 21 A(1): one subscription per event, each with its own secret
    /// [PX-LIVE:concepts/webhooks]; both verify, and each only with its own secret.
    #[test]
    fn two_subscriptions_with_their_own_secrets_both_verify() {
        let mut cfg = PictifyConfig::new("pk_test_secret_key");
        cfg.webhook_secrets = [
            ("render.completed".to_owned(), "whsec_a".to_owned()),
            ("batch.completed".to_owned(), "whsec_b".to_owned()),
        ]
        .into();
        cfg.webhooks_reachable = true;
        let p = Pictify::new(cfg).unwrap();
        let now = SystemTime::now();
        let r = p
            .parse_webhook(
                &delivery("render.completed", "whsec_a", RENDER),
                RENDER.as_bytes(),
                now,
            )
            .unwrap();
        assert_eq!(r.updates.len(), 1);
        let b = p
            .parse_webhook(
                &delivery("batch.completed", "whsec_b", BATCH),
                BATCH.as_bytes(),
                now,
            )
            .unwrap();
        assert_eq!(b.poll_hints, vec!["batch_1".to_owned()]);
        // Crossed secrets fail; no default means an event without its own secret fails too.
        assert!(
            p.parse_webhook(
                &delivery("batch.completed", "whsec_a", BATCH),
                BATCH.as_bytes(),
                now
            )
            .is_err()
        );
        assert!(
            p.parse_webhook(
                &delivery("render.completed", "whsec_b", RENDER),
                RENDER.as_bytes(),
                now
            )
            .is_err()
        );
        // A header naming another event than the body is refused even when it verifies.
        assert!(
            p.parse_webhook(
                &delivery("batch.completed", "whsec_b", RENDER),
                RENDER.as_bytes(),
                now
            )
            .is_err()
        );
        assert!(p.limits().push.webhooks && p.degraded_reason().is_none());
        let dbg = format!("{p:?}");
        assert!(
            !dbg.contains("whsec_a") && !dbg.contains("whsec_b"),
            "{dbg}"
        );
    }

    #[test]
    fn default_secret_covers_events_without_their_own() {
        let mut cfg = PictifyConfig::new("pk_test_secret_key");
        cfg.webhook_secret = Some("whsec_default".to_owned());
        cfg.webhook_secrets = [("render.completed".to_owned(), "whsec_a".to_owned())].into();
        let p = Pictify::new(cfg).unwrap();
        let now = SystemTime::now();
        assert!(
            p.parse_webhook(
                &delivery("batch.completed", "whsec_default", BATCH),
                BATCH.as_bytes(),
                now
            )
            .is_ok()
        );
        assert!(
            p.parse_webhook(
                &delivery("render.completed", "whsec_a", RENDER),
                RENDER.as_bytes(),
                now
            )
            .is_ok()
        );
        let mut bad = PictifyConfig::new("k");
        bad.webhook_secrets = [("render.done".to_owned(), "s".to_owned())].into();
        assert!(Pictify::new(bad).is_err());
    }

    #[test]
    fn plan_limits() {
        let free = adapter(None, false).limits();
        assert_eq!(free.max_running_poll_keys, Some(1));
        assert_eq!(free.daily_budget.map(|b| b.requests), Some(1000));
        let mut cfg = PictifyConfig::new("k");
        cfg.plan = subscriptions::Plan::Pro;
        let pro = Pictify::new(cfg).unwrap().limits();
        assert_eq!(
            (
                pro.max_running_poll_keys,
                pro.max_items_per_submit,
                pro.max_concurrent_submits
            ),
            (Some(3), 100, 3)
        );
    }

    #[test]
    fn webhook_needs_a_secret() {
        let p = adapter(None, true);
        let err = p.parse_webhook(&HeaderMap::new(), b"{}", SystemTime::now());
        assert_eq!(err.unwrap_err(), WebhookError::NotConfigured);
    }
}
