//! adgate's StaticAdsLab adapter: a pure translator between the engine's [`Generator`] contract
//! and `https://api.staticadslab.com` (facts and sources: `shared/reference/providers.md` §1).
//!
//! - this file: constants, [`StaticAdsLabConfig`], the [`StaticAdsLab`] client and its
//!   [`Generator`] impl (one ad per `POST /v1/image-ads`, batch polls by `?ids=`, SSE per ad);
//! - [`spec`]: the job spec we accept, its validation and its translation to the wire body;
//! - [`wire`]: serde types of the provider's envelopes and resources, and their mapping to
//!   [`ProviderUpdate`]s;
//! - [`error`]: the one function mapping provider answers to [`GenError`], transport errors,
//!   and the `RateLimit-*` / `Retry-After` headers;
//! - [`sse`]: an incremental event-stream parser and the meaning of each SSE event;
//! - `edit`: edits of editable ads (`PATCH`, versions) and which jobs they may build on;
//! - `resources`: the two asynchronous resources (ads, design templates) and reading them
//!   by id, page by page.
//!
//! The adapter never retries, sleeps or polls on its own; the engine owns all of that.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use adgate_generator::{
    Accepted, CancelSupport, FieldViolation, GenError, Generator, Limits, Observed,
    ProviderContext, ProviderUpdate, PushChannels, RemoteState, RequestBudget, SubmitBatch,
    UpdateStream, UpdateTarget,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;

mod edit;
pub mod error;
mod resources;
pub mod spec;
pub mod sse;
pub mod wire;

use adgate_generator::transport::{self, Effect};

use crate::error::{malformed, map_status, rate_snapshot};
use crate::resources::{Kind, Resource, is_ad_id};
use crate::sse::{Signal, SseParser};
use crate::wire::{DataEnvelope, DesignTemplate, ImageAd};

pub const NAME: &str = "staticadslab";
/// "no /v2, no per-region endpoint" [SAL:agents].
pub const DEFAULT_BASE_URL: &str = "https://api.staticadslab.com";
/// The official cookbook chunks 80 ids per request "to stay under URL limits" [COOKBOOK].
pub const DEFAULT_IDS_PER_POLL: usize = 80;
/// Our ceiling for `ids_per_poll`: the list endpoint's `limit` maximum [SAL:reference/pagination].
pub const MAX_IDS_PER_POLL: usize = 100;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeats come every 15 s [SEED-1]; three missed ones mean the stream is dead.
const SSE_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const USER_AGENT: &str = concat!("adgate-staticadslab/", env!("CARGO_PKG_VERSION"));

/// Connection settings. `Debug` never shows the key.
#[derive(Clone)]
pub struct StaticAdsLabConfig {
    pub api_key: String,
    pub base_url: String,
    /// Per request (submit, poll); SSE streams are bounded by heartbeat silence instead.
    pub request_timeout: Duration,
    /// Ids per batch poll (default 80, at most 100).
    pub ids_per_poll: usize,
}

impl StaticAdsLabConfig {
    /// Documented defaults with `api_key`.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ids_per_poll: DEFAULT_IDS_PER_POLL,
        }
    }
}

impl std::fmt::Debug for StaticAdsLabConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticAdsLabConfig")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .field("ids_per_poll", &self.ids_per_poll)
            .finish()
    }
}

/// The StaticAdsLab adapter.
#[derive(Debug)]
pub struct StaticAdsLab {
    cfg: StaticAdsLabConfig,
    /// `base_url` without a trailing slash.
    base: String,
    /// The key as a header value marked sensitive (so hyper/reqwest never print it).
    key: HeaderValue,
    http: reqwest::Client,
}

fn config_error(field: &str, description: &str) -> GenError {
    GenError::Invalid {
        message: format!("invalid StaticAdsLab configuration: {field}: {description}"),
        provider_code: "CONFIG".to_owned(),
        violations: vec![FieldViolation::new(field, description)],
    }
}

