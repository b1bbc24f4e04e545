//! An in-memory network for in-process cluster tests, with faults.
//!
//! Every node of a test cluster gets a [`MemoryFactory`] from one [`MemoryNetwork`]
//! ([`MemoryNetwork::factory`]) and is [registered](MemoryNetwork::register) with it. A call
//! encodes its request as the HTTP transport does, and the receiver handles it with
//! [`serve_rpc`], so the tests exercise the real encoding, envelope checks and error
//! mapping; only the sockets are missing.
//!
//! # Faults
//!
//! A message travels on a link from one node to another, and a call uses two: the request
//! goes from the caller to the peer, the response from the peer back to the caller. Each
//! message is checked when it is sent:
//!
//! - The link is *blocked* if either end is not registered (a crashed node neither sends
//!   nor receives), if either end is [isolated](MemoryNetwork::isolate), if the two ends
//!   are in different groups of a [partition](MemoryNetwork::partition), or if the link is
//!   [cut](MemoryNetwork::cut) in that direction. A blocked message fails the call at once
//!   with `RPCError::Unreachable`, as a refused connection would, and openraft backs off.
//!   If only the response's link is blocked the peer has handled the request: one-way cuts
//!   lose responses too, and the caller cannot tell whether its request arrived.
//! - Otherwise the message is *dropped* with the [drop rate](MemoryNetwork::set_drop_rate),
//!   decided by a random generator seeded in [`MemoryNetwork::new`]. A dropped message is
//!   a lost packet: the caller hears nothing and its call fails with `RPCError::Timeout`
//!   when its `RPCOption::hard_ttl()` runs out. A dropped response, again, was handled.
//! - Otherwise it arrives after the [delay](MemoryNetwork::set_delay), so a call takes at
//!   least twice the delay; a call that takes longer than its hard TTL times out.
//!
//! A request that was sent is delivered and handled even if its caller gave up waiting
//! meanwhile, as on a real network. With one seed, the network makes the same sequence of
//! drop decisions; which message each decision falls to still depends on the scheduling of
//! the nodes' tasks, so runs are repeatable only as far as the scheduling is.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::RaftNetworkFactory;
use openraft::network::RPCOption;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::{Call, Problem, Rejection, RpcError, RpcKind, serve_rpc};
use crate::types::{Node, NodeId, Raft, TypeConfig};

/// A simulated network connecting the nodes of one test cluster. Clones share it.
#[derive(Clone)]
pub struct MemoryNetwork {
    shared: Arc<Shared>,
}

struct Shared {
    cluster_id: String,
    links: Mutex<Links>,
}

/// A registered node: its Raft and what it believes it is.
#[derive(Clone)]
struct Receiver {
    raft: Raft,
    cluster_id: String,
    node_id: NodeId,
}

/// The state of the network.
struct Links {
    nodes: HashMap<NodeId, Receiver>,
    /// The partition: each node's group. `None` when there is no partition.
    groups: Option<HashMap<NodeId, usize>>,
    isolated: HashSet<NodeId>,
    /// One-way cuts, `(from, to)`.
    cuts: HashSet<(NodeId, NodeId)>,
    drop_rate: f64,
    delay: Duration,
    rng: ChaCha8Rng,
}

/// What happens to a message that is sent.
enum Fate {
    /// It cannot be sent, for this reason.
    Blocked(String),
    /// It is lost on the way.
    Dropped,
    /// It arrives after this delay.
    Arrives(Duration),
}

impl Links {
    fn fate(&mut self, from: NodeId, to: NodeId) -> Fate {
        for node in [from, to] {
            if !self.nodes.contains_key(&node) {
                return Fate::Blocked(format!("node {node} is down"));
            }
            if self.isolated.contains(&node) {
                return Fate::Blocked(format!("node {node} is isolated"));
            }
        }
        if let Some(groups) = &self.groups
            && (groups.get(&from).is_none() || groups.get(&from) != groups.get(&to))
        {
            return Fate::Blocked(format!("nodes {from} and {to} are partitioned"));
        }
        if self.cuts.contains(&(from, to)) {
            return Fate::Blocked(format!("the link from node {from} to node {to} is cut"));
        }
        if self.drop_rate > 0.0 && self.rng.random::<f64>() < self.drop_rate {
            return Fate::Dropped;
        }
        Fate::Arrives(self.delay)
    }
}

/// What came back to the caller of a delivered request.
enum Delivery {
    Answer(Result<Vec<u8>, Rejection>),
    Blocked(String),
    Dropped,
}

impl MemoryNetwork {
    /// A network for cluster `cluster_id` with no nodes, no faults and no delay, whose
    /// message drops are decided by a generator seeded with `seed`.
    pub fn new(cluster_id: impl Into<String>, seed: u64) -> MemoryNetwork {
        let links = Links {
            nodes: HashMap::new(),
            groups: None,
            isolated: HashSet::new(),
            cuts: HashSet::new(),
            drop_rate: 0.0,
            delay: Duration::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
        };
        MemoryNetwork {
            shared: Arc::new(Shared { cluster_id: cluster_id.into(), links: Mutex::new(links) }),
        }
    }

    /// The cluster id the network's nodes send.
    pub fn cluster_id(&self) -> &str {
        &self.shared.cluster_id
    }

    fn links(&self) -> MutexGuard<'_, Links> {
        self.shared.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The network factory for node `from`, to pass to `Raft::new`.
    pub fn factory(&self, from: NodeId) -> MemoryFactory {
        MemoryFactory { network: self.clone(), from }
    }

