//! Simulated time: the shared simulation clock, and each node's skewed wall clock.
//!
//! The simulation driver advances turmoil one step at a time and publishes the elapsed
//! simulated time in a [`SimTime`] after every step; the history stamps events with it.
//! A node's wall clock ([`NodeClock`], the `lsm_raft::clock::Clock` its leader stamps
//! commands with) reads a fixed epoch plus that time plus the node's skew. The fault
//! schedule sets skews, makes the leader's clock jump by seconds and any node's clock
//! jump by days, forwards and backwards; tokio's
//! monotonic clock, which client leases and Raft timers use, is never skewed.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use lsm_raft::clock::Clock;

/// 2026-01-01T00:00:00Z in ms since the Unix epoch: every run starts there.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// Elapsed simulated time in ms, shared by every host and the driver.
#[derive(Clone, Debug, Default)]
pub struct SimTime(Arc<AtomicU64>);

impl SimTime {
    /// Publishes the simulation's elapsed time.
    pub fn set(&self, elapsed: Duration) {
        self.0.store(elapsed.as_millis() as u64, Ordering::SeqCst);
    }

    /// Elapsed simulated ms.
    pub fn ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A node's wall clock: [`EPOCH_MS`] + simulated time + skew.
#[derive(Clone, Debug)]
pub struct NodeClock {
    time: SimTime,
    skew_ms: Arc<AtomicI64>,
}

impl NodeClock {
    /// A clock reading the simulation's time with `skew_ms` added.
    pub fn new(time: SimTime, skew_ms: i64) -> NodeClock {
        NodeClock { time, skew_ms: Arc::new(AtomicI64::new(skew_ms)) }
    }

    /// The current skew.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::SeqCst)
    }

    /// Moves the clock by `delta_ms`: a jump (forwards when positive).
    pub fn jump(&self, delta_ms: i64) {
        self.skew_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for NodeClock {
    fn now_ms(&self) -> u64 {
        let now = EPOCH_MS as i64 + self.time.ms() as i64 + self.skew_ms();
        now.max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_clock_is_the_epoch_plus_time_plus_skew() {
        let time = SimTime::default();
        let clock = NodeClock::new(time.clone(), -500);
        time.set(Duration::from_millis(2_000));
        assert_eq!(clock.now_ms(), EPOCH_MS + 1_500);
        clock.jump(1_000);
        assert_eq!(clock.now_ms(), EPOCH_MS + 2_500);
    }
}
