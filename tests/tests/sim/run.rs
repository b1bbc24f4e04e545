//! One simulated run, from its seed: build the world, step it, inject the faults, check.
//!
//! Timeline (simulated time): the operator host bootstraps the cluster and installs the
//! license; the clients start; the fault schedule runs until the heal, when every fault is
//! undone and every crashed node restarts; the operator then checks that a fresh request
//! is answered within [`workload::LIVENESS_BOUND`]; the clients stop starting operations
//! at the end of the work period and give back what they hold; after a quiet period longer
//! than a lease the operator reads which checkouts are still live (none should be), and
//! the driver checks that the nodes agree byte for byte.
//!
//! Everything random comes from the seed: turmoil's network (latencies, losses) and each
//! host's tokio runtime, openraft's election timeouts (`lsm_raft::runtime`), the server's
//! one-shot client ids, the workload, the clients' backoff jitter and the fault schedule.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use lsm_check::history::{Entry, Event, LiveCheckout};
use lsm_check::{Capacity, Checks, Liveness};

use crate::checks;
use crate::clock::{EPOCH_MS, SimTime};
use crate::faults::{self, Fault, Links, Scheduled, link};
use crate::history::History;
use crate::linearizability;
use crate::workload::{self, Control, Mix, Plan};
use crate::world::{self, NODES, NodeCtl};

/// What kind of run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The full workload under every kind of fault.
    Full,
    /// A small run whose history is checked for linearizability.
    Linearizable,
}

/// How to run one seed.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The seed.
    pub seed: u64,
    /// What kind of run.
    pub kind: Kind,
    /// Nodes stamp commands with their wall clock as it reads, not paced.
    pub unpaced: bool,
    /// A new term starts from the leader's wall clock however far ahead it is
    /// (`raft.max_term_start_step_ms` of [`UNBOUNDED_STEP_MS`]).
    pub unbounded: bool,
}

/// The term-start step of [`Options::unbounded`]: a thousand years.
pub const UNBOUNDED_STEP_MS: u64 = 1_000 * 365 * faults::DAY_MS;

/// What a run produced.
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// A hash of everything observable: the history, the violations and the final state.
    pub digest: u64,
    /// The history.
    pub entries: Vec<Entry>,
    /// Everything the checks found.
    pub violations: Vec<String>,
    /// Simulated time the run took.
    pub sim_ms: u64,
    /// One line about the run: its shape and what happened.
    pub summary: String,
}

/// Simulated time per step. Message delivery happens at step boundaries; timers inside a
/// host fire at their exact times.
const TICK_MS: u64 = 2;

/// Steps between two rounds of the cheap checks.
const CHECK_EVERY: u64 = 20;

/// How long to wait for the nodes to agree at the end.
const CONVERGE: Duration = Duration::from_secs(10);

