//! Provider events in the orders real providers produce (issue 14): pushes before the submit's
//! answer, answers lost after the work exists, pushes that never come, events for jobs not yet
//! known. The gateway runs in-process on real sockets against the simulators, on SQLite and on
//! PostgreSQL (127.0.0.1:5432, trust auth). Nothing paid for may be lost in any of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;
mod pgdb;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adgate::pb;
use adgate_sim::SimConfig;
use common::*;
use pgdb::Backend;
use tokio::time::Instant;

const TS: f64 = 0.02;

fn sim_cfg(job: (u64, u64)) -> SimConfig {
    SimConfig {
        time_scale: TS,
        job_duration: (Duration::from_secs(job.0), Duration::from_secs(job.1)),
        ..SimConfig::default()
    }
}

async fn gateway(
    backend: &Backend,
    webhooks: bool,
    toml: &str,
    http: tokio::net::TcpListener,
    sims: &[&Sim],
) -> Gateway {
    Gateway::start(
        GatewayOpts {
            time_scale: TS,
            webhooks,
            toml,
            database_url: backend.url(),
        },
        http,
        sims,
    )
    .await
}

/// A TOML that pushes every normal poll out of reach (`ms` × 0.02 ≫ the test), so that only
/// the mechanism under test can finish a job.
fn no_polls(provider: &str) -> String {
    format!(
        "[providers.{provider}]\nfirst_poll_after_ms = 30000000\npoll_interval_ms = 30000000\n\
         typical_job_secs = 30000\n"
    )
}

fn distinct_urls(jobs: &[pb::Job]) -> usize {
    jobs.iter()
        .flat_map(|j| j.outputs.iter().map(|o| o.url.clone()))
        .collect::<HashSet<_>>()
        .len()
}

// ---------------------------------------------------------------------------------------------
// Pushes before the submit's answer

