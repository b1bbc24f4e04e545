//! The peer network: the wire format, the envelope checks, the error mapping of both
//! transports, and small clusters that elect, replicate and install snapshots over each.
//!
//! HTTP tests listen on 127.0.0.1 only. Every wait is bounded, and servers end with their
//! test's runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lsm_core::{Command, Limits};
use lsm_raft::backend::{Backend, MemoryBackend};
use lsm_raft::log_store::LogStore;
use lsm_raft::network::http::{HttpNetwork, router};
use lsm_raft::network::memory::MemoryNetwork;
use lsm_raft::network::{
    Envelope, MAX_MESSAGE_BYTES, Rejection, RpcKind, WIRE_VERSION, WireError, decode, encode,
    serve_rpc,
};
use lsm_raft::state_machine::StateMachineStore;
use lsm_raft::types::{Entry, LogId, Node, NodeId, Proposal, Raft, TypeConfig, Vote};
use openraft::error::{RPCError, RaftError};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, VoteRequest, VoteResponse};
use openraft::{
    CommittedLeaderId, Config, EntryPayload, Membership, RaftNetwork, RaftNetworkFactory,
    ServerState,
};
use rand::{Rng, SeedableRng};

/// How long any wait for the cluster may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

const CLUSTER: &str = "test-cluster";

fn config() -> Arc<Config> {
    let config = Config {
        cluster_name: CLUSTER.into(),
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        // Small chunks, so that a snapshot takes several of them.
        snapshot_max_chunk_size: 16,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    Arc::new(config.validate().expect("a valid config"))
}

/// A node with in-memory storage.
async fn raft<N: RaftNetworkFactory<TypeConfig>>(id: NodeId, network: N) -> Raft {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let sm = StateMachineStore::open(backend.clone(), Limits::default()).expect("a state machine");
    Raft::new(id, config(), network, LogStore::new(backend), sm).await.expect("a raft node")
}

fn node(addr: impl Into<String>) -> Node {
    Node { addr: addr.into() }
}

fn option(ttl: Duration) -> RPCOption {
    RPCOption::new(ttl)
}

fn vote_request(term: u64, candidate: NodeId) -> VoteRequest<NodeId> {
    VoteRequest { vote: Vote::new(term, candidate), last_log_id: None }
}

fn log_id(term: u64, leader: NodeId, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, leader), index)
}

fn tick(now_ms: u64) -> Proposal {
    Proposal { now_ms, commands: vec![Command::Tick] }
}

/// Collects what `tracing` logs on this thread while the guard lives.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves `app` on a fresh loopback port until the test's runtime ends.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("the port's address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A loopback address with nothing listening on it.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("the port's address")
}

