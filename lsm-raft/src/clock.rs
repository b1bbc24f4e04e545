//! Clocks: where a leader's timestamps come from.
//!
//! The leader stamps every command it proposes with its wall clock ([`Clock::now_ms`]),
//! paced by [`Pace`] so that a jump of that clock reaches replicated time only slowly.
//! Production uses the system clock; tests use a [`ManualClock`] they move by hand, so
//! leases and expiry can be tested without sleeping, and clock skew and jumps can be
//! injected.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
/// the later of the wall clock and the replicated clock, but at most `max_term_start_step_ms`
/// past the replicated clock: a node whose clock is days ahead and wins an election moves
/// cluster time by at most that step, and the term's pacing proceeds from there (5 % fast
/// while it stays behind that wall clock); a new cluster's first term, whose replicated
/// clock is still 0, takes the wall clock. The `LeaderChange` entry that opens the term
/// extends every lease, so the change of clocks at an election costs no lease either.
/// A clamped start is counted ([`Pace::clamped_starts`]), and the wall clock's lead on
/// the last stamp is kept ([`Pace::skew_ms`]), for the node's alarm and metrics.
///
/// The monotonic clock is tokio's: the system's monotonic clock in production, the
/// simulation's or a paused test's clock under test.
#[derive(Debug)]
pub struct Pace {
    max_drift_ppm: u64,
    max_term_start_step_ms: u64,
    anchor: std::sync::Mutex<Option<Anchor>>,
    clamped_starts: AtomicU64,
    skew_ms: AtomicI64,
}

