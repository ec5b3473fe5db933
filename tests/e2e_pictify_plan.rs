//! Issue 21: Pictify webhook subscriptions (one per event, each with its own secret; paused by
//! Pictify after five failed deliveries) and plan limits (concurrent batches, items per batch,
//! requests per day), end to end through the gateway against the simulator.
//!
//! Documents: `shared/reference/providers.md` §2.3 (plan table), §2.4 (rate and daily limits),
//! §2.6 (webhooks and the subscriptions API).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use adgate::pb;
use adgate_sim::SimConfig;
use adgate_sim::pictify::{self, PictifyOptions, Plan, SubscriptionSeed};
use common::*;
use tokio::time::Instant;

const KEY: &str = "key_pictify_test";
/// The default secret the harness configures: it signs nothing here, so only the per-event
/// secrets can verify.
const DEFAULT_SECRET: &str = "whsec_default_signs_nothing_here";
const SECRET_RENDER: &str = "whsec_render_completed_0123456789";
const SECRET_BATCH: &str = "whsec_batch_completed_9876543210";

fn sim_cfg(ts: f64) -> SimConfig {
    SimConfig {
        api_key: KEY.to_owned(),
        time_scale: ts,
        job_duration: (Duration::from_secs(2), Duration::from_secs(4)),
        ..SimConfig::default()
    }
}

/// A Pictify simulator with one subscription per event, each with its own secret, delivering
/// to the gateway's webhook endpoint at `addr`.
async fn pictify_sim(addr: std::net::SocketAddr, cfg: SimConfig, plan: Option<Plan>) -> Sim {
    let url = format!("http://{addr}/webhooks/pictify");
    let seed = |event: &str, secret: &str| SubscriptionSeed {
        event: event.to_owned(),
        target_url: url.clone(),
        secret: secret.to_owned(),
    };
    let handle = pictify::spawn_with(
        cfg,
        PictifyOptions {
            plan,
            subscriptions: vec![
                seed("render.completed", SECRET_RENDER),
                seed("batch.completed", SECRET_BATCH),
                seed("batch.failed", SECRET_BATCH),
            ],
        },
    )
    .await
    .unwrap();
    Sim {
        name: PICTIFY,
        handle,
        key: KEY.to_owned(),
        secret: DEFAULT_SECRET.to_owned(),
    }
}

fn secrets_toml(extra: &str) -> String {
    format!(
        "[providers.pictify]\n\
         webhook_secrets = {{ \"render.completed\" = \"{SECRET_RENDER}\", \
         \"batch.completed\" = \"{SECRET_BATCH}\", \"batch.failed\" = \"{SECRET_BATCH}\" }}\n\
         {extra}\n"
    )
}

async fn start(ts: f64, toml: &str, http: tokio::net::TcpListener, sim: &Sim) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        GatewayOpts {
            time_scale: ts,
            webhooks: true,
            toml,
            database_url: db_url(&dir),
        },
        http,
        &[sim],
    )
    .await;
    // The store lives as long as the test process; the directory is kept on purpose.
    std::mem::forget(dir);
    gw
}

async fn pictify_info(client: &Client) -> pb::ProviderInfo {
    let mut c = client.clone();
    c.list_providers(pb::ListProvidersRequest {})
        .await
        .unwrap()
        .into_inner()
        .providers
        .into_iter()
        .find(|p| p.name == PICTIFY)
        .unwrap()
}

async fn subscriptions(sim: &Sim) -> Vec<serde_json::Value> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/webhook-subscriptions", sim.handle.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["subscriptions"].as_array().unwrap().clone()
}

async fn uid_of(sim: &Sim, event: &str) -> String {
    subscriptions(sim)
        .await
        .iter()
        .find(|s| s["event"] == event)
        .map(|s| s["uid"].as_str().unwrap().to_owned())
        .unwrap()
}