/// Waits until some node of `rafts` is leader, and returns its index in `rafts`.
async fn leader(rafts: &[Raft]) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for (i, raft) in rafts.iter().enumerate() {
            let metrics = raft.metrics().borrow().clone();
            if metrics.state == ServerState::Leader && metrics.current_leader == Some(metrics.id) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `count` proposals through `leader` and returns the index of the last.
async fn write(leader: &Raft, count: u64) -> u64 {
    let mut last = 0;
    for i in 0..count {
        let written = tokio::time::timeout(PATIENCE, leader.client_write(tick(1_000 + i)))
            .await
            .expect("the write commits in time")
            .expect("the write commits");
        last = written.log_id.index;
    }
    last
}

async fn applied(raft: &Raft, index: u64) {
    raft.wait(Some(PATIENCE))
        .applied_index_at_least(Some(index), "the node applies the writes")
        .await
        .expect("the node catches up");
}

// The wire format.

#[test]
fn envelopes_roundtrip() {
    let vote = Envelope { cluster_id: CLUSTER.into(), from: 1, target: 2, rpc: vote_request(3, 1) };
    let bytes = encode(&vote).expect("encodes");
    assert_eq!(bytes[0], WIRE_VERSION);
    assert_eq!(decode::<Envelope<VoteRequest<NodeId>>>(&bytes), Ok(vote));

    let members = BTreeMap::from([(1, node("a:1")), (2, node("b:2"))]);
    let entries: Vec<Entry> = vec![
        Entry { log_id: log_id(3, 1, 5), payload: EntryPayload::Blank },
        Entry { log_id: log_id(3, 1, 6), payload: EntryPayload::Normal(tick(42)) },
        Entry {
            log_id: log_id(3, 1, 7),
            payload: EntryPayload::Membership(Membership::new(
                vec![BTreeSet::from([1, 2])],
                members,
            )),
        },
    ];
    let append = Envelope {
        cluster_id: "another cluster, with ünïcode".into(),
        from: 1,
        target: u64::MAX,
        rpc: AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 1, 4)),
            leader_commit: Some(log_id(2, 1, 4)),
            entries: entries.clone(),
        },
    };
    let bytes = encode(&append).expect("encodes");
    let back: Envelope<AppendEntriesRequest<TypeConfig>> = decode(&bytes).expect("decodes");
    assert_eq!(back.cluster_id, append.cluster_id);
    assert_eq!((back.from, back.target), (1, u64::MAX));
    assert_eq!(back.rpc.vote, append.rpc.vote);
    assert_eq!(back.rpc.prev_log_id, append.rpc.prev_log_id);
    assert_eq!(back.rpc.leader_commit, append.rpc.leader_commit);
    assert_eq!(back.rpc.entries, entries);
    assert_eq!(encode(&back).expect("encodes"), bytes);

    // A refusal travels too.
    let rejection = Rejection::WrongTarget { expected: 1, got: 2 };
    assert_eq!(decode::<Rejection>(&encode(&rejection).expect("encodes")), Ok(rejection));
}

#[test]
fn bad_messages_are_errors_not_panics() {
    let vote = Envelope { cluster_id: CLUSTER.into(), from: 1, target: 2, rpc: vote_request(3, 1) };
    let bytes = encode(&vote).expect("encodes");
    type Vote = Envelope<VoteRequest<NodeId>>;

    assert_eq!(decode::<Vote>(&[]), Err(WireError::Empty));
    let mut other_version = bytes.clone();
    other_version[0] = WIRE_VERSION + 1;
    assert_eq!(decode::<Vote>(&other_version), Err(WireError::Version { got: WIRE_VERSION + 1 }));
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(decode::<Vote>(&longer), Err(WireError::Trailing(1)));
    for end in 1..bytes.len() {
        assert!(decode::<Vote>(&bytes[..end]).is_err(), "a message cut at {end} decodes");
    }

    // Random bytes after a valid version byte, including huge length prefixes.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for _ in 0..2_000 {
        let len = rng.random_range(1..64);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        junk[0] = WIRE_VERSION;
        let _ = decode::<Envelope<AppendEntriesRequest<TypeConfig>>>(&junk);
        let _ = decode::<Vote>(&junk);
        let _ = decode::<Rejection>(&junk);
    }
}

// The receiving side, called directly.

