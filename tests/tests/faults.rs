//! Fault injection against real processes: three `lsm-server` binaries, clients of the
//! real client library, and faults from outside (kill -9 and restart, SIGSTOP and
//! SIGCONT, proxies that reset or hang the links between nodes and between clients and
//! nodes). Every test records a history and checks it for safety, durability,
//! exactly-once, fences and liveness (`lsm_check`, as `docs/testing.md` "Properties"
//! defines them), on top of its own assertions.
//!
//! Five named scenarios (and a paused leader beside the stranded one), then a randomized
//! run: `LSM_FAULT_SECONDS` sets its length (60 s by default, the CI mode;
//! `LSM_FAULT_SECONDS=600` is the long mode), `LSM_FAULT_SEED` its seed (printed at the
//! start) and `LSM_FAULT_CLIENTS` the clients per group (6). The histories are written to
//! `target/tmp/lsm-faults/` as JSON lines.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use lsm_check::history::{Event, History, Outcome};
use lsm_check::{Checks, Report};
use lsm_client::api::{self, ErrorCode, ItemBody};
use lsm_client::{ClientError, Lease};
use lsm_core::{Checkout, FeatureStatus, ParallelMode};
use lsm_tests::nemesis::{self, Fault, FaultPlan};
use lsm_tests::net::{ClientGroup, Pinned};
use lsm_tests::proxy::Mode;
use lsm_tests::workload::{
    Actor, Job, Observer, SOLVER_LICENSE, Workload, WorkloadConfig, client_config, snapshot,
};
use lsm_tests::{Options, ProcCluster, SETTLE, cluster_alone, cluster_slot, env_seed, env_u64};
use nix::sys::signal::Signal;
use tokio::time::Instant;

/// The lease of the scenarios' checkouts: short, so that "two leases after the kill"
/// comes soon, and far above a failover.
const TTL: Duration = Duration::from_secs(6);

/// After a heal, the cluster must have a leader and serve a probe within this.
const LIVENESS: Duration = Duration::from_secs(20);

async fn solver_cluster(proxied_links: bool) -> ProcCluster {
    ProcCluster::start_with_options(Options {
        license: SOLVER_LICENSE.to_string(),
        proxied_links,
        ..Options::default()
    })
    .await
}

/// Waits until `check` holds, polling every 100 ms, failing after `within`.
async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(history: &History, matches: impl Fn(&Event) -> bool) -> usize {
    history.entries().iter().filter(|e| matches(&e.event)).count()
}

/// Every pool's and feature's `in_use` is the sum of the live checkouts' tokens.
fn assert_accounting(features: &[FeatureStatus], checkouts: &[Checkout]) {
    let mut per_pool: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in checkouts {
        for i in c.items.iter() {
            *per_pool.entry((i.feature.to_string(), i.pool.to_string())).or_default() += i.tokens;
        }
    }
    for f in features {
        let mut sum = 0;
        for p in &f.pools {
            let held = per_pool.get(&(f.feature.to_string(), p.pool.to_string())).copied();
            assert_eq!(p.in_use, held.unwrap_or(0), "{}/{}: {f:?}", f.feature, p.pool);
            sum += p.in_use;
        }
        assert_eq!(f.in_use, sum, "{}: {f:?}", f.feature);
    }
}

/// Waits for every live node to agree, checks the accounting, snapshots through every
/// live node, then checks the history; writes it to `target/tmp/lsm-faults/{name}.jsonl`.
async fn finish(
    cluster: &ProcCluster,
    history: &Arc<History>,
    checks: &Checks,
    name: &str,
) -> Report {
    let (features, checkouts) = cluster.converged().await;
    assert_accounting(&features, &checkouts);
    for id in cluster.live() {
        snapshot(cluster.http(), id, cluster.addr(id), history).await;
    }
    let report = Report::check(&history.entries(), checks);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("lsm-faults");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}.jsonl"));
    let written = history.write_jsonl(&path);
    println!("{name}: {report}history: {} ({written:?})", path.display());
    assert!(report.ok(), "{name}: {report}the history is in {}", path.display());
    report
}