async fn set_status(sim: &Sim, uid: &str, action: &str) {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/webhook-subscriptions/{uid}/{action}",
            sim.handle.base_url
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// A(1): two subscriptions with different secrets both verify at the gateway's endpoint; the
/// URLs (render.completed, its own secret) and the batch hints (batch.completed, another
/// secret) are both applied and nothing is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_with_different_secrets_both_verify_through_the_gateway() {
    const TS: f64 = 0.01;
    let (http, addr) = http_listener().await;
    let sim = pictify_sim(addr, sim_cfg(TS), None).await;
    let gw = start(TS, &secrets_toml(""), http, &sim).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let jobs: Vec<pb::JobSpec> = (0..4)
        .map(|i| pictify_job("tmpl_subs", &format!("n{i}")))
        .collect();
    let reply = submit(&mut c, jobs).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    for j in &jobs {
        assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
        assert_eq!(
            j.outputs.len(),
            1,
            "the URL came by render.completed: {j:?}"
        );
    }
    let hooks = sim.ledger().webhooks();
    let ok = |event: &str| {
        hooks
            .iter()
            .filter(|w| w.event == event && w.status == Some(200))
            .count()
    };
    wait_for("batch.completed accepted", Duration::from_secs(10), || {
        let n = sim
            .ledger()
            .webhooks()
            .iter()
            .filter(|w| w.event == "batch.completed" && w.status == Some(200))
            .count();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    assert_eq!(ok("render.completed"), 4, "{hooks:?}");
    assert_eq!(gw.webhooks(PICTIFY, "rejected"), 0);
    assert!(
        sim.ledger()
            .webhooks()
            .iter()
            .all(|w| w.status == Some(200)),
        "every delivery verified: {:?}",
        sim.ledger().webhooks()
    );
    let info = pictify_info(&client).await;
    assert_eq!(info.health(), pb::ProviderHealth::Serving, "{info:?}");
    gw.stop().await;
}

/// A(3), A(4): a subscription Pictify paused shows in ListProviders (DEGRADED, with a reason,
/// and the subscription's status) and in a metric within one check interval; meanwhile a job
/// whose URL would come by that subscription still ends, by polling, within the backstop bound:
/// FAILED `OUTPUT_URL_UNAVAILABLE`, since Pictify's results carry no URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscription_shows_within_one_check_interval_and_jobs_still_end() {
    const TS: f64 = 0.01;
    // 100 s at 0.01 = 1 s between checks.
    let interval = Duration::from_secs(1);
    let (http, addr) = http_listener().await;
    let sim = pictify_sim(addr, sim_cfg(TS), None).await;
    let gw = start(TS, &secrets_toml("push_check_secs = 100"), http, &sim).await;
    let client = gw.client().await;
    let info = wait_for("a first check", Duration::from_secs(5), || {
        let client = client.clone();
        async move {
            let i = pictify_info(&client).await;
            (!i.push_subscriptions.is_empty()).then_some(i)
        }
    })
    .await;
    assert_eq!(info.health(), pb::ProviderHealth::Serving, "{info:?}");
    assert!(
        info.push_subscriptions.iter().all(|s| s.status == "active"),
        "{info:?}"
    );
    assert_eq!(
        info.limits.as_ref().unwrap().push_check_interval,
        Some(prost_types::Duration {
            seconds: 1,
            nanos: 0
        })
    );

    let uid = uid_of(&sim, "render.completed").await;
    set_status(&sim, &uid, "pause").await;
    let paused_at = Instant::now();
    let info = wait_for("the pause to show", interval * 3, || {
        let client = client.clone();
        async move {
            let i = pictify_info(&client).await;
            (i.health() == pb::ProviderHealth::Degraded).then_some(i)
        }
    })
    .await;
    let seen_after = paused_at.elapsed();
    println!("paused subscription visible after {seen_after:?} (check interval {interval:?})");
    assert!(
        seen_after <= interval + Duration::from_millis(500),
        "visible within one check interval: {seen_after:?}"
    );
    assert!(
        info.reason.contains("paused") && info.reason.contains(&uid),
        "{info:?}"
    );
    let sub = info
        .push_subscriptions
        .iter()
        .find(|s| s.id == uid)
        .unwrap();
    assert_eq!(
        (sub.event.as_str(), sub.status.as_str()),
        ("render.completed", "paused")
    );
    let metric = gw
        .engine
        .metrics()
        .push_subscriptions
        .get_or_create(&adgate_engine::metrics::PushLabels {
            provider: PICTIFY.to_owned(),
            event: "render.completed".to_owned(),
            status: "paused".to_owned(),
        })
        .get();
    assert_eq!(metric, 1);

    // While paused: no render.completed comes; the backstop poll ends the job anyway.
    let mut c = client.clone();
    let reply = submit(&mut c, vec![pictify_job("tmpl_paused", "p0")]).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    let err = jobs[0].error.as_ref().unwrap();
    assert_eq!(err.code, "OUTPUT_URL_UNAVAILABLE", "{:?}", jobs[0]);
    assert!(err.message.contains("paused"), "{err:?}");
    gw.stop().await;
}

/// A(3): with `resume_subscriptions = true` the gateway resumes a paused subscription of its
/// own at the next check (`POST /webhook-subscriptions/{uid}/resume`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscription_is_resumed_when_configured() {
    const TS: f64 = 0.01;
    let (http, addr) = http_listener().await;
    let sim = pictify_sim(addr, sim_cfg(TS), None).await;
    let uid = uid_of(&sim, "render.completed").await;
    set_status(&sim, &uid, "pause").await;
    let gw = start(
        TS,
        &secrets_toml("push_check_secs = 100\nresume_subscriptions = true"),
        http,
        &sim,
    )
    .await;
    wait_for("the resume", Duration::from_secs(5), || {
        let sim = &sim;
        let uid = uid.clone();
        async move {
            let subs = subscriptions(sim).await;
            subs.iter()
                .any(|s| s["uid"] == uid.as_str() && s["status"] == "active")
                .then_some(())
        }
    })
    .await;
    assert!(sim.ledger().requests(pictify::subscriptions::EP_SUB_RESUME) >= 1);
    let info = pictify_info(&gw.client().await).await;
    assert_eq!(info.health(), pb::ProviderHealth::Serving, "{info:?}");
    gw.stop().await;
}

