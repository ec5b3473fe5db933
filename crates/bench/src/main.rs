//! `adgate-bench`: measures the gateway with one command and prints one table.
//!
//! ```text
//! cargo run --release -p adgate-bench -- all [--runs N]
//! cargo run --release -p adgate-bench -- <echo|pgbench|submit1|submit100|read|watch|inflight|restart|providers|postgres|takeover|search|retention>... [--runs N]
//! cargo run --release -p adgate-bench -- sqlite-driver     # issue 16's driver measurement, not in `all`
//! ```
//!
//! Every server under test (the gateway, and a bare tonic `grpc.health.v1.Health/Check` echo
//! server used as the baseline) runs as a child process of this binary with two tokio workers,
//! so its RSS and CPU come from `/proc/<pid>`. Provider simulators and the tonic load client run
//! in this process. Throughput is reported as a ratio to the baselines of the same run (echo, and
//! issue 16's pgbench single-insert baseline). `--runs N` repeats the list N times and ends with
//! a summary: each figure's N values and how many met the target.

#![allow(clippy::print_stdout)]

mod load;
mod pgbench;
mod pgdb;
mod proc;
mod providers;
mod replicas;
mod report;
mod retention;
mod scenarios;
mod search;
mod seed;
mod sqlite_driver;
mod world;

use std::process::ExitCode;
use std::time::Instant;

use scenarios::Ctx;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SCENARIOS: &[&str] = &[
    "echo",
    // Before the scenarios whose targets are ratios to it (submit1, postgres).
    "pgbench",
    "submit1",
    "submit100",
    "read",
    "watch",
    "inflight",
    "restart",
    "providers",
    "postgres",
    "takeover",
    "search",
    "retention",
];

/// Scenarios that `all` leaves out (they measure a design choice, not the gateway).
const EXTRA: &[&str] = &["sqlite-driver"];

fn usage() -> String {
    format!(
        "usage: adgate-bench <all|{}|{}>... [--runs N] (each bounded; `all` runs every scenario but {})",
        SCENARIOS.join("|"),
        EXTRA.join("|"),
        EXTRA.join(", ")
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let child = match args.first().map(String::as_str) {
        Some("__echo") => Some(proc::run_echo()),
        Some("__gateway") => Some(proc::run_gateway()),
        _ => None,
    };
    if let Some(r) = child {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("adgate-bench child: {e}");
                println!("FAILED {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut wanted: Vec<&str> = Vec::new();
    let mut runs = 1usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "all" => wanted.extend(SCENARIOS),
            "--runs" => match it.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0) {
                Some(n) => runs = n,
                None => {
                    eprintln!("--runs needs a positive number\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            s if SCENARIOS.contains(&s) || EXTRA.contains(&s) => wanted.push(s),
            _ => {
                eprintln!("{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    if wanted.is_empty() {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    }
    // `inflight` also measures the restart; don't seed twice.
    if wanted.contains(&"inflight") {
        wanted.retain(|s| *s != "restart");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(proc::SERVER_WORKERS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the client runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut reports = Vec::with_capacity(runs);
    let mut failed = false;
    for run in 1..=runs {
        if runs > 1 {
            eprintln!("==== run {run} of {runs}");
        }
        let started = Instant::now();
        // Every run measures its own baselines: the targets compare figures of the same run.
        let mut ctx = Ctx::default();
        failed |= rt.block_on(run_list(&mut ctx, &wanted));
        println!();
        if runs > 1 {
            println!("## run {run} of {runs}");
            println!();
        }
        println!(
            "adgate-bench: {} cores, client and servers on loopback, total {:.0} s",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            started.elapsed().as_secs_f64()
        );
        println!();
        print!("{}", ctx.report.render());
        reports.push(ctx.report);
    }
    if runs > 1 {
        println!();
        println!("## summary of {runs} runs");
        println!();
        print!("{}", report::summary(&reports));
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the scenarios in order into `ctx`; true when one of them failed (its row says why).
async fn run_list(ctx: &mut Ctx, wanted: &[&str]) -> bool {
    let mut failed = false;
    for &s in wanted {
        eprintln!("== {s}");
        let t = Instant::now();
        let r = match s {
            "echo" => scenarios::echo(ctx).await,
            "pgbench" => pgbench::pgbench(ctx).await,
            "submit1" => scenarios::submit1(ctx).await,
            "submit100" => scenarios::submit100(ctx).await,
            "read" => scenarios::read(ctx).await,
            "watch" => scenarios::watch(ctx).await,
            "inflight" => scenarios::in_flight(ctx, true).await,
            "restart" => scenarios::in_flight(ctx, false).await,
            "postgres" => replicas::postgres(ctx).await,
            "takeover" => replicas::takeover(ctx).await,
            "search" => search::search(ctx).await,
            "retention" => retention::retention(ctx).await,
            "sqlite-driver" => sqlite_driver::sqlite_driver(ctx).await,
            _ => providers::providers(ctx).await,
        };
        if let Err(e) = r {
            failed = true;
            ctx.report.row(
                s,
                "scenario failed",
                e.to_string(),
                "-",
                report::Verdict::Missed,
            );
        }
        eprintln!("   ({:.1} s)", t.elapsed().as_secs_f64());
    }
    failed
}
