//! A what-if capacity planner that links lsm-core directly, with no server and no Raft.
//!
//! Because the state machine is pure (time is an argument, answers are data), any tool
//! can replay a workload through it and get exactly what a live cluster would have
//! answered. This example generates one synthetic working day of solver jobs and replays
//! it against two proposed ways of splitting the same 1,024 tokens of `lsdyna`:
//!
//! - `shared`: one pool that every job draws on, first come first served;
//! - `per-class`: one pool per solver class, each with a reserve, a cap and lending of
//!   idle reserve to the others (down to a low-water mark), plus a small shared remainder.
//!
//! The day is generated from a fixed seed, so every run prints the same figures. Jobs
//! come in four classes (explicit crash, implicit, electromagnetics, thermal), each with
//! its own arrival rate over the day (busier in office hours), its mix of SMP and MPP runs,
//! core counts and run times. A token is one core (`CostRule::PerCore`), and every user
//! may hold at most 384 tokens at once (a `Max` rule for `EachUser`). Most jobs wait in
//! the queue when tokens are busy, polling to keep their place and giving up after a
//! while; some are interactive and take a refusal instead. Running jobs renew their lease
//! every 5 minutes; a few launchers die without releasing, and their lease runs out.
//!
//! The replay is a discrete-event simulation. Each job event becomes one command with a
//! strictly increasing log index and the event's time, and whenever the state's
//! `next_expiry` falls before the next event the driver applies a `Command::Tick` at that
//! time, exactly as a leader would. Grants from the queue are read from the events that
//! any command returns.
//!
//! For each layout it prints grants (direct and from the queue), refusals by reason,
//! queue waits (mean, median, 95th percentile, longest, per class), jobs that gave up,
//! leases reclaimed by expiry, and the peak and mean tokens in use per pool and per class.
//!
//! What to look for: reserves and caps keep the small classes' share safe from the big
//! crash runs, at the price of the big runs waiting longer and the largest ones being
//! refused outright (`PoolCap`, when a run asks for more than its pool's cap). The queue's
//! anti-starvation rule also shows: once a waiter has been passed over
//! `Limits::max_queue_bypass` times, it holds the whole feature (every pool of it) until
//! it is served, so later requests queue behind it or are refused with `QueueBlocked`.
//! `--max-queue-bypass` replays the same day with another value of that limit, and
//! `--seed` replays another day.
//!
//! ```text
//! cargo run --release -p lsm-core --example capacity_planner
//! cargo run --release -p lsm-core --example capacity_planner -- --max-queue-bypass 1000000
//! cargo run --release -p lsm-core --example capacity_planner -- --seed 7
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Instant;

