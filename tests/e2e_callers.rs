//! Issue 17, end to end through gRPC: a gateway many teams share. Named callers
//! (`name:token`), weighted fair share of a provider's request budget with priorities inside a
//! caller, queue positions and start estimates, cost and daily spend limits, validate_only.
//! On SQLite, and fair share also on two replicas sharing PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;
mod pgdb;

use std::time::{Duration, Instant};

use adgate::pb;
use common::*;
use pgdb::Backend;
use tonic::Request;
use tonic_types::StatusExt;

/// 5 requests per 20 s documented-scale window, at ×0.05: one request slot every 200 ms.
const TS: f64 = 0.05;
const SLOT: Duration = Duration::from_millis(200);
/// Time between a state change being committed and this test seeing it (its poll period,
/// one store commit, one HTTP round trip to the simulator).
const OBSERVE_SLACK: Duration = Duration::from_millis(300);

const TOKENS: &str = r#"auth_tokens = ["team-a:tok-a", "team-b:tok-b"]"#;
const SLOW_BUDGET: &str = "[providers.staticadslab]\nrequests = 5\nwindow_secs = 20\n";

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn ads(n: usize, brand: &str) -> Vec<pb::JobSpec> {
    (0..n)
        .map(|i| pb::JobSpec {
            client_ref: format!("{brand}-{i}"),
            ..sal_job(brand)
        })
        .collect()
}

async fn start_gateway(
    backend_url: String,
    toml: &str,
    sal: &Sim,
    http: tokio::net::TcpListener,
) -> Gateway {
    Gateway::start(
        GatewayOpts {
            time_scale: TS,
            webhooks: false,
            toml,
            database_url: backend_url,
        },
        http,
        &[sal],
    )
    .await
}