/// Runs one seed.
pub fn run(options: Options) -> Report {
    let seed = options.seed;
    lsm_raft::runtime::seed_thread_rng(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let full = options.kind == Kind::Full;
    let lease_ttl_ms =
        if full { [2_000, 3_000, 4_000, 5_000][rng.random_range(0..4)] } else { 60_000 };
    let clients = if full { rng.random_range(3..=5) } else { 3 };
    let work_ms: u64 = if full { 8_000 } else { 4_000 };
    let heal_ms = work_ms * 3 / 4;
    let fault_count = if full { rng.random_range(2..=10) } else { rng.random_range(0..=3) };
    let snapshot_after = [20, 100, 20_000][rng.random_range(0..3)];
    let max_latency_ms = rng.random_range(2..=20);
    let skews: Vec<i64> = (0..NODES.len()).map(|_| rng.random_range(-3_000..=3_000)).collect();
    let client_names: Vec<String> = (1..=clients).map(|i| format!("c{i}")).collect();
    let drift_ppm =
        if options.unpaced { 0 } else { lsm_raft::node::Timing::default().max_clock_drift_ppm };
    let mut schedule =
        faults::schedule(&mut rng, fault_count, heal_ms, &client_names, lease_ttl_ms);
    if full {
        schedule.extend(faults::day_jumps(&mut rng, heal_ms));
        schedule.sort_by_key(|s| s.at_ms);
    }
    let step_ms = if options.unbounded {
        UNBOUNDED_STEP_MS
    } else {
        lsm_raft::node::Timing::default().max_term_start_step_ms
    };

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(std::time::UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .tick_duration(Duration::from_millis(TICK_MS))
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(max_latency_ms))
        .tcp_capacity(4_096)
        .build();

    let time = SimTime::default();
    let history = History::new(time.clone());
    let control = Control::new(history.clone());
    let nodes: Vec<Arc<NodeCtl>> = NODES
        .iter()
        .zip(&skews)
        .map(|((id, name), skew)| NodeCtl::new(*id, name, time.clone(), *skew))
        .collect();
    for ctl in &nodes {
        let config = world::node_config(ctl.id, snapshot_after, lease_ttl_ms, drift_ppm, step_ms);
        let ctl = ctl.clone();
        sim.host(ctl.name, move || world::node_main(ctl.clone(), config.clone()));
    }
    sim.client("operator", workload::operator_main(seed, control.clone()));
    let mix = if full { Mix::Full } else { Mix::Linearizable(rng.random_range(4..=8)) };
    for (i, name) in client_names.iter().enumerate() {
        let plan = Plan {
            name: name.clone(),
            seed: seed.wrapping_mul(31).wrapping_add(i as u64),
            lease_ttl_ms,
            mix,
        };
        sim.client(name.as_str(), workload::client_main(plan, control.clone()));
    }

    let mut driver = Driver {
        nodes,
        history: history.clone(),
        links: Links::new(),
        undo: Vec::new(),
        down: BTreeMap::new(),
        armed: BTreeMap::new(),
        max_latency_ms,
        shown: BTreeMap::new(),
        faults_applied: 0,
    };
    let (caps, totals) = world::caps();
    let quiet_ms = if full { lease_ttl_ms + 1_000 } else { 0 };
    let mut ready_at: Option<u64> = None;
    let mut pending: Vec<Scheduled> = schedule;
    let mut healed = false;
    let mut clients_done_at: Option<u64> = None;
    let mut step = 0u64;
    loop {
        step += 1;
        let finished = match sim.step() {
            Ok(finished) => finished,
            Err(error) => {
                history.violation(format!("a host's software failed: {error}"));
                break;
            }
        };
        time.set(sim.elapsed());
        let now = time.ms();
        driver.reap_crashes(&mut sim);
        if ready_at.is_none() && control.ready.load(Ordering::SeqCst) {
            ready_at = Some(now);
        }
        if let Some(ready) = ready_at {
            while pending.first().is_some_and(|s| ready + s.at_ms <= now) {
                let scheduled = pending.remove(0);
                driver.apply(&mut sim, scheduled.fault, now, ready + heal_ms);
            }
            driver.undo_due(&mut sim, now);
            if !healed && now >= ready + heal_ms {
                healed = true;
                driver.heal(&mut sim);
                let what = "every fault; every crashed node restarts".into();
                history.record(Event::Heal { what });
                control.healed_at_ms.store(now.max(1), Ordering::SeqCst);
            }
            if now >= ready + work_ms && !control.stop.swap(true, Ordering::SeqCst) {
                history.record(Event::Note { what: "clients stop".into() });
            }
        }
        if step.is_multiple_of(CHECK_EVERY) {
            driver.check();
        }
        let clients_left = sim_clients_running(&mut sim, &client_names);
        if clients_left == 0 && clients_done_at.is_none() {
            clients_done_at = Some(now);
        }
        if let Some(done) = clients_done_at
            && now >= done + quiet_ms
            && !control.final_go.swap(true, Ordering::SeqCst)
        {
            history.record(Event::Note { what: "final reads".into() });
        }
        if finished {
            break;
        }
        if now > 400_000 {
            history.violation("the run did not finish within 400 s of simulated time");
            break;
        }
    }
    driver.check();

    // Liveness after the heal is checked on the history; the heal must have come.
    if !healed {
        history.violation("liveness: the faults were never healed");
    }
    // No checkout outlives its lease once everyone stopped.
    if full {
        match control.final_live.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(Ok(live)) if live.is_empty() => {}
            Some(Ok(live)) => history.violation(format!(
                "expiry: {} checkouts still live more than a lease after the clients stopped: {:?}",
                live.len(),
                live.iter()
                    .map(|c| (c.id.0, c.client.to_string(), c.lease_expires_at_ms))
                    .collect::<Vec<_>>()
            )),
            Some(Err(why)) => history.violation(format!("the final read failed: {why}")),
            None => history.violation("the final read never ran"),
        }
    }
    let state_hash = driver.converge(&mut sim, &time);
    let forward_ms = 3_000 + faults::max_forward_jump_ms(lease_ttl_ms);
    // The promise is the default step's, also when the run lets the step go unbounded.
    let promised_step_ms = lsm_raft::node::Timing::default().max_term_start_step_ms;
    driver.check_cluster_time(&time, forward_ms, promised_step_ms, drift_ppm);

    let entries = history.entries();
    // The server's lease outlives the client's deadline by the safety margin, less what
    // replicated time may gain on real time over one lease: the pace's drift, or,
    // unpaced, everything the leader's clock may jump forwards.
    let margin = lsm_client::lease::safety_margin(Duration::from_millis(lease_ttl_ms));
    let gain = if options.unpaced {
        faults::max_forward_jump_ms(lease_ttl_ms)
    } else {
        (lease_ttl_ms * drift_ppm).div_ceil(1_000_000)
    };
    let slack = (margin.as_millis() as u64).saturating_sub(gain);
    let checks = Checks {
        capacity: Capacity { caps: caps.clone(), totals: totals.clone() },
        release_window: Some(Duration::from_millis(slack)),
        // The clients may all hold their checkouts from before the heal to the end: the
        // probe's answer is the evidence.
        liveness: Some(Liveness { bound: workload::LIVENESS_BOUND, progress_after_heal: false }),
    };
    for violation in lsm_check::Report::check(&entries, &checks).violations {
        history.found(violation.to_string());
    }
    for problem in checks::unexpected_refusals(&entries) {
        history.violation(problem);
    }
    if !full {
        let ops = linearizability::operations(&entries);
        let pools: BTreeMap<String, u64> = caps
            .iter()
            .filter(|((feature, _), _)| feature == "abaqus")
            .map(|((_, pool), cap)| (pool.clone(), *cap))
            .collect();
        if let Err(why) = linearizability::check(&ops, &pools, totals["abaqus"]) {
            history.violation(format!("linearizability: {why}"));
        }
    }
    let violations = history.violations();
    let mut hasher = DefaultHasher::new();
    entries.hash(&mut hasher);
    violations.hash(&mut hasher);
    state_hash.hash(&mut hasher);
    let grants = entries.iter().filter(|e| matches!(e.event, Event::Granted { .. })).count();
    let summary = format!(
        "ttl {lease_ttl_ms} ms, {clients} clients, {} faults ({} applied), snapshots every {snapshot_after}, {} events, {grants} grants, {} ms simulated",
        fault_count,
        driver.faults_applied,
        entries.len(),
        time.ms()
    );
    drop(sim);
    Report { seed, digest: hasher.finish(), entries, violations, sim_ms: time.ms(), summary }
}

