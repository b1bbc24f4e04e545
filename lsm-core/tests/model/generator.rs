//! Seeded random commands for the model test.
//!
//! A run draws a base license per seed (six features: plain, HPC packs, dated, ruled by
//! an options file, and two split into SMP, MPP and batch pools, one of them lending) and
//! then one command per step: checkouts of one to three features by tokens or cores,
//! with or without a wait or an offline borrow; heartbeats, polls, releases, cancels
//! (often of a blocking waiter), revocations, late heartbeats on ended ids, retries of
//! kept requests, odd inputs that must be refused and change nothing, ticks, leader
//! changes and new licenses that shrink, grow, drop features and rename pools. The clock
//! mostly steps forward, sometimes jumps an hour and sometimes runs backwards (which the
//! state must ignore). Every choice comes from the seed, so a run replays exactly.

use std::collections::{BTreeMap, VecDeque};

use lsm_core::{
    CheckoutId, CheckoutRequest, ClientId, Command, CostRule, Demand, Entitlement, FeatureName,
    Install, Item, JobId, MAX_REASON_LEN, Meta, Op, ParallelMode, Policy, PoolSpec, Request,
    Response, Rule, Subject, Wait,
};
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use crate::{HOUR, MAX_LIVE, MINUTE, Run, SECOND, T0, name};

pub const SOLO: &str = "solo";
pub const HPC: &str = "hpc";
pub const LATE: &str = "late";
pub const RULED: &str = "ruled";
pub const CRASH: &str = "crash";
pub const IMPLICIT: &str = "implicit";
pub const FEATURES: [&str; 6] = [SOLO, HPC, LATE, RULED, CRASH, IMPLICIT];

/// What kind of step the generator made, for the checks that depend on it.
pub enum Kind {
    Normal,
    /// An input that must be refused and change nothing.
    Odd,
    /// A repeated request; `alt` is another kept request of the same client, if any.
    Retry {
        alt: Option<Request>,
    },
}

/// A generated client.
pub struct ClientState {
    pub id: ClientId,
    pub next_seq: u64,
    /// Recent requests and the first answers to them, for retries.
    pub sent: VecDeque<(Request, Option<Response>)>,
}

impl Run {
    pub fn next_meta(&mut self) -> Meta {
        self.index += 1;
        let now = if self.index == 1 { T0 } else { self.model.now };
        let rng = &mut self.rng;
        let now_ms = match rng.random_range(0..1_000) {
            0 => now + rng.random_range(HOUR..=2 * HOUR),
            1..30 => {
                self.coverage.backwards_clock += 1;
                now - rng.random_range(1..=30 * SECOND)
            }
            30..180 => now,
            180..780 => now + rng.random_range(1..=SECOND),
            _ => now + rng.random_range(SECOND..=10 * SECOND),
        };
        Meta { index: self.index, now_ms }
    }

    /// Draws the next command. `meta_now` is the clock the command will carry.
    pub fn generate(&mut self, meta_now: u64) -> (Command, Kind) {
        let now = self.model.now.max(meta_now);
        if self.model.live.len() > MAX_LIVE
            && let Some(cmd) = self.gen_release()
        {
            return (cmd, Kind::Normal);
        }
        // A new leader often finds an offline borrow that ended during the election.
        let overdue_borrow =
            self.model.live.iter().any(|c| c.borrowed && c.lease_expires_at_ms <= now);
        if overdue_borrow && self.rng.random_bool(0.3) {
            return (Command::LeaderChange { leader: self.rng.random_range(1..=5) }, Kind::Normal);
        }
        let roll = self.rng.random_range(0..1_000);
        let generated = match roll {
            0..110 => self.gen_heartbeat(),
            110..200 => self.gen_poll(),
            200..290 => self.gen_release(),
            290..320 => self.gen_cancel(),
            320..370 => return self.gen_retry(now),
            370..430 => return self.gen_odd(now),
            430..450 => self.gen_revoke(),
            450..475 => self.gen_late_heartbeat(),
            475..535 => Some(Command::Tick),
            535..545 => Some(Command::LeaderChange { leader: self.rng.random_range(1..=5) }),
            545..550 => return self.gen_install(true),
            _ => None,
        };
        match generated {
            Some(command) => (command, Kind::Normal),
            None => (self.gen_checkout(now), Kind::Normal),
        }
    }

