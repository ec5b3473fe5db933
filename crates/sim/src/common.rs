//! Pieces every simulator shares: configuration, the scaled clock, fault injection, the ledger
//! tests read, a rolling-window rate limiter and webhook delivery. Output files are
//! [`crate::artwork`]'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Where a simulator delivers webhooks, and the secret it signs them with.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

/// Static configuration of one simulator instance.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The API key the simulator accepts; any other key gets the provider's 401.
    pub api_key: String,
    /// Multiplies every documented duration (job runtime, rate-limit windows, heartbeats,
    /// webhook retry delays). 1.0 = real time; 0.01 = a hundred times faster.
    pub time_scale: f64,
    /// Job runtime range at scale 1.0 (each job draws uniformly from it).
    pub job_duration: (Duration, Duration),
    /// Fraction of jobs (or Abyssale formats, Pictify items) that fail.
    pub failure_ratio: f64,
    /// Override the documented rate limit: (requests, window at scale 1.0). `None` = documented.
    pub rate_limit: Option<(u32, Duration)>,
    /// Wallet in provider units (StaticAdsLab: cents; Pictify/Abyssale: credits). `None` = unlimited.
    pub wallet: Option<u64>,
    /// Where webhooks go (Pictify subscription / Abyssale global endpoint). Abyssale also
    /// honours a per-request `callback_url`.
    pub webhook: Option<WebhookTarget>,
    /// Public base URL the simulator puts in output URLs; defaults to its own address.
    pub public_base_url: Option<String>,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_key: "sim_key".to_owned(),
            time_scale: 1.0,
            job_duration: (Duration::from_secs(30), Duration::from_secs(60)),
            failure_ratio: 0.0,
            rate_limit: None,
            wallet: None,
            webhook: None,
            public_base_url: None,
            seed: 42,
        }
    }
}

impl SimConfig {
    /// The base URL the simulator puts in output URLs: `public_base_url`, or its own address.
    pub fn base_url_for(&self, addr: std::net::SocketAddr) -> String {
        self.public_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_owned()
    }

    /// Scale a documented duration by `time_scale`.
    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.time_scale.max(0.0))
    }
}

/// Faults a test can switch on at run time. All ratios are 0.0–1.0.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Added before every response.
    pub latency: Duration,
    /// Fraction of API requests answered with a 5xx before doing any work.
    pub error_5xx_ratio: f64,
    /// The next N requests are answered 429 (with the provider's documented headers).
    pub burst_429: u32,
    /// Fraction of requests whose connection is dropped without a response.
    pub drop_ratio: f64,
    /// Fraction of successful JSON responses whose body is truncated (malformed JSON).
    pub malformed_ratio: f64,
    /// StaticAdsLab SSE: drop every stream after this many events.
    pub sse_drop_after: Option<u32>,
    /// Deliver every webhook twice (same delivery id).
    pub webhook_duplicate: bool,
    /// Delay every webhook by this much (scaled time is NOT applied; this is wall time).
    pub webhook_delay: Duration,
    /// Deliver webhooks of one job/batch in reverse order where there are several.
    pub webhook_reorder: bool,
    /// After this many charges, answer the provider's "out of money" error.
    pub insufficient_after_charges: Option<u64>,
    /// Submit endpoints only (Pictify `batch-render`, Abyssale `generate`, StaticAdsLab
    /// `POST /v1/image-ads` and `PATCH /v1/image-ads/:id`): the submit is processed at once — work created, charged as usual,
    /// rendering started on the sim clock so its webhooks fire on time — but the HTTP answer is
    /// held back this long (wall time, not scaled) before it is sent. Produces "webhook before
    /// the submit answer". Applies to every answer the submit handler produces (creation,
    /// replay or refusal); answers of the gate (401, 429, injected 5xx) are not held.
    pub submit_answer_delay: Duration,
    /// Submit endpoints only (and StaticAdsLab's `PATCH /v1/image-ads/:id`, which creates a
    /// version): the next N submits that *create* work are answered by dropping
    /// the connection without any response, after the work was created (it completes, bills
    /// and fires webhooks normally). Each cut decrements the count; replays and refusals are
    /// answered normally and do not consume it. Counted by [`Ledger::count_cut`].
    pub cut_after_create: u32,
    /// Webhooks are not sent at all (a lost push). Each delivery that would have been made is
    /// recorded in the ledger with `suppressed: true` and no status; the provider treats it as
    /// delivered (no retries, no pause). StaticAdsLab has no webhooks (providers.md §1.9), so
    /// the fault changes nothing there.
    pub suppress_webhooks: bool,
    /// StaticAdsLab `GET /v1/image-ads?ids=`: the lenient reading of providers.md §6 q4 —
    /// every asked id on one page, `limit` ignored, `has_more: false`. Off (the default) is the
    /// stricter reading: `limit` (default 20, max 100), `has_more` and `starting_after` apply
    /// to `?ids=` as to any list [SAL:reference/pagination].
    pub sal_ids_unpaged: bool,
    /// StaticAdsLab lists (`?ids=` included unless `sal_ids_unpaged`): serve at most this many
    /// ads per page whatever `limit` asks — a provider whose real page maximum is lower than
    /// documented — so a client must follow `has_more` to see every ad.
    pub sal_page_cap: Option<usize>,
    /// StaticAdsLab: the image-ad resource (PATCH answers included) carries no
    /// `current_version_id`, a field the documents do not list; the versions endpoints are then
    /// the only way to tell versions apart, as against a provider without the guessed field.
    pub sal_no_version_field: bool,
    /// Rendered files (the CDN stand-ins) answer this status with no body instead of the
    /// image: 404 or 410 for an output URL that expired at the provider, 503 for a CDN that
    /// is down. `None` (the default) serves the files.
    pub output_status: Option<u16>,
}

