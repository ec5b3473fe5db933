//! The batches list: the newest batches with their counts and cost.

use adgate_engine::Engine;

use super::pages::BatchRow;

/// The newest batches first, and a note to show above them (empty when there is none).
pub async fn recent(_engine: &Engine) -> (Vec<BatchRow>, String) {
    (
        Vec::new(),
        "Listing batches needs the engine's batch listing, which this build lacks; open a batch \
         by its id at /ui/batches/<id>."
            .to_owned(),
    )
}
