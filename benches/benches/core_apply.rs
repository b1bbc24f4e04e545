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
//! The fixture installs one feature with 10,000,000 tokens and grants `live` checkouts of
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
//! `query_100k/*` measures the queries `lsm status` and `lsm checkouts` run over the state
//! with 100,000 live checkouts.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lsm_benches::{mix, name};
use lsm_core::{
    CheckoutFilter, CheckoutId, CheckoutRequest, ClientId, Command, CostRule, Demand, Entitlement,
    FeatureName, HostName, Install, Item, Meta, Op, Policy, Request, Response, State, UserName,
};

/// Tokens of the one feature.
const TOKENS_TOTAL: u64 = 10_000_000;
/// Lease length of every checkout.
const LEASE_TTL_MS: u64 = 30_000;
/// Distinct users the checkouts are spread over.
const USERS: usize = 1_000;
/// Distinct hosts the checkouts are spread over.
const HOSTS: usize = 2_000;
/// Replicated time advances this many microseconds per command.
const STEP_US: u64 = 10;
/// The replicated clock starts here (1 January 2026, in ms since the Unix epoch).
const EPOCH_MS: u64 = 1_767_225_600_000;
/// Pairs built ahead of each timed stretch.
const CHUNK: u64 = 10_000;

/// Builds the commands of the workload and remembers what they will do, so that the
/// timed loop only applies them.
struct Workload {
    live: u64,
    clients: Vec<ClientId>,
    users: Vec<UserName>,
    hosts: Vec<HostName>,
    feature: FeatureName,
    /// The last sequence number each client used.
    seqs: Vec<u64>,
    /// Checkouts granted so far; checkout `j` gets id `j + 1` and belongs to client
    /// `j % clients`.
    granted: u64,
    /// Checkouts released so far; they are released oldest first.
    released: u64,
    /// The last log index used.
    index: u64,
    /// Replicated time in microseconds since `EPOCH_MS`.
    clock_us: u64,
}

/// A command ready to apply, with the answer it must get.
struct Step {
    meta: Meta,
    command: Command,
    expect: Expect,
}

/// What a step must be answered with.
enum Expect {
    Granted(CheckoutId),
    Released(CheckoutId),
}

impl Workload {
    fn new(live: u64) -> Workload {
        let clients = (live / 10).max(100) as usize;
        Workload {
            live,
            clients: (0..clients).map(|i| name(&format!("launcher-{i:06}"))).collect(),
            users: (0..USERS).map(|i| name(&format!("user{i:04}"))).collect(),
            hosts: (0..HOSTS).map(|i| name(&format!("node-{i:04}.cluster"))).collect(),
            feature: name("lsdyna"),
            seqs: vec![0; clients],
            granted: 0,
            released: 0,
            index: 0,
            clock_us: 0,
        }
    }

    fn meta(&mut self) -> Meta {
        self.index += 1;
        self.clock_us += STEP_US;
        Meta { index: self.index, now_ms: EPOCH_MS + self.clock_us / 1_000 }
    }

    fn request(&mut self, client: usize, op: Op) -> Command {
        self.seqs[client] += 1;
        let seq = self.seqs[client];
        Command::Request(Request { client: self.clients[client].clone(), seq, ack: seq, op })
    }

    /// The install of the one feature, as the first command.
    fn install(&mut self) -> (Meta, Command) {
        let install = Install {
            entitlements: vec![Entitlement {
                feature: self.feature.clone(),
                license: name("site-2026"),
                tokens_total: TOKENS_TOTAL,
                starts_at_ms: 0,
                expires_at_ms: u64::MAX,
                cost: CostRule::default(),
                max_borrow_ms: 0,
            }],
            policy: Policy::default(),
        };
        let meta = self.meta();
        (meta, self.request(0, Op::Install(install)))
    }

    /// The next checkout: 1 to 4 tokens for a user on a host, chosen by a hash of its
    /// number so that users and hosts are not in lockstep with clients.
    fn checkout(&mut self) -> Step {
        let j = self.granted;
        self.granted += 1;
        let h = mix(j);
        let client = (j % self.clients.len() as u64) as usize;
        let request = CheckoutRequest {
            items: vec![Item {
                feature: self.feature.clone(),
                demand: Demand::Tokens(1 + h % 4),
                pool: None,
            }],
            user: self.users[(h >> 8) as usize % USERS].clone(),
            host: self.hosts[(h >> 24) as usize % HOSTS].clone(),
            job: None,
            lease_ttl_ms: LEASE_TTL_MS,
            borrow_until_ms: None,
            wait: None,
        };
        let meta = self.meta();
        let command = self.request(client, Op::Checkout(request));
        Step { meta, command, expect: Expect::Granted(CheckoutId(j + 1)) }
    }

    /// The release of the oldest live checkout, by its owner.
    fn release(&mut self) -> Step {
        let j = self.released;
        self.released += 1;
        let client = (j % self.clients.len() as u64) as usize;
        let id = CheckoutId(j + 1);
        let meta = self.meta();
        let command = self.request(client, Op::Release(id));
        Step { meta, command, expect: Expect::Released(id) }
    }

    /// A state with the feature installed and `live` checkouts granted.
    fn build(&mut self) -> State {
        let mut state = State::default();
        let (meta, command) = self.install();
        let out = state.apply(meta, command).expect("install applies");
        assert!(matches!(out.response, Response::Installed { features: 1 }), "{out:?}");
        for _ in 0..self.live {
            let step = self.checkout();
            run(&mut state, step);
        }
        assert_eq!(state.summary().checkouts, self.live);
        state
    }
}

/// Applies one step and checks its answer.
fn run(state: &mut State, step: Step) {
    let out = state.apply(step.meta, step.command).expect("apply never fails here");
    let ok = match (&out.response, step.expect) {
        (Response::Granted(grant), Expect::Granted(id)) => grant.id == id,
        (Response::Released { id }, Expect::Released(want)) => *id == want,
        _ => false,
    };
    assert!(ok, "unexpected answer {:?}", out.response);
    black_box(out);
}

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
    let mut group = c.benchmark_group("apply_pair");
    group.throughput(Throughput::Elements(1));
    for live in live_counts() {
        let mut workload = Workload::new(live);
        let mut state = workload.build();
        group.bench_function(BenchmarkId::from_parameter(live), |b| {
            b.iter_custom(|pairs| {
                let mut elapsed = Duration::ZERO;
                let mut left = pairs;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let steps: Vec<(Step, Step)> =
                        (0..n).map(|_| (workload.checkout(), workload.release())).collect();
                    let start = Instant::now();
                    for (checkout, release) in steps {
                        run(&mut state, checkout);
                        run(&mut state, release);
                    }
                    elapsed += start.elapsed();
                    left -= n;
                }
                elapsed
            });
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
