//! adgate's Abyssale adapter: a pure translator behind [`adgate_generator::Generator`].
//!
//! One job = one asynchronous generation request (`POST /async/banner-builder/{design_id}/generate`)
//! for N formats of one design; the provider ref is its `generation_request_id`. Status comes from
//! `GET /generation-request/{id}` (202 running, 200 final, 404, 410 after 7 days) or from a signed
//! `NEW_BANNER_BATCH` callback. Abyssale has **no idempotency key**, so `limits().idempotency` is
//! false and a submit whose answer was lost is reported as `UnknownOutcome`, never retried here.
//!
//! Modules:
//! - [`spec`]: the caller's spec and its validation.
//! - [`wire`]: Abyssale's JSON and its translation into [`ProviderUpdate`]s.
//! - [`errors`]: the one error-mapping function, rate-limit headers, transport errors.
//!
//! Sources: `shared/reference/providers.md` §3 ([AB-TS] the official TS SDK, [AB-PY] the Python
//! SDK, [SEED-4] the async-generation page).

pub mod errors;
pub mod spec;
pub mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use adgate_generator::callback;
use adgate_generator::signature::{self, DEFAULT_TOLERANCE};
use adgate_generator::{
    Accepted, CancelSupport, FieldViolation, GenError, Generator, Limits, Observed,
    ProviderContext, ProviderUpdate, PushChannels, RemoteState, RequestBudget, SubmitBatch,
    UpdateTarget, WebhookError, WebhookEvent,
};
use async_trait::async_trait;
use http::StatusCode;
use serde_json::Value;

use adgate_generator::transport::{self, Effect};

use crate::errors::{map_error, rate_snapshot};
use crate::wire::{GenerateBody, GenerateResponse, Status};

pub const NAME: &str = "abyssale";
pub const DEFAULT_BASE_URL: &str = "https://api.abyssale.com";
/// Prefix of the signed message: `"v1:webhook:" + t + "." + body` [AB-TS], [AB-PY].
pub const SIGNATURE_PREFIX: &str = "v1:webhook:";
pub const SIGNATURE_HEADER: &str = "x-abyssale-signature";
pub const DELIVERY_ID_HEADER: &str = "x-abyssale-delivery-id";
/// The gateway ceiling [AB-TS] (older docs: 5 req/s — CONFLICT; configurable).
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 10;
/// The SDK's per-attempt timeout [AB-TS], [AB-PY].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requested-format counts kept for progress reporting; beyond this, progress is omitted.
const MAX_TRACKED: usize = 4096;

/// How to reach Abyssale. `Debug` redacts the API key and the webhook secret.
#[derive(Clone)]
pub struct AbyssaleConfig {
    pub api_key: String,
    pub base_url: String,
    /// The workspace signing secret (`GET /signing-secret`); without it webhooks are refused.
    pub webhook_secret: Option<String>,
    /// `"{ADGATE_PUBLIC_URL}/webhooks/abyssale"` when a public URL is configured.
    pub callback_url: Option<String>,
    pub requests_per_second: u32,
    pub request_timeout: Duration,
}