async fn pictify_push_before_answer(postgres: bool) {
    let backend = Backend::new(postgres).await;
    let (http, addr) = http_listener().await;
    // Items render in 20–40 ms; the batch-render answer comes 3 s later.
    let pic = sim(PICTIFY, addr, true, sim_cfg((1, 2))).await;
    pic.handle
        .update_faults(|f| f.submit_answer_delay = Duration::from_secs(3));
    let gw = gateway(&backend, true, "", http, &[&pic]).await;
    let mut client = gw.client().await;
    let started = Instant::now();
    let jobs = vec![
        pictify_job("tmpl_order", "Ada"),
        pictify_job("tmpl_order", "Grace"),
        pictify_job("tmpl_order", "Edsger"),
    ];
    let reply = submit(&mut client, jobs).await;
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    let took = started.elapsed();
    for j in &done {
        assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
        assert_eq!(j.outputs.len(), 1, "{j:?}");
    }
    assert_eq!(distinct_urls(&done), 3, "each item its own URL");
    assert_eq!(
        pic.ledger().requests("POST /templates/:uid/batch-render"),
        1
    );
    assert_eq!(pic.ledger().total_charges(), 3, "one charge per item");
    // The renders were applied as they came (the jobs had their attempt on record), before
    // the answer: completion does not wait for the held answer.
    assert!(
        took < Duration::from_millis(2900),
        "completed in {took:?}, i.e. not only after the 3 s answer"
    );
    wait_for(
        "the three deliveries answered",
        Duration::from_secs(10),
        || {
            let n = gw.webhooks(PICTIFY, "applied");
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    // The held answer arrives later and changes nothing; nothing is left in flight.
    wait_for(
        "the submit answer recorded",
        Duration::from_secs(10),
        || {
            let engine = gw.engine.clone();
            async move {
                engine
                    .providers()
                    .iter()
                    .all(|p| p.in_flight == 0)
                    .then_some(())
            }
        },
    )
    .await;
    let stored = gw.stored_jobs().await;
    assert_eq!(stored.get("COMPLETED"), Some(&3), "{stored:?}");
    println!(
        "pictify push-before-answer (postgres={postgres}): 3 items COMPLETED in {took:?}, \
         1 batch-render, {} provider requests",
        pic.ledger().total_requests()
    );
    gw.stop().await;
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictify_push_before_submit_answer_completes_every_item_sqlite() {
    pictify_push_before_answer(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictify_push_before_submit_answer_completes_every_item_postgres() {
    pictify_push_before_answer(true).await;
}

async fn abyssale_push_before_answer(postgres: bool) {
    let backend = Backend::new(postgres).await;
    let (http, addr) = http_listener().await;
    // Generations take 20–40 ms; the generate answer comes 3 s later.
    let aby = sim(ABYSSALE, addr, true, sim_cfg((1, 2))).await;
    aby.handle
        .update_faults(|f| f.submit_answer_delay = Duration::from_secs(3));
    let gw = gateway(&backend, true, &no_polls(ABYSSALE), http, &[&aby]).await;
    let mut client = gw.client().await;
    let started = Instant::now();
    let reply = submit(&mut client, vec![abyssale_job(&["facebook-feed"])]).await;
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert_eq!(done[0].state(), pb::JobState::Completed, "{:?}", done[0]);
    assert_eq!(done[0].outputs.len(), 1);
    assert!(took < Duration::from_millis(2900), "{took:?}");
    // The callback bound its job by the identity in the callback URL: the provider ref is
    // on record although the answer that carries it had not arrived.
    assert_eq!(
        done[0].provider_job_id,
        aby.ledger().created_ids()[0],
        "bound to the generation the provider made"
    );
    assert_eq!(
        aby.ledger()
            .requests("POST /async/banner-builder/:id/generate"),
        1
    );
    println!("abyssale push-before-answer (postgres={postgres}): COMPLETED in {took:?}");
    gw.stop().await;
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_push_before_submit_answer_completes_sqlite() {
    abyssale_push_before_answer(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_push_before_submit_answer_completes_postgres() {
    abyssale_push_before_answer(true).await;
}

// ---------------------------------------------------------------------------------------------
// A submit answer lost after the work exists

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_lost_answer_completes_from_the_callback_and_fails_unknown_without_one() {
    for webhooks in [true, false] {
        let backend = Backend::new(false).await;
        let (http, addr) = http_listener().await;
        let aby = sim(ABYSSALE, addr, webhooks, sim_cfg((10, 20))).await;
        aby.handle.update_faults(|f| f.cut_after_create = 1);
        let gw = gateway(&backend, webhooks, &no_polls(ABYSSALE), http, &[&aby]).await;
        let mut client = gw.client().await;
        let reply = submit(&mut client, vec![abyssale_job(&["facebook-feed"])]).await;
        let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
        let job = &done[0];
        assert_eq!(aby.ledger().count_cut(), 1, "the answer was cut");
        assert_eq!(
            aby.ledger()
                .requests("POST /async/banner-builder/:id/generate"),
            1,
            "never sent twice: Abyssale takes no idempotency key"
        );
        if webhooks {
            assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
            assert_eq!(job.provider_job_id, aby.ledger().created_ids()[0]);
            assert_eq!(job.outputs.len(), 1);
        } else {
            assert_eq!(job.state(), pb::JobState::Failed, "{job:?}");
            assert_eq!(job.error.as_ref().unwrap().code, "UNKNOWN_OUTCOME");
        }
        gw.stop().await;
        backend.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_with_no_callback_waits_visibly_then_fails_unknown_outcome() {
    let backend = Backend::new(false).await;
    let (http, addr) = http_listener().await;
    let aby = sim(ABYSSALE, addr, true, sim_cfg((10, 20))).await;
    aby.handle.update_faults(|f| {
        f.cut_after_create = 1;
        f.suppress_webhooks = true;
    });
    // Window: 100 s × 1.2 × 0.02 = 2.4 s.
    let toml = format!("{}longest_job_secs = 100\n", no_polls(ABYSSALE));
    let gw = gateway(&backend, true, &toml, http, &[&aby]).await;
    let mut client = gw.client().await;
    let reply = submit(&mut client, vec![abyssale_job(&["facebook-feed"])]).await;
    let id = reply.job_ids[0].clone();
    let waiting = wait_for("the job reconciling", Duration::from_secs(10), || {
        let mut c = client.clone();
        let id = id.clone();
        async move {
            let j = get_job(&mut c, &id).await;
            (j.progress.as_ref().is_some_and(|p| p.step == "reconciling")).then_some(j)
        }
    })
    .await;
    assert_eq!(waiting.state(), pb::JobState::Processing);
    assert!(
        waiting.progress.unwrap().message.contains("callback"),
        "its progress says why it waits"
    );
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    assert_eq!(done[0].error.as_ref().unwrap().code, "UNKNOWN_OUTCOME");
    let info = client
        .list_providers(pb::ListProvidersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let limits = info.providers[0].limits.unwrap();
    assert_eq!(
        limits.reconcile_window.unwrap().nanos as i64
            + limits.reconcile_window.unwrap().seconds * 1_000_000_000,
        2_400_000_000
    );
    gw.stop().await;
    backend.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Forged identities

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_callback_carrying_a_real_jobs_identity_is_refused_and_changes_nothing() {
    let backend = Backend::new(false).await;
    let (http, addr) = http_listener().await;
    let aby = sim(ABYSSALE, addr, true, sim_cfg((10, 20))).await;
    aby.handle.update_faults(|f| f.suppress_webhooks = true);
    let gw = gateway(&backend, true, &no_polls(ABYSSALE), http, &[&aby]).await;
    let mut client = gw.client().await;
    let reply = submit(&mut client, vec![abyssale_job(&["facebook-feed"])]).await;
    let id = reply.job_ids[0].clone();
    wait_for("the job submitted", Duration::from_secs(10), || {
        let mut c = client.clone();
        let id = id.clone();
        async move { (get_job(&mut c, &id).await.state() == pb::JobState::Processing).then_some(()) }
    })
    .await;
    let before = get_job(&mut client, &id).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = r#"{"generation_request_id":"8a7c3f4e-0000-4000-8000-000000000001","banners":[{"id":"b1","file":{"type":"png","url":"https://evil.example/x.png"},"format":{"id":"facebook-feed","width":1200,"height":628}}],"errors":[]}"#
    .to_owned();
    let real = adgate_generator::callback::url_for(
        &format!("{}/webhooks/abyssale", gw.http),
        aby.secret.as_bytes(),
        &id,
    );
    let post = |url: String, secret: String| {
        let body = body.clone();
        async move {
            let sig = adgate_generator::signature::header_value(
                secret.as_bytes(),
                "v1:webhook:",
                now,
                body.as_bytes(),
            );
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header("x-abyssale-signature", sig)
                .header("x-abyssale-delivery-id", format!("{:064x}", now))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The job's real identity, but a body signed with another key: refused.
    assert_eq!(post(real.clone(), "whsec_not_the_secret".into()).await, 401);
    // A correctly signed body under a job id whose token was not minted for it: refused.
    let other = adgate_generator::callback::url_for(
        &format!("{}/webhooks/abyssale", gw.http),
        aby.secret.as_bytes(),
        "job_someoneelse",
    )
    .replace("job_someoneelse", &id);
    assert_eq!(post(other, aby.secret.clone()).await, 401);
    let after = get_job(&mut client, &id).await;
    assert_eq!(after, before, "nothing changed");
    assert_eq!(gw.webhooks(ABYSSALE, "refused"), 2);
    assert_eq!(
        gw.webhooks(ABYSSALE, "applied") + gw.webhooks(ABYSSALE, "kept"),
        0
    );
    gw.stop().await;
    backend.finish().await;
}

// ---------------------------------------------------------------------------------------------
// A push that never comes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_abyssale_callback_costs_at_most_a_minute_and_a_kept_one_no_polls() {
    for lost in [true, false] {
        let backend = Backend::new(false).await;
        let (http, addr) = http_listener().await;
        // Jobs of 30–50 s: inside the 60 s typical duration, as the documents describe.
        let aby = sim(ABYSSALE, addr, true, sim_cfg((30, 50))).await;
        aby.handle.update_faults(|f| f.suppress_webhooks = lost);
        let gw = gateway(&backend, true, "", http, &[&aby]).await;
        let mut client = gw.client().await;
        let jobs: Vec<pb::JobSpec> = (0..4).map(|_| abyssale_job(&["facebook-feed"])).collect();
        let started = Instant::now();
        let reply = submit(&mut client, jobs).await;
        let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
        let took = started.elapsed();
        assert!(
            done.iter().all(|j| j.state() == pb::JobState::Completed),
            "{done:?}"
        );
        let polls = aby.ledger().requests("GET /generation-request/:id");
        // Real completion ≤ 50 s; the bound is 60 s beyond it (scaled: 2.2 s), plus slack for
        // the submit path and scheduling on a loaded machine.
        let bound = Duration::from_secs_f64((50.0 + 60.0) * TS) + Duration::from_secs(1);
        println!(
            "abyssale lost={lost}: 4 jobs COMPLETED in {took:?} (bound {bound:?}), {polls} polls"
        );
        if lost {
            assert!(took <= bound, "{took:?} > {bound:?}");
            assert!((4..=8).contains(&polls), "{polls} polls for 4 jobs");
        } else {
            assert!(polls <= 8, "at most 2 extra requests per job: {polls}");
        }
        gw.stop().await;
        backend.finish().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The inbox: events for jobs not known yet

async fn kept_then_applied(postgres: bool) {
    let backend = Backend::new(postgres).await;
    let (http, addr) = http_listener().await;
    // The gateway has the signing secret but no public URL: Abyssale delivers to the global
    // (dashboard) endpoint, so callbacks carry no job identity — only the provider's id, which
    // the gateway learns from the generate answer, held back 3 s.
    let aby = sim(ABYSSALE, addr, true, sim_cfg((1, 2))).await;
    aby.handle
        .update_faults(|f| f.submit_answer_delay = Duration::from_secs(3));
    let gw = gateway(&backend, false, &no_polls(ABYSSALE), http, &[&aby]).await;
    let mut client = gw.client().await;
    let reply = submit(&mut client, vec![abyssale_job(&["facebook-feed"])]).await;
    wait_for("the callback kept", Duration::from_secs(10), || {
        let n = gw.webhooks(ABYSSALE, "kept");
        async move { (n == 1).then_some(()) }
    })
    .await;
    let kept_at = Instant::now();
    let mut c = client.clone();
    assert_ne!(
        get_job(&mut c, &reply.job_ids[0]).await.state(),
        pb::JobState::Completed,
        "not applied before its job is known"
    );
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    assert_eq!(done[0].state(), pb::JobState::Completed, "{:?}", done[0]);
    assert_eq!(done[0].outputs.len(), 1);
    assert_eq!(
        aby.ledger().requests("GET /generation-request/:id"),
        0,
        "no poll finished it"
    );
    assert!(
        gw.engine
            .store()
            .kept_events(ABYSSALE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    println!(
        "abyssale kept callback (postgres={postgres}): applied {:?} after it was kept",
        kept_at.elapsed()
    );
    gw.stop().await;
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_before_its_job_is_known_is_kept_then_applied_sqlite() {
    kept_then_applied(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_before_its_job_is_known_is_kept_then_applied_postgres() {
    kept_then_applied(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_events_that_never_match_expire_and_are_counted() {
    let backend = Backend::new(false).await;
    let (http, addr) = http_listener().await;
    let aby = sim(ABYSSALE, addr, true, sim_cfg((1, 2))).await;
    let gw = gateway(&backend, true, "kept_event_ttl_secs = 1\n", http, &[&aby]).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = r#"{"generation_request_id":"8a7c3f4e-0000-4000-8000-0000000000aa","banners":[],"errors":[{"template_format_name":"facebook-feed","reason":"x"}]}"#;
    let sig = adgate_generator::signature::header_value(
        aby.secret.as_bytes(),
        "v1:webhook:",
        now,
        body.as_bytes(),
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/webhooks/abyssale", gw.http))
        .header("content-type", "application/json")
        .header("x-abyssale-signature", sig)
        .header("x-abyssale-delivery-id", "ab".repeat(32))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "kept durably, so a 2xx");
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["status"], "kept");
    assert_eq!(gw.webhooks(ABYSSALE, "kept"), 1);
    assert_eq!(
        gw.engine
            .store()
            .kept_events(ABYSSALE, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    wait_for("the kept event expired", Duration::from_secs(10), || {
        let n = gw.webhooks(ABYSSALE, "expired");
        async move { (n == 1).then_some(()) }
    })
    .await;
    assert!(
        gw.engine
            .store()
            .kept_events(ABYSSALE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let metrics = reqwest::get(format!("{}/metrics", gw.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"adgate_webhooks_total{provider="abyssale",outcome="expired"} 1"#),
        "{metrics}"
    );
    gw.stop().await;
    backend.finish().await;
}

/// A kept event can only be applied to a job that existed when it arrived: a stray Pictify
/// `render.completed` kept in the inbox must not complete a job submitted later with the same
/// template and variables (that job cannot have produced it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_event_never_completes_a_job_submitted_after_it() {
    let backend = Backend::new(false).await;
    let (http, addr) = http_listener().await;
    let pic = sim(PICTIFY, addr, true, sim_cfg((1, 2))).await;
    // The job's own render.completed is lost: only the stray kept event could complete it.
    pic.handle.update_faults(|f| f.suppress_webhooks = true);
    // Kept for 2 s: its expiry is the proof that the inbox looked at it with the job there.
    let toml = format!("kept_event_ttl_secs = 2\n{}", no_polls(PICTIFY));
    let gw = gateway(&backend, true, &toml, http, &[&pic]).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = r#"{"event":"render.completed","timestamp":"2026-01-29T10:30:00Z","data":{"type":"image","source":"api","imageId":"img_stray","url":"https://cdn.example/stray.png","templateId":"tmpl_stray","variables":{"name":"Ada"},"renderedAt":"2026-01-29T10:30:00Z"}}"#;
    let sig =
        adgate_generator::signature::header_value(pic.secret.as_bytes(), "", now, body.as_bytes());
    let resp = reqwest::Client::new()
        .post(format!("{}/webhooks/pictify", gw.http))
        .header("content-type", "application/json")
        .header("x-pictify-signature", sig)
        .header("x-pictify-event", "render.completed")
        .header("x-pictify-delivery-id", "del_stray")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(gw.webhooks(PICTIFY, "kept"), 1);
    let mut client = gw.client().await;
    let reply = submit(&mut client, vec![pictify_job("tmpl_stray", "Ada")]).await;
    let id = reply.job_ids[0].clone();
    wait_for("the job submitted", Duration::from_secs(10), || {
        let mut c = client.clone();
        let id = id.clone();
        async move {
            (get_job(&mut c, &id).await.state() == pb::JobState::Processing).then_some(())
        }
    })
    .await;
    // The inbox looks at the stray event with the job present on every pass; it expires
    // instead of being applied (applied, it would never expire).
    wait_for("the stray event expired", Duration::from_secs(10), || {
        let n = gw.webhooks(PICTIFY, "expired");
        async move { (n == 1).then_some(()) }
    })
    .await;
    let job = get_job(&mut client, &id).await;
    assert_eq!(job.state(), pb::JobState::Processing, "{job:?}");
    assert!(
        job.outputs.is_empty(),
        "completed by a stray event: {job:?}"
    );
    assert_eq!(gw.webhooks(PICTIFY, "applied_from_inbox"), 0);
    gw.stop().await;
    backend.finish().await;
}