/// The answer a rendered-file request gets instead of its bytes under
/// [`Faults::output_status`], if that fault is on.
pub(crate) fn output_fault(faults: &Mutex<Faults>) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    let status = faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .output_status?;
    let status = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    Some(status.into_response())
}

impl Faults {
    /// Consume one `cut_after_create` if any is left (true = cut this answer).
    pub(crate) fn take_cut(&mut self) -> bool {
        let hit = self.cut_after_create > 0;
        self.cut_after_create = self.cut_after_create.saturating_sub(1);
        hit
    }
}

/// A record of one webhook delivery attempt.
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub event: String,
    pub delivery_id: String,
    /// The receiver's HTTP status; `None` when no answer came (or nothing was sent).
    pub status: Option<u16>,
    /// True when the `suppress_webhooks` fault swallowed this delivery: nothing was sent.
    pub suppressed: bool,
}

#[derive(Debug, Default)]
struct LedgerInner {
    requests: HashMap<String, u64>,
    /// Charges per job (provider id) and per idempotency key.
    charges_by_job: HashMap<String, u64>,
    charges_by_key: HashMap<String, u64>,
    /// Creations (new work started) per idempotency key; replays don't count.
    creations_by_key: HashMap<String, u64>,
    creations: u64,
    /// Provider ids of created work (batch id, ad id, generation request id), in order.
    created_ids: Vec<String>,
    replays: u64,
    served_429: u64,
    served_5xx: u64,
    dropped: u64,
    cut: u64,
    request_times: Vec<Instant>,
    webhooks: Vec<WebhookRecord>,
    /// Work intervals (Pictify: a batch from creation until its last item rendered), so tests
    /// can check that no two overlapped.
    spans: Vec<Span>,
    /// Requests refused by a plan cap, by reason (`concurrent_batches`, `daily_requests`, …).
    refusals: HashMap<String, u64>,
}

/// One interval of provider work, open while `end` is `None`.
#[derive(Debug, Clone)]
pub struct Span {
    pub id: String,
    pub start: Instant,
    pub end: Option<Instant>,
}

/// What the simulator did, for tests to read. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<LedgerInner>>,
}

