//! The shared adapter conformance suite, run against the StaticAdsLab simulator.
// Test code: a failed unwrap is a failed assertion (clippy.toml only exempts #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use adgate_generator::Generator;
use adgate_sim::conformance::Target;
use adgate_sim::{SimConfig, SimHandle};
use adgate_staticadslab::{StaticAdsLab, StaticAdsLabConfig};
use async_trait::async_trait;
use serde_json::{Value, json};

struct StaticAdsLabTarget;

#[async_trait]
impl Target for StaticAdsLabTarget {
    async fn start(&self, cfg: SimConfig) -> (SimHandle, Arc<dyn Generator>) {
        let sim = adgate_sim::staticadslab::spawn(cfg.clone()).await.unwrap();
        let adapter = StaticAdsLab::new(StaticAdsLabConfig {
            api_key: cfg.api_key,
            base_url: sim.base_url.clone(),
            request_timeout: Duration::from_secs(5),
            ids_per_poll: 80,
        })
        .unwrap();
        (sim, Arc::new(adapter))
    }

    fn spec(&self, i: usize) -> Value {
        json!({
            "design_template_id": format!("dt_{i:016x}"),
            "brand_id": "brand_a1b2c3d4e5f67890",
            "product_id": "prod_a1b2c3d4e5f67890",
            "audience_id": "aud_a1b2c3d4e5f67890",
            "prompt": "conformance",
        })
    }
}

adgate_sim::conformance_tests!(StaticAdsLabTarget);