use lsm_core::{
    CheckoutId, CheckoutRequest, ClientId, Command, CostRule, Demand, Denial, End, Entitlement,
    Event, FeatureName, Install, Item, Limits, Meta, Op, ParallelMode, Policy, PoolName, PoolSpec,
    Request, Response, Rule, State, Subject, Wait,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The default seed of the synthetic day.
const SEED: u64 = 2026;
/// Tokens of `lsdyna` in both layouts.
const TOKENS: u64 = 1_024;
/// Most tokens one user may hold at once.
const MAX_PER_USER: u64 = 384;
/// A minute and an hour, in ms.
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
/// The simulated day starts at midnight, 1 March 2026 (ms since the Unix epoch).
const DAY_START: u64 = 1_772_323_200_000;
/// Jobs arrive during this long; the replay then runs until every job is done.
const DAY: u64 = 24 * HOUR;
/// Lease of a running job, and how often its launcher renews it.
const LEASE_TTL: u64 = 15 * MINUTE;
const HEARTBEAT_EVERY: u64 = 5 * MINUTE;
/// How long a queued request stays queued without a poll, and how often jobs poll.
const POLL_TTL: u64 = 10 * MINUTE;
const POLL_EVERY: u64 = 3 * MINUTE;

/// A solver class: who runs it, how often, how big and for how long.
struct Class {
    name: &'static str,
    /// Jobs per day.
    jobs_per_day: f64,
    /// Share of MPP runs; the rest are SMP.
    mpp_share: f64,
    /// Core counts of SMP runs, drawn uniformly.
    smp_cores: &'static [u64],
    /// Core counts of MPP runs, drawn uniformly.
    mpp_cores: &'static [u64],
    /// Median run time; run times are log-normal with this median.
    median_run: u64,
    /// Reserve, cap and low-water mark of the class's pool in the `per-class` layout.
    reserve: u64,
    cap: u64,
    keep_idle: u64,
}

const CLASSES: [Class; 4] = [
    Class {
        name: "explicit",
        jobs_per_day: 140.0,
        mpp_share: 0.7,
        smp_cores: &[4, 8, 16],
        mpp_cores: &[16, 32, 32, 64, 64, 128, 256],
        median_run: 70 * MINUTE,
        reserve: 384,
        cap: 640,
        keep_idle: 64,
    },
    Class {
        name: "implicit",
        jobs_per_day: 60.0,
        mpp_share: 0.2,
        smp_cores: &[8, 16, 16, 32],
        mpp_cores: &[32, 64, 128],
        median_run: 150 * MINUTE,
        reserve: 192,
        cap: 384,
        keep_idle: 32,
    },
    Class {
        name: "em",
        jobs_per_day: 90.0,
        mpp_share: 0.25,
        smp_cores: &[4, 8, 16],
        mpp_cores: &[32, 64],
        median_run: 40 * MINUTE,
        reserve: 128,
        cap: 256,
        keep_idle: 32,
    },
    Class {
        name: "thermal",
        jobs_per_day: 240.0,
        mpp_share: 0.0,
        smp_cores: &[1, 2, 4, 4, 8],
        mpp_cores: &[],
        median_run: 20 * MINUTE,
        reserve: 64,
        cap: 128,
        keep_idle: 16,
    },
];

/// Users per class; user `u` of class `c` is `{class}{u}`.
const USERS_PER_CLASS: usize = 5;

/// One generated job.
struct Job {
    class: usize,
    user: usize,
    cores: u64,
    mode: ParallelMode,
    arrival: u64,
    run: u64,
    /// Waits in the queue when tokens are busy; otherwise takes the refusal.
    waits: bool,
    /// Gives up this long after arriving if still queued.
    patience: u64,
    /// The launcher dies at the end of the run without releasing.
    crashes: bool,
}

/// Generates the day: arrivals by thinning a Poisson process whose rate follows office
/// hours, then each job's size, run time and behaviour.
fn generate_day(seed: u64) -> Vec<Job> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Relative arrival rate by hour of day; the mean over the day is 1.
    let shape = |t: u64| -> f64 {
        let hour = (t / HOUR) as f64 + (t % HOUR) as f64 / HOUR as f64;
        if (8.0..18.0).contains(&hour) { 1.9 } else { 0.4 }
    };
    let peak = 1.9;
    let mut jobs = Vec::new();
    for (c, class) in CLASSES.iter().enumerate() {
        let rate_at_peak = class.jobs_per_day * peak / DAY as f64;
        let mut t = 0.0f64;
        loop {
            t += -(1.0 - rng.random::<f64>()).ln() / rate_at_peak;
            if t >= DAY as f64 {
                break;
            }
            if rng.random::<f64>() * peak > shape(t as u64) {
                continue;
            }
            let mpp = rng.random_bool(class.mpp_share);
            let (mode, sizes) = if mpp {
                (ParallelMode::Mpp, class.mpp_cores)
            } else {
                (ParallelMode::Smp, class.smp_cores)
            };
            let mut cores = sizes[rng.random_range(0..sizes.len())];
            if mpp && c == 0 && rng.random_bool(0.01) {
                // Now and then a full-vehicle crash run asks for far more than usual.
                cores = 768;
            }
            // Log-normal run time around the class median, between 5 minutes and 12 hours.
            let normal = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt()
                * (std::f64::consts::TAU * rng.random::<f64>()).cos();
            let run = (class.median_run as f64 * (0.6 * normal).exp()) as u64;
            jobs.push(Job {
                class: c,
                user: rng.random_range(0..USERS_PER_CLASS),
                cores,
                mode,
                arrival: t as u64,
                run: run.clamp(5 * MINUTE, 12 * HOUR),
                waits: rng.random_bool(0.85),
                patience: rng.random_range(2 * HOUR..6 * HOUR),
                crashes: rng.random_bool(0.02),
            });
        }
    }
    jobs.sort_by_key(|job| job.arrival);
    jobs
}

/// A proposed split of the tokens.
struct Layout {
    name: &'static str,
    /// Pools per feature (empty: the single `default` pool).
    pools: Vec<PoolSpec>,
    /// Whether a job names its class's pool.
    pool_per_class: bool,
}