#[tokio::test]
async fn the_receiver_refuses_and_logs_wrong_cluster_target_or_garbage() {
    let network = MemoryNetwork::new(CLUSTER, 1);
    let raft = raft(1, network.factory(1)).await;
    let logs = Logs::default();
    let _guard = logs.capture();

    let request = |cluster: &str, target: NodeId| {
        let envelope =
            Envelope { cluster_id: cluster.into(), from: 2, target, rpc: vote_request(1, 2) };
        encode(&envelope).expect("encodes")
    };

    let refused = serve_rpc(&raft, CLUSTER, 1, RpcKind::Vote, &request("other", 1)).await;
    assert_eq!(
        refused,
        Err(Rejection::WrongCluster { expected: CLUSTER.into(), got: "other".into() })
    );
    // The cluster is checked first.
    let refused = serve_rpc(&raft, CLUSTER, 1, RpcKind::Vote, &request("other", 3)).await;
    assert!(matches!(refused, Err(Rejection::WrongCluster { .. })), "{refused:?}");
    let refused = serve_rpc(&raft, CLUSTER, 1, RpcKind::Vote, &request(CLUSTER, 3)).await;
    assert_eq!(refused, Err(Rejection::WrongTarget { expected: 1, got: 3 }));
    let refused = serve_rpc(&raft, CLUSTER, 1, RpcKind::Vote, b"\x01garbage").await;
    assert!(matches!(refused, Err(Rejection::Malformed(_))), "{refused:?}");
    // A vote request is not an append request.
    let refused = serve_rpc(&raft, CLUSTER, 1, RpcKind::Append, &request(CLUSTER, 1)).await;
    assert!(matches!(refused, Err(Rejection::Malformed(_))), "{refused:?}");

    let text = logs.text();
    assert!(text.contains("refused a peer request"), "{text}");
    assert!(text.contains("cluster \"other\""), "{text}");
    assert!(text.contains("the request is for node 3, but this is node 1"), "{text}");
    assert!(text.contains("refused a malformed peer request"), "{text}");

    let answer = serve_rpc(&raft, CLUSTER, 1, RpcKind::Vote, &request(CLUSTER, 1)).await;
    let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
        decode(&answer.expect("served")).expect("decodes");
    assert!(answer.expect("raft answers").vote_granted);
    raft.shutdown().await.expect("shuts down");
}

// HTTP.

#[tokio::test]
async fn http_carries_votes_and_maps_refusals() {
    let raft = raft(1, HttpNetwork::new(CLUSTER, 1).expect("a client")).await;
    let addr = serve(router(raft.clone(), CLUSTER.into(), 1)).await;
    let ttl = option(Duration::from_secs(5));

    let mut ours = HttpNetwork::new(CLUSTER, 2).expect("a client");
    let mut peer = ours.new_client(1, &node(addr.to_string())).await;
    let answer = peer.vote(vote_request(1, 2), ttl.clone()).await.expect("node 1 answers");
    assert!(answer.vote_granted);

    // Another cluster: refused, and the caller learns why.
    let mut theirs = HttpNetwork::new("other", 2).expect("a client");
    let mut stranger = theirs.new_client(1, &node(addr.to_string())).await;
    let error = stranger.vote(vote_request(2, 2), ttl.clone()).await.expect_err("refused");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    assert!(error.to_string().contains("belongs to cluster \"test-cluster\""), "{error}");

    // The address is node 1's, but the caller wants node 3.
    let mut misdirected = ours.new_client(3, &node(addr.to_string())).await;
    let error = misdirected.vote(vote_request(2, 2), ttl.clone()).await.expect_err("refused");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    assert!(error.to_string().contains("the request is for node 3, but this is node 1"), "{error}");

    // Garbage gets a 400 with the reason.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/raft/append"))
        .body(vec![WIRE_VERSION, 0xff, 0xff])
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    let body = response.bytes().await.expect("a body");
    assert!(matches!(decode::<Rejection>(&body), Ok(Rejection::Malformed(_))));

    // A body over the limit gets a 413 before it is decoded.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/raft/snapshot"))
        .body(vec![0u8; MAX_MESSAGE_BYTES + 1])
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);

    raft.shutdown().await.expect("shuts down");
    // A Raft that stopped answers with a remote error, not silence.
    let error = peer.vote(vote_request(3, 2), ttl).await.expect_err("node 1 has stopped");
    assert!(matches!(error, RPCError::RemoteError(_)), "{error:?}");
}

