//! The fault driver: faults injected from outside the processes, one after another, each
//! healed and followed by a liveness probe.
//!
//! A round picks a [`Fault`] (seeded), finds the leader, records the fault, applies it,
//! waits a random time, heals it (restart, SIGCONT, proxies passing again), records the
//! heal, and probes: within the liveness bound, the live nodes must agree on a leader and
//! a fresh client must check out a `probe` token and release it. Then a calm pause, and
//! the next round, until the run's duration is up. With [`FaultPlan::online_check`], the
//! history so far is checked after every probe, so a run stops at its first violation.
//!
//! The faults are those of real deployments: a process killed (kill -9) and restarted
//! from its disk, a process paused (SIGSTOP, as in a long GC pause or a frozen VM) and
//! resumed, a node partitioned from its peers (links reset, or hung silently), a leader
//! cut off together with a group of its clients, a one-way link failure, and a blip or
//! lost replies between a group of clients and the leader.

use std::sync::Arc;
use std::time::Duration;

use lsm_client::api::ItemBody;
use nix::sys::signal::Signal;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use lsm_check::history::{Event, History, Outcome};
use lsm_check::{Checks, Report};

use crate::ProcCluster;
use crate::net::ClientGroup;
use crate::proxy::Mode;
use crate::workload::{Actor, between, client_config};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 the leader, restart it after a while.
    KillLeader,
    /// kill -9 a follower, restart it after a while.
    KillFollower,
    /// SIGSTOP the leader, SIGCONT it after a while.
    PauseLeader,
    /// Reset every link of the leader, both ways.
    IsolateLeader,
    /// Reset every link of a follower, both ways.
    IsolateFollower,
    /// Hang every link of the leader (nothing gets through, nothing fails fast).
    HangLeader,
    /// Cut the leader off from its peers together with the first client group, whose
    /// proxies to the other nodes are reset: those clients can reach the leader only.
    StrandLeader,
    /// Reset the leader's links to its peers in one direction only: it cannot reach
    /// them, they can reach it.
    OneWayFromLeader,
    /// Reset one client group's proxy to the leader.
    ClientBlip,
    /// One client group's requests reach the leader, the answers are lost.
    LoseReplies,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 10] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::IsolateLeader,
        Fault::IsolateFollower,
        Fault::HangLeader,
        Fault::StrandLeader,
        Fault::OneWayFromLeader,
        Fault::ClientBlip,
        Fault::LoseReplies,
    ];
}

/// A run of faults.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// Keep injecting faults until this much time has passed.
    pub duration: Duration,
    /// Seeds the choice of faults, targets and times.
    pub seed: u64,
    /// The kinds to draw from.
    pub faults: Vec<Fault>,
    /// How long a fault lasts: shortest, longest.
    pub fault_time: (Duration, Duration),
    /// The pause after a probe: shortest, longest.
    pub calm: (Duration, Duration),
    /// Every `quiet_every`-th round is followed by `quiet_time` without faults, so
    /// leases must also be kept alive by renewals under one stable leader (every new
    /// leader extends them all). Zero turns it off.
    pub quiet_every: usize,
    /// How long a quiet stretch lasts.
    pub quiet_time: Duration,
    /// Within this time after a heal, the cluster must have a leader and serve a probe.
    pub liveness_bound: Duration,
    /// Check the history so far with these checks after every probe, and stop injecting
    /// faults at the first violation (the caller's final check reports it).
    pub online_check: Option<Checks>,
}

/// How to undo an applied fault.
enum Undo {
    Restart(u64),
    Resume(u64),
    HealLinks,
    HealLinksAndGroup(usize),
    HealGroup(usize),
}

