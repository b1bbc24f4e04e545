//! Randomized model test of the license state machine.
//!
//! Every run draws a license configuration and a long command sequence from a seeded
//! ChaCha8 generator and applies the commands to a [`State`]. Beside it runs a reference
//! model, written in this file without reusing the crate's logic, that follows the commands
//! and the answers and events they produce: live checkouts (owner, items, fence, lease),
//! queued requests (order, bypass counts, wait expiry), tombstones, client sessions and the
//! installed configuration. After every step the test checks that:
//!
//! - `check_invariants` holds, and `summary`, `list_checkouts`, `list_queue`,
//!   `features_status` and `checkout_status` agree with the model;
//! - every answer is the one the model predicts. The model replays the documented rule
//!   order (request fields, client limits, unknown names and dates, sizes, access rules, max
//!   rules, blocking waiters, free tokens, pool caps and reserves) exactly, with one
//!   exception: it does not track which reserve a lending pool has lent, so where that
//!   decides a grant it accepts either answer, and everything that follows must still fit;
//! - the events account for everything: expiries come first and are exactly the leases
//!   and waits that are due, direct grants take the next id, every grant takes the next
//!   fence, queued ids are granted at most once and only from the queue, the `Granted` and
//!   `Ended` events add up to the change in pool usage, and no grant passes a feature total,
//!   a pool cap, another pool's reserve or a max rule, not even after a new license shrank a
//!   feature below its use;
//! - a waiter whose tokens came free is granted if it fits (unless an earlier blocking
//!   waiter holds one of its features) and dropped if it never can;
//! - a lease or wait that is due is gone after the next command;
//! - a retry with the same `(client, seq)` gets the first answer and changes nothing but the
//!   session's clock, a refused odd input changes nothing, and a second `State` fed the same
//!   commands (and now and then restored from its own snapshot) gives the same outputs and
//!   the same `state_hash`.
//!
//! A plain `cargo test -p lsm-core --test model` runs 20 seeds of 5,000 steps each. Every
//! failure names its seed and step and lists the last commands. To replay one seed, run
//! `LSM_MODEL_SEED=<seed> cargo test -p lsm-core --test model`; `LSM_MODEL_STEPS=<n>` sets
//! the number of steps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::{self, Debug, Write as _};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use lsm_core::{
    Checkout, CheckoutFilter, CheckoutId, CheckoutRequest, CheckoutStatus, ClientId, Command,
    CostRule, Demand, Denial, End, Entitlement, Event, FeatureName, FeatureStatus, Grant,
    GrantedItem, GroupName, HostName, Install, Item, JobId, Limits, MAX_REASON_LEN, Meta, Op,
    Output, ParallelMode, Policy, PoolName, PoolSpec, Queued, Request, Response, Rule, State,
    Subject, UserName, Wait, WaiterInfo,
};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seeds in a plain run.
const DEFAULT_SEEDS: u64 = 20;
/// Steps per seed in a plain run.
const DEFAULT_STEPS: usize = 5_000;
/// The first seed of a plain run; the others follow it.
const FIRST_SEED: u64 = 1;
/// The clock at the first command.
const T0: u64 = 1_750_000_000_000;
const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
/// In an expected `NoTokens`, an `available` count the model cannot know.
const LOOSE: u64 = u64::MAX;
/// Live checkouts above which the generator only releases.
const MAX_LIVE: usize = 150;
/// Commands kept for the failure report.
const TRACE_LEN: usize = 12;

#[test]
fn random_command_sequences_match_the_model() {
    let steps = env_number("LSM_MODEL_STEPS").map_or(DEFAULT_STEPS, |n| n as usize);
    let seeds: Vec<u64> = match env_number("LSM_MODEL_SEED") {
        Some(seed) => vec![seed],
        None => (FIRST_SEED..FIRST_SEED + DEFAULT_SEEDS).collect(),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(seeds.len());
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Coverage::default());
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    // A failing seed has printed its message; the other seeds still run.
                    let run = std::panic::catch_unwind(|| Run::new(seed, steps).run());
                    match run {
                        Ok(coverage) => total.lock().expect("not poisoned").add(&coverage),
                        Err(_) => failed.lock().expect("not poisoned").push(seed),
                    }
                }
            });
        }
    });
    let mut failed = failed.into_inner().expect("not poisoned");
    failed.sort();
    assert!(failed.is_empty(), "seeds {failed:?} failed; their messages are above");
    let total = total.into_inner().expect("not poisoned");
    eprintln!("model test: {} seeds x {steps} steps: {total:?}", seeds.len());
    if seeds.len() as u64 == DEFAULT_SEEDS && steps >= DEFAULT_STEPS {
        total.assert_everything_happened();
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    (panic.downcast_ref::<&str>().copied())
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.trim().parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

fn name<T: FromStr>(s: &str) -> T
where
    T::Err: Debug,
{
    s.parse().unwrap_or_else(|e| panic!("bad name {s:?}: {e:?}"))
}

/// Seed, step and recent commands, for failure messages.
struct Ctx {
    seed: u64,
    step: usize,
    recent: VecDeque<(Meta, Command)>,
}

impl Ctx {
    fn fail(&self, msg: fmt::Arguments) -> ! {
        let mut trace = String::new();
        for (meta, command) in &self.recent {
            let _ = writeln!(trace, "  {meta:?} {command:?}");
        }
        panic!(
            "seed {seed} step {step}: {msg}\nlast commands, oldest first:\n{trace}\
             replay with LSM_MODEL_SEED={seed} LSM_MODEL_STEPS={steps}",
            seed = self.seed,
            step = self.step,
            steps = self.step + 1,
        )
    }
}

macro_rules! ensure {
    ($ctx:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            $ctx.fail(format_args!($($arg)+))
        }
    };
}

macro_rules! ensure_eq {
    ($ctx:expr, $left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (left, right) => {
                if left != right {
                    $ctx.fail(format_args!(
                        "{}\n  actual: {:?}\nexpected: {:?}",
                        format_args!($($arg)+),
                        left,
                        right
                    ))
                }
            }
        }
    };
}