#[tokio::test]
async fn http_unreachable_peer_fails_quickly() {
    let mut network = HttpNetwork::new(CLUSTER, 1).expect("a client");
    let mut peer = network.new_client(2, &node(dead_addr().to_string())).await;
    let started = Instant::now();
    let error = peer
        .vote(vote_request(1, 1), option(Duration::from_secs(10)))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    // An address that is not one is unreachable too, not a panic.
    let mut peer = network.new_client(3, &node("not an address")).await;
    let error = peer
        .vote(vote_request(1, 1), option(Duration::from_secs(1)))
        .await
        .expect_err("not an address");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
}

#[tokio::test]
async fn http_silent_peer_times_out_at_the_hard_ttl() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("the port's address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });

    let mut network = HttpNetwork::new(CLUSTER, 1).expect("a client");
    let mut peer = network.new_client(2, &node(addr.to_string())).await;
    let ttl = Duration::from_millis(300);
    let started = Instant::now();
    let error = peer.vote(vote_request(1, 1), option(ttl)).await.expect_err("no answer");
    let took = started.elapsed();
    match &error {
        RPCError::Timeout(timeout) => {
            assert_eq!((timeout.id, timeout.target, timeout.timeout), (1, 2, ttl));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took >= ttl && took < ttl * 5, "took {took:?}");
}

#[tokio::test]
async fn http_other_servers_answers_are_errors() {
    let app = axum::Router::new().route(
        "/raft/append",
        axum::routing::post(|| async { axum::http::StatusCode::PAYLOAD_TOO_LARGE }),
    );
    let addr = serve(app).await;
    let mut network = HttpNetwork::new(CLUSTER, 1).expect("a client");
    let mut peer = network.new_client(2, &node(addr.to_string())).await;
    let ttl = option(Duration::from_secs(5));

    // A 413 for an append of several entries asks openraft to send fewer.
    let entries: Vec<Entry> = (1..=10)
        .map(|i| Entry { log_id: log_id(1, 1, i), payload: EntryPayload::Normal(tick(i)) })
        .collect();
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        prev_log_id: None,
        leader_commit: None,
        entries,
    };
    let error = peer.append_entries(append, ttl.clone()).await.expect_err("too large");
    match &error {
        RPCError::PayloadTooLarge(too_large) => {
            assert!((1..10).contains(&too_large.entries_hint()), "{too_large}");
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }

    // A 404 with a body that is not a refusal.
    let error = peer.vote(vote_request(1, 1), ttl).await.expect_err("no such route");
    assert!(matches!(error, RPCError::Network(_)), "{error:?}");
    assert!(error.to_string().contains("404"), "{error}");
}

#[tokio::test]
async fn http_cluster_replicates_and_sends_snapshots_in_chunks() {
    let mut rafts = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=4 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("the port's address");
        let raft = raft(id, HttpNetwork::new(CLUSTER, id).expect("a client")).await;
        let app = router(raft.clone(), CLUSTER.into(), id);
        tokio::spawn(async move { axum::serve(listener, app).await });
        members.insert(id, node(addr.to_string()));
        rafts.push(raft);
    }
    let learner = members.remove(&4).expect("node 4");

    rafts[0].initialize(members).await.expect("the cluster initializes");
    let voters = &rafts[..3];
    let leader = &voters[leader(voters).await];
    let last = write(leader, 20).await;
    for raft in voters {
        applied(raft, last).await;
    }

    // Snapshot and purge the log, so that node 4 can only catch up from the snapshot.
    leader.trigger().snapshot().await.expect("snapshot triggered");
    leader
        .wait(Some(PATIENCE))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "the log is purged")
        .await
        .expect("the leader purges its log");
    leader.add_learner(4, learner, true).await.expect("node 4 joins");
    applied(&rafts[3], last).await;
    let metrics = rafts[3].metrics().borrow().clone();
    assert!(metrics.snapshot.is_some_and(|s| s.index >= last), "{metrics:?}");

    for raft in &rafts {
        raft.shutdown().await.expect("shuts down");
    }
}

// The in-memory network.

