//! adgate's Bannerbear adapter: a pure translator behind [`adgate_generator::Generator`],
//! targeting **API v5** as the fact sheet recommends (`shared/reference/bannerbear.md` §1,
//! §19.1): current generation, typed `{"message"}` errors, explicit `error`/`completed_at`,
//! `files` per format. v2 is not spoken (its keys fail on v5 and vice versa [BB-V5]).
//!
//! One job = one `POST /v5/images` on the async host → **202** with the Image in `pending`;
//! the provider ref is its `uid`; status comes from `GET /v5/images/{uid}` (`pending →
//! completed|failed`) [V5-SPEC] or from a signed webhook-resource delivery ([`webhook`]).
//! Auth is `Authorization: Bearer <workspace key>` on every request [BB-V5], held as a
//! sensitive header value and never printed. The sync host is never used (§19.2).
//!
//! Bannerbear has **no idempotency key** (§13): `limits().idempotency` is false, none is sent,
//! and a create whose answer was lost (or answered 5xx) is [`GenError::UnknownOutcome`]. The
//! create's `metadata` carries the gateway job's identity so a webhook binds to its job even
//! then ([`webhook`]).
//!
//! Modules: [`spec`] (the caller's spec), [`wire`] (Bannerbear JSON and updates), [`errors`]
//! (the one error mapping), [`webhook`] (signature, freshness, job binding).

pub mod errors;
pub mod spec;
pub mod webhook;
pub mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use adgate_generator::transport::{self, Effect};
use adgate_generator::{
    Accepted, CancelSupport, FieldViolation, GenError, Generator, Limits, Observed,
    ProviderContext, ProviderUpdate, PushChannels, RemoteState, RequestBudget, SubmitBatch,
    UpdateTarget, WebhookError, WebhookEvent,
};
use async_trait::async_trait;
use http::{HeaderValue, StatusCode};
use serde_json::Value;

use crate::errors::{map_error, rate_snapshot};
use crate::wire::Image;

pub const NAME: &str = "bannerbear";
/// The async host [BB-V5]; paths carry the `/v5` version prefix.
pub const DEFAULT_BASE_URL: &str = "https://api.bannerbear.com";
/// 30 requests per 10 s per key, both versions [BB-V2], [BB-V5], [HELP-103], [MCP].
pub const DEFAULT_BUDGET: RequestBudget = RequestBudget {
    requests: 30,
    per: Duration::from_secs(10),
};
/// The gateway's default per-request timeout (the official clients document none for the
/// async host; [RB5] uses 10 s for the sync host only).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Output sizes remembered for progress-free polling (best effort, in memory only).
const MAX_TRACKED: usize = 4096;

/// How to reach Bannerbear. `Debug` redacts the API key and the webhook secret.
#[derive(Clone)]
pub struct BannerbearConfig {
    /// A v5 workspace key (`bb_ak_v5_…`) with `images:read` and `images:write` [V5-SPEC].
    pub api_key: String,
    /// Host only (e.g. `https://api.bannerbear.com`); `/v5/…` is appended.
    pub base_url: String,
    /// The `signing_key` Bannerbear returned once when the webhook resource pointing at the
    /// gateway was created [V5-SPEC]; without it webhooks are refused and metadata carries no
    /// token.
    pub webhook_secret: Option<String>,
    /// Whether Bannerbear can reach the gateway (a public URL is configured).
    pub webhooks_reachable: bool,
    pub budget: RequestBudget,
    pub request_timeout: Duration,
}

impl BannerbearConfig {
    /// Documented defaults for everything but the key.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            webhook_secret: None,
            webhooks_reachable: false,
            budget: DEFAULT_BUDGET,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl fmt::Debug for BannerbearConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BannerbearConfig")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("webhooks_reachable", &self.webhooks_reachable)
            .field("budget", &self.budget)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// The adapter.
pub struct Bannerbear {
    cfg: BannerbearConfig,
    base: String,
    /// `Bearer <key>`, marked sensitive so hyper/reqwest never print it.
    auth: HeaderValue,
    http: reqwest::Client,
    /// uid → output size from the spec: the v5 Image object states none [V5-SPEC] §6.
    sizes: Mutex<HashMap<String, (u32, u32)>>,
}

impl fmt::Debug for Bannerbear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bannerbear")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn config_error(field: &str, problem: &str) -> GenError {
    GenError::Invalid {
        message: format!("bannerbear config: {field} {problem}"),
        provider_code: String::new(),
        violations: vec![FieldViolation::new(field, problem)],
    }
}

