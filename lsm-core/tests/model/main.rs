//! Seeded model test of the license state machine against an independent oracle.
//!
//! Every run draws a license configuration and a long command sequence from a seeded
//! ChaCha8 generator (`generator.rs`) and applies the commands to a [`State`]. Beside it
//! runs a reference model (`model.rs`, `pools.rs`) written from
//! `docs/design/licensing-model.md` and lsm-core's public API docs by brute force: plain
//! lists of live checkouts, waiters, token parcels, tombstones and sessions, with every
//! sum recomputed from them. It imports lsm-core's command, response and license types as
//! data only and calls none of its rules (no `Denial::is_transient`, no planning or cost
//! helpers), so a misreading shared by core and model cannot hide in shared code. The
//! model predicts the whole output of every command (the answer and every event, up to
//! the wording of refusals), and after every step `checks.rs` compares it with the state:
//!
//! - the output is the predicted one, so every grant, refusal, expiry, queue grant and drop
//!   is accounted for, ids and fencing tokens are exactly the next ones, and a queued id is
//!   granted at most once, from the queue;
//! - `check_invariants` holds, and `summary`, `list_checkouts`, `list_queue`,
//!   `features_status` and `checkout_status` equal the model's;
//! - independently of the planning rule, no grant passes a feature total, a pool cap, the
//!   license dates or a rule, with usage counted from the live checkouts (so not even after
//!   a new license shrank a feature below its use), the parcels of every pool add up to
//!   its live checkouts, the free tokens of a feature cover the idle reserves of its pools
//!   that do not lend, the `Granted` and `Ended` events add up to the change in pool
//!   usage, and a lease or wait that is due is gone;
//! - the queue keeps the documented promise: once tokens of a feature come free or a
//!   waiter that blocked it leaves, no waiter of it that fits is left waiting, unless a
//!   blocking waiter ahead of it competes, and none that can never fit is left at all;
//! - a retry with the same `(client, seq)` gets the first answer and changes nothing but the
//!   session's clock, a refused odd input changes nothing, and a second `State` fed the same
//!   commands (and now and then restored from its own snapshot) gives the same outputs and
//!   the same `state_hash`.
//!
//! A plain `cargo test -p lsm-core --test model` runs 20 seeds of 5,000 steps each
//! (100,000 steps) and fails if some kind of outcome never happened. Every failure names
//! its seed and step and lists the last commands. To replay one seed, run
//! `LSM_MODEL_SEED=<seed> cargo test -p lsm-core --test model`; `LSM_MODEL_STEPS=<n>`
//! sets the number of steps (a long run: `LSM_MODEL_STEPS=100000`, seed by seed).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{self, Debug, Write as _};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use lsm_core::{
    Command, Denial, End, Event, FeatureName, GroupName, HostName, Limits, Meta, Op, Output,
    PoolName, Request, Response, Rule, State, Subject, UserName,
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
/// Seeds, steps, first seed and global limit of the tight run.
const TIGHT_SEEDS: u64 = 4;
const TIGHT_STEPS: usize = 2_500;
const TIGHT_FIRST_SEED: u64 = 101;
const TIGHT_MAX_CHECKOUTS: u64 = 8;
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
    let total = run_seeds(&seeds, steps, None);
    if seeds.len() as u64 == DEFAULT_SEEDS && steps >= DEFAULT_STEPS {
        total.assert_everything_happened();
    }
}

/// The same runs under a global limit of a few dozen live checkouts, so step 4 of the
/// grant rule (`LimitReached { limit: "max_checkouts" }`) and a queue that stops at the
/// limit are reached; the plain run's limit is never hit.
#[test]
fn a_tight_global_checkout_limit_matches_the_model() {
    let steps = env_number("LSM_MODEL_STEPS").map_or(TIGHT_STEPS, |n| n as usize);
    let seeds: Vec<u64> = match env_number("LSM_MODEL_SEED") {
        Some(seed) => vec![seed],
        None => (TIGHT_FIRST_SEED..TIGHT_FIRST_SEED + TIGHT_SEEDS).collect(),
    };
    let total = run_seeds(&seeds, steps, Some(TIGHT_MAX_CHECKOUTS));
    if seeds.len() as u64 == TIGHT_SEEDS && steps >= TIGHT_STEPS {
        assert!(total.global_limit > 0, "the tight run never reached the global limit");
        assert!(total.queue_grants > 0, "the tight run never granted from the queue");
    }
}

/// Runs the seeds on all cores and sums their coverage; fails naming the failed seeds.
fn run_seeds(seeds: &[u64], steps: usize, max_checkouts: Option<u64>) -> Coverage {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(seeds.len());
    let next = AtomicUsize::new(0);
    let total = Mutex::new(Coverage::default());
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    // A failing seed has printed its message; the other seeds still run.
                    let run =
                        std::panic::catch_unwind(|| Run::new(seed, steps, max_checkouts).run());
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
    total
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

/// Test, seed, step and recent commands, for failure messages.
struct Ctx {
    test: &'static str,
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
             replay with LSM_MODEL_SEED={seed} LSM_MODEL_STEPS={steps} \
             cargo test -p lsm-core --test model {test}",
            test = self.test,
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

mod checks;
mod generator;
mod model;
mod pools;
mod queue;
mod rules;

use generator::{BaseFeature, ClientState, Kind, RULED, base_config};
use model::{Disposition, Model};

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
    global_limit: u64,
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
            global_limit,
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
        self.global_limit += global_limit;
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
    /// A run of `seed`; `max_checkouts` replaces the global limit (after the other limits
    /// are drawn, so the seed's commands do not change with it).
    fn new(seed: u64, steps: usize, max_checkouts: Option<u64>) -> Run {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut limits = Limits {
            max_checkouts_per_client: *[3, 10_000].choose(&mut rng).expect("not empty"),
            max_queued_per_client: *[1, 100].choose(&mut rng).expect("not empty"),
            max_queue_len: *[4, 10_000].choose(&mut rng).expect("not empty"),
            max_replies_per_session: *[2, 64].choose(&mut rng).expect("not empty"),
            session_idle_ttl_ms: *[10 * MINUTE, 24 * HOUR].choose(&mut rng).expect("not empty"),
            max_tombstones: *[16, 300, 2_000].choose(&mut rng).expect("not empty"),
            max_queue_bypass: *[1, 2, 4, 8].choose(&mut rng).expect("not empty"),
            ..Limits::default()
        };
        if let Some(max) = max_checkouts {
            limits.max_checkouts = max;
        }
        let test = match max_checkouts {
            None => "random_command_sequences_match_the_model",
            Some(_) => "a_tight_global_checkout_limit_matches_the_model",
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
            ctx: Ctx { test, seed, step: 0, recent: VecDeque::new() },
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
                Denial::LimitReached { limit, .. } => {
                    c.limit_reached += 1;
                    c.global_limit += u64::from(limit == "max_checkouts");
                }
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
            let shrunk = self.model.features.iter().any(|f| f.in_use() > f.ent.tokens_total);
            c.shrinks_below_use += u64::from(shrunk);
        }
    }
}
