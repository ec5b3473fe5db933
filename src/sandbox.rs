//! `--sandbox`: every provider's simulator in-process on loopback, with per-run random keys
//! and webhook secrets, webhooks delivered to this gateway's HTTP listener, and the world
//! sped up twenty times. Anything configured explicitly still wins: a provider with an
//! explicit base URL is left alone, and an explicit key, secret, public URL or time scale is
//! used as given.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use adgate_sim::{SimConfig, SimHandle, WebhookTarget};
use tokio::net::TcpListener;

use crate::config::{Secret, Settings};

/// Simulated time runs twenty times faster: jobs take 1.5–3 s.
pub const SANDBOX_TIME_SCALE: f64 = 0.05;

/// The running simulators. They stop when this is dropped.
#[derive(Debug, Default)]
pub struct Sandbox {
    pub sims: Vec<(String, SimHandle)>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for (_, h) in self.sims.drain(..) {
            h.shutdown();
        }
    }
}

/// `n` random lowercase hex characters (std's per-process random hasher keys; no crypto
/// needed: these only have to differ between runs and not be guessable from outside).
fn random_hex(n: usize) -> String {
    let mut s = String::with_capacity(n + 16);
    while s.len() < n {
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_usize(s.len());
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s.truncate(n);
    s
}

/// Start one simulator. A provider without a simulator returns `None`.
async fn spawn(
    name: &str,
    listener: TcpListener,
    cfg: SimConfig,
) -> Option<std::io::Result<SimHandle>> {
    let entry = adgate_sim::simulator(name)?;
    Some((entry.spawn_on)(listener, cfg).await)
}

/// The address the simulators deliver webhooks to (loopback when listening on all interfaces).
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// Start the simulators and point `settings` at them. `http_addr` is the bound HTTP listener.
pub async fn start(
    settings: &mut Settings,
    http_addr: SocketAddr,
    sim_time_scale: f64,
) -> std::io::Result<Sandbox> {
    let http = reachable(http_addr);
    let mut sandbox = Sandbox::default();
    if settings.public_url.is_none() {
        settings.public_url = Some(format!("http://{http}"));
    }
    if settings.time_scale.is_none() {
        settings.time_scale = Some(sim_time_scale);
    }
    let names: Vec<String> = settings.providers.keys().cloned().collect();
    for name in names {
        let Some(p) = settings.providers.get_mut(&name) else {
            continue;
        };
        if p.base_url.is_some() {
            continue;
        }
        let key = p
            .api_key
            .clone()
            .unwrap_or_else(|| Secret::new(format!("sbx_{}", random_hex(24))));
        let secret = p
            .webhook_secret
            .clone()
            .unwrap_or_else(|| Secret::new(format!("whsec_{}", random_hex(64))));
        let cfg = SimConfig {
            api_key: key.expose().to_owned(),
            time_scale: sim_time_scale,
            webhook: Some(WebhookTarget {
                url: format!("http://{http}/webhooks/{name}"),
                secret: secret.expose().to_owned(),
            }),
            seed: u64::from_str_radix(&random_hex(12), 16).unwrap_or(42),
            ..SimConfig::default()
        };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        // A provider without a simulator stays as configured.
        let Some(handle) = spawn(&name, listener, cfg).await else {
            continue;
        };
        let handle = handle?;
        p.api_key = Some(key);
        p.webhook_secret = Some(secret);
        p.base_url = Some(handle.base_url.clone());
        sandbox.sims.push((name, handle));
    }
    let urls: Vec<String> = sandbox
        .sims
        .iter()
        .map(|(n, h)| format!("{n}={}", h.base_url))
        .collect();
    tracing::info!(simulators = %urls.join(" "), "sandbox: provider simulators running");
    Ok(sandbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_differs_and_has_length() {
        let a = random_hex(64);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(64));
    }
}