impl AbyssaleConfig {
    /// Documented defaults for everything but the key.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            webhook_secret: None,
            callback_url: None,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl fmt::Debug for AbyssaleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbyssaleConfig")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("callback_url", &self.callback_url)
            .field("requests_per_second", &self.requests_per_second)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// The adapter.
#[derive(Debug)]
pub struct Abyssale {
    cfg: AbyssaleConfig,
    base: String,
    http: reqwest::Client,
    /// generation request id → formats requested, for progress (best effort, in memory only).
    requested: Mutex<HashMap<String, usize>>,
}

fn config_error(field: &str, problem: &str) -> GenError {
    GenError::Invalid {
        message: format!("abyssale config: {field} {problem}"),
        provider_code: String::new(),
        violations: vec![FieldViolation::new(field, problem)],
    }
}

fn is_http_url(s: &str) -> bool {
    reqwest::Url::parse(s)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

impl Abyssale {
    pub fn new(cfg: AbyssaleConfig) -> Result<Self, GenError> {
        if cfg.api_key.trim().is_empty() {
            return Err(config_error("api_key", "must not be empty"));
        }
        if !is_http_url(&cfg.base_url) {
            return Err(config_error("base_url", "must be an http(s) URL"));
        }
        if let Some(cb) = &cfg.callback_url
            && !is_http_url(cb)
        {
            return Err(config_error("callback_url", "must be an http(s) URL"));
        }
        if cfg.webhook_secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(config_error("webhook_secret", "must not be empty when set"));
        }
        if cfg.requests_per_second == 0 {
            return Err(config_error("requests_per_second", "must be at least 1"));
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .build()
            .map_err(|e| GenError::transient_from("cannot build HTTP client", e))?;
        Ok(Self {
            base: cfg.base_url.trim_end_matches('/').to_owned(),
            cfg,
            http,
            requested: Mutex::new(HashMap::new()),
        })
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.requested.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn webhooks_enabled(&self) -> bool {
        self.cfg.webhook_secret.is_some() && self.cfg.callback_url.is_some()
    }

    /// The update for a final status (poll 200 or webhook), forgetting its progress entry.
    fn final_update(&self, id: &str, status: &Status) -> ProviderUpdate {
        self.tracked().remove(id);
        wire::to_update(id, status, true, None)
    }
}

#[async_trait]
impl Generator for Abyssale {
    fn name(&self) -> &'static str {
        NAME
    }

    fn limits(&self) -> Limits {
        Limits {
            max_items_per_submit: 1,
            max_keys_per_poll: 1,
            // SDK polling: start 3 s (min 2 s), doubling to 30 s [AB-TS] `pollUntil`; the
            // engine adds the jitter.
            min_poll_interval: Duration::from_secs(2),
            poll_interval: Duration::from_secs(3),
            max_poll_interval: Some(Duration::from_secs(30)),
            first_poll_after: Duration::from_secs(3),
            budget: RequestBudget {
                requests: self.cfg.requests_per_second,
                per: Duration::from_secs(1),
            },
            // A bare 429 (no Retry-After) → the SDK probes once after 1 s [AB-TS] middleware.ts.
            default_retry_after: Duration::from_secs(1),
            // GUESS: Abyssale publishes no concurrency cap; 4 in flight stays well inside the
            // 10 req/s ceiling while leaving room for polls.
            max_concurrent_submits: 4,
            idempotency: false,
            push: PushChannels {
                sse: false,
                webhooks: self.webhooks_enabled(),
            },
            cancel: CancelSupport::None,
            default_deadline: Duration::from_secs(15 * 60),
            // "Most complete within a couple of minutes" [AB-TS]; the simulator's jobs take
            // 30–60 s. The first backstop poll (for a lost callback) waits this long.
            typical_job_duration: Duration::from_secs(60),
            // CONFLICT: the seed's retry system runs "a maximum of 10 minutes" [SEED-4], the
            // current spec sets no hard bound [AB-TS]. The stricter reading for reconciling
            // an unknown outcome is the longer wait that still ends: 10 minutes.
            longest_job_duration: Duration::from_secs(10 * 60),
            lost_push_bound: adgate_generator::LOST_PUSH_BOUND,
            max_running_poll_keys: None,
            daily_budget: None,
            push_check_interval: None,
        }
    }

    /// Abyssale bills plan credits per generated format (only successful creations count
    /// [AB:rest-api]). With `format_names` empty the design's every format is generated and
    /// their number is unknown before the answer: the estimate counts one and completion
    /// settles the real number.
    fn price(&self, spec: &Value) -> Option<adgate_generator::Price> {
        let formats = spec
            .get("format_names")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        Some(adgate_generator::Price {
            unit: "abyssale_credit",
            kind: "format",
            micros: 1_000_000,
            per_output: true,
            expected_outputs: u32::try_from(formats.max(1)).unwrap_or(u32::MAX),
        })
    }

    fn validate(&self, spec: &Value) -> Result<(), Vec<FieldViolation>> {
        spec::parse(spec).map(|_| ())
    }

    async fn submit(&self, batch: SubmitBatch) -> Result<Observed<Vec<Accepted>>, GenError> {
        let [item] = batch.items.as_slice() else {
            return Err(GenError::Invalid {
                message: format!(
                    "abyssale takes exactly one job per submit, got {}",
                    batch.items.len()
                ),
                provider_code: String::new(),
                violations: Vec::new(),
            });
        };
        let spec = spec::parse(&item.spec).map_err(|violations| GenError::Invalid {
            message: "invalid abyssale spec".to_owned(),
            provider_code: String::new(),
            violations,
        })?;
        // The callback URL carries the job's identity (with a token only we can mint), so the
        // signed callback binds to this job even if this call's answer is lost: Abyssale
        // delivers to the `callback_url` as given [SEED-4].
        let callback_url = match (&self.cfg.callback_url, &self.cfg.webhook_secret) {
            (Some(url), Some(secret)) => {
                Some(callback::url_for(url, secret.as_bytes(), &item.job_id))
            }
            (url, None) => url.clone(),
            (None, Some(_)) => None,
        };
        let body = GenerateBody {
            elements: &spec.elements,
            template_format_names: &spec.format_names,
            callback_url: callback_url.as_deref(),
            image_file_type: spec.image_file_type.as_deref(),
            file_compression_level: spec.file_compression_level,
            html5: spec.block("html5"),
            gif: spec.block("gif"),
            video: spec.block("video"),
            print: spec.block("print"),
            original_visual_id: spec.original_visual_id.as_deref(),
        };
        // design_id is a validated UUID, so it is safe in the path. No Idempotency-Key: Abyssale
        // has none, and sending one would suggest a guarantee that does not exist.
        let url = format!(
            "{}/async/banner-builder/{}/generate",
            self.base, spec.design_id
        );
        let req = self
            .http
            .post(url)
            .header("x-api-key", &self.cfg.api_key)
            .json(&body);
        let resp = transport::send(NAME, req, Effect::Write).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let rate = rate_snapshot(&headers, SystemTime::now());
        // The POST was answered; losing the body of a success still means work was created.
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport::body_lost(NAME, status.is_success(), e, Effect::Write))?;
        if status.is_server_error() {
            // A 5xx to a POST "may already have billed" — the SDK never retries one [AB-TS]
            // middleware.ts — and Abyssale takes no idempotency key, so it must not be resent.
            return Err(GenError::UnknownOutcome {
                message: format!(
                    "HTTP {} from Abyssale after sending a generate",
                    status.as_u16()
                ),
                source: None,
            });
        }
        if !status.is_success() {
            return Err(map_error(status, &headers, &bytes));
        }
        // A 2xx we cannot read may still have queued (billable) work: unknown, not transient,
        // or the engine would resend a request that has no idempotency key.
        let parsed: GenerateResponse = serde_json::from_slice(&bytes).map_err(|e| {
            GenError::unknown_outcome_from("unreadable answer to an accepted generate", e)
        })?;
        let id = parsed.generation_request_id;
        if id.is_empty() {
            return Err(GenError::UnknownOutcome {
                message: "accepted generate without a generation_request_id".to_owned(),
                source: None,
            });
        }
        if !spec.format_names.is_empty() {
            let mut tracked = self.tracked();
            if tracked.len() < MAX_TRACKED {
                tracked.insert(id.clone(), spec.format_names.len());
            }
        }
        Ok(Observed::new(
            vec![Accepted {
                job_id: item.job_id.clone(),
                provider_ref: id,
                replayed: false,
            }],
            rate,
        ))
    }

    async fn poll(&self, keys: &[String]) -> Result<Observed<Vec<ProviderUpdate>>, GenError> {
        let [key] = keys else {
            return Err(GenError::Invalid {
                message: format!("abyssale polls one key at a time, got {}", keys.len()),
                provider_code: String::new(),
                violations: Vec::new(),
            });
        };
        let target = UpdateTarget::ProviderRef(key.clone());
        // Never put something that is not a generation request id into the path.
        if !spec::is_uuid(key) {
            return Ok(Observed::new(
                vec![ProviderUpdate::with_state(target, RemoteState::NotFound)],
                None,
            ));
        }
        let req = self
            .http
            .get(format!("{}/generation-request/{key}", self.base))
            .header("x-api-key", &self.cfg.api_key);
        let resp = transport::send(NAME, req, Effect::Read).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let rate = rate_snapshot(&headers, SystemTime::now());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport::body_lost(NAME, status.is_success(), e, Effect::Read))?;
        let update = match status {
            StatusCode::OK | StatusCode::ACCEPTED => {
                let body: Status = serde_json::from_slice(&bytes)
                    .map_err(|e| GenError::transient_from("malformed status body", e))?;
                // `is_finalized` is the truth; 200/202 mirror it [SEED-4].
                if body.is_finalized == Some(true) {
                    self.final_update(key, &body)
                } else {
                    let requested = self.tracked().get(key.as_str()).copied();
                    wire::to_update(key, &body, false, requested)
                }
            }
            StatusCode::NOT_FOUND => {
                self.tracked().remove(key.as_str());
                ProviderUpdate::with_state(target, RemoteState::NotFound)
            }
            StatusCode::GONE => {
                self.tracked().remove(key.as_str());
                ProviderUpdate::failed(
                    target,
                    adgate_generator::JobError::new(
                        adgate_generator::codes::RESULT_EXPIRED,
                        "Abyssale keeps generation requests for 7 days; this one is gone",
                        true,
                    )
                    .with_provider_code("generation_request_gone"),
                )
            }
            _ => return Err(map_error(status, &headers, &bytes)),
        };
        Ok(Observed::new(vec![update], rate))
    }

