//! The network a fault test controls: proxies on the links between nodes, and proxies in
//! front of the nodes for groups of clients.
//!
//! [`PeerLinks`] holds one [`Proxy`] per directed pair of nodes. Node `i` reaches node `j`
//! (Raft RPCs and forwarding to the leader) through proxy `(i, j)`, by the `[dial]` table
//! the harness writes into node `i`'s configuration, so a partition is a matter of
//! switching proxies: [`PeerLinks::isolate`] cuts every link of a node both ways,
//! [`PeerLinks::set`] one link in one direction.
//!
//! A [`ClientGroup`] is a set of clients that share a path to the cluster, like the
//! launchers of one rack: one proxy in front of each node. Its clients list the proxies as
//! their servers, and their transport ([`ClientGroup::transport`]) also sends the
//! addresses the nodes name in `lsm-leader` hints through the group's proxies, so a
//! client never goes around them. Cutting the group's proxy to one node is a blip between
//! those clients and that node; cutting all but one strands the group with that node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lsm_client::transport::{BoxFuture, HyperTransport, Transport, TransportError};

use crate::proxy::{Mode, Proxy};

/// One proxy per directed link between nodes.
#[derive(Debug)]
pub struct PeerLinks {
    links: BTreeMap<(u64, u64), Proxy>,
}

impl PeerLinks {
    /// Proxies between every ordered pair of `nodes` (id to address), all passing.
    pub async fn start(nodes: &BTreeMap<u64, String>) -> PeerLinks {
        let mut links = BTreeMap::new();
        for &from in nodes.keys() {
            for (&to, addr) in nodes {
                if from != to {
                    let proxy = Proxy::start(addr.clone()).await.expect("start a link proxy");
                    links.insert((from, to), proxy);
                }
            }
        }
        PeerLinks { links }
    }

    /// The `[dial]` table of node `from`: each peer at the proxy of its link.
    pub fn dial_table(&self, from: u64) -> BTreeMap<u64, String> {
        self.links
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|(&(_, to), proxy)| (to, proxy.addr().to_string()))
            .collect()
    }

    /// The proxy node `from` reaches node `to` through.
    pub fn link(&self, from: u64, to: u64) -> &Proxy {
        &self.links[&(from, to)]
    }

    /// Sets the link from `from` to `to` (one direction: `from`'s calls to `to`).
    pub fn set(&self, from: u64, to: u64, mode: Mode) {
        self.link(from, to).set(mode);
    }

    /// Sets every link of `node`, both ways.
    pub fn isolate(&self, node: u64, mode: Mode) {
        for (&(from, to), proxy) in &self.links {
            if from == node || to == node {
                proxy.set(mode);
            }
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.set(Mode::Pass);
        }
    }

    /// Every link and its mode, for failure messages.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = (self.links.iter())
            .filter(|(_, p)| p.mode() != Mode::Pass)
            .map(|((from, to), p)| format!("{from}->{to}: {:?}", p.mode()))
            .collect();
        if parts.is_empty() { "every link passes".into() } else { parts.join(", ") }
    }
}

/// Clients that share one proxy in front of each node (see the module docs).
#[derive(Debug)]
pub struct ClientGroup {
    name: String,
    /// Node id to the proxy in front of it.
    proxies: BTreeMap<u64, Proxy>,
}

impl ClientGroup {
    /// A group named `name` with a passing proxy in front of each of `nodes`.
    pub async fn start(name: &str, nodes: &BTreeMap<u64, String>) -> ClientGroup {
        let mut proxies = BTreeMap::new();
        for (&id, addr) in nodes {
            proxies.insert(id, Proxy::start(addr.clone()).await.expect("start a group proxy"));
        }
        ClientGroup { name: name.to_string(), proxies }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the group's clients reach node `id` at.
    pub fn server(&self, id: u64) -> &str {
        self.proxies[&id].addr()
    }

    /// The group's server list, in node id order.
    pub fn servers(&self) -> Vec<String> {
        self.proxies.values().map(|p| p.addr().to_string()).collect()
    }

    /// The node ids.
    pub fn nodes(&self) -> Vec<u64> {
        self.proxies.keys().copied().collect()
    }

    /// A transport for one client of the group: its own connections, and every node
    /// address (a leader hint) sent to the group's proxy in front of that node.
    pub fn transport(&self) -> Arc<dyn Transport> {
        let routes = self.proxies.values().map(|p| (p.target().to_string(), p.addr().to_string()));
        Arc::new(Rewrite {
            routes: routes.collect(),
            inner: HyperTransport::tcp(Duration::from_secs(1)),
        })
    }

    /// Connections the group's proxy in front of node `id` has accepted.
    pub fn accepted(&self, id: u64) -> u64 {
        self.proxies[&id].accepted()
    }

    /// Sets the group's proxy in front of node `id`.
    pub fn set(&self, id: u64, mode: Mode) {
        self.proxies[&id].set(mode);
    }

    /// Leaves the group only node `id`: its proxies to every other node are set to `mode`.
    pub fn strand_with(&self, id: u64, mode: Mode) {
        for (&node, proxy) in &self.proxies {
            proxy.set(if node == id { Mode::Pass } else { mode });
        }
    }

    /// Every proxy of the group passes again.
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.set(Mode::Pass);
        }
    }
}

/// A transport that sends requests for some addresses to others.
struct Rewrite {
    routes: BTreeMap<String, String>,
    inner: HyperTransport,
}

impl Transport for Rewrite {
    fn send(
        &self,
        addr: &str,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, TransportError>> {
        let addr = self.routes.get(addr).map_or(addr, String::as_str);
        self.inner.send(addr, request, timeout)
    }
}

/// A transport that sends every request to one address, whatever it names: a client
/// pinned to one node, even when the answers name another leader.
pub struct Pinned {
    addr: String,
    inner: HyperTransport,
}

impl Pinned {
    /// Every request to `addr`.
    pub fn new(addr: impl Into<String>) -> Arc<Pinned> {
        Arc::new(Pinned { addr: addr.into(), inner: HyperTransport::tcp(Duration::from_secs(1)) })
    }
}

impl Transport for Pinned {
    fn send(
        &self,
        _addr: &str,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, TransportError>> {
        self.inner.send(&self.addr, request, timeout)
    }
}
