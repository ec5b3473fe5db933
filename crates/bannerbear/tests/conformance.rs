//! The shared conformance suite, run against the Bannerbear (v5) simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use adgate_bannerbear::{Bannerbear, BannerbearConfig};
use adgate_generator::Generator;
use adgate_sim::conformance::Target;
use adgate_sim::{SimConfig, SimHandle, bannerbear};
use async_trait::async_trait;
use serde_json::{Value, json};

struct BannerbearTarget;

#[async_trait]
impl Target for BannerbearTarget {
    async fn start(&self, cfg: SimConfig) -> (SimHandle, Arc<dyn Generator>) {
        let api_key = cfg.api_key.clone();
        let sim = bannerbear::spawn(cfg).await.expect("sim starts");
        let adapter = Bannerbear::new(BannerbearConfig {
            base_url: sim.base_url.clone(),
            ..BannerbearConfig::new(api_key)
        })
        .expect("adapter config");
        (sim, Arc::new(adapter))
    }

    /// The canvas size is given: the v5 Image object states no output size [V5-SPEC] §6, so
    /// the adapter can only report one the spec fixed.
    fn spec(&self, i: usize) -> Value {
        json!({
            "template": "A89wavQyY3Bebk3djP",
            "modifications": {
                "template": {"width": 1200, "height": 628},
                "objects": [{"name": "headline", "attributes": {"text": format!("Conformance {i}")}}],
            },
            "formats": ["png", "jpg"],
        })
    }
}

adgate_sim::conformance_tests!(BannerbearTarget);