/// B: on the Free plan (the default) a second batch never starts while one runs — the
/// simulator, which refuses a second running batch and batches over 10 items as the plan
/// says, records no overlap and no refusal — and every job completes. Queued jobs say why
/// they wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_free_plan_a_second_batch_never_starts_while_one_runs() {
    const TS: f64 = 0.01;
    const JOBS: usize = 35;
    let (http, addr) = http_listener().await;
    let sim = pictify_sim(addr, sim_cfg(TS), Some(Plan::Free)).await;
    let gw = start(TS, &secrets_toml(""), http, &sim).await;
    let client = gw.client().await;
    let info = pictify_info(&client).await;
    let limits = info.limits.unwrap();
    assert_eq!(
        (
            limits.max_running_batches,
            limits.requests_per_day,
            limits.max_items_per_submit,
            limits.requests_per_window
        ),
        (1, 1000, 10, 60),
        "{limits:?}"
    );
    let mut c = client.clone();
    let jobs: Vec<pb::JobSpec> = (0..JOBS)
        .map(|i| pictify_job("tmpl_free", &format!("f{i}")))
        .collect();
    let reply = submit(&mut c, jobs).await;
    let waiting = wait_for(
        "a job waiting for the running batch",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            let batch_id = reply.batch_id.clone();
            async move {
                let mut c = client.clone();
                batch(&mut c, &batch_id).await.into_iter().find(|j| {
                    j.state() == pb::JobState::Queued
                        && j.progress
                            .as_ref()
                            .is_some_and(|p| p.step == "waiting_for_running_batch")
                })
            }
        },
    )
    .await;
    println!("waiting: {:?}", waiting.progress);
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(60)).await;
    assert_eq!(
        counts(&jobs).get(&pb::JobState::Completed),
        Some(&JOBS),
        "{:?}",
        counts(&jobs)
    );
    let l = sim.ledger();
    let spans = l.spans();
    println!(
        "free plan: {} batches, max overlapping {}, refusals {}/{}/{}, 429s {}",
        spans.len(),
        l.max_overlapping_spans(),
        l.refusals("concurrent_batches"),
        l.refusals("items_per_batch"),
        l.refusals("daily_requests"),
        l.count_429()
    );
    assert_eq!(
        spans.len(),
        JOBS.div_ceil(10),
        "batches of at most 10 items"
    );
    assert_eq!(l.max_overlapping_spans(), 1, "no two batches ran at once");
    for w in spans.windows(2) {
        assert!(w[0].end.unwrap() <= w[1].start, "{spans:?}");
    }
    assert_eq!(l.refusals("concurrent_batches"), 0);
    assert_eq!(l.refusals("items_per_batch"), 0);
    assert_eq!(l.count_429(), 0);
    gw.stop().await;
}