/// How often things happened, summed over seeds, so a plain run can prove it reached them.
#[derive(Debug, Default)]
struct Coverage {
    steps: u64,
    direct_grants: u64,
    queue_grants: u64,
    multi_feature_grants: u64,
    borrows: u64,
    queued: u64,
    renewals: u64,
    polls: u64,
    releases: u64,
    cancels: u64,
    expiries: u64,
    queue_expiries: u64,
    queue_denied: u64,
    revocations: u64,
    revoked_answers: u64,
    no_tokens: u64,
    queue_blocked: u64,
    over_limit: u64,
    limit_reached: u64,
    replays: u64,
    stale: u64,
    odd_refusals: u64,
    installs: u64,
    shrinks_below_use: u64,
    leader_changes: u64,
    backwards_clock: u64,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        let Coverage {
            steps,
            direct_grants,
            queue_grants,
            multi_feature_grants,
            borrows,
            queued,
            renewals,
            polls,
            releases,
            cancels,
            expiries,
            queue_expiries,
            queue_denied,
            revocations,
            revoked_answers,
            no_tokens,
            queue_blocked,
            over_limit,
            limit_reached,
            replays,
            stale,
            odd_refusals,
            installs,
            shrinks_below_use,
            leader_changes,
            backwards_clock,
        } = other;
        self.steps += steps;
        self.direct_grants += direct_grants;
        self.queue_grants += queue_grants;
        self.multi_feature_grants += multi_feature_grants;
        self.borrows += borrows;
        self.queued += queued;
        self.renewals += renewals;
        self.polls += polls;
        self.releases += releases;
        self.cancels += cancels;
        self.expiries += expiries;
        self.queue_expiries += queue_expiries;
        self.queue_denied += queue_denied;
        self.revocations += revocations;
        self.revoked_answers += revoked_answers;
        self.no_tokens += no_tokens;
        self.queue_blocked += queue_blocked;
        self.over_limit += over_limit;
        self.limit_reached += limit_reached;
        self.replays += replays;
        self.stale += stale;
        self.odd_refusals += odd_refusals;
        self.installs += installs;
        self.shrinks_below_use += shrinks_below_use;
        self.leader_changes += leader_changes;
        self.backwards_clock += backwards_clock;
    }

    /// A plain run must reach every kind of outcome, or the generator has gone blind.
    fn assert_everything_happened(&self) {
        let counts = [
            ("direct grants", self.direct_grants),
            ("queue grants", self.queue_grants),
            ("multi-feature grants", self.multi_feature_grants),
            ("offline borrows", self.borrows),
            ("queued requests", self.queued),
            ("renewals", self.renewals),
            ("polls", self.polls),
            ("releases", self.releases),
            ("cancels", self.cancels),
            ("lease expiries", self.expiries),
            ("queue expiries", self.queue_expiries),
            ("queue drops after a new license", self.queue_denied),
            ("revocations", self.revocations),
            ("Revoked answers", self.revoked_answers),
            ("NoTokens refusals", self.no_tokens),
            ("QueueBlocked refusals", self.queue_blocked),
            ("OverLimit refusals", self.over_limit),
            ("LimitReached refusals", self.limit_reached),
            ("replayed retries", self.replays),
            ("stale retries", self.stale),
            ("odd inputs refused", self.odd_refusals),
            ("installs", self.installs),
            ("installs shrinking a feature below its use", self.shrinks_below_use),
            ("leader changes", self.leader_changes),
            ("clock steps backwards", self.backwards_clock),
        ];
        let missing: Vec<&str> =
            counts.iter().filter(|&&(_, n)| n == 0).map(|&(what, _)| what).collect();
        assert!(missing.is_empty(), "a plain run never produced: {missing:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------

/// One installed feature as the model sees it.
#[derive(Clone, Debug)]
struct FeatureCfg {
    ent: Entitlement,
    /// The installed pools; a feature without a policy entry has one open pool `default`.
    pools: Vec<PoolSpec>,
}

impl FeatureCfg {
    fn cap(&self, p: usize) -> u64 {
        self.pools[p].cap.unwrap_or(self.ent.tokens_total)
    }

    fn pool(&self, name: &PoolName) -> Option<usize> {
        self.pools.iter().position(|p| &p.name == name)
    }

    fn lends(&self) -> bool {
        self.pools.iter().any(|p| p.lend)
    }

    /// The pool an item draws on: the named one, else the one serving its mode, else the
    /// first.
    fn resolve(&self, item: &Item) -> Option<usize> {
        match (&item.pool, item.demand) {
            (Some(name), _) => self.pool(name),
            (None, Demand::Cores { mode, .. }) => {
                Some(self.pools.iter().position(|p| p.modes.contains(&mode)).unwrap_or(0))
            }
            (None, Demand::Tokens(_)) => Some(0),
        }
    }
}

/// A queued request as the model sees it.
#[derive(Clone, Debug)]
struct MWaiter {
    id: CheckoutId,
    client: ClientId,
    request: CheckoutRequest,
    priority: u8,
    poll_ttl_ms: u64,
    wait_expires_at_ms: u64,
    queued_at_ms: u64,
    bypassed: u32,
}

impl MWaiter {
    /// Queue order: higher priority first, then arrival.
    fn key(&self) -> (u8, CheckoutId) {
        (u8::MAX - self.priority, self.id)
    }

    fn wants(&self, feature: &FeatureName) -> bool {
        self.request.items.iter().any(|i| &i.feature == feature)
    }

    fn shares(&self, items: &[Item]) -> bool {
        items.iter().any(|i| self.wants(&i.feature))
    }
}

/// A client session as the model sees it.
struct MSession {
    last_seen_ms: u64,
    floor: u64,
    replies: BTreeMap<u64, Response>,
}

/// How the session table treats a command.
#[derive(Clone, Debug, PartialEq)]
enum Disposition {
    /// `Tick` or `LeaderChange`.
    System,
    /// A request with `ack > seq`, refused before its session is looked at.
    AckAboveSeq,
    /// A retry answered from the session.
    Replay,
    /// A retry older than the kept replies.
    Stale,
    /// A new request.
    New,
}

/// What the model expects a checkout request to be answered with.
#[derive(Debug)]
enum Expect {
    Granted,
    Queued,
    Denied(Denial),
}

impl Expect {
    fn matches(&self, response: &Response) -> bool {
        match (self, response) {
            (Expect::Granted, Response::Granted(_)) | (Expect::Queued, Response::Queued(_)) => true,
            (Expect::Denied(expected), Response::Denied(actual)) => {
                denial_matches(expected, actual)
            }
            _ => false,
        }
    }
}

/// Compares denials, ignoring problem texts and `available` counts the model cannot know.
fn denial_matches(expected: &Denial, actual: &Denial) -> bool {
    match (expected, actual) {
        (Denial::BadRequest { field: a, .. }, Denial::BadRequest { field: b, .. }) => a == b,
        (Denial::BadInstall(_), Denial::BadInstall(_)) => true,
        (
            Denial::NoTokens { feature, pool, available: LOOSE, requested },
            Denial::NoTokens { feature: f, pool: p, requested: r, .. },
        ) => feature == f && pool == p && requested == r,
        _ => expected == actual,
    }
}

/// True when a refusal may clear with time, so the request may wait for it.
fn transient(denial: &Denial) -> bool {
    match denial {
        Denial::NoTokens { .. } | Denial::QueueBlocked { .. } => true,
        Denial::PoolCap { cap, requested, .. } => requested <= cap,
        Denial::OverLimit { max, requested, .. } => requested <= max,
        _ => false,
    }
}

fn bad(field: impl Into<String>) -> Denial {
    Denial::BadRequest { field: field.into(), problem: String::new() }
}

fn limit(limit: &str, max: u64) -> Denial {
    Denial::LimitReached { limit: limit.to_string(), max }
}

/// Tokens a demand costs, computed from the documented formulas.
fn cost_tokens(cost: &CostRule, demand: Demand) -> u64 {
    let cores = match demand {
        Demand::Tokens(tokens) => return tokens,
        Demand::Cores { cores, .. } => cores,
    };
    match *cost {
        CostRule::PerCore { base_tokens, tokens_per_core, cores_included } => {
            base_tokens + tokens_per_core * cores.saturating_sub(cores_included)
        }
        CostRule::HpcPacks { base_tokens, cores_included } => {
            let extra = cores.saturating_sub(cores_included);
            let (mut packs, mut covered) = (0u32, 0u64);
            while covered < extra {
                packs += 1;
                covered = 2 * 4u64.pow(packs);
            }
            base_tokens + u64::from(packs)
        }
    }
}

/// Tokens a pool of a feature without lending pools could take now (own idle reserve
/// plus the free shared remainder), or `None` for a feature with lending pools.
///
/// Without lending, a pool holds `min(used, reserve)` of its own reserve (grants take the
/// reserve first and releases give it back last) and the rest from the shared remainder.
fn reachable(cfg: &FeatureCfg, p: usize, usage: &BTreeMap<PoolName, u64>) -> Option<u64> {
    if cfg.lends() {
        return None;
    }
    let reserve_of = |pool: &PoolName| cfg.pool(pool).map_or(0, |q| cfg.pools[q].reserve);
    let reserved: u64 = cfg.pools.iter().map(|q| q.reserve).sum();
    let shared_size = cfg.ent.tokens_total.saturating_sub(reserved);
    let excess: u64 = usage.iter().map(|(pool, &used)| used.saturating_sub(reserve_of(pool))).sum();
    let used_p = usage.get(&cfg.pools[p].name).copied().unwrap_or(0);
    let idle = cfg.pools[p].reserve.saturating_sub(used_p);
    Some(idle + shared_size.saturating_sub(excess))
}

/// Plans `tokens` for pool `p`. Where a lending pool's state decides, sets `unsure` and
/// answers as `guess` says.
fn plan_pool(
    cfg: &FeatureCfg,
    p: usize,
    tokens: u64,
    usage: &BTreeMap<PoolName, u64>,
    guess: bool,
    unsure: &mut bool,
) -> Result<(), Denial> {
    let spec = &cfg.pools[p];
    let used_p = usage.get(&spec.name).copied().unwrap_or(0);
    let in_use: u64 = usage.values().sum();
    let free = cfg.ent.tokens_total.saturating_sub(in_use);
    let reachable = reachable(cfg, p, usage);
    let no_tokens = |available| Denial::NoTokens {
        feature: cfg.ent.feature.clone(),
        pool: spec.name.clone(),
        available,
        requested: tokens,
    };
    // The cap speaks first, unless it is the feature total; then the total does.
    if used_p + tokens > cfg.cap(p) && cfg.cap(p) < cfg.ent.tokens_total {
        return Err(Denial::PoolCap {
            feature: cfg.ent.feature.clone(),
            pool: spec.name.clone(),
            cap: cfg.cap(p),
            held: used_p,
            requested: tokens,
        });
    }
    // The documented rule is `in_use + n <= T`: after a license shrank a feature below its
    // use, even a request that costs nothing is refused.
    if in_use + tokens > cfg.ent.tokens_total {
        return Err(no_tokens(reachable.map_or(LOOSE, |r| free.min(r))));
    }
    match reachable {
        Some(r) if tokens > r => Err(no_tokens(r)),
        Some(_) => Ok(()),
        None if !spec.lend && tokens <= spec.reserve.saturating_sub(used_p) => Ok(()),
        None => {
            *unsure = true;
            if guess { Ok(()) } else { Err(no_tokens(LOOSE)) }
        }
    }
}

struct Model {
    limits: Limits,
    /// Replicated time: the largest `now_ms` seen.
    now: u64,
    next_id: u64,
    next_fence: u64,
    config: BTreeMap<FeatureName, FeatureCfg>,
    /// Rules and groups in force (pools live in `config`).
    policy: Policy,
    live: BTreeMap<CheckoutId, Checkout>,
    queue: BTreeMap<CheckoutId, MWaiter>,
    tombstones: BTreeMap<CheckoutId, End>,
    sessions: BTreeMap<ClientId, MSession>,
    /// Recently ended ids and their owners, for late heartbeats.
    ended: VecDeque<(CheckoutId, ClientId)>,
    /// Features whose usage has been zero since the last install touched them, so their
    /// pool accounting has no unbacked tokens.
    clean: BTreeSet<FeatureName>,
    /// Features whose tokens came free in this step, for the queue progress check.
    freed: BTreeSet<FeatureName>,
    /// A new license came into force in this step.
    freed_all: bool,
}

impl Model {
    fn new(limits: Limits) -> Model {
        Model {
            limits,
            now: 0,
            next_id: 1,
            next_fence: 1,
            config: BTreeMap::new(),
            policy: Policy::default(),
            live: BTreeMap::new(),
            queue: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            sessions: BTreeMap::new(),
            ended: VecDeque::new(),
            clean: BTreeSet::new(),
            freed: BTreeSet::new(),
            freed_all: false,
        }
    }

    /// Tokens per pool of one feature, from the live checkouts.
    fn pool_usage(&self, feature: &FeatureName) -> BTreeMap<PoolName, u64> {
        let mut usage = BTreeMap::new();
        for item in self.live.values().flat_map(|c| c.items.iter()) {
            if &item.feature == feature {
                *usage.entry(item.pool.clone()).or_default() += item.tokens;
            }
        }
        usage
    }

    /// Tokens per feature and pool, without zeros.
    fn usage_map(&self) -> BTreeMap<(FeatureName, PoolName), u64> {
        let mut usage = BTreeMap::new();
        for item in self.live.values().flat_map(|c| c.items.iter()) {
            if item.tokens > 0 {
                *usage.entry((item.feature.clone(), item.pool.clone())).or_default() += item.tokens;
            }
        }
        usage
    }

    fn load(&self, client: &ClientId) -> (u64, u64) {
        let live = self.live.values().filter(|c| &c.client == client).count();
        let queued = self.queue.values().filter(|w| &w.client == client).count();
        (live as u64, queued as u64)
    }

    fn position(&self, waiter: &MWaiter) -> u64 {
        let key = waiter.key();
        1 + self.queue.values().filter(|w| w.key() < key).count() as u64
    }

    fn next_expiry(&self) -> Option<u64> {
        let leases = self.live.values().map(|c| c.lease_expires_at_ms);
        let waits = self.queue.values().map(|w| w.wait_expires_at_ms);
        leases.chain(waits).min()
    }

    fn matches(&self, subject: &Subject, user: &UserName, host: &HostName) -> bool {
        match subject {
            Subject::User(u) => u == user,
            Subject::EachUser => true,
            Subject::Group(g) => self.policy.user_groups.get(g).is_some_and(|m| m.contains(user)),
            Subject::Host(h) => h == host,
            Subject::HostGroup(g) => {
                self.policy.host_groups.get(g).is_some_and(|m| m.contains(host))
            }
        }
    }

    /// Tokens of `feature` that count against a rule on `subject` for `user`@`host`.
    fn held_by(
        &self,
        feature: &FeatureName,
        subject: &Subject,
        user: &UserName,
        host: &HostName,
    ) -> u64 {
        let counts = |c: &Checkout| match subject {
            Subject::User(_) | Subject::EachUser => &c.user == user,
            Subject::Host(_) => &c.host == host,
            Subject::Group(g) => {
                self.policy.user_groups.get(g).is_some_and(|m| m.contains(&c.user))
            }
            Subject::HostGroup(g) => {
                self.policy.host_groups.get(g).is_some_and(|m| m.contains(&c.host))
            }
        };
        (self.live.values().filter(|c| counts(c)).flat_map(|c| c.items.iter()))
            .filter(|i| &i.feature == feature)
            .map(|i| i.tokens)
            .sum()
    }

    fn check_access(
        &self,
        feature: &FeatureName,
        user: &UserName,
        host: &HostName,
    ) -> Result<(), Denial> {
        let (mut has_include, mut included) = (false, false);
        for rule in self.policy.rules.iter().filter(|r| r.feature() == feature) {
            match rule {
                Rule::Exclude { subject, .. } if self.matches(subject, user, host) => {
                    return Err(Denial::Excluded {
                        feature: feature.clone(),
                        subject: subject.clone(),
                    });
                }
                Rule::Include { subject, .. } => {
                    has_include = true;
                    included |= self.matches(subject, user, host);
                }
                _ => {}
            }
        }
        if has_include && !included {
            return Err(Denial::Excluded {
                feature: feature.clone(),
                subject: Subject::User(user.clone()),
            });
        }
        Ok(())
    }

    fn check_max(
        &self,
        feature: &FeatureName,
        user: &UserName,
        host: &HostName,
        tokens: u64,
    ) -> Result<(), Denial> {
        for rule in self.policy.rules.iter().filter(|r| r.feature() == feature) {
            let Rule::Max { subject, tokens: max, .. } = rule else { continue };
            if !self.matches(subject, user, host) {
                continue;
            }
            let held = self.held_by(feature, subject, user, host);
            if held + tokens > *max {
                return Err(Denial::OverLimit {
                    feature: feature.clone(),
                    subject: subject.clone(),
                    max: *max,
                    held,
                    requested: tokens,
                });
            }
        }
        Ok(())
    }

    /// The oldest waiter for `feature` that has been bypassed too often.
    fn blocker(&self, feature: &FeatureName) -> Option<CheckoutId> {
        let limit = self.limits.max_queue_bypass;
        self.queue.values().find(|w| w.wants(feature) && w.bypassed >= limit).map(|w| w.id)
    }

    fn validate(&self, req: &CheckoutRequest) -> Result<(), String> {
        let limits = &self.limits;
        let count = req.items.len() as u64;
        if count == 0 || count > limits.max_items_per_request {
            return Err("items".into());
        }
        for (i, item) in req.items.iter().enumerate() {
            if req.items[..i].iter().any(|other| other.feature == item.feature) {
                return Err(format!("items[{i}].feature"));
            }
            let bad_size = match item.demand {
                Demand::Tokens(n) => n == 0 || n > limits.max_tokens_per_request,
                Demand::Cores { cores, .. } => cores == 0 || cores > limits.max_cores_per_request,
            };
            if bad_size {
                return Err(format!("items[{i}].demand"));
            }
        }
        match req.borrow_until_ms {
            Some(until) if until <= self.now => return Err("borrow_until_ms".into()),
            Some(_) if req.wait.is_some() => return Err("wait".into()),
            Some(_) => {}
            None => {
                if !(limits.min_lease_ttl_ms..=limits.max_lease_ttl_ms).contains(&req.lease_ttl_ms)
                {
                    return Err("lease_ttl_ms".into());
                }
            }
        }
        if let Some(wait) = req.wait
            && !(limits.min_queue_ttl_ms..=limits.max_queue_ttl_ms).contains(&wait.poll_ttl_ms)
        {
            return Err("wait.poll_ttl_ms".into());
        }
        Ok(())
    }

    /// The documented grant rule for a whole request: permanent reasons over all items
    /// first, then per item the max rules, blocking waiters (not for a queued request) and
    /// the pool.
    fn plan(
        &self,
        req: &CheckoutRequest,
        as_waiter: bool,
        guess: bool,
        unsure: &mut bool,
    ) -> Result<(), Denial> {
        let mut sized = Vec::with_capacity(req.items.len());
        for item in &req.items {
            let feature = item.feature.clone();
            let Some(cfg) = self.config.get(&item.feature) else {
                return Err(Denial::UnknownFeature { feature });
            };
            let ent = &cfg.ent;
            if self.now < ent.starts_at_ms {
                return Err(Denial::NotStarted { feature, starts_at_ms: ent.starts_at_ms });
            }
            if self.now >= ent.expires_at_ms {
                return Err(Denial::FeatureExpired { feature, expired_at_ms: ent.expires_at_ms });
            }
            if let Some(until) = req.borrow_until_ms
                && until.saturating_sub(self.now) > ent.max_borrow_ms
            {
                return Err(Denial::BorrowNotAllowed { feature, max_borrow_ms: ent.max_borrow_ms });
            }
            let Some(p) = cfg.resolve(item) else {
                let pool = item.pool.clone().expect("only a named pool can be unknown");
                return Err(Denial::UnknownPool { feature, pool });
            };
            let tokens = cost_tokens(&ent.cost, item.demand);
            if tokens > ent.tokens_total {
                return Err(Denial::OverTotal {
                    feature,
                    total: ent.tokens_total,
                    requested: tokens,
                });
            }
            let usage = self.pool_usage(&item.feature);
            if tokens > cfg.cap(p) {
                return Err(Denial::PoolCap {
                    feature,
                    pool: cfg.pools[p].name.clone(),
                    cap: cfg.cap(p),
                    held: usage.get(&cfg.pools[p].name).copied().unwrap_or(0),
                    requested: tokens,
                });
            }
            self.check_access(&item.feature, &req.user, &req.host)?;
            sized.push((cfg, p, tokens, usage));
        }
        for (cfg, p, tokens, usage) in sized {
            let feature = &cfg.ent.feature;
            self.check_max(feature, &req.user, &req.host, tokens)?;
            if !as_waiter && let Some(waiter) = self.blocker(feature) {
                return Err(Denial::QueueBlocked { feature: feature.clone(), waiter });
            }
            plan_pool(cfg, p, tokens, &usage, guess, unsure)?;
        }
        Ok(())
    }

    fn predict_checkout(
        &self,
        client: &ClientId,
        req: &CheckoutRequest,
        guess: bool,
        unsure: &mut bool,
    ) -> Expect {
        if let Err(field) = self.validate(req) {
            return Expect::Denied(bad(field));
        }
        let limits = &self.limits;
        let (live, queued) = self.load(client);
        if live + queued >= limits.max_checkouts_per_client {
            return Expect::Denied(limit(
                "max_checkouts_per_client",
                limits.max_checkouts_per_client,
            ));
        }
        match self.plan(req, false, guess, unsure) {
            Ok(()) if self.live.len() as u64 >= limits.max_checkouts => {
                Expect::Denied(limit("max_checkouts", limits.max_checkouts))
            }
            Ok(()) => Expect::Granted,
            Err(denial) if req.wait.is_some() && transient(&denial) => {
                if self.queue.len() as u64 >= limits.max_queue_len {
                    Expect::Denied(limit("max_queue_len", limits.max_queue_len))
                } else if queued >= limits.max_queued_per_client {
                    Expect::Denied(limit("max_queued_per_client", limits.max_queued_per_client))
                } else {
                    Expect::Queued
                }
            }
            Err(denial) => Expect::Denied(denial),
        }
    }

    /// How a heartbeat or release learns that an id is neither live nor queued.
    fn gone(&self, id: CheckoutId) -> Denial {
        if id.0 == 0 || id.0 >= self.next_id {
            return Denial::UnknownCheckout { id };
        }
        match self.tombstones.get(&id) {
            Some(End::Revoked { reason }) => Denial::Revoked { id, reason: reason.clone() },
            Some(End::Expired) => Denial::LeaseExpired { id },
            end => Denial::Ended { id, end: end.cloned() },
        }
    }

    fn predict_heartbeat(&self, client: &ClientId, id: CheckoutId) -> Response {
        if let Some(c) = self.live.get(&id) {
            if &c.client != client {
                return Response::Denied(Denial::NotOwner { id });
            }
            let lease = if c.borrowed {
                c.lease_expires_at_ms
            } else {
                c.lease_expires_at_ms.max(self.now + c.lease_ttl_ms)
            };
            return Response::Renewed(Grant {
                id,
                fence: c.fence,
                items: c.items.clone(),
                lease_expires_at_ms: lease,
                borrowed: c.borrowed,
            });
        }
        if let Some(w) = self.queue.get(&id) {
            if &w.client != client {
                return Response::Denied(Denial::NotOwner { id });
            }
            return Response::Queued(Queued {
                id,
                position: self.position(w),
                wait_expires_at_ms: w.wait_expires_at_ms.max(self.now + w.poll_ttl_ms),
            });
        }
        Response::Denied(self.gone(id))
    }

    fn predict_release(&self, client: &ClientId, id: CheckoutId) -> Response {
        let owner = match (self.live.get(&id), self.queue.get(&id)) {
            (Some(c), _) => &c.client,
            (None, Some(w)) => &w.client,
            (None, None) => return Response::Denied(self.gone(id)),
        };
        if owner != client {
            Response::Denied(Denial::NotOwner { id })
        } else if self.live.contains_key(&id) {
            Response::Released { id }
        } else {
            Response::Cancelled { id }
        }
    }

    fn predict_revoke(&self, id: CheckoutId, reason: &str) -> Response {
        if reason.len() > MAX_REASON_LEN {
            Response::Denied(bad("reason"))
        } else if self.live.contains_key(&id) || self.queue.contains_key(&id) {
            Response::Revoked { id }
        } else {
            Response::Denied(self.gone(id))
        }
    }

    /// The items a grant of `req` must carry under the current configuration.
    fn expected_items(&self, req: &CheckoutRequest) -> Vec<GrantedItem> {
        (req.items.iter())
            .map(|item| {
                let cfg = &self.config[&item.feature];
                let p = cfg.resolve(item).expect("a granted item has a pool");
                GrantedItem {
                    feature: item.feature.clone(),
                    pool: cfg.pools[p].name.clone(),
                    tokens: cost_tokens(&cfg.ent.cost, item.demand),
                }
            })
            .collect()
    }

    /// Checks, independently of the planning rule, that a grant about to be recorded fits
    /// every bound in force.
    fn check_grant_bounds(&self, ctx: &Ctx, req: &CheckoutRequest, items: &[GrantedItem]) {
        for item in items {
            let f = &item.feature;
            let Some(cfg) = self.config.get(f) else {
                ctx.fail(format_args!("granted {item:?} of a feature that is not installed"))
            };
            let Some(p) = cfg.pool(&item.pool) else {
                ctx.fail(format_args!("granted {item:?} from a pool that is not installed"))
            };
            let usage = self.pool_usage(f);
            let in_use: u64 = usage.values().sum();
            let total = cfg.ent.tokens_total;
            ensure!(
                ctx,
                in_use + item.tokens <= total,
                "granted {item:?} with {in_use} of {total} tokens of {f} already in use"
            );
            let pool_use = usage.get(&item.pool).copied().unwrap_or(0);
            ensure!(
                ctx,
                pool_use + item.tokens <= cfg.cap(p),
                "granted {item:?} with {pool_use} in use and a cap of {}",
                cfg.cap(p)
            );
            let ent = &cfg.ent;
            ensure!(
                ctx,
                (ent.starts_at_ms..ent.expires_at_ms).contains(&self.now),
                "granted {item:?} at {} outside the license dates {}..{}",
                self.now,
                ent.starts_at_ms,
                ent.expires_at_ms
            );
            let access = self.check_access(f, &req.user, &req.host);
            ensure!(ctx, access.is_ok(), "granted {item:?} to {} against {access:?}", req.user);
            let max = self.check_max(f, &req.user, &req.host, item.tokens);
            ensure!(ctx, max.is_ok(), "granted {item:?} to {} against {max:?}", req.user);
        }
    }

    /// Free tokens of a clean feature cover the idle reserve of every pool that does not
    /// lend, whatever the other pools took.
    fn check_reserves(&self, ctx: &Ctx) {
        for (f, cfg) in &self.config {
            if !self.clean.contains(f) {
                continue;
            }
            let usage = self.pool_usage(f);
            let free = cfg.ent.tokens_total.saturating_sub(usage.values().sum());
            let idle: u64 = (cfg.pools.iter().filter(|p| !p.lend))
                .map(|p| p.reserve.saturating_sub(usage.get(&p.name).copied().unwrap_or(0)))
                .sum();
            ensure!(
                ctx,
                free >= idle,
                "{f}: {free} tokens free but {idle} reserved and idle ({usage:?})"
            );
        }
    }

    fn bury(&mut self, id: CheckoutId, end: End) {
        self.tombstones.insert(id, end);
        while self.tombstones.len() as u64 > self.limits.max_tombstones {
            self.tombstones.pop_first();
        }
    }

    fn note_ended(&mut self, id: CheckoutId, client: ClientId) {
        self.ended.push_back((id, client));
        if self.ended.len() > 64 {
            self.ended.pop_front();
        }
    }

    fn end_live(&mut self, id: CheckoutId, end: End) {
        let c = self.live.remove(&id).expect("caller checked the checkout is live");
        for item in c.items.iter() {
            self.freed.insert(item.feature.clone());
            if self.pool_usage(&item.feature).values().sum::<u64>() == 0 {
                self.clean.insert(item.feature.clone());
            }
        }
        self.bury(id, end);
        self.note_ended(id, c.client);
    }

    fn drop_waiter(&mut self, id: CheckoutId, end: End) {
        let w = self.queue.remove(&id).expect("caller checked the request is queued");
        // A blocking waiter that leaves frees its features for the queue. Drops while the
        // queue is being served are left out: the walk may already have passed the
        // waiters they free, so they prove nothing about them.
        let in_drain = matches!(end, End::QueueDenied(_));
        if w.bypassed >= self.limits.max_queue_bypass && !in_drain {
            self.freed.extend(w.request.items.iter().map(|i| i.feature.clone()));
        }
        self.bury(id, end);
        self.note_ended(id, w.client);
    }

    fn expire_sessions(&mut self) {
        let (now, ttl) = (self.now, self.limits.session_idle_ttl_ms);
        self.sessions.retain(|_, s| s.last_seen_ms.saturating_add(ttl) > now);
    }

    /// The session lookup, with its side effects (touch, acknowledged replies dropped).
    fn begin_session(&mut self, req: &Request) -> Disposition {
        if req.ack > req.seq {
            return Disposition::AckAboveSeq;
        }
        let now = self.now;
        let session = (self.sessions.entry(req.client.clone())).or_insert_with(|| MSession {
            last_seen_ms: now,
            floor: 0,
            replies: BTreeMap::new(),
        });
        session.last_seen_ms = now;
        if req.ack > session.floor {
            session.floor = req.ack;
            session.replies.retain(|&seq, _| seq >= req.ack);
        }
        if session.replies.contains_key(&req.seq) {
            Disposition::Replay
        } else if req.seq < session.floor {
            Disposition::Stale
        } else {
            Disposition::New
        }
    }

    fn record(&mut self, client: &ClientId, seq: u64, response: &Response) {
        let max = self.limits.max_replies_per_session.max(1);
        let session = self.sessions.get_mut(client).expect("the request opened a session");
        session.replies.insert(seq, response.clone());
        // Past the limit the oldest replies go, and the floor rises to the oldest kept one.
        if session.replies.len() as u64 > max {
            while session.replies.len() as u64 > max {
                session.replies.pop_first();
            }
            let (&oldest_kept, _) = session.replies.first_key_value().expect("not empty");
            session.floor = session.floor.max(oldest_kept);
        }
    }

    fn install(&mut self, install: &Install) {
        for e in &install.entitlements {
            if self.pool_usage(&e.feature).values().sum::<u64>() == 0 {
                self.clean.insert(e.feature.clone());
            } else {
                self.clean.remove(&e.feature);
            }
        }
        let default: PoolName = name("default");
        self.config = (install.entitlements.iter())
            .map(|e| {
                let pools = (install.policy.pools.get(&e.feature).cloned())
                    .unwrap_or_else(|| vec![PoolSpec::open(default.clone())]);
                (e.feature.clone(), FeatureCfg { ent: e.clone(), pools })
            })
            .collect();
        self.policy = Policy { pools: BTreeMap::new(), ..install.policy.clone() };
        self.freed_all = true;
    }

    /// `LeaderChange`, before anything expires: every live lease but an offline borrow, and
    /// every wait, is extended to at least one full TTL from now.
    fn extend_leases(&mut self) -> u64 {
        let now = self.now;
        let mut extended = 0;
        for c in self.live.values_mut() {
            let floor = now + c.lease_ttl_ms;
            if !c.borrowed && c.lease_expires_at_ms < floor {
                c.lease_expires_at_ms = floor;
                extended += 1;
            }
        }
        for w in self.queue.values_mut() {
            let floor = now + w.poll_ttl_ms;
            if w.wait_expires_at_ms < floor {
                w.wait_expires_at_ms = floor;
                extended += 1;
            }
        }
        extended
    }

    /// Follows one applied command through its answer and events.
    fn absorb(
        &mut self,
        ctx: &Ctx,
        meta: Meta,
        command: &Command,
        out: &Output,
        install_ok: Option<bool>,
    ) -> Disposition {
        self.now = self.now.max(meta.now_ms);
        self.freed.clear();
        self.freed_all = false;
        let events = &out.events;
        let mut i = 0;
        let disposition = match command {
            Command::LeaderChange { leader } => {
                // Leases are extended before anything expires; offline borrows are not.
                let extended = self.extend_leases();
                self.expire_sessions();
                self.absorb_expiry(ctx, events, &mut i);
                self.absorb_drain(ctx, events, &mut i);
                ensure_eq!(
                    ctx,
                    out.response,
                    Response::LeaderChanged { extended },
                    "LeaderChange answer"
                );
                expect_event(
                    ctx,
                    events,
                    &mut i,
                    Event::LeasesExtended { leader: *leader, count: extended },
                );
                self.absorb_drain(ctx, events, &mut i);
                Disposition::System
            }
            Command::Tick => {
                self.expire_sessions();
                let expired = self.absorb_expiry(ctx, events, &mut i);
                self.absorb_drain(ctx, events, &mut i);
                ensure_eq!(ctx, out.response, Response::Ticked { expired }, "Tick answer");
                Disposition::System
            }
            Command::Request(req) => {
                // The state expires what is due, serves the queue, looks the request up in its
                // session, runs it if it is new, and serves the queue again.
                self.expire_sessions();
                self.absorb_expiry(ctx, events, &mut i);
                let disposition = self.begin_session(req);
                self.absorb_drain(ctx, events, &mut i);
                match disposition {
                    Disposition::Replay => {
                        let reply = &self.sessions[&req.client].replies[&req.seq];
                        ensure_eq!(
                            ctx,
                            out.response,
                            *reply,
                            "retry of {} seq {}",
                            req.client,
                            req.seq
                        );
                    }
                    Disposition::Stale => {
                        let oldest_kept = self.sessions[&req.client].floor;
                        let stale = Denial::StaleRequest { seq: req.seq, oldest_kept };
                        ensure_eq!(
                            ctx,
                            out.response,
                            Response::Denied(stale.clone()),
                            "stale retry"
                        );
                        let denied = Event::Denied { client: req.client.clone(), denial: stale };
                        expect_event(ctx, events, &mut i, denied);
                    }
                    Disposition::AckAboveSeq => {
                        let expected = Expect::Denied(bad("ack"));
                        ensure!(
                            ctx,
                            expected.matches(&out.response),
                            "ack above seq answered {:?}",
                            out.response
                        );
                        let Response::Denied(denial) = &out.response else {
                            unreachable!("checked")
                        };
                        let denied =
                            Event::Denied { client: req.client.clone(), denial: denial.clone() };
                        expect_event(ctx, events, &mut i, denied);
                    }
                    Disposition::New => {
                        self.absorb_request(ctx, req, &out.response, events, &mut i, install_ok);
                        self.record(&req.client, req.seq, &out.response);
                    }
                    Disposition::System => unreachable!("a request is never a system command"),
                }
                self.absorb_drain(ctx, events, &mut i);
                disposition
            }
        };
        ensure!(ctx, i == events.len(), "unexpected event {:?} in {events:?}", events.get(i));
        disposition
    }

    /// Leases, then waits, that are due, in expiry order: they must be the first events.
    fn absorb_expiry(&mut self, ctx: &Ctx, events: &[Event], i: &mut usize) -> u64 {
        let now = self.now;
        let mut leases: Vec<(u64, CheckoutId)> = (self.live.values())
            .filter(|c| c.lease_expires_at_ms <= now)
            .map(|c| (c.lease_expires_at_ms, c.id))
            .collect();
        leases.sort();
        let mut waits: Vec<(u64, CheckoutId)> = (self.queue.values())
            .filter(|w| w.wait_expires_at_ms <= now)
            .map(|w| (w.wait_expires_at_ms, w.id))
            .collect();
        waits.sort();
        for &(_, id) in &leases {
            let items = self.live[&id].items.clone();
            expect_event(ctx, events, i, Event::Ended { id, items, end: End::Expired });
            self.end_live(id, End::Expired);
        }
        for &(_, id) in &waits {
            expect_event(ctx, events, i, Event::Dequeued { id, end: End::QueueExpired });
            self.drop_waiter(id, End::QueueExpired);
        }
        (leases.len() + waits.len()) as u64
    }

    /// Grants and drops made while serving the queue.
    fn absorb_drain(&mut self, ctx: &Ctx, events: &[Event], i: &mut usize) {
        while let Some(event) = events.get(*i) {
            match event {
                Event::Granted { from_queue: true, .. } => self.grant_from_queue(ctx, event),
                Event::Dequeued { id, end: End::QueueDenied(denial) } => {
                    self.queue_denied(ctx, *id, denial)
                }
                _ => break,
            }
            *i += 1;
        }
    }

    fn grant_from_queue(&mut self, ctx: &Ctx, event: &Event) {
        let Event::Granted { id, items, .. } = event else {
            unreachable!("the caller matched a grant")
        };
        let Some(w) = self.queue.get(id).cloned() else {
            ctx.fail(format_args!("the queue granted {id:?}, which is not queued: {event:?}"))
        };
        let mut unsure = false;
        if let Err(denial) = self.plan(&w.request, true, true, &mut unsure) {
            ctx.fail(format_args!("the queue granted {w:?}, but the model refuses it: {denial:?}"));
        }
        let expected = Event::Granted {
            id: *id,
            fence: self.next_fence,
            client: w.client.clone(),
            user: w.request.user.clone(),
            host: w.request.host.clone(),
            job: w.request.job.clone(),
            items: self.expected_items(&w.request).into(),
            from_queue: true,
        };
        ensure_eq!(ctx, *event, expected, "queue grant");
        self.check_grant_bounds(ctx, &w.request, items);
        // The waiters ahead of it that the walk left in the queue were bypassed.
        let key = w.key();
        for other in self.queue.values_mut() {
            if other.key() < key && other.shares(&w.request.items) {
                other.bypassed = other.bypassed.saturating_add(1);
            }
        }
        self.queue.remove(id);
        let ttl = w.request.lease_ttl_ms;
        let checkout = Checkout {
            id: *id,
            fence: self.next_fence,
            client: w.client,
            user: w.request.user,
            host: w.request.host,
            job: w.request.job,
            items: items.clone(),
            granted_at_ms: self.now,
            lease_ttl_ms: ttl,
            lease_expires_at_ms: self.now + ttl,
            borrowed: false,
        };
        self.live.insert(*id, checkout);
        self.next_fence += 1;
    }

    fn queue_denied(&mut self, ctx: &Ctx, id: CheckoutId, denial: &Denial) {
        let Some(w) = self.queue.get(&id) else {
            ctx.fail(format_args!("dropped {id:?} from the queue, but it is not queued"))
        };
        let mut unsure = false;
        let plans = [
            self.plan(&w.request, true, true, &mut unsure),
            self.plan(&w.request, true, false, &mut unsure),
        ];
        let expected = plans.iter().any(|p| p.as_ref().is_err_and(|d| denial_matches(d, denial)));
        ensure!(
            ctx,
            expected && !transient(denial),
            "dropped {w:?} from the queue for {denial:?}; the model says {plans:?}"
        );
        self.drop_waiter(id, End::QueueDenied(Box::new(denial.clone())));
    }

    /// A new request: its answer, then the events it made.
    fn absorb_request(
        &mut self,
        ctx: &Ctx,
        req: &Request,
        response: &Response,
        events: &[Event],
        i: &mut usize,
        install_ok: Option<bool>,
    ) {
        let client = &req.client;
        match &req.op {
            Op::Checkout(creq) => {
                let mut unsure = false;
                let first = self.predict_checkout(client, creq, true, &mut unsure);
                let second =
                    unsure.then(|| self.predict_checkout(client, creq, false, &mut unsure));
                let ok =
                    first.matches(response) || second.as_ref().is_some_and(|e| e.matches(response));
                ensure!(
                    ctx,
                    ok,
                    "checkout {creq:?} from {client} was answered {response:?}; the model expects \
                     {first:?} or {second:?}"
                );
                match response {
                    Response::Granted(grant) => {
                        let event = next_event(ctx, events, i);
                        self.grant_direct(ctx, client, creq, grant, event);
                    }
                    Response::Queued(queued) => {
                        let event = next_event(ctx, events, i);
                        self.enqueue(ctx, client, creq, queued, event);
                    }
                    _ => {}
                }
            }
            Op::Heartbeat(id) => {
                let expected = self.predict_heartbeat(client, *id);
                ensure_eq!(ctx, *response, expected, "heartbeat on {id:?} from {client}");
                match response {
                    Response::Renewed(grant) => {
                        let c = self.live.get_mut(id).expect("renewed a live checkout");
                        c.lease_expires_at_ms = grant.lease_expires_at_ms;
                    }
                    Response::Queued(queued) => {
                        let w = self.queue.get_mut(id).expect("polled a queued request");
                        w.wait_expires_at_ms = queued.wait_expires_at_ms;
                    }
                    _ => {}
                }
            }
            Op::Release(id) => {
                let expected = self.predict_release(client, *id);
                ensure_eq!(ctx, *response, expected, "release of {id:?} from {client}");
                match response {
                    Response::Released { .. } => {
                        let items = self.live[id].items.clone();
                        expect_event(
                            ctx,
                            events,
                            i,
                            Event::Ended { id: *id, items, end: End::Released },
                        );
                        self.end_live(*id, End::Released);
                    }
                    Response::Cancelled { .. } => {
                        expect_event(
                            ctx,
                            events,
                            i,
                            Event::Dequeued { id: *id, end: End::Cancelled },
                        );
                        self.drop_waiter(*id, End::Cancelled);
                    }
                    _ => {}
                }
            }
            Op::Revoke { id, reason } => {
                let expected = self.predict_revoke(*id, reason);
                let ok = match (&expected, response) {
                    (Response::Denied(e), Response::Denied(a)) => denial_matches(e, a),
                    _ => expected == *response,
                };
                ensure!(ctx, ok, "revoke of {id:?} answered {response:?}, expected {expected:?}");
                if let Response::Revoked { .. } = response {
                    let end = End::Revoked { reason: reason.clone() };
                    if let Some(c) = self.live.get(id) {
                        let items = c.items.clone();
                        expect_event(
                            ctx,
                            events,
                            i,
                            Event::Ended { id: *id, items, end: end.clone() },
                        );
                        self.end_live(*id, end);
                    } else {
                        expect_event(ctx, events, i, Event::Dequeued { id: *id, end: end.clone() });
                        self.drop_waiter(*id, end);
                    }
                }
            }
            Op::Install(install) => {
                let Some(valid) = install_ok else {
                    ctx.fail(format_args!("an install the generator did not classify"))
                };
                if valid {
                    let count = install.entitlements.len() as u64;
                    ensure_eq!(ctx, *response, Response::Installed { features: count }, "install");
                    let features: BTreeSet<FeatureName> =
                        install.entitlements.iter().map(|e| e.feature.clone()).collect();
                    let features = features.into_iter().collect();
                    expect_event(ctx, events, i, Event::Installed { features });
                    self.install(install);
                } else {
                    ensure!(
                        ctx,
                        matches!(response, Response::Denied(Denial::BadInstall(_))),
                        "an invalid install was answered {response:?}"
                    );
                }
            }
        }
        if let Response::Denied(denial) = response {
            let denied = Event::Denied { client: client.clone(), denial: denial.clone() };
            expect_event(ctx, events, i, denied);
        }
    }

    fn grant_direct(
        &mut self,
        ctx: &Ctx,
        client: &ClientId,
        req: &CheckoutRequest,
        grant: &Grant,
        event: &Event,
    ) {
        let items = self.expected_items(req);
        let (lease_ttl_ms, lease_expires_at_ms, borrowed) = match req.borrow_until_ms {
            Some(until) => (0, until, true),
            None => (req.lease_ttl_ms, self.now + req.lease_ttl_ms, false),
        };
        let id = CheckoutId(self.next_id);
        let expected = Grant {
            id,
            fence: self.next_fence,
            items: items.clone().into(),
            lease_expires_at_ms,
            borrowed,
        };
        ensure_eq!(ctx, *grant, expected, "grant of {req:?}");
        let expected = Event::Granted {
            id,
            fence: self.next_fence,
            client: client.clone(),
            user: req.user.clone(),
            host: req.host.clone(),
            job: req.job.clone(),
            items: items.clone().into(),
            from_queue: false,
        };
        ensure_eq!(ctx, *event, expected, "grant event");
        self.check_grant_bounds(ctx, req, &items);
        for w in self.queue.values_mut() {
            if w.shares(&req.items) {
                w.bypassed = w.bypassed.saturating_add(1);
            }
        }
        let checkout = Checkout {
            id,
            fence: self.next_fence,
            client: client.clone(),
            user: req.user.clone(),
            host: req.host.clone(),
            job: req.job.clone(),
            items: items.into(),
            granted_at_ms: self.now,
            lease_ttl_ms,
            lease_expires_at_ms,
            borrowed,
        };
        self.live.insert(id, checkout);
        self.next_id += 1;
        self.next_fence += 1;
    }

    fn enqueue(
        &mut self,
        ctx: &Ctx,
        client: &ClientId,
        req: &CheckoutRequest,
        queued: &Queued,
        event: &Event,
    ) {
        let id = CheckoutId(self.next_id);
        let wait = req.wait.expect("only a request with a wait is queued");
        let waiter = MWaiter {
            id,
            client: client.clone(),
            request: req.clone(),
            priority: wait.priority,
            poll_ttl_ms: wait.poll_ttl_ms,
            wait_expires_at_ms: self.now + wait.poll_ttl_ms,
            queued_at_ms: self.now,
            bypassed: 0,
        };
        self.queue.insert(id, waiter);
        self.next_id += 1;
        let position = self.position(&self.queue[&id]);
        let expected = Queued { id, position, wait_expires_at_ms: self.now + wait.poll_ttl_ms };
        ensure_eq!(ctx, *queued, expected, "queued answer");
        let expected = Event::Queued { id, client: client.clone(), position };
        ensure_eq!(ctx, *event, expected, "queued event");
    }

    /// After a step in which tokens came free, every waiter the queue walk must have looked
    /// at either does not fit yet, or sits behind a blocking waiter that shares a feature.
    fn check_queue_progress(&self, ctx: &Ctx) {
        if self.freed.is_empty() && !self.freed_all {
            return;
        }
        let limit = self.limits.max_queue_bypass;
        for w in self.queue.values() {
            let freed = |i: &Item| self.freed.contains(&i.feature);
            if !self.freed_all && !w.request.items.iter().any(freed) {
                continue;
            }
            let key = w.key();
            let behind_blocker = (self.queue.values())
                .any(|b| b.key() < key && b.bypassed >= limit && b.shares(&w.request.items));
            if behind_blocker {
                continue;
            }
            let mut unsure = false;
            match self.plan(&w.request, true, false, &mut unsure) {
                Ok(()) => ctx.fail(format_args!(
                    "tokens came free for {:?} and it fits, but it is still queued: {w:?}",
                    self.freed
                )),
                Err(denial) if !transient(&denial) => ctx.fail(format_args!(
                    "{w:?} can never be granted ({denial:?}), but it is still queued"
                )),
                Err(_) => {}
            }
        }
    }

    /// Leases and waits that were due are gone.
    fn check_nothing_overdue(&self, ctx: &Ctx, command: &Command) {
        let now = self.now;
        if let Some(c) = self.live.values().find(|c| c.lease_expires_at_ms <= now) {
            ctx.fail(format_args!(
                "checkout {:?} (borrowed: {}) is still live after {command:?} although its lease \
                 ended at {} <= now {now}",
                c.id, c.borrowed, c.lease_expires_at_ms
            ));
        }
        if let Some(w) = self.queue.values().find(|w| w.wait_expires_at_ms <= now) {
            ctx.fail(format_args!(
                "queued request {:?} is still queued although its wait ended at {} <= now {now}",
                w.id, w.wait_expires_at_ms
            ));
        }
    }

    fn waiter_infos(&self) -> Vec<WaiterInfo> {
        let mut waiters: Vec<&MWaiter> = self.queue.values().collect();
        waiters.sort_by_key(|w| w.key());
        (waiters.into_iter().enumerate())
            .map(|(rank, w)| self.waiter_info(w, rank as u64 + 1))
            .collect()
    }

    fn waiter_info(&self, w: &MWaiter, position: u64) -> WaiterInfo {
        WaiterInfo {
            id: w.id,
            position,
            client: w.client.clone(),
            user: w.request.user.clone(),
            host: w.request.host.clone(),
            job: w.request.job.clone(),
            items: w.request.items.clone(),
            priority: w.priority,
            bypassed: w.bypassed,
            blocking: w.bypassed >= self.limits.max_queue_bypass,
            queued_at_ms: w.queued_at_ms,
            wait_expires_at_ms: w.wait_expires_at_ms,
        }
    }

    fn checkout_status(&self, id: CheckoutId) -> CheckoutStatus {
        if let Some(c) = self.live.get(&id) {
            CheckoutStatus::Live(c.clone())
        } else if let Some(w) = self.queue.get(&id) {
            CheckoutStatus::Queued(self.waiter_info(w, self.position(w)))
        } else {
            CheckoutStatus::Gone(self.gone(id))
        }
    }

    /// Compares `features_status` with the configuration and the live checkouts.
    fn check_features(&self, ctx: &Ctx, status: &[FeatureStatus]) {
        let usage = self.usage_map();
        let mut names: BTreeSet<&FeatureName> = self.config.keys().collect();
        names.extend(usage.keys().map(|(f, _)| f));
        let listed: Vec<&FeatureName> = status.iter().map(|s| &s.feature).collect();
        ensure_eq!(ctx, listed, names.into_iter().collect::<Vec<_>>(), "features listed");
        for s in status {
            let f = &s.feature;
            let pool_use =
                |pool: &PoolName| usage.get(&(f.clone(), pool.clone())).copied().unwrap_or(0);
            let in_use: u64 = s.pools.iter().map(|p| pool_use(&p.pool)).sum();
            let mine: u64 = usage.iter().filter(|((g, _), _)| g == f).map(|(_, n)| n).sum();
            ensure_eq!(ctx, s.in_use, mine, "{f}: in use");
            ensure_eq!(ctx, in_use, mine, "{f}: pools listed with usage");
            let queued = self.queue.values().filter(|w| w.wants(f)).count() as u64;
            ensure_eq!(ctx, s.queued, queued, "{f}: queued");
            for p in &s.pools {
                ensure!(
                    ctx,
                    p.borrowed <= p.in_use,
                    "{f}/{}: borrowed {} of {} in use",
                    p.pool,
                    p.borrowed,
                    p.in_use
                );
            }
            let Some(cfg) = self.config.get(f) else {
                ensure!(
                    ctx,
                    s.retired && s.tokens_total == 0 && s.free == 0,
                    "{f}: not installed, yet {s:?}"
                );
                for p in &s.pools {
                    ensure!(
                        ctx,
                        p.retired && p.cap == 0 && p.available == 0,
                        "{f}: retired pool {p:?}"
                    );
                }
                continue;
            };
            let ent = &cfg.ent;
            let expected = (&ent.license, ent.tokens_total, ent.starts_at_ms, ent.expires_at_ms);
            let actual = (&s.license, s.tokens_total, s.starts_at_ms, s.expires_at_ms);
            ensure_eq!(ctx, actual, expected, "{f}: entitlement");
            ensure!(ctx, !s.retired, "{f} is installed but listed as retired");
            ensure_eq!(ctx, s.free, ent.tokens_total.saturating_sub(mine), "{f}: free");
            ensure_eq!(ctx, s.expired, self.now >= ent.expires_at_ms, "{f}: expired");
            let pool_usage = self.pool_usage(f);
            for (p, spec) in cfg.pools.iter().enumerate() {
                let Some(ps) = s.pools.get(p) else {
                    ctx.fail(format_args!("{f}: pool {p} missing"))
                };
                let expected = (&spec.name, spec.reserve, cfg.cap(p), pool_use(&spec.name), false);
                ensure_eq!(
                    ctx,
                    (&ps.pool, ps.reserve, ps.cap, ps.in_use, ps.retired),
                    expected,
                    "{f}: pool {p}"
                );
                if spec.lend {
                    let most = spec.reserve - spec.keep_idle;
                    ensure!(
                        ctx,
                        ps.lent <= most,
                        "{f}/{}: lent {} below keep_idle",
                        spec.name,
                        ps.lent
                    );
                } else {
                    ensure_eq!(
                        ctx,
                        ps.lent,
                        0,
                        "{f}/{}: lent by a pool that does not lend",
                        spec.name
                    );
                }
                let room = cfg.cap(p).saturating_sub(ps.in_use).min(s.free);
                match reachable(cfg, p, &pool_usage) {
                    Some(r) => {
                        ensure_eq!(ctx, ps.available, room.min(r), "{f}/{}: available", spec.name)
                    }
                    None => ensure!(
                        ctx,
                        ps.available <= room,
                        "{f}/{}: available {} > {room}",
                        spec.name,
                        ps.available
                    ),
                }
            }
            let mut retired: Vec<&PoolName> = (s.pools[cfg.pools.len()..].iter())
                .map(|ps| {
                    ensure!(
                        ctx,
                        ps.retired && ps.cap == 0 && ps.available == 0,
                        "{f}: extra pool {ps:?}"
                    );
                    &ps.pool
                })
                .collect();
            retired.sort();
            let expected: Vec<&PoolName> = (usage.keys())
                .filter(|(g, p)| g == f && cfg.pool(p).is_none())
                .map(|(_, p)| p)
                .collect();
            ensure_eq!(ctx, retired, expected, "{f}: retired pools");
        }
    }
}

fn next_event<'a>(ctx: &Ctx, events: &'a [Event], i: &mut usize) -> &'a Event {
    let Some(event) = events.get(*i) else {
        ctx.fail(format_args!("missing event {i} in {events:?}"))
    };
    *i += 1;
    event
}