    /// A request from client `who` with the next sequence number and a lagging ack.
    fn send(&mut self, who: usize, op: Op) -> Command {
        let lag = self.rng.random_range(0..=3);
        let client = &mut self.clients[who];
        let seq = client.next_seq;
        client.next_seq += 1;
        let request = Request { client: client.id.clone(), seq, ack: seq.saturating_sub(lag), op };
        client.sent.push_back((request.clone(), None));
        if client.sent.len() > 16 {
            client.sent.pop_front();
        }
        Command::Request(request)
    }

    fn admin(&self) -> usize {
        self.clients.len() - 1
    }

    fn client_index(&self, id: &ClientId) -> usize {
        self.clients.iter().position(|c| &c.id == id).expect("every owner is a generated client")
    }

    fn random_client(&mut self) -> usize {
        self.rng.random_range(0..self.admin())
    }

    /// A live checkout, drawn from the live ones in id order.
    fn random_live(&mut self) -> Option<(CheckoutId, ClientId)> {
        let live = self.model.live.iter().map(|c| (c.id, c.client.clone()));
        self.pick(live.collect())
    }

    /// A queued request, drawn from the queued ones in id order.
    fn random_queued(&mut self) -> Option<(CheckoutId, ClientId)> {
        let queued = self.model.queue.iter().map(|w| (w.id, w.client.clone()));
        self.pick(queued.collect())
    }

    fn pick(&mut self, mut ids: Vec<(CheckoutId, ClientId)>) -> Option<(CheckoutId, ClientId)> {
        if ids.is_empty() {
            return None;
        }
        ids.sort();
        let i = self.rng.random_range(0..ids.len());
        Some(ids.swap_remove(i))
    }

    fn gen_heartbeat(&mut self) -> Option<Command> {
        let (id, owner) = self.random_live()?;
        let who = self.client_index(&owner);
        Some(self.send(who, Op::Heartbeat(id)))
    }

    fn gen_poll(&mut self) -> Option<Command> {
        let (id, owner) = self.random_queued()?;
        let who = self.client_index(&owner);
        Some(self.send(who, Op::Heartbeat(id)))
    }

    fn gen_release(&mut self) -> Option<Command> {
        let (id, owner) = self.random_live()?;
        let who = self.client_index(&owner);
        Some(self.send(who, Op::Release(id)))
    }

    /// Withdraws a queued request, often one that blocks its features, so that the queue
    /// must serve the requests it held back.
    fn gen_cancel(&mut self) -> Option<Command> {
        let blocking: Vec<(CheckoutId, ClientId)> = (self.model.queue.iter())
            .filter(|w| self.model.blocking(w))
            .map(|w| (w.id, w.client.clone()))
            .collect();
        let (id, owner) = match blocking.choose(&mut self.rng) {
            Some(blocker) if self.rng.random_bool(0.5) => blocker.clone(),
            _ => self.random_queued()?,
        };
        let who = self.client_index(&owner);
        Some(self.send(who, Op::Release(id)))
    }

    fn gen_revoke(&mut self) -> Option<Command> {
        let id = match self.rng.random_range(0..10) {
            0..6 => self.random_live()?.0,
            6..9 => self.random_queued()?.0,
            _ => CheckoutId(self.rng.random_range(0..self.model.next_id + 3)),
        };
        let reason = ["license audit", "maintenance", "runaway job"]
            .choose(&mut self.rng)
            .expect("not empty");
        let admin = self.admin();
        Some(self.send(admin, Op::Revoke { id, reason: reason.to_string() }))
    }

    /// A heartbeat or release, by its former owner, on an id that has ended.
    fn gen_late_heartbeat(&mut self) -> Option<Command> {
        let n = self.model.ended.len();
        if n == 0 {
            return None;
        }
        let (id, owner) = self.model.ended[self.rng.random_range(0..n)].clone();
        let who = self.client_index(&owner);
        let op = if self.rng.random_bool(0.7) { Op::Heartbeat(id) } else { Op::Release(id) };
        Some(self.send(who, op))
    }

    fn gen_retry(&mut self, now: u64) -> (Command, Kind) {
        let who = self.random_client();
        let client = &self.clients[who];
        let kept = self.model.session(&client.id);
        let replayable: Vec<&Request> = (client.sent.iter())
            .map(|(r, _)| r)
            .filter(|r| kept.is_some_and(|k| k.reply(r.seq).is_some()))
            .collect();
        let Some(&request) = replayable.choose(&mut self.rng) else {
            return (self.gen_checkout(now), Kind::Normal);
        };
        let request = request.clone();
        let alt = replayable.iter().find(|r| r.seq != request.seq).map(|r| (*r).clone());
        (Command::Request(request), Kind::Retry { alt })
    }

    fn gen_checkout(&mut self, now: u64) -> Command {
        let who = self.random_client();
        let request = self.random_checkout(now);
        self.send(who, Op::Checkout(request))
    }