/// A(2): with `manage_subscriptions = true` the gateway creates the subscriptions it needs at
/// start-up (one per event, each with the secret Pictify shows once), keeps the secrets in
/// memory and verifies deliveries with them; a subscription to this gateway that it cannot
/// verify (left by an earlier process) is deleted and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_subscriptions_are_created_at_start_up_and_verify() {
    const TS: f64 = 0.01;
    let (http, addr) = http_listener().await;
    // One stale subscription from "an earlier process", whose secret nobody knows any more.
    let handle = pictify::spawn_with(
        sim_cfg(TS),
        PictifyOptions {
            plan: None,
            subscriptions: vec![SubscriptionSeed {
                event: "render.completed".to_owned(),
                target_url: format!("http://{addr}/webhooks/pictify"),
                secret: "whsec_forgotten_by_a_previous_process".to_owned(),
            }],
        },
    )
    .await
    .unwrap();
    let sim = Sim {
        name: PICTIFY,
        handle,
        key: KEY.to_owned(),
        secret: DEFAULT_SECRET.to_owned(),
    };
    let stale = uid_of(&sim, "render.completed").await;
    // The harness always sets a default secret; `webhook_secrets` names none, so the default
    // (which signs nothing) is all the configuration knows.
    let gw = start(
        TS,
        "[providers.pictify]\nmanage_subscriptions = true\npush_check_secs = 100\n",
        http,
        &sim,
    )
    .await;
    let client = gw.client().await;
    let subs = wait_for("four managed subscriptions", Duration::from_secs(5), || {
        let sim = &sim;
        async move {
            let s = subscriptions(sim).await;
            (s.len() == 4 && s.iter().all(|x| x["status"] == "active")).then_some(s)
        }
    })
    .await;
    let mut events: Vec<&str> = subs.iter().map(|s| s["event"].as_str().unwrap()).collect();
    events.sort_unstable();
    assert_eq!(
        events,
        [
            "batch.completed",
            "batch.failed",
            "render.completed",
            "render.failed"
        ]
    );
    assert!(subs.iter().all(|s| s["uid"] != stale.as_str()), "{subs:?}");
    let mut c = client.clone();
    let reply = submit(
        &mut c,
        (0..3)
            .map(|i| pictify_job("tmpl_managed", &format!("m{i}")))
            .collect(),
    )
    .await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    for j in &jobs {
        assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
        assert_eq!(j.outputs.len(), 1, "{j:?}");
    }
    assert_eq!(gw.webhooks(PICTIFY, "rejected"), 0);
    let info = wait_for("a clean reading", Duration::from_secs(5), || {
        let client = client.clone();
        async move {
            let i = pictify_info(&client).await;
            (i.health() == pb::ProviderHealth::Serving && i.push_subscriptions.len() == 4)
                .then_some(i)
        }
    })
    .await;
    assert!(info.push_subscriptions.iter().all(|s| s.status == "active"));
    gw.stop().await;
}