fn invalid(message: String) -> GenError {
    GenError::Invalid {
        message,
        provider_code: String::new(),
        violations: Vec::new(),
    }
}

/// The registry's builder ([`adgate_generator::Build`]).
pub fn build(cx: &ProviderContext<'_>) -> Result<Arc<dyn Generator>, GenError> {
    // One image per create and one uid per GET: batches (`POST /v5/batches`, ≤100) have
    // their own status object and are not used by this adapter.
    if cx.max_items_per_submit.is_some_and(|n| n != 1) {
        return Err(config_error(
            "max_items_per_submit",
            "must be 1 for bannerbear",
        ));
    }
    if cx.max_keys_per_poll.is_some_and(|n| n != 1) {
        return Err(config_error(
            "max_keys_per_poll",
            "must be 1 for bannerbear",
        ));
    }
    let mut cfg = BannerbearConfig::new(cx.api_key);
    cfg.base_url = cx.base_url.to_owned();
    cfg.webhook_secret = cx.webhook_secret.map(str::to_owned);
    cfg.webhooks_reachable = cx.webhook_url.is_some();
    cfg.request_timeout = cx.request_timeout;
    if let Some(r) = cx.requests {
        cfg.budget.requests = r;
    }
    if let Some(w) = cx.window {
        cfg.budget.per = w;
    }
    Ok(Arc::new(Bannerbear::new(cfg)?))
}