impl Ledger {
    // A poisoned lock only means a test thread panicked; the counters are still usable.
    fn lock(&self) -> MutexGuard<'_, LedgerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one request to an endpoint, e.g. `POST /v1/image-ads`.
    pub fn request(&self, endpoint: &str) {
        let mut l = self.lock();
        *l.requests.entry(endpoint.to_owned()).or_default() += 1;
        l.request_times.push(Instant::now());
    }
    pub fn charge(&self, job: &str, key: Option<&str>) {
        let mut l = self.lock();
        *l.charges_by_job.entry(job.to_owned()).or_default() += 1;
        if let Some(k) = key {
            *l.charges_by_key.entry(k.to_owned()).or_default() += 1;
        }
    }
    pub fn creation(&self, key: Option<&str>) {
        let mut l = self.lock();
        l.creations += 1;
        if let Some(k) = key {
            *l.creations_by_key.entry(k.to_owned()).or_default() += 1;
        }
    }
    /// The provider id of work just created, so a test can find work whose answer was lost.
    pub fn created_id(&self, id: &str) {
        self.lock().created_ids.push(id.to_owned());
    }
    pub fn replay(&self) {
        self.lock().replays += 1;
    }
    pub fn served_429(&self) {
        self.lock().served_429 += 1;
    }
    pub fn served_5xx(&self) {
        self.lock().served_5xx += 1;
    }
    pub fn dropped(&self) {
        self.lock().dropped += 1;
    }
    /// A submit answer cut by the `cut_after_create` fault.
    pub fn cut(&self) {
        self.lock().cut += 1;
    }
    pub fn span_start(&self, id: &str) {
        self.lock().spans.push(Span {
            id: id.to_owned(),
            start: Instant::now(),
            end: None,
        });
    }
    /// Close the open span of `id` (no effect when none is open).
    pub fn span_end(&self, id: &str) {
        let mut l = self.lock();
        if let Some(s) = l.spans.iter_mut().find(|s| s.id == id && s.end.is_none()) {
            s.end = Some(Instant::now());
        }
    }
    pub fn spans(&self) -> Vec<Span> {
        self.lock().spans.clone()
    }
    /// The largest number of spans open at one instant.
    pub fn max_overlapping_spans(&self) -> usize {
        let spans = self.spans();
        let now = Instant::now();
        spans
            .iter()
            .map(|a| {
                spans
                    .iter()
                    .filter(|b| b.start <= a.start && b.end.unwrap_or(now) > a.start)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
    pub fn refused(&self, reason: &str) {
        *self.lock().refusals.entry(reason.to_owned()).or_default() += 1;
    }
    pub fn refusals(&self, reason: &str) -> u64 {
        self.lock().refusals.get(reason).copied().unwrap_or(0)
    }
    pub fn webhook(&self, record: WebhookRecord) {
        self.lock().webhooks.push(record);
    }

    pub fn requests(&self, endpoint: &str) -> u64 {
        self.lock().requests.get(endpoint).copied().unwrap_or(0)
    }
    pub fn total_requests(&self) -> u64 {
        self.lock().requests.values().sum()
    }
    pub fn requests_by_endpoint(&self) -> HashMap<String, u64> {
        self.lock().requests.clone()
    }
    pub fn total_charges(&self) -> u64 {
        self.lock().charges_by_job.values().sum()
    }
    pub fn charges_by_job(&self) -> HashMap<String, u64> {
        self.lock().charges_by_job.clone()
    }
    pub fn charges_by_key(&self) -> HashMap<String, u64> {
        self.lock().charges_by_key.clone()
    }
    pub fn creations(&self) -> u64 {
        self.lock().creations
    }
    pub fn creations_by_key(&self) -> HashMap<String, u64> {
        self.lock().creations_by_key.clone()
    }
    pub fn created_ids(&self) -> Vec<String> {
        self.lock().created_ids.clone()
    }
    pub fn replays(&self) -> u64 {
        self.lock().replays
    }
    pub fn count_429(&self) -> u64 {
        self.lock().served_429
    }
    pub fn count_5xx(&self) -> u64 {
        self.lock().served_5xx
    }
    pub fn count_dropped(&self) -> u64 {
        self.lock().dropped
    }
    pub fn count_cut(&self) -> u64 {
        self.lock().cut
    }
    pub fn webhooks(&self) -> Vec<WebhookRecord> {
        self.lock().webhooks.clone()
    }
    /// The largest number of requests seen inside any window of length `window`.
    pub fn max_requests_in_window(&self, window: Duration) -> usize {
        let l = self.lock();
        let times = &l.request_times;
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }
}

/// A rolling-window limiter as the providers document theirs ("N requests per rolling W").
#[derive(Debug)]
pub struct RollingWindow {
    limit: u32,
    window: Duration,
    hits: Mutex<std::collections::VecDeque<Instant>>,
}

/// The limiter's answer for one request.
#[derive(Debug, Clone, Copy)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Time until the oldest hit leaves the window (never zero when not allowed).
    pub reset_after: Duration,
}

impl RollingWindow {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            hits: Mutex::new(Default::default()),
        }
    }