fn layouts() -> Vec<Layout> {
    let per_class = CLASSES
        .iter()
        .map(|class| PoolSpec {
            name: name(class.name),
            reserve: class.reserve,
            cap: Some(class.cap),
            lend: true,
            keep_idle: class.keep_idle,
            modes: Vec::new(),
        })
        .collect();
    vec![
        Layout { name: "shared", pools: Vec::new(), pool_per_class: false },
        Layout { name: "per-class", pools: per_class, pool_per_class: true },
    ]
}

/// Where a job is in its life. An event that does not fit the job's phase is stale and
/// is ignored (for example a poll of a job the queue has since granted).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotArrived,
    /// Waiting in the queue under this id.
    Queued(CheckoutId),
    /// Holding its tokens under this id.
    Running(CheckoutId),
    /// The launcher died while running; the lease is left to expire.
    Crashed,
    Done,
}

/// What a scheduled job event does. The agenda runs events in time order, and events due
/// at the same time in the order they were scheduled.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Arrive,
    Poll,
    GiveUp,
    Heartbeat,
    Finish,
}

/// What happened to the jobs of one layout.
#[derive(Default)]
struct Report {
    commands: u64,
    ticks: u64,
    direct: [u64; 4],
    from_queue: [u64; 4],
    denied: BTreeMap<String, [u64; 4]>,
    queued: [u64; 4],
    gave_up: [u64; 4],
    /// Queue waits of jobs granted from the queue, per class, in ms.
    waits: [Vec<u64>; 4],
    expired_leases: u64,
    /// Peak tokens in use per pool, and their time integral (token-ms).
    pool_peak: BTreeMap<PoolName, u64>,
    pool_area: BTreeMap<PoolName, u128>,
    /// Tokens held per class, its peak and integral.
    class_held: [u64; 4],
    class_peak: [u64; 4],
    class_area: [u128; 4],
    end: u64,
}

/// Replays the day against one layout.
struct Sim<'a> {
    jobs: &'a [Job],
    layout: &'a Layout,
    state: State,
    index: u64,
    now: u64,
    pool_in_use: BTreeMap<PoolName, u64>,
    phase: Vec<Phase>,
    seq: Vec<u64>,
    clients: Vec<ClientId>,
    by_client: BTreeMap<ClientId, usize>,
    by_id: BTreeMap<CheckoutId, usize>,
    agenda: BinaryHeap<Reverse<(u64, u64, Kind, usize)>>,
    scheduled: u64,
    report: Report,
    feature: FeatureName,
}