impl StaticAdsLab {
    pub fn new(cfg: StaticAdsLabConfig) -> Result<Self, GenError> {
        if cfg.api_key.trim().is_empty() {
            return Err(config_error("api_key", "must not be empty"));
        }
        // The error deliberately does not echo the value.
        let mut key = HeaderValue::from_str(&cfg.api_key)
            .map_err(|_| config_error("api_key", "must be visible ASCII"))?;
        key.set_sensitive(true);
        let base = cfg.base_url.trim_end_matches('/').to_owned();
        match reqwest::Url::parse(&base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {}
            _ => return Err(config_error("base_url", "must be an http(s) URL")),
        }
        if !(1..=MAX_IDS_PER_POLL).contains(&cfg.ids_per_poll) {
            return Err(config_error(
                "ids_per_poll",
                &format!("must be between 1 and {MAX_IDS_PER_POLL}"),
            ));
        }
        if cfg.request_timeout.is_zero() {
            return Err(config_error("request_timeout", "must be positive"));
        }
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT.min(cfg.request_timeout))
            .read_timeout(SSE_IDLE_TIMEOUT.max(cfg.request_timeout))
            .build()
            .map_err(|e| GenError::Permanent {
                message: format!("could not build the HTTP client: {e}"),
                provider_code: String::new(),
            })?;
        Ok(Self {
            cfg,
            base,
            key,
            http,
        })
    }

    /// Send with the key and the per-request timeout; return the full answer, success or not.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        effect: Effect,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GenError> {
        let req = req
            .header("x-api-key", self.key.clone())
            .header(header::ACCEPT, "application/json")
            .timeout(self.cfg.request_timeout);
        let resp = transport::send(NAME, req, effect).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport::body_lost(NAME, status.is_success(), e, effect))?;
        if !status.is_success() {
            return Err(self.scrub(map_status(status.as_u16(), &headers, &body)));
        }
        Ok((status, headers, body))
    }

    /// Provider messages are quoted in errors; make sure none echoes our key back.
    fn scrub(&self, err: GenError) -> GenError {
        let key = self.cfg.api_key.as_str();
        let clean = |m: String| {
            if m.contains(key) {
                m.replace(key, "<redacted>")
            } else {
                m
            }
        };
        match err {
            GenError::InsufficientBalance { message } => GenError::InsufficientBalance {
                message: clean(message),
            },
            GenError::Invalid {
                message,
                provider_code,
                violations,
            } => GenError::Invalid {
                message: clean(message),
                provider_code,
                violations: violations
                    .into_iter()
                    .map(|v| FieldViolation::new(v.field, clean(v.description)))
                    .collect(),
            },
            GenError::Unauthorized { message } => GenError::Unauthorized {
                message: clean(message),
            },
            GenError::Transient { message, source } => GenError::Transient {
                message: clean(message),
                source,
            },
            GenError::Permanent {
                message,
                provider_code,
            } => GenError::Permanent {
                message: clean(message),
                provider_code,
            },
            other => other,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Created {
    id: String,
}

#[async_trait]
impl Generator for StaticAdsLab {
    fn name(&self) -> &'static str {
        NAME
    }

    fn limits(&self) -> Limits {
        Limits {
            // No multi-item POST exists; "batch" = N parallel POSTs [SEED-1], [SEED-2].
            max_items_per_submit: 1,
            max_keys_per_poll: self.cfg.ids_per_poll,
            // "Don't poll faster than every 2 seconds"; 4 s recommended for image ads [SEED-1].
            min_poll_interval: Duration::from_secs(2),
            poll_interval: Duration::from_secs(4),
            max_poll_interval: None,
            // "generation runs ~30–60 seconds" [SEED-1]: earlier polls can only say processing.
            first_poll_after: Duration::from_secs(30),
            // 100 requests / 60 s rolling, per key, polls included [SAL:reference/rate-limits].
            budget: RequestBudget {
                requests: 100,
                per: Duration::from_secs(60),
            },
            // Every documented 429 carries Retry-After; if one ever doesn't, wait a whole
            // window, which is the only wait guaranteed to clear a rolling window.
            default_retry_after: Duration::from_secs(60),
            // "Throttle to a sensible parallelism (e.g., 8 concurrent submissions)" [SEED-0].
            max_concurrent_submits: 8,
            idempotency: true,
            push: PushChannels {
                sse: true,
                // Webhooks are roadmap only [SAL:reference/roadmap].
                webhooks: false,
            },
            // DELETE deletes the ad; no cancel is documented.
            cancel: CancelSupport::None,
            default_deadline: Duration::from_secs(15 * 60),
            // "Jobs take 30–60 s" ([SEED-1]); idempotent and without webhooks, so these only
            // inform ListProviders.
            typical_job_duration: Duration::from_secs(45),
            longest_job_duration: Duration::from_secs(60),
            lost_push_bound: adgate_generator::LOST_PUSH_BOUND,
            max_running_poll_keys: None,
            daily_budget: None,
            push_check_interval: None,
        }
    }

    fn validate(&self, spec: &Value) -> Result<(), Vec<FieldViolation>> {
        spec::validate(spec)
    }

    /// "Flat $1.00, editable $4.00, design template $0.25", billed on completion [SEED-2],
    /// [SAL:guides/errors-and-billing]. A PATCH re-render's price is not documented: none.
    fn price(&self, spec: &Value) -> Option<adgate_generator::Price> {
        let (kind, micros) = if spec::is_edit(spec) {
            return None;
        } else if spec::is_design_template(spec) {
            ("design_template", 250_000)
        } else if spec.get("editable").and_then(Value::as_bool) == Some(true) {
            ("editable", 4_000_000)
        } else {
            ("flat", 1_000_000)
        };
        Some(adgate_generator::Price {
            unit: "USD",
            kind,
            micros,
            per_output: false,
            expected_outputs: 1,
        })
    }

    fn awaits(&self, spec: &Value) -> Option<(String, String)> {
        if spec::is_edit(spec) || spec::is_design_template(spec) {
            return None;
        }
        spec::awaited_template(spec).map(|r| (spec::TEMPLATE_REF.to_owned(), r))
    }

    /// "The design template must be in status: completed before you can use it" [SEED-2]:
    /// the engine calls this once the template job completed; its `dt_` id goes in the ad.
    fn bind_awaited(
        &self,
        spec: &Value,
        job: &adgate_generator::JobView<'_>,
    ) -> Result<Value, String> {
        if job.provider != NAME || !spec::is_design_template(job.spec) {
            return Err(format!(
                "job {} is not a StaticAdsLab design template",
                job.id
            ));
        }
        match job.provider_ref {
            Some(dt) if Kind::DesignTemplate.owns(dt) => Ok(spec::with_template(spec, dt)),
            _ => Err(format!(
                "design template job {} has no dt_ id on record",
                job.id
            )),
        }
    }

    fn referenced_job(&self, spec: &Value) -> Option<String> {
        spec::edit_target(spec)
    }

    fn bind_reference(
        &self,
        spec: &Value,
        job: &adgate_generator::JobView<'_>,
    ) -> Result<Value, String> {
        if spec::is_edit(spec) {
            edit::bind(spec, job)
        } else {
            Ok(spec.clone())
        }
    }

    /// "2 seconds works for design templates (faster pipeline)" [SEED-1].
    fn polled_fast(&self, poll_key: &str) -> bool {
        Kind::DesignTemplate.owns(poll_key)
    }

    /// "SSE is available for image ads" [SEED-1]: not for templates; an edit's reference
    /// names a version, whose re-render is followed by polling.
    fn streams(&self, provider_ref: &str) -> bool {
        is_ad_id(provider_ref)
    }

    /// Templates are read from `/v1/design-templates`, ads and edits from `/v1/image-ads`.
    fn poll_group(&self, poll_key: &str) -> &'static str {
        if Kind::DesignTemplate.owns(poll_key) {
            "design-templates"
        } else {
            "image-ads"
        }
    }

    async fn submit(&self, batch: SubmitBatch) -> Result<Observed<Vec<Accepted>>, GenError> {
        let [item] = batch.items.as_slice() else {
            return Err(GenError::Invalid {
                message: format!(
                    "StaticAdsLab takes exactly one item per submit, got {}",
                    batch.items.len()
                ),
                provider_code: String::new(),
                violations: Vec::new(),
            });
        };
        let request = spec::request(&item.spec).map_err(|violations| GenError::Invalid {
            message: "spec failed validation".to_owned(),
            provider_code: "LOCAL_VALIDATION".to_owned(),
            violations,
        })?;
        let key = HeaderValue::from_str(&batch.idempotency_key)
            .map_err(|_| config_error("idempotency_key", "must be visible ASCII"))?;
        if let spec::Request::Edit { image_ad_id, tree } = &request {
            return self.patch(&item.job_id, image_ad_id, tree, key).await;
        }
        let (kind, req) = match &request {
            spec::Request::Edit { .. } => {
                return Err(GenError::Permanent {
                    message: "an edit is sent with PATCH".to_owned(),
                    provider_code: String::new(),
                });
            }
            spec::Request::ImageAd(body) => (
                Kind::ImageAd,
                self.http
                    .post(format!("{}/v1/image-ads", self.base))
                    .json(body),
            ),
            spec::Request::DesignTemplate(body) => (
                Kind::DesignTemplate,
                self.http
                    .post(format!("{}/v1/design-templates", self.base))
                    .json(body),
            ),
        };
        let req = req.header("idempotency-key", key);
        let (_, headers, bytes) = self.exchange(req, Effect::Write).await?;
        let created: DataEnvelope<Created> =
            serde_json::from_slice(&bytes).map_err(|e| malformed("created resource", e))?;
        // The reference is later put in URLs and decides which endpoint polls it.
        if !kind.owns(&created.data.id) {
            return Err(GenError::transient(format!(
                "StaticAdsLab answered with an id that is not a {} id",
                kind.prefix()
            )));
        }
        let replayed = headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Ok(Observed::new(
            vec![Accepted {
                job_id: item.job_id.clone(),
                provider_ref: created.data.id,
                replayed,
            }],
            rate_snapshot(&headers),
        ))
    }

    async fn poll(&self, keys: &[String]) -> Result<Observed<Vec<ProviderUpdate>>, GenError> {
        if keys.len() > self.cfg.ids_per_poll {
            return Err(GenError::Invalid {
                message: format!(
                    "at most {} ids per poll, got {}",
                    self.cfg.ids_per_poll,
                    keys.len()
                ),
                provider_code: String::new(),
                violations: Vec::new(),
            });
        }
        let mut seen = HashSet::new();
        let ask = |kind: Kind| -> Vec<&str> {
            keys.iter()
                .map(String::as_str)
                .filter(|k| kind.owns(k))
                .collect()
        };
        // Edits are read from their ad (one `?ids=` for ads and edits alike).
        let edits: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|k| edit::parse_edit_ref(k).is_some())
            .collect();
        let (mut ads, templates) = (ask(Kind::ImageAd), ask(Kind::DesignTemplate));
        ads.extend(
            edits
                .iter()
                .filter_map(|k| edit::parse_edit_ref(k).map(|(ad, _)| ad)),
        );
        let ads: Vec<&str> = ads.into_iter().filter(|k| seen.insert(*k)).collect();
        let templates: Vec<&str> = templates.into_iter().filter(|k| seen.insert(*k)).collect();
        let mut found: HashMap<String, ProviderUpdate> = HashMap::new();
        let mut rate = None;
        if !ads.is_empty() {
            let (got, r) = self.fetch_ids::<ImageAd>(Kind::ImageAd, &ads).await?;
            rate = r.or(rate);
            if !edits.is_empty() {
                let (updates, r) = self.edit_updates(&edits, &got).await?;
                found.extend(updates);
                rate = r.or(rate);
            }
            found.extend(
                got.into_iter()
                    .map(|(id, ad)| (id, Resource::to_update(&ad))),
            );
        }
        if !templates.is_empty() {
            let (got, r) = self
                .fetch_ids::<DesignTemplate>(Kind::DesignTemplate, &templates)
                .await?;
            found.extend(got.into_iter().map(|(id, t)| (id, Resource::to_update(&t))));
            rate = r.or(rate);
        }
        // One update per distinct key, in request order. Ids the provider omitted from the
        // complete answer (unknown, deleted, another org's; `fetch_ids` only returns once the
        // last page said `has_more: false`) and keys that cannot be ad ids are NotFound.
        let mut done = HashSet::new();
        let updates = keys
            .iter()
            .filter(|k| done.insert(k.as_str()))
            .map(|k| match found.remove(k.as_str()) {
                Some(update) => update,
                None => ProviderUpdate::with_state(
                    UpdateTarget::ProviderRef(k.clone()),
                    RemoteState::NotFound,
                ),
            })
            .collect();
        Ok(Observed::new(updates, rate))
    }

    async fn stream_updates(&self, provider_ref: &str) -> Result<UpdateStream, GenError> {
        if !is_ad_id(provider_ref) {
            // SSE is offered for image ads only [SEED-1]; a design template is polled.
            return Err(GenError::Permanent {
                message: "not a StaticAdsLab image-ad id (SSE is offered for image ads only)"
                    .to_owned(),
                provider_code: "NOT_FOUND".to_owned(),
            });
        }
        // No overall timeout here: the stream lives as long as the job. Silence longer than
        // three heartbeats ends it through the client's read timeout.
        let req = self
            .http
            .get(format!("{}/v1/image-ads/{provider_ref}", self.base))
            .header("x-api-key", self.key.clone())
            .header(header::ACCEPT, "text/event-stream");
        let resp = transport::send(NAME, req, Effect::Read).await?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let body = resp
                .bytes()
                .await
                .map_err(|e| transport::body_lost(NAME, false, e, Effect::Read))?;
            return Err(self.scrub(map_status(status.as_u16(), &headers, &body)));
        }
        let is_sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            });
        if !is_sse {
            return Err(GenError::transient(
                "StaticAdsLab answered the event-stream request without an event stream",
            ));
        }
        let state = StreamState {
            body: resp.bytes_stream().boxed(),
            parser: SseParser::new(),
            pending: VecDeque::new(),
            ended: false,
            provider_ref: provider_ref.to_owned(),
        };
        Ok(futures_util::stream::unfold(state, next_update).boxed())
    }
}