/// Waits until the job has left the queue (the provider accepted it); how long that took.
async fn time_to_start(
    client: &mut Client,
    job_id: &str,
    token: &str,
    within: Duration,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let job = client
            .get_job(authed(
                pb::GetJobRequest {
                    job_id: job_id.into(),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if !job.provider_job_id.is_empty() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "job {job_id} still queued after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Caller A queues 200 ads; alone, it gets the whole budget. Caller B then submits one ad:
/// it is sent within two budget slots, not after A's backlog (which would take 40 s here).
async fn second_caller_within_two_slots(postgres: bool) {
    let backend = Backend::new(postgres).await;
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(TS)).await;
    let toml = format!("{TOKENS}\n{SLOW_BUDGET}");
    let gw = start_gateway(backend.url(), &toml, &sal, http).await;
    // On PostgreSQL a second replica shares the store and the budget; B submits through it.
    let second = if postgres {
        let (http2, _) = http_listener().await;
        Some(start_gateway(backend.url(), &toml, &sal, http2).await)
    } else {
        None
    };
    let mut a = gw.client().await;
    let mut b = match &second {
        Some(g) => g.client().await,
        None => gw.client().await,
    };

    let reply_a = a
        .submit(authed(
            pb::SubmitRequest {
                jobs: ads(200, "brand_a"),
                ..Default::default()
            },
            "tok-a",
        ))
        .await
        .unwrap()
        .into_inner();
    // Alone, A's jobs use the whole budget (with the polls of its running jobs): the
    // provider sees 5 requests per window once the first 5 are through.
    wait_for_count(&sal, 5, Duration::from_secs(5)).await;
    let (t, before) = (Instant::now(), sal.ledger().total_requests());
    while sal.ledger().total_requests() < before + 10 {
        assert!(t.elapsed() < Duration::from_secs(5), "budget left idle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ten = t.elapsed();
    println!(
        "caller A alone: 10 requests in {ten:?} (budget: 10 per {:?})",
        SLOT * 10
    );
    assert!(
        ten <= SLOT * 10 + OBSERVE_SLACK * 2,
        "A alone must use the whole budget: 10 requests took {ten:?}"
    );

    let reply_b = b
        .submit(authed(
            pb::SubmitRequest {
                jobs: ads(1, "brand_b"),
                ..Default::default()
            },
            "tok-b",
        ))
        .await
        .unwrap()
        .into_inner();
    let waited = time_to_start(
        &mut b,
        &reply_b.job_ids[0],
        "tok-b",
        Duration::from_secs(10),
    )
    .await;
    let a_sent = sal.ledger().creations();
    println!("caller B's single job sent after {waited:?} (slot {SLOT:?}); A has {a_sent} sent");
    assert!(
        waited <= SLOT * 2 + OBSERVE_SLACK,
        "B's job must go within two budget slots, took {waited:?}"
    );

    // The callers' names are on their jobs (never the tokens).
    let job_b = b
        .get_job(authed(
            pb::GetJobRequest {
                job_id: reply_b.job_ids[0].clone(),
            },
            "tok-b",
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job_b.caller, "team-b");
    let status = a
        .batch_status(authed(
            pb::BatchStatusRequest {
                batch_id: reply_a.batch_id.clone(),
                ..Default::default()
            },
            "tok-a",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(status.jobs.iter().all(|j| j.caller == "team-a"));
    // A's queued jobs report positions behind what is sent, in order.
    let queued: Vec<&pb::Job> = status
        .jobs
        .iter()
        .filter(|j| j.state() == pb::JobState::Queued)
        .collect();
    assert!(queued.len() > 100, "most of A's backlog is still queued");
    let positions: Vec<i64> = queued.iter().map(|j| j.queue_position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions follow A's order"
    );
    assert!(queued.iter().all(|j| j.estimated_start_time.is_some()));
    assert!(status.estimated_completion_time.is_some());

    if let Some(g) = second {
        g.stop().await;
    }
    gw.stop().await;
    sal.handle.shutdown();
    backend.finish().await;
}

async fn wait_for_count(sal: &Sim, n: u64, within: Duration) {
    let t0 = Instant::now();
    while sal.ledger().creations() < n {
        assert!(
            t0.elapsed() < within,
            "{} of {n} ads created after {within:?}",
            sal.ledger().creations()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_caller_is_served_within_two_slots_sqlite() {
    second_caller_within_two_slots(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_caller_is_served_within_two_slots_on_two_postgres_replicas() {
    second_caller_within_two_slots(true).await;
}

/// Within one caller, an INTERACTIVE job goes before the caller's BULK backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interactive_goes_before_the_callers_bulk_jobs() {
    let backend = Backend::new(false).await;
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(TS)).await;
    let gw = start_gateway(backend.url(), SLOW_BUDGET, &sal, http).await;
    let mut c = gw.client().await;
    let bulk = c
        .submit(pb::SubmitRequest {
            jobs: ads(60, "brand_bulk"),
            priority: pb::Priority::Bulk.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // A WatchProgress snapshot tells each queued job its place and start estimate.
    let mut stream = c
        .watch_progress(pb::WatchProgressRequest {
            batch_id: bulk.batch_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut queued_positions = Vec::new();
    for _ in 0..60 {
        let msg = stream.message().await.unwrap().unwrap();
        assert!(msg.snapshot);
        if let Some(pb::watch_progress_response::Event::Job(j)) = msg.event
            && j.state() == pb::JobState::Queued
        {
            assert!(j.estimated_start_time.is_some(), "{j:?}");
            queued_positions.push(j.queue_position);
        }
    }
    drop(stream);
    assert!(queued_positions.len() > 40, "{queued_positions:?}");
    queued_positions.sort_unstable();
    queued_positions.dedup();
    assert!(
        queued_positions.len() > 40,
        "distinct places: {queued_positions:?}"
    );
    // Steady state: the budget is paced (the first half window goes at once).
    wait_for_count(&sal, 15, Duration::from_secs(10)).await;
    let urgent = c
        .submit(pb::SubmitRequest {
            jobs: ads(1, "brand_urgent"),
            priority: pb::Priority::Interactive.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let waited = time_to_start(&mut c, &urgent.job_ids[0], "", Duration::from_secs(10)).await;
    println!("interactive job sent after {waited:?}");
    assert!(waited <= SLOT * 2 + OBSERVE_SLACK, "took {waited:?}");
    let job = get_job(&mut c, &urgent.job_ids[0]).await;
    assert_eq!(job.priority(), pb::Priority::Interactive);
    assert_eq!(
        job.caller, "anonymous",
        "without auth every call is anonymous"
    );
    let still_queued = batch(&mut c, &bulk.batch_id)
        .await
        .iter()
        .filter(|j| j.state() == pb::JobState::Queued)
        .count();
    assert!(
        still_queued > 40,
        "the bulk backlog waits: {still_queued} queued"
    );
    gw.stop().await;
    sal.handle.shutdown();
    backend.finish().await;
}

/// 1,000 StaticAdsLab ads at the documented 100 requests / 60 s (×0.05): the start estimate
/// given by Submit for the last job is within ±15 % of when it really starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_estimate_of_1000_jobs_is_within_15_percent() {
    const ETA_TS: f64 = 0.05;
    let backend = Backend::new(false).await;
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(ETA_TS)).await;
    let gw = Gateway::start(
        GatewayOpts {
            time_scale: ETA_TS,
            webhooks: false,
            toml: "",
            database_url: backend.url(),
        },
        http,
        &[&sal],
    )
    .await;
    let mut c = gw.client().await;
    // The gateway learns the pace it really achieves (the budget less the polls of running
    // jobs and its own per-request store work, which matter at ×0.05 where a slot is 30 ms)
    // from a first backlog.
    let warm = c
        .submit(pb::SubmitRequest {
            jobs: ads(100, "brand_warm"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    wait_for_count(&sal, 95, Duration::from_secs(30)).await;
    let _ = warm;
    let t0 = Instant::now();
    let wall0 = std::time::SystemTime::now();
    let reply = c
        .submit(pb::SubmitRequest {
            jobs: ads(1000, "brand_eta"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let estimate = reply.estimated_start_time.expect("an estimate at submit");
    let estimated = Duration::from_millis(
        (estimate.seconds * 1000 + i64::from(estimate.nanos) / 1_000_000
            - wall0
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64)
            .max(0) as u64,
    );
    assert!(reply.estimated_completion_time.is_some());
    // When the last job really starts: the provider has all 1,000.
    let within = estimated * 3 + Duration::from_secs(10);
    while sal.ledger().creations() < 1100 {
        assert!(
            t0.elapsed() < within,
            "{} created",
            sal.ledger().creations()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let actual = t0.elapsed();
    let error = (estimated.as_secs_f64() - actual.as_secs_f64()) / actual.as_secs_f64();
    println!(
        "1,000 jobs: last start estimated {estimated:?}, real {actual:?} ({:+.1} %)",
        error * 100.0
    );
    assert!(
        error.abs() <= 0.15,
        "estimate off by {:.1} %",
        error * 100.0
    );
    gw.stop().await;
    sal.handle.shutdown();
    backend.finish().await;
}

/// Costs per unit, a daily spend limit that refuses a Submit storing nothing, and
/// validate_only that estimates without storing or sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spend_limit_refuses_and_validate_only_stores_nothing() {
    let backend = Backend::new(false).await;
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(0.02)).await;
    let toml = format!(
        "{TOKENS}\n[callers.team-a]\nweight = 2\ndaily_spend_limits = {{ staticadslab = 3.0 }}\n"
    );
    let gw = Gateway::start(
        GatewayOpts {
            time_scale: 0.02,
            webhooks: false,
            toml: &toml,
            database_url: backend.url(),
        },
        http,
        &[&sal],
    )
    .await;
    let mut c = gw.client().await;
    let usd = |micros: i64| pb::Cost {
        currency_code: "USD".into(),
        micros,
        unit: "USD".into(),
    };

    // validate_only: the estimate and the start time, nothing stored, nothing sent.
    let check = c
        .submit(authed(
            pb::SubmitRequest {
                jobs: ads(2, "brand_check"),
                validate_only: true,
                ..Default::default()
            },
            "tok-a",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(check.batch_id.is_empty() && check.job_ids.is_empty());
    assert_eq!(check.estimated_cost, vec![usd(2_000_000)]);
    assert!(check.estimated_start_time.is_some());
    assert!(
        gw.stored_jobs().await.is_empty(),
        "validate_only stored jobs"
    );
    assert_eq!(
        sal.ledger().total_requests(),
        0,
        "validate_only called the provider"
    );

    let first = c
        .submit(authed(
            pb::SubmitRequest {
                jobs: ads(2, "brand_spend"),
                ..Default::default()
            },
            "tok-a",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.estimated_cost, vec![usd(2_000_000)]);

    // $2 reserved of $3: two more ($2) would pass the limit — refused, nothing stored.
    // Totals, not counts by state: the first Submit's jobs move on (QUEUED → PROCESSING)
    // meanwhile, which is not storing anything.
    let before: i64 = gw.stored_jobs().await.values().sum();
    let err = c
        .submit(authed(
            pb::SubmitRequest {
                jobs: ads(2, "brand_spend"),
                ..Default::default()
            },
            "tok-a",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let quota = err.get_details_quota_failure().expect("a QuotaFailure");
    assert!(
        quota.violations[0].subject.contains("team-a")
            && quota.violations[0].subject.contains("staticadslab"),
        "{:?}",
        quota.violations
    );
    assert_eq!(
        err.get_details_error_info().unwrap().reason,
        "SPEND_LIMIT_EXCEEDED"
    );
    assert!(!err.message().contains("tok-a"));
    assert_eq!(
        gw.stored_jobs().await.values().sum::<i64>(),
        before,
        "a refused Submit stored jobs"
    );
    // validate_only is refused the same way.
    let err = c
        .submit(authed(
            pb::SubmitRequest {
                jobs: ads(2, "brand_spend"),
                validate_only: true,
                ..Default::default()
            },
            "tok-a",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    // Another caller has no limit.
    c.submit(authed(
        pb::SubmitRequest {
            jobs: ads(2, "brand_other"),
            ..Default::default()
        },
        "tok-b",
    ))
    .await
    .unwrap();
    // One more ($1) still fits team-a's limit exactly.
    c.submit(authed(
        pb::SubmitRequest {
            jobs: ads(1, "brand_spend"),
            ..Default::default()
        },
        "tok-a",
    ))
    .await
    .unwrap();

    // Completed: the batch's cost is the sum of what its jobs were billed.
    let t0 = Instant::now();
    let status = loop {
        let s = c
            .batch_status(authed(
                pb::BatchStatusRequest {
                    batch_id: first.batch_id.clone(),
                    ..Default::default()
                },
                "tok-a",
            ))
            .await
            .unwrap()
            .into_inner();
        if s.jobs.iter().all(is_terminal) {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status
            .jobs
            .iter()
            .all(|j| j.state() == pb::JobState::Completed)
    );
    assert_eq!(status.cost, vec![usd(2_000_000)]);
    assert!(status.estimated_completion_time.is_none());
    let metrics = reqwest::get(format!("{}/metrics", gw.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("adgate_spend_micros_total{")
                && l.contains("caller=\"team-a\"")
                && l.contains("unit=\"USD\"")
        })
        .unwrap_or_else(|| panic!("no spend metric for team-a:\n{metrics}"));
    assert!(line.contains("provider=\"staticadslab\""), "{line}");
    assert!(!metrics.contains("tok-a"));
    gw.stop().await;
    sal.handle.shutdown();
    backend.finish().await;
}
