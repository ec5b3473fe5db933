//! The `retention` scenario (issue 16): a simulated week at a steady 1,000,000 jobs a day on
//! SQLite with retention on; the store's size per simulated day and bytes per retained job.
//!
//! **Fake clock.** The store takes every time from its caller, so the week is simulated by
//! handing it simulated times: the day is cut into 144 ten-minute ticks (the engine's default
//! retention interval); each tick submits its share of the day's jobs at the tick's time (100
//! jobs per Submit, each with a request id, eight Submits in flight so the writer
//! group-commits them as it does under load), completes them a minute later — half through
//! webhook deliveries (one delivery id per job, 64 in flight), half through polls (100 patches
//! per write) — and then runs one retention pass exactly as the engine does
//! (`adgate_engine::retention::pass`: steps of 500 rows, then incremental vacuum).
//!
//! **Windows shortened proportionally.** With the default 30 days, a week would delete nothing.
//! Every window is divided by 30 instead — jobs 1 day, request ids 48 min, delivery ids 2.4 h —
//! so the steady state is reached after one simulated day and the other six show whether it
//! stays flat, while each table keeps the same share of rows per retained job as with the
//! defaults (a month of jobs, a day of request ids, three days of delivery ids). Bytes per
//! retained job is the figure that carries over to 30 days.
//!
//! Sizes are logical (`page_count × page_size`: the file as the next checkpoint leaves it),
//! with the file and WAL as they are on disk beside them. `ADGATE_BENCH_RETENTION_JOBS_PER_DAY`
//! scales the run down (the figure says which scale ran).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use adgate_engine::retention::{self, Retention};
use adgate_generator::{JobState, Output};
use adgate_store::{JobPatch, NewJob, NewSubmission, SqliteStore, Store};
use futures_util::StreamExt;
use sqlx::Connection;
use tokio::time::Instant;

use crate::Res;
use crate::report::Verdict;
use crate::scenarios::Ctx;

const DAYS: u64 = 7;
const TICKS_PER_DAY: u64 = 144;
const DAY_MS: i64 = 86_400_000;
const PER_SUBMIT: u64 = 100;
/// Retention windows are the defaults divided by this (see the module docs).
const SHRINK: u32 = 30;
/// The target: no more than today's ≈ 570 bytes per job, at most 600 per retained job.
const TARGET_BYTES_PER_JOB: f64 = 600.0;
/// Flat: the last day's size within this factor of the second day's.
const FLAT: f64 = 1.05;
/// The simulated week starts here (2027-01-15), far from the real clock on purpose.
const T0: i64 = 1_800_000_000_000;