struct StreamState {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    pending: VecDeque<ProviderUpdate>,
    ended: bool,
    provider_ref: String,
}

/// Yield the next update; end after `complete`/`error` or when the connection ends or drops
/// (the engine then does the final GET the docs require [SEED-1]).
async fn next_update(
    mut st: StreamState,
) -> Option<(Result<ProviderUpdate, GenError>, StreamState)> {
    loop {
        if let Some(u) = st.pending.pop_front() {
            return Some((Ok(u), st));
        }
        if st.ended {
            return None;
        }
        match st.body.next().await {
            Some(Ok(chunk)) => {
                for ev in st.parser.push(&chunk) {
                    match sse::interpret(&st.provider_ref, &ev) {
                        Signal::Ignore => {}
                        Signal::Update(u) => st.pending.push_back(u),
                        Signal::End(u) => {
                            st.pending.extend(u);
                            st.ended = true;
                            break;
                        }
                    }
                }
            }
            Some(Err(e)) => {
                tracing::debug!(provider = NAME, error = %e, "event stream dropped");
                st.ended = true;
            }
            None => st.ended = true,
        }
    }
}

/// Build the adapter from the gateway's resolved settings (the registry's one line).
pub fn build(cx: &ProviderContext<'_>) -> Result<Arc<dyn Generator>, GenError> {
    let mut cfg = StaticAdsLabConfig::new(cx.api_key);
    cfg.base_url = cx.base_url.to_owned();
    cfg.request_timeout = cx.request_timeout;
    if let Some(n) = cx.max_keys_per_poll {
        cfg.ids_per_poll = n;
    }
    Ok(Arc::new(StaticAdsLab::new(cfg)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_key() {
        let cfg = StaticAdsLabConfig::new("sal_live_supersecret");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("<redacted>"));
        let adapter = StaticAdsLab::new(cfg).unwrap();
        assert!(!format!("{adapter:?}").contains("supersecret"));
    }

    #[test]
    fn bad_config_is_refused_without_echoing_the_key() {
        let bad_key = StaticAdsLabConfig::new("sal_live_\nsecret");
        let err = StaticAdsLab::new(bad_key).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(StaticAdsLab::new(StaticAdsLabConfig::new("")).is_err());
        let mut c = StaticAdsLabConfig::new("k");
        c.base_url = "ftp://x".into();
        assert!(StaticAdsLab::new(c).is_err());
        let mut c = StaticAdsLabConfig::new("k");
        c.ids_per_poll = 101;
        assert!(StaticAdsLab::new(c).is_err());
    }

    #[test]
    fn provider_messages_never_echo_the_key() {
        let a = StaticAdsLab::new(StaticAdsLabConfig::new("sal_live_echoed")).unwrap();
        let body = br#"{"error":{"code":"UNAUTHORIZED","message":"key sal_live_echoed revoked"}}"#;
        let err = a.scrub(map_status(401, &HeaderMap::new(), body));
        assert!(!err.to_string().contains("sal_live_echoed"), "{err}");
        assert!(matches!(err, GenError::Unauthorized { .. }));
    }

    #[test]
    fn limits_follow_the_docs() {
        let a = StaticAdsLab::new(StaticAdsLabConfig::new("k")).unwrap();
        let l = a.limits();
        assert_eq!(a.name(), "staticadslab");
        assert_eq!(l.max_items_per_submit, 1);
        assert_eq!(l.max_keys_per_poll, 80);
        assert_eq!(l.min_poll_interval, Duration::from_secs(2));
        assert_eq!(l.budget.requests, 100);
        assert!(l.idempotency && l.push.sse && !l.push.webhooks);
        assert_eq!(l.default_deadline, Duration::from_secs(900));
    }

    /// Each kind of job is polled at its endpoint and pace, and only ads are streamed.
    #[test]
    fn kinds_choose_their_endpoint_pace_and_stream() {
        let a = StaticAdsLab::new(StaticAdsLabConfig::new("k")).unwrap();
        let edit = "ia_0123456789abcdef/iav_0123456789abcdef";
        assert!(a.streams("ia_0123456789abcdef"));
        assert!(!a.streams("dt_0123456789abcdef") && !a.streams(edit));
        assert!(a.polled_fast("dt_0123456789abcdef"));
        assert!(!a.polled_fast("ia_0123456789abcdef") && !a.polled_fast(edit));
        assert_eq!(a.poll_group("dt_0123456789abcdef"), "design-templates");
        assert_eq!(a.poll_group("ia_0123456789abcdef"), a.poll_group(edit));
        assert_ne!(a.poll_group("ia_0123456789abcdef"), "design-templates");
    }

    #[test]
    fn only_ad_ids_go_into_urls() {
        assert!(is_ad_id("ia_a1b2c3d4e5f67890"));
        assert!(!is_ad_id("ia_"));
        assert!(!is_ad_id("prod_1"));
        assert!(!is_ad_id("ia_x,ia_y"));
        assert!(!is_ad_id("ia_x&ids=1"));
    }
}
