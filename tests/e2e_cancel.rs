//! CancelJob end to end, for each provider's cancel support: locally while a job is queued and
//! unsent; Pictify per batch with the siblings rule; none for StaticAdsLab, Abyssale and
//! Bannerbear (refused, the job runs on). In-process gateway on real sockets, simulators as
//! the providers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::time::Duration;

use adgate::pb;
use adgate_sim::SimConfig;
use common::*;
use tonic::Code;

const TS: f64 = 0.02;

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

async fn cancel(client: &mut Client, id: &str) -> Result<pb::Job, tonic::Status> {
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().job.unwrap())
}

async fn start(
    sims: &[&Sim],
    toml: &str,
    http: tokio::net::TcpListener,
    dir: &tempfile::TempDir,
) -> Gateway {
    Gateway::start(
        GatewayOpts {
            time_scale: TS,
            webhooks: true,
            toml,
            database_url: db_url(dir),
        },
        http,
        sims,
    )
    .await
}

async fn batch_of(client: &mut Client, batch_id: &str) -> Vec<pb::Job> {
    batch(client, batch_id).await
}

async fn wait_state(client: &Client, id: &str, want: pb::JobState) -> pb::Job {
    wait_for(&format!("{id} {want:?}"), Duration::from_secs(15), || {
        let mut c = client.clone();
        let id = id.to_owned();
        async move {
            let j = get_job(&mut c, &id).await;
            (j.state() == want).then_some(j)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_unsent_job_is_cancelled_locally_and_never_sent() {
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, cfg((30, 60))).await;
    // One submit at a time, and the first one's answer held: the others wait unsent.
    sal.handle
        .update_faults(|f| f.submit_answer_delay = Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let toml = "[providers.staticadslab]\nmax_concurrent_submits = 1\n";
    let gw = start(&[&sal], toml, http, &dir).await;
    let mut client = gw.client().await;
    let reply = submit(
        &mut client,
        vec![sal_job("brand_1"), sal_job("brand_2"), sal_job("brand_3")],
    )
    .await;
    wait_for("the first ad sent", Duration::from_secs(10), || {
        let n = sal.ledger().requests("POST /v1/image-ads");
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let last = reply.job_ids[2].clone();
    let cancelled = cancel(&mut client, &last).await.unwrap();
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    assert_eq!(cancelled.error.unwrap().code, "CANCELLED_BY_CALLER");
    // A cancelled job is terminal: a second cancel is refused.
    let again = cancel(&mut client, &last).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    assert_eq!(done[0].state(), pb::JobState::Completed);
    assert_eq!(done[1].state(), pb::JobState::Completed);
    assert_eq!(
        sal.ledger().requests("POST /v1/image-ads"),
        2,
        "the cancelled ad was never sent"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_without_cancel_refuse_and_the_job_runs_on() {
    let (http, addr) = http_listener().await;
    let sal = sim(STATICADSLAB, addr, false, cfg((20, 30))).await;
    let aby = sim(ABYSSALE, addr, true, cfg((20, 30))).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&[&sal, &aby], "", http, &dir).await;
    let mut client = gw.client().await;
    let reply = submit(
        &mut client,
        vec![sal_job("brand_1"), abyssale_job(&["facebook-feed"])],
    )
    .await;
    for (id, provider) in reply.job_ids.iter().zip([STATICADSLAB, ABYSSALE]) {
        wait_state(&client, id, pb::JobState::Processing).await;
        let err = cancel(&mut client, id).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{provider}: {err:?}");
        assert!(err.message().contains("no cancel operation"), "{err:?}");
    }
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(30)).await;
    assert!(
        done.iter().all(|j| j.state() == pb::JobState::Completed),
        "{done:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictify_cancels_a_whole_batch_once_every_sibling_is_cancelled() {
    let (http, addr) = http_listener().await;
    // Items render slowly (5 at a time, 20–40 s each scaled to 0.4–0.8 s): the batch is still
    // running when it is cancelled.
    let pic = sim(PICTIFY, addr, true, cfg((20, 40))).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&[&pic], "", http, &dir).await;
    let mut client = gw.client().await;
    let jobs: Vec<pb::JobSpec> = (0..10)
        .map(|i| pictify_job("tmpl_cancel", &format!("n{i}")))
        .collect();
    let reply = submit(&mut client, jobs).await;
    for id in &reply.job_ids {
        wait_state(&client, id, pb::JobState::Processing).await;
    }
    // One job of a shared provider batch: refused, naming the siblings still running.
    let first = cancel(&mut client, &reply.job_ids[0]).await.unwrap_err();
    assert_eq!(first.code(), Code::FailedPrecondition, "{first:?}");
    assert!(first.message().contains("unfinished job"), "{first:?}");
    assert_eq!(pic.ledger().requests("POST /templates/batch/:id/cancel"), 0);
    // Once every sibling asked to be cancelled, the batch is cancelled at the provider.
    let mut last = None;
    for id in &reply.job_ids[1..] {
        last = Some(cancel(&mut client, id).await);
    }
    let last = last.unwrap().unwrap();
    assert_eq!(pic.ledger().requests("POST /templates/batch/:id/cancel"), 1);
    assert!(matches!(
        last.state(),
        pb::JobState::Cancelled | pb::JobState::Completed
    ));
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    let cancelled = done
        .iter()
        .filter(|j| j.state() == pb::JobState::Cancelled)
        .count();
    println!("pictify batch cancel: {cancelled} of 10 cancelled, the rest had finished");
    assert!(cancelled >= 1);
    assert!(
        done.iter()
            .all(|j| matches!(j.state(), pb::JobState::Cancelled | pb::JobState::Completed))
    );
    gw.stop().await;
}

/// Cancelling a Pictify batch keeps what the provider already finished: items rendered before
/// the cancel end COMPLETED with their own URLs (their `render.completed` still comes), the rest
/// CANCELLED — one CancelBatch call for the whole gateway batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_batch_keeps_the_items_pictify_already_rendered() {
    let (http, addr) = http_listener().await;
    // Items render five at a time in 0.4–0.8 s each: the first ones finish while the rest
    // still run.
    let pic = sim(PICTIFY, addr, true, cfg((20, 40))).await;
    // Webhooks arrive 2 s late: items the provider rendered are known (from a poll) but not
    // yet delivered when the batch is cancelled — exactly the items a cancel must not lose.
    pic.handle
        .update_faults(|f| f.webhook_delay = Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&[&pic], "", http, &dir).await;
    let mut client = gw.client().await;
    let jobs: Vec<pb::JobSpec> = (0..10)
        .map(|i| pictify_job("tmpl_partial", &format!("p{i}")))
        .collect();
    let reply = submit(&mut client, jobs).await;
    wait_for(
        "some items rendered, URLs not yet delivered",
        Duration::from_secs(15),
        || {
            let mut c = client.clone();
            let batch = reply.batch_id.clone();
            async move {
                let jobs = batch_of(&mut c, &batch).await;
                let rendered = jobs
                    .iter()
                    .filter(|j| {
                        j.state() == pb::JobState::Processing
                            && j.progress.as_ref().is_some_and(|p| p.step == "rendered")
                    })
                    .count();
                (rendered >= 3).then_some(())
            }
        },
    )
    .await;
    let after = client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: reply.batch_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(after.len(), 10);
    assert_eq!(pic.ledger().requests("POST /templates/batch/:id/cancel"), 1);
    let done = wait_batch_terminal(&client, &reply.batch_id, Duration::from_secs(20)).await;
    let completed: Vec<&pb::Job> = done
        .iter()
        .filter(|j| j.state() == pb::JobState::Completed)
        .collect();
    let cancelled = done
        .iter()
        .filter(|j| j.state() == pb::JobState::Cancelled)
        .count();
    let rendered = pic
        .ledger()
        .webhooks()
        .iter()
        .filter(|w| w.event == "render.completed")
        .count();
    println!(
        "pictify cancel batch: {} COMPLETED, {cancelled} CANCELLED, {rendered} rendered",
        completed.len()
    );
    assert!(
        completed.len() >= 3,
        "rendered items kept: {}",
        completed.len()
    );
    assert!(cancelled >= 1, "unfinished items cancelled");
    assert_eq!(completed.len() + cancelled, 10);
    assert_eq!(
        completed.len(),
        rendered,
        "every rendered item, and only those, completed"
    );
    for j in &completed {
        assert_eq!(j.outputs.len(), 1, "{j:?}");
    }
    let unknown = client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "bat_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    gw.stop().await;
}
