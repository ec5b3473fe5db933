//! The batches list: the newest batches (one page of the engine's `list_batches`, the store
//! query behind `ListBatches`) with their counts per state and completed cost. A signed-in
//! caller sees its own batches, as `ListBatches` shows them; without auth, every batch.

use std::collections::BTreeMap;

use adgate_engine::BatchFilter;
use adgate_engine::Engine;

use super::api::{Money, STATES, Totals};
use super::pages::BatchRow;
use crate::auth::Caller;

/// Batches the list shows (the newest).
pub const SHOWN: usize = 50;

/// The callers whose batches `caller` may see (empty: everyone's), as `ListBatches` decides.
pub fn visible_callers(caller: &Caller) -> Vec<String> {
    if caller.0 == adgate_engine::ANONYMOUS {
        Vec::new()
    } else {
        vec![caller.0.clone()]
    }
}

/// The newest batches first, and a note for the page (empty when there is none).
pub async fn recent(engine: &Engine, caller: &Caller) -> (Vec<BatchRow>, String) {
    let filter = BatchFilter {
        callers: visible_callers(caller),
        ..BatchFilter::default()
    };
    match engine.list_batches(&filter, None, SHOWN).await {
        Ok(page) => {
            let rows = page
                .items
                .into_iter()
                .map(|b| {
                    let mut counts: BTreeMap<&'static str, usize> =
                        STATES.iter().map(|s| (s.name(), 0)).collect();
                    for (s, n) in &b.counts {
                        counts.insert(s.name(), usize::try_from(*n).unwrap_or(usize::MAX));
                    }
                    BatchRow {
                        batch_id: b.id,
                        created_at_ms: b.created_at_ms,
                        totals: Totals {
                            jobs: usize::try_from(b.job_count).unwrap_or(0),
                            counts,
                            cost: b
                                .cost
                                .into_iter()
                                .map(|(currency, micros)| Money { currency, micros })
                                .collect(),
                        },
                    }
                })
                .collect();
            let note = if page.next.is_some() {
                format!("The newest {SHOWN} batches; older ones open by id.")
            } else {
                String::new()
            };
            (rows, note)
        }
        Err(e) => {
            tracing::warn!(error = %e, "console: listing batches failed");
            (
                Vec::new(),
                "The job store cannot be read right now; the list will come back.".to_owned(),
            )
        }
    }
}