    fn random_checkout(&mut self, now: u64) -> CheckoutRequest {
        let count = match self.rng.random_range(0..100) {
            0..70 => 1,
            70..92 => 2,
            _ => 3,
        };
        let names: Vec<&str> = FEATURES.choose_multiple(&mut self.rng, count).copied().collect();
        let items = names.into_iter().map(|f| self.random_item(f)).collect();
        let rng = &mut self.rng;
        let user = if rng.random_bool(0.05) {
            self.mallory.clone()
        } else {
            self.users.choose(rng).expect("not empty").clone()
        };
        let host = self.hosts.choose(rng).expect("not empty").clone();
        let job = rng
            .random_bool(0.5)
            .then(|| name::<JobId>(&format!("job-{}", rng.random_range(0..1_000))));
        let wait = rng.random_bool(0.45).then(|| Wait {
            priority: rng.random_range(0..=3),
            poll_ttl_ms: rng.random_range(2 * SECOND..=60 * SECOND),
        });
        let borrow_until_ms = (wait.is_none() && rng.random_bool(0.05))
            .then(|| now + rng.random_range(SECOND..=150 * SECOND));
        CheckoutRequest {
            items,
            user,
            host,
            job,
            lease_ttl_ms: rng.random_range(2 * SECOND..=40 * SECOND),
            borrow_until_ms,
            wait,
        }
    }

    fn random_item(&mut self, feature: &str) -> Item {
        let f: FeatureName = name(feature);
        let base = &self.base[&f];
        let total = base.ent.tokens_total;
        let rng = &mut self.rng;
        let max_cores = match feature {
            CRASH => 24,
            IMPLICIT => 2_000,
            HPC => 3_000,
            _ => 6,
        };
        let cores_first = matches!(feature, CRASH | IMPLICIT | HPC);
        let demand = match rng.random_range(0..100) {
            0..3 => Demand::Tokens(total + rng.random_range(1..=5)),
            n if (n < 70) == cores_first => {
                let mode = if rng.random_bool(0.5) { ParallelMode::Smp } else { ParallelMode::Mpp };
                // Small jobs often cost nothing beyond the base.
                let most = if rng.random_bool(0.3) { max_cores.min(16) } else { max_cores };
                Demand::Cores { cores: rng.random_range(1..=most), mode }
            }
            _ => Demand::Tokens(rng.random_range(1..=(total / 3).max(1))),
        };
        let pool = match rng.random_range(0..100) {
            0..8 => (self.model.feature(&f))
                .and_then(|state| state.pools.choose(rng))
                .map(|pool| pool.spec.name.clone()),
            8..11 => Some(name("nope")),
            _ => None,
        };
        Item { feature: f, demand, pool }
    }