impl<'a> Sim<'a> {
    fn new(jobs: &'a [Job], layout: &'a Layout, limits: Limits) -> Sim<'a> {
        let mut sim = Sim {
            jobs,
            layout,
            state: State::new(limits),
            index: 0,
            now: 0,
            pool_in_use: BTreeMap::new(),
            phase: vec![Phase::NotArrived; jobs.len()],
            seq: vec![0; jobs.len()],
            clients: Vec::new(),
            by_client: BTreeMap::new(),
            by_id: BTreeMap::new(),
            agenda: BinaryHeap::new(),
            scheduled: 0,
            report: Report::default(),
            feature: name("lsdyna"),
        };
        for (j, job) in jobs.iter().enumerate() {
            let client: ClientId = name(&format!("job-{j:05}"));
            sim.clients.push(client.clone());
            sim.by_client.insert(client, j);
            sim.schedule(job.arrival, Kind::Arrive, j);
        }
        sim
    }

    fn schedule(&mut self, at: u64, kind: Kind, job: usize) {
        self.scheduled += 1;
        self.agenda.push(Reverse((at, self.scheduled, kind, job)));
    }

    /// Installs the layout, then runs every event and the ticks between them.
    fn run(mut self) -> Report {
        self.install();
        while let Some(Reverse((at, _, kind, job))) = self.agenda.pop() {
            while let Some(due) = self.state.next_expiry().map(|t| t - DAY_START)
                && due <= at
            {
                self.apply(due, Command::Tick);
                self.report.ticks += 1;
            }
            self.event(at, kind, job);
        }
        self.report.end = self.now;
        self.report
    }

    fn install(&mut self) {
        let mut policy = Policy {
            rules: vec![Rule::Max {
                feature: self.feature.clone(),
                subject: Subject::EachUser,
                tokens: MAX_PER_USER,
            }],
            ..Policy::default()
        };
        if !self.layout.pools.is_empty() {
            policy.pools.insert(self.feature.clone(), self.layout.pools.clone());
        }
        let install = Install {
            entitlements: vec![Entitlement {
                feature: self.feature.clone(),
                license: name("lsdyna-2026"),
                tokens_total: TOKENS,
                starts_at_ms: 0,
                expires_at_ms: u64::MAX,
                cost: CostRule::PerCore { base_tokens: 0, tokens_per_core: 1, cores_included: 0 },
                max_borrow_ms: 0,
            }],
            policy,
        };
        let admin = name("planner");
        let command =
            Command::Request(Request { client: admin, seq: 1, ack: 1, op: Op::Install(install) });
        let response = self.apply(0, command);
        assert!(matches!(response, Response::Installed { features: 1 }), "{response:?}");
    }

    /// Handles one job event.
    fn event(&mut self, at: u64, kind: Kind, j: usize) {
        let job = &self.jobs[j];
        match (kind, self.phase[j]) {
            (Kind::Arrive, Phase::NotArrived) => {
                let class = &CLASSES[job.class];
                let request = CheckoutRequest {
                    items: vec![Item {
                        feature: self.feature.clone(),
                        demand: Demand::Cores { cores: job.cores, mode: job.mode },
                        pool: self.layout.pool_per_class.then(|| name(class.name)),
                    }],
                    user: name(&format!("{}{}", class.name, job.user)),
                    host: name(&format!("node-{:03}", j % 200)),
                    job: Some(name(&format!("{}.{j}", class.name))),
                    lease_ttl_ms: LEASE_TTL,
                    borrow_until_ms: None,
                    wait: job.waits.then_some(Wait { priority: 0, poll_ttl_ms: POLL_TTL }),
                };
                match self.request(at, j, Op::Checkout(request)) {
                    Response::Granted(grant) => {
                        self.report.direct[job.class] += 1;
                        self.start(at, j, grant.id);
                    }
                    Response::Queued(queued) => {
                        self.report.queued[job.class] += 1;
                        self.phase[j] = Phase::Queued(queued.id);
                        self.by_id.insert(queued.id, j);
                        self.schedule(at + POLL_EVERY, Kind::Poll, j);
                        self.schedule(job.arrival + job.patience, Kind::GiveUp, j);
                    }
                    Response::Denied(denial) => {
                        self.deny(j, &denial);
                        self.phase[j] = Phase::Done;
                    }
                    other => panic!("unexpected answer to a checkout: {other:?}"),
                }
            }
            (Kind::Poll, Phase::Queued(id)) => match self.request(at, j, Op::Heartbeat(id)) {
                Response::Queued(_) => self.schedule(at + POLL_EVERY, Kind::Poll, j),
                // The queue drained into this job during this very command.
                Response::Renewed(_) => {}
                other => panic!("unexpected answer to a poll: {other:?}"),
            },
            (Kind::GiveUp, Phase::Queued(id)) => {
                let response = self.request(at, j, Op::Release(id));
                assert!(matches!(response, Response::Cancelled { .. }), "{response:?}");
                self.report.gave_up[job.class] += 1;
                self.phase[j] = Phase::Done;
            }
            (Kind::Heartbeat, Phase::Running(id)) => {
                let response = self.request(at, j, Op::Heartbeat(id));
                assert!(matches!(response, Response::Renewed(_)), "{response:?}");
                self.schedule(at + HEARTBEAT_EVERY, Kind::Heartbeat, j);
            }
            (Kind::Finish, Phase::Running(id)) => {
                if job.crashes {
                    // The launcher is gone: no release, no more heartbeats. The lease
                    // runs out and a tick reclaims the tokens.
                    self.phase[j] = Phase::Crashed;
                } else {
                    let response = self.request(at, j, Op::Release(id));
                    assert!(matches!(response, Response::Released { .. }), "{response:?}");
                    self.phase[j] = Phase::Done;
                }
            }
            // A stale event: the job has moved on (granted, given up or done).
            _ => {}
        }
    }

    /// A job's tokens were granted at `at`.
    fn start(&mut self, at: u64, j: usize, id: CheckoutId) {
        let job = &self.jobs[j];
        self.phase[j] = Phase::Running(id);
        self.by_id.insert(id, j);
        self.schedule(at + HEARTBEAT_EVERY, Kind::Heartbeat, j);
        self.schedule(at + job.run, Kind::Finish, j);
    }

    fn deny(&mut self, j: usize, denial: &Denial) {
        let debug = format!("{denial:?}");
        let reason = debug.split([' ', '(', '{']).next().unwrap_or("?").to_string();
        self.report.denied.entry(reason).or_default()[self.jobs[j].class] += 1;
    }

    /// Sends a request of job `j`'s launcher.
    fn request(&mut self, at: u64, j: usize, op: Op) -> Response {
        self.seq[j] += 1;
        let seq = self.seq[j];
        let client = self.clients[j].clone();
        self.apply(at, Command::Request(Request { client, seq, ack: seq, op }))
    }

    /// Applies a command at `at` (ms since the start of the day) and follows its events.
    fn apply(&mut self, at: u64, command: Command) -> Response {
        self.advance(at);
        self.index += 1;
        self.report.commands += 1;
        let meta = Meta { index: self.index, now_ms: DAY_START + at };
        let output = self.state.apply(meta, command).expect("the state machine never fails");
        for event in output.events {
            match event {
                Event::Granted { id, client, items, from_queue, .. } => {
                    let j = self.by_client[&client];
                    let class = self.jobs[j].class;
                    self.report.class_held[class] += items[0].tokens;
                    if from_queue {
                        self.report.from_queue[class] += 1;
                        self.report.waits[class].push(at - self.jobs[j].arrival);
                        self.start(at, j, id);
                    }
                }
                Event::Ended { id, end, items } => {
                    let j = self.by_id[&id];
                    self.report.class_held[self.jobs[j].class] -= items[0].tokens;
                    if end == End::Expired {
                        self.report.expired_leases += 1;
                        self.phase[j] = Phase::Done;
                    }
                }
                Event::Dequeued { id, end: End::QueueDenied(denial) } => {
                    let j = self.by_id[&id];
                    self.deny(j, &denial);
                    self.phase[j] = Phase::Done;
                }
                Event::Dequeued { end: End::QueueExpired, .. } => {
                    panic!("a queued job polls in time, so its wait never expires")
                }
                _ => {}
            }
        }
        self.sample();
        output.response
    }

    /// Moves the clock to `at`, adding the usage since the last move to the integrals.
    fn advance(&mut self, at: u64) {
        let span = u128::from(at - self.now);
        for (pool, &used) in &self.pool_in_use {
            *self.report.pool_area.entry(pool.clone()).or_default() += span * u128::from(used);
        }
        for (class, &held) in self.report.class_held.iter().enumerate() {
            self.report.class_area[class] += span * u128::from(held);
        }
        self.now = at;
    }

    /// Reads the usage after a command, for the peaks and the next integral step.
    fn sample(&mut self) {
        for (peak, &held) in self.report.class_peak.iter_mut().zip(&self.report.class_held) {
            *peak = (*peak).max(held);
        }
        let statuses = self.state.features_status();
        let in_use: u64 = statuses.iter().map(|f| f.in_use).sum();
        debug_assert_eq!(in_use, self.report.class_held.iter().sum::<u64>());
        for feature in statuses {
            for pool in feature.pools {
                let peak = self.report.pool_peak.entry(pool.pool.clone()).or_default();
                *peak = (*peak).max(pool.in_use);
                self.pool_in_use.insert(pool.pool, pool.in_use);
            }
        }
    }
}

