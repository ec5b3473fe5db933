//! Issues 5–7, end to end through gRPC: the gateway drives each provider's simulator at its
//! documented limits (everything time-scaled uniformly) and the simulators' ledgers prove what
//! reached the provider — 429s, requests per job, batch calls, charges, webhook deliveries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adgate::pb;
use adgate_sim::{Faults, SimConfig};
use common::*;

async fn start_gw(
    time_scale: f64,
    webhooks: bool,
    http: tokio::net::TcpListener,
    sims: &[&Sim],
    dir: &tempfile::TempDir,
) -> Gateway {
    start_gw_with(time_scale, webhooks, "", http, sims, dir).await
}

async fn start_gw_with(
    time_scale: f64,
    webhooks: bool,
    toml: &str,
    http: tokio::net::TcpListener,
    sims: &[&Sim],
    dir: &tempfile::TempDir,
) -> Gateway {
    Gateway::start(
        GatewayOpts {
            time_scale,
            webhooks,
            toml,
            database_url: db_url(dir),
        },
        http,
        sims,
    )
    .await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn post_webhook(gw: &Gateway, provider: &str, headers: &[(&str, String)], body: &str) -> u16 {
    let mut req = reqwest::Client::new()
        .post(format!("{}/webhooks/{provider}", gw.http))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

// =============================================================================================
// Issue 5: StaticAdsLab

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staticadslab_200_ads_complete_without_429_at_most_1_2_requests_per_ad() {
    // 0.02: the documented 100 requests / 60 s becomes 100 / 1.2 s; ads take 0.6–1.2 s.
    const TS: f64 = 0.02;
    const ADS: usize = 200;
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(TS)).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, false, http, &[&sal], &dir).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let started = tokio::time::Instant::now();
    let reply = submit(
        &mut c,
        (0..ADS).map(|i| sal_job(&format!("brand_{i}"))).collect(),
    )
    .await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(25)).await;
    let elapsed = started.elapsed();
    let by_state = counts(&jobs);
    assert_eq!(
        by_state.get(&pb::JobState::Completed),
        Some(&ADS),
        "{by_state:?}"
    );
    let urls: HashSet<&str> = jobs.iter().map(|j| j.outputs[0].url.as_str()).collect();
    assert_eq!(urls.len(), ADS, "one distinct output per ad");

    let ledger = sal.ledger();
    let total = ledger.total_requests();
    let per_ad = total as f64 / ADS as f64;
    println!(
        "staticadslab: {ADS} ads in {elapsed:.2?} (time_scale {TS}): {total} provider requests \
         = {per_ad:.3} per ad, 429s = {}, by endpoint {:?}, max in one window {}",
        ledger.count_429(),
        ledger.requests_by_endpoint(),
        ledger.max_requests_in_window(Duration::from_secs(60).mul_f64(TS)),
    );
    assert_eq!(ledger.count_429(), 0, "the gateway provoked 429s");
    assert!(
        per_ad <= 1.2,
        "{per_ad:.3} provider requests per ad (> 1.2)"
    );
    assert_eq!(ledger.requests("POST /v1/image-ads"), ADS as u64);
    assert!(ledger.charges_by_job().values().all(|&n| n == 1));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staticadslab_watcher_gets_sse_progress_and_an_sse_drop_falls_back_to_polling() {
    // Ads take 3 s here, so progress events have time to arrive.
    const TS: f64 = 0.05;
    let (http, addr) = http_listener().await;
    let sal = sim(
        STATICADSLAB,
        addr,
        false,
        SimConfig {
            time_scale: TS,
            job_duration: (Duration::from_secs(60), Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, false, http, &[&sal], &dir).await;
    let mut client = gw.client().await;

    let reply = submit(&mut client, vec![sal_job("brand_sse")]).await;
    // Three more watchers of the same ad: still one stream at the provider.
    let others: Vec<_> = (0..3)
        .map(|_| {
            let mut c = client.clone();
            let ids = reply.job_ids.clone();
            tokio::spawn(async move { watch_all(&mut c, ids, Duration::from_secs(15)).await })
        })
        .collect();
    let (seen, end) = watch_all(&mut client, reply.job_ids.clone(), Duration::from_secs(15)).await;
    end.unwrap();
    for o in others {
        let (s, e) = o.await.unwrap();
        e.unwrap();
        assert_eq!(s.last().unwrap().state(), pb::JobState::Completed);
    }
    let sse = sal.ledger().requests("SSE /v1/image-ads/:id");
    let progress: Vec<f64> = seen
        .iter()
        .filter(|j| j.state() == pb::JobState::Processing)
        .filter_map(|j| j.progress.as_ref().map(|p| p.percentage))
        .filter(|p| *p > 0.0 && *p < 100.0)
        .collect();
    println!(
        "staticadslab SSE: {sse} stream(s), progress seen {progress:?}, endpoints {:?}",
        sal.ledger().requests_by_endpoint()
    );
    assert_eq!(
        sse, 1,
        "a watched ad is followed over one SSE stream, however many watch"
    );
    assert!(
        !progress.is_empty(),
        "intermediate progress reaches WatchProgress: {seen:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {progress:?}"
    );
    assert_eq!(seen.last().unwrap().state(), pb::JobState::Completed);

    // Every stream now drops after its first event: the ad must still complete (polling).
    sal.handle.update_faults(|f| f.sse_drop_after = Some(1));
    let dropped_before = sal.ledger().count_dropped();
    let polls_before = sal.ledger().requests("GET /v1/image-ads");
    let reply = submit(&mut client, vec![sal_job("brand_drop")]).await;
    let (seen, end) = watch_all(&mut client, reply.job_ids.clone(), Duration::from_secs(20)).await;
    end.unwrap();
    let last = seen.last().unwrap();
    assert_eq!(last.state(), pb::JobState::Completed, "{last:?}");
    assert_eq!(last.outputs.len(), 1);
    assert!(
        sal.ledger().count_dropped() > dropped_before,
        "the SSE stream was dropped"
    );
    let polls = sal.ledger().requests("GET /v1/image-ads") - polls_before;
    println!(
        "staticadslab SSE drop: {} drops, {polls} batch polls after, endpoints {:?}",
        sal.ledger().count_dropped() - dropped_before,
        sal.ledger().requests_by_endpoint()
    );
    assert_eq!(sal.ledger().count_429(), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staticadslab_402_after_50_charges_fails_the_rest_cleanly_without_a_retry_storm() {
    const TS: f64 = 0.02;
    const ADS: usize = 80;
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(TS)).await;
    sal.handle.set_faults(Faults {
        insufficient_after_charges: Some(50),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, false, http, &[&sal], &dir).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let reply = submit(
        &mut c,
        (0..ADS).map(|i| sal_job(&format!("brand_{i}"))).collect(),
    )
    .await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(25)).await;
    let posts = sal.ledger().requests("POST /v1/image-ads");
    let by_state = counts(&jobs);
    println!(
        "staticadslab 402 after 50: {by_state:?}, {posts} POSTs, endpoints {:?}",
        sal.ledger().requests_by_endpoint()
    );
    assert_eq!(
        by_state.get(&pb::JobState::Completed),
        Some(&50),
        "{by_state:?}"
    );
    assert_eq!(
        by_state.get(&pb::JobState::Failed),
        Some(&(ADS - 50)),
        "{by_state:?}"
    );
    for j in jobs.iter().filter(|j| j.state() == pb::JobState::Failed) {
        let e = j.error.as_ref().expect("a failed job says why");
        assert_eq!(e.code, "INSUFFICIENT_BALANCE", "{j:?}");
        assert!(!e.message.is_empty());
    }
    // 50 accepted, then at most a handful of concurrent submits see the 402.
    assert!(posts <= 50 + 8, "{posts} POSTs: retry storm after 402");
    assert_eq!(sal.ledger().creations(), 50);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staticadslab_kill_9_while_submitting_charges_no_ad_twice() {
    // The real binary against a simulator owned by this test (it outlives the crash).
    const TS: f64 = 0.05;
    const ADS: usize = 60;
    let (_, unused) = http_listener().await;
    let sal = sim(
        STATICADSLAB,
        unused,
        false,
        SimConfig {
            time_scale: TS,
            job_duration: (Duration::from_secs(20), Duration::from_secs(30)),
            ..Default::default()
        },
    )
    .await;
    // Slow responses keep POSTs in flight when the process dies.
    sal.handle.set_faults(Faults {
        latency: Duration::from_millis(40),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("ADGATE_DATABASE_URL", db_url(&dir)),
        (
            "ADGATE_CONFIG",
            config_file(&dir, &format!("time_scale = {TS}\n")),
        ),
        ("ADGATE_STATICADSLAB_API_KEY", sal.key.clone()),
        ("ADGATE_STATICADSLAB_BASE_URL", sal.handle.base_url.clone()),
    ];
    let proc = Proc::spawn(&["serve"], &env);
    let mut client = connect(&proc.grpc).await;
    let reply = submit(
        &mut client,
        (0..ADS).map(|i| sal_job(&format!("brand_{i}"))).collect(),
    )
    .await;
    wait_for("some ads created", Duration::from_secs(10), || {
        let n = sal.ledger().creations();
        async move { (n >= 10).then_some(()) }
    })
    .await;
    proc.kill9();
    let at_crash = sal.ledger().creations();
    let posts_at_crash = sal.ledger().requests("POST /v1/image-ads");
    assert!(
        (at_crash as usize) < ADS,
        "the crash must come mid-submission ({at_crash} created)"
    );

    let proc = Proc::spawn(&["serve"], &env);
    let client = connect(&proc.grpc).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(25)).await;
    let l = sal.ledger();
    println!(
        "staticadslab kill -9: {at_crash} created / {posts_at_crash} POSTs at the crash; after restart \
         {} created, {} replays, {} POSTs, charges {}",
        l.creations(),
        l.replays(),
        l.requests("POST /v1/image-ads"),
        l.total_charges()
    );
    let completed = jobs
        .iter()
        .filter(|j| j.state() == pb::JobState::Completed)
        .count();
    assert_eq!(completed, ADS, "{:?}", counts(&jobs));
    assert_eq!(l.creations() as usize, completed, "one creation per ad");
    assert!(l.charges_by_job().values().all(|&n| n == 1));
    assert!(l.charges_by_key().values().all(|&n| n == 1));
    assert_eq!(l.total_charges() as usize, ADS);
    let refs: HashSet<&str> = jobs.iter().map(|j| j.provider_job_id.as_str()).collect();
    assert_eq!(refs.len(), ADS, "every job tracks its own ad");
}

// =============================================================================================
// Issue 6: Pictify

/// The Pro plan: 100 items per batch (the Free default takes 10) [PX-LIVE:api-reference/batch];
/// the tests below count batches of up to 100.
const PICTIFY_PRO: &str = "[providers.pictify]\nplan = \"pro\"";

fn pictify_sim_config(ts: f64) -> SimConfig {
    // Items render in 20–40 ms at 0.02.
    SimConfig {
        time_scale: ts,
        job_duration: (Duration::from_secs(1), Duration::from_secs(2)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictify_250_items_take_3_batch_calls_and_each_gets_its_own_url() {
    const TS: f64 = 0.02;
    let (http, addr) = http_listener().await;
    let pic = sim(PICTIFY, addr, true, pictify_sim_config(TS)).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw_with(TS, true, PICTIFY_PRO, http, &[&pic], &dir).await;
    let client = gw.client().await;
    let mut c = client.clone();
    // 240 distinct variable sets and 10 identical ones.
    let jobs: Vec<pb::JobSpec> = (0..250)
        .map(|i| {
            if i % 25 == 7 {
                pictify_job("tmpl_card", "same")
            } else {
                pictify_job("tmpl_card", &format!("name-{i}"))
            }
        })
        .collect();
    let reply = submit(&mut c, jobs).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(25)).await;
    let renders = pic.ledger().requests(adgate_sim::pictify::EP_BATCH_RENDER);
    println!(
        "pictify: 250 items → {renders} batch-render calls; endpoints {:?}; {} webhooks",
        pic.ledger().requests_by_endpoint(),
        pic.ledger().webhooks().len()
    );
    assert_eq!(
        counts(&jobs).get(&pb::JobState::Completed),
        Some(&250),
        "{:?}",
        counts(&jobs)
    );
    assert_eq!(renders, 3);
    let urls: HashSet<&str> = jobs
        .iter()
        .map(|j| {
            assert_eq!(j.outputs.len(), 1, "{j:?}");
            j.outputs[0].url.as_str()
        })
        .collect();
    assert_eq!(
        urls.len(),
        250,
        "every item, duplicates included, has its own URL"
    );
    let dup_urls: HashSet<&str> = reply
        .job_ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 25 == 7)
        .map(|(_, id)| {
            jobs.iter().find(|j| &j.id == id).unwrap().outputs[0]
                .url
                .as_str()
        })
        .collect();
    assert_eq!(dup_urls.len(), 10);
    // Each URL is a real PNG at the simulator.
    let png = reqwest::get(jobs[0].outputs[0].url.as_str()).await.unwrap();
    assert_eq!(png.status(), 200);
    assert_eq!(&png.bytes().await.unwrap()[..4], b"\x89PNG");
    assert_eq!(pic.ledger().count_429(), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictify_duplicate_reordered_and_forged_webhooks_change_nothing_twice() {
    const TS: f64 = 0.02;
    const ITEMS: usize = 12;
    let (http, addr) = http_listener().await;
    let pic = sim(
        PICTIFY,
        addr,
        true,
        SimConfig {
            // Items take 0.4 s: the forged events below arrive while they are still running.
            job_duration: (Duration::from_secs(20), Duration::from_secs(20)),
            ..pictify_sim_config(TS)
        },
    )
    .await;
    pic.handle.set_faults(Faults {
        webhook_duplicate: true,
        webhook_reorder: true,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw_with(TS, true, PICTIFY_PRO, http, &[&pic], &dir).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let reply = submit(
        &mut c,
        (0..ITEMS)
            .map(|i| pictify_job("tmpl_wh", &format!("n{}", i % 6)))
            .collect(),
    )
    .await;

    // Forged: a render.completed for item 0's variables, with a bad signature, then with the
    // right secret but a stale timestamp.
    let body = serde_json::json!({
        "event": "render.completed",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"type": "image", "source": "api", "imageId": "img_forged",
                 "url": "https://evil.example/x.png", "templateId": "tmpl_wh",
                 "variables": {"name": "n0"}, "width": 1, "height": 1,
                 "renderedAt": "2026-01-01T00:00:00Z"}
    })
    .to_string();
    let now = unix_now();
    let bad = format!("t={now},v1={}", "00".repeat(32));
    let stale = adgate_generator::signature::header_value(
        pic.secret.as_bytes(),
        "",
        now - 1000,
        body.as_bytes(),
    );
    let before = batch(&mut c, &reply.batch_id).await;
    for sig in [bad, stale, String::new()] {
        let mut headers = vec![("X-Pictify-Delivery-Id", format!("del_forged_{}", sig.len()))];
        if !sig.is_empty() {
            headers.push(("X-Pictify-Signature", sig));
        }
        assert_eq!(post_webhook(&gw, PICTIFY, &headers, &body).await, 401);
    }
    let after = batch(&mut c, &reply.batch_id).await;
    for (a, b) in before.iter().zip(&after) {
        assert!(
            b.revision == a.revision || b.outputs.iter().all(|o| !o.url.contains("evil")),
            "{b:?}"
        );
    }

    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    // Every delivery (12 render.completed + 1 batch.completed) arrives twice; wait for all.
    let expected = 2 * (ITEMS + 1);
    wait_for(
        "every webhook delivered twice",
        Duration::from_secs(10),
        || {
            let n = pic.ledger().webhooks().len();
            async move { (n >= expected).then_some(()) }
        },
    )
    .await;
    let again = batch(&mut c, &reply.batch_id).await;
    let hooks = pic.ledger().webhooks();
    println!(
        "pictify webhooks: {} deliveries, statuses {:?}",
        hooks.len(),
        hooks.iter().map(|w| w.status).collect::<Vec<_>>()
    );
    assert!(hooks.iter().all(|w| w.status == Some(200)), "{hooks:?}");
    assert_eq!(gw.webhooks(PICTIFY, "refused"), 3);
    assert_eq!(gw.webhooks(PICTIFY, "applied"), (ITEMS + 1) as u64);
    assert_eq!(gw.webhooks(PICTIFY, "duplicate"), (ITEMS + 1) as u64);
    let urls: HashSet<&str> = jobs.iter().map(|j| j.outputs[0].url.as_str()).collect();
    assert_eq!(urls.len(), ITEMS);
    for (j, k) in jobs.iter().zip(&again) {
        assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
        assert_eq!(j.outputs.len(), 1, "{j:?}");
        assert!(!j.outputs[0].url.contains("evil"), "{j:?}");
        assert_eq!(
            j.revision, k.revision,
            "a duplicate delivery changed {}",
            j.id
        );
        assert_eq!(j.outputs, k.outputs);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictify_partial_batch_fails_items_with_the_provider_code() {
    const TS: f64 = 0.02;
    const ITEMS: usize = 30;
    let (http, addr) = http_listener().await;
    let pic = sim(
        PICTIFY,
        addr,
        true,
        SimConfig {
            failure_ratio: 0.3,
            ..pictify_sim_config(TS)
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, true, http, &[&pic], &dir).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let reply = submit(
        &mut c,
        (0..ITEMS)
            .map(|i| pictify_job("tmpl_p", &format!("v{i}")))
            .collect(),
    )
    .await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    let known: HashSet<&str> = adgate_sim::pictify::FAILURE_CODES
        .iter()
        .map(|(c, _)| *c)
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for j in &jobs {
        match j.state() {
            pb::JobState::Completed => {
                ok += 1;
                assert_eq!(j.outputs.len(), 1, "{j:?}");
                assert!(j.outputs[0].url.starts_with(&pic.handle.base_url), "{j:?}");
            }
            pb::JobState::Failed => {
                failed += 1;
                let e = j.error.as_ref().unwrap();
                assert!(
                    known.contains(e.provider_code.as_str()),
                    "Pictify's code in provider_code: {e:?}"
                );
                assert!(!e.code.is_empty() && !e.message.is_empty(), "{e:?}");
                assert!(j.outputs.is_empty());
            }
            s => panic!("{s:?}"),
        }
    }
    println!("pictify partial: {ok} completed, {failed} failed");
    assert!(ok > 0 && failed > 0, "{ok} ok / {failed} failed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictify_without_public_url_is_degraded_and_fails_with_output_url_unavailable() {
    const TS: f64 = 0.02;
    let (http, addr) = http_listener().await;
    let pic = sim(PICTIFY, addr, false, pictify_sim_config(TS)).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, false, http, &[&pic], &dir).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let providers = c
        .list_providers(pb::ListProvidersRequest {})
        .await
        .unwrap()
        .into_inner()
        .providers;
    let p = providers.iter().find(|p| p.name == PICTIFY).unwrap();
    assert_eq!(p.health(), pb::ProviderHealth::Degraded, "{p:?}");
    assert!(
        p.reason.contains("OUTPUT_URL_UNAVAILABLE") || !p.reason.is_empty(),
        "{p:?}"
    );
    assert!(!p.limits.as_ref().unwrap().webhooks);

    let reply = submit(
        &mut c,
        (0..3)
            .map(|i| pictify_job("tmpl_x", &format!("v{i}")))
            .collect(),
    )
    .await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    for j in &jobs {
        assert_eq!(
            j.state(),
            pb::JobState::Failed,
            "never a silent success: {j:?}"
        );
        assert_eq!(
            j.error.as_ref().unwrap().code,
            "OUTPUT_URL_UNAVAILABLE",
            "{j:?}"
        );
        assert!(j.outputs.is_empty());
    }
    gw.stop().await;
}

// =============================================================================================
// Issue 7: Abyssale

const THREE: [&str; 3] = ["facebook-feed", "instagram-post", "iab-medium"];

fn abyssale_sim_config(ts: f64) -> SimConfig {
    SimConfig {
        time_scale: ts,
        job_duration: (Duration::from_secs(10), Duration::from_secs(20)),
        ..Default::default()
    }
}

fn formats(j: &pb::Job) -> HashSet<&str> {
    j.outputs.iter().map(|o| o.format.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_three_formats_complete_by_callback_and_by_polling() {
    const TS: f64 = 0.02;
    for webhooks in [true, false] {
        let (http, addr) = http_listener().await;
        let aby = sim(ABYSSALE, addr, webhooks, abyssale_sim_config(TS)).await;
        let dir = tempfile::tempdir().unwrap();
        // With callbacks on, push the first poll out of reach (50 min × 0.02 = 60 s), so
        // only the callback can complete the job in time.
        let toml = if webhooks {
            "[providers.abyssale]\nfirst_poll_after_ms = 3000000\npoll_interval_ms = 3000000\n"
        } else {
            ""
        };
        let gw = start_gw_with(TS, webhooks, toml, http, &[&aby], &dir).await;
        let mut client = gw.client().await;
        let reply = submit(&mut client, vec![abyssale_job(&THREE)]).await;
        let (seen, end) =
            watch_all(&mut client, reply.job_ids.clone(), Duration::from_secs(15)).await;
        end.unwrap();
        let job = seen.last().unwrap();
        assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
        assert_eq!(job.outputs.len(), 3, "{job:?}");
        assert_eq!(formats(job), THREE.into_iter().collect());
        for o in &job.outputs {
            assert!(o.width > 0 && o.height > 0 && !o.url.is_empty(), "{o:?}");
        }
        if webhooks {
            // The watcher sees the completion as soon as it is committed; the gateway counts
            // the delivery and answers it, and the simulator records that answer, just after.
            wait_for(
                "the callback's 200 on record",
                Duration::from_secs(10),
                || {
                    let answered = aby
                        .ledger()
                        .webhooks()
                        .iter()
                        .any(|w| w.status == Some(200))
                        && gw.webhooks(ABYSSALE, "applied") == 1;
                    async move { answered.then_some(()) }
                },
            )
            .await;
        }
        let hooks = aby.ledger().webhooks();
        let polls = aby.ledger().requests("GET /generation-request/:id");
        println!(
            "abyssale webhooks={webhooks}: {} callback deliveries, {polls} polls",
            hooks.len()
        );
        if webhooks {
            assert_eq!(polls, 0, "completed by the callback, not by polling");
            assert_eq!(gw.webhooks(ABYSSALE, "applied"), 1);
        } else {
            assert!(hooks.is_empty(), "no callback without a public URL");
            assert!(polls >= 1, "completed by polling");
        }
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_partial_job_completes_and_names_the_failed_format() {
    const TS: f64 = 0.02;
    let (http, addr) = http_listener().await;
    // Error diffusion: exactly one format in three fails.
    let aby = sim(
        ABYSSALE,
        addr,
        true,
        SimConfig {
            failure_ratio: 1.0 / 3.0,
            ..abyssale_sim_config(TS)
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, true, http, &[&aby], &dir).await;
    let mut client = gw.client().await;
    let reply = submit(&mut client, vec![abyssale_job(&THREE)]).await;
    let (seen, end) = watch_all(&mut client, reply.job_ids.clone(), Duration::from_secs(15)).await;
    end.unwrap();
    let job = seen.last().unwrap();
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    assert_eq!(job.outputs.len(), 2, "{job:?}");
    let missing: Vec<&str> = THREE
        .into_iter()
        .filter(|f| !formats(job).contains(f))
        .collect();
    assert_eq!(missing.len(), 1);
    let e = job.error.as_ref().expect("the failed format is reported");
    assert!(
        e.message.contains(missing[0]),
        "{e:?} should name {}",
        missing[0]
    );
    println!("abyssale partial: error {e:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_410_after_retention_fails_with_result_expired() {
    // The simulator's 7-day retention at 1e-6 is 0.6 s, while the generation itself takes
    // 30 (scaled) days: by the first useful poll the request is gone (410). The gateway runs
    // at 0.02 so its polls come every few tens of milliseconds (not a busy loop).
    let (http, addr) = http_listener().await;
    let aby = sim(
        ABYSSALE,
        addr,
        false,
        SimConfig {
            time_scale: 1e-6,
            job_duration: (
                Duration::from_secs(30 * 86_400),
                Duration::from_secs(30 * 86_400),
            ),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(0.02, false, http, &[&aby], &dir).await;
    let mut client = gw.client().await;
    let reply = submit(&mut client, vec![abyssale_job(&THREE)]).await;
    let (seen, end) = watch_all(&mut client, reply.job_ids.clone(), Duration::from_secs(15)).await;
    end.unwrap();
    let job = seen.last().unwrap();
    assert_eq!(job.state(), pb::JobState::Failed, "{job:?}");
    let e = job.error.as_ref().unwrap();
    assert_eq!(e.code, "RESULT_EXPIRED", "{e:?}");
    assert!(job.outputs.is_empty());
    gw.stop().await;
}

fn abyssale_signature(secret: &str, t: u64, body: &str) -> String {
    format!(
        "t={t},v1={}",
        adgate_generator::signature::sign(secret.as_bytes(), "v1:webhook:", t, body.as_bytes())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_forged_stale_and_duplicate_callbacks_change_nothing() {
    const TS: f64 = 0.02;
    let (http, addr) = http_listener().await;
    let aby = sim(
        ABYSSALE,
        addr,
        true,
        SimConfig {
            // Formats take 1.2 s, so forged callbacks arrive while the job runs.
            job_duration: (Duration::from_secs(60), Duration::from_secs(60)),
            ..abyssale_sim_config(TS)
        },
    )
    .await;
    aby.handle.set_faults(Faults {
        webhook_duplicate: true,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, true, http, &[&aby], &dir).await;
    let mut client = gw.client().await;
    let reply = submit(
        &mut client,
        vec![abyssale_job(&THREE), abyssale_job(&THREE)],
    )
    .await;
    let (a, b) = (reply.job_ids[0].clone(), reply.job_ids[1].clone());
    let running = wait_for("both jobs at the provider", Duration::from_secs(5), || {
        let mut c = client.clone();
        let id = reply.batch_id.clone();
        async move {
            let jobs = batch(&mut c, &id).await;
            jobs.iter()
                .all(|j| !j.provider_job_id.is_empty())
                .then_some(jobs)
        }
    })
    .await;
    let forged_for = |pid: &str| {
        serde_json::json!({
            "generation_request_id": pid,
            "banners": [],
            "errors": THREE.iter().map(|f| serde_json::json!({"template_format_name": f, "reason": "forged"})).collect::<Vec<_>>(),
        })
        .to_string()
    };
    let job_a = &running[0];
    assert_eq!(job_a.id, a);
    let body = forged_for(&job_a.provider_job_id);
    let now = unix_now();
    for sig in [
        abyssale_signature("whsec_wrong", now, &body),
        abyssale_signature(&aby.secret, now - 1000, &body),
        format!("t={now},v1=zz"),
    ] {
        let headers = vec![
            ("X-Abyssale-Signature", sig),
            (
                "X-Abyssale-Delivery-Id",
                format!("forged{}", fastrand_suffix()),
            ),
        ];
        assert_eq!(post_webhook(&gw, ABYSSALE, &headers, &body).await, 401);
    }
    let after = get_job(&mut client, &a).await;
    assert_eq!(
        after.revision, job_a.revision,
        "a refused callback changed the job"
    );
    assert!(!is_terminal(&after));

    // Control: the same body, correctly signed, does change job B — so the refusals above
    // were the signature check, not a harmless body.
    let body_b = forged_for(&running[1].provider_job_id);
    let headers = vec![
        (
            "X-Abyssale-Signature",
            abyssale_signature(&aby.secret, unix_now(), &body_b),
        ),
        ("X-Abyssale-Delivery-Id", "control-delivery".to_owned()),
    ];
    assert_eq!(post_webhook(&gw, ABYSSALE, &headers, &body_b).await, 200);
    let job_b = get_job(&mut client, &b).await;
    assert_eq!(job_b.state(), pb::JobState::Failed, "{job_b:?}");

    // Job A completes from the genuine callback; its duplicate delivery changes nothing.
    let (seen, end) = watch_all(&mut client, vec![a.clone()], Duration::from_secs(15)).await;
    end.unwrap();
    let done = seen.last().unwrap().clone();
    assert_eq!(done.state(), pb::JobState::Completed, "{done:?}");
    assert_eq!(done.outputs.len(), 3);
    wait_for(
        "the genuine callback delivered twice",
        Duration::from_secs(10),
        || {
            let n = aby
                .ledger()
                .webhooks()
                .iter()
                .filter(|w| w.status == Some(200))
                .count();
            // Job B's genuine callback also arrives (twice) at the end.
            async move { (n >= 4).then_some(()) }
        },
    )
    .await;
    let again = get_job(&mut client, &a).await;
    assert_eq!(
        again.revision, done.revision,
        "a duplicate delivery changed the job"
    );
    assert_eq!(again.outputs, done.outputs);
    assert_eq!(gw.webhooks(ABYSSALE, "refused"), 3);
    assert_eq!(gw.webhooks(ABYSSALE, "duplicate"), 2);
    let b_again = get_job(&mut client, &b).await;
    assert_eq!(
        b_again.state(),
        pb::JobState::Failed,
        "terminal stays terminal"
    );
    assert_eq!(b_again.revision, job_b.revision);
    println!(
        "abyssale callbacks: {:?}",
        aby.ledger()
            .webhooks()
            .iter()
            .map(|w| (
                w.delivery_id.get(..8).unwrap_or_default().to_owned(),
                w.status
            ))
            .collect::<Vec<_>>()
    );
    gw.stop().await;
}

fn fastrand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u8(0);
    format!("{:016x}", h.finish())
}
