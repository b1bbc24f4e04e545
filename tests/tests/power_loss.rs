//! Power loss against real processes: three `lsm-server` binaries, each with its data
//! directory on its own fault file system (`lsm_faultfs`), which holds every write not
//! yet synced in memory and drops it when the power is cut.
//!
//! The cluster is initialized on the plain disk, then each node's data directory moves
//! under a mount of its own (the initial state counts as synced). Real clients check out,
//! renew and release under the cycling workload of the fault tests while the power is
//! cut at seeded random moments, to all three nodes or to one or two of them: the nodes
//! are killed with SIGKILL, their mounts drop what was not synced, and they start again
//! from what is left. Each cut waits (up to 3 s) for one of its nodes to call `fsync`
//! and comes while that call is held, after the node wrote and before its data is
//! durable ([`Mount::trap_next_sync`]). After every cut a liveness probe must be served, and the history
//! so far is checked, so a run stops at its first violation. At the end every property
//! of `lsm_check` holds on the whole history (acknowledged checkouts stay live while
//! held, no request makes two checkouts, fences are unique and only grow), every node
//! holds the same state (applied index, features and checkouts, as each reads its own),
//! nothing is left held, and every node's data went through its fault file system. On
//! disks that ignore syncs, one cut of all three nodes loses a held checkout, and the
//! checks must say so: the power-loss test can fail.
//!
//! `LSM_POWER_CUTS` sets the number of cuts (30 by default, the CI mode; 500 is the long
//! mode), `LSM_POWER_SEED` the seed (printed at the start). The history is written to
//! `target/tmp/lsm-faults/power-loss.jsonl`. Where FUSE is not available the test fails
//! and says what is missing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lsm_check::history::{Event, History};
use lsm_check::{Property, Report};
use lsm_client::api::ItemBody;
use lsm_client::transport::HyperTransport;
use lsm_faultfs::{Disk, Mount, Stats};
use lsm_tests::net::ClientGroup;
use lsm_tests::workload::{
    Actor, Hold, Observer, SOLVER_LICENSE, Workload, WorkloadConfig, between, client_config,
    snapshot,
};
use lsm_tests::{Options, ProcCluster, SETTLE, cluster_alone, env_seed, env_u64, nemesis};
use nix::sys::signal::Signal;
use rand::SeedableRng as _;
use rand::seq::IndexedRandom as _;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

/// The lease of the workload's checkouts: far above the time the cluster is down in a
/// cut of all three nodes.
const TTL: Duration = Duration::from_secs(8);

/// How long a cut waits for the trapped node to sync.
const TRAP_WAIT: Duration = Duration::from_secs(3);

/// After a cut, the cluster must have a leader and serve a probe within this.
const LIVENESS: Duration = Duration::from_secs(30);

/// A cluster whose nodes keep their data on fault file systems.
struct PoweredCluster {
    cluster: ProcCluster,
    mounts: BTreeMap<u64, Mount>,
}

impl PoweredCluster {
    /// Starts three nodes, then moves each one's data directory under its own mount, on
    /// `disk`.
    async fn start(disk: Disk) -> PoweredCluster {
        if let Err(missing) = lsm_faultfs::check_support() {
            panic!("the power-loss test needs FUSE: {missing}");
        }
        let options = Options { license: SOLVER_LICENSE.to_string(), ..Options::default() };
        let mut cluster = ProcCluster::start_with_options(options).await;
        let ids = cluster.kit().ids();
        for &id in &ids {
            cluster.kill(id);
        }
        // Declared after the cluster, so dropped (unmounted) before its directory goes.
        let mut mounts = BTreeMap::new();
        for &id in &ids {
            let data: PathBuf = cluster.kit().node(id).data_dir().to_path_buf();
            let backing = cluster.dir().join(format!("node{id}.disk"));
            std::fs::rename(&data, &backing).expect("the node's data moves to its disk");
            std::fs::create_dir(&data).expect("the mount point");
            let mount = Mount::on(&backing, &data, disk).unwrap_or_else(|e| {
                panic!("the power-loss test cannot mount its file system: {e}")
            });
            mounts.insert(id, mount);
        }
        for &id in &ids {
            cluster.restart(id).await;
        }
        cluster.wait_for_leader().await;
        PoweredCluster { cluster, mounts }
    }

