//! Pictify events the documents describe thinly: `render.failed` carries no variables
//! ([PX-LIVE:concepts/webhooks]), so it cannot name its job; the gateway polls the template's
//! batches at once and reads the failure (with its code) there instead of at the next backstop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::time::Duration;

use adgate::pb;
use adgate_sim::SimConfig;
use common::*;
use tokio::time::Instant;

const TS: f64 = 0.02;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_failed_without_variables_is_read_at_once_by_polling_its_batch() {
    let (http, addr) = http_listener().await;
    let pic = sim(
        PICTIFY,
        addr,
        true,
        SimConfig {
            time_scale: TS,
            job_duration: (Duration::from_secs(1), Duration::from_secs(2)),
            failure_ratio: 1.0,
            ..SimConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Backstop polls out of reach (the first after 30,000 s × 0.02 = 10 min): only the
    // render.failed webhook can make the gateway look now.
    let toml = "[providers.pictify]\nfirst_poll_after_ms = 30000000\npoll_interval_ms = 30000000\n\
                typical_job_secs = 30000\n";
    let gw = Gateway::start(
        GatewayOpts {
            time_scale: TS,
            webhooks: true,
            toml,
            database_url: db_url(&dir),
        },
        http,
        &[&pic],
    )
    .await;
    let mut client = gw.client().await;
    let started = Instant::now();
    let reply = submit(
        &mut client,
        vec![
            pictify_job("tmpl_fail", "Ada"),
            pictify_job("tmpl_fail", "Grace"),
        ],
    )
    .await;
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(10)).await;
    let took = started.elapsed();
    for j in &done {
        assert_eq!(j.state(), pb::JobState::Failed, "{j:?}");
        let e = j.error.as_ref().unwrap();
        assert_eq!(e.code, "PROVIDER_JOB_FAILED", "{e:?}");
        assert!(
            !e.provider_code.is_empty(),
            "the provider's code travels: {e:?}"
        );
    }
    let failed_events = pic
        .ledger()
        .webhooks()
        .iter()
        .filter(|w| w.event == "render.failed")
        .count();
    let polls = pic.ledger().requests("GET /templates/batch/:id/results");
    println!(
        "render.failed ×{failed_events}: both jobs FAILED in {took:?} with {polls} results poll(s)"
    );
    assert!((1..=3).contains(&polls), "{polls} polls");
    assert!(took < Duration::from_secs(5), "{took:?}");
    gw.stop().await;
}

/// `layouts`: one image per item per layout, each in its own `render.completed` (which names
/// no layout). The job collects them and completes with the last; two items with identical
/// variables each get their own three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_three_layouts_completes_with_three_images() {
    let (http, addr) = http_listener().await;
    let pic = sim(
        PICTIFY,
        addr,
        true,
        SimConfig {
            time_scale: TS,
            job_duration: (Duration::from_secs(1), Duration::from_secs(2)),
            ..SimConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        GatewayOpts {
            time_scale: TS,
            webhooks: true,
            toml: "",
            database_url: db_url(&dir),
        },
        http,
        &[&pic],
    )
    .await;
    let mut client = gw.client().await;
    let job = || {
        let mut j = pictify_job("tmpl_layouts", "Ada");
        if let Some(pb::job_spec::Provider::Pictify(p)) = &mut j.provider {
            p.layouts = vec!["story".into(), "square".into(), "wide".into()];
        }
        j
    };
    let reply = submit(&mut client, vec![job(), job()]).await;
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(15)).await;
    let mut urls = std::collections::HashSet::new();
    for j in &done {
        assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
        assert_eq!(j.outputs.len(), 3, "{j:?}");
        urls.extend(j.outputs.iter().map(|o| o.url.clone()));
    }
    assert_eq!(urls.len(), 6, "six distinct images over two jobs");
    assert_eq!(pic.ledger().total_charges(), 6);
    gw.stop().await;
}