/// Command-line options.
struct Options {
    seed: u64,
    max_queue_bypass: u32,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options { seed: SEED, max_queue_bypass: Limits::default().max_queue_bypass };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v:?}: {e}"));
        match flag.as_str() {
            "--seed" => options.seed = number(&value)?,
            "--max-queue-bypass" => {
                options.max_queue_bypass =
                    u32::try_from(number(&value)?).map_err(|e| e.to_string())?
            }
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    Ok(options)
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("capacity_planner: {message}");
            eprintln!("usage: capacity_planner [--seed N] [--max-queue-bypass N]");
            std::process::exit(2);
        }
    };
    let limits = Limits { max_queue_bypass: options.max_queue_bypass, ..Limits::default() };
    let started = Instant::now();
    let jobs = generate_day(options.seed);
    let offered: f64 = jobs.iter().map(|j| (j.cores * j.run) as f64).sum::<f64>() / HOUR as f64;
    println!(
        "lsm-core capacity planner: one synthetic day, seed {}, max_queue_bypass {}",
        options.seed, limits.max_queue_bypass
    );
    println!(
        "{} jobs; {TOKENS} tokens of lsdyna (1 token per core); at most {MAX_PER_USER} per user",
        jobs.len()
    );
    println!(
        "offered load {offered:.0} token-hours against {} available ({:.0}%)",
        TOKENS * 24,
        100.0 * offered / (TOKENS * 24) as f64
    );
    for (c, class) in CLASSES.iter().enumerate() {
        let mine: Vec<&Job> = jobs.iter().filter(|j| j.class == c).collect();
        let hours: f64 = mine.iter().map(|j| (j.cores * j.run) as f64).sum::<f64>() / HOUR as f64;
        let mpp = mine.iter().filter(|j| j.mode == ParallelMode::Mpp).count();
        println!(
            "  {:<9} {:>4} jobs ({mpp:>3} MPP), {hours:>6.0} token-hours; per-class pool: reserve {}, cap {}, keep idle {}",
            class.name,
            mine.len(),
            class.reserve,
            class.cap,
            class.keep_idle
        );
    }
    for layout in layouts() {
        let report = Sim::new(&jobs, &layout, limits.clone()).run();
        print_report(&layout, &jobs, &report);
    }
    println!("\n(replayed in {:.2} s)", started.elapsed().as_secs_f64());
}