/// Stops the workload, then waits until the cluster holds nothing: every checkout was
/// released, or expired if its client never learnt it was granted.
async fn drain(cluster: &ProcCluster, workload: Workload) {
    workload.stop(Duration::from_secs(60)).await;
    let within = TTL + SETTLE;
    let started = Instant::now();
    loop {
        let (features, checkouts) = cluster.converged().await;
        if checkouts.is_empty() {
            assert!(features.iter().all(|f| f.in_use == 0), "{features:?}");
            return;
        }
        assert!(started.elapsed() < within, "checkouts left after the run: {checkouts:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The live checkouts as node `id` reads them (linearizably), by id.
async fn live(cluster: &ProcCluster, id: u64) -> BTreeMap<u64, Checkout> {
    let list: Vec<Checkout> = cluster.read(id, api::path::CHECKOUTS).await;
    list.into_iter().map(|c| (c.id.0, c)).collect()
}

fn granted_ids(history: &History) -> BTreeSet<u64> {
    (history.entries().into_iter())
        .filter_map(|e| match e.event {
            Event::Granted { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

/// Holders of the jobs in `jobs` (one client each, through one group) keep their leases
/// through a leader kill: no lease is lost, every one is renewed on the new leader, and
/// the new leader (and every node) holds exactly the same checkouts with later expiries.
async fn leases_survive_a_leader_kill(name: &str, jobs: Vec<Job>) -> (ProcCluster, Arc<History>) {
    let mut cluster = solver_cluster(false).await;
    let checks = cluster.checks(LIVENESS).await;
    let history = Arc::new(History::new());
    let group = ClientGroup::start("jobs", &cluster.nodes()).await;
    let n = jobs.len();
    let workload =
        Workload::start(&[&group], WorkloadConfig::holding(n, jobs, TTL), history.clone());
    let observer = Observer::start(cluster.nodes(), history.clone(), Duration::from_millis(500));
    wait_for("every job holds its checkout", SETTLE, || {
        count(&history, |e| matches!(e, Event::Granted { .. })) == n
    })
    .await;
    let ids = granted_ids(&history);

    let old = cluster.wait_for_leader().await;
    let before = live(&cluster, old).await;
    assert_eq!(before.keys().copied().collect::<BTreeSet<_>>(), ids);
    history.record(Event::Fault { what: format!("kill -9 leader {old}") });
    let killed_at = history.now();
    cluster.kill(old);
    let new = cluster.wait_for_leader().await;
    assert_ne!(new, old);

    // Two full leases after the kill: without renewals through the new leader, every
    // checkout would have expired.
    tokio::time::sleep(2 * TTL).await;
    let entries = history.entries();
    for id in &ids {
        let renewed = entries.iter().any(|e| {
            e.at > killed_at && matches!(&e.event, Event::Renewed { id: r, .. } if r == id)
        });
        assert!(renewed, "checkout #{id} was not renewed after the kill");
    }
    assert_eq!(count(&history, |e| matches!(e, Event::Lost { .. })), 0, "a lease was lost");
    for node in cluster.live() {
        let after = live(&cluster, node).await;
        assert_eq!(after.keys().copied().collect::<BTreeSet<_>>(), ids, "on node {node}");
        for (id, checkout) in &after {
            let was = &before[id];
            assert_eq!((&checkout.client, &checkout.items), (&was.client, &was.items));
            assert!(checkout.lease_expires_at_ms > was.lease_expires_at_ms, "#{id} not renewed");
        }
    }

    cluster.restart(old).await;
    history.record(Event::Heal { what: format!("restart node {old}") });
    assert!(nemesis::probe(&cluster, &history, "probe-1", LIVENESS).await);
    let (features, checkouts) = cluster.converged().await;
    assert_eq!(checkouts.iter().map(|c| c.id.0).collect::<BTreeSet<_>>(), ids);
    assert_accounting(&features, &checkouts);
    observer.stop().await;
    drain(&cluster, workload).await;
    finish(&cluster, &history, &checks, name).await;
    assert_eq!(count(&history, |e| matches!(e, Event::Lost { .. })), 0);
    let released = count(&history, |e| match e {
        Event::Released { outcome: Outcome::Released, client, .. } => !client.starts_with("probe"),
        _ => false,
    });
    assert_eq!(released, n, "every job released its checkout");
    (cluster, history)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solver_jobs_of_four_classes_keep_their_leases_when_the_leader_dies() {
    use ParallelMode::{Mpp, Smp};
    let _slot = cluster_slot().await;
    let em = |cores| {
        Job::new(
            "em",
            vec![
                lsm_tests::workload::Ask::Tokens { feature: "lsdyna-em", min: 2, max: 2 },
                lsm_tests::workload::Ask::Cores {
                    feature: "lsdyna",
                    mode: Mpp,
                    min: cores,
                    max: cores,
                },
            ],
        )
    };
    let jobs = vec![
        Job::cores("explicit", "lsdyna", 4, Smp),
        Job::cores("implicit", "lsdyna-implicit", 6, Smp),
        em(4),
        Job::tokens("thermal", "lsdyna-thermal", 2),
        Job::cores("explicit", "lsdyna", 8, Mpp),
        Job::cores("implicit", "lsdyna-implicit", 8, Smp),
        em(8),
        Job::tokens("thermal", "lsdyna-thermal", 3),
    ];
    let (_cluster, history) = leases_survive_a_leader_kill("four-solver-classes", jobs).await;
    let features: BTreeSet<String> = (history.entries().into_iter())
        .filter_map(|e| match e.event {
            Event::Granted { items, .. } => Some(items),
            _ => None,
        })
        .flatten()
        .map(|t| t.feature)
        .collect();
    for feature in ["lsdyna", "lsdyna-implicit", "lsdyna-em", "lsdyna-thermal"] {
        assert!(features.contains(feature), "no {feature} job held: {features:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smp_and_mpp_checkouts_keep_their_pool_counts_on_every_node_when_the_leader_dies() {
    use ParallelMode::{Mpp, Smp};
    let _slot = cluster_slot().await;
    let mut cluster = solver_cluster(false).await;
    let checks = cluster.checks(LIVENESS).await;
    let history = Arc::new(History::new());
    let group = ClientGroup::start("hpc", &cluster.nodes()).await;
    // Two 8-core SMP runs and two 16-core MPP runs: all 48 LS-DYNA tokens, 16 in the SMP
    // pool (its 8 reserved and 8 shared), 32 in the MPP pool (24 reserved, 8 shared).
    let jobs = vec![
        Job::cores("smp-8", "lsdyna", 8, Smp),
        Job::cores("mpp-16", "lsdyna", 16, Mpp),
        Job::cores("smp-8", "lsdyna", 8, Smp),
        Job::cores("mpp-16", "lsdyna", 16, Mpp),
    ];
    let workload =
        Workload::start(&[&group], WorkloadConfig::holding(4, jobs, TTL), history.clone());
    wait_for("the four runs hold their checkouts", SETTLE, || {
        count(&history, |e| matches!(e, Event::Granted { .. })) == 4
    })
    .await;

    let pools = |features: &[FeatureStatus]| -> Vec<(String, u64, u64, u64, u64)> {
        let lsdyna = features.iter().find(|f| f.feature.as_str() == "lsdyna").expect("lsdyna");
        assert_eq!((lsdyna.in_use, lsdyna.free), (48, 0), "{lsdyna:?}");
        (lsdyna.pools.iter())
            .map(|p| (p.pool.to_string(), p.in_use, p.available, p.lent, p.borrowed))
            .collect()
    };
    let (before, _) = cluster.converged().await;
    let expected = vec![("smp".to_string(), 16, 0, 0, 0), ("mpp".to_string(), 32, 0, 0, 0)];
    assert_eq!(pools(&before), expected);
    for node in cluster.live() {
        assert_full(&cluster, node, Smp).await;
        assert_full(&cluster, node, Mpp).await;
    }

    let old = cluster.wait_for_leader().await;
    history.record(Event::Fault { what: format!("kill -9 leader {old}") });
    cluster.kill(old);
    let new = cluster.wait_for_leader().await;
    assert_ne!(new, old);
    tokio::time::sleep(2 * TTL).await;
    for node in cluster.live() {
        let features: Vec<FeatureStatus> = cluster.read(node, api::path::FEATURES).await;
        assert_eq!(features, before, "linearizable through node {node}, after the kill");
        assert_full(&cluster, node, Smp).await;
        assert_full(&cluster, node, Mpp).await;
    }
    cluster.restart(old).await;
    history.record(Event::Heal { what: format!("restart node {old}") });
    assert!(nemesis::probe(&cluster, &history, "probe-1", LIVENESS).await);
    // Every node, the restarted one included, holds the same counts in its own state.
    let (after, checkouts) = cluster.converged().await;
    assert_eq!(after, before, "every node's own state after the restart");
    assert_eq!(checkouts.len(), 4);
    assert_eq!(count(&history, |e| matches!(e, Event::Lost { .. })), 0, "a lease was lost");
    drain(&cluster, workload).await;
    finish(&cluster, &history, &checks, "smp-mpp-pools").await;
}

/// One more LS-DYNA core in `mode` through node `node` is refused: the pools are full.
async fn assert_full(cluster: &ProcCluster, node: u64, mode: ParallelMode) {
    let body = serde_json::json!({
        "client": format!("extra-{node}-{mode:?}"), "seq": 1,
        "items": [ItemBody::cores("lsdyna".parse().unwrap(), 1, mode)],
        "user": "jane", "host": "h", "lease_ttl_ms": 6000,
    });
    let (status, answer) = cluster.post(node, api::path::CHECKOUTS, &body).await;
    assert_eq!(status, 409, "one {mode:?} core more through node {node}: {answer}");
}

/// A linearizable read of `feature`'s tokens in use through node `id`: `Some` when the
/// node answered 200, `None` when it answered a retryable error or not within 8 s. Any
/// other answer fails the test.
async fn in_use_through(cluster: &ProcCluster, id: u64, feature: &str) -> Option<u64> {
    in_use_within(cluster, id, feature, Duration::from_secs(8)).await
}

/// [`in_use_through`], giving up after `within`.
async fn in_use_within(
    cluster: &ProcCluster,
    id: u64,
    feature: &str,
    within: Duration,
) -> Option<u64> {
    let read = cluster.http().call(cluster.addr(id), "GET", api::path::FEATURES, None);
    match tokio::time::timeout(within, read).await {
        Ok(Ok((200, body))) => {
            let features: Vec<FeatureStatus> = serde_json::from_value(body).expect("features");
            let f = features.iter().find(|f| f.feature.as_str() == feature).expect("the feature");
            Some(f.in_use)
        }
        Ok(Ok((status, body))) => {
            let code: ErrorCode = serde_json::from_value(body["error"]["code"].clone())
                .unwrap_or_else(|_| panic!("{status} without an error code: {body}"));
            assert!(code.is_retryable(), "node {id} refused a read: {status} {body}");
            None
        }
        Ok(Err(_)) | Err(_) => None,
    }
}

fn abaqus(tokens: u64) -> Vec<ItemBody> {
    vec![ItemBody::tokens("abaqus".parse().unwrap(), tokens)]
}

/// How an old leader is taken away and brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Away {
    /// Its links to its peers are reset, and one group of clients can reach it and
    /// nothing else; then everything passes again.
    Stranded,
    /// SIGSTOP, then SIGCONT.
    Paused,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranded_leader_never_serves_stale_state_nor_refuses_a_client_that_lists_it_first() {
    let _slot = cluster_slot().await;
    old_leader_comes_back(Away::Stranded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_never_serves_stale_state_and_its_clients_are_served_meanwhile() {
    let _slot = cluster_slot().await;
    old_leader_comes_back(Away::Paused).await;
}

/// The leader goes away (`away`) while clients that list it first hold checkouts; the
/// others elect a leader and change the state behind its back; the old leader comes back
/// and, at once, every read it answers is current, a checkout through it is never granted
/// from its stale state, and a client listing it first is served.
async fn old_leader_comes_back(away: Away) {
    let cluster = solver_cluster(away == Away::Stranded).await;
    let checks = cluster.checks(LIVENESS).await;
    let history = Arc::new(History::new());
    let old = cluster.wait_for_leader().await;
    let others: Vec<u64> = cluster.live().into_iter().filter(|&id| id != old).collect();
    let near = ClientGroup::start("near-old", &cluster.nodes()).await;
    let far = ClientGroup::start("far", &cluster.nodes()).await;
    // Clients that list the old leader first, and one that lists it last.
    let first = |group: &ClientGroup| -> Vec<String> {
        let mut servers = vec![group.server(old).to_string()];
        servers.extend(others.iter().map(|&id| group.server(id).to_string()));
        servers
    };
    let deadline = Duration::from_secs(3);
    let lease = Duration::from_secs(30);
    let actor = |group: &ClientGroup, name: &str, servers: Vec<String>| {
        Actor::new(name, client_config(servers, name, deadline), group.transport(), history.clone())
    };
    let mut holder = actor(&near, "near-holder", first(&near));
    let mut late = actor(&near, "near-late", first(&near));
    let mut other = actor(&far, "far-client", first(&far).into_iter().rev().collect());

    // Abaqus has 16 tokens: the near client holds 2, the far client 4.
    let held = holder.checkout(abaqus(2), "abaqus:2".into(), lease, None).await;
    let held = held.expect("the near client checks out");
    let given_back = other.checkout(abaqus(4), "abaqus:4".into(), lease, None).await;
    let given_back = given_back.expect("the far client checks out");
    assert_eq!(in_use_through(&cluster, old, "abaqus").await, Some(6));

    let what = match away {
        Away::Stranded => {
            // Cut off from its peers, with the near clients: they reach it and nothing else.
            cluster.links().isolate(old, Mode::Cut);
            near.strand_with(old, Mode::Cut);
            format!("strand leader {old} with the near clients")
        }
        Away::Paused => {
            cluster.signal(old, Signal::SIGSTOP);
            format!("SIGSTOP leader {old}")
        }
    };
    history.record(Event::Fault { what: what.clone() });
    let new = cluster.leader_among(&others, SETTLE).await.expect("the majority elects a leader");
    // The majority changes the state behind the old leader's back: 4 tokens come back,
    // 10 are taken. The truth is 12 in use; the old leader's stale state says 6.
    assert_eq!(other.release(given_back).await, Outcome::Released);
    let fill = other.checkout(abaqus(10), "abaqus:10".into(), lease, None).await;
    let fill = fill.expect("the majority serves");
    assert_eq!(in_use_through(&cluster, new, "abaqus").await, Some(12));

    // A near client asks for 2 more. Stranded with the old leader, it must not be served
    // from the old leader's stale state; with the old leader paused, the new leader
    // serves it.
    let asked = late.checkout(abaqus(2), "abaqus:2".into(), lease, None).await;
    let late_lease = match away {
        Away::Stranded => {
            assert!(
                matches!(asked, Err(ClientError::Unavailable { .. })),
                "a stranded leader answered a checkout: {asked:?}"
            );
            None
        }
        Away::Paused => Some(asked.expect("the new leader serves the paused leader's clients")),
    };
    let in_use = if late_lease.is_some() { 14 } else { 12 };
    let read = in_use_within(&cluster, old, "abaqus", Duration::from_secs(3)).await;
    assert_eq!(read, None, "the old leader answered a read while away");

    match away {
        Away::Stranded => {
            cluster.links().heal();
            near.heal();
        }
        Away::Paused => cluster.signal(old, Signal::SIGCONT),
    }
    history.record(Event::Heal { what });
    // At once, whether or not it has caught up: every read it answers is current.
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(3) || answered == 0 {
        if let Some(seen) = in_use_through(&cluster, old, "abaqus").await {
            assert_eq!(seen, in_use, "the old leader answered from stale state");
            answered += 1;
        }
        assert!(started.elapsed() < SETTLE, "the old leader answers no read after coming back");
    }
    // A client that lists it first is served: refused what is not free (never granted
    // from the stale state), then granted what is.
    let free = 16 - in_use;
    let mut first_in_line = actor(&near, "lists-old-first", first(&near));
    let refused = first_in_line.checkout(abaqus(free + 4), "too many".into(), TTL, None).await;
    match refused {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::NoTokens), "{e}"),
        Ok(lease) => panic!("granted {} of {free} free tokens: {:?}", free + 4, lease.grant()),
    }
    let granted = first_in_line.checkout(abaqus(free), "the rest".into(), TTL, None).await;
    let granted = granted.expect("a client listing the old leader first is served");
    assert_eq!(in_use_through(&cluster, new, "abaqus").await, Some(16));
    let pinned = lsm_client::Client::with_transport(
        client_config(vec![cluster.addr(old).to_string()], "pinned-to-old", deadline),
        Pinned::new(cluster.addr(old)),
    )
    .expect("a client");
    let features = pinned.features(api::Consistency::Linearizable).await.expect("served");
    let abaqus_in_use = features.iter().find(|f| f.feature.as_str() == "abaqus").map(|f| f.in_use);
    assert_eq!(abaqus_in_use, Some(16), "through the old leader alone");

    assert!(nemesis::probe(&cluster, &history, "probe-1", LIVENESS).await);
    for (actor, lease) in [(&first_in_line, granted), (&other, fill)] {
        assert_eq!(actor.release(lease).await, Outcome::Released);
    }
    if let Some(lease) = late_lease {
        assert_eq!(late.release(lease).await, Outcome::Released);
    }
    // The near client's lease outlived the fault: its renewals went on, through the old
    // leader forwarding to the new one, or straight to the new one.
    let (_running, mut stop) = tokio::sync::watch::channel(false);
    let kept = holder.hold(&held, Some(Instant::now() + Duration::from_millis(50)), &mut stop);
    assert_eq!(kept.await, None, "the near client lost its lease");
    assert_eq!(holder.release(held).await, Outcome::Released);
    let name = match away {
        Away::Stranded => "stranded-leader",
        Away::Paused => "paused-leader",
    };
    finish(&cluster, &history, &checks, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tokens_are_lost_to_redundancy_every_token_through_any_one_node() {
    let _slot = cluster_slot().await;
    let mut cluster = solver_cluster(false).await;
    let checks = cluster.checks(LIVENESS).await;
    let history = Arc::new(History::new());
    let totals = checks.capacity.totals.clone();
    // Everything: LS-DYNA's SMP pool to its cap, the rest of LS-DYNA in the MPP pool, and
    // every other feature whole, in two checkouts (a request names a feature once).
    let smp_cap = checks.capacity.caps[&("lsdyna".to_string(), "smp".to_string())];
    let pooled = |pool: &str, tokens: u64| ItemBody {
        pool: Some(pool.parse().unwrap()),
        ..ItemBody::tokens("lsdyna".parse().unwrap(), tokens)
    };
    let mut everything = vec![pooled("smp", smp_cap)];
    for (feature, &total) in &totals {
        if feature != "lsdyna" {
            everything.push(ItemBody::tokens(feature.parse().unwrap(), total));
        }
    }
    let rest = vec![pooled("mpp", totals["lsdyna"] - smp_cap)];

    let through = async |cluster: &ProcCluster, node: u64, round: &str| {
        let name = format!("only-{node}-{round}");
        let config = client_config(vec![cluster.addr(node).to_string()], &name, SETTLE);
        let mut actor = Actor::new(&name, config, Pinned::new(cluster.addr(node)), history.clone());
        let mut leases: Vec<Lease> = Vec::new();
        for items in [everything.clone(), rest.clone()] {
            let lease = actor.checkout(items, "everything".into(), TTL, None).await;
            leases.push(lease.unwrap_or_else(|e| panic!("through node {node}: {e}")));
        }
        for node in cluster.live() {
            let features: Vec<FeatureStatus> = cluster.read(node, api::path::FEATURES).await;
            for f in &features {
                assert_eq!(
                    (f.in_use, f.free),
                    (f.tokens_total, 0),
                    "as node {node} reads it: {f:?}"
                );
            }
        }
        // Not one token more, of any feature, in any pool.
        for feature in totals.keys() {
            let one = if feature == "lsdyna" {
                vec![pooled("smp", 1)]
            } else {
                vec![ItemBody::tokens(feature.parse().unwrap(), 1)]
            };
            let more = actor.checkout(one, format!("{feature}:1"), TTL, None).await;
            let code = more.as_ref().err().and_then(ClientError::code);
            assert!(
                matches!(code, Some(ErrorCode::NoTokens | ErrorCode::OverLimit)),
                "one more {feature} through node {node}: {more:?}"
            );
        }
        for lease in leases {
            assert_eq!(actor.release(lease).await, Outcome::Released);
        }
        let (features, _) = cluster.converged().await;
        assert!(features.iter().all(|f| f.in_use == 0), "{features:?}");
    };
    for node in cluster.live() {
        through(&cluster, node, "three-up").await;
    }
    // With the leader killed, the same through each of the other two.
    let leader = cluster.wait_for_leader().await;
    history.record(Event::Fault { what: format!("kill -9 leader {leader}") });
    cluster.kill(leader);
    cluster.wait_for_leader().await;
    for node in cluster.live() {
        through(&cluster, node, "two-up").await;
    }
    cluster.restart(leader).await;
    history.record(Event::Heal { what: format!("restart node {leader}") });
    assert!(nemesis::probe(&cluster, &history, "probe-1", LIVENESS).await);
    finish(&cluster, &history, &checks, "every-token-through-any-node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blip_between_a_client_and_the_leader_resumes_its_checkout_and_takes_no_second() {
    let _slot = cluster_slot().await;
    let cluster = solver_cluster(false).await;
    let checks = cluster.checks(LIVENESS).await;
    let history = Arc::new(History::new());
    let leader = cluster.wait_for_leader().await;
    let group = ClientGroup::start("blip", &cluster.nodes()).await;
    let checkouts_of = async |client: &str| -> Vec<Checkout> {
        let (status, body) = cluster.get(leader, &format!("/v1/checkouts?client={client}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).expect("checkouts")
    };

    // 1. The client reaches the leader only. Its request arrives, the answer is lost;
    // the client retries; the link comes back; the retry is answered with the checkout
    // the first attempt made.
    let only_leader = vec![group.server(leader).to_string()];
    let config = client_config(only_leader.clone(), "blip-1", SETTLE);
    let mut actor = Actor::new("blip-1", config, group.transport(), history.clone());
    group.set(leader, Mode::LOSE_REPLIES);
    history.record(Event::Fault { what: format!("lose leader {leader}'s replies to blip-1") });
    let pending = tokio::spawn(async move {
        let result = actor.checkout(abaqus(3), "abaqus:3".into(), TTL, None).await;
        (actor, result)
    });
    wait_for_async(&cluster, "the first attempt is applied", async || {
        checkouts_of("blip-1").await.len() == 1
    })
    .await;
    let applied = checkouts_of("blip-1").await[0].id;
    // Let the client time out and retry into the lossy link at least once more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let accepted = group.accepted(leader);
    group.heal();
    history.record(Event::Heal { what: "the link passes again".into() });
    let (actor, result) = pending.await.expect("the checkout task");
    let lease = result.expect("the retried checkout is granted");
    assert!(accepted >= 2, "the client retried ({accepted} connections)");
    assert_eq!(lease.id(), applied, "the retry resumed the first attempt's checkout");
    let listed = checkouts_of("blip-1").await;
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), [applied], "one checkout");
    assert_eq!(in_use_through(&cluster, leader, "abaqus").await, Some(3));

    // 2. The release's answer is lost the same way: the retry says released, not gone.
    group.set(leader, Mode::LOSE_REPLIES);
    history.record(Event::Fault { what: format!("lose leader {leader}'s replies to blip-1") });
    let release = tokio::spawn(async move {
        let outcome = actor.release(lease).await;
        (actor, outcome)
    });
    wait_for_async(&cluster, "the release is applied", async || {
        checkouts_of("blip-1").await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    group.heal();
    history.record(Event::Heal { what: "the link passes again".into() });
    let (_actor, outcome) = release.await.expect("the release task");
    assert_eq!(outcome, Outcome::Released, "the retried release");

    // 3. A client with every node: the leader's answer is lost, it retries through a
    // follower, which forwards to the leader, and gets the same checkout.
    let all = {
        let mut servers = vec![group.server(leader).to_string()];
        servers.extend(
            group.nodes().into_iter().filter(|&n| n != leader).map(|n| group.server(n).to_string()),
        );
        servers
    };
    let config = client_config(all, "blip-2", SETTLE);
    let mut actor = Actor::new("blip-2", config, group.transport(), history.clone());
    group.set(leader, Mode::LOSE_REPLIES);
    history.record(Event::Fault { what: format!("lose leader {leader}'s replies to blip-2") });
    let lease = actor.checkout(abaqus(2), "abaqus:2".into(), TTL, None).await;
    group.heal();
    history.record(Event::Heal { what: "the link passes again".into() });
    let lease = lease.expect("granted through a follower");
    let listed = checkouts_of("blip-2").await;
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), [lease.id()], "one checkout");
    assert_eq!(in_use_through(&cluster, leader, "abaqus").await, Some(2));
    assert_eq!(actor.release(lease).await, Outcome::Released);

    assert!(nemesis::probe(&cluster, &history, "probe-1", LIVENESS).await);
    finish(&cluster, &history, &checks, "client-leader-blip").await;
}

/// Polls `check` every 100 ms until it holds, failing after [`SETTLE`].
async fn wait_for_async(cluster: &ProcCluster, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < SETTLE, "{what}: not within {SETTLE:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Many clients in three groups, and faults of every kind one after another for
/// `LSM_FAULT_SECONDS` (60 by default), seeded by `LSM_FAULT_SEED`; then every property
/// is checked on the whole history, every node must agree, and nothing may be left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_under_a_workload_keep_every_property() {
    let _alone = cluster_alone().await;
    let seconds = env_u64("LSM_FAULT_SECONDS").unwrap_or(60);
    let seed = env_seed("LSM_FAULT_SEED");
    let clients = env_u64("LSM_FAULT_CLIENTS").unwrap_or(6) as usize;
    println!(
        "randomized faults: LSM_FAULT_SEED={seed} LSM_FAULT_SECONDS={seconds} LSM_FAULT_CLIENTS={clients}"
    );
    let mut cluster = solver_cluster(true).await;
    let checks = cluster.checks(LIVENESS).await;
    let history = Arc::new(History::new());
    let nodes = cluster.nodes();
    let groups = [
        ClientGroup::start("rack-a", &nodes).await,
        ClientGroup::start("rack-b", &nodes).await,
        ClientGroup::start("rack-c", &nodes).await,
    ];
    let group_refs: Vec<&ClientGroup> = groups.iter().collect();
    let mut config = WorkloadConfig::cycling(clients, TTL, seed);
    // Holds up to three leases long, so renewals matter: a lease that is not renewed, or
    // whose renewal is lost across a failover, expires while its client holds it.
    config.hold = lsm_tests::workload::Hold::Cycle {
        hold: (Duration::from_secs(1), 3 * TTL),
        pause: (Duration::from_millis(100), Duration::from_secs(1)),
    };
    let workload = Workload::start(&group_refs, config, history.clone());
    let observer = Observer::start(nodes.clone(), history.clone(), Duration::from_millis(700));
    let plan = FaultPlan {
        duration: Duration::from_secs(seconds),
        seed,
        faults: Fault::ALL.to_vec(),
        fault_time: (Duration::from_millis(300), Duration::from_millis(2500)),
        calm: (Duration::from_millis(200), Duration::from_secs(1)),
        quiet_every: 8,
        quiet_time: TTL + Duration::from_secs(3),
        liveness_bound: LIVENESS,
        online_check: Some(checks.clone()),
    };
    let injected = nemesis::run(&mut cluster, &group_refs, &history, &plan).await;
    // Let the workload run a little on the healed cluster, then stop and check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    observer.stop().await;
    let mut kinds: BTreeMap<Fault, usize> = BTreeMap::new();
    for fault in &injected {
        *kinds.entry(*fault).or_default() += 1;
    }
    println!("{} faults: {kinds:?}", injected.len());
    assert!(!injected.is_empty(), "no fault was injected");
    drain(&cluster, workload).await;
    let report = finish(&cluster, &history, &checks, "randomized").await;
    assert!(report.count("granted") > 0, "{report}");
}