    fn parse_webhook_query(
        &self,
        query: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<WebhookEvent, WebhookError> {
        // The body's signature first: nothing about an unsigned or forged delivery is read.
        let mut event = self.parse_webhook(headers, body, now)?;
        let Some(secret) = self.cfg.webhook_secret.as_deref() else {
            return Err(WebhookError::NotConfigured);
        };
        match callback::identity(query, secret.as_bytes()) {
            callback::Identity::Absent => {}
            callback::Identity::Verified(job) => event.bound_job = Some(job),
            // A signed body under a job identity we did not mint: someone rewrote the URL.
            callback::Identity::Forged => {
                return Err(WebhookError::BadSignature(
                    "the callback URL's job identity does not verify",
                ));
            }
        }
        Ok(event)
    }

    fn parse_webhook(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<WebhookEvent, WebhookError> {
        let Some(secret) = self.cfg.webhook_secret.as_deref() else {
            return Err(WebhookError::NotConfigured);
        };
        let header = headers
            .get(SIGNATURE_HEADER)
            .ok_or(WebhookError::BadSignature("missing X-Abyssale-Signature"))?
            .to_str()
            .map_err(|_| WebhookError::BadSignature("malformed signature header"))?;
        // Any of several v1 values may match (24 h overlap after a rotation) [AB-TS].
        signature::verify(
            header,
            &[secret.as_bytes()],
            SIGNATURE_PREFIX,
            body,
            now,
            DEFAULT_TOLERANCE,
        )?;
        let delivery_id = headers
            .get(DELIVERY_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status: Status = serde_json::from_slice(body)
            .map_err(|e| WebhookError::Malformed(format!("not a NEW_BANNER_BATCH payload: {e}")))?;
        let id = status
            .request_id()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| WebhookError::Malformed("no generation_request_id or id".to_owned()))?
            .to_owned();
        // A delivery is only sent once the request is final, so it means what a 200 poll means.
        let update = self.final_update(&id, &status);
        Ok(WebhookEvent {
            delivery_id,
            updates: vec![update],
            ..WebhookEvent::default()
        })
    }
}

/// Build the adapter from the gateway's resolved settings (the registry's one line).
pub fn build(cx: &ProviderContext<'_>) -> Result<Arc<dyn Generator>, GenError> {
    let mut cfg = AbyssaleConfig::new(cx.api_key);
    cfg.base_url = cx.base_url.to_owned();
    cfg.webhook_secret = cx.webhook_secret.map(str::to_owned);
    // Only ask for callbacks we can verify.
    cfg.callback_url = cx.webhook_secret.and(cx.webhook_url.clone());
    cfg.request_timeout = cx.request_timeout;
    if let (Some(r), None) = (
        cx.requests,
        cx.window.filter(|w| *w != Duration::from_secs(1)),
    ) {
        cfg.requests_per_second = r;
    }
    Ok(Arc::new(Abyssale::new(cfg)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::{HeaderMap, HeaderValue};
    use std::time::UNIX_EPOCH;

    const SECRET: &str = "whsec_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const BODY: &str = r#"{"generation_request_id":"497f6eca-6276-4993-bfeb-53cbbbba6f08","banners":[{"id":"b","file":{"type":"png","url":"https://x/a.png"},"format":{"id":"iab-medium","width":300,"height":250}}],"errors":[]}"#;
    const T: u64 = 1_700_000_000;

    fn adapter(secret: Option<&str>) -> Abyssale {
        Abyssale::new(AbyssaleConfig {
            webhook_secret: secret.map(str::to_owned),
            callback_url: Some("https://gw.example/webhooks/abyssale".to_owned()),
            ..AbyssaleConfig::new("key_123456")
        })
        .unwrap()
    }

    fn headers(sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
        h.insert(DELIVERY_ID_HEADER, HeaderValue::from_static("ab12"));
        h
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn debug_redacts_secrets() {
        let cfg = AbyssaleConfig {
            webhook_secret: Some("whsec_topsecret".into()),
            ..AbyssaleConfig::new("key_supersecret")
        };
        let d = format!("{cfg:?} {:?}", Abyssale::new(cfg.clone()).unwrap());
        assert!(
            !d.contains("supersecret") && !d.contains("topsecret"),
            "{d}"
        );
        assert!(d.contains("<redacted>"));
    }

    #[test]
    fn config_is_checked() {
        assert!(Abyssale::new(AbyssaleConfig::new("")).is_err());
        let bad = AbyssaleConfig {
            base_url: "ftp://x".into(),
            ..AbyssaleConfig::new("k")
        };
        assert!(Abyssale::new(bad).is_err());
    }

    #[test]
    fn limits_follow_the_documents() {
        let a = adapter(Some(SECRET));
        let l = a.limits();
        assert_eq!((l.max_items_per_submit, l.max_keys_per_poll), (1, 1));
        assert!(!l.idempotency);
        assert!(l.push.webhooks && !l.push.sse);
        assert_eq!(l.budget.requests, 10);
        assert_eq!(l.max_poll_interval, Some(Duration::from_secs(30)));
        assert_eq!(l.default_deadline, Duration::from_secs(900));
        assert!(!adapter(None).limits().push.webhooks);
    }

    #[test]
    fn signed_webhook_is_a_final_update() {
        let sig = signature::header_value(SECRET.as_bytes(), SIGNATURE_PREFIX, T, BODY.as_bytes());
        let ev = adapter(Some(SECRET))
            .parse_webhook(&headers(&sig), BODY.as_bytes(), at(T + 10))
            .unwrap();
        assert_eq!(ev.delivery_id.as_deref(), Some("ab12"));
        let u = &ev.updates[0];
        assert_eq!(
            u.target,
            UpdateTarget::ProviderRef("497f6eca-6276-4993-bfeb-53cbbbba6f08".into())
        );
        assert_eq!(u.state, RemoteState::Completed);
        assert_eq!(u.outputs[0].mime_type, "image/png");
    }

    #[test]
    fn either_of_two_v1_values_verifies() {
        let other = format!("whsec_{}", "b".repeat(64));
        let good = signature::sign(SECRET.as_bytes(), SIGNATURE_PREFIX, T, BODY.as_bytes());
        let bad = signature::sign(other.as_bytes(), SIGNATURE_PREFIX, T, BODY.as_bytes());
        let a = adapter(Some(SECRET));
        for sig in [
            format!("t={T},v1={bad},v1={good}"),
            format!("t={T},v1={good},v1={bad}"),
        ] {
            assert!(
                a.parse_webhook(&headers(&sig), BODY.as_bytes(), at(T))
                    .is_ok(),
                "{sig}"
            );
        }
        let both_bad = format!("t={T},v1={bad},v1={bad}");
        assert!(
            a.parse_webhook(&headers(&both_bad), BODY.as_bytes(), at(T))
                .is_err()
        );
    }

    #[test]
    fn forged_stale_unsigned_and_unconfigured_are_refused() {
        let a = adapter(Some(SECRET));
        let sig = signature::header_value(SECRET.as_bytes(), SIGNATURE_PREFIX, T, BODY.as_bytes());
        // Wrong prefix (Pictify-style signature of the same body).
        let no_prefix = signature::header_value(SECRET.as_bytes(), "", T, BODY.as_bytes());
        assert!(matches!(
            a.parse_webhook(&headers(&no_prefix), BODY.as_bytes(), at(T)),
            Err(WebhookError::BadSignature(_))
        ));
        let tampered = BODY.replace("iab-medium", "half-page");
        assert!(
            a.parse_webhook(&headers(&sig), tampered.as_bytes(), at(T))
                .is_err()
        );
        assert!(
            a.parse_webhook(&headers(&sig), BODY.as_bytes(), at(T + 301))
                .is_err()
        );
        assert!(
            a.parse_webhook(&HeaderMap::new(), BODY.as_bytes(), at(T))
                .is_err()
        );
        assert_eq!(
            adapter(None).parse_webhook(&headers(&sig), BODY.as_bytes(), at(T)),
            Err(WebhookError::NotConfigured)
        );
    }

    /// Computed outside the project: python3 `hmac.new(b"whsec_" + b"a" * 64,
    /// b"v1:webhook:1700000000." + BODY, hashlib.sha256).hexdigest()` — the [AB-TS]/[AB-PY]
    /// message `"v1:webhook:" + t + "." + raw_body`, with [AB-PY]'s test-secret shape.
    const LITERAL_V1: &str = "d77d4dd4f2c8d4ebec0a19d587e69e89d688988a703f7aa37e0f28fb3c50fdeb";

    #[test]
    fn literal_vector_verifies_and_one_changed_digit_does_not() {
        let a = adapter(Some(SECRET));
        let good = format!("t={T},v1={LITERAL_V1}");
        let ev = a
            .parse_webhook(&headers(&good), BODY.as_bytes(), at(T))
            .unwrap();
        assert_eq!(ev.updates[0].state, RemoteState::Completed);
        // Change the first hex digit (d → e).
        let changed = format!("t={T},v1=e{}", &LITERAL_V1[1..]);
        assert_eq!(
            a.parse_webhook(&headers(&changed), BODY.as_bytes(), at(T)),
            Err(WebhookError::BadSignature("signature mismatch"))
        );
        // A second, wrong v1 beside the literal (rotation overlap) still verifies.
        let two = format!("t={T},v1={},v1={LITERAL_V1}", "0".repeat(64));
        assert!(
            a.parse_webhook(&headers(&two), BODY.as_bytes(), at(T))
                .is_ok()
        );
    }

    #[test]
    fn legacy_id_key_and_malformed_bodies() {
        let a = adapter(Some(SECRET));
        let legacy = r#"{"id":"e38c8e09-5b0e-43ff-b5da-25be6b6e96ae","banners":[],"errors":[{"template_format_name":"half-page","reason":"Text too long"}]}"#;
        let sig =
            signature::header_value(SECRET.as_bytes(), SIGNATURE_PREFIX, T, legacy.as_bytes());
        let ev = a
            .parse_webhook(&headers(&sig), legacy.as_bytes(), at(T))
            .unwrap();
        assert_eq!(ev.updates[0].state, RemoteState::Failed);
        assert_eq!(
            ev.updates[0].target,
            UpdateTarget::ProviderRef("e38c8e09-5b0e-43ff-b5da-25be6b6e96ae".into())
        );
        for body in ["not json", r#"{"banners":[]}"#] {
            let sig =
                signature::header_value(SECRET.as_bytes(), SIGNATURE_PREFIX, T, body.as_bytes());
            assert!(matches!(
                a.parse_webhook(&headers(&sig), body.as_bytes(), at(T)),
                Err(WebhookError::Malformed(_))
            ));
        }
    }
}
