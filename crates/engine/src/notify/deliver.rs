//! The deliverer: one tracked task that claims due outbox rows, posts them, and records what
//! happened.
//!
//! At-least-once: a row is leased while it is being sent; a deliverer that dies (kill -9)
//! leaves it due again when the lease ends, and the new attempt carries the same
//! `webhook-id`, so receivers deduplicate. A failed delivery is retried on the schedule of
//! [`NotifyConfig::retry_delays`] (with jitter) and given up after the last; an endpoint that
//! fails `disable_after` times in a row is disabled (its deliveries are parked, not lost)
//! until a `RedeliverEvents` of one of its batches switches it on again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use adgate_store::notify::{BATCH_COMPLETED, event_name};
use adgate_store::{JobRecord, NotifyOutcome, NotifySettle, OutboxEntry};
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::{NotifyConfig, SigningSecret, retry_delay, target};
use crate::metrics::NotifyLabels;
use crate::runtime::Shared;

/// Rows claimed per pass, per delivery in flight: a pass is at most this many rounds of sends.
const ROUNDS_PER_PASS: u32 = 4;
/// How often due rows are looked for without a wake-up (retries, other replicas' rows).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How often the disabled endpoints are read again without a redelivery here (another
/// replica's `RedeliverEvents`).
const HEALTH_REREAD: Duration = Duration::from_secs(10);
/// How long a `job.completed` waits for output custody to settle (stored or failed), so the
/// event carries `stored_url` and the checksum. Custody retries an unreachable URL for hours;
/// past this the event goes out with the copy still pending.
const CUSTODY_HOLD_MS: i64 = 120_000;
/// How soon a held event (or one whose job could not be read) is looked at again.
const CUSTODY_RECHECK_MS: i64 = 1_000;
/// Largest response body read (and ignored) from a receiver.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What one send came to.
enum Sent {
    Delivered,
    /// The receiver (or the way to it) failed; retried.
    Failed(String),
    /// Nothing can ever be sent for this row (endpoint gone, job deleted).
    Impossible(String),
}

pub(crate) async fn run(shared: Arc<Shared>, cfg: Arc<NotifyConfig>, wake: Arc<Notify>) {
    let client = match target::client(cfg.policy, cfg.timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "outbound webhooks: cannot build the HTTP client; nothing will be delivered");
            return;
        }
    };
    let mut state = Health {
        failures: HashMap::new(),
        disabled: match shared.store.disabled_endpoints().await {
            Ok(list) => list.into_iter().map(|(e, _)| e).collect(),
            Err(_) => HashSet::new(),
        },
    };
    // A pass sends its rows in at most ROUNDS_PER_PASS rounds of `concurrency`, each bounded
    // by the timeout: the lease outlasts the whole pass and its settle, so no other replica
    // claims a row this one is still sending; a dead deliverer's rows come back after it.
    let in_flight = cfg.concurrency.max(1);
    let claim = in_flight.saturating_mul(ROUNDS_PER_PASS as usize);
    let lease_ms =
        i64::try_from((cfg.timeout * (ROUNDS_PER_PASS + 1) + Duration::from_secs(1)).as_millis())
            .unwrap_or(i64::MAX);
    let mut health_read = tokio::time::Instant::now();
    loop {
        // A redelivery switched endpoints on (here or on another replica): read them again.
        if shared
            .notify_reload
            .swap(false, std::sync::atomic::Ordering::AcqRel)
            || health_read.elapsed() >= HEALTH_REREAD
        {
            if let Ok(list) = shared.store.disabled_endpoints().await {
                state.disabled = list.into_iter().map(|(e, _)| e).collect();
            }
            health_read = tokio::time::Instant::now();
        }
        let claimed = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            c = shared.store.claim_notifications(shared.now_ms(), lease_ms, claim) => c,
        };
        let entries = match claimed {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "outbound webhooks: cannot read the outbox");
                Vec::new()
            }
        };
        if entries.is_empty() {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        // Abandoned at shutdown: the leases bring them back, same ids, after a restart.
        let settles = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            s = pass(&shared, &cfg, &client, &mut state, entries) => s,
        };
        if let Err(e) = shared
            .store
            .settle_notifications(settles, shared.now_ms())
            .await
        {
            tracing::warn!(error = %e, "outbound webhooks: cannot record deliveries; they will be sent again");
        }
    }
}

/// Per-endpoint failure runs and the disabled set.
struct Health {
    failures: HashMap<String, u32>,
    disabled: HashSet<String>,
}

