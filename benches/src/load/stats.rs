//! The summary's arithmetic: latency percentiles, gaps between successful operations, and
//! medians. Pure functions over recorded numbers, so the report's math is unit-tested
//! apart from any cluster.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency a histogram records, in µs (longer ones are recorded as this).
pub const MAX_LATENCY_US: u64 = 120_000_000;

/// A latency histogram in µs, 3 significant digits, 1 µs to [`MAX_LATENCY_US`].
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records `micros` (clamped to the histogram's range).
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.clamp(1, MAX_LATENCY_US));
}

/// Percentiles of one latency histogram, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of `histogram` (µs values); all zero when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Percentiles {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1_000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// A stretch of time with no successful operation, in µs since the run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The last success before the gap (or the window's start when there was none).
    pub from_us: u64,
    /// The first success after it (or the end of the run when there was none).
    pub to_us: u64,
}

impl Gap {
    /// Its length in µs.
    pub fn len_us(&self) -> u64 {
        self.to_us - self.from_us
    }
}

/// The longest gap between consecutive successes (`sorted`, µs since the start) that
/// belongs to the window `[from, to)`: the gap that contains `from` (from the last
/// success before it to the first after it) and every later gap that ends before `to`. A
/// gap that contains `to` belongs to the next window, unless nothing succeeded inside this
/// one. `end` (the end of the run) counts as a success, so a cluster that never answered
/// again shows a gap up to the end. For a kill at `from` and the next kill at `to`, this is
/// the time from the last operation the old leader served to the first the new one served,
/// or a longer stall later in the same window.
pub fn longest_gap(sorted: &[u64], from: u64, to: u64, end: u64) -> Gap {
    debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "completions must be sorted");
    let first_after = sorted.partition_point(|&t| t < from);
    let mut previous = if first_after == 0 { from } else { sorted[first_after - 1] };
    let mut longest = Gap { from_us: previous, to_us: previous };
    let mut any_inside = false;
    let successes = sorted[first_after..].iter().copied();
    for t in successes.chain(std::iter::once(end.max(previous))) {
        if t >= to && any_inside {
            break;
        }
        if t - previous > longest.len_us() {
            longest = Gap { from_us: previous, to_us: t };
        }
        if t >= to {
            break;
        }
        any_inside = true;
        previous = t;
    }
    longest
}

/// The median: the middle value, or the mean of the two middle ones; `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

/// Merges per-client sorted completion times into one sorted list.
pub fn merge_sorted(lists: Vec<Vec<u64>>) -> Vec<u64> {
    let mut all: Vec<u64> = lists.into_iter().flatten().collect();
    all.sort_unstable();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = latency_histogram();
        for us in 1..=1_000u64 {
            record(&mut h, us * 10); // 10 µs .. 10 ms, uniform
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1_000);
        assert!((p.p50_ms - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.p99_ms - 9.9).abs() < 0.01, "{p:?}");
        assert!((p.max_ms - 10.0).abs() < 0.01, "{p:?}");
        assert!((p.mean_ms - 5.005).abs() < 0.01, "{p:?}");
        assert_eq!(Percentiles::of(&latency_histogram()), Percentiles::default());
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(Percentiles::of(&h).count, 1_002, "out-of-range values are clamped");
    }

    #[test]
    fn the_gap_around_a_kill_starts_at_the_last_success_before_it() {
        let done = [10, 20, 30, 1_000, 1_010, 1_020, 2_000];
        let gap = |from, to, end| longest_gap(&done, from, to, end);
        // Kill at 35: the gap is 30 -> 1000; the gap 1020 -> 2000 holds the next kill.
        assert_eq!(gap(35, 1_500, 3_000), Gap { from_us: 30, to_us: 1_000 });
        assert_eq!(gap(1_500, u64::MAX, 2_000), Gap { from_us: 1_020, to_us: 2_000 });
        // The last window runs to the end of the run, which counts as a success.
        assert_eq!(gap(1_500, u64::MAX, 3_500), Gap { from_us: 2_000, to_us: 3_500 });
        // A kill at 1015 met only a short gap.
        assert_eq!(gap(35, 1_015, 3_000), Gap { from_us: 30, to_us: 1_000 });
        assert_eq!(gap(1_015, 1_500, 3_000), Gap { from_us: 1_010, to_us: 1_020 });
        assert_eq!(gap(1_015, 1_500, 3_000).len_us(), 10);
    }

    #[test]
    fn a_window_without_success_runs_to_the_next_success_or_the_end() {
        assert_eq!(longest_gap(&[10, 20], 50, 100, 500), Gap { from_us: 20, to_us: 500 });
        assert_eq!(longest_gap(&[10, 20, 700], 50, 100, 900), Gap { from_us: 20, to_us: 700 });
        assert_eq!(longest_gap(&[], 50, 100, 500), Gap { from_us: 50, to_us: 500 });
        // From the start of the run: the wait for the first success counts.
        assert_eq!(longest_gap(&[50, 60], 0, u64::MAX, 60), Gap { from_us: 0, to_us: 50 });
        assert_eq!(longest_gap(&[50, 60], 50, 100, 60), Gap { from_us: 50, to_us: 60 });
    }

    #[test]
    fn medians_and_merges() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(merge_sorted(vec![vec![1, 4], vec![2, 3], vec![]]), vec![1, 2, 3, 4]);
    }
}