fn print_report(layout: &Layout, jobs: &[Job], r: &Report) {
    println!("\n== layout {} ==", layout.name);
    println!(
        "{} commands ({} ticks), replay ends {:.1} h after midnight",
        r.commands,
        r.ticks,
        r.end as f64 / HOUR as f64
    );
    let header: Vec<&str> = CLASSES.iter().map(|c| c.name).collect();
    println!(
        "{:<26}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "", header[0], header[1], header[2], header[3], "all"
    );
    let row = |label: &str, values: [u64; 4]| {
        let all: u64 = values.iter().sum();
        println!(
            "{label:<26}{:>10}{:>10}{:>10}{:>10}{all:>10}",
            values[0], values[1], values[2], values[3]
        );
    };
    let mut arrived = [0u64; 4];
    for job in jobs {
        arrived[job.class] += 1;
    }
    row("jobs", arrived);
    row("granted at once", r.direct);
    row("queued", r.queued);
    row("granted from the queue", r.from_queue);
    row("gave up waiting", r.gave_up);
    for (reason, counts) in &r.denied {
        row(&format!("denied: {reason}"), *counts);
    }
    let minutes = |ms: u64| ms as f64 / MINUTE as f64;
    let wait_row = |label: &str, f: &dyn Fn(&[u64]) -> String| {
        let mut all: Vec<u64> = r.waits.iter().flatten().copied().collect();
        all.sort_unstable();
        let cells: Vec<String> = (0..4)
            .map(|c| {
                let mut w = r.waits[c].clone();
                w.sort_unstable();
                f(&w)
            })
            .collect();
        println!(
            "{label:<26}{:>10}{:>10}{:>10}{:>10}{:>10}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            f(&all)
        );
    };
    let stat = |pick: fn(&[u64]) -> u64| {
        move |w: &[u64]| {
            if w.is_empty() { "-".to_string() } else { format!("{:.0}", minutes(pick(w))) }
        }
    };
    wait_row("queue wait mean (min)", &|w: &[u64]| {
        if w.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0}", minutes(w.iter().sum::<u64>() / w.len() as u64))
        }
    });
    wait_row("queue wait median (min)", &stat(|w| w[w.len() / 2]));
    wait_row("queue wait p95 (min)", &stat(|w| w[(w.len() * 95).div_ceil(100) - 1]));
    wait_row("queue wait max (min)", &stat(|w| w[w.len() - 1]));
    let span = r.end.max(1) as f64;
    let mean_held = |area: u128| area as f64 / span;
    println!("tokens held by class:");
    println!(
        "{:<26}{:>10}{:>10}{:>10}{:>10}",
        "  peak", r.class_peak[0], r.class_peak[1], r.class_peak[2], r.class_peak[3]
    );
    println!(
        "{:<26}{:>10.0}{:>10.0}{:>10.0}{:>10.0}",
        "  mean",
        mean_held(r.class_area[0]),
        mean_held(r.class_area[1]),
        mean_held(r.class_area[2]),
        mean_held(r.class_area[3])
    );
    println!("tokens in use by pool (peak, mean):");
    for (pool, peak) in &r.pool_peak {
        let mean = mean_held(r.pool_area.get(pool).copied().unwrap_or(0));
        println!("  {:<24}{peak:>10}{mean:>10.0}", pool.as_str());
    }
    println!("leases reclaimed by expiry (launcher died): {}", r.expired_leases);
}

/// A well-known valid name.
fn name<T: std::str::FromStr<Err = lsm_core::NameError>>(s: &str) -> T {
    s.parse().expect("valid name")
}
