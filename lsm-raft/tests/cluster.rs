//! In-process cluster tests: elections, failover, partitions, restarts, snapshots,
//! membership changes and crashes, each checking that every token is accounted for.
//!
//! Raft timers run on real time (a few hundred milliseconds per election); lease time runs
//! on the cluster's manual clock. Every wait is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lsm_core::{
    CheckoutFilter, CheckoutId, CheckoutRequest, ClientId, Command, Demand, Entitlement, Install,
    Item, Op, Output, Request, Response, State,
};
use lsm_raft::cluster::{Cluster, Storage};
use lsm_raft::error::Error;
use lsm_raft::node::Timing;

const SECOND: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(15);
const TOKENS: u64 = 100;

/// A client of the cluster with its own id and request numbers.
struct Client {
    id: ClientId,
    seq: u64,
}

impl Client {
    fn new(name: &str) -> Client {
        Client { id: name.parse().unwrap(), seq: 0 }
    }

    fn next(&mut self, op: Op) -> Request {
        self.seq += 1;
        Request { client: self.id.clone(), seq: self.seq, ack: self.seq, op }
    }
}

fn install() -> Op {
    Op::Install(Install {
        entitlements: vec![Entitlement {
            feature: "lsdyna".parse().unwrap(),
            license: "test".parse().unwrap(),
            tokens_total: TOKENS,
            starts_at_ms: 0,
            expires_at_ms: u64::MAX,
            cost: Default::default(),
            max_borrow_ms: 0,
        }],
        policy: Default::default(),
    })
}

fn checkout(tokens: u64, lease_ttl_ms: u64) -> Op {
    Op::Checkout(CheckoutRequest {
        items: vec![Item {
            feature: "lsdyna".parse().unwrap(),
            demand: Demand::Tokens(tokens),
            pool: None,
        }],
        user: "jane".parse().unwrap(),
        host: "node1".parse().unwrap(),
        job: None,
        lease_ttl_ms,
        borrow_until_ms: None,
        wait: None,
    })
}

