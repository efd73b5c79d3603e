//! Time, injectable. Record timestamps are wall-clock UTC; timers use tokio's monotonic clock,
//! so a test can pause tokio time and advance it instead of sleeping through a TTL.

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

/// A wall clock that moves only with tokio's (possibly paused) clock: for tests.
pub struct TokioClock {
    base_ms: i64,
    base: Instant,
}

impl TokioClock {
    pub fn new(base_ms: i64) -> TokioClock {
        TokioClock {
            base_ms,
            base: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + Instant::now().duration_since(self.base).as_millis() as i64
    }
}