fn expect_event(ctx: &Ctx, events: &[Event], i: &mut usize, expected: Event) {
    let at = *i;
    let event = next_event(ctx, events, i);
    ensure_eq!(ctx, *event, expected, "event {at} of {events:?}");
}

// ---------------------------------------------------------------------------------------
// The generator and the run.
// ---------------------------------------------------------------------------------------

const SOLO: &str = "solo";
const HPC: &str = "hpc";
const LATE: &str = "late";
const RULED: &str = "ruled";
const CRASH: &str = "crash";
const IMPLICIT: &str = "implicit";
const FEATURES: [&str; 6] = [SOLO, HPC, LATE, RULED, CRASH, IMPLICIT];

/// What kind of step the generator made, for the checks that depend on it.
enum Kind {
    Normal,
    /// An input that must be refused and change nothing.
    Odd,
    /// A repeated request; `alt` is another kept request of the same client, if any.
    Retry {
        alt: Option<Request>,
    },
}

struct ClientState {
    id: ClientId,
    next_seq: u64,
    /// Recent requests, for retries.
    sent: VecDeque<Request>,
}

struct Run {
    ctx: Ctx,
    rng: ChaCha8Rng,
    steps: usize,
    state: State,
    /// A second state fed the same commands, restored from its own snapshots now and then.
    shadow: State,
    model: Model,
    index: u64,
    /// The per-seed base configuration that re-installs vary.
    base: BTreeMap<FeatureName, FeatureCfg>,
    rules: Vec<Rule>,
    user_groups: BTreeMap<GroupName, Vec<UserName>>,
    host_groups: BTreeMap<GroupName, Vec<HostName>>,
    users: Vec<UserName>,
    mallory: UserName,
    hosts: Vec<HostName>,
    /// Clients; the last one is the admin.
    clients: Vec<ClientState>,
    /// Whether the install in this step should be accepted.
    install_ok: Option<bool>,
    /// Pool usage as `features_status` reported it after the previous step.
    usage: BTreeMap<(FeatureName, PoolName), u64>,
    coverage: Coverage,
}

