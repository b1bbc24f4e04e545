//! The workload of the `apply` benchmarks (`benches/core_apply.rs`, `apply_rate`): one
//! feature, `live` checkouts held, and pairs of a new checkout and the release of the
//! oldest one ([`Order::Oldest`]) or of a live one chosen at random ([`Order::Random`]),
//! so the live count stays constant; or heartbeats that renew the live checkouts, each
//! in turn or at random ([`Workload::heartbeat`]).
//!
//! The fixture installs one feature with 10,000,000 tokens and grants `live` checkouts of
//! 1 to 4 tokens each, spread over `live / 10` clients (at least 100), 1,000 users and
//! 2,000 hosts, with a 30 s lease (an hour when releases are random: a few checkouts then
//! live far longer than `live` pairs). Every client numbers its requests 1, 2, 3, ... and
//! acknowledges every earlier reply, as a well-behaved client does. The replicated clock
//! advances 10 µs per command, so no lease expires.

use std::hint::black_box;
use std::time::{Duration, Instant};

use lsm_core::{
    CheckoutId, CheckoutRequest, ClientId, Command, CostRule, Demand, Entitlement, FeatureName,
    HostName, Install, Item, Meta, Op, Policy, Request, Response, State, UserName,
};

use crate::{mix, name};

/// Tokens of the one feature.
pub const TOKENS_TOTAL: u64 = 10_000_000;
/// Lease length of every checkout.
pub const LEASE_TTL_MS: u64 = 30_000;
/// The lease when releases are random: with 100,000 live, the longest-lived checkout of a
/// run of millions of pairs outlives 30 s of replicated time.
pub const RANDOM_LEASE_TTL_MS: u64 = 3_600_000;
/// Distinct users the checkouts are spread over.
pub const USERS: usize = 1_000;
/// Distinct hosts the checkouts are spread over.
pub const HOSTS: usize = 2_000;
/// Replicated time advances this many microseconds per command.
pub const STEP_US: u64 = 10;
/// The replicated clock starts here (1 January 2026, in ms since the Unix epoch).
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Pairs built ahead of each timed stretch.
pub const CHUNK: u64 = 256;

/// Which live checkout each pair releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The oldest: every checkout lives exactly `live` pairs, and ids leave the tables in
    /// the order they came.
    Oldest,
    /// One chosen at random (by a fixed hash, so runs repeat): lifetimes spread out
    /// around `live` pairs, and releases come from anywhere in the tables.
    Random,
}

impl std::str::FromStr for Order {
    type Err = String;

    fn from_str(s: &str) -> Result<Order, String> {
        match s {
            "oldest" => Ok(Order::Oldest),
            "random" => Ok(Order::Random),
            _ => Err(format!("{s:?} is not a release order (oldest or random)")),
        }
    }
}

/// Builds the commands of the workload and remembers what they will do, so that the
/// timed loop only applies them.
pub struct Workload {
    live: u64,
    clients: Vec<ClientId>,
    /// The users checkouts are spread over.
    pub users: Vec<UserName>,
    hosts: Vec<HostName>,
    feature: FeatureName,
    /// The last sequence number each client used.
    seqs: Vec<u64>,
    /// Checkouts granted so far; checkout `j` gets id `j + 1` and belongs to client
    /// `j % clients`.
    granted: u64,
    /// Checkouts released so far.
    released: u64,
    /// Heartbeats sent so far.
    renewed: u64,
    order: Order,
    /// With [`Order::Random`], the numbers `j` of the live checkouts, in no order.
    live_set: Vec<u64>,
    /// The last log index used.
    index: u64,
    /// Replicated time in microseconds since `EPOCH_MS`.
    clock_us: u64,
}

/// A command ready to apply, with the answer it must get.
pub struct Step {
    meta: Meta,
    command: Command,
    expect: Expect,
}

/// What a step must be answered with.
enum Expect {
    Granted(CheckoutId),
    Released(CheckoutId),
    Renewed(CheckoutId),
}

impl Workload {
    /// A workload of `live` checkouts, released oldest first.
    pub fn new(live: u64) -> Workload {
        Workload::with_order(live, Order::Oldest)
    }

    /// A workload of `live` checkouts, released in `order`.
    pub fn with_order(live: u64, order: Order) -> Workload {
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
            renewed: 0,
            order,
            live_set: Vec::new(),
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
    pub fn checkout(&mut self) -> Step {
        let j = self.granted;
        self.granted += 1;
        if self.order == Order::Random {
            self.live_set.push(j);
        }
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
            lease_ttl_ms: match self.order {
                Order::Oldest => LEASE_TTL_MS,
                Order::Random => RANDOM_LEASE_TTL_MS,
            },
            borrow_until_ms: None,
            wait: None,
        };
        let meta = self.meta();
        let command = self.request(client, Op::Checkout(request));
        Step { meta, command, expect: Expect::Granted(CheckoutId(j + 1)) }
    }