async fn memory_cluster(network: &MemoryNetwork, ids: &[NodeId]) -> Vec<Raft> {
    let mut rafts = Vec::new();
    for &id in ids {
        let raft = raft(id, network.factory(id)).await;
        network.register(id, raft.clone());
        rafts.push(raft);
    }
    rafts
}

fn members(ids: &[NodeId]) -> BTreeMap<NodeId, Node> {
    ids.iter().map(|&id| (id, node(format!("memory-{id}")))).collect()
}

#[tokio::test]
async fn memory_refusals_crashes_drops_and_delays_map_to_errors() {
    let network = MemoryNetwork::new(CLUSTER, 1);
    let rafts = memory_cluster(&network, &[1, 2]).await;
    let mut factory = network.factory(1);
    let mut peer = factory.new_client(2, &node("memory-2")).await;
    let ttl = Duration::from_millis(200);

    let answer = peer.vote(vote_request(1, 1), option(ttl)).await.expect("node 2 answers");
    assert!(answer.vote_granted);

    // Node 2 believes it is in another cluster.
    network.register_in_cluster(2, rafts[1].clone(), "other");
    let error = peer.vote(vote_request(2, 1), option(ttl)).await.expect_err("refused");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    assert!(error.to_string().contains("cluster \"other\""), "{error}");

    // Node 2's Raft answers for node 3.
    network.register(2, rafts[1].clone());
    network.register(3, rafts[1].clone());
    let mut misdirected = factory.new_client(3, &node("memory-3")).await;
    let error = misdirected.vote(vote_request(2, 1), option(ttl)).await.expect_err("refused");
    assert!(error.to_string().contains("the request is for node 3, but this is node 2"), "{error}");

    // A crashed node is unreachable at once.
    network.unregister(2);
    let started = Instant::now();
    let error = peer.vote(vote_request(2, 1), option(ttl)).await.expect_err("node 2 is down");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    assert!(started.elapsed() < ttl);
    network.register(2, rafts[1].clone());

    // A dropped message is heard of only when the hard TTL runs out.
    network.set_drop_rate(1.0);
    let started = Instant::now();
    let error = peer.vote(vote_request(2, 1), option(ttl)).await.expect_err("dropped");
    assert!(matches!(error, RPCError::Timeout(_)), "{error:?}");
    assert!(started.elapsed() >= ttl);
    network.set_drop_rate(0.0);

    // So is an answer that takes longer than the hard TTL.
    network.set_delay(ttl);
    let error = peer.vote(vote_request(2, 1), option(ttl)).await.expect_err("too slow");
    assert!(matches!(error, RPCError::Timeout(_)), "{error:?}");
    network.set_delay(Duration::ZERO);
    let answer = peer.vote(vote_request(3, 1), option(ttl)).await.expect("node 2 answers");
    assert!(answer.vote_granted);

    for raft in &rafts {
        raft.shutdown().await.expect("shuts down");
    }
}

/// Waits until node `raft` has seen a vote of term `term` or later.
async fn term_at_least(raft: &Raft, term: u64) {
    raft.wait(Some(PATIENCE))
        .metrics(|m| m.vote.leader_id().term >= term, "the vote arrives")
        .await
        .expect("the vote arrives");
}

#[tokio::test]
async fn memory_one_way_cut_loses_requests_one_way_and_responses_the_other() {
    let network = MemoryNetwork::new(CLUSTER, 1);
    let rafts = memory_cluster(&network, &[1, 2]).await;
    let mut factory = network.factory(1);
    let mut peer = factory.new_client(2, &node("memory-2")).await;
    let ttl = option(Duration::from_millis(500));

    // With 2 -> 1 cut, node 1's request reaches node 2, which votes, but the answer is lost.
    network.cut(2, 1);
    let error = peer.vote(vote_request(5, 1), ttl.clone()).await.expect_err("answer lost");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    assert!(error.to_string().contains("the response was lost"), "{error}");
    term_at_least(&rafts[1], 5).await;

    // With 1 -> 2 cut as well, the request itself is lost: node 2 stays at term 5.
    network.cut(1, 2);
    let error = peer.vote(vote_request(7, 1), ttl.clone()).await.expect_err("request lost");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rafts[1].metrics().borrow().vote.leader_id().term, 5);

    network.heal();
    let answer = peer.vote(vote_request(7, 1), ttl).await.expect("healed");
    assert!(answer.vote_granted);
    term_at_least(&rafts[1], 7).await;

    for raft in &rafts {
        raft.shutdown().await.expect("shuts down");
    }
}

