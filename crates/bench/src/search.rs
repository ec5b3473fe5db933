//! The `search` scenario: ListJobs over 1,000,000 stored jobs (issue 17, target: a filtered
//! page of 100 in < 50 ms).
//!
//! Seeding goes straight through `adgate_store::SqliteStore::submit` (1,000 jobs per call,
//! eight calls in flight, so the writer group-commits them), spread over four callers, three
//! providers and eight `campaign` labels, one batch per call and 10 ms apart. One UPDATE then
//! spreads the terminal states (70 % COMPLETED, 20 % FAILED, 10 % CANCELLED): terminal, so the
//! gateway started on the file has nothing to dispatch or track and the figures are the
//! search alone. The gateway child has no provider configured; ListJobs does not need one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adgate::pb;
use adgate::pb::gateway_service_client::GatewayServiceClient;
use adgate_store::{NewJob, NewSubmission, SqliteStore, Store};
use futures_util::StreamExt;
use sqlx::Connection;
use tokio::time::Instant;

use crate::Res;
use crate::load::{self, closed_loop};
use crate::report::Verdict;
use crate::scenarios::Ctx;
use crate::world::{World, WorldSpec};

const JOBS: u64 = 1_000_000;
const PER_SUBMIT: u64 = 1_000;
const CALLERS: [&str; 4] = ["team-a", "team-b", "team-c", "team-d"];
const PROVIDERS: [&str; 3] = ["staticadslab", "pictify", "abyssale"];
const CAMPAIGNS: [&str; 8] = [
    "spring", "summer", "autumn", "winter", "launch", "brand", "retarget", "promo",
];
const PAGE: i32 = 100;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
/// The target for one page of 100.
const TARGET_MS: f64 = 50.0;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn submission(n: u64, t0: i64, deadline: i64) -> NewSubmission {
    let jobs = (0..PER_SUBMIT)
        .map(|i| {
            let k = n * PER_SUBMIT + i;
            NewJob {
                id: format!("job_{k:020x}"),
                provider: PROVIDERS[(k % 3) as usize].to_owned(),
                spec: serde_json::json!({ "design_template_id": "dt_1", "brand_id": "brand_1" }),
                group_key: None,
                correlation_key: None,
                client_ref: format!("ref-{k}"),
                labels: BTreeMap::from([(
                    "campaign".to_owned(),
                    CAMPAIGNS[(k % 8) as usize].to_owned(),
                )]),
                deadline_at_ms: deadline,
                priority: adgate_store::DEFAULT_PRIORITY,
                cost: None,
                traceparent: None,
            }
        })
        .collect();
    NewSubmission {
        batch_id: format!("bat_{n:016x}"),
        caller: CALLERS[(n % 4) as usize].to_owned(),
        request_id: None,
        content_hash: String::new(),
        jobs,
        now_ms: t0 + i64::try_from(n).unwrap_or(0) * 10,
        notify: None,
    }
}

async fn seed(world: &World) -> Res<String> {
    let started = Instant::now();
    let store = Arc::new(SqliteStore::open(&world.database_url()).await?);
    let t0 = now_ms() - 3_600_000;
    let deadline = now_ms() + 30 * 24 * 3_600_000;
    let calls = JOBS / PER_SUBMIT;
    let results: Vec<_> = futures_util::stream::iter((0..calls).map(|n| {
        let store = Arc::clone(&store);
        async move { store.submit(submission(n, t0, deadline)).await }
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    for r in results {
        r?;
    }
    store.close().await;
    let submitted = started.elapsed();
    let mut conn = sqlx::SqliteConnection::connect(&world.database_url()).await?;
    sqlx::query(
        "UPDATE jobs SET state = CASE WHEN rowid % 10 < 7 THEN 3 WHEN rowid % 10 < 9 THEN 4 \
         ELSE 5 END, completed_at = created_at + 1000",
    )
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(format!(
        "{JOBS} jobs in {calls} submits: {:.1} s through the store ({:.0} jobs/s), states spread in {:.1} s",
        submitted.as_secs_f64(),
        JOBS as f64 / submitted.as_secs_f64(),
        (started.elapsed() - submitted).as_secs_f64()
    ))
}

/// The `next_page_token` after `pages` pages of `filter` (a position deep in the listing).
async fn deep_token(ch: tonic::transport::Channel, filter: &str, pages: usize) -> Res<String> {
    let mut c = GatewayServiceClient::new(ch);
    let mut token = String::new();
    for _ in 0..pages {
        token = c
            .list_jobs(pb::ListJobsRequest {
                page_size: PAGE,
                page_token: token,
                filter: filter.to_owned(),
            })
            .await?
            .into_inner()
            .next_page_token;
        if token.is_empty() {
            return Err(format!("{filter:?} has fewer than {pages} pages").into());
        }
    }
    Ok(token)
}

pub async fn search(ctx: &mut Ctx) -> Res<()> {
    let world = World::new(WorldSpec {
        sims: Vec::new(),
        time_scale: 1.0,
        webhooks: false,
        defer_sims: false,
    })
    .await?;
    let summary = seed(&world).await?;
    ctx.report.info("search", "seeding (SQLite)", summary);
    let gw = world.gateway().await?;
    ctx.report.info(
        "search",
        "gateway start on the 1M-job store (exec -> READY)",
        format!("{:.2} s", gw.ready_after.as_secs_f64()),
    );
    let channels = load::connect(&gw.grpc, 1).await?;
    let deep_filter = "caller = \"team-b\"";
    let deep = deep_token(channels[0].clone(), deep_filter, 500).await?;
    let cases: Vec<(&str, String, String)> = vec![
        ("no filter", String::new(), String::new()),
        ("caller = \"team-b\"", deep_filter.to_owned(), String::new()),
        (
            "state = FAILED AND labels.campaign = \"spring\"",
            "state = FAILED AND labels.campaign = \"spring\"".to_owned(),
            String::new(),
        ),
        (
            "provider = \"pictify\" AND state = CANCELLED",
            "provider = \"pictify\" AND state = CANCELLED".to_owned(),
            String::new(),
        ),
        (
            "caller = \"team-b\", page 501 (keyset token)",
            deep_filter.to_owned(),
            deep,
        ),
    ];
    for (name, filter, token) in cases {
        let (f, t) = (filter.clone(), token.clone());
        let stats = closed_loop(&channels, 1, WARMUP, MEASURE, move |ch, _, _| {
            let req = pb::ListJobsRequest {
                page_size: PAGE,
                page_token: t.clone(),
                filter: f.clone(),
            };
            async move {
                GatewayServiceClient::new(ch)
                    .list_jobs(req)
                    .await
                    .is_ok_and(|r| r.into_inner().jobs.len() == PAGE as usize)
            }
        })
        .await;
        let p99 = stats.p_ms(0.99);
        ctx.report.row(
            "search",
            &format!("ListJobs page of 100, {name}, 1 caller"),
            format!(
                "p50 {:.2} ms, p99 {p99:.2} ms; {} calls, {} errors",
                stats.p_ms(0.5),
                stats.ok,
                stats.errors
            ),
            "p99 < 50 ms",
            Verdict::from(p99 < TARGET_MS && stats.errors == 0 && stats.ok > 0),
        );
    }
    drop(gw);
    Ok(())
}