fn jobs_per_day() -> u64 {
    std::env::var("ADGATE_BENCH_RETENTION_JOBS_PER_DAY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= TICKS_PER_DAY * PER_SUBMIT)
        .unwrap_or(1_000_000)
}

fn new_job(k: u64, at: i64) -> NewJob {
    NewJob {
        id: format!("job_{k:020x}"),
        provider: if k.is_multiple_of(2) {
            "pictify"
        } else {
            "staticadslab"
        }
        .to_owned(),
        spec: serde_json::json!({
            "design_template_id": "dt_8f3a2c",
            "brand_id": "brand_42",
            "text": { "headline": format!("Spring sale {}", k % 1000), "cta": "Shop now" }
        }),
        group_key: None,
        correlation_key: None,
        client_ref: format!("order-{k}"),
        labels: BTreeMap::from([("campaign".to_owned(), "spring".to_owned())]),
        deadline_at_ms: at + 15 * 60_000,
        priority: adgate_store::DEFAULT_PRIORITY,
        cost: None,
        traceparent: None,
    }
}

fn completion(k: u64) -> JobPatch {
    JobPatch {
        state: Some(JobState::Completed),
        provider_ref: Some(format!("ia_{k:016x}")),
        outputs: Some(vec![Output {
            url: format!("https://cdn.example.com/renders/{k:016x}.png"),
            width: 1080,
            height: 1080,
            format: String::new(),
            mime_type: "image/png".to_owned(),
            provider_fields: serde_json::Map::new(),
            custody: Default::default(),
        }]),
        ..JobPatch::new(format!("job_{k:020x}"))
    }
}

/// One tick's jobs, `first..first + count`: submitted at `at`, completed a minute later.
async fn run_tick(store: &Arc<SqliteStore>, first: u64, count: u64, at: i64) -> Res<()> {
    let submits = (first..first + count)
        .step_by(PER_SUBMIT as usize)
        .map(|start| {
            let end = (start + PER_SUBMIT).min(first + count);
            NewSubmission {
                batch_id: format!("bat_{start:016x}"),
                caller: adgate_store::ANONYMOUS.to_owned(),
                request_id: Some(format!("req_{start:016x}")),
                content_hash: format!("{start:064x}"),
                jobs: (start..end).map(|k| new_job(k, at)).collect(),
                now_ms: at,
                notify: None,
            }
        });
    let results: Vec<_> = futures_util::stream::iter(submits.map(|s| {
        let store = Arc::clone(store);
        async move { store.submit(s).await }
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    for r in results {
        r?;
    }
    let done = at + 60_000;
    // Pictify (even k) completes by webhook, one delivery each; StaticAdsLab by poll.
    let webhooks: Vec<_> =
        futures_util::stream::iter((first..first + count).filter(|k| k.is_multiple_of(2)).map(
            |k| {
                let store = Arc::clone(store);
                async move {
                    store
                        .apply_delivery(
                            "pictify",
                            &format!("del_{k:016x}"),
                            vec![completion(k)],
                            done,
                        )
                        .await
                }
            },
        ))
        .buffer_unordered(64)
        .collect()
        .await;
    for r in webhooks {
        r?;
    }
    let polled: Vec<u64> = (first..first + count)
        .filter(|k| !k.is_multiple_of(2))
        .collect();
    let polls: Vec<_> = futures_util::stream::iter(polled.chunks(PER_SUBMIT as usize).map(|ks| {
        let store = Arc::clone(store);
        let patches: Vec<JobPatch> = ks.iter().map(|k| completion(*k)).collect();
        async move { store.apply(patches, done).await }
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    for r in polls {
        r?;
    }
    Ok(())
}

struct Sizes {
    logical: u64,
    file: u64,
    wal: u64,
    jobs: u64,
}

async fn sizes(dir: &std::path::Path, url: &str) -> Res<Sizes> {
    let mut conn = sqlx::SqliteConnection::connect(url).await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut conn)
        .await?;
    let page: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await?;
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    let len = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    Ok(Sizes {
        logical: u64::try_from(pages * page).unwrap_or(0),
        file: len("adgate.db"),
        wal: len("adgate.db-wal"),
        jobs: u64::try_from(jobs).unwrap_or(0),
    })
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

pub async fn retention(ctx: &mut Ctx) -> Res<()> {
    let per_day = jobs_per_day();
    let per_tick = per_day / TICKS_PER_DAY;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("adgate.db").display());
    let store = Arc::new(SqliteStore::open(&url).await?);
    let defaults = Retention::default();
    let windows = Retention {
        jobs: defaults.jobs / SHRINK,
        request_ids: defaults.request_ids / SHRINK,
        deliveries: defaults.deliveries / SHRINK,
        interval: defaults.interval,
    };
    let tick_ms = DAY_MS / i64::try_from(TICKS_PER_DAY).unwrap_or(1);
    let started = Instant::now();
    let mut next = 0u64;
    let mut daily: Vec<Sizes> = Vec::new();
    let mut longest_pass = Duration::ZERO;
    let mut longest_step = Duration::ZERO;
    let mut pass_total = Duration::ZERO;
    let mut deleted = 0u64;
    for day in 0..DAYS {
        for tick in 0..TICKS_PER_DAY {
            let at = T0 + i64::try_from(day * TICKS_PER_DAY + tick).unwrap_or(0) * tick_ms;
            run_tick(&store, next, per_tick, at).await?;
            next += per_tick;
            let report = retention::pass(
                &*store,
                windows.cutoffs(at + tick_ms),
                &|| false,
                &mut |_| {},
            )
            .await;
            if let Some(e) = report.error {
                return Err(e.into());
            }
            deleted += report.purged.jobs;
            longest_pass = longest_pass.max(report.elapsed);
            longest_step = longest_step.max(report.longest_step);
            pass_total += report.elapsed;
        }
        let s = sizes(dir.path(), &url).await?;
        ctx.report.info(
            "retention",
            &format!("end of simulated day {}", day + 1),
            format!(
                "{:.1} MB ({:.1} MB file + {:.1} MB WAL on disk), {} jobs retained, {:.0} B/job",
                mb(s.logical),
                mb(s.file),
                mb(s.wal),
                s.jobs,
                s.logical as f64 / s.jobs.max(1) as f64
            ),
        );
        daily.push(s);
    }
    store.close().await;
    let elapsed = started.elapsed();
    // What the retained rows need: the same database rewritten compactly.
    let compact = dir.path().join("compact.db");
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    sqlx::query("VACUUM INTO ?")
        .bind(compact.display().to_string())
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let compact_len = std::fs::metadata(&compact)?.len();
    if let Ok(keep) = std::env::var("ADGATE_BENCH_RETENTION_KEEP") {
        std::fs::copy(&compact, keep)?;
    }
    let last = daily.last().ok_or("no day ran")?;
    let second = daily.get(1).ok_or("fewer than two days")?;
    let per_job = last.logical as f64 / last.jobs.max(1) as f64;
    let growth = last.logical as f64 / second.logical.max(1) as f64;
    let scale = if per_day == 1_000_000 {
        "full scale".to_owned()
    } else {
        format!("scaled to {per_day} jobs/day")
    };
    ctx.report.row(
        "retention",
        &format!("bytes per retained job, day 7 ({scale})"),
        format!("{per_job:.0} B"),
        "≤ 600 B",
        Verdict::from(per_job <= TARGET_BYTES_PER_JOB),
    );
    ctx.report.info(
        "retention",
        "the same rows compacted (VACUUM INTO)",
        format!(
            "{:.1} MB, {:.0} B/job: the store is {:.2} × what its rows need",
            mb(compact_len),
            compact_len as f64 / last.jobs.max(1) as f64,
            last.logical as f64 / compact_len.max(1) as f64
        ),
    );
    ctx.report.row(
        "retention",
        "store size day 7 / day 2",
        format!(
            "{growth:.3} ({:.1} MB → {:.1} MB)",
            mb(second.logical),
            mb(last.logical)
        ),
        "≤ 1.05 (flat)",
        Verdict::from(growth <= FLAT),
    );
    ctx.report.info(
        "retention",
        "retention passes",
        format!(
            "{} passes deleted {deleted} jobs; longest pass {:.0} ms, longest step {:.1} ms, all passes {:.1} s of {:.0} s",
            DAYS * TICKS_PER_DAY,
            longest_pass.as_secs_f64() * 1000.0,
            longest_step.as_secs_f64() * 1000.0,
            pass_total.as_secs_f64(),
            elapsed.as_secs_f64()
        ),
    );
    Ok(())
}