/// Injects faults as `plan` says into `cluster` (started with proxied links), whose
/// clients are in `groups`, recording into `history`; returns the faults injected, in
/// order. Every fault is healed before this returns.
pub async fn run(
    cluster: &mut ProcCluster,
    groups: &[&ClientGroup],
    history: &Arc<History>,
    plan: &FaultPlan,
) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let started = Instant::now();
    let mut injected = Vec::new();
    let mut probes = 0u64;
    while started.elapsed() < plan.duration {
        let Some(leader) = cluster.leader_within(plan.liveness_bound).await else {
            history.record(Event::Probe {
                ok: false,
                detail: format!("no leader within {:?} before a fault", plan.liveness_bound),
            });
            break;
        };
        let fault = *plan.faults.choose(&mut rng).expect("at least one kind of fault");
        let followers: Vec<u64> = cluster.live().into_iter().filter(|&id| id != leader).collect();
        let follower = *followers.choose(&mut rng).expect("a follower");
        let group = rng.random_range(0..groups.len());
        let (what, undo) = match fault {
            Fault::KillLeader => {
                cluster.kill(leader);
                (format!("kill -9 leader {leader}"), Undo::Restart(leader))
            }
            Fault::KillFollower => {
                cluster.kill(follower);
                (format!("kill -9 follower {follower}"), Undo::Restart(follower))
            }
            Fault::PauseLeader => {
                cluster.signal(leader, Signal::SIGSTOP);
                (format!("SIGSTOP leader {leader}"), Undo::Resume(leader))
            }
            Fault::IsolateLeader => {
                cluster.links().isolate(leader, Mode::Cut);
                (format!("isolate leader {leader}"), Undo::HealLinks)
            }
            Fault::IsolateFollower => {
                cluster.links().isolate(follower, Mode::Cut);
                (format!("isolate follower {follower}"), Undo::HealLinks)
            }
            Fault::HangLeader => {
                cluster.links().isolate(leader, Mode::HANG);
                (format!("hang the links of leader {leader}"), Undo::HealLinks)
            }
            Fault::StrandLeader => {
                cluster.links().isolate(leader, Mode::Cut);
                groups[0].strand_with(leader, Mode::Cut);
                let name = groups[0].name();
                (format!("strand leader {leader} with clients {name}"), Undo::HealLinksAndGroup(0))
            }
            Fault::OneWayFromLeader => {
                for &to in &followers {
                    cluster.links().set(leader, to, Mode::Cut);
                }
                (format!("cut the links from leader {leader}, one way"), Undo::HealLinks)
            }
            Fault::ClientBlip => {
                groups[group].set(leader, Mode::Cut);
                let name = groups[group].name();
                (format!("cut clients {name} from leader {leader}"), Undo::HealGroup(group))
            }
            Fault::LoseReplies => {
                groups[group].set(leader, Mode::LOSE_REPLIES);
                let name = groups[group].name();
                (format!("lose the leader {leader}'s replies to {name}"), Undo::HealGroup(group))
            }
        };
        history.record(Event::Fault { what: what.clone() });
        injected.push(fault);
        let (min, max) = plan.fault_time;
        tokio::time::sleep(between(&mut rng, min, max)).await;
        match undo {
            Undo::Restart(id) => cluster.restart(id).await,
            Undo::Resume(id) => cluster.signal(id, Signal::SIGCONT),
            Undo::HealLinks => cluster.links().heal(),
            Undo::HealLinksAndGroup(g) => {
                cluster.links().heal();
                groups[g].heal();
            }
            Undo::HealGroup(g) => groups[g].heal(),
        }
        history.record(Event::Heal { what });
        probes += 1;
        probe(cluster, history, &format!("probe-{probes}"), plan.liveness_bound).await;
        if let Some(checks) = &plan.online_check {
            let report = Report::check(&history.entries(), checks);
            if !report.ok() {
                eprintln!("stopping the faults after a violation:\n{report}");
                break;
            }
        }
        let (min, max) = plan.calm;
        let mut calm = between(&mut rng, min, max);
        if plan.quiet_every > 0 && injected.len() % plan.quiet_every == 0 {
            calm = plan.quiet_time;
        }
        tokio::time::sleep(calm).await;
    }
    injected
}

/// A liveness probe (see the module docs), recorded in `history` as client `name`; true
/// when the cluster served it within `bound`.
pub async fn probe(
    cluster: &ProcCluster,
    history: &Arc<History>,
    name: &str,
    bound: Duration,
) -> bool {
    let started = Instant::now();
    let Some(leader) = cluster.leader_within(bound).await else {
        history.record(Event::Probe {
            ok: false,
            detail: format!("the live nodes agreed on no leader within {bound:?}"),
        });
        return false;
    };
    let left = bound.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
    let config = client_config(cluster.addrs(), name, left);
    let transport = Arc::new(lsm_client::transport::HyperTransport::tcp(Duration::from_secs(1)));
    let mut actor = Actor::new(name, config, transport, history.clone());
    let item = ItemBody::tokens("probe".parse().expect("a feature name"), 1);
    let served = async {
        let lease = actor
            .checkout(vec![item], "probe:1".into(), Duration::from_secs(10), None)
            .await
            .map_err(|e| format!("checkout: {e}"))?;
        match actor.release(lease).await {
            Outcome::Released => Ok(()),
            other => Err(format!("release: {other:?}")),
        }
    };
    let result = match tokio::time::timeout(bound, served).await {
        Ok(result) => result,
        Err(_) => Err(format!("not served within {bound:?}")),
    };
    let took = started.elapsed();
    let ok = result.is_ok() && took <= bound;
    let detail = match result {
        Ok(()) => format!("leader {leader}; checkout and release in {:.1} s", took.as_secs_f64()),
        Err(e) => format!("leader {leader}; {e}"),
    };
    history.record(Event::Probe { ok, detail });
    ok
}