impl Bannerbear {
    pub fn new(cfg: BannerbearConfig) -> Result<Self, GenError> {
        if cfg.api_key.trim().is_empty() {
            return Err(config_error("api_key", "must not be empty"));
        }
        let Ok(mut auth) = HeaderValue::from_str(&format!("Bearer {}", cfg.api_key)) else {
            // Never echo the key: say only what is wrong with it.
            return Err(config_error("api_key", "must be printable ASCII"));
        };
        auth.set_sensitive(true);
        let url_ok = reqwest::Url::parse(&cfg.base_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !url_ok {
            return Err(config_error("base_url", "must be an http(s) URL"));
        }
        if cfg.webhook_secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(config_error("webhook_secret", "must not be empty when set"));
        }
        if cfg.budget.requests == 0 || cfg.budget.per.is_zero() {
            return Err(config_error(
                "budget",
                "must allow at least 1 request per window",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .build()
            .map_err(|e| GenError::transient_from("cannot build HTTP client", e))?;
        Ok(Self {
            base: cfg.base_url.trim_end_matches('/').to_owned(),
            auth,
            cfg,
            http,
            sizes: Mutex::new(HashMap::new()),
        })
    }

    fn sizes(&self) -> MutexGuard<'_, HashMap<String, (u32, u32)>> {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fill in the remembered size; forget it once the update is final.
    fn sized(&self, mut update: ProviderUpdate) -> ProviderUpdate {
        let UpdateTarget::ProviderRef(uid) = &update.target else {
            return update;
        };
        let mut sizes = self.sizes();
        let size = if update.state == RemoteState::Processing {
            sizes.get(uid).copied()
        } else {
            sizes.remove(uid)
        };
        drop(sizes);
        wire::fill_size(&mut update, size);
        update
    }

    fn webhooks_enabled(&self) -> bool {
        self.cfg.webhook_secret.is_some() && self.cfg.webhooks_reachable
    }
}

#[async_trait]
impl Generator for Bannerbear {
    fn name(&self) -> &'static str {
        NAME
    }

    fn limits(&self) -> Limits {
        Limits {
            max_items_per_submit: 1,
            max_keys_per_poll: 1,
            // MCP polls from 1 s, ×1.5 up to 5 s [MCP] client.ts; the engine doubles instead.
            min_poll_interval: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            max_poll_interval: Some(Duration::from_secs(5)),
            first_poll_after: Duration::from_secs(1),
            // v5 meters POSTs only [MCP] README (CONFLICT §16.6: "all endpoints" per [3P]);
            // the engine's budget also covers polls, which is the stricter reading.
            budget: self.cfg.budget,
            // A bare 429: MCP waits 1 s, 2 s, 4 s [MCP] client.ts.
            default_retry_after: Duration::from_secs(1),
            // GUESS: no concurrency cap is documented; 4 leaves room for polls in 30/10 s.
            max_concurrent_submits: 4,
            idempotency: false,
            push: PushChannels {
                sse: false,
                webhooks: self.webhooks_enabled(),
            },
            // No cancel endpoint for images in v5 [V5-SPEC].
            cancel: CancelSupport::None,
            default_deadline: Duration::from_secs(15 * 60),
            // "A few seconds" [HELP-122]; MCP "seconds in practice".
            typical_job_duration: Duration::from_secs(5),
            // GUESS: no maximum is documented; the official MCP gives up on an image after
            // 120 s of polling [MCP] client.ts, so a render is taken to end by then.
            longest_job_duration: Duration::from_secs(120),
            lost_push_bound: adgate_generator::LOST_PUSH_BOUND,
            max_running_poll_keys: None,
            daily_budget: None,
            push_check_interval: None,
        }
    }

    /// "1 image = 1 credit" [FREE], [HELP-174]; the gateway creates images only.
    fn price(&self, _spec: &Value) -> Option<adgate_generator::Price> {
        Some(adgate_generator::Price {
            unit: "bannerbear_credit",
            kind: "image",
            micros: 1_000_000,
            per_output: false,
            expected_outputs: 1,
        })
    }

    fn validate(&self, spec: &Value) -> Result<(), Vec<FieldViolation>> {
        spec::parse(spec).map(|_| ())
    }

    async fn submit(&self, batch: SubmitBatch) -> Result<Observed<Vec<Accepted>>, GenError> {
        let [item] = batch.items.as_slice() else {
            return Err(invalid(format!(
                "bannerbear takes exactly one job per submit, got {}",
                batch.items.len()
            )));
        };
        let spec = spec::parse(&item.spec).map_err(|violations| GenError::Invalid {
            message: "invalid bannerbear spec".to_owned(),
            provider_code: String::new(),
            violations,
        })?;
        let metadata = webhook::metadata_for(&item.job_id, self.cfg.webhook_secret.as_deref());
        let body = wire::create_body(&spec, &metadata);
        // No Idempotency-Key: Bannerbear has none (§13); `batch.idempotency_key` is unused.
        let req = self
            .http
            .post(format!("{}/v5/images", self.base))
            .header(http::header::AUTHORIZATION, self.auth.clone())
            .json(&body);
        let resp = transport::send(NAME, req, Effect::Write).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let rate = rate_snapshot(&headers, SystemTime::now());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport::body_lost(NAME, status.is_success(), e, Effect::Write))?;
        if !status.is_success() {
            return Err(map_error(status, &headers, &bytes, Effect::Write));
        }
        // 202 on the async host [V5-SPEC]; any 2xx may have started (billable) work, so an
        // answer we cannot read is an unknown outcome, never a retry.
        let image: Image = serde_json::from_slice(&bytes).map_err(|e| {
            GenError::unknown_outcome_from("unreadable answer to an accepted create", e)
        })?;
        let uid =
            image
                .uid
                .filter(|u| spec::is_uid(u))
                .ok_or_else(|| GenError::UnknownOutcome {
                    message: "accepted create without a usable image uid".to_owned(),
                    source: None,
                })?;
        if let Some(size) = spec.output_size() {
            let mut sizes = self.sizes();
            if sizes.len() < MAX_TRACKED {
                sizes.insert(uid.clone(), size);
            }
        }
        Ok(Observed::new(
            vec![Accepted {
                job_id: item.job_id.clone(),
                provider_ref: uid,
                replayed: false,
            }],
            rate,
        ))
    }

    async fn poll(&self, keys: &[String]) -> Result<Observed<Vec<ProviderUpdate>>, GenError> {
        let [key] = keys else {
            return Err(invalid(format!(
                "bannerbear polls one key at a time, got {}",
                keys.len()
            )));
        };
        let target = UpdateTarget::ProviderRef(key.clone());
        // Never put something that is not a uid into the path.
        if !spec::is_uid(key) {
            return Ok(Observed::new(
                vec![ProviderUpdate::with_state(target, RemoteState::NotFound)],
                None,
            ));
        }
        let req = self
            .http
            .get(format!("{}/v5/images/{key}", self.base))
            .header(http::header::AUTHORIZATION, self.auth.clone());
        let resp = transport::send(NAME, req, Effect::Read).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let rate = rate_snapshot(&headers, SystemTime::now());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport::body_lost(NAME, status.is_success(), e, Effect::Read))?;
        let update = match status {
            StatusCode::OK => {
                let image: Image = serde_json::from_slice(&bytes)
                    .map_err(|e| GenError::transient_from("malformed image body", e))?;
                self.sized(wire::to_update(key, &image))
            }
            // Retention is undocumented (§17.3); an unknown uid is simply not found.
            StatusCode::NOT_FOUND => {
                self.sizes().remove(key.as_str());
                ProviderUpdate::with_state(target, RemoteState::NotFound)
            }
            _ => return Err(map_error(status, &headers, &bytes, Effect::Read)),
        };
        Ok(Observed::new(vec![update], rate))
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
        let mut event = webhook::parse(headers, body, secret, now)?;
        event.updates = event.updates.into_iter().map(|u| self.sized(u)).collect();
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cx<'a>(key: &'a str, secret: Option<&'a str>, url: Option<&str>) -> ProviderContext<'a> {
        ProviderContext {
            api_key: key,
            base_url: DEFAULT_BASE_URL,
            webhook_secret: secret,
            webhook_secrets: Vec::new(),
            plan: None,
            resume_subscriptions: false,
            manage_subscriptions: false,
            webhook_url: url.map(str::to_owned),
            request_timeout: Duration::from_secs(5),
            requests: None,
            window: None,
            max_items_per_submit: None,
            max_keys_per_poll: None,
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let cfg = BannerbearConfig {
            webhook_secret: Some("whsec_topsecret".into()),
            ..BannerbearConfig::new("bb_ak_v5_supersecret")
        };
        let a = Bannerbear::new(cfg.clone()).unwrap();
        let d = format!("{cfg:?} {a:?} {:?}", a.auth);
        assert!(
            !d.contains("supersecret") && !d.contains("topsecret"),
            "{d}"
        );
        assert!(d.contains("<redacted>"));
        assert!(a.auth.is_sensitive());
    }

    #[test]
    fn config_is_checked_without_echoing_the_key() {
        assert!(Bannerbear::new(BannerbearConfig::new(" ")).is_err());
        let e = Bannerbear::new(BannerbearConfig::new("bb_ak\nsecret")).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let bad = BannerbearConfig {
            base_url: "ftp://x".into(),
            ..BannerbearConfig::new("k")
        };
        assert!(Bannerbear::new(bad).is_err());
        let mut c = cx("k", None, None);
        c.max_items_per_submit = Some(5);
        assert!(build(&c).is_err());
    }

    #[test]
    fn limits_follow_the_documents() {
        let g = build(&cx(
            "k",
            Some("s"),
            Some("https://gw.example/webhooks/bannerbear"),
        ))
        .unwrap();
        assert_eq!(g.name(), "bannerbear");
        let l = g.limits();
        assert_eq!((l.max_items_per_submit, l.max_keys_per_poll), (1, 1));
        assert!(!l.idempotency);
        assert_eq!(l.budget, DEFAULT_BUDGET);
        assert_eq!(
            (l.budget.requests, l.budget.per),
            (30, Duration::from_secs(10))
        );
        assert!(l.push.webhooks && !l.push.sse);
        assert_eq!(l.cancel, CancelSupport::None);
        assert_eq!(l.default_deadline, Duration::from_secs(900));
        assert!(l.typical_job_duration < l.longest_job_duration);
        // Webhooks need both a secret and a reachable gateway.
        assert!(
            !build(&cx("k", None, Some("https://gw")))
                .unwrap()
                .limits()
                .push
                .webhooks
        );
        assert!(
            !build(&cx("k", Some("s"), None))
                .unwrap()
                .limits()
                .push
                .webhooks
        );
        let mut c = cx("k", None, None);
        c.requests = Some(28);
        assert_eq!(build(&c).unwrap().limits().budget.requests, 28);
    }

    #[test]
    fn webhooks_without_a_secret_are_not_configured() {
        let g = build(&cx("k", None, None)).unwrap();
        assert_eq!(
            g.parse_webhook(&http::HeaderMap::new(), b"{}", SystemTime::now()),
            Err(WebhookError::NotConfigured)
        );
    }

    #[tokio::test]
    async fn bad_submits_and_keys_never_reach_the_network() {
        let g = Bannerbear::new(BannerbearConfig {
            base_url: "http://127.0.0.1:9".into(),
            ..BannerbearConfig::new("k")
        })
        .unwrap();
        let e = g
            .submit(SubmitBatch {
                idempotency_key: "k".into(),
                items: Vec::new(),
            })
            .await
            .unwrap_err();
        assert!(matches!(e, GenError::Invalid { .. }));
        let out = g.poll(&["../account".to_owned()]).await.unwrap();
        assert_eq!(out.value[0].state, RemoteState::NotFound);
        // Connection refused: nothing was sent, safe to retry.
        let e = g.poll(&["abc123".to_owned()]).await.unwrap_err();
        assert!(matches!(e, GenError::Transient { .. }), "{e:?}");
    }
}
