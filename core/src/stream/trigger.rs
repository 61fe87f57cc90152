//! When batches run. `Every(interval)` is Spark's ProcessingTime with
//! Spark Streaming's delays: batch k is due at `due(k-1) + interval`; a
//! batch that overruns its interval is followed at once, and the next
//! batch's scheduling delay (start - due) then shows how far the stream is
//! behind its schedule, growing while processing is slower than the
//! interval and shrinking while it catches up. A due time with no new input
//! runs no batch; the schedule then moves to the next interval after now.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A batch every interval while there is input; runs until stopped.
    Every(Duration),
    /// One batch over what is there (if anything), then exit.
    Once,
    /// Batches (each capped) until what was there at the start is done.
    AvailableNow,
}

impl Trigger {
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Trigger::Every(d) => Some(*d),
            _ => None,
        }
    }

    /// The due time of the batch after one due at `due` that ran.
    pub fn after_batch(&self, due: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Trigger::Every(d) => due.checked_add_signed(delta(*d)).unwrap_or(now),
            _ => now,
        }
    }

    /// The due time after `due` found no new input at `now`: the next
    /// interval boundary after now, so an idle stream is not "behind".
    pub fn after_idle(&self, due: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Trigger::Every(d) => {
                let step = delta(*d);
                if step <= TimeDelta::zero() {
                    return now;
                }
                let Some(next) = due.checked_add_signed(step) else {
                    return now;
                };
                if next > now {
                    return next;
                }
                // The next boundary after now, in whole steps from `due`.
                let step_ms = step.num_milliseconds().max(1);
                let behind = (now - next).num_milliseconds();
                let steps = behind / step_ms + 1;
                steps
                    .checked_mul(step_ms)
                    .and_then(|ms| next.checked_add_signed(TimeDelta::milliseconds(ms)))
                    .unwrap_or(now)
            }
            _ => now,
        }
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrun_batches_follow_at_once_and_idle_ones_realign() {
        let t = Trigger::Every(Duration::from_secs(10));
        let t0 = DateTime::<Utc>::from_timestamp(1_000, 0).unwrap_or_default();
        let s = |n: i64| t0 + TimeDelta::seconds(n);
        // A batch due at 0 that ran: the next is due at 10, even if it is
        // already 25 (it runs at once, 15 s late).
        assert_eq!(t.after_batch(s(0), s(25)), s(10));
        // Idle at 10 when it is 10.5: next at 20.
        assert_eq!(t.after_idle(s(10), s(10)), s(20));
        // Idle long after its due time: the next boundary after now.
        assert_eq!(t.after_idle(s(10), s(35)), s(40));
        assert_eq!(t.after_idle(s(10), s(40)), s(50));
        assert_eq!(Trigger::Once.after_batch(s(0), s(3)), s(3));
        // A 1 ms interval after a month idle, or an interval too large for
        // a date: no overflow, no panic.
        let ms = Trigger::Every(Duration::from_millis(1));
        assert!(ms.after_idle(s(0), s(30 * 86_400)) > s(30 * 86_400));
        let huge = Trigger::Every(Duration::MAX);
        assert_eq!(huge.after_batch(s(0), s(3)), s(3));
        assert_eq!(huge.after_idle(s(0), s(3)), s(3));
        assert_eq!(Trigger::AvailableNow.interval(), None);
    }
}
