//! An in-process fake provider whose behaviour each test scripts. It records every call with
//! the tokio time it happened at, so tests can check budgets and schedules under paused time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adgate_engine::{Engine, EngineConfig, ProviderSetup};
use adgate_generator::{
    Accepted, CancelSupport, FieldViolation, GenError, Generator, Limits, Observed, Output,
    ProviderUpdate, PushChannels, RemoteState, RequestBudget, SubmitBatch, UpdateStream,
    UpdateTarget,
};
use adgate_store::{SqliteStore, Store};
use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Every duration in these tests is a documented provider figure multiplied by this factor, so
/// the world runs 100 times faster in real time. The engine talks to a real SQLite store, whose
/// blocking worker threads rule out tokio's paused clock; uniform scaling keeps every ratio
/// (requests per window, polls per job) exactly as at full scale.
pub const SCALE: f64 = 0.01;

/// `secs` of provider time, scaled.
pub fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs * SCALE)
}

/// StaticAdsLab's documented limits: 100 requests per 60 s, 80 ids per poll, 4 s polls, jobs
/// that take 30–60 s so the first poll comes after 30 s.
pub fn limits() -> Limits {
    Limits {
        max_items_per_submit: 1,
        max_keys_per_poll: 80,
        min_poll_interval: s(2.0),
        poll_interval: s(4.0),
        max_poll_interval: None,
        first_poll_after: s(30.0),
        budget: RequestBudget {
            requests: 100,
            per: s(60.0),
        },
        default_retry_after: s(10.0),
        max_concurrent_submits: 8,
        idempotency: true,
        push: PushChannels::default(),
        cancel: CancelSupport::None,
        default_deadline: s(900.0),
        typical_job_duration: s(30.0),
        longest_job_duration: s(600.0),
        lost_push_bound: s(60.0),
        max_running_poll_keys: None,
        daily_budget: None,
        push_check_interval: None,
    }
}

#[derive(Debug, Clone)]
pub enum Call {
    Submit {
        at: Instant,
        key: String,
        jobs: Vec<String>,
    },
    Poll {
        at: Instant,
        keys: Vec<String>,
    },
    Stream {
        at: Instant,
    },
}

impl Call {
    pub fn at(&self) -> Instant {
        match self {
            Call::Submit { at, .. } | Call::Poll { at, .. } | Call::Stream { at } => *at,
        }
    }
}

#[derive(Default)]
pub struct FakeState {
    pub calls: Vec<Call>,
    /// Errors returned by the next submits, in order.
    pub submit_errors: VecDeque<GenError>,
    /// After this many accepted submits, every submit answers InsufficientBalance.
    pub balance_for: Option<usize>,
    pub accepted: usize,
    /// Jobs complete once they were accepted this long ago.
    pub job_duration: Duration,
    pub accepted_at: HashMap<String, Instant>,
    /// Provider refs the fake "lost" (poll answers NotFound).
    pub lost: Vec<String>,
    /// Updates the SSE stream yields, then it ends.
    pub stream_script: Vec<ProviderUpdate>,
    /// How long an accepted submit takes to answer (the work exists at once).
    pub submit_delay: Duration,
}

#[derive(Clone)]
pub struct Fake {
    pub name: &'static str,
    pub limits: Limits,
    pub state: Arc<Mutex<FakeState>>,
}

impl Fake {
    pub fn new(limits: Limits) -> Self {
        let state = FakeState {
            job_duration: s(10.0),
            ..FakeState::default()
        };
        Self {
            name: "fake",
            limits,
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn submits(&self) -> Vec<(Instant, String, Vec<String>)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Submit { at, key, jobs } => Some((at, key, jobs)),
                _ => None,
            })
            .collect()
    }

    pub fn polls(&self) -> Vec<(Instant, Vec<String>)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Poll { at, keys } => Some((at, keys)),
                _ => None,
            })
            .collect()
    }
}

