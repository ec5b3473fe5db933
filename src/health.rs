//! `grpc.health.v1`: `""` and `adgate.v1.GatewayService` for the gateway, and
//! `adgate.provider.<name>` per configured provider (SERVING while reachable). Refreshed in the
//! background; flipped to NOT_SERVING and then cleared (which ends health `Watch` streams) on
//! drain.

use std::sync::Arc;
use std::time::Duration;

use adgate_engine::Engine;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Service name of the gateway itself.
pub const GATEWAY_SERVICE: &str = "adgate.v1.GatewayService";
const REFRESH_EVERY: Duration = Duration::from_secs(5);

pub fn provider_service(name: &str) -> String {
    format!("adgate.provider.{name}")
}

struct State {
    reporter: HealthReporter,
    draining: bool,
}

/// Cheap-clone handle over the health reporter.
#[derive(Clone)]
pub struct Health {
    // A tokio Mutex so a refresh and the drain never interleave (a refresh after drain began
    // would flip a name back to SERVING).
    state: Arc<Mutex<State>>,
    engine: Engine,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

impl Health {
    pub fn new(reporter: HealthReporter, engine: Engine) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                reporter,
                draining: false,
            })),
            engine,
        }
    }

    fn names(&self) -> Vec<(String, bool)> {
        // A replica that cannot reach its database stops claiming work: not serving.
        let up = self.engine.store_ok();
        let mut v = vec![(String::new(), up), (GATEWAY_SERVICE.to_owned(), up)];
        v.extend(
            self.engine
                .providers()
                .into_iter()
                .map(|p| (provider_service(&p.name), p.reachable)),
        );
        v
    }

    /// Set every name from the engine's view (no-op once draining).
    pub async fn refresh(&self) {
        let state = self.state.lock().await;
        if state.draining {
            return;
        }
        for (name, ok) in self.names() {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            state.reporter.set_service_status(&name, status).await;
        }
    }

    /// Refresh every few seconds until `stop`.
    pub fn spawn_refresher(&self, stop: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => this.refresh().await,
                }
            }
        });
    }

    /// NOT_SERVING for every name, then clear them so health `Watch` streams end.
    pub async fn drain(&self) {
        let mut state = self.state.lock().await;
        state.draining = true;
        let names = self.names();
        for (name, _) in &names {
            state
                .reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        for (name, _) in &names {
            state.reporter.clear_service_status(name).await;
        }
    }
}