impl Run {
    fn new(seed: u64, steps: usize) -> Run {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let limits = Limits {
            max_checkouts_per_client: *[3, 10_000].choose(&mut rng).expect("not empty"),
            max_queued_per_client: *[1, 100].choose(&mut rng).expect("not empty"),
            max_queue_len: *[4, 10_000].choose(&mut rng).expect("not empty"),
            max_replies_per_session: *[2, 64].choose(&mut rng).expect("not empty"),
            session_idle_ttl_ms: *[10 * MINUTE, 24 * HOUR].choose(&mut rng).expect("not empty"),
            max_tombstones: *[16, 300, 100_000].choose(&mut rng).expect("not empty"),
            max_queue_bypass: *[1, 2, 4, 8].choose(&mut rng).expect("not empty"),
            ..Limits::default()
        };
        let clients = rng.random_range(8..=40);
        let clients: Vec<ClientState> = (0..clients)
            .map(|i| format!("client-{i:02}"))
            .chain(["admin".to_string()])
            .map(|id| ClientState { id: name(&id), next_seq: 1, sent: VecDeque::new() })
            .collect();
        let users: Vec<UserName> = (0..8).map(|i| name(&format!("user{i}"))).collect();
        let hosts: Vec<HostName> = (0..8).map(|i| name(&format!("node-{i}"))).collect();
        let rack: GroupName = name("rack-a");
        let host_groups = BTreeMap::from([(rack.clone(), hosts[..3].to_vec())]);
        let mallory: UserName = name("mallory");
        let ruled: FeatureName = name(RULED);
        let analysts: GroupName = name("analysts");
        let mut members = users[..7].to_vec();
        members.push(mallory.clone());
        let user_groups = BTreeMap::from([(analysts.clone(), members)]);
        let rules = vec![
            Rule::Max {
                feature: ruled.clone(),
                subject: Subject::EachUser,
                tokens: rng.random_range(6..=12),
            },
            Rule::Max {
                feature: ruled.clone(),
                subject: Subject::User(users[1].clone()),
                tokens: rng.random_range(2..=5),
            },
            Rule::Max {
                feature: ruled.clone(),
                subject: Subject::HostGroup(rack),
                tokens: rng.random_range(8..=20),
            },
            Rule::Max {
                feature: ruled.clone(),
                subject: Subject::Host(hosts[7].clone()),
                tokens: rng.random_range(3..=6),
            },
            Rule::Max {
                feature: ruled.clone(),
                subject: Subject::Group(analysts.clone()),
                tokens: rng.random_range(12..=24),
            },
            // Only analysts may use the feature, and mallory, though one, may not.
            Rule::Include { feature: ruled.clone(), subject: Subject::Group(analysts) },
            Rule::Exclude { feature: ruled, subject: Subject::User(mallory.clone()) },
        ];
        let base = base_config(&mut rng);
        Run {
            ctx: Ctx { seed, step: 0, recent: VecDeque::new() },
            rng,
            steps,
            state: State::new(limits.clone()),
            shadow: State::new(limits.clone()),
            model: Model::new(limits),
            index: 0,
            base,
            rules,
            user_groups,
            host_groups,
            users,
            mallory,
            hosts,
            clients,
            install_ok: None,
            usage: BTreeMap::new(),
            coverage: Coverage::default(),
        }
    }

