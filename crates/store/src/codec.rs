//! The JSON encoding of stored columns, shared by both backends.

use adgate_generator::Progress;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Result, StoreError};

/// Serialises a value for a JSON column. The model types cannot fail to serialise (no maps
/// with non-string keys, non-finite floats are written as `null` and sanitised before); the
/// error path exists only so that nothing here can panic.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode {what} as JSON: {e}")))
}

/// A progress value that is safe to store: JSON has no NaN or infinity, so a non-finite
/// percentage would be written as `null` and could never be read back. Adapters normalise to
/// 0–100; this is the last line of defence so that bad input never corrupts stored state.
pub(crate) fn sanitize_progress(mut progress: Progress) -> Progress {
    if !progress.percentage.is_finite() {
        progress.percentage = if progress.percentage == f64::INFINITY {
            100.0
        } else {
            0.0
        };
    }
    progress
}

/// Decodes a JSON column of job `id`; a bad value is reported as corruption, never a panic.
pub(crate) fn from_json<T: DeserializeOwned>(text: &str, id: &str, column: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("job {id}: column {column} is not valid: {e}")))
}

pub(crate) fn opt_from_json<T: DeserializeOwned>(
    text: Option<String>,
    id: &str,
    column: &str,
) -> Result<Option<T>> {
    text.map(|t| from_json(&t, id, column)).transpose()
}

/// A kept event from its columns (both backends store the event as JSON text).
pub(crate) fn kept_event(
    id: i64,
    provider: String,
    delivery_id: Option<String>,
    event: &str,
    kept_at_ms: i64,
    expires_at_ms: i64,
) -> Result<crate::model::KeptEvent> {
    Ok(crate::model::KeptEvent {
        event: from_json(event, &format!("kept event {id}"), "event")?,
        id,
        provider,
        delivery_id,
        kept_at_ms,
        expires_at_ms,
    })
}
