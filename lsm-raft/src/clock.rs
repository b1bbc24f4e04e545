//! Clocks: where a leader's timestamps come from.
//!
//! The leader stamps every command it proposes with its wall clock ([`Clock::now_ms`]),
//! paced by [`Pace`] so that a jump of that clock reaches replicated time only slowly.
//! Production uses the system clock; tests use a [`ManualClock`] they move by hand, so
//! leases and expiry can be tested without sleeping, and clock skew and jumps can be
//! injected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A source of wall-clock time in ms since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(now_ms)))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock, forwards or backwards (to model a jump or skew).
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Paces the leader's timestamps: they follow the wall clock, but within one term they
/// never run faster or slower than the monotonic clock by more than `max_drift_ppm`
/// parts per million.
///
/// Replicated time decides when leases expire, so a leader whose wall clock jumps a
/// minute forwards (an NTP step, an operator's `date -s`) would otherwise expire at once
/// every lease renewed less than a minute ago. Paced, the jump is absorbed gradually: at
/// the default 5 %, replicated time runs at most 5 % fast while it catches up, which the
/// client's lease safety margin (at least a tenth of the TTL) covers. A jump backwards
/// likewise slows replicated time to 95 % instead of stopping it. A new term starts from
/// the later of the wall clock and the replicated clock; the `LeaderChange` entry that
/// opens the term extends every lease, so the change of clocks at an election costs no
/// lease either.
///
/// The monotonic clock is tokio's: the system's monotonic clock in production, the
/// simulation's or a paused test's clock under test.
#[derive(Debug)]
pub struct Pace {
    max_drift_ppm: u64,
    anchor: std::sync::Mutex<Option<Anchor>>,
}

/// The last stamp of the current term, and when it was made.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    term: u64,
    /// The stamp in ns since the Unix epoch, so that frequent stamps lose no time to
    /// rounding.
    stamp_ns: u64,
    at: Instant,
}

impl Pace {
    /// Pacing within `max_drift_ppm` parts per million; 0 turns pacing off, so stamps
    /// are the wall clock as it reads.
    pub fn new(max_drift_ppm: u64) -> Pace {
        Pace { max_drift_ppm, anchor: std::sync::Mutex::new(None) }
    }

    /// The stamp, in ms since the Unix epoch, for a command this node proposes now as
    /// leader of `term`, given its wall clock and the replicated clock (the state's time
    /// as last applied here).
    pub fn stamp(&self, term: u64, wall_ms: u64, replicated_ms: u64) -> u64 {
        if self.max_drift_ppm == 0 {
            return wall_ms;
        }
        let now = Instant::now();
        let wall_ns = wall_ms.saturating_mul(1_000_000);
        let mut anchor = self.anchor.lock().unwrap_or_else(|e| e.into_inner());
        let stamp_ns = match *anchor {
            Some(a) if a.term == term => {
                let elapsed = now.saturating_duration_since(a.at).as_nanos();
                let drift = elapsed * u128::from(self.max_drift_ppm) / 1_000_000;
                let at = |ns: u128| u64::try_from(u128::from(a.stamp_ns) + ns).unwrap_or(u64::MAX);
                wall_ns.clamp(at(elapsed.saturating_sub(drift)), at(elapsed + drift))
            }
            _ => wall_ns.max(replicated_ms.saturating_mul(1_000_000)),
        };
        *anchor = Some(Anchor { term, stamp_ns, at: now });
        stamp_ns / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: u64 = 1_750_000_000_000;

    #[tokio::test(start_paused = true)]
    async fn a_steady_wall_clock_is_stamped_as_it_reads() {
        let pace = Pace::new(50_000);
        assert_eq!(pace.stamp(1, T0, 0), T0);
        for step in 1..=100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            assert_eq!(pace.stamp(1, T0 + step * 10, T0), T0 + step * 10);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_jump_is_absorbed_at_the_drift_limit() {
        let pace = Pace::new(50_000);
        pace.stamp(1, T0, 0);
        // The wall clock jumps a minute ahead; a second of monotonic time later the stamp
        // has gained only 5 % on it.
        let mut stamps = Vec::new();
        for step in 1..=10 {
            tokio::time::advance(Duration::from_millis(100)).await;
            stamps.push(pace.stamp(1, T0 + 60_000 + step * 100, T0));
        }
        assert_eq!(stamps.last(), Some(&(T0 + 1_050)));
        assert!(stamps.windows(2).all(|w| w[1] - w[0] == 105), "{stamps:?}");
        // It catches up after 60 s / 5 % = 20 minutes, then follows the wall clock again.
        tokio::time::advance(Duration::from_secs(1_199)).await;
        assert_eq!(pace.stamp(1, T0 + 60_000 + 1_200_000, T0), T0 + 60_000 + 1_200_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backward_jump_slows_time_instead_of_stopping_it() {
        let pace = Pace::new(50_000);
        pace.stamp(1, T0, 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pace.stamp(1, T0 - 30_000, T0), T0 + 950);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pace.stamp(1, T0 - 29_000, T0), T0 + 1_900);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_term_starts_from_the_later_of_wall_and_replicated_time() {
        let pace = Pace::new(50_000);
        pace.stamp(1, T0, 0);
        tokio::time::advance(Duration::from_millis(100)).await;
        // A new term: the wall clock as it reads, even far ahead ...
        assert_eq!(pace.stamp(2, T0 + 3_600_000, T0), T0 + 3_600_000);
        // ... but never behind the replicated clock.
        assert_eq!(pace.stamp(3, T0, T0 + 3_600_500), T0 + 3_600_500);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_off_stamps_the_wall_clock() {
        let pace = Pace::new(0);
        pace.stamp(1, T0, 0);
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(pace.stamp(1, T0 + 60_000, T0), T0 + 60_000);
    }
}