    /// Requests that must be refused without changing anything.
    fn gen_odd(&mut self, now: u64) -> (Command, Kind) {
        let who = self.random_client();
        let mut request = self.random_checkout(now);
        request.items.truncate(1);
        let odd = Kind::Odd;
        let op = match self.rng.random_range(0..19) {
            0 => {
                request.items[0].feature = name("nosuch");
                Op::Checkout(request)
            }
            1 => {
                request.items[0].demand = Demand::Tokens(0);
                Op::Checkout(request)
            }
            2 => {
                request.items[0].demand = Demand::Cores { cores: 0, mode: ParallelMode::Smp };
                Op::Checkout(request)
            }
            3 => {
                let again = request.items[0].clone();
                request.items.push(again);
                Op::Checkout(request)
            }
            4 => {
                let item = request.items[0].clone();
                request.items = vec![item; 17];
                Op::Checkout(request)
            }
            5 => {
                request.borrow_until_ms = None;
                request.lease_ttl_ms =
                    *[0, 999, 2 * HOUR].choose(&mut self.rng).expect("not empty");
                Op::Checkout(request)
            }
            6 => {
                request.borrow_until_ms = None;
                request.wait = Some(Wait {
                    priority: 0,
                    poll_ttl_ms: *[0, 2 * HOUR].choose(&mut self.rng).expect("not empty"),
                });
                Op::Checkout(request)
            }
            7 => {
                request.borrow_until_ms = Some(now + MINUTE);
                request.wait = Some(Wait { priority: 1, poll_ttl_ms: 10 * SECOND });
                Op::Checkout(request)
            }
            8 => {
                let past =
                    if self.rng.random_bool(0.5) { 0 } else { self.rng.random_range(1..=SECOND) };
                request.borrow_until_ms = Some(now - past);
                request.wait = None;
                Op::Checkout(request)
            }
            9 => {
                request.items[0].feature = name(HPC);
                request.borrow_until_ms = Some(now + MINUTE);
                request.wait = None;
                Op::Checkout(request)
            }
            10 => {
                request.items[0].demand = Demand::Tokens(2_000_000);
                Op::Checkout(request)
            }
            11 => {
                request.items[0].demand = Demand::Cores { cores: 1 << 21, mode: ParallelMode::Mpp };
                Op::Checkout(request)
            }
            12 => {
                request.items[0].feature = name(RULED);
                request.user = self.mallory.clone();
                request.borrow_until_ms = None;
                Op::Checkout(request)
            }
            13 => {
                request.items[0].pool = Some(name("nope"));
                request.borrow_until_ms = None;
                Op::Checkout(request)
            }
            14 => {
                // Someone else's checkout or queued request.
                let other = if self.rng.random_bool(0.7) {
                    self.random_live()
                } else {
                    self.random_queued()
                };
                let Some((id, owner)) = other else { return self.gen_checkout_kind(now) };
                let mut who = self.random_client();
                if self.clients[who].id == owner {
                    who = (who + 1) % self.admin();
                }
                let op =
                    if self.rng.random_bool(0.5) { Op::Heartbeat(id) } else { Op::Release(id) };
                return (self.send(who, op), odd);
            }
            15 => {
                let id = if self.rng.random_bool(0.3) {
                    CheckoutId(0)
                } else {
                    CheckoutId(self.model.next_id + self.rng.random_range(0..5))
                };
                if self.rng.random_bool(0.5) { Op::Heartbeat(id) } else { Op::Release(id) }
            }
            16 => {
                let Some((id, _)) = self.random_live() else { return self.gen_checkout_kind(now) };
                let admin = self.admin();
                return (
                    self.send(admin, Op::Revoke { id, reason: "x".repeat(MAX_REASON_LEN + 1) }),
                    odd,
                );
            }
            17 => {
                // An ack above the sequence number.
                let client = &mut self.clients[who];
                let seq = client.next_seq;
                client.next_seq += 1;
                let request = Request {
                    client: client.id.clone(),
                    seq,
                    ack: seq + 1,
                    op: Op::Heartbeat(CheckoutId(0)),
                };
                return (Command::Request(request), odd);
            }
            _ => {
                // A request older than the kept replies, or an invalid license.
                let floor = self.model.session(&self.clients[who].id).map_or(0, |s| s.floor);
                if floor == 0 || self.rng.random_bool(0.3) {
                    return self.gen_install(false);
                }
                let client = &self.clients[who];
                let request = Request {
                    client: client.id.clone(),
                    seq: floor - 1,
                    ack: 0,
                    op: Op::Heartbeat(CheckoutId(0)),
                };
                return (Command::Request(request), odd);
            }
        };
        (self.send(who, op), odd)
    }

    fn gen_checkout_kind(&mut self, now: u64) -> (Command, Kind) {
        (self.gen_checkout(now), Kind::Normal)
    }

    /// A new license: the base configuration with totals, reserves and caps drawn again
    /// (some totals shrink), a feature or pool sometimes left out; or an invalid one.
    pub fn gen_install(&mut self, valid: bool) -> (Command, Kind) {
        let first = self.ctx.step == 0;
        let mut entitlements = Vec::new();
        let mut pools = BTreeMap::new();
        for (f, base) in &self.base {
            let rng = &mut self.rng;
            if !first && matches!(f.as_str(), HPC | LATE) && rng.random_bool(0.15) {
                continue;
            }
            let mut ent = base.ent.clone();
            if !first {
                ent.tokens_total = (ent.tokens_total * rng.random_range(40..=130) / 100).max(1);
            }
            if base.pools[0].name.as_str() != "default" {
                pools.insert(f.clone(), random_pools(rng, f.as_str(), ent.tokens_total, !first));
            }
            entitlements.push(ent);
        }
        let mut install = Install {
            entitlements,
            policy: Policy {
                pools,
                user_groups: self.user_groups.clone(),
                host_groups: self.host_groups.clone(),
                rules: self.rules.clone(),
            },
        };
        if !valid {
            match self.rng.random_range(0..4) {
                0 => {
                    let again = install.entitlements[0].clone();
                    install.entitlements.push(again);
                }
                1 => install.entitlements[0].expires_at_ms = install.entitlements[0].starts_at_ms,
                2 => {
                    let crash = install
                        .policy
                        .pools
                        .get_mut(&name::<FeatureName>(CRASH))
                        .expect("crash has pools");
                    let total = self.base[&name::<FeatureName>(CRASH)].ent.tokens_total * 2;
                    crash[0].reserve = total;
                    crash[0].cap = None;
                    crash[0].keep_idle = 0;
                }
                _ => install.policy.rules.push(Rule::Max {
                    feature: name("nosuch"),
                    subject: Subject::EachUser,
                    tokens: 1,
                }),
            }
        }
        self.install_ok = Some(valid);
        let admin = self.admin();
        let command = self.send(admin, Op::Install(install));
        (command, if valid { Kind::Normal } else { Kind::Odd })
    }
}

