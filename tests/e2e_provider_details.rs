//! Issue 21, end to end through gRPC: provider details that lost outputs or would break against
//! the real APIs — StaticAdsLab `?ids=` paging (providers.md §1.2, §6 q4), Abyssale per-format
//! failures as data (§3.3) and the Abyssale output options callers can now set (§3.2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::time::Duration;

use adgate::pb;
use adgate_sim::SimConfig;
use common::*;
use tonic::Code;
use tonic_types::StatusExt;

async fn start_gw(
    time_scale: f64,
    http: tokio::net::TcpListener,
    sims: &[&Sim],
    database_url: String,
) -> Gateway {
    Gateway::start(
        GatewayOpts {
            time_scale,
            webhooks: false,
            toml: "",
            database_url,
        },
        http,
        sims,
    )
    .await
}

/// The simulator applies the documented list paging to `?ids=` (default `limit` 20, the
/// stricter reading of §6 q4). 80 ads are polled 80 ids at a time: an adapter that sent no
/// `limit`, or took ids missing from a page that said `has_more` for gone, would fail 60 of
/// them PROVIDER_JOB_NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staticadslab_80_ads_under_the_default_page_limit_all_complete() {
    // 0.02: 100 requests / 60 s becomes 100 / 1.2 s; ads take 0.6–1.2 s.
    const TS: f64 = 0.02;
    const ADS: usize = 80;
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(TS)).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, http, &[&sal], db_url(&dir)).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let reply = submit(
        &mut c,
        (0..ADS).map(|i| sal_job(&format!("brand_{i}"))).collect(),
    )
    .await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    let not_found: Vec<&str> = jobs
        .iter()
        .filter(|j| {
            j.error
                .as_ref()
                .is_some_and(|e| e.code == "PROVIDER_JOB_NOT_FOUND")
        })
        .map(|j| j.id.as_str())
        .collect();
    assert!(
        not_found.is_empty(),
        "{} NotFound: {not_found:?}",
        not_found.len()
    );
    let by_state = counts(&jobs);
    assert_eq!(
        by_state.get(&pb::JobState::Completed),
        Some(&ADS),
        "{by_state:?}"
    );
    let ledger = sal.ledger();
    let polls = ledger.requests("GET /v1/image-ads");
    println!(
        "staticadslab ?ids= paging: {ADS} ads completed with {polls} batch polls, {} requests \
         in all, by endpoint {:?}, 429s = {}",
        ledger.total_requests(),
        ledger.requests_by_endpoint(),
        ledger.count_429(),
    );
    assert_eq!(ledger.requests("POST /v1/image-ads"), ADS as u64);
    assert_eq!(ledger.count_429(), 0);
    gw.stop().await;
}

/// Partial success is normal at Abyssale: `banners` and `errors[{template_format_name,
/// reason}]` together (§3.3). Each failed format reaches the caller as data on the job's
/// error, survives the store (a restarted gateway reads it back), and the formats with output
/// plus the failed ones are exactly the formats asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_partly_failed_job_lists_its_failed_formats_as_data() {
    const TS: f64 = 0.02;
    const FORMATS: [&str; 4] = ["facebook-feed", "instagram-post", "iab-medium", "half-page"];
    let (http, addr) = http_listener().await;
    let aby = sim(
        ABYSSALE,
        addr,
        false,
        SimConfig {
            failure_ratio: 0.5,
            job_duration: (Duration::from_secs(5), Duration::from_secs(10)),
            ..sim_config(TS)
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, http, &[&aby], db_url(&dir)).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let reply = submit(&mut c, (0..6).map(|_| abyssale_job(&FORMATS)).collect()).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    let mut partial = 0;
    for j in &jobs {
        let e = j.error.as_ref();
        let failed: Vec<&pb::FormatFailure> = e
            .map(|e| e.failed_formats.iter().collect())
            .unwrap_or_default();
        assert!(failed.iter().all(|f| !f.reason.is_empty()), "{j:?}");
        let mut all: Vec<&str> = failed
            .iter()
            .map(|f| f.format.as_str())
            .chain(j.outputs.iter().map(|o| o.format.as_str()))
            .collect();
        all.sort_unstable();
        let mut want = FORMATS.to_vec();
        want.sort_unstable();
        assert_eq!(all, want, "{j:?}");
        if j.state() == pb::JobState::Completed && !failed.is_empty() {
            assert_eq!(e.map(|e| e.code.as_str()), Some("PARTIAL_FAILURE"));
            partial += 1;
        }
    }
    assert!(partial > 0, "no partly failed job among {jobs:?}");
    println!(
        "abyssale: {partial} of {} jobs partly failed, failed formats {:?}",
        jobs.len(),
        jobs.iter()
            .map(|j| j.error.as_ref().map_or(0, |e| e.failed_formats.len()))
            .collect::<Vec<_>>()
    );
    gw.stop().await;

    // Same store, new gateway: the failed formats come back from the stored JSON.
    let (http, _) = http_listener().await;
    let gw = start_gw(TS, http, &[&aby], db_url(&dir)).await;
    let mut c = gw.client().await;
    for j in &jobs {
        let again = get_job(&mut c, &j.id).await;
        assert_eq!(again.error, j.error, "{}", j.id);
    }
    gw.stop().await;
}