/// B: the daily cap is a second request budget (every request counts): with
/// `daily_requests = 3` the gateway sends Pictify three requests and then waits, with the
/// minute budget long free again; the rest of the work stays QUEUED instead of provoking the
/// provider's daily 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_cap_holds_requests_back() {
    const TS: f64 = 0.01;
    let (http, addr) = http_listener().await;
    let sim = pictify_sim(addr, sim_cfg(TS), None).await;
    // No public URL: no webhooks and no subscription checks, only submits and polls.
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        GatewayOpts {
            time_scale: TS,
            webhooks: false,
            toml: "[providers.pictify]\ndaily_requests = 3\n",
            database_url: db_url(&dir),
        },
        http,
        &[&sim],
    )
    .await;
    let client = gw.client().await;
    let info = pictify_info(&client).await;
    assert_eq!(info.limits.unwrap().requests_per_day, 3);
    let mut c = client.clone();
    // Four templates: four batches, each needing a submit and at least one poll.
    let reply = submit(
        &mut c,
        (0..4)
            .map(|i| pictify_job(&format!("tmpl_day{i}"), "d"))
            .collect(),
    )
    .await;
    wait_for("three requests", Duration::from_secs(10), || {
        let n = sim.ledger().total_requests();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    // An observation window, not a synchronisation: two full minute windows (1.2 s at 0.01)
    // in which the per-minute budget alone would allow 120 more requests.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        sim.ledger().total_requests(),
        3,
        "{:?}",
        sim.ledger().requests_by_endpoint()
    );
    let jobs = batch(&mut c, &reply.batch_id).await;
    assert!(
        jobs.iter().any(|j| j.state() == pb::JobState::Queued),
        "{:?}",
        counts(&jobs)
    );
    assert_eq!(sim.ledger().count_429(), 0);
    gw.stop().await;
}

/// On the Business plan batches render side by side, so `render.completed` events arrive for
/// jobs hundreds of places apart in submission order, most of them past the oldest few hundred
/// unfinished jobs of the template that a scan reads. Each event still names its job at once
/// (by the fingerprint of its template and variables): none is kept for a later pass, and
/// every job completes with its own image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_by_side_batches_complete_every_job_without_keeping_an_event() {
    let (http, addr) = http_listener().await;
    let cfg = SimConfig {
        job_duration: (Duration::from_secs(1), Duration::from_secs(2)),
        ..sim_cfg(0.02)
    };
    let sim = pictify_sim(addr, cfg, Some(Plan::Business)).await;
    let gw = start(0.02, &secrets_toml("plan = \"business\""), http, &sim).await;
    let mut client = gw.client().await;
    let mut batches = Vec::new();
    for b in 0..5 {
        let jobs = (0..100)
            .map(|i| pictify_job("tmpl_side_by_side", &format!("n{}", b * 100 + i)))
            .collect();
        batches.push(submit(&mut client, jobs).await.batch_id);
    }
    let mut urls = std::collections::HashSet::new();
    for batch in &batches {
        for j in wait_batch_terminal(&client, batch, Duration::from_secs(60)).await {
            assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
            assert_eq!(j.outputs.len(), 1, "{j:?}");
            urls.insert(j.outputs[0].url.clone());
        }
    }
    assert_eq!(urls.len(), 500, "every job has its own image");
    let applied = gw.webhooks(PICTIFY, "applied");
    let kept = gw.webhooks(PICTIFY, "kept");
    println!("render.completed: {applied} applied, {kept} kept");
    assert_eq!(kept, 0, "an event was kept although its job was known");
    gw.stop().await;
}
