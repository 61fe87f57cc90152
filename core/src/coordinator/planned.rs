//! The writes the scheduler planned: the only ones whose placements
//! (`/v1/chunks`) and DynamoDB leases the coordinator serves. The planner
//! registers a write's id when it plans the write's operators, in the
//! scheduler's process, so a client that reaches the coordinator's port
//! cannot invent writers or throttles for a write that does not exist
//! (write ids are random 128-bit values).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// Writes remembered at once; past this the oldest are forgotten first.
pub const MAX_PLANNED_WRITES: usize = 100_000;
/// How long a planned write is served after it was planned.
pub const PLANNED_TTL: Duration = Duration::from_secs(48 * 3600);

/// The registry; cheap to clone. Without one (`None` where it is held),
/// every write is served: unit tests of one route, a coordinator in a
/// process without a planner.
#[derive(Clone)]
pub struct PlannedWrites {
    writes: Arc<Mutex<HashMap<String, Instant>>>,
    clock: Arc<dyn Clock>,
}

impl PlannedWrites {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            writes: Arc::default(),
            clock,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Instant>) -> T) -> T {
        let mut guard = match self.writes.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Serves `write_id` from now on.
    pub fn register(&self, write_id: &str) {
        let now = self.clock.now();
        self.with(|writes| {
            writes.retain(|_, at| now.duration_since(*at) < PLANNED_TTL);
            if writes.len() >= MAX_PLANNED_WRITES
                && !writes.contains_key(write_id)
                && let Some(oldest) = writes
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(w, _)| w.clone())
            {
                writes.remove(&oldest);
            }
            writes.insert(write_id.to_string(), now);
        });
    }

    pub fn knows(&self, write_id: &str) -> bool {
        let now = self.clock.now();
        self.with(|writes| {
            writes
                .get(write_id)
                .is_some_and(|at| now.duration_since(*at) < PLANNED_TTL)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn planned_writes_are_known_until_their_ttl() {
        let clock = ManualClock::new();
        let planned = PlannedWrites::new(clock.clone());
        assert!(!planned.knows("w"));
        planned.register("w");
        assert!(planned.knows("w"));
        clock.advance(PLANNED_TTL);
        assert!(!planned.knows("w"));
    }
}