fn abyssale_with(g: pb::AbyssaleGeneration) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Abyssale(g)),
        ..Default::default()
    }
}

/// The output options of §3.2 go from gRPC to the provider: a job using every block completes
/// at a simulator that validates them per the documents; values outside the documented
/// ranges, and `original_visual_id` without exactly one format, are refused at submit with
/// field paths and never reach the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abyssale_output_options_reach_the_provider_and_bad_ones_are_refused_with_paths() {
    const TS: f64 = 0.02;
    let (http, addr) = http_listener().await;
    let aby = sim(ABYSSALE, addr, false, sim_config(TS)).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gw(TS, http, &[&aby], db_url(&dir)).await;
    let client = gw.client().await;
    let mut c = client.clone();
    let base = pb::AbyssaleGeneration {
        design_id: DESIGN_ID.into(),
        format_names: vec!["iab-medium".into()],
        ..Default::default()
    };
    let full = pb::AbyssaleGeneration {
        html5: Some(pb::abyssale_generation::Html5Options {
            page_title: "Sale".into(),
            click_tag: "https://shop.example/c".into(),
            ad_network: "google".into(),
            include_backup_image: Some(false),
            repeat: Some(true),
        }),
        gif: Some(pb::abyssale_generation::GifOptions {
            max_fps: Some(9),
            repeat: Some(false),
        }),
        video: Some(pb::abyssale_generation::VideoOptions { fps: Some(2) }),
        print: Some(pb::abyssale_generation::PrintOptions {
            color_profile: "28e973cf-1514-4d9b-9db6-cbaca229b040".into(),
            display_crop_marks: Some(true),
        }),
        original_visual_id: "64238d01-d402-474b-8c2d-fbc957e9d290".into(),
        ..base.clone()
    };
    let reply = submit(&mut c, vec![abyssale_with(full)]).await;
    let jobs = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    assert_eq!(jobs[0].state(), pb::JobState::Completed, "{:?}", jobs[0]);
    assert_eq!(aby.ledger().creations(), 1);

    let cases = [
        (
            pb::AbyssaleGeneration {
                gif: Some(pb::abyssale_generation::GifOptions {
                    max_fps: Some(10),
                    repeat: None,
                }),
                ..base.clone()
            },
            "jobs[0].abyssale.gif.max_fps",
        ),
        (
            pb::AbyssaleGeneration {
                // proto3 `optional`: an explicit 0 is sent, and is out of range.
                video: Some(pb::abyssale_generation::VideoOptions { fps: Some(0) }),
                ..base.clone()
            },
            "jobs[0].abyssale.video.fps",
        ),
        (
            pb::AbyssaleGeneration {
                print: Some(pb::abyssale_generation::PrintOptions {
                    color_profile: "cmyk".into(),
                    display_crop_marks: None,
                }),
                ..base.clone()
            },
            "jobs[0].abyssale.print.color_profile",
        ),
        (
            pb::AbyssaleGeneration {
                format_names: vec!["iab-medium".into(), "half-page".into()],
                original_visual_id: "64238d01-d402-474b-8c2d-fbc957e9d290".into(),
                ..base.clone()
            },
            "jobs[0].abyssale.original_visual_id",
        ),
    ];
    for (g, path) in cases {
        let err = c
            .submit(pb::SubmitRequest {
                jobs: vec![abyssale_with(g)],
                ..Default::default()
            })
            .await
            .expect_err(path);
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {err:?}");
        let fields: Vec<String> = err
            .get_error_details()
            .bad_request()
            .expect("BadRequest details")
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, [path], "{err:?}");
    }
    assert_eq!(
        aby.ledger().creations(),
        1,
        "nothing refused reached Abyssale"
    );
    gw.stop().await;
}
