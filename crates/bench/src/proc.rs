//! Servers under test run as child processes (this same binary, with a hidden first argument),
//! so their RSS and CPU time can be read from `/proc/<pid>` without the load generator's own
//! memory and threads in the figures. Each child prints `READY <grpc addr> <http addr>` once
//! it serves, and exits when its stdin closes (or when it is killed).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::Res;

/// Worker threads of every server under test: the machine's two cores.
pub const SERVER_WORKERS: usize = 2;

/// A running server child.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pub grpc: String,
    /// From `spawn` to the `READY` line (process start, store open, engine resume, bind).
    pub ready_after: Duration,
}

impl Proc {
    /// Start `mode` (`__echo` or `__gateway`) with extra environment variables.
    pub async fn spawn(mode: &str, env: &[(String, String)]) -> Res<Self> {
        let exe = std::env::current_exe()?;
        let started = Instant::now();
        let mut child = Command::new(exe)
            .arg(mode)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("child has no stdout")?;
        let read = tokio::task::spawn_blocking(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let n = r.read_line(&mut line);
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink);
            });
            n.map(|_| line)
        });
        let line = match tokio::time::timeout(Duration::from_secs(120), read).await {
            Ok(Ok(Ok(line))) => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{mode} child did not become ready").into());
            }
        };
        let ready_after = started.elapsed();
        let mut parts = line.split_whitespace();
        if parts.next() != Some("READY") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{mode} child failed to start: {line:?}").into());
        }
        let grpc = parts.next().ok_or("READY line without address")?;
        Ok(Self {
            child,
            grpc: format!("http://{grpc}"),
            ready_after,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (`VmRSS`).
    pub fn rss(&self) -> Res<u64> {
        rss_of(self.pid())
    }

    /// User + system CPU time consumed so far.
    pub fn cpu(&self) -> Res<Duration> {
        cpu_of(self.pid())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_of(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    let kb: u64 = line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?;
    Ok(kb * 1024)
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

pub fn cpu_of(pid: u32) -> Res<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').ok_or("bad stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).ok_or("bad stat")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("bad stat")?.parse()?;
    let ticks = clock_ticks_per_sec();
    Ok(Duration::from_millis((utime + stime) * 1000 / ticks))
}

/// A free loopback port for a child to bind (see `adgate_sim::free_port`).
pub fn free_port() -> Res<u16> {
    Ok(adgate_sim::free_port()?)
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SERVER_WORKERS)
        .enable_all()
        .build()?)
}

/// Resolves when the parent closes our stdin (or dies).
async fn parent_gone() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
}

fn ready(grpc: SocketAddr, http: Option<SocketAddr>) {
    let http = http.map_or_else(|| "-".to_owned(), |a| a.to_string());
    println!("READY {grpc} {http}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// `__echo`: the baseline. `grpc.health.v1.Health/Check` on a plain tonic server with the
/// same transport settings as the gateway (TCP_NODELAY, same worker count).
pub fn run_echo() -> Res<()> {
    runtime()?.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (_reporter, health) = tonic_health::server::health_reporter();
        ready(addr, None);
        Server::builder()
            .tcp_nodelay(true)
            .add_service(health)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                parent_gone(),
            )
            .await?;
        Ok(())
    })
}

/// `__gateway`: the real gateway (`adgate::App` + `adgate::serve`), configured exactly as the
/// binary would be: TOML text from `ADGATE_BENCH_TOML`, then the `ADGATE_*` environment.
pub fn run_gateway() -> Res<()> {
    runtime()?.block_on(async {
        if std::env::var_os("ADGATE_BENCH_LOG").is_some() {
            eprintln!("adgate-bench: gateway child pid {}", std::process::id());
        }
        let toml = std::env::var("ADGATE_BENCH_TOML").unwrap_or_default();
        let env = |k: &str| std::env::var(k).ok();
        let settings = adgate::config::Settings::from_toml(false, &toml, &env)?;
        let grpc = TcpListener::bind(settings.grpc_addr).await?;
        let http = TcpListener::bind(settings.http_addr).await?;
        let (ga, ha) = (grpc.local_addr()?, http.local_addr()?);
        let app = adgate::App::start(&settings).await?;
        ready(ga, Some(ha));
        adgate::serve(grpc, http, app, parent_gone()).await?;
        Ok(())
    })
}
