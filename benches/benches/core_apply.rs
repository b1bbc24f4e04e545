//! Benchmarks of `lsm_core::State::apply` and the read-only queries.
//!
//! Run them with:
//!
//! ```text
//! cargo bench -p lsm-benches --bench core_apply
//! # Quicker, with shorter warm-up and measurement:
//! cargo bench -p lsm-benches --bench core_apply -- --warm-up-time 1 --measurement-time 3
//! # One group only:
//! cargo bench -p lsm-benches --bench core_apply -- apply_pair
//! # Other live checkout counts (the setup of 1,000,000 takes several seconds):
//! LSM_BENCH_LIVE=1000000 cargo bench -p lsm-benches --bench core_apply -- apply_pair
//! ```
//!
//! The fixture (`lsm_benches::apply`, shared with the `apply_rate` tool) installs one feature with 10,000,000 tokens and grants `live` checkouts of
//! 1 to 4 tokens each, spread over `live / 10` clients (at least 100), 1,000 users and
//! 2,000 hosts, with a 30 s lease. Every client numbers its requests 1, 2, 3, ... and
//! acknowledges every earlier reply, as a well-behaved client does.
//!
//! `apply_pair/{live}` measures one pair: a new checkout, then the release of the oldest
//! live checkout (by another client). The number of live checkouts therefore stays at
//! `live`, every checkout lives for `live` pairs, and the tombstone table fills up to its
//! limit during warm-up, as on a busy server. The replicated clock advances 10 µs per
//! command, so a checkout is at most `2 * live * 10 µs` old when it is released (2 s for
//! 100,000) and no lease ever expires. Only `apply` is timed: commands are built in
//! chunks outside the timed region, and their outputs are dropped inside it. Throughput
//! is one element per pair, so criterion reports pairs per second.
//!
//! `apply_pair_random/{live}` is the same with each pair releasing a live checkout chosen
//! at random (by a fixed hash) instead of the oldest, so lifetimes spread out and
//! releases come from anywhere in the tables, as on a real server.
//!
//! `apply_heartbeat/{live}` measures one heartbeat: the renewal of a live checkout, each
//! in turn (the one renewed longest ago, as when every client heartbeats at one
//! interval); `apply_heartbeat_random/{live}` renews one chosen at random. A production
//! load is mostly heartbeats.
//!
//! `query_100k/*` measures the queries `lsm status` and `lsm checkouts` run over the state
//! with 100,000 live checkouts.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;

use lsm_benches::apply::{Order, Workload, time_heartbeats, time_pairs};
use lsm_core::{CheckoutFilter, State};

/// The live checkout counts of `apply_pair`: 1,000, 10,000 and 100,000, or the
/// comma-separated list in `LSM_BENCH_LIVE` (for example `1000000` for a longer setup).
fn live_counts() -> Vec<u64> {
    match std::env::var("LSM_BENCH_LIVE") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().replace('_', "").parse().expect("LSM_BENCH_LIVE: numbers"))
            .collect(),
        Err(_) => vec![1_000, 10_000, 100_000],
    }
}

fn apply_pair(c: &mut Criterion) {
    steps(c, "apply_pair", Order::Oldest, time_pairs);
    steps(c, "apply_pair_random", Order::Random, time_pairs);
    steps(c, "apply_heartbeat", Order::Oldest, time_heartbeats);
    steps(c, "apply_heartbeat_random", Order::Random, time_heartbeats);
}

/// One group per live count, each timing steps (pairs or heartbeats) with `time` in
/// `order`.
fn steps(
    c: &mut Criterion,
    name: &str,
    order: Order,
    time: fn(&mut State, &mut Workload, u64) -> Duration,
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for live in live_counts() {
        let mut workload = Workload::with_order(live, order);
        let mut state = workload.build();
        group.bench_function(BenchmarkId::from_parameter(live), |b| {
            b.iter_custom(|steps| time(&mut state, &mut workload, steps));
        });
        assert_eq!(state.summary().checkouts, live, "the live count must not drift");
        assert_eq!(state.summary().next_expiry.map(|t| t > state.now_ms()), Some(true));
    }
    group.finish();
}

fn queries(c: &mut Criterion) {
    let mut workload = Workload::new(100_000);
    let state = workload.build();
    let mut group = c.benchmark_group("query_100k");
    group.bench_function("features_status", |b| b.iter(|| black_box(state.features_status())));
    // The first user with at least 100 checkouts, so the query returns a full page; a
    // user holds about 100 of the 100,000, so the scan covers most of the table.
    let filter = (workload.users.iter())
        .map(|user| CheckoutFilter {
            user: Some(user.clone()),
            limit: Some(100),
            ..CheckoutFilter::default()
        })
        .find(|filter| state.list_checkouts(filter).len() == 100)
        .expect("some user holds 100 checkouts");
    group.bench_function("list_checkouts_user_limit_100", |b| {
        b.iter(|| black_box(state.list_checkouts(black_box(&filter))))
    });
    let unfiltered = CheckoutFilter { limit: Some(100), ..CheckoutFilter::default() };
    group.bench_function("list_checkouts_limit_100", |b| {
        b.iter(|| black_box(state.list_checkouts(black_box(&unfiltered))))
    });
    group.bench_function("summary", |b| b.iter(|| black_box(state.summary())));
    group.finish();
}

criterion_group!(benches, apply_pair, queries);
criterion_main!(benches);