async fn pass(
    shared: &Arc<Shared>,
    cfg: &Arc<NotifyConfig>,
    client: &reqwest::Client,
    health: &mut Health,
    entries: Vec<OutboxEntry>,
) -> Vec<NotifySettle> {
    let now = shared.now_ms();
    let bodies = match Bodies::load(shared, cfg, &entries).await {
        Ok(b) => b,
        // A store that cannot be read says nothing about the events: none is given up, all
        // come back shortly, uncounted.
        Err(e) => {
            tracing::warn!(error = %e, "outbound webhooks: cannot read the events' jobs; retrying");
            return entries
                .iter()
                .map(|entry| NotifySettle {
                    seq: entry.seq,
                    outcome: NotifyOutcome::Later {
                        next_at_ms: now.saturating_add(CUSTODY_RECHECK_MS),
                    },
                })
                .collect();
        }
    };
    let mut settles = Vec::with_capacity(entries.len());
    let mut to_send = Vec::new();
    for entry in entries {
        if bodies.custody_pending(&entry)
            && now.saturating_sub(entry.created_at_ms) < CUSTODY_HOLD_MS
        {
            settles.push(NotifySettle {
                seq: entry.seq,
                outcome: NotifyOutcome::Later {
                    next_at_ms: now.saturating_add(CUSTODY_RECHECK_MS),
                },
            });
        } else if health.disabled.contains(&entry.endpoint) {
            count(shared, entry.kind, "parked");
            settles.push(NotifySettle {
                seq: entry.seq,
                outcome: NotifyOutcome::Park,
            });
        } else {
            to_send.push(entry);
        }
    }
    let results: Vec<(OutboxEntry, Sent)> = futures_util::stream::iter(to_send)
        .map(|entry| {
            let bodies = &bodies;
            async move {
                let sent = send(cfg, client, bodies, &entry).await;
                (entry, sent)
            }
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .collect()
        .await;
    let now = shared.now_ms();
    for (entry, sent) in results {
        let outcome = match sent {
            Sent::Delivered => {
                health.failures.remove(&entry.endpoint);
                count(shared, entry.kind, "delivered");
                NotifyOutcome::Delivered
            }
            Sent::Impossible(error) => {
                count(shared, entry.kind, "given_up");
                NotifyOutcome::GiveUp { error }
            }
            Sent::Failed(error) => {
                let run = health.failures.entry(entry.endpoint.clone()).or_insert(0);
                *run += 1;
                if *run >= cfg.disable_after && !health.disabled.contains(&entry.endpoint) {
                    disable(shared, health, &entry.endpoint, &error).await;
                }
                if health.disabled.contains(&entry.endpoint) {
                    count(shared, entry.kind, "parked");
                    NotifyOutcome::Park
                } else {
                    match retry_delay(&cfg.retry_delays, entry.attempts + 1, fastrand::f64()) {
                        Some(wait) => {
                            count(shared, entry.kind, "failed");
                            let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                            NotifyOutcome::Retry {
                                next_at_ms: now.saturating_add(wait_ms),
                                error,
                            }
                        }
                        None => {
                            count(shared, entry.kind, "given_up");
                            tracing::warn!(event_id = %entry.event_id, endpoint = %endpoint_label(&entry.endpoint), error = %error, "outbound webhook given up after its last retry");
                            NotifyOutcome::GiveUp { error }
                        }
                    }
                }
            }
        };
        settles.push(NotifySettle {
            seq: entry.seq,
            outcome,
        });
    }
    settles
}

async fn disable(shared: &Arc<Shared>, health: &mut Health, endpoint: &str, error: &str) {
    let reason = format!("disabled after consecutive failed deliveries; last: {error}");
    match shared
        .store
        .disable_endpoint(endpoint, &reason, shared.now_ms())
        .await
    {
        Ok(parked) => {
            health.disabled.insert(endpoint.to_owned());
            health.failures.remove(endpoint);
            shared.metrics.notify_disabled.inc();
            tracing::warn!(endpoint = %endpoint_label(endpoint), parked, error = %error, "outbound webhook endpoint disabled after consecutive failures; RedeliverEvents of one of its batches enables it again");
        }
        Err(e) => tracing::warn!(error = %e, "outbound webhooks: cannot disable an endpoint"),
    }
}

/// An endpoint for logs: a configured endpoint's id, or a named URL without its query (which
/// may carry a token).
fn endpoint_label(endpoint: &str) -> String {
    match endpoint.strip_prefix("url:") {
        Some(url) => match reqwest::Url::parse(url) {
            Ok(mut u) => {
                u.set_query(None);
                u.set_fragment(None);
                format!("url:{u}")
            }
            Err(_) => "url:<unparsable>".to_owned(),
        },
        None => endpoint.to_owned(),
    }
}

fn count(shared: &Shared, kind: i64, outcome: &str) {
    shared
        .metrics
        .notify_deliveries
        .get_or_create(&NotifyLabels {
            event: event_name(kind).to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// The jobs and batches a pass's payloads are made of, read once per pass.
struct Bodies {
    jobs: HashMap<String, JobRecord>,
    batches: HashMap<String, Vec<JobRecord>>,
}

impl Bodies {
    /// Fails when the store cannot be read: an event whose job is merely unreadable must not
    /// be taken for one whose job is gone (which is given up).
    async fn load(
        shared: &Shared,
        cfg: &NotifyConfig,
        entries: &[OutboxEntry],
    ) -> Result<Self, adgate_store::StoreError> {
        let mut ids: Vec<String> = entries.iter().filter_map(|e| e.job_id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let jobs = shared
            .store
            .get_jobs(&ids)
            .await?
            .into_iter()
            .map(|j| (j.id.clone(), j))
            .collect();
        let mut batches = HashMap::new();
        if cfg.payloads.is_some() {
            for e in entries.iter().filter(|e| e.kind == BATCH_COMPLETED) {
                if batches.contains_key(&e.batch_id) {
                    continue;
                }
                if let Some(list) = shared.store.batch_jobs(&e.batch_id).await? {
                    batches.insert(e.batch_id.clone(), list);
                }
            }
        }
        Ok(Self { jobs, batches })
    }

    /// Whether `entry` is a job's event whose outputs are still being copied.
    fn custody_pending(&self, entry: &OutboxEntry) -> bool {
        entry
            .job_id
            .as_ref()
            .and_then(|id| self.jobs.get(id))
            .is_some_and(|job| {
                job.outputs
                    .iter()
                    .any(|o| o.custody.state == adgate_generator::CustodyState::Pending)
            })
    }

    /// The caller that owns `entry`'s event, and the event's `data`.
    fn data(&self, cfg: &NotifyConfig, entry: &OutboxEntry) -> Option<(String, serde_json::Value)> {
        let payloads = cfg.payloads.as_ref()?;
        match &entry.job_id {
            Some(id) => {
                let job = self.jobs.get(id)?;
                Some((job.caller.clone(), payloads.job(job)))
            }
            None => {
                let jobs = self.batches.get(&entry.batch_id)?;
                let caller = jobs.first()?.caller.clone();
                Some((caller, payloads.batch(&entry.batch_id, jobs)))
            }
        }
    }
}

async fn send(
    cfg: &NotifyConfig,
    client: &reqwest::Client,
    bodies: &Bodies,
    entry: &OutboxEntry,
) -> Sent {
    let Some((caller, data)) = bodies.data(cfg, entry) else {
        return Sent::Impossible("the job or batch of this event no longer exists".into());
    };
    let (url, secret): (&str, &SigningSecret) = if entry.endpoint.starts_with("url:") {
        match cfg.url_secret(&caller) {
            Some(s) => (entry.url.as_str(), s),
            None => return Sent::Impossible("no signing secret is configured".into()),
        }
    } else {
        match cfg.endpoints.iter().find(|e| e.id == entry.endpoint) {
            Some(e) => (e.url.as_str(), &e.secret),
            None => return Sent::Impossible("the endpoint is no longer configured".into()),
        }
    };
    // Checked again at send time: the operator may have tightened the policy since.
    if let Err(why) = target::check_url(url, cfg.policy) {
        return Sent::Impossible(format!("the URL {why}"));
    }
    let created =
        UNIX_EPOCH + Duration::from_millis(u64::try_from(entry.created_at_ms).unwrap_or_default());
    let body = serde_json::json!({
        "type": event_name(entry.kind),
        "timestamp": adgate_generator::time::rfc3339(created),
        "data": data,
    });
    let body = match serde_json::to_vec(&body) {
        Ok(b) => b,
        Err(e) => return Sent::Impossible(format!("cannot encode the payload: {e}")),
    };
    // The signing time, not the event's: receivers refuse stale timestamps, and a retry a day
    // later must still verify.
    let timestamp = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let signature = secret.sign(&entry.event_id, timestamp, &body);
    let answer = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &entry.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match answer {
        Ok(resp) if resp.status().is_success() => {
            // Read a little of the answer so the connection can be reused.
            let mut stream = resp.bytes_stream();
            let mut read = 0usize;
            while let Some(Ok(chunk)) = stream.next().await {
                read += chunk.len();
                if read > MAX_ANSWER_BYTES {
                    break;
                }
            }
            Sent::Delivered
        }
        Ok(resp) => Sent::Failed(format!(
            "the endpoint answered HTTP {}",
            resp.status().as_u16()
        )),
        // reqwest errors name the URL, which a caller chose; keep only the kind of failure.
        Err(e) => Sent::Failed(describe(&e)),
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the endpoint did not answer in time".into()
    } else if e.is_connect() {
        "cannot connect to the endpoint".into()
    } else {
        "the request to the endpoint failed".into()
    }
}
