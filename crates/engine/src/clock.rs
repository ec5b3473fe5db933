//! Wall-clock milliseconds that advance with tokio's clock.
//!
//! Stored timestamps and deadlines are Unix milliseconds, but tests run the engine under
//! `tokio::time::pause()`. Anchoring the wall clock once and adding tokio's elapsed time keeps
//! both views consistent: a paused test that advances 15 minutes sees deadlines expire.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor_ms: i64,
    anchor: Instant,
}

impl Clock {
    pub fn new() -> Self {
        let anchor_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self {
            anchor_ms,
            anchor: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.anchor_ms + self.anchor.elapsed().as_millis() as i64
    }

    /// The wall-clock time corresponding to now, for webhook timestamp checks.
    pub fn now_system(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_millis(self.now_ms().max(0) as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
