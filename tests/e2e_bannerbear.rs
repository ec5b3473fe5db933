//! Bannerbear, the fourth provider, end to end: a mixed batch of all four providers through
//! gRPC against their simulators (in-process gateway, real sockets), by webhook and by polling.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use adgate::pb;
use adgate_sim::SimConfig;
use common::*;

const TS: f64 = 0.02;
const BANNERBEAR: &str = "bannerbear";

fn bannerbear_job(headline: &str) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Bannerbear(pb::BannerbearImage {
            template: "A89wavQyY3Bebk3djP".into(),
            modifications: Some(pb::bannerbear_image::Modifications {
                template: Some(pb::bannerbear_image::Canvas {
                    width: Some(1200),
                    height: Some(628),
                    transparent: false,
                }),
                objects: vec![pb::bannerbear_image::Layer {
                    name: "headline".into(),
                    attributes: Some(string_struct(&[("text", headline)])),
                    ..Default::default()
                }],
            }),
            formats: vec!["png".into(), "webp".into()],
            ..Default::default()
        })),
        client_ref: format!("bb-{headline}"),
        ..Default::default()
    }
}

fn cfg(job_secs: (u64, u64)) -> SimConfig {
    SimConfig {
        time_scale: TS,
        job_duration: (
            Duration::from_secs(job_secs.0),
            Duration::from_secs(job_secs.1),
        ),
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_of_all_four_providers_completes() {
    for webhooks in [true, false] {
        let (http, addr) = http_listener().await;
        let sal = sim(STATICADSLAB, addr, webhooks, cfg((30, 60))).await;
        let pic = sim(PICTIFY, addr, webhooks, cfg((1, 2))).await;
        let aby = sim(ABYSSALE, addr, webhooks, cfg((10, 20))).await;
        let bb = sim(BANNERBEAR, addr, webhooks, cfg((5, 10))).await;
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::start(
            GatewayOpts {
                time_scale: TS,
                webhooks,
                toml: "",
                database_url: db_url(&dir),
            },
            http,
            &[&sal, &pic, &aby, &bb],
        )
        .await;
        let mut client = gw.client().await;
        let mut jobs = vec![
            sal_job("brand_1"),
            pictify_job("tmpl_mixed", "Ada"),
            abyssale_job(&["facebook-feed"]),
        ];
        jobs.extend(["Spring", "Summer", "Autumn"].map(bannerbear_job));
        let reply = submit(&mut client, jobs).await;
        let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
        let mut by_provider: HashMap<&str, usize> = HashMap::new();
        for j in &done {
            *by_provider.entry(j.provider.as_str()).or_default() += 1;
            if j.provider == PICTIFY && !webhooks {
                // Pictify's results carry no URLs: without webhooks it cannot complete.
                assert_eq!(j.state(), pb::JobState::Failed, "{j:?}");
                continue;
            }
            assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
            assert!(!j.outputs.is_empty(), "{j:?}");
        }
        assert_eq!(by_provider.get(BANNERBEAR), Some(&3));
        for j in done.iter().filter(|j| j.provider == BANNERBEAR) {
            let formats: Vec<&str> = j.outputs.iter().map(|o| o.format.as_str()).collect();
            assert_eq!(j.outputs.len(), 2, "png and webp: {formats:?}");
            for o in &j.outputs {
                assert_eq!((o.width, o.height), (1200, 628), "{o:?}");
                let bytes = reqwest::get(&o.url).await.unwrap().bytes().await.unwrap();
                // The bytes are what the output says they are (WebP is RIFF…WEBP).
                let magic: &[u8] = match o.mime_type.as_str() {
                    "image/png" => b"\x89PNG\r\n\x1a\n",
                    "image/webp" => b"RIFF",
                    other => panic!("unexpected media type {other}: {o:?}"),
                };
                assert!(bytes.starts_with(magic), "{o:?}");
                if o.mime_type == "image/webp" {
                    assert_eq!(&bytes[8..12], b"WEBP", "{o:?}");
                }
            }
        }
        let creates = bb.ledger().requests("POST /v5/images");
        let polls = bb.ledger().requests("GET /v5/images/:uid");
        assert_eq!(creates, 3, "one create per job, never resent");
        if webhooks {
            wait_for(
                "bannerbear webhooks applied",
                Duration::from_secs(10),
                || {
                    let n = gw.webhooks(BANNERBEAR, "applied");
                    async move { (n >= 3).then_some(()) }
                },
            )
            .await;
        } else {
            assert!(polls >= 3, "completed by polling: {polls} polls");
        }
        println!(
            "four providers, webhooks={webhooks}: {} jobs terminal; bannerbear {creates} creates, \
             {polls} polls",
            done.len()
        );
        gw.stop().await;
    }
}
