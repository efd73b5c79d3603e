//! Time, injectable. Record timestamps are wall-clock UTC; timers use tokio's monotonic clock.
//! A test injects its own [`Clock`] (e.g. one shifted hours ahead) instead of waiting.

use tokio::time::Instant;

pub trait Clock: Send + Sync + 'static {
    /// Wall-clock UTC in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Monotonic time for timers.
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}