/// A feature of the per-seed base configuration that re-installs vary.
pub struct BaseFeature {
    pub ent: Entitlement,
    pub pools: Vec<PoolSpec>,
}

/// The per-seed base configuration: features with a single default pool (one of them
/// with dates, one with rules) and two with SMP/MPP pools, one of them lending.
pub fn base_config(rng: &mut ChaCha8Rng) -> BTreeMap<FeatureName, BaseFeature> {
    let default = vec![PoolSpec::open(name("default"))];
    let start = T0 + rng.random_range(10 * MINUTE..=40 * MINUTE);
    let features = [
        (SOLO, rng.random_range(16..=48), CostRule::default(), 0, u64::MAX, 2 * MINUTE),
        (
            HPC,
            rng.random_range(6..=20),
            CostRule::HpcPacks {
                base_tokens: rng.random_range(0..=1),
                cores_included: *[0, 8].choose(rng).expect("not empty"),
            },
            0,
            u64::MAX,
            0,
        ),
        (
            LATE,
            rng.random_range(4..=16),
            CostRule::default(),
            start,
            start + rng.random_range(20 * MINUTE..=60 * MINUTE),
            0,
        ),
        (
            RULED,
            rng.random_range(10..=30),
            CostRule::PerCore { base_tokens: 0, tokens_per_core: 2, cores_included: 0 },
            0,
            u64::MAX,
            0,
        ),
        (
            CRASH,
            rng.random_range(40..=100),
            CostRule::PerCore {
                base_tokens: rng.random_range(0..=1),
                tokens_per_core: 1,
                cores_included: 2,
            },
            0,
            u64::MAX,
            MINUTE,
        ),
        (
            IMPLICIT,
            rng.random_range(12..=40),
            CostRule::HpcPacks {
                base_tokens: rng.random_range(0..=1),
                cores_included: *[0, 8].choose(rng).expect("not empty"),
            },
            0,
            u64::MAX,
            0,
        ),
    ];
    (features.into_iter())
        .map(|(f, total, cost, starts_at_ms, expires_at_ms, max_borrow_ms)| {
            let feature: FeatureName = name(f);
            let ent = Entitlement {
                feature: feature.clone(),
                license: name("site-2026"),
                tokens_total: total,
                starts_at_ms,
                expires_at_ms,
                cost,
                max_borrow_ms,
            };
            let pools = match f {
                CRASH | IMPLICIT => random_pools(rng, f, total, false),
                _ => default.clone(),
            };
            (feature, BaseFeature { ent, pools })
        })
        .collect()
}

/// Valid pools for `crash` (an open batch pool, an SMP pool that lends down to a low-water
/// mark, an MPP pool that sometimes lends too) or `implicit` (SMP and MPP pools that do not
/// lend).
/// A varied license sometimes drops the batch pool or renames the MPP pool.
fn random_pools(rng: &mut ChaCha8Rng, feature: &str, total: u64, vary: bool) -> Vec<PoolSpec> {
    let batch = feature == CRASH && !(vary && rng.random_bool(0.2));
    let mpp = if vary && rng.random_bool(0.25) { "mpp-b" } else { "mpp" };
    let mpp_lends = feature == CRASH && rng.random_bool(0.5);
    let mut pool = |pool: &str, lend: bool, modes: Vec<ParallelMode>| {
        let reserve = rng.random_range(0..=total / 3);
        let cap = rng.random_bool(0.5).then(|| rng.random_range(reserve.max(1)..=total));
        let keep_idle = if lend { rng.random_range(0..=reserve) } else { 0 };
        PoolSpec { name: name(pool), reserve, cap, lend, keep_idle, modes }
    };
    let smp = pool("smp", feature == CRASH, vec![ParallelMode::Smp]);
    let mpp = pool(mpp, mpp_lends, vec![ParallelMode::Mpp]);
    // The batch pool comes first, so requests by tokens draw on it and borrow from both.
    let mut pools = vec![smp, mpp];
    if batch {
        pools.insert(0, PoolSpec::open(name("batch")));
    }
    pools
}
