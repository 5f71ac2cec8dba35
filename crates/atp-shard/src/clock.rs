//! The node's clock: wall-clock milliseconds that advance with tokio's clock,
//! so paused tokio time in tests drives hold expiry without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch, advancing with `tokio::time::Instant`.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_ms: i64,
    start: Instant,
}

impl Clock {
    /// A clock reading the system time now and advancing with tokio's clock.
    pub fn system() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self::starting_at(base_ms)
    }

    /// A clock that reads `base_ms` now.
    pub fn starting_at(base_ms: i64) -> Self {
        Self { base_ms, start: Instant::now() }
    }

    /// The current time in ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_ms.saturating_add(elapsed)
    }

    /// The tokio instant at which the clock will read `at_ms`.
    pub fn instant_at(&self, at_ms: i64) -> Instant {
        let offset = at_ms.saturating_sub(self.base_ms).max(0);
        self.start + Duration::from_millis(u64::try_from(offset).unwrap_or(0))
    }
}