fn granted(output: &Output) -> CheckoutId {
    match &output.response {
        Response::Granted(grant) => grant.id,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Starts a three-node cluster with the demo license installed.
async fn cluster(storage: Storage, seed: u64) -> (Cluster, Client) {
    let cluster = Cluster::start(3, storage, seed).await.expect("the cluster starts");
    let mut admin = Client::new("admin");
    let out = cluster.request(1, admin.next(install())).await.unwrap();
    assert_eq!(out.response, Response::Installed { features: 1 });
    (cluster, admin)
}

/// Every running node's state hash, once all have applied the same entries. Nodes are
/// polled until they agree (or `WAIT` passes, and the caller's assertion reports them).
async fn converged_hashes(cluster: &Cluster) -> BTreeMap<u64, String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let leader = cluster.wait_for_leader(WAIT).await.unwrap();
        let last = cluster.node(leader).status().last_log_index.unwrap();
        cluster.wait_applied(last, WAIT).await.unwrap();
        let hashes: BTreeMap<u64, String> = (cluster.running().into_iter())
            .map(|id| (id, cluster.node(id).read_local(State::state_hash_hex)))
            .collect();
        let distinct: BTreeSet<&String> = hashes.values().collect();
        if distinct.len() == 1 || std::time::Instant::now() > deadline {
            return hashes;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn in_use(state: &State) -> u64 {
    state.features_status().iter().map(|f| f.in_use).sum()
}

fn live_ids(state: &State) -> BTreeSet<CheckoutId> {
    let all = CheckoutFilter::default();
    state.list_checkouts(&all).iter().map(|c| c.id).collect()
}

fn assert_all_equal(hashes: &BTreeMap<u64, String>) {
    let distinct: BTreeSet<&String> = hashes.values().collect();
    assert_eq!(distinct.len(), 1, "nodes disagree: {hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_elects_a_leader_and_replicates_every_command() {
    let (mut cluster, _) = cluster(Storage::Redb, 1).await;
    let mut job = Client::new("job");
    for _ in 0..5 {
        granted(&cluster.request(2, job.next(checkout(3, 30_000))).await.unwrap());
    }
    let hashes = converged_hashes(&cluster).await;
    assert_eq!(hashes.len(), 3);
    assert_all_equal(&hashes);
    for id in cluster.running() {
        assert_eq!(cluster.node(id).read_local(in_use), 15, "node {id}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_a_write_with_the_leaders_address() {
    let (mut cluster, _) = cluster(Storage::Memory, 2).await;
    let leader = cluster.wait_for_leader(WAIT).await.unwrap();
    let follower = cluster.running().into_iter().find(|id| *id != leader).unwrap();
    let mut job = Client::new("job");
    let err = cluster.node(follower).write(Command::Request(job.next(checkout(1, 30_000)))).await;
    match err {
        Err(Error::NotLeader { leader_id, leader_addr }) => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(leader_addr.as_deref(), Some(cluster.node(leader).addr()));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    assert_eq!(cluster.node(leader).read_local(in_use), 0, "the refused write did nothing");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_loses_no_checkout_and_grants_nothing_twice() {
    let (mut cluster, _) = cluster(Storage::Redb, 3).await;
    let mut jobs: Vec<Client> = (0..6).map(|i| Client::new(&format!("job{i}"))).collect();
    let mut held = BTreeMap::new();
    for job in &mut jobs {
        let id = granted(&cluster.request(1, job.next(checkout(10, 60_000))).await.unwrap());
        held.insert(job.id.clone(), id);
    }
    let before = converged_hashes(&cluster).await;
    assert_all_equal(&before);
    let old = cluster.wait_for_leader(WAIT).await.unwrap();
    cluster.crash(old).await;
    // The election takes real time; the lease clock moves on too, by 20 s.
    cluster.clock.advance(20_000);
    let new = cluster.wait_for_leader(WAIT).await.unwrap();
    assert_ne!(new, old);
    for job in &mut jobs {
        let id = held[&job.id];
        let out = cluster.request(new, job.next(Op::Heartbeat(id))).await.unwrap();
        assert!(matches!(out.response, Response::Renewed(_)), "{id:?}: {:?}", out.response);
    }
    let after = converged_hashes(&cluster).await;
    assert_all_equal(&after);
    let state_ids = cluster.node(new).read_local(live_ids);
    let acknowledged: BTreeSet<CheckoutId> = held.values().copied().collect();
    assert_eq!(state_ids, acknowledged, "every acknowledged checkout, and nothing else");
    assert_eq!(cluster.node(new).read_local(in_use), 60);
    // The remaining 40 tokens can be taken once, not more.
    let mut late = Client::new("late");
    granted(&cluster.request(new, late.next(checkout(40, 60_000))).await.unwrap());
    let out = cluster.request(new, late.next(checkout(1, 60_000))).await.unwrap();
    assert!(matches!(out.response, Response::Denied(_)), "{:?}", out.response);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_an_election_that_outlasts_them() {
    let (mut cluster, _) = cluster(Storage::Memory, 4).await;
    let mut job = Client::new("job");
    let id = granted(&cluster.request(1, job.next(checkout(5, 3_000))).await.unwrap());
    let old = cluster.wait_for_leader(WAIT).await.unwrap();
    cluster.crash(old).await;
    // The lease was due 3 s after the grant; the election "took" 2.9 s of lease time and
    // the client's next heartbeat reaches the new leader just after the old expiry.
    cluster.clock.advance(3_100);
    let new = cluster.wait_for_leader(WAIT).await.unwrap();
    let out = cluster.request(new, job.next(Op::Heartbeat(id))).await.unwrap();
    assert!(matches!(out.response, Response::Renewed(_)), "{:?}", out.response);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranded_leader_returns_as_a_follower_and_points_to_the_new_leader() {
    let (mut cluster, _) = cluster(Storage::Memory, 5).await;
    let mut job = Client::new("job");
    granted(&cluster.request(1, job.next(checkout(7, 60_000))).await.unwrap());
    let old = cluster.wait_for_leader(WAIT).await.unwrap();
    let others: BTreeSet<u64> = cluster.running().into_iter().filter(|id| *id != old).collect();
    cluster.network.isolate(old);
    let new = cluster.wait_for_leader_among(&others, WAIT).await.unwrap();
    granted(&cluster.request(new, job.next(checkout(3, 60_000))).await.unwrap());
    cluster.network.heal();
    let all = cluster.running();
    let leader = cluster.wait_for_leader_among(&all, WAIT).await.unwrap();
    assert_ne!(leader, old, "the old leader's stale term cannot win");
    let hashes = converged_hashes(&cluster).await;
    assert_all_equal(&hashes);
    assert_eq!(cluster.node(old).read_local(in_use), 10);
    match cluster.node(old).write(Command::Request(job.next(checkout(1, 60_000)))).await {
        Err(Error::NotLeader { leader_id, leader_addr }) => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(leader_addr.as_deref(), Some(cluster.node(leader).addr()));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_grants_nothing_while_the_majority_serves() {
    let (mut cluster, _) = cluster(Storage::Memory, 6).await;
    let old = cluster.wait_for_leader(WAIT).await.unwrap();
    let majority: Vec<u64> = cluster.running().into_iter().filter(|id| *id != old).collect();
    cluster.network.partition(&[&[old], &majority]);
    let mut job = Client::new("job");
    // The isolated leader cannot commit: the write times out or is refused, never granted.
    let stuck = tokio::time::timeout(
        2 * SECOND,
        cluster.node(old).write(Command::Request(job.next(checkout(1, 60_000)))),
    )
    .await;
    assert!(!matches!(stuck, Ok(Ok(_))), "a minority granted: {stuck:?}");
    let majority_set: BTreeSet<u64> = majority.iter().copied().collect();
    let new = cluster.wait_for_leader_among(&majority_set, WAIT).await.unwrap();
    let mut other = Client::new("other");
    granted(&cluster.request(new, other.next(checkout(4, 60_000))).await.unwrap());
    assert!(
        cluster.node(old).read(in_use).await.is_err(),
        "a linearizable read on the minority must fail"
    );
    cluster.network.heal();
    let hashes = converged_hashes(&cluster).await;
    assert_all_equal(&hashes);
    // Only the majority's grant exists (the minority's entry was never committed).
    assert_eq!(cluster.node(old).read_local(in_use), 4);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_restarts_from_disk_with_nothing_lost() {
    let (mut cluster, _) = cluster(Storage::Redb, 7).await;
    let mut job = Client::new("job");
    let mut ids = BTreeSet::new();
    for _ in 0..20 {
        ids.insert(granted(&cluster.request(1, job.next(checkout(2, 600_000))).await.unwrap()));
    }
    let before = converged_hashes(&cluster).await;
    for id in cluster.running() {
        cluster.crash(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await.unwrap();
    }
    let after = converged_hashes(&cluster).await;
    assert_all_equal(&after);
    let leader = cluster.wait_for_leader(WAIT).await.unwrap();
    assert_eq!(cluster.node(leader).read_local(live_ids), ids);
    assert_eq!(cluster.node(leader).read_local(in_use), 40);
    // Before the restart the three nodes agreed too.
    assert_all_equal(&before);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_through_a_snapshot() {
    // Snapshots keep no log behind them, so the lagging node cannot catch up from the log.
    let timing = Timing { keep_after_snapshot: 0, ..Timing::default() };
    let mut cluster = Cluster::start_with(3, Storage::Memory, 8, timing).await.unwrap();
    let mut admin = Client::new("admin");
    cluster.request(1, admin.next(install())).await.unwrap();
    let leader = cluster.wait_for_leader(WAIT).await.unwrap();
    let lagging = cluster.running().into_iter().find(|id| *id != leader).unwrap();
    cluster.network.isolate(lagging);
    let rest: BTreeSet<u64> = cluster.running().into_iter().filter(|id| *id != lagging).collect();
    let leader = cluster.wait_for_leader_among(&rest, WAIT).await.unwrap();
    let mut job = Client::new("job");
    for _ in 0..30 {
        granted(&cluster.request(leader, job.next(checkout(1, 600_000))).await.unwrap());
    }
    cluster.node(leader).trigger_snapshot().await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while cluster.node(leader).raft().metrics().borrow().purged.is_none() {
        assert!(std::time::Instant::now() < deadline, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.network.heal();
    let hashes = converged_hashes(&cluster).await;
    assert_all_equal(&hashes);
    assert_eq!(cluster.node(lagging).read_local(in_use), 30);
    let snapshot = cluster.node(lagging).raft().metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "the lagging node installed a snapshot");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_to_five_and_shrinks_to_three_while_serving() {
    let (mut cluster, _) = cluster(Storage::Memory, 9).await;
    let mut job = Client::new("job");
    granted(&cluster.request(1, job.next(checkout(1, 600_000))).await.unwrap());
    for id in [4, 5] {
        cluster.boot(id).await.unwrap();
        let leader = cluster.wait_for_leader_among(&[1, 2, 3].into(), WAIT).await.unwrap();
        let addr = cluster.node(id).addr().to_string();
        cluster.node(leader).add_learner(id, addr).await.unwrap();
        granted(&cluster.request(leader, job.next(checkout(1, 600_000))).await.unwrap());
    }
    let leader = cluster.wait_for_leader_among(&[1, 2, 3].into(), WAIT).await.unwrap();
    cluster.node(leader).change_membership([1, 2, 3, 4, 5].into()).await.unwrap();
    granted(&cluster.request(leader, job.next(checkout(1, 600_000))).await.unwrap());
    let voters = cluster.node(leader).status().members.iter().filter(|m| m.voter).count();
    assert_eq!(voters, 5);
    let hashes = converged_hashes(&cluster).await;
    assert_eq!(hashes.len(), 5);
    assert_all_equal(&hashes);
    // Back to three voters, keeping 3, 4 and 5, while still serving.
    let leader = cluster.wait_for_leader(WAIT).await.unwrap();
    cluster.node(leader).change_membership([3, 4, 5].into()).await.unwrap();
    let leader = cluster.wait_for_leader_among(&[3, 4, 5].into(), WAIT).await.unwrap();
    granted(&cluster.request(leader, job.next(checkout(1, 600_000))).await.unwrap());
    let members: BTreeSet<u64> =
        cluster.node(leader).status().members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    assert_eq!(members, [3, 4, 5].into());
    assert_eq!(cluster.node(leader).read_local(in_use), 5);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_flush_loses_only_unacknowledged_entries() {
    let (mut cluster, _) = cluster(Storage::Memory, 10).await;
    for id in cluster.running() {
        cluster.memory_disk(id).unwrap().set_flush_latency(Duration::from_millis(30));
    }
    let leader = cluster.wait_for_leader(WAIT).await.unwrap();
    let node = cluster.node(leader).clone();
    let mut writers = Vec::new();
    for w in 0..8 {
        let node = node.clone();
        writers.push(tokio::spawn(async move {
            let mut job = Client::new(&format!("writer{w}"));
            let mut acknowledged = Vec::new();
            for _ in 0..50 {
                match node.write(Command::Request(job.next(checkout(1, 600_000)))).await {
                    Ok(out) => acknowledged.push(granted(&out)),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Every node crashes at once, each losing whatever it had not flushed.
    let lost_writes: usize = (cluster.running().iter())
        .map(|id| cluster.memory_disk(*id).unwrap().pending_writes())
        .sum();
    for id in cluster.running() {
        cluster.crash(id).await;
    }
    let mut acknowledged = BTreeSet::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(!acknowledged.is_empty(), "some writes were acknowledged before the crash");
    for id in 1..=3 {
        cluster.restart(id).await.unwrap();
    }
    let hashes = converged_hashes(&cluster).await;
    assert_all_equal(&hashes);
    let leader = cluster.wait_for_leader(WAIT).await.unwrap();
    let live = cluster.node(leader).read_local(live_ids);
    let missing: Vec<_> = acknowledged.difference(&live).collect();
    assert!(missing.is_empty(), "acknowledged checkouts lost: {missing:?}");
    eprintln!(
        "{} acknowledged, {} live after restart, {lost_writes} unflushed writes dropped",
        acknowledged.len(),
        live.len()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flush_covers_many_appends() {
    let (mut cluster, _) = cluster(Storage::Memory, 11).await;
    let leader = cluster.wait_for_leader(WAIT).await.unwrap();
    let disk = cluster.memory_disk(leader).unwrap();
    disk.set_flush_latency(Duration::from_millis(5));
    let before = disk.flushes();
    let node = cluster.node(leader).clone();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut job = Client::new(&format!("w{w}"));
            for _ in 0..5 {
                node.write(Command::Request(job.next(checkout(1, 600_000)))).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let flushes = disk.flushes() - before;
    assert!(flushes < 160, "160 writes took {flushes} flushes: no group commit");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrapping_an_existing_cluster_again_is_refused() {
    let (mut cluster, _) = cluster(Storage::Memory, 12).await;
    for id in cluster.running() {
        let members = [(id, cluster.node(id).addr().to_string())].into();
        let again = cluster.node(id).bootstrap(members).await;
        assert_eq!(again, Err(Error::AlreadyInitialized), "node {id}");
    }
    assert_eq!(cluster.node(1).read_local(|s| s.features_status().len()), 1);
    cluster.shutdown().await;
}