    /// The release of a live checkout, by its owner: the oldest, or one at random.
    pub fn release(&mut self) -> Step {
        let j = match self.order {
            Order::Oldest => self.released,
            Order::Random => {
                let at = mix(self.released ^ 0x5eed) % self.live_set.len() as u64;
                self.live_set.swap_remove(at as usize)
            }
        };
        self.released += 1;
        self.by_owner(j, Op::Release, Expect::Released)
    }

    /// A heartbeat of a live checkout by its owner: with [`Order::Oldest`] the one renewed
    /// longest ago, each in turn, as clients that all heartbeat at one interval do; with
    /// [`Order::Random`] one chosen at random. The renewal moves the lease to the back of
    /// the lease index: from its front in turn, from anywhere at random.
    pub fn heartbeat(&mut self) -> Step {
        let j = match self.order {
            Order::Oldest => self.released + self.renewed % (self.granted - self.released),
            Order::Random => {
                let at = mix(self.renewed ^ 0xbea7) % self.live_set.len() as u64;
                self.live_set[at as usize]
            }
        };
        self.renewed += 1;
        self.by_owner(j, Op::Heartbeat, Expect::Renewed)
    }

    /// A request about checkout `j` by the client that owns it.
    fn by_owner(
        &mut self,
        j: u64,
        op: fn(CheckoutId) -> Op,
        expect: fn(CheckoutId) -> Expect,
    ) -> Step {
        let client = (j % self.clients.len() as u64) as usize;
        let id = CheckoutId(j + 1);
        let meta = self.meta();
        let command = self.request(client, op(id));
        Step { meta, command, expect: expect(id) }
    }

    /// A state with the feature installed and `live` checkouts granted.
    pub fn build(&mut self) -> State {
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
pub fn run(state: &mut State, step: Step) {
    let out = state.apply(step.meta, step.command).expect("apply never fails here");
    let ok = match (&out.response, step.expect) {
        (Response::Granted(grant), Expect::Granted(id)) => grant.id == id,
        (Response::Released { id }, Expect::Released(want)) => *id == want,
        (Response::Renewed(grant), Expect::Renewed(id)) => grant.id == id,
        _ => false,
    };
    assert!(ok, "unexpected answer {:?}", out.response);
    black_box(out);
}

/// Applies `pairs` pairs to `state`, building the commands in chunks outside the timed
/// stretches; the time spent applying.
pub fn time_pairs(state: &mut State, workload: &mut Workload, pairs: u64) -> Duration {
    time_steps(state, workload, pairs, |w| [w.checkout(), w.release()])
}

/// Applies `heartbeats` heartbeats to `state`, as [`time_pairs`] does pairs.
pub fn time_heartbeats(state: &mut State, workload: &mut Workload, heartbeats: u64) -> Duration {
    time_steps(state, workload, heartbeats, |w| [w.heartbeat()])
}

/// Applies `count` groups of steps made by `next`, built in chunks outside the timed
/// stretches; the time spent applying.
fn time_steps<const N: usize>(
    state: &mut State,
    workload: &mut Workload,
    count: u64,
    mut next: impl FnMut(&mut Workload) -> [Step; N],
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = count;
    while left > 0 {
        let n = left.min(CHUNK);
        let steps: Vec<[Step; N]> = (0..n).map(|_| next(workload)).collect();
        let start = Instant::now();
        for group in steps {
            for step in group {
                run(state, step);
            }
        }
        elapsed += start.elapsed();
        left -= n;
    }
    elapsed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step of every mode gets the answer it expects (`run` checks each), the live
    /// count holds, and heartbeats in turn renew every live checkout once per round.
    #[test]
    fn every_mode_gets_the_answers_it_expects() {
        for order in [Order::Oldest, Order::Random] {
            let mut workload = Workload::with_order(200, order);
            let mut state = workload.build();
            time_pairs(&mut state, &mut workload, 500);
            let first = state.summary().next_expiry;
            time_heartbeats(&mut state, &mut workload, 400);
            assert_eq!(state.summary().checkouts, 200, "{order:?}");
            if order == Order::Oldest {
                // Two rounds of renewals in turn: the earliest lease is one renewed in
                // the second round, later than any lease before the heartbeats.
                assert!(state.summary().next_expiry > first, "{order:?}");
            }
        }
    }
}