#[tokio::test]
async fn memory_cluster_survives_isolation_partition_drops_and_delay() {
    let ids = [1, 2, 3];
    let network = MemoryNetwork::new(CLUSTER, 42);
    let rafts = memory_cluster(&network, &ids).await;
    rafts[0].initialize(members(&ids)).await.expect("the cluster initializes");

    let first = leader(&rafts).await;
    let last = write(&rafts[first], 5).await;
    for raft in &rafts {
        applied(raft, last).await;
    }

    // The leader is cut off: the other two elect one of themselves and go on.
    let old = ids[first];
    network.isolate(old);
    let others: Vec<Raft> =
        rafts.iter().filter(|r| r.metrics().borrow().id != old).cloned().collect();
    let second = &others[leader(&others).await];
    let last = write(second, 5).await;
    network.heal();
    for raft in &rafts {
        applied(raft, last).await;
    }

    // A minority partition cannot elect; the majority keeps writing.
    let leader_id = rafts[leader(&rafts).await].metrics().borrow().id;
    let minority = ids.iter().copied().find(|&id| id != leader_id).expect("a follower");
    let majority: Vec<NodeId> = ids.iter().copied().filter(|&id| id != minority).collect();
    network.partition(&[&majority, &[minority]]);
    let writer = &rafts[(leader_id - 1) as usize];
    let last = write(writer, 5).await;
    network.heal();
    for raft in &rafts {
        applied(raft, last).await;
    }

    // Lossy and slow, but the cluster still commits.
    network.set_drop_rate(0.2);
    network.set_delay(Duration::from_millis(2));
    let current = &rafts[leader(&rafts).await];
    let mut last = 0;
    for i in 0..10 {
        match tokio::time::timeout(PATIENCE, current.client_write(tick(2_000 + i))).await {
            Ok(Ok(written)) => last = written.log_id.index,
            // Leadership may move under message loss; the rest of the test does not care.
            Ok(Err(error)) => assert!(error.forward_to_leader().is_some(), "{error}"),
            Err(_) => panic!("a write hung under message loss"),
        }
    }
    network.set_drop_rate(0.0);
    for raft in &rafts {
        applied(raft, last).await;
    }

    for raft in &rafts {
        raft.shutdown().await.expect("shuts down");
    }
}

#[tokio::test]
async fn memory_learner_catches_up_from_a_snapshot() {
    let network = MemoryNetwork::new(CLUSTER, 3);
    let rafts = memory_cluster(&network, &[1, 2]).await;
    rafts[0].initialize(members(&[1])).await.expect("the cluster initializes");
    let leader = &rafts[0];
    leader.wait(Some(PATIENCE)).state(ServerState::Leader, "node 1 leads").await.expect("leads");
    let last = write(leader, 30).await;
    leader.trigger().snapshot().await.expect("snapshot triggered");
    leader
        .wait(Some(PATIENCE))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "the log is purged")
        .await
        .expect("the leader purges its log");

    leader.add_learner(2, node("memory-2"), true).await.expect("node 2 joins");
    applied(&rafts[1], last).await;
    let metrics = rafts[1].metrics().borrow().clone();
    assert!(metrics.snapshot.is_some_and(|s| s.index >= last), "{metrics:?}");

    for raft in &rafts {
        raft.shutdown().await.expect("shuts down");
    }
}
