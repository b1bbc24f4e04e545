//! Randomized model test of the license state machine.
//!
//! Every run draws a license configuration and a long command sequence from a seeded
//! ChaCha8 generator and applies the commands to a [`State`]. Beside it runs a reference
//! model written in this file from `docs/design/licensing-model.md` and the module docs,
//! without reusing the crate's logic: pool accounting (own reserve, shared remainder,
//! lending, unbacked tokens after a shrink), the order of the grant checks, options-file
//! rules, the queue with its anti-starvation rule, leases, tombstones and sessions. The model
//! predicts the whole output of every command (the answer and every event, up to the
//! wording of refusals), and after every step the test checks that:
//!
//! - the output is the predicted one, so every grant, refusal, expiry, queue grant and drop
//!   is accounted for, ids and fencing tokens are exactly the next ones, and a queued id is
//!   granted at most once, from the queue;
//! - `check_invariants` holds, and `summary`, `list_checkouts`, `list_queue`,
//!   `features_status` and `checkout_status` equal the model's;
//! - independently of the planning rule, no grant passes a feature total, a pool cap, the
//!   license dates or a rule, with usage counted from the live checkouts (so not even after
//!   a new license shrank a feature below its use), the free tokens of a feature cover the
//!   idle reserves of its pools that do not lend, the `Granted` and `Ended` events add up
//!   to the change in pool usage, and a lease or wait that is due is gone;
//! - the queue keeps the documented promise: once tokens of a feature come free or a
//!   waiter that blocked it leaves, no waiter of it that fits is left waiting, unless a
//!   blocking waiter ahead of it competes;
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lsm_core::{
    Checkout, CheckoutFilter, CheckoutId, CheckoutRequest, CheckoutStatus, ClientId, Command,
    CostRule, Demand, Denial, End, Entitlement, Event, FeatureName, FeatureStatus, Grant,
    GrantedItem, GroupName, HostName, Install, InstallError, Item, JobId, Limits, MAX_REASON_LEN,
    Meta, Op, Output, ParallelMode, Policy, PoolName, PoolSpec, PoolStatus, Queued, Request,
    Response, Rule, State, Subject, UserName, Wait, WaiterInfo,
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

/// One pool's configuration and token accounting, as `docs/design/licensing-model.md`
/// describes them.
#[derive(Clone, Debug)]
struct MPool {
    spec: PoolSpec,
    cap: u64,
    retired: bool,
    used: u64,
    own: u64,
    shared: u64,
    borrowed: BTreeMap<PoolName, u64>,
    unbacked: u64,
    lent: u64,
}

impl MPool {
    fn new(spec: PoolSpec, total: u64) -> MPool {
        MPool {
            cap: spec.cap.unwrap_or(total),
            spec,
            retired: false,
            used: 0,
            own: 0,
            shared: 0,
            borrowed: BTreeMap::new(),
            unbacked: 0,
            lent: 0,
        }
    }

    /// A pool that is no longer configured but still held: no reserve, a cap of 0.
    fn retired(name: PoolName, used: u64, total: u64) -> MPool {
        let mut spec = PoolSpec::open(name);
        spec.cap = Some(0);
        MPool { used, retired: true, ..MPool::new(spec, total) }
    }

    fn idle(&self) -> u64 {
        self.spec.reserve.saturating_sub(self.own + self.lent)
    }

    fn lendable(&self) -> u64 {
        if self.spec.lend { self.idle().saturating_sub(self.spec.keep_idle) } else { 0 }
    }
}

/// Where the tokens of one grant come from.
#[derive(Clone, Debug, Default)]
struct Alloc {
    own: u64,
    shared: u64,
    /// By lender index.
    borrowed: Vec<(usize, u64)>,
}

/// One item of a planned grant.
#[derive(Clone, Debug)]
struct Plan {
    feature: FeatureName,
    pool: usize,
    tokens: u64,
    alloc: Alloc,
}

/// One feature's entitlement and pools.
#[derive(Clone, Debug)]
struct MFeature {
    ent: Entitlement,
    pools: Vec<MPool>,
    /// No longer licensed, kept while checkouts hold it.
    retired: bool,
}

impl MFeature {
    fn new(ent: Entitlement, specs: Vec<PoolSpec>) -> MFeature {
        let total = ent.tokens_total;
        MFeature {
            pools: specs.into_iter().map(|s| MPool::new(s, total)).collect(),
            ent,
            retired: false,
        }
    }

    fn in_use(&self) -> u64 {
        self.pools.iter().map(|p| p.used).sum()
    }

    fn free(&self) -> u64 {
        self.ent.tokens_total.saturating_sub(self.in_use())
    }

    fn shared_free(&self) -> u64 {
        let reserved: u64 = self.pools.iter().map(|p| p.spec.reserve).sum();
        let used: u64 = self.pools.iter().map(|p| p.shared).sum();
        self.ent.tokens_total.saturating_sub(reserved).saturating_sub(used)
    }

    fn pool_index(&self, name: &PoolName) -> Option<usize> {
        self.pools.iter().position(|p| &p.spec.name == name && !p.retired)
    }

    /// The pool an item draws on: the named one, else the one serving its mode, else the
    /// first.
    fn resolve(&self, item: &Item) -> Result<usize, Denial> {
        if let Some(pool) = &item.pool {
            return self.pool_index(pool).ok_or_else(|| Denial::UnknownPool {
                feature: item.feature.clone(),
                pool: pool.clone(),
            });
        }
        let live = |p: &MPool| !p.retired;
        if let Demand::Cores { mode, .. } = item.demand
            && let Some(p) = self.pools.iter().position(|p| live(p) && p.spec.modes.contains(&mode))
        {
            return Ok(p);
        }
        (self.pools.iter().position(live))
            .ok_or_else(|| Denial::UnknownFeature { feature: item.feature.clone() })
    }

    /// Tokens pool `p` could take from its sources, ignoring its cap and the total.
    fn reachable(&self, p: usize) -> u64 {
        let lendable: u64 = (self.pools.iter().enumerate())
            .filter(|&(q, _)| q != p)
            .map(|(_, pool)| pool.lendable())
            .sum();
        self.pools[p].idle() + self.shared_free() + lendable
    }

    fn available(&self, p: usize) -> u64 {
        let pool = &self.pools[p];
        if pool.retired {
            return 0;
        }
        self.free().min(pool.cap.saturating_sub(pool.used)).min(self.reachable(p))
    }

    /// The grant rule for one pool: the cap (unless it is the total), the total, then the
    /// pool's idle reserve, the shared remainder and the lenders in declaration order.
    fn plan(&self, p: usize, tokens: u64) -> Result<Alloc, Denial> {
        let pool = &self.pools[p];
        let no_tokens = |available| Denial::NoTokens {
            feature: self.ent.feature.clone(),
            pool: pool.spec.name.clone(),
            available,
            requested: tokens,
        };
        let total = self.ent.tokens_total;
        if pool.used + tokens > pool.cap && pool.cap < total {
            return Err(Denial::PoolCap {
                feature: self.ent.feature.clone(),
                pool: pool.spec.name.clone(),
                cap: pool.cap,
                held: pool.used,
                requested: tokens,
            });
        }
        // The documented rule is `in_use + n <= T`: after a license shrank a feature below
        // its use, even a request that costs nothing is refused.
        if self.in_use() + tokens > total {
            return Err(no_tokens(self.free().min(self.reachable(p))));
        }
        let own = tokens.min(pool.idle());
        let shared = (tokens - own).min(self.shared_free());
        let mut rest = tokens - own - shared;
        let mut borrowed = Vec::new();
        for (q, lender) in self.pools.iter().enumerate() {
            let take = if q == p { 0 } else { rest.min(lender.lendable()) };
            if take > 0 {
                borrowed.push((q, take));
                rest -= take;
            }
        }
        if rest > 0 {
            return Err(no_tokens(tokens - rest));
        }
        Ok(Alloc { own, shared, borrowed })
    }

    fn take(&mut self, p: usize, tokens: u64, alloc: &Alloc) {
        for &(q, n) in &alloc.borrowed {
            self.pools[q].lent += n;
            let lender = self.pools[q].spec.name.clone();
            *self.pools[p].borrowed.entry(lender).or_default() += n;
        }
        let pool = &mut self.pools[p];
        pool.used += tokens;
        pool.own += alloc.own;
        pool.shared += alloc.shared;
    }

    /// Returns tokens in the documented order: unbacked, borrowed (lenders by name),
    /// shared, own.
    fn give_back(&mut self, p: usize, tokens: u64) {
        let pool = &mut self.pools[p];
        pool.used -= tokens;
        let mut rest = tokens;
        let n = rest.min(pool.unbacked);
        pool.unbacked -= n;
        rest -= n;
        let mut returned = Vec::new();
        while rest > 0 {
            let Some(mut entry) = pool.borrowed.first_entry() else { break };
            let n = rest.min(*entry.get());
            *entry.get_mut() -= n;
            rest -= n;
            returned.push((entry.key().clone(), n));
            if *entry.get() == 0 {
                entry.remove();
            }
        }
        let n = rest.min(pool.shared);
        pool.shared -= n;
        pool.own -= rest - n;
        for (lender, n) in returned {
            if let Some(q) = self.pools.iter_mut().find(|q| q.spec.name == lender) {
                q.lent -= n;
            }
        }
        if self.pools.iter().any(|p| p.unbacked > 0) {
            self.rebalance();
        }
    }

    /// Recomputes every pool's sources from its use: own reserve first, then the shared
    /// remainder, then lenders down to their low-water marks, the rest unbacked.
    fn rebalance(&mut self) {
        for pool in &mut self.pools {
            pool.own = pool.used.min(pool.spec.reserve);
            pool.shared = 0;
            pool.borrowed.clear();
            pool.unbacked = 0;
            pool.lent = 0;
        }
        for p in 0..self.pools.len() {
            let mut rest = self.pools[p].used - self.pools[p].own;
            let shared = rest.min(self.shared_free());
            self.pools[p].shared = shared;
            rest -= shared;
            for q in 0..self.pools.len() {
                let take = if q == p { 0 } else { rest.min(self.pools[q].lendable()) };
                if take > 0 {
                    self.pools[q].lent += take;
                    let lender = self.pools[q].spec.name.clone();
                    *self.pools[p].borrowed.entry(lender).or_default() += take;
                    rest -= take;
                }
            }
            self.pools[p].unbacked = rest;
        }
    }

    /// A new configuration: pools keep their use by name, pools that are gone but held
    /// are retired (in name order, after the configured ones).
    fn reconfigure(&mut self, ent: Entitlement, specs: Vec<PoolSpec>) {
        let total = ent.tokens_total;
        let mut old: BTreeMap<PoolName, MPool> =
            self.pools.drain(..).map(|p| (p.spec.name.clone(), p)).collect();
        let mut pools: Vec<MPool> = (specs.into_iter())
            .map(|spec| {
                let used = old.remove(&spec.name).map_or(0, |p| p.used);
                MPool { used, ..MPool::new(spec, total) }
            })
            .collect();
        pools.extend(
            (old.into_iter())
                .filter(|(_, p)| p.used > 0)
                .map(|(n, p)| MPool::retired(n, p.used, total)),
        );
        self.ent = ent;
        self.pools = pools;
        self.retired = false;
        self.rebalance();
    }

    fn prune(&mut self) {
        if self.pools.iter().any(|p| p.retired && p.used == 0) {
            self.pools.retain(|p| !(p.retired && p.used == 0));
            self.rebalance();
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
    /// Its last refusal was for want of tokens, not a max rule.
    short_of_tokens: bool,
}

impl MWaiter {
    /// Queue order: higher priority first, then arrival.
    fn key(&self) -> (u8, CheckoutId) {
        (u8::MAX - self.priority, self.id)
    }

    fn wants(&self, feature: &FeatureName) -> bool {
        self.request.items.iter().any(|i| &i.feature == feature)
    }
}

/// A client session as the model sees it.
struct MSession {
    last_seen_ms: u64,
    floor: u64,
    replies: BTreeMap<u64, Response>,
}

/// How the session table treats a command.
#[derive(Clone, Copy, Debug, PartialEq)]
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

/// A denial with its free-text parts blanked, so answers compare without the wording.
fn blank(denial: &Denial) -> Denial {
    match denial {
        Denial::BadRequest { field, .. } => bad(field.clone()),
        Denial::BadInstall(_) => {
            Denial::BadInstall(InstallError { field: String::new(), problem: String::new() })
        }
        other => other.clone(),
    }
}

fn blank_response(response: &Response) -> Response {
    match response {
        Response::Denied(denial) => Response::Denied(blank(denial)),
        other => other.clone(),
    }
}

/// An output with the free-text parts of its refusals blanked.
fn blank_output(out: &Output) -> Output {
    let events = (out.events.iter())
        .map(|event| match event {
            Event::Denied { client, denial } => {
                Event::Denied { client: client.clone(), denial: blank(denial) }
            }
            other => other.clone(),
        })
        .collect();
    Output { response: blank_response(&out.response), events }
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

/// What one command did besides its answer, as the model follows it.
#[derive(Default)]
struct Fx {
    events: Vec<Event>,
    /// Features whose tokens came free: the queue walk tries their waiters.
    freed: BTreeSet<FeatureName>,
    /// Everything may have changed (a new license).
    freed_all: bool,
}

/// The whole state as the documentation describes it.
struct Model {
    limits: Limits,
    /// Replicated time: the largest `now_ms` seen.
    now: u64,
    next_id: u64,
    next_fence: u64,
    features: BTreeMap<FeatureName, MFeature>,
    /// Rules and groups in force (pools live in `features`).
    policy: Policy,
    live: BTreeMap<CheckoutId, Checkout>,
    queue: BTreeMap<CheckoutId, MWaiter>,
    tombstones: BTreeMap<CheckoutId, End>,
    sessions: BTreeMap<ClientId, MSession>,
    /// Recently ended ids and their owners, for late heartbeats.
    ended: VecDeque<(CheckoutId, ClientId)>,
    /// Features whose use has dropped to zero since the last install that found them in
    /// use, so none of their tokens is unbacked.
    clean: BTreeSet<FeatureName>,
    /// Features the documented queue rule says the last command must have served the
    /// queue for (tokens came free, or a waiter that blocked them left), with the reason.
    woken: BTreeMap<FeatureName, String>,
    /// A new license came into force in the last command.
    woken_all: bool,
    /// Why the model walked the queue again in the last command, for failure messages.
    rewalks: Vec<String>,
}

impl Model {
    fn new(limits: Limits) -> Model {
        Model {
            limits,
            now: 0,
            next_id: 1,
            next_fence: 1,
            features: BTreeMap::new(),
            policy: Policy::default(),
            live: BTreeMap::new(),
            queue: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            sessions: BTreeMap::new(),
            ended: VecDeque::new(),
            clean: BTreeSet::new(),
            woken: BTreeMap::new(),
            woken_all: false,
            rewalks: Vec::new(),
        }
    }

    /// Tokens per pool of one feature, counted from the live checkouts.
    fn held(&self, feature: &FeatureName) -> BTreeMap<PoolName, u64> {
        let mut usage = BTreeMap::new();
        for item in self.live.values().flat_map(|c| c.items.iter()) {
            if &item.feature == feature && item.tokens > 0 {
                *usage.entry(item.pool.clone()).or_default() += item.tokens;
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
    /// first, then per item the max rules, the pool, and (for a new request) the waiters
    /// that block it.
    fn plan_checkout(
        &self,
        req: &CheckoutRequest,
        waiter: Option<CheckoutId>,
    ) -> Result<Vec<Plan>, Denial> {
        let mut sized = Vec::with_capacity(req.items.len());
        for item in &req.items {
            let feature = item.feature.clone();
            let f = match self.features.get(&item.feature) {
                Some(f) if !f.retired => f,
                _ => return Err(Denial::UnknownFeature { feature }),
            };
            let ent = &f.ent;
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
            let p = f.resolve(item)?;
            let tokens = cost_tokens(&ent.cost, item.demand);
            if tokens > ent.tokens_total {
                return Err(Denial::OverTotal {
                    feature,
                    total: ent.tokens_total,
                    requested: tokens,
                });
            }
            let pool = &f.pools[p];
            if tokens > pool.cap {
                return Err(Denial::PoolCap {
                    feature,
                    pool: pool.spec.name.clone(),
                    cap: pool.cap,
                    held: pool.used,
                    requested: tokens,
                });
            }
            self.check_access(&item.feature, &req.user, &req.host)?;
            sized.push((f, p, tokens));
        }
        let mut planned = Vec::with_capacity(sized.len());
        for (f, p, tokens) in sized {
            let feature = f.ent.feature.clone();
            self.check_max(&feature, &req.user, &req.host, tokens)?;
            let plan = Plan { alloc: f.plan(p, tokens)?, feature, pool: p, tokens };
            if waiter.is_none()
                && let Some(blocker) = self.blocker(&plan)
            {
                return Err(Denial::QueueBlocked { feature: plan.feature, waiter: blocker });
            }
            planned.push(plan);
        }
        Ok(planned)
    }

    /// A grant planned as `plan` competes with waiter `w` when it takes tokens `w` waits for:
    /// from `w`'s own pool, or from the shared remainder or a lender.
    fn competes(&self, w: &MWaiter, plan: &Plan) -> bool {
        if !w.short_of_tokens {
            return false;
        }
        let Some(item) = w.request.items.iter().find(|i| i.feature == plan.feature) else {
            return false;
        };
        let Some(f) = self.features.get(&plan.feature) else { return false };
        let Ok(pool) = f.resolve(item) else { return false };
        pool == plan.pool || plan.alloc.shared > 0 || !plan.alloc.borrowed.is_empty()
    }

    fn is_blocking(&self, w: &MWaiter) -> bool {
        w.short_of_tokens && w.bypassed >= self.limits.max_queue_bypass
    }

    /// The oldest blocking waiter that a grant planned as `plan` would compete with.
    fn blocker(&self, plan: &Plan) -> Option<CheckoutId> {
        (self.queue.values())
            .find(|w| w.wants(&plan.feature) && self.is_blocking(w) && self.competes(w, plan))
            .map(|w| w.id)
    }

    /// Counts a bypass against every waiter (of `only`, if given) that the grant competes
    /// with; returns those that start blocking.
    fn bypass(&mut self, planned: &[Plan], only: Option<&BTreeSet<CheckoutId>>) -> Vec<CheckoutId> {
        let passed: BTreeSet<CheckoutId> = (self.queue.values())
            .filter(|w| only.is_none_or(|o| o.contains(&w.id)))
            .filter(|w| planned.iter().any(|p| w.wants(&p.feature) && self.competes(w, p)))
            .map(|w| w.id)
            .collect();
        let limit = self.limits.max_queue_bypass;
        let mut now_blocking = Vec::new();
        for id in passed {
            let w = self.queue.get_mut(&id).expect("collected from the queue");
            w.bypassed = w.bypassed.saturating_add(1);
            if w.bypassed == limit {
                now_blocking.push(id);
            }
        }
        now_blocking
    }

    /// Records a grant, after checking it against the bounds the live checkouts imply.
    fn commit_grant(
        &mut self,
        ctx: &Ctx,
        (id, client): (CheckoutId, ClientId),
        req: CheckoutRequest,
        planned: Vec<Plan>,
        from_queue: bool,
        fx: &mut Fx,
    ) -> Grant {
        let mut items = Vec::with_capacity(planned.len());
        for plan in planned {
            let f = self.features.get(&plan.feature).expect("planned features exist");
            let item = GrantedItem {
                feature: plan.feature.clone(),
                pool: f.pools[plan.pool].spec.name.clone(),
                tokens: plan.tokens,
            };
            self.check_grant_bounds(ctx, &req, &item);
            let f = self.features.get_mut(&plan.feature).expect("planned features exist");
            f.take(plan.pool, plan.tokens, &plan.alloc);
            items.push(item);
        }
        let items: Arc<[GrantedItem]> = items.into();
        let fence = self.next_fence;
        self.next_fence += 1;
        let (lease_ttl_ms, lease_expires_at_ms, borrowed) = match req.borrow_until_ms {
            Some(until) => (0, until, true),
            None => (req.lease_ttl_ms, self.now + req.lease_ttl_ms, false),
        };
        fx.events.push(Event::Granted {
            id,
            fence,
            client: client.clone(),
            user: req.user.clone(),
            host: req.host.clone(),
            job: req.job.clone(),
            items: items.clone(),
            from_queue,
        });
        let checkout = Checkout {
            id,
            fence,
            client,
            user: req.user,
            host: req.host,
            job: req.job,
            items: items.clone(),
            granted_at_ms: self.now,
            lease_ttl_ms,
            lease_expires_at_ms,
            borrowed,
        };
        self.live.insert(id, checkout);
        Grant { id, fence, items, lease_expires_at_ms, borrowed }
    }

    /// Checks a grant about to be recorded against the feature total, the pool cap, the
    /// license dates and the rules, with usage counted from the live checkouts.
    fn check_grant_bounds(&self, ctx: &Ctx, req: &CheckoutRequest, item: &GrantedItem) {
        let f = &self.features[&item.feature];
        let held = self.held(&item.feature);
        let in_use: u64 = held.values().sum();
        let total = f.ent.tokens_total;
        ensure!(
            ctx,
            in_use + item.tokens <= total,
            "the model grants {item:?} with {in_use} of {total} tokens in use"
        );
        let pool = &f.pools[f.pool_index(&item.pool).expect("granted from a configured pool")];
        let pool_use = held.get(&item.pool).copied().unwrap_or(0);
        ensure!(
            ctx,
            pool_use + item.tokens <= pool.cap,
            "the model grants {item:?} with {pool_use} in use and a cap of {}",
            pool.cap
        );
        let ent = &f.ent;
        ensure!(
            ctx,
            (ent.starts_at_ms..ent.expires_at_ms).contains(&self.now),
            "the model grants {item:?} outside the license dates"
        );
        let access = self.check_access(&item.feature, &req.user, &req.host);
        let max = self.check_max(&item.feature, &req.user, &req.host, item.tokens);
        ensure!(
            ctx,
            access.is_ok() && max.is_ok(),
            "the model grants {item:?}: {access:?} {max:?}"
        );
    }

    fn bury(&mut self, id: CheckoutId, end: End, client: ClientId) {
        self.tombstones.insert(id, end);
        while self.tombstones.len() as u64 > self.limits.max_tombstones {
            self.tombstones.pop_first();
        }
        self.ended.push_back((id, client));
        if self.ended.len() > 64 {
            self.ended.pop_front();
        }
    }

    /// Ends a live checkout and returns its tokens.
    fn end_checkout(&mut self, ctx: &Ctx, id: CheckoutId, end: End, fx: &mut Fx) {
        let c = self.live.remove(&id).expect("caller checked the checkout is live");
        if self.live.len() as u64 + 1 >= self.limits.max_checkouts {
            fx.freed_all = true;
        }
        for item in c.items.iter().filter(|i| i.tokens > 0) {
            if let Some(f) = self.features.get_mut(&item.feature) {
                let Some(p) = f.pools.iter().position(|p| p.spec.name == item.pool) else {
                    ctx.fail(format_args!("{id:?} holds {item:?} of a pool that is gone"))
                };
                f.give_back(p, item.tokens);
                f.prune();
                if f.retired && f.in_use() == 0 {
                    self.features.remove(&item.feature);
                }
            }
            fx.freed.insert(item.feature.clone());
            self.woken.entry(item.feature.clone()).or_insert_with(|| format!("{id:?} ended"));
            if self.held(&item.feature).is_empty() {
                self.clean.insert(item.feature.clone());
            }
        }
        fx.events.push(Event::Ended { id, items: c.items, end: end.clone() });
        self.bury(id, end, c.client);
    }

    /// Takes a request out of the queue without a grant.
    fn drop_waiter(&mut self, id: CheckoutId, end: End, fx: &mut Fx) {
        let w = self.queue.remove(&id).expect("caller checked the request is queued");
        if self.is_blocking(&w) {
            for item in &w.request.items {
                fx.freed.insert(item.feature.clone());
                let why = || format!("blocking waiter {id:?} left the queue ({end:?})");
                self.woken.entry(item.feature.clone()).or_insert_with(why);
            }
        }
        fx.events.push(Event::Dequeued { id, end: end.clone() });
        self.bury(id, end, w.client);
    }

    /// Leases, then waits, that are due, in expiry order, and idle sessions.
    fn expire_due(&mut self, ctx: &Ctx, fx: &mut Fx) -> u64 {
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
            self.end_checkout(ctx, id, End::Expired, fx);
        }
        for &(_, id) in &waits {
            self.drop_waiter(id, End::QueueExpired, fx);
        }
        let ttl = self.limits.session_idle_ttl_ms;
        self.sessions.retain(|_, s| s.last_seen_ms.saturating_add(ttl) > now);
        (leases.len() + waits.len()) as u64
    }

    /// Serves the queue: walks it in queue order, trying every waiter of a feature that came
    /// free; a waiter is granted unless a blocking waiter ahead of it would be passed.
    /// A blocking waiter that leaves during the walk, granted or dropped, lets the waiters
    /// it held back through, including those the walk has passed, so the queue is walked
    /// again; `rewalks` notes why, for failure messages.
    fn drain(&mut self, ctx: &Ctx, fx: &mut Fx) {
        while let Some(blocker) = self.walk(ctx, fx) {
            self.rewalks.push(format!(
                "the model walked the queue again because blocking waiter {blocker:?} left it"
            ));
        }
    }

    /// One walk of the queue. Returns a blocking waiter that left the queue, if any.
    fn walk(&mut self, ctx: &Ctx, fx: &mut Fx) -> Option<CheckoutId> {
        if self.queue.is_empty() || (fx.freed.is_empty() && !fx.freed_all) {
            return None;
        }
        let mut order: Vec<(u8, CheckoutId)> = self.queue.values().map(|w| w.key()).collect();
        order.sort();
        let mut pending = BTreeSet::new();
        let mut blockers: Vec<CheckoutId> = Vec::new();
        let mut left_blocker = None;
        for (_, id) in order {
            let w = &self.queue[&id];
            let dirty =
                fx.freed_all || w.request.items.iter().any(|i| fx.freed.contains(&i.feature));
            if dirty {
                match self.plan_checkout(&w.request, Some(id)) {
                    Ok(planned) => {
                        let blocked = (blockers.iter())
                            .any(|b| planned.iter().any(|p| self.competes(&self.queue[b], p)));
                        if blocked {
                            self.queue.get_mut(&id).expect("queued").short_of_tokens = true;
                        } else if (self.live.len() as u64) < self.limits.max_checkouts {
                            blockers.extend(self.bypass(&planned, Some(&pending)));
                            let w = self.queue.remove(&id).expect("queued");
                            if self.is_blocking(&w) {
                                left_blocker = Some(id);
                                for item in &w.request.items {
                                    fx.freed.insert(item.feature.clone());
                                    let why = || format!("blocking waiter {id:?} was granted");
                                    self.woken.entry(item.feature.clone()).or_insert_with(why);
                                }
                            }
                            self.commit_grant(ctx, (id, w.client), w.request, planned, true, fx);
                            continue;
                        } else {
                            break;
                        }
                    }
                    Err(denial) if !transient(&denial) => {
                        if self.is_blocking(&self.queue[&id]) {
                            left_blocker = Some(id);
                        }
                        self.drop_waiter(id, End::QueueDenied(Box::new(denial)), fx);
                        continue;
                    }
                    Err(denial) => {
                        let short = !matches!(denial, Denial::OverLimit { .. });
                        self.queue.get_mut(&id).expect("queued").short_of_tokens = short;
                    }
                }
            }
            pending.insert(id);
            if self.is_blocking(&self.queue[&id]) {
                blockers.push(id);
            }
        }
        left_blocker
    }

    /// Everything one command does: the answer and the events, as the documentation says.
    fn apply(
        &mut self,
        ctx: &Ctx,
        meta: Meta,
        command: &Command,
        install_ok: Option<bool>,
    ) -> (Output, Disposition) {
        self.now = self.now.max(meta.now_ms);
        self.woken.clear();
        self.woken_all = false;
        self.rewalks.clear();
        let mut fx = Fx::default();
        let extended = match command {
            Command::LeaderChange { .. } => self.extend_leases(),
            _ => 0,
        };
        let expired = self.expire_due(ctx, &mut fx);
        self.drain(ctx, &mut fx);
        let (response, disposition) = match command {
            Command::Tick => (Response::Ticked { expired }, Disposition::System),
            Command::LeaderChange { leader } => {
                fx.events.push(Event::LeasesExtended { leader: *leader, count: extended });
                (Response::LeaderChanged { extended }, Disposition::System)
            }
            Command::Request(req) => self.request(ctx, req, install_ok, &mut fx),
        };
        self.drain(ctx, &mut fx);
        (Output { response, events: fx.events.into() }, disposition)
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

    /// A client request through its session: answered from it, or run and recorded.
    fn request(
        &mut self,
        ctx: &Ctx,
        req: &Request,
        install_ok: Option<bool>,
        fx: &mut Fx,
    ) -> (Response, Disposition) {
        let client = &req.client;
        let deny = |fx: &mut Fx, denial: Denial| {
            fx.events.push(Event::Denied { client: client.clone(), denial: denial.clone() });
            Response::Denied(denial)
        };
        if req.ack > req.seq {
            return (deny(fx, bad("ack")), Disposition::AckAboveSeq);
        }
        let now = self.now;
        let session = (self.sessions.entry(client.clone())).or_insert_with(|| MSession {
            last_seen_ms: now,
            floor: 0,
            replies: BTreeMap::new(),
        });
        session.last_seen_ms = now;
        if req.ack > session.floor {
            session.floor = req.ack;
            session.replies.retain(|&seq, _| seq >= req.ack);
        }
        if let Some(reply) = session.replies.get(&req.seq) {
            return (reply.clone(), Disposition::Replay);
        }
        if req.seq < session.floor {
            let stale = Denial::StaleRequest { seq: req.seq, oldest_kept: session.floor };
            return (deny(fx, stale), Disposition::Stale);
        }
        let response = match &req.op {
            Op::Checkout(creq) => self.checkout(ctx, client, creq, fx),
            Op::Heartbeat(id) => self.heartbeat(client, *id),
            Op::Release(id) => self.release(ctx, client, *id, fx),
            Op::Revoke { id, reason } => self.revoke(ctx, *id, reason, fx),
            Op::Install(install) => match install_ok {
                Some(true) => self.install(install, fx),
                Some(false) => Response::Denied(Denial::BadInstall(InstallError {
                    field: String::new(),
                    problem: String::new(),
                })),
                None => ctx.fail(format_args!("an install the generator did not classify")),
            },
        };
        let response = match response {
            Response::Denied(denial) => deny(fx, denial),
            other => other,
        };
        self.record(client, req.seq, &response);
        (response, Disposition::New)
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

    fn checkout(
        &mut self,
        ctx: &Ctx,
        client: &ClientId,
        req: &CheckoutRequest,
        fx: &mut Fx,
    ) -> Response {
        if let Err(field) = self.validate(req) {
            return Response::Denied(bad(field));
        }
        let limits = self.limits.clone();
        let (live, queued) = self.load(client);
        if live + queued >= limits.max_checkouts_per_client {
            let max = limits.max_checkouts_per_client;
            return Response::Denied(limit("max_checkouts_per_client", max));
        }
        let planned = match self.plan_checkout(req, None) {
            Ok(planned) => planned,
            Err(denial) if req.wait.is_some() && transient(&denial) => {
                return self.enqueue(client, req, &denial, fx);
            }
            Err(denial) => return Response::Denied(denial),
        };
        if self.live.len() as u64 >= limits.max_checkouts {
            return Response::Denied(limit("max_checkouts", limits.max_checkouts));
        }
        let id = CheckoutId(self.next_id);
        self.next_id += 1;
        self.bypass(&planned, None);
        let grant = self.commit_grant(ctx, (id, client.clone()), req.clone(), planned, false, fx);
        Response::Granted(grant)
    }

    fn enqueue(
        &mut self,
        client: &ClientId,
        req: &CheckoutRequest,
        denial: &Denial,
        fx: &mut Fx,
    ) -> Response {
        let limits = &self.limits;
        if self.queue.len() as u64 >= limits.max_queue_len {
            return Response::Denied(limit("max_queue_len", limits.max_queue_len));
        }
        if self.load(client).1 >= limits.max_queued_per_client {
            return Response::Denied(limit("max_queued_per_client", limits.max_queued_per_client));
        }
        let wait = req.wait.expect("only a request with a wait is queued");
        let id = CheckoutId(self.next_id);
        self.next_id += 1;
        let waiter = MWaiter {
            id,
            client: client.clone(),
            request: req.clone(),
            priority: wait.priority,
            poll_ttl_ms: wait.poll_ttl_ms,
            wait_expires_at_ms: self.now + wait.poll_ttl_ms,
            queued_at_ms: self.now,
            bypassed: 0,
            short_of_tokens: !matches!(denial, Denial::OverLimit { .. }),
        };
        let wait_expires_at_ms = waiter.wait_expires_at_ms;
        self.queue.insert(id, waiter);
        let position = self.position(&self.queue[&id]);
        fx.events.push(Event::Queued { id, client: client.clone(), position });
        Response::Queued(Queued { id, position, wait_expires_at_ms })
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

    fn heartbeat(&mut self, client: &ClientId, id: CheckoutId) -> Response {
        let now = self.now;
        if let Some(c) = self.live.get_mut(&id) {
            if &c.client != client {
                return Response::Denied(Denial::NotOwner { id });
            }
            if !c.borrowed {
                c.lease_expires_at_ms = c.lease_expires_at_ms.max(now + c.lease_ttl_ms);
            }
            return Response::Renewed(Grant {
                id,
                fence: c.fence,
                items: c.items.clone(),
                lease_expires_at_ms: c.lease_expires_at_ms,
                borrowed: c.borrowed,
            });
        }
        if let Some(w) = self.queue.get_mut(&id) {
            if &w.client != client {
                return Response::Denied(Denial::NotOwner { id });
            }
            w.wait_expires_at_ms = w.wait_expires_at_ms.max(now + w.poll_ttl_ms);
            let wait_expires_at_ms = w.wait_expires_at_ms;
            let position = self.position(&self.queue[&id]);
            return Response::Queued(Queued { id, position, wait_expires_at_ms });
        }
        Response::Denied(self.gone(id))
    }

    fn release(&mut self, ctx: &Ctx, client: &ClientId, id: CheckoutId, fx: &mut Fx) -> Response {
        let owner = match (self.live.get(&id), self.queue.get(&id)) {
            (Some(c), _) => &c.client,
            (None, Some(w)) => &w.client,
            (None, None) => return Response::Denied(self.gone(id)),
        };
        if owner != client {
            Response::Denied(Denial::NotOwner { id })
        } else if self.live.contains_key(&id) {
            self.end_checkout(ctx, id, End::Released, fx);
            Response::Released { id }
        } else {
            self.drop_waiter(id, End::Cancelled, fx);
            Response::Cancelled { id }
        }
    }

    fn revoke(&mut self, ctx: &Ctx, id: CheckoutId, reason: &str, fx: &mut Fx) -> Response {
        if reason.len() > MAX_REASON_LEN {
            return Response::Denied(bad("reason"));
        }
        let end = End::Revoked { reason: reason.to_string() };
        if self.live.contains_key(&id) {
            self.end_checkout(ctx, id, end, fx);
        } else if self.queue.contains_key(&id) {
            self.drop_waiter(id, end, fx);
        } else {
            return Response::Denied(self.gone(id));
        }
        Response::Revoked { id }
    }

    /// A new license replaces the old one whole; held features and pools that it drops are
    /// retired until their checkouts end.
    fn install(&mut self, install: &Install, fx: &mut Fx) -> Response {
        let default: PoolName = name("default");
        let mut features = BTreeMap::new();
        for ent in &install.entitlements {
            let f = &ent.feature;
            let specs = (install.policy.pools.get(f).cloned())
                .unwrap_or_else(|| vec![PoolSpec::open(default.clone())]);
            let state = match self.features.remove(f) {
                Some(mut state) => {
                    state.reconfigure(ent.clone(), specs);
                    state.prune();
                    state
                }
                None => MFeature::new(ent.clone(), specs),
            };
            if state.in_use() == 0 {
                self.clean.insert(f.clone());
            } else {
                self.clean.remove(f);
            }
            features.insert(f.clone(), state);
        }
        for (f, mut old) in std::mem::take(&mut self.features) {
            if old.in_use() > 0 {
                let ent = Entitlement { tokens_total: 0, ..old.ent.clone() };
                old.reconfigure(ent, Vec::new());
                old.retired = true;
                features.insert(f, old);
            }
        }
        let licensed: Vec<FeatureName> =
            features.iter().filter(|(_, f)| !f.retired).map(|(n, _)| n.clone()).collect();
        self.features = features;
        self.policy = Policy { pools: BTreeMap::new(), ..install.policy.clone() };
        fx.freed_all = true;
        self.woken_all = true;
        let count = licensed.len() as u64;
        fx.events.push(Event::Installed { features: licensed });
        Response::Installed { features: count }
    }

    // The checks below use the model's state after a command, and hold whatever the core
    // answered.

    /// The queue promise of the documentation: when tokens of a feature come free, or a
    /// waiter that blocked it leaves, the same command serves every waiter of that feature
    /// that fits, unless a blocking waiter ahead of it would be passed, and drops those that
    /// can never fit.
    fn check_queue_progress(&self, ctx: &Ctx) {
        if self.woken.is_empty() && !self.woken_all {
            return;
        }
        for w in self.queue.values() {
            let woken = |i: &Item| self.woken.contains_key(&i.feature);
            if !self.woken_all && !w.request.items.iter().any(woken) {
                continue;
            }
            match self.plan_checkout(&w.request, Some(w.id)) {
                Ok(planned) => {
                    let key = w.key();
                    let held_back = (self.queue.values()).any(|b| {
                        b.key() < key
                            && self.is_blocking(b)
                            && planned.iter().any(|p| self.competes(b, p))
                    });
                    ensure!(
                        ctx,
                        held_back,
                        "{w:?} fits and no blocking waiter ahead of it competes, but it is still \
                         queued although the queue had to be served for its features: {:?}",
                        self.woken
                    );
                }
                Err(denial) => ensure!(
                    ctx,
                    transient(&denial),
                    "{w:?} can never be granted ({denial:?}), but it is still queued"
                ),
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

    /// The pool accounting adds up to the live checkouts, and free tokens of a clean feature
    /// cover the idle reserve of every pool that does not lend.
    fn check_accounting(&self, ctx: &Ctx) {
        for (f, state) in &self.features {
            let held = self.held(f);
            let counted: BTreeMap<PoolName, u64> = (state.pools.iter())
                .filter(|p| p.used > 0)
                .map(|p| (p.spec.name.clone(), p.used))
                .collect();
            ensure_eq!(ctx, counted, held, "{f}: pool use against the live checkouts");
            for p in &state.pools {
                let sources = p.own + p.shared + p.borrowed.values().sum::<u64>() + p.unbacked;
                ensure_eq!(ctx, sources, p.used, "{f}/{}: sources of the model's use", p.spec.name);
            }
            if !self.clean.contains(f) {
                continue;
            }
            let free = state.ent.tokens_total.saturating_sub(held.values().sum());
            let idle: u64 = (state.pools.iter().filter(|p| !p.spec.lend))
                .map(|p| {
                    p.spec.reserve.saturating_sub(held.get(&p.spec.name).copied().unwrap_or(0))
                })
                .sum();
            ensure!(
                ctx,
                free >= idle,
                "{f}: {free} tokens free but {idle} reserved and idle ({held:?})"
            );
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
            blocking: self.is_blocking(w),
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

    fn features_status(&self) -> Vec<FeatureStatus> {
        (self.features.values())
            .map(|f| {
                let ent = &f.ent;
                let pools = (f.pools.iter().enumerate())
                    .map(|(p, pool)| PoolStatus {
                        pool: pool.spec.name.clone(),
                        reserve: pool.spec.reserve,
                        cap: pool.cap,
                        in_use: pool.used,
                        available: f.available(p),
                        lent: pool.lent,
                        borrowed: pool.borrowed.values().sum(),
                        retired: pool.retired,
                    })
                    .collect();
                FeatureStatus {
                    feature: ent.feature.clone(),
                    license: ent.license.clone(),
                    tokens_total: ent.tokens_total,
                    in_use: f.in_use(),
                    free: f.free(),
                    queued: self.queue.values().filter(|w| w.wants(&ent.feature)).count() as u64,
                    starts_at_ms: ent.starts_at_ms,
                    expires_at_ms: ent.expires_at_ms,
                    expired: self.now >= ent.expires_at_ms,
                    retired: f.retired,
                    pools,
                }
            })
            .collect()
    }
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

/// A generated client.
struct ClientState {
    id: ClientId,
    next_seq: u64,
    /// Recent requests and the first answers to them, for retries.
    sent: VecDeque<(Request, Option<Response>)>,
}

/// One seed's run: the generator, the state under test, its shadow and the model.
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
    base: BTreeMap<FeatureName, BaseFeature>,
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
            max_tombstones: *[16, 300, 2_000].choose(&mut rng).expect("not empty"),
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
        let (expected, disposition) = self.model.apply(&self.ctx, meta, &command, install_ok);
        self.compare_output(&command, &out, &expected, disposition);
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

    /// The state's answer and events must be the model's, up to the wording of refusals; a
    /// replay must repeat the first answer exactly.
    fn compare_output(
        &mut self,
        command: &Command,
        out: &Output,
        expected: &Output,
        disposition: Disposition,
    ) {
        let ctx = &self.ctx;
        let actual = blank_output(out);
        let notes = &self.model.rewalks;
        ensure_eq!(ctx, actual.response, expected.response, "answer to {command:?} {notes:?}");
        for (i, (a, e)) in actual.events.iter().zip(&expected.events).enumerate() {
            ensure_eq!(ctx, a, e, "event {i} of {:?} {notes:?}", out.events);
        }
        let (got, want) = (actual.events.len(), expected.events.len());
        ensure_eq!(
            ctx,
            got,
            want,
            "events {:?}, expected {:?} {notes:?}",
            out.events,
            expected.events
        );
        let Command::Request(req) = command else { return };
        let who = self.clients.iter().position(|c| c.id == req.client).expect("a generated client");
        let sent = &mut self.clients[who].sent;
        let original = sent.iter_mut().rev().find(|(r, _)| r.seq == req.seq);
        match (disposition, original) {
            (Disposition::New, Some((_, answer))) => *answer = Some(out.response.clone()),
            (Disposition::Replay, Some((_, Some(first)))) => {
                ensure_eq!(self.ctx, out.response, *first, "replay of seq {}", req.seq)
            }
            _ => {}
        }
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
        let kept =
            self.model.sessions.get(&alt.client).is_some_and(|s| s.replies.contains_key(&alt.seq));
        let client = self.clients.iter().find(|c| c.id == alt.client).expect("a generated client");
        let first = client.sent.iter().find(|(r, _)| r.seq == alt.seq).and_then(|(_, a)| a.clone());
        let (true, Some(reply)) = (kept, first) else { return };
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
        ensure_eq!(ctx, status, model.features_status(), "features_status");
        model.check_accounting(ctx);
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
            let shrunk = self.model.features.values().any(|f| f.in_use() > f.ent.tokens_total);
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

    /// Withdraws a queued request, often one that blocks its features, so that the queue
    /// must serve the requests it held back.
    fn gen_cancel(&mut self) -> Option<Command> {
        let blocking: Vec<(CheckoutId, ClientId)> = (self.model.queue.values())
            .filter(|w| self.model.is_blocking(w))
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
        let kept = self.model.sessions.get(&client.id).map(|s| &s.replies);
        let replayable: Vec<&Request> = (client.sent.iter())
            .map(|(r, _)| r)
            .filter(|r| kept.is_some_and(|k| k.contains_key(&r.seq)))
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
            0..8 => (self.model.features.get(&f))
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

/// A feature of the per-seed base configuration that re-installs vary.
struct BaseFeature {
    ent: Entitlement,
    pools: Vec<PoolSpec>,
}

/// The per-seed base configuration: features with a single default pool (one of them
/// with dates, one with rules) and two with SMP/MPP pools, one of them lending.
fn base_config(rng: &mut ChaCha8Rng) -> BTreeMap<FeatureName, BaseFeature> {
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