impl Fake {
    /// The submit's effect at the provider, before any answer delay.
    fn submit_now(&self, batch: SubmitBatch) -> Result<Observed<Vec<Accepted>>, GenError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(Call::Submit {
            at: Instant::now(),
            key: batch.idempotency_key.clone(),
            jobs: batch.items.iter().map(|i| i.job_id.clone()).collect(),
        });
        if let Some(e) = s.submit_errors.pop_front() {
            return Err(e);
        }
        if s.balance_for.is_some_and(|n| s.accepted >= n) {
            return Err(GenError::InsufficientBalance {
                message: "wallet empty".into(),
            });
        }
        s.accepted += 1;
        let mut out = Vec::new();
        for item in batch.items {
            let r = format!("ref_{}", item.job_id);
            s.accepted_at.insert(r.clone(), Instant::now());
            out.push(Accepted {
                job_id: item.job_id,
                provider_ref: r,
                replayed: false,
            });
        }
        Ok(Observed::new(out, None))
    }
}

#[async_trait]
impl Generator for Fake {
    fn name(&self) -> &'static str {
        self.name
    }

    fn limits(&self) -> Limits {
        self.limits.clone()
    }

    fn validate(&self, spec: &Value) -> Result<(), Vec<FieldViolation>> {
        match spec.get("n") {
            Some(Value::Number(_)) => Ok(()),
            _ => Err(vec![FieldViolation::new("n", "must be a number")]),
        }
    }

    async fn submit(&self, batch: SubmitBatch) -> Result<Observed<Vec<Accepted>>, GenError> {
        let delay = self.state.lock().unwrap().submit_delay;
        let answer = self.submit_now(batch);
        tokio::time::sleep(delay).await;
        answer
    }

    async fn poll(&self, keys: &[String]) -> Result<Observed<Vec<ProviderUpdate>>, GenError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(Call::Poll {
            at: Instant::now(),
            keys: keys.to_vec(),
        });
        let mut out = Vec::new();
        for k in keys {
            let target = UpdateTarget::ProviderRef(k.clone());
            if s.lost.contains(k) {
                out.push(ProviderUpdate::with_state(target, RemoteState::NotFound));
                continue;
            }
            let Some(at) = s.accepted_at.get(k) else {
                out.push(ProviderUpdate::with_state(target, RemoteState::NotFound));
                continue;
            };
            if at.elapsed() >= s.job_duration {
                out.push(ProviderUpdate::completed(
                    target,
                    vec![Output {
                        url: format!("https://fake.test/{k}.png"),
                        width: 10,
                        height: 10,
                        format: String::new(),
                        mime_type: "image/png".into(),
                        ..Output::default()
                    }],
                ));
            } else {
                out.push(ProviderUpdate::processing(target, None));
            }
        }
        Ok(Observed::new(out, None))
    }

    async fn stream_updates(&self, provider_ref: &str) -> Result<UpdateStream, GenError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(Call::Stream { at: Instant::now() });
        let items: Vec<Result<ProviderUpdate, GenError>> = s
            .stream_script
            .drain(..)
            .map(|mut u| {
                u.target = UpdateTarget::ProviderRef(provider_ref.to_owned());
                Ok(u)
            })
            .collect();
        Ok(Box::pin(futures_util::stream::iter(items)))
    }
}

pub fn spec(n: usize) -> Value {
    json!({ "n": n })
}

pub struct Harness {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub shutdown: CancellationToken,
}

impl Harness {
    pub async fn stop(self) {
        self.shutdown.cancel();
        assert!(
            self.engine.stopped(Duration::from_secs(30)).await,
            "engine tasks still running 30 s after shutdown"
        );
        self.store.close().await;
    }
}

pub async fn start(fake: &Fake, db: &std::path::Path) -> Harness {
    start_with(fake, db, |_| {}).await
}

/// [`start`], with the engine's configuration adjusted by `adjust`.
pub async fn start_with(
    fake: &Fake,
    db: &std::path::Path,
    adjust: impl FnOnce(&mut EngineConfig),
) -> Harness {
    let url = format!("sqlite://{}", db.display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
    let shutdown = CancellationToken::new();
    let mut config = EngineConfig {
        providers: vec![ProviderSetup {
            prices: Default::default(),
            generator: Arc::new(fake.clone()),
            limits: fake.limits.clone(),
        }],
        sweep_interval: s(1.0),
        ..EngineConfig::default()
    };
    adjust(&mut config);
    let engine = Engine::start(store.clone(), config, shutdown.clone())
        .await
        .unwrap();
    Harness {
        engine,
        store,
        shutdown,
    }
}

/// Check `cond` every 10 ms until it holds, or fail after `limit` (already scaled).
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < end, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
