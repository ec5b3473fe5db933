//! `adgate-bench`: measures the gateway with one command and prints one table.
//!
//! ```text
//! cargo run --release -p adgate-bench -- all
//! cargo run --release -p adgate-bench -- <echo|submit1|submit100|read|watch|inflight|restart|providers|postgres|takeover|search|retention>
//! ```
//!
//! Every server under test (the gateway, and a bare tonic `grpc.health.v1.Health/Check` echo
//! server used as the baseline) runs as a child process of this binary with two tokio workers,
//! so its RSS and CPU come from `/proc/<pid>`. Provider simulators and the tonic load client run
//! in this process. Throughput is reported as a ratio to the echo baseline of the same run.

#![allow(clippy::print_stdout)]

mod load;
mod proc;
mod replicas;
mod report;
mod retention;
mod scenarios;
mod search;
mod seed;
mod world;

use std::process::ExitCode;
use std::time::Instant;

use scenarios::Ctx;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SCENARIOS: &[&str] = &[
    "echo",
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

fn usage() -> String {
    format!(
        "usage: adgate-bench <all|{}>... (each bounded; `all` runs every scenario)",
        SCENARIOS.join("|")
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
    for a in &args {
        match a.as_str() {
            "all" => wanted.extend(SCENARIOS),
            s if SCENARIOS.contains(&s) => wanted.push(s),
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
    let mut ctx = Ctx::default();
    let mut failed = false;
    let started = Instant::now();
    rt.block_on(async {
        for s in wanted {
            eprintln!("== {s}");
            let t = Instant::now();
            let r = match s {
                "echo" => scenarios::echo(&mut ctx).await,
                "submit1" => scenarios::submit1(&mut ctx).await,
                "submit100" => scenarios::submit100(&mut ctx).await,
                "read" => scenarios::read(&mut ctx).await,
                "watch" => scenarios::watch(&mut ctx).await,
                "inflight" => scenarios::in_flight(&mut ctx, true).await,
                "restart" => scenarios::in_flight(&mut ctx, false).await,
                "postgres" => replicas::postgres(&mut ctx).await,
                "takeover" => replicas::takeover(&mut ctx).await,
                "search" => search::search(&mut ctx).await,
                "retention" => retention::retention(&mut ctx).await,
                _ => scenarios::providers(&mut ctx).await,
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
    });
    println!();
    println!(
        "adgate-bench: {} cores, client and servers on loopback, total {:.0} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    println!();
    print!("{}", ctx.report.render());
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
