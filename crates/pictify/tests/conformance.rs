//! The shared adapter conformance suite, run against the Pictify simulator.

// Test helpers outside #[test] fns unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use adgate_generator::Generator;
use adgate_pictify::{Pictify, PictifyConfig};
use adgate_sim::conformance::Target;
use adgate_sim::{SimConfig, SimHandle};
use async_trait::async_trait;
use serde_json::{Value, json};

struct PictifyTarget;

#[async_trait]
impl Target for PictifyTarget {
    async fn start(&self, cfg: SimConfig) -> (SimHandle, Arc<dyn Generator>) {
        let key = cfg.api_key.clone();
        let sim = adgate_sim::pictify::spawn(cfg).await.unwrap();
        let mut pc = PictifyConfig::new(key);
        pc.base_url = sim.base_url.clone();
        pc.request_timeout = Duration::from_secs(5);
        let adapter = Pictify::new(pc).unwrap();
        (sim, Arc::new(adapter))
    }

    fn spec(&self, i: usize) -> Value {
        json!({"template_uid": "tmpl_conformance", "variables": {"title": format!("Post {i}")}})
    }

    /// Pictify's poll carries no URLs; without webhooks a rendered item ends Failed
    /// (`OUTPUT_URL_UNAVAILABLE`). The webhook path is covered in `tests/sim.rs`.
    fn poll_completes(&self) -> bool {
        false
    }
}

adgate_sim::conformance_tests!(PictifyTarget);