/// A term start that [`Pace::stamp`] held back: the wall clock was more than the step
/// ahead of the replicated clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClampedStart {
    /// The leader's wall clock.
    pub wall_ms: u64,
    /// The replicated clock.
    pub replicated_ms: u64,
    /// The stamp the term started from: `replicated_ms` plus the step.
    pub stamp_ms: u64,
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
    /// Pacing within `max_drift_ppm` parts per million, each term starting at most
    /// `max_term_start_step_ms` past the replicated clock; a drift of 0 turns pacing off
    /// (and the step with it), so stamps are the wall clock as it reads.
    pub fn new(max_drift_ppm: u64, max_term_start_step_ms: u64) -> Pace {
        Pace {
            max_drift_ppm,
            max_term_start_step_ms,
            anchor: std::sync::Mutex::new(None),
            clamped_starts: AtomicU64::new(0),
            skew_ms: AtomicI64::new(0),
        }
    }

    /// How many terms started clamped to the step.
    pub fn clamped_starts(&self) -> u64 {
        self.clamped_starts.load(Ordering::Relaxed)
    }

    /// The wall clock minus the last stamp, in ms: how far this node's clock is ahead of
    /// (positive) or behind (negative) the time it stamps.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }

    /// The stamp, in ms since the Unix epoch, for a command this node proposes now as
    /// leader of `term`, given its wall clock and the replicated clock (the state's time
    /// as last applied here).
    pub fn stamp(&self, term: u64, wall_ms: u64, replicated_ms: u64) -> u64 {
        self.stamp_checked(term, wall_ms, replicated_ms).0
    }

    /// [`Pace::stamp`], and the clamped term start if this stamp was one.
    pub fn stamp_checked(
        &self,
        term: u64,
        wall_ms: u64,
        replicated_ms: u64,
    ) -> (u64, Option<ClampedStart>) {
        if self.max_drift_ppm == 0 {
            return (wall_ms, None);
        }
        let now = Instant::now();
        let mut clamped = None;
        let wall_ns = wall_ms.saturating_mul(1_000_000);
        let mut anchor = self.anchor.lock().unwrap_or_else(|e| e.into_inner());
        let stamp_ns = match *anchor {
            Some(a) if a.term == term => {
                let elapsed = now.saturating_duration_since(a.at).as_nanos();
                let drift = elapsed * u128::from(self.max_drift_ppm) / 1_000_000;
                let at = |ns: u128| u64::try_from(u128::from(a.stamp_ns) + ns).unwrap_or(u64::MAX);
                wall_ns.clamp(at(elapsed.saturating_sub(drift)), at(elapsed + drift))
            }
            _ => {
                // A replicated clock of 0 is a new cluster's: it has no time yet to
                // protect, and its first term takes the wall clock.
                let limit_ms = if replicated_ms == 0 {
                    u64::MAX
                } else {
                    replicated_ms.saturating_add(self.max_term_start_step_ms)
                };
                if wall_ms > limit_ms {
                    self.clamped_starts.fetch_add(1, Ordering::Relaxed);
                    clamped = Some(ClampedStart { wall_ms, replicated_ms, stamp_ms: limit_ms });
                }
                let floor = replicated_ms.saturating_mul(1_000_000);
                wall_ns.clamp(floor, limit_ms.saturating_mul(1_000_000).max(floor))
            }
        };
        *anchor = Some(Anchor { term, stamp_ns, at: now });
        let stamp_ms = stamp_ns / 1_000_000;
        let skew = i128::from(wall_ms) - i128::from(stamp_ms);
        self.skew_ms.store(skew.clamp(i64::MIN.into(), i64::MAX.into()) as i64, Ordering::Relaxed);
        (stamp_ms, clamped)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: u64 = 1_750_000_000_000;
    const STEP: u64 = 60_000;
    const DAY: u64 = 86_400_000;

    #[tokio::test(start_paused = true)]
    async fn a_steady_wall_clock_is_stamped_as_it_reads() {
        let pace = Pace::new(50_000, STEP);
        assert_eq!(pace.stamp(1, T0, 0), T0);
        for step in 1..=100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            assert_eq!(pace.stamp(1, T0 + step * 10, T0), T0 + step * 10);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_jump_is_absorbed_at_the_drift_limit() {
        let pace = Pace::new(50_000, STEP);
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
        let pace = Pace::new(50_000, STEP);
        pace.stamp(1, T0, 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pace.stamp(1, T0 - 30_000, T0), T0 + 950);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pace.stamp(1, T0 - 29_000, T0), T0 + 1_900);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_term_starts_from_the_later_of_wall_and_replicated_time() {
        let pace = Pace::new(50_000, STEP);
        pace.stamp(1, T0, 0);
        tokio::time::advance(Duration::from_millis(100)).await;
        // A new term: the wall clock as it reads, when it is within the step ...
        assert_eq!(pace.stamp_checked(2, T0 + STEP, T0), (T0 + STEP, None));
        // ... but never behind the replicated clock.
        assert_eq!(pace.stamp(3, T0, T0 + 3_600_500), T0 + 3_600_500);
        assert_eq!(pace.clamped_starts(), 0);
        assert_eq!(pace.skew_ms(), -3_600_500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_start_days_ahead_moves_time_by_the_step_only() {
        let pace = Pace::new(50_000, STEP);
        let wall = T0 + 3 * DAY;
        let clamped = ClampedStart { wall_ms: wall, replicated_ms: T0, stamp_ms: T0 + STEP };
        assert_eq!(pace.stamp_checked(1, wall, T0), (T0 + STEP, Some(clamped)));
        assert_eq!(pace.clamped_starts(), 1);
        assert_eq!(pace.skew_ms(), (3 * DAY - STEP) as i64);
        // Within the term the stamps gain only the drift on monotonic time: 5 % fast.
        for step in 1..=10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let stamp = pace.stamp(1, wall + step * 1_000, T0);
            assert_eq!(stamp, T0 + STEP + step * 1_050);
        }
        // Each later term moves time by the step again, from the replicated clock.
        let (stamp, clamped) = pace.stamp_checked(2, wall + 10_000, T0 + STEP + 10_500);
        assert_eq!(stamp, T0 + 2 * STEP + 10_500);
        assert!(clamped.is_some());
        assert_eq!(pace.clamped_starts(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_clusters_first_term_takes_the_wall_clock() {
        let pace = Pace::new(50_000, STEP);
        assert_eq!(pace.stamp_checked(1, T0, 0), (T0, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_days_behind_never_moves_time_backwards() {
        let pace = Pace::new(50_000, STEP);
        let wall = T0 - 3 * DAY;
        // A new term starts from the replicated clock, unclamped ...
        assert_eq!(pace.stamp_checked(1, wall, T0), (T0, None));
        // ... and within the term time runs on at 95 % of monotonic time.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(pace.stamp(1, wall + 10_000, T0), T0 + 9_500);
        assert_eq!(pace.clamped_starts(), 0);
        assert_eq!(pace.skew_ms(), -((3 * DAY + 9_500) as i64) + 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_jumping_days_within_a_term_is_paced() {
        let pace = Pace::new(50_000, STEP);
        pace.stamp(1, T0, 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pace.stamp(1, T0 + 5 * DAY, T0), T0 + 1_050);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pace.stamp(1, T0 - 5 * DAY, T0), T0 + 2_000);
        assert_eq!(pace.clamped_starts(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_off_stamps_the_wall_clock() {
        let pace = Pace::new(0, STEP);
        pace.stamp(1, T0, 0);
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(pace.stamp(1, T0 + 60_000, T0), T0 + 60_000);
    }
}