    /// Cuts the power of `ids`, at the moment node `trap` (one of them, if any) next
    /// waits for a sync, if one comes within [`TRAP_WAIT`]: SIGKILLs them, drops what
    /// their disks had not synced, reaps them, and starts them again. Whether the trap
    /// caught a sync, and the bytes dropped.
    async fn cut(&mut self, ids: &[u64], trap: Option<u64>) -> (bool, u64) {
        let wait = |id| tokio::task::block_in_place(|| self.mounts[&id].trap_next_sync(TRAP_WAIT));
        let caught = trap.is_some_and(wait);
        for &id in ids {
            self.cluster.signal(id, Signal::SIGKILL);
        }
        // The cut lets a trapped sync fail, so its process can end; whatever a dying
        // process still wrote after the cut goes with the second one.
        let mut dropped = ids.iter().map(|id| self.mounts[id].cut().bytes).sum();
        for &id in ids {
            self.cluster.kill(id);
        }
        dropped += ids.iter().map(|id| self.mounts[id].cut().bytes).sum::<u64>();
        for &id in ids {
            self.cluster.restart(id).await;
        }
        (caught, dropped)
    }

    /// What each node's file system has seen.
    fn stats(&self) -> BTreeMap<u64, Stats> {
        self.mounts.iter().map(|(&id, mount)| (id, mount.stats())).collect()
    }
}

impl Drop for PoweredCluster {
    /// Kills the nodes before their file systems are unmounted.
    fn drop(&mut self) {
        for id in self.cluster.live() {
            self.cluster.kill(id);
        }
        self.mounts.clear();
    }
}

/// Power cuts at seeded random moments, each to one, two or all three nodes (all three
/// in half of them), under a cycling workload; every property holds after every cut and
/// on the whole history, and the nodes end in one state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_of_one_two_or_all_nodes_loses_no_acknowledged_checkout() {
    let _alone = cluster_alone().await;
    let cuts = env_u64("LSM_POWER_CUTS").unwrap_or(30);
    let seed = env_seed("LSM_POWER_SEED");
    println!("power loss: LSM_POWER_SEED={seed} LSM_POWER_CUTS={cuts}");
    let mut powered = PoweredCluster::start(Disk::Honest).await;
    let checks = powered.cluster.checks(LIVENESS).await;
    let history = Arc::new(History::new());
    let nodes = powered.cluster.nodes();
    let group = ClientGroup::start("power", &nodes).await;
    let mut config = WorkloadConfig::cycling(6, TTL, seed);
    // Holds of up to two leases, so renewals go on across cuts.
    config.hold = Hold::Cycle {
        hold: (Duration::from_millis(500), 2 * TTL),
        pause: (Duration::from_millis(100), Duration::from_secs(1)),
    };
    let workload = Workload::start(&[&group], config, history.clone());
    let observer = Observer::start(nodes.clone(), history.clone(), Duration::from_millis(500));

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ids = powered.cluster.kit().ids();
    let mut by_size: BTreeMap<usize, u64> = BTreeMap::new();
    let mut by_node: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut dropped, mut trapped) = (0, 0);
    for cut in 1..=cuts {
        tokio::time::sleep(between(&mut rng, Duration::from_millis(200), Duration::from_secs(2)))
            .await;
        let size = *[1, 2, 3, 3].choose(&mut rng).expect("sizes");
        let mut victims: Vec<u64> = ids.choose_multiple(&mut rng, size).copied().collect();
        victims.sort_unstable();
        history.record(Event::Fault { what: format!("power cut {cut} of nodes {victims:?}") });
        let trap = victims.choose(&mut rng).copied();
        let (caught, bytes) = powered.cut(&victims, trap).await;
        trapped += u64::from(caught);
        dropped += bytes;
        history.record(Event::Heal { what: format!("power back on nodes {victims:?}") });
        *by_size.entry(size).or_default() += 1;
        for id in &victims {
            *by_node.entry(*id).or_default() += 1;
        }
        let served =
            nemesis::probe(&powered.cluster, &history, &format!("probe-{cut}"), LIVENESS).await;
        let report = Report::check(&history.entries(), &checks);
        assert!(
            served && report.ok(),
            "after power cut {cut} of nodes {victims:?} (LSM_POWER_SEED={seed}): probe served: \
             {served}; {report}"
        );
    }
    observer.stop().await;
    println!(
        "{cuts} power cuts (by nodes cut: {by_size:?}), {trapped} during a sync, \
         {dropped} unsynced bytes dropped"
    );

    workload.stop(Duration::from_secs(60)).await;
    let started = Instant::now();
    loop {
        let (features, checkouts) = powered.cluster.converged().await;
        if checkouts.is_empty() {
            assert!(features.iter().all(|f| f.in_use == 0), "{features:?}");
            break;
        }
        let within = TTL + SETTLE;
        assert!(started.elapsed() < within, "checkouts left after the run: {checkouts:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for id in powered.cluster.live() {
        let cluster = &powered.cluster;
        snapshot(cluster.http(), id, cluster.addr(id), &history).await;
    }
    let report = Report::check(&history.entries(), &checks);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("lsm-faults");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("power-loss.jsonl");
    let written = history.write_jsonl(&path);
    println!("power-loss: {report}history: {} ({written:?})", path.display());
    assert!(report.ok(), "LSM_POWER_SEED={seed}: {report}the history is in {}", path.display());
    assert!(report.count("granted") > 0, "{report}");
    assert_eq!(by_size.values().sum::<u64>(), cuts);
    assert!(trapped > 0, "no cut came during a sync");
    // The nodes' data went through the fault file systems, synced.
    for (id, stats) in powered.stats() {
        println!("node {id}'s disk: {stats:?}");
        assert!(stats.writes > 0 && stats.syncs > 0, "node {id} wrote past its disk: {stats:?}");
        assert_eq!(stats.cuts, 2 * by_node[&id], "node {id}'s cuts, two each");
    }
}

