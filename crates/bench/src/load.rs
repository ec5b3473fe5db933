//! A closed-loop load generator: `concurrency` callers, each issuing one call at a time over
//! a small pool of HTTP/2 connections, for a warm-up and then a measured window. Latencies of
//! calls that finish inside the window are kept (microseconds) and sorted for percentiles.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::Res;

/// HTTP/2 connections shared by the callers of one run.
pub const CONNECTIONS: usize = 4;

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub ok: u64,
    pub errors: u64,
    pub secs: f64,
    /// Sorted latencies of successful calls, in microseconds.
    pub lat_us: Vec<u64>,
}

impl Stats {
    pub fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Percentile `q` (0–1) in milliseconds.
    pub fn p_ms(&self, q: f64) -> f64 {
        percentile(&self.lat_us, q) as f64 / 1000.0
    }
}

/// Value at quantile `q` of a sorted slice (nearest rank).
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub async fn connect(url: &str, n: usize) -> Res<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        out.push(ch);
    }
    Ok(out)
}

/// Run `call` from `concurrency` callers. `call(channel, caller, seq)` returns whether the call
/// succeeded.
pub async fn closed_loop<F, Fut>(
    channels: &[Channel],
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    call: F,
) -> Stats
where
    F: Fn(Channel, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let channels = channels.to_vec();
    closed_loop_fn(concurrency, warmup, measure, move |caller, seq| {
        call(channels[caller % channels.len()].clone(), caller, seq)
    })
    .await
}

/// The closed loop without gRPC: `call(caller, seq)` is any operation (the SQLite driver
/// measurement drives in-process writers and readers with it).
pub async fn closed_loop_fn<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    call: F,
) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now() + warmup;
    let end = start + measure;
    let mut tasks = Vec::with_capacity(concurrency);
    for caller in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut seq = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let good = call(caller, seq).await;
                seq += 1;
                let t1 = Instant::now();
                if t0 >= start && t1 <= end {
                    if good {
                        ok += 1;
                        lat.push(t1.duration_since(t0).as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (ok, errors, lat)
        }));
    }
    drop(call);
    let mut stats = Stats {
        secs: measure.as_secs_f64(),
        ..Stats::default()
    };
    for t in tasks {
        if let Ok((ok, errors, lat)) = t.await {
            stats.ok += ok;
            stats.errors += errors;
            stats.lat_us.extend(lat);
        }
    }
    stats.lat_us.sort_unstable();
    stats
}
