//! The shared conformance suite, run against the Abyssale simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use adgate_abyssale::{Abyssale, AbyssaleConfig};
use adgate_generator::Generator;
use adgate_sim::conformance::Target;
use adgate_sim::{SimConfig, SimHandle, abyssale};
use async_trait::async_trait;
use serde_json::{Value, json};

struct AbyssaleTarget;

#[async_trait]
impl Target for AbyssaleTarget {
    async fn start(&self, cfg: SimConfig) -> (SimHandle, Arc<dyn Generator>) {
        let api_key = cfg.api_key.clone();
        let sim = abyssale::spawn(cfg).await.expect("sim starts");
        let adapter = Abyssale::new(AbyssaleConfig {
            base_url: sim.base_url.clone(),
            ..AbyssaleConfig::new(api_key)
        })
        .expect("adapter config");
        (sim, Arc::new(adapter))
    }

    fn spec(&self, i: usize) -> Value {
        json!({
            "design_id": "840420c2-7bd9-45c4-a7cb-c741b16edfcf",
            "format_names": ["facebook-feed", "iab-medium"],
            "elements": {"primary_text": {"payload": format!("Conformance {i}")}},
        })
    }
}

adgate_sim::conformance_tests!(AbyssaleTarget);
