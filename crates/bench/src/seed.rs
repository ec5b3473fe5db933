//! Seeding for the 100k scenarios. Jobs are created for real at the simulators, through the
//! gateway's own adapters (so provider references and poll keys are exactly what the engine
//! would have stored), with ten-hour job durations so they stay "processing"; then the same
//! jobs are written to the gateway's SQLite store as PROCESSING with those references, which
//! is the state a gateway leaves behind when it stops with 100,000 jobs in flight.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adgate_generator::{JobState, SubmitBatch, SubmitItem};
use adgate_store::{JobPatch, NewJob, NewSubmission, SqliteStore, Store};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::Res;
use crate::world::{self, ABYSSALE, PICTIFY, SAL, SimSpec, World, WorldSpec};

/// Jobs per provider: 100,000 in all.
const MIX: [(&str, u64); 3] = [(SAL, 30_000), (PICTIFY, 50_000), (ABYSSALE, 20_000)];

#[derive(Debug, Clone)]
pub struct Seeded {
    pub jobs: u64,
    pub summary: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn seed_100k() -> Res<(World, Seeded)> {
    let long = Duration::from_secs(10 * 3600);
    // Simulators at real time with documented limits for the gateway; only seeding goes
    // around the limit (it is not what is measured), so the simulators' own limiter is raised.
    let sims = MIX
        .iter()
        .map(|(p, _)| SimSpec {
            rate_limit: Some((10_000_000, Duration::from_secs(60))),
            ..SimSpec::new(p).durations(long, long)
        })
        .collect();
    let world = World::new(WorldSpec {
        sims,
        time_scale: 1.0,
        webhooks: false,
        defer_sims: false,
    })
    .await?;
    let setups = adgate::providers::build(&world.settings()?)?;
    let started = Instant::now();
    let mut jobs: Vec<NewJob> = Vec::new();
    let mut patches: Vec<JobPatch> = Vec::new();
    let deadline = now_ms() + 24 * 3600 * 1000;
    let mut next_id = 0u64;
    for (provider, count) in MIX {
        let Some(setup) = setups.iter().find(|s| s.generator.name() == provider) else {
            return Err(format!("provider {provider} not built").into());
        };
        let generator = setup.generator.clone();
        let per_call = setup.limits.max_items_per_submit.max(1) as u64;
        let mut calls = Vec::new();
        let mut i = 0u64;
        while i < count {
            let n = per_call.min(count - i);
            let mut items = Vec::new();
            for k in 0..n {
                let spec = world::job_for(provider, i + k);
                let Some((_, json)) = adgate::spec_json::provider_spec(&spec, &mut Vec::new())
                else {
                    continue;
                };
                next_id += 1;
                items.push(SubmitItem {
                    job_id: format!("job_{next_id:020x}"),
                    spec: json,
                });
            }
            calls.push(SubmitBatch {
                idempotency_key: format!("seed-{provider}-{i}"),
                items,
            });
            i += n;
        }
        let results: Vec<_> = futures_util::stream::iter(calls.into_iter().map(|batch| {
            let g = generator.clone();
            async move {
                let specs: Vec<_> = batch.items.clone();
                g.submit(batch).await.map(|o| (specs, o.value))
            }
        }))
        .buffer_unordered(32)
        .collect()
        .await;
        for r in results {
            let (items, accepted) = r.map_err(|e| format!("seeding {provider}: {e}"))?;
            for (item, acc) in items.into_iter().zip(accepted) {
                jobs.push(NewJob {
                    id: item.job_id.clone(),
                    provider: provider.to_owned(),
                    group_key: generator.group_key(&item.spec),
                    correlation_key: generator.correlation_key(&item.spec),
                    spec: item.spec,
                    client_ref: String::new(),
                    labels: Default::default(),
                    deadline_at_ms: deadline,
                    priority: adgate_store::DEFAULT_PRIORITY,
                    cost: None,
                    traceparent: None,
                });
                patches.push(JobPatch {
                    state: Some(JobState::Processing),
                    poll_key: Some(generator.poll_key(&acc.provider_ref)),
                    provider_ref: Some(acc.provider_ref),
                    ..JobPatch::new(item.job_id)
                });
            }
        }
    }
    let at_sims = started.elapsed();
    let store = SqliteStore::open(&world.database_url()).await?;
    let total = jobs.len() as u64;
    let mut n = 0;
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        let chunk: Vec<NewJob> = jobs.by_ref().take(1000).collect();
        n += 1;
        store
            .submit(NewSubmission {
                batch_id: format!("bat_seed{n:016}"),
                caller: adgate_store::ANONYMOUS.to_owned(),
                request_id: None,
                content_hash: String::new(),
                jobs: chunk,
                now_ms: now_ms(),
                notify: None,
            })
            .await?;
    }
    let mut patches = patches.into_iter().peekable();
    while patches.peek().is_some() {
        let chunk: Vec<JobPatch> = patches.by_ref().take(1000).collect();
        store.apply(chunk, now_ms()).await?;
    }
    store.close().await;
    let summary = format!(
        "{total} jobs (staticadslab 30k, pictify 50k in 500 batches, abyssale 20k): {:.1} s at the simulators, {:.1} s into the store",
        at_sims.as_secs_f64(),
        (started.elapsed() - at_sims).as_secs_f64()
    );
    Ok((
        world,
        Seeded {
            jobs: total,
            summary,
        },
    ))
}