/// How many of `names` still run.
fn sim_clients_running(sim: &mut turmoil::Sim<'_>, names: &[String]) -> usize {
    names.iter().filter(|name| sim.is_host_running(name.as_str())).count()
}

/// Undoing a fault.
enum Undo {
    Repair(String, String),
    RepairOneWay(String, String),
    Release(String, String),
    Latency(String, String),
    Loss(String, String),
    Restart(usize),
}

/// The driver's fault state and the checks that run during the run.
struct Driver {
    nodes: Vec<Arc<NodeCtl>>,
    history: History,
    links: Links,
    undo: Vec<(u64, Undo)>,
    /// Down nodes, by index.
    down: BTreeMap<usize, ()>,
    /// Nodes armed to crash mid-step, by index: the step by which to crash anyway.
    armed: BTreeMap<usize, u64>,
    max_latency_ms: u64,
    /// The live checkouts last recorded for each node, by id.
    shown: BTreeMap<u64, Vec<LiveCheckout>>,
    faults_applied: usize,
}

impl Driver {
    /// The node that leads now (the highest term among those that say so).
    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, ctl)| ctl.node().map(|node| (i, node.status())))
            .filter(|(_, status)| status.role == "Leader")
            .max_by_key(|(_, status)| status.term)
            .map(|(i, _)| i)
    }

    /// Jumps node `node`'s clock by `delta_ms`; `who` starts the history's line.
    fn jump(&self, node: usize, delta_ms: i64, who: &str) {
        let ctl = &self.nodes[node];
        ctl.clock.jump(delta_ms);
        self.fault(format!(
            "{who}{}'s clock jumps {delta_ms:+} ms (skew now {:+} ms)",
            ctl.name,
            ctl.clock.skew_ms()
        ));
    }

    fn fault(&self, what: String) {
        crate::net::trace(|| format!("fault {what}"));
        self.history.record(Event::Fault { what });
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, fault: Fault, now: u64, heal_at: u64) {
        let until = |ms: u64| (now + ms).min(heal_at);
        match fault {
            Fault::Crash { node, at_write, down_ms } => {
                if self.down.contains_key(&node) || self.armed.contains_key(&node) {
                    return;
                }
                let name = self.nodes[node].name;
                match at_write {
                    Some(k) => {
                        self.nodes[node].arm_crash(k);
                        self.armed.insert(node, now + 300);
                        self.fault(format!("{name} will crash at its storage write #{k}"));
                    }
                    None => self.crash_now(sim, node),
                }
                self.undo.push((until(down_ms).max(now + 1), Undo::Restart(node)));
            }
            Fault::Partition { a, b, ms } => {
                if !self.links.insert(link(&a, &b)) {
                    return;
                }
                sim.partition(a.as_str(), b.as_str());
                self.fault(format!("partition {a} <-> {b} for {ms} ms"));
                self.undo.push((until(ms), Undo::Repair(a, b)));
            }
            Fault::OneWay { from, to, ms } => {
                if !self.links.insert(link(&from, &to)) {
                    return;
                }
                sim.partition_oneway(from.as_str(), to.as_str());
                self.fault(format!("partition {from} -> {to} (one way) for {ms} ms"));
                self.undo.push((until(ms), Undo::RepairOneWay(from, to)));
            }
            Fault::Hold { a, b, ms } => {
                if !self.links.insert(link(&a, &b)) {
                    return;
                }
                sim.hold(a.as_str(), b.as_str());
                self.fault(format!("hold {a} <-> {b} for {ms} ms"));
                self.undo.push((until(ms), Undo::Release(a, b)));
            }
            Fault::Slow { a, b, max_ms, ms } => {
                if !self.links.insert(link(&a, &b)) {
                    return;
                }
                sim.set_link_max_message_latency(
                    a.as_str(),
                    b.as_str(),
                    Duration::from_millis(max_ms),
                );
                self.fault(format!("slow {a} <-> {b} (up to {max_ms} ms) for {ms} ms"));
                self.undo.push((until(ms), Undo::Latency(a, b)));
            }
            Fault::Lossy { a, b, percent, ms } => {
                if !self.links.insert(link(&a, &b)) {
                    return;
                }
                sim.set_link_fail_rate(a.as_str(), b.as_str(), f64::from(percent) / 100.0);
                self.fault(format!("lossy {a} <-> {b} ({percent}%) for {ms} ms"));
                self.undo.push((until(ms), Undo::Loss(a, b)));
            }
            Fault::CutFromLeader { client, ms } => {
                let Some(leader) = self.leader() else { return };
                let name = self.nodes[leader].name.to_string();
                if !self.links.insert(link(&client, &name)) {
                    return;
                }
                sim.partition(client.as_str(), name.as_str());
                self.fault(format!("{client} cut off from the leader {name} for {ms} ms"));
                self.undo.push((until(ms), Undo::Repair(client, name)));
            }
            Fault::NodeJump { node, delta_ms } => self.jump(node, delta_ms, ""),
            Fault::Jump { delta_ms } => {
                let Some(leader) = self.leader() else { return };
                self.jump(leader, delta_ms, "the leader ");
            }
        }
        self.faults_applied += 1;
    }

    /// Stops node `node` now; its disk keeps what it had flushed.
    fn crash_now(&mut self, sim: &mut turmoil::Sim<'_>, node: usize) {
        let ctl = &self.nodes[node];
        ctl.doom();
        sim.crash(ctl.name);
        let lost = ctl.after_crash();
        self.armed.remove(&node);
        self.down.insert(node, ());
        self.fault(format!("{} crashed, losing {lost} unflushed writes", ctl.name));
    }

    /// Stops the hosts whose armed crash took its image during the last step, and those
    /// whose armed crash is overdue.
    fn reap_crashes(&mut self, sim: &mut turmoil::Sim<'_>) {
        let now = self.history.now_ms();
        let due: Vec<usize> = self
            .armed
            .iter()
            .filter(|(node, deadline)| self.nodes[**node].crash_taken() || now >= **deadline)
            .map(|(node, _)| *node)
            .collect();
        for node in due {
            let taken = self.nodes[node].crash_taken();
            self.crash_now(sim, node);
            if taken {
                self.fault(format!(
                    "{} had crashed mid-step, at a storage write",
                    self.nodes[node].name
                ));
            }
        }
    }

    fn undo_due(&mut self, sim: &mut turmoil::Sim<'_>, now: u64) {
        self.run_undos(sim, |at| at <= now);
    }

    fn run_undos(&mut self, sim: &mut turmoil::Sim<'_>, due: impl Fn(u64) -> bool) {
        let (now_due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.undo).into_iter().partition(|(at, _)| due(*at));
        self.undo = later;
        for (_, undo) in now_due {
            self.run_undo(sim, undo);
        }
    }

    fn run_undo(&mut self, sim: &mut turmoil::Sim<'_>, undo: Undo) {
        match undo {
            Undo::Repair(a, b) => {
                sim.repair(a.as_str(), b.as_str());
                self.links.remove(&link(&a, &b));
                self.fault(format!("repaired {a} <-> {b}"));
            }
            Undo::RepairOneWay(a, b) => {
                sim.repair_oneway(a.as_str(), b.as_str());
                self.links.remove(&link(&a, &b));
                self.fault(format!("repaired {a} -> {b}"));
            }
            Undo::Release(a, b) => {
                sim.release(a.as_str(), b.as_str());
                self.links.remove(&link(&a, &b));
                self.fault(format!("released {a} <-> {b}"));
            }
            Undo::Latency(a, b) => {
                let max = Duration::from_millis(self.max_latency_ms);
                sim.set_link_max_message_latency(a.as_str(), b.as_str(), max);
                self.links.remove(&link(&a, &b));
                self.fault(format!("{a} <-> {b} fast again"));
            }
            Undo::Loss(a, b) => {
                sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
                self.links.remove(&link(&a, &b));
                self.fault(format!("{a} <-> {b} lossless again"));
            }
            Undo::Restart(node) => {
                if self.armed.contains_key(&node) {
                    self.crash_now(sim, node);
                }
                if self.down.remove(&node).is_some() {
                    let name = self.nodes[node].name;
                    sim.bounce(name);
                    self.fault(format!("{name} restarts"));
                }
            }
        }
    }

    /// Undoes every fault still in force and restarts every node that is down.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        self.run_undos(sim, |_| true);
        for node in 0..self.nodes.len() {
            self.run_undo(sim, Undo::Restart(node));
        }
    }

    /// The cheap checks: every running node's invariants; and each node's live
    /// checkouts, recorded in the history when they changed since the last round.
    fn check(&mut self) {
        for ctl in &self.nodes {
            let Some(node) = ctl.node() else { continue };
            let (checkouts, invariants) = checks::check_node(&node);
            if let Err(problem) = invariants {
                self.history.violation(format!("n{}: state invariant broken: {problem}", ctl.id));
            }
            if self.shown.get(&ctl.id) != Some(&checkouts) {
                self.shown.insert(ctl.id, checkouts.clone());
                let invoked = self.history.now_ms() * 1_000;
                let snapshot =
                    Event::Snapshot { node: ctl.id, invoked, linearizable: false, checkouts };
                self.history.record(snapshot);
            }
        }
    }

    /// Steps until every node has applied the same index and compares their states;
    /// the agreed state hash.
    /// Replicated time may run ahead of simulated time by what an honest clock may be
    /// ahead (`forward_ms`: the largest skew and the leader's jumps), plus a term-start
    /// step for every term, plus the pace's drift over the run: never by the days a
    /// node's clock jumped, or entitlements and borrows would end early.
    fn check_cluster_time(&self, time: &SimTime, forward_ms: u64, step_ms: u64, drift_ppm: u64) {
        let real_ms = EPOCH_MS + time.ms();
        for ctl in &self.nodes {
            let Some(node) = ctl.node() else { continue };
            let replicated_ms = node.read_local(|s| s.now_ms());
            let terms = node.status().term;
            let drift_ms = (time.ms() * drift_ppm).div_ceil(1_000_000);
            let bound =
                forward_ms.saturating_add(terms.saturating_mul(step_ms)).saturating_add(drift_ms);
            let ahead = replicated_ms.saturating_sub(real_ms);
            if ahead > bound {
                self.history.violation(format!(
                    "durability: {}'s replicated time is {ahead} ms ahead of real time, more than {bound} ms ({forward_ms} ms of skew and jumps, {terms} terms of {step_ms} ms, {drift_ms} ms of drift): a clock far ahead moved cluster time",
                    ctl.name
                ));
                return;
            }
        }
    }

    fn converge(&mut self, sim: &mut turmoil::Sim<'_>, time: &SimTime) -> Option<String> {
        let deadline = time.ms() + CONVERGE.as_millis() as u64;
        loop {
            let states: Vec<(u64, Option<u64>, String)> = self
                .nodes
                .iter()
                .filter_map(|ctl| ctl.node().map(|node| (ctl.id, node)))
                .map(|(id, node)| {
                    let applied = node.status().applied_index;
                    (id, applied, node.read_local(|s| s.state_hash_hex()))
                })
                .collect();
            let same_index =
                states.len() == self.nodes.len() && states.windows(2).all(|w| w[0].1 == w[1].1);
            if same_index {
                if states.windows(2).all(|w| w[0].2 == w[1].2) {
                    return states.first().map(|s| s.2.clone());
                }
                self.history.violation(format!(
                    "convergence: nodes applied the same index but hold different states: {states:?}"
                ));
                return None;
            }
            if time.ms() >= deadline {
                self.history.violation(format!(
                    "convergence: the nodes did not reach the same applied index within {CONVERGE:?}: {states:?}"
                ));
                return None;
            }
            if let Err(error) = sim.step() {
                self.history.violation(format!("a host's software failed: {error}"));
                return None;
            }
            time.set(sim.elapsed());
        }
    }
}
