//! Time, injected where logic depends on it (the coordinator's leases and
//! placement book, the writers' token buckets), so that expiry, growth and
//! cuts have fast, deterministic unit tests on a [`ManualClock`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A monotonic clock, and the wall time where logic compares with times a
/// store recorded (an output lock's last renewal).
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;

    fn wall(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

/// The process's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The system clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    wall_start: chrono::DateTime<chrono::Utc>,
    offset: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            wall_start: chrono::Utc::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn advance(&self, by: Duration) {
        let mut offset = match self.offset.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *offset += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let offset = match self.offset.lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        };
        self.start + offset
    }

    fn wall(&self) -> chrono::DateTime<chrono::Utc> {
        let offset = match self.offset.lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        };
        self.wall_start + chrono::TimeDelta::from_std(offset).unwrap_or(chrono::TimeDelta::MAX)
    }
}