    fn run(mut self) -> Coverage {
        let seed = self.ctx.seed;
        eprintln!(
            "model test: seed {seed}, {} steps, {} clients (replay with LSM_MODEL_SEED={seed})",
            self.steps,
            self.clients.len() - 1
        );
        for step in 0..self.steps {
            self.ctx.step = step;
            self.step();
            if step % 500 == 499 || step + 1 == self.steps {
                self.compare_hashes("checkpoint");
            }
            if step == self.steps / 2 || step % 1_500 == 1_499 {
                self.restore_shadow();
            }
        }
        self.coverage.steps = self.steps as u64;
        self.coverage
    }

    fn compare_hashes(&self, when: &str) {
        let (a, b) = (self.state.state_hash_hex(), self.shadow.state_hash_hex());
        ensure_eq!(self.ctx, a, b, "{when}: the shadow state has another hash");
    }

    fn restore_shadow(&mut self) {
        let bytes = self.shadow.snapshot();
        match State::restore(&bytes) {
            Ok(restored) => self.shadow = restored,
            Err(e) => self.ctx.fail(format_args!("restoring a snapshot: {e}")),
        }
        self.compare_hashes("after restore");
    }

    fn step(&mut self) {
        let meta = self.next_meta();
        self.install_ok = None;
        let (command, kind) =
            if self.ctx.step == 0 { self.gen_install(true) } else { self.generate(meta.now_ms) };
        self.ctx.recent.push_back((meta, command.clone()));
        if self.ctx.recent.len() > TRACE_LEN {
            self.ctx.recent.pop_front();
        }
        let twin = matches!(kind, Kind::Odd | Kind::Retry { .. }).then(|| self.state.clone());
        let alt_twin = match &kind {
            Kind::Retry { alt: Some(alt) } => Some((self.state.clone(), alt.clone())),
            _ => None,
        };
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.state.apply(meta, command.clone())
        }));
        let out = match applied {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => self.ctx.fail(format_args!("apply failed: {e}")),
            Err(panic) => self.ctx.fail(format_args!("apply panicked: {}", panic_message(&panic))),
        };
        match self.shadow.apply(meta, command.clone()) {
            Ok(shadow) => {
                ensure_eq!(self.ctx, shadow, out, "the shadow state answered differently")
            }
            Err(e) => self.ctx.fail(format_args!("shadow apply failed: {e}")),
        }
        let install_ok = self.install_ok;
        let disposition = self.model.absorb(&self.ctx, meta, &command, &out, install_ok);
        self.count(&command, &out, &disposition, &kind);
        match kind {
            Kind::Normal => {}
            Kind::Odd => {
                ensure!(
                    self.ctx,
                    matches!(out.response, Response::Denied(_)),
                    "odd input {command:?} was answered {:?}",
                    out.response
                );
                self.compare_with_tick(twin.expect("made above"), meta, &out);
            }
            Kind::Retry { .. } => {
                if disposition == Disposition::Replay {
                    self.compare_with_tick(twin.expect("made above"), meta, &out);
                    if let Some((mut alt_state, alt)) = alt_twin {
                        self.compare_with_alt_retry(&mut alt_state, meta, alt);
                    }
                }
            }
        }
        self.check_state(&command, &out);
    }

    /// A refused or replayed request must do what a `Tick` at the same time does, plus its
    /// `Denied` event, and leave the same checkouts, queue and features.
    fn compare_with_tick(&self, mut twin: State, meta: Meta, out: &Output) {
        let ctx = &self.ctx;
        let tick = match twin.apply(meta, Command::Tick) {
            Ok(tick) => tick,
            Err(e) => ctx.fail(format_args!("twin tick failed: {e}")),
        };
        let events: Vec<&Event> =
            out.events.iter().filter(|e| !matches!(e, Event::Denied { .. })).collect();
        ensure_eq!(ctx, events, tick.events.iter().collect::<Vec<_>>(), "events against a tick");
        let all = CheckoutFilter { limit: Some(u64::MAX), ..CheckoutFilter::default() };
        ensure_eq!(
            ctx,
            self.state.list_checkouts(&all),
            twin.list_checkouts(&all),
            "checkouts against a tick"
        );
        ensure_eq!(ctx, self.state.list_queue(None), twin.list_queue(None), "queue against a tick");
        ensure_eq!(
            ctx,
            self.state.features_status(),
            twin.features_status(),
            "features against a tick"
        );
        let (mut mine, theirs) = (self.state.summary(), twin.summary());
        mine.sessions = theirs.sessions;
        ensure_eq!(ctx, mine, theirs, "summary against a tick");
    }

    /// Two different replays by the same client leave identical states.
    fn compare_with_alt_retry(&self, alt_state: &mut State, meta: Meta, alt: Request) {
        let ctx = &self.ctx;
        let reply = self.model.sessions.get(&alt.client).and_then(|s| s.replies.get(&alt.seq));
        let Some(reply) = reply.cloned() else { return };
        let out = match alt_state.apply(meta, Command::Request(alt)) {
            Ok(out) => out,
            Err(e) => ctx.fail(format_args!("alternative retry failed: {e}")),
        };
        ensure_eq!(ctx, out.response, reply, "alternative retry");
        ensure_eq!(
            ctx,
            alt_state.state_hash_hex(),
            self.state.state_hash_hex(),
            "hash after another retry"
        );
    }

    fn check_state(&mut self, command: &Command, out: &Output) {
        let ctx = &self.ctx;
        let model = &self.model;
        if let Err(e) = self.state.check_invariants() {
            ctx.fail(format_args!("check_invariants after {command:?}: {e}"));
        }
        model.check_nothing_overdue(ctx, command);
        let summary = self.state.summary();
        let expected = (self.index, model.now, model.live.len() as u64, model.queue.len() as u64);
        let actual = (summary.last_index, summary.now_ms, summary.checkouts, summary.queued);
        ensure_eq!(ctx, actual, expected, "summary (index, now, checkouts, queued)");
        ensure_eq!(ctx, summary.sessions, model.sessions.len() as u64, "sessions");
        ensure_eq!(ctx, summary.next_expiry, model.next_expiry(), "next expiry");

        let filter = CheckoutFilter { limit: Some(10_000), ..CheckoutFilter::default() };
        let listed = self.state.list_checkouts(&filter);
        if listed.len() != model.live.len()
            || !listed.iter().zip(model.live.values()).all(|(a, b)| a == b)
        {
            let first = listed.iter().zip(model.live.values()).find(|(a, b)| a != b);
            ctx.fail(format_args!(
                "list_checkouts differs from the model ({} listed, {} in the model); first \
                 difference: {first:?}",
                listed.len(),
                model.live.len()
            ));
        }
        ensure_eq!(ctx, self.state.list_queue(None), model.waiter_infos(), "list_queue");

        let status = self.state.features_status();
        model.check_features(ctx, &status);
        model.check_reserves(ctx);
        model.check_queue_progress(ctx);

        // Every token that moved is in a `Granted` or `Ended` event.
        let mut expected: BTreeMap<(FeatureName, PoolName), i128> =
            self.usage.iter().map(|(k, &n)| (k.clone(), i128::from(n))).collect();
        for event in &out.events {
            let (items, sign) = match event {
                Event::Granted { items, .. } => (items, 1),
                Event::Ended { items, .. } => (items, -1),
                _ => continue,
            };
            for item in items.iter() {
                *expected.entry((item.feature.clone(), item.pool.clone())).or_default() +=
                    sign * i128::from(item.tokens);
            }
        }
        expected.retain(|_, n| *n != 0);
        let actual: BTreeMap<(FeatureName, PoolName), u64> = (status.iter())
            .flat_map(|s| {
                s.pools.iter().map(move |p| ((s.feature.clone(), p.pool.clone()), p.in_use))
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        let actual_wide: BTreeMap<_, i128> =
            actual.iter().map(|(k, &n)| (k.clone(), i128::from(n))).collect();
        ensure_eq!(ctx, actual_wide, expected, "pool usage against the events");
        self.usage = actual;

        let id = CheckoutId(self.rng.random_range(0..self.model.next_id + 2));
        ensure_eq!(
            self.ctx,
            self.state.checkout_status(id),
            self.model.checkout_status(id),
            "status of {id:?}"
        );
    }

    fn count(&mut self, command: &Command, out: &Output, disposition: &Disposition, kind: &Kind) {
        let c = &mut self.coverage;
        for event in &out.events {
            match event {
                Event::Granted { from_queue: true, .. } => c.queue_grants += 1,
                Event::Granted { items, .. } => {
                    c.direct_grants += 1;
                    c.multi_feature_grants += u64::from(items.len() > 1);
                }
                Event::Ended { end: End::Expired, .. } => c.expiries += 1,
                Event::Ended { end: End::Released, .. } => c.releases += 1,
                Event::Ended { end: End::Revoked { .. }, .. }
                | Event::Dequeued { end: End::Revoked { .. }, .. } => c.revocations += 1,
                Event::Dequeued { end: End::QueueExpired, .. } => c.queue_expiries += 1,
                Event::Dequeued { end: End::Cancelled, .. } => c.cancels += 1,
                Event::Dequeued { end: End::QueueDenied(_), .. } => c.queue_denied += 1,
                Event::Queued { .. } => c.queued += 1,
                _ => {}
            }
        }
        match &out.response {
            Response::Granted(grant) => c.borrows += u64::from(grant.borrowed),
            Response::Renewed(_) => c.renewals += 1,
            Response::Queued(_)
                if matches!(command, Command::Request(Request { op: Op::Heartbeat(_), .. })) =>
            {
                c.polls += 1
            }
            Response::Denied(denial) => match denial {
                Denial::NoTokens { .. } => c.no_tokens += 1,
                Denial::QueueBlocked { .. } => c.queue_blocked += 1,
                Denial::OverLimit { .. } => c.over_limit += 1,
                Denial::LimitReached { .. } => c.limit_reached += 1,
                Denial::Revoked { .. } => c.revoked_answers += 1,
                _ => {}
            },
            Response::Installed { .. } => c.installs += 1,
            Response::LeaderChanged { .. } => c.leader_changes += 1,
            _ => {}
        }
        c.replays += u64::from(*disposition == Disposition::Replay);
        c.stale += u64::from(*disposition == Disposition::Stale);
        c.odd_refusals += u64::from(matches!(kind, Kind::Odd));
        if let Response::Installed { .. } = out.response {
            let shrunk = (self.model.config.iter()).any(|(f, cfg)| {
                self.model.pool_usage(f).values().sum::<u64>() > cfg.ent.tokens_total
            });
            c.shrinks_below_use += u64::from(shrunk);
        }
    }

    fn next_meta(&mut self) -> Meta {
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
    fn generate(&mut self, meta_now: u64) -> (Command, Kind) {
        let now = self.model.now.max(meta_now);
        if self.model.live.len() > MAX_LIVE
            && let Some(cmd) = self.gen_release()
        {
            return (cmd, Kind::Normal);
        }
        // A new leader often finds an offline borrow that ended during the election.
        let overdue_borrow =
            self.model.live.values().any(|c| c.borrowed && c.lease_expires_at_ms <= now);
        if overdue_borrow && self.rng.random_bool(0.3) {
            return (Command::LeaderChange { leader: self.rng.random_range(1..=5) }, Kind::Normal);
        }
        let roll = self.rng.random_range(0..1_000);
        let generated = match roll {
            0..120 => self.gen_heartbeat(),
            120..180 => self.gen_poll(),
            180..290 => self.gen_release(),
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
        client.sent.push_back(request.clone());
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

    fn random_live(&mut self) -> Option<(CheckoutId, ClientId)> {
        let n = self.model.live.len();
        if n == 0 {
            return None;
        }
        let c = self.model.live.values().nth(self.rng.random_range(0..n)).expect("in range");
        Some((c.id, c.client.clone()))
    }

    fn random_queued(&mut self) -> Option<(CheckoutId, ClientId)> {
        let n = self.model.queue.len();
        if n == 0 {
            return None;
        }
        let w = self.model.queue.values().nth(self.rng.random_range(0..n)).expect("in range");
        Some((w.id, w.client.clone()))
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

    fn gen_cancel(&mut self) -> Option<Command> {
        let (id, owner) = self.random_queued()?;
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
        let kept = self.model.sessions.get(&client.id).map(|s| &s.replies);
        let replayable: Vec<&Request> =
            (client.sent.iter()).filter(|r| kept.is_some_and(|k| k.contains_key(&r.seq))).collect();
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
        let wait = rng.random_bool(0.3).then(|| Wait {
            priority: rng.random_range(0..=3),
            poll_ttl_ms: rng.random_range(2 * SECOND..=30 * SECOND),
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
            _ => Demand::Tokens(rng.random_range(1..=(total / 4).max(1))),
        };
        let pool = match rng.random_range(0..100) {
            0..8 => self
                .model
                .config
                .get(&f)
                .map(|cfg| cfg.pools.choose(rng).expect("not empty").name.clone()),
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
                let floor = self.model.sessions.get(&self.clients[who].id).map_or(0, |s| s.floor);
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
    fn gen_install(&mut self, valid: bool) -> (Command, Kind) {
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

/// The per-seed base configuration: features with a single default pool (one of them
/// with dates, one with rules) and two with SMP/MPP pools, one of them lending.
fn base_config(rng: &mut ChaCha8Rng) -> BTreeMap<FeatureName, FeatureCfg> {
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
            (feature, FeatureCfg { ent, pools })
        })
        .collect()
}

/// Valid pools for `crash` (an SMP pool that lends down to a low-water mark, an MPP pool
/// that does not, an open batch pool) or `implicit` (SMP and MPP pools that do not lend).
/// A varied license sometimes drops the batch pool or renames the MPP pool.
fn random_pools(rng: &mut ChaCha8Rng, feature: &str, total: u64, vary: bool) -> Vec<PoolSpec> {
    let batch = feature == CRASH && !(vary && rng.random_bool(0.2));
    let mpp = if vary && rng.random_bool(0.25) { "mpp-b" } else { "mpp" };
    let mut pool = |pool: &str, lend: bool, modes: Vec<ParallelMode>| {
        let reserve = rng.random_range(0..=total / 3);
        let cap = rng.random_bool(0.5).then(|| rng.random_range(reserve.max(1)..=total));
        let keep_idle = if lend { rng.random_range(0..=reserve) } else { 0 };
        PoolSpec { name: name(pool), reserve, cap, lend, keep_idle, modes }
    };
    let smp = pool("smp", feature == CRASH, vec![ParallelMode::Smp]);
    let mpp = pool(mpp, false, vec![ParallelMode::Mpp]);
    let mut pools = vec![smp, mpp];
    if batch {
        pools.push(PoolSpec::open(name("batch")));
    }
    pools
}