    pub fn check(&self) -> RateDecision {
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        while hits
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            hits.pop_front();
        }
        let reset_after = hits
            .front()
            .map(|t| self.window.saturating_sub(now.duration_since(*t)))
            .unwrap_or(self.window);
        if hits.len() as u32 >= self.limit {
            return RateDecision {
                allowed: false,
                limit: self.limit,
                remaining: 0,
                reset_after: reset_after.max(Duration::from_millis(1)),
            };
        }
        hits.push_back(now);
        RateDecision {
            allowed: true,
            limit: self.limit,
            remaining: self.limit - hits.len() as u32,
            reset_after,
        }
    }
}

/// A running simulator. Dropping it does not stop the server; call [`SimHandle::shutdown`].
#[derive(Debug)]
pub struct SimHandle {
    pub addr: SocketAddr,
    pub base_url: String,
    pub ledger: Ledger,
    pub faults: Arc<Mutex<Faults>>,
    stop: Option<oneshot::Sender<()>>,
}

impl SimHandle {
    pub fn set_faults(&self, f: Faults) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.faults.lock().unwrap_or_else(|e| e.into_inner()));
    }
    pub fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Serve `router` on `listener` in a background task and return a handle.
pub fn serve(
    listener: TcpListener,
    router: axum::Router,
    ledger: Ledger,
    faults: Arc<Mutex<Faults>>,
) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(SimHandle {
        addr,
        base_url: format!("http://{addr}"),
        ledger,
        faults,
        stop: Some(tx),
    })
}

/// A response whose body fails before anything is written: hyper then closes the connection
/// without sending even a status line, which is what a dropped connection looks like to the
/// client. Shared by the `drop_ratio` and `cut_after_create` faults of Pictify and StaticAdsLab.
pub(crate) fn dropped_connection() -> axum::response::Response {
    let stream = futures_util::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::other(
            "connection dropped by fault injection",
        ))
    });
    axum::response::Response::new(axum::body::Body::from_stream(stream))
}

/// Lock a simulator mutex, recovering the data if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deterministic-enough randomness for simulators (seeded per instance).
pub fn rng(seed: u64) -> Mutex<fastrand::Rng> {
    Mutex::new(fastrand::Rng::with_seed(seed))
}

/// `len` lowercase hex characters.
pub fn hex_id(rng: &Mutex<fastrand::Rng>, len: usize) -> String {
    let mut r = rng.lock().unwrap_or_else(|e| e.into_inner());
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[r.usize(0..16)]))
        .collect()
}

/// A random UUID v4 string.
pub fn uuid_v4(rng: &Mutex<fastrand::Rng>) -> String {
    let h = hex_id(rng, 32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_refuses_the_101st_request() {
        let w = RollingWindow::new(100, Duration::from_secs(60));
        for i in 0..100 {
            let d = w.check();
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 99 - i);
        }
        let d = w.check();
        assert!(!d.allowed);
        assert!(d.reset_after > Duration::ZERO);
    }

    #[test]
    fn ledger_window_counts() {
        let l = Ledger::default();
        for _ in 0..5 {
            l.request("GET /x");
        }
        assert_eq!(l.requests("GET /x"), 5);
        assert_eq!(l.max_requests_in_window(Duration::from_secs(60)), 5);
    }
}