    /// Connects `raft` as node `id`: messages to `id` reach it. Replaces the node registered
    /// as `id` before, which is how a restarted node comes back.
    ///
    /// The receiver checks envelopes against the Raft's own node id, so registering a Raft
    /// under another node's id models an address that now belongs to a different node.
    pub fn register(&self, id: NodeId, raft: Raft) {
        let cluster_id = self.shared.cluster_id.clone();
        self.register_in_cluster(id, raft, cluster_id);
    }

    /// Connects `raft` as node `id`, but as a node that believes it belongs to cluster
    /// `cluster_id`: it refuses this network's requests. Models a misconfigured node.
    pub fn register_in_cluster(&self, id: NodeId, raft: Raft, cluster_id: impl Into<String>) {
        let node_id = raft.metrics().borrow().id;
        let receiver = Receiver { raft, cluster_id: cluster_id.into(), node_id };
        self.links().nodes.insert(id, receiver);
    }

    /// Disconnects node `id`, as if it crashed: calls to it and from it are unreachable,
    /// and messages on their way to it are lost. Returns its Raft, if it was registered;
    /// shutting the Raft down is the caller's business.
    pub fn unregister(&self, id: NodeId) -> Option<Raft> {
        self.links().nodes.remove(&id).map(|receiver| receiver.raft)
    }

    /// Cuts node `id` off from every other node, both ways, until [`heal`](Self::heal).
    pub fn isolate(&self, id: NodeId) {
        self.links().isolated.insert(id);
    }

    /// Splits the network into `groups`: nodes in different groups cannot reach each other,
    /// and a node in no group reaches no one. Replaces the previous partition; isolation and
    /// cuts stay.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut map = HashMap::new();
        for (group, nodes) in groups.iter().enumerate() {
            for &node in *nodes {
                map.insert(node, group);
            }
        }
        self.links().groups = Some(map);
    }

    /// Cuts the link from `from` to `to`: messages from `from` to `to` are lost. That is
    /// `from`'s requests to `to`, and also the responses to `to`'s requests to `from`,
    /// which `from` handles but whose answers never arrive.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.links().cuts.insert((from, to));
    }

    /// Ends every partition, isolation and cut. The drop rate and the delay stay.
    pub fn heal(&self) {
        let mut links = self.links();
        links.groups = None;
        links.isolated.clear();
        links.cuts.clear();
    }

    /// Drops each message with probability `rate`, clamped to `0.0..=1.0`.
    pub fn set_drop_rate(&self, rate: f64) {
        self.links().drop_rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
    }

    /// Delays each message, request or response, by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.links().delay = delay;
    }

    fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        self.links().fate(from, to)
    }

    fn receiver(&self, id: NodeId) -> Option<Receiver> {
        self.links().nodes.get(&id).cloned()
    }
}

/// Node `from`'s view of a [`MemoryNetwork`]: openraft's factory of clients for its peers.
#[derive(Clone)]
pub struct MemoryFactory {
    network: MemoryNetwork,
    from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for MemoryFactory {
    type Network = MemoryPeer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> MemoryPeer {
        MemoryPeer { network: self.network.clone(), from: self.from, target, node: node.clone() }
    }
}

/// A node's connection to one peer over a [`MemoryNetwork`].
#[derive(Clone)]
pub struct MemoryPeer {
    network: MemoryNetwork,
    from: NodeId,
    target: NodeId,
    node: Node,
}

impl MemoryPeer {
    /// Sends one request through the simulated network and decodes the answer.
    async fn call<Req, Resp, E>(
        &self,
        kind: RpcKind,
        rpc: &Req,
        entries: usize,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let call = Call {
            kind,
            from: self.from,
            target: self.target,
            node: &self.node,
            hard_ttl: option.hard_ttl(),
        };
        let deadline = Instant::now() + option.hard_ttl();
        let body = call.request(self.network.cluster_id(), rpc, entries)?;

        let delay = match self.network.fate(self.from, self.target) {
            Fate::Blocked(reason) => return Err(call.unreachable(reason)),
            Fate::Dropped => {
                tokio::time::sleep_until(deadline).await;
                return Err(call.timeout());
            }
            Fate::Arrives(delay) => delay,
        };

        // The message is on its way: it is delivered and handled in a task of its own,
        // which goes on if the caller stops waiting.
        let network = self.network.clone();
        let (from, target) = (self.from, self.target);
        let delivery = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(receiver) = network.receiver(target) else {
                return Delivery::Dropped;
            };
            let answer =
                serve_rpc(&receiver.raft, &receiver.cluster_id, receiver.node_id, kind, &body)
                    .await;
            match network.fate(target, from) {
                Fate::Blocked(reason) => Delivery::Blocked(reason),
                Fate::Dropped => Delivery::Dropped,
                Fate::Arrives(delay) => {
                    tokio::time::sleep(delay).await;
                    Delivery::Answer(answer)
                }
            }
        });

        match tokio::time::timeout_at(deadline, delivery).await {
            Err(_elapsed) => Err(call.timeout()),
            Ok(Err(error)) => {
                Err(call.failed(Problem::Failed(format!("the delivering task failed: {error}"))))
            }
            Ok(Ok(Delivery::Answer(Ok(bytes)))) => call.reply(&bytes),
            Ok(Ok(Delivery::Answer(Err(rejection)))) => Err(call.refused(rejection)),
            Ok(Ok(Delivery::Blocked(reason))) => {
                Err(call.unreachable(format!("the response was lost: {reason}")))
            }
            Ok(Ok(Delivery::Dropped)) => {
                tokio::time::sleep_until(deadline).await;
                Err(call.timeout())
            }
        }
    }
}

super::forward_rpcs!(MemoryPeer);
