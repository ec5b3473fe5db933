//! Issue 16, PostgreSQL writer robustness: the gateway's database connections are killed at
//! random (`pg_terminate_backend`) during a stream of Submits. A write group that meets a
//! dropped connection before its COMMIT is retried on a fresh one inside the gateway, so
//! callers see no error for it; a caller is told `UNAVAILABLE` (never `INTERNAL`) only when
//! the outcome is unknown or the database stays away, and its retry with the same request id
//! stores nothing twice. No acknowledged job is lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;
mod pgdb;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use adgate::pb;
use common::*;
use pgdb::Backend;
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_lose_no_acknowledged_job_and_never_answer_internal() {
    let backend = Backend::new(true).await;
    let db_name = backend.url().rsplit('/').next().unwrap().to_owned();
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, sim_config(0.05)).await;
    let gw = Gateway::start(
        GatewayOpts {
            time_scale: 0.05,
            webhooks: false,
            toml: "",
            database_url: backend.url(),
        },
        http,
        &[&sal],
    )
    .await;

    // The killer: every 40 ms, terminate every connection to the test database but its own.
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let db_name = db_name.clone();
        tokio::spawn(async move {
            let mut admin =
                sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
                    .await
                    .unwrap();
            let mut killed = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&db_name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
                killed += n;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            killed
        })
    };

    // Eight callers submit one ad per call, each with its own request id, for 3 s.
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for caller in 0..8 {
        let mut c = gw.client().await;
        tasks.push(tokio::spawn(async move {
            let mut outcomes: Vec<(String, Result<pb::SubmitResponse, tonic::Status>)> = Vec::new();
            let mut n = 0;
            while Instant::now() < until {
                let request_id = format!("outage-{caller}-{n}");
                n += 1;
                let r = c
                    .submit(pb::SubmitRequest {
                        request_id: request_id.clone(),
                        jobs: vec![pb::JobSpec {
                            client_ref: request_id.clone(),
                            ..sal_job("brand_outage")
                        }],
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner());
                outcomes.push((request_id, r));
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let killed = killer.await.unwrap();

    let mut codes: HashMap<String, usize> = HashMap::new();
    for (_, r) in &outcomes {
        let code = match r {
            Ok(_) => "OK".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        *codes.entry(code).or_default() += 1;
    }
    println!(
        "{} Submits with {killed} connections killed: {codes:?}",
        outcomes.len()
    );
    assert!(
        killed > 10,
        "the killer must have killed connections: {killed}"
    );
    for (id, r) in &outcomes {
        if let Err(s) = r {
            assert_eq!(
                s.code(),
                tonic::Code::Unavailable,
                "{id}: a lost connection is not an internal error: {s:?}"
            );
        }
    }

    // After the outage: every acknowledged job is there, and retrying a refused Submit with
    // its request id stores it once.
    let mut c = gw.client().await;
    let mut acknowledged = 0;
    for (id, r) in &outcomes {
        let reply = match r {
            Ok(reply) => {
                acknowledged += 1;
                reply.clone()
            }
            Err(_) => c
                .submit(pb::SubmitRequest {
                    request_id: id.clone(),
                    jobs: vec![pb::JobSpec {
                        client_ref: id.clone(),
                        ..sal_job("brand_outage")
                    }],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner(),
        };
        let job = get_job(&mut c, &reply.job_ids[0]).await;
        assert_eq!(&job.client_ref, id);
    }
    let stored: i64 = gw.stored_jobs().await.values().sum();
    assert_eq!(
        stored as usize,
        outcomes.len(),
        "one stored job per request id ({acknowledged} acknowledged during the outage)"
    );
    gw.stop().await;
    sal.handle.shutdown();
    backend.finish().await;
}