/// The same cluster on disks that ignore syncs: one power cut of all three nodes takes
/// a held checkout with it, and the checks say so. The power-loss test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_on_disks_that_ignore_syncs_is_caught_by_the_checks() {
    let _alone = cluster_alone().await;
    let mut powered = PoweredCluster::start(Disk::IgnoresSync).await;
    let checks = powered.cluster.checks(LIVENESS).await;
    let history = Arc::new(History::new());
    let config = client_config(powered.cluster.addrs(), "holder", SETTLE);
    let transport = Arc::new(HyperTransport::tcp(Duration::from_secs(1)));
    let mut holder = Actor::new("holder", config, transport, history.clone());
    let items = vec![ItemBody::tokens("abaqus".parse().expect("a feature"), 2)];
    let lease = holder.checkout(items, "abaqus:2".into(), TTL, None).await;
    let lease = lease.expect("the checkout is granted");
    let report = Report::check(&history.entries(), &checks);
    assert!(report.ok(), "before the cut: {report}");

    let ids = powered.cluster.kit().ids();
    history.record(Event::Fault { what: format!("power cut of nodes {ids:?}") });
    let (_, dropped) = powered.cut(&ids, None).await;
    history.record(Event::Heal { what: format!("power back on nodes {ids:?}") });
    assert!(dropped > 0, "the cut dropped nothing");
    powered.cluster.wait_for_leader().await;
    let started = Instant::now();
    let mut snapshots = 0;
    while snapshots == 0 {
        assert!(started.elapsed() < SETTLE, "no node answered a snapshot after the cut");
        for id in powered.cluster.live() {
            let cluster = &powered.cluster;
            snapshots +=
                usize::from(snapshot(cluster.http(), id, cluster.addr(id), &history).await);
        }
    }
    holder.release(lease).await;
    let report = Report::check(&history.entries(), &checks);
    println!("on disks that ignore syncs: {report}");
    let lost: Vec<_> = report.of(Property::Durability).collect();
    assert!(!lost.is_empty(), "the checks missed the lost checkout: {report}");
}
