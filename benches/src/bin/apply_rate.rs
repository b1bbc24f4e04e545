//! Checkout + release pairs per second through `State::apply`, best of several rounds.
//!
//! The criterion benchmark (`cargo bench -p lsm-benches --bench core_apply`) reports a
//! mean, which on a shared virtual machine moves with the neighbours' load by tens of
//! percent from one minute to the next. This tool runs the same workload
//! (`lsm_benches::apply`) in rounds and reports each round and the best: the best round
//! is the one the neighbours disturbed least, so two builds compare by their best.
//!
//! ```text
//! cargo run --release -p lsm-benches --bin apply_rate -- [live] [steps per round] [rounds] [oldest|random] [pairs|heartbeats]
//! cargo run --release -p lsm-benches --bin apply_rate -- 100000 2000000 7
//! # each pair releases a live checkout chosen at random, not the oldest:
//! cargo run --release -p lsm-benches --bin apply_rate -- 100000 2000000 7 random
//! # heartbeats instead of pairs, renewing the live checkouts in turn:
//! cargo run --release -p lsm-benches --bin apply_rate -- 100000 2000000 7 oldest heartbeats
//! ```

use std::time::Duration;

use lsm_core::State;

use lsm_benches::apply::{Order, Workload, time_heartbeats, time_pairs};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args().nth(n).map_or(default, |a| {
        a.replace('_', "").parse().unwrap_or_else(|_| panic!("argument {n}: {a:?} is not a number"))
    })
}

fn main() {
    let live = arg(1, 100_000);
    let pairs = arg(2, 2_000_000).max(1);
    let rounds = arg(3, 7).max(1);
    let order: Order = std::env::args()
        .nth(4)
        .map_or(Ok(Order::Oldest), |a| a.parse())
        .unwrap_or_else(|e| panic!("argument 4: {e}"));
    type Timer = fn(&mut State, &mut Workload, u64) -> Duration;
    let (unit, time): (&str, Timer) = match std::env::args().nth(5).as_deref() {
        None | Some("pairs") => ("pair", time_pairs),
        Some("heartbeats") => ("heartbeat", time_heartbeats),
        Some(other) => panic!("argument 5: {other:?} is not pairs or heartbeats"),
    };
    let mut workload = Workload::with_order(live, order);
    let mut state = workload.build();
    // Warm-up: the tombstone table fills and the trees reach their steady shape.
    time(&mut state, &mut workload, pairs.max(live));
    let mut best = f64::MAX;
    for round in 1..=rounds {
        let elapsed = time(&mut state, &mut workload, pairs);
        let ns = elapsed.as_nanos() as f64 / pairs as f64;
        best = best.min(ns);
        println!("round {round}: {ns:.0} ns per {unit}, {:.0} {unit}s/s", 1e9 / ns);
    }
    assert_eq!(state.summary().checkouts, live, "the live count must not drift");
    println!(
        "best of {rounds}: {best:.0} ns per {unit}, {:.0} {unit}s/s at {live} live, {order:?} order",
        1e9 / best
    );
}
