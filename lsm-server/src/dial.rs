//! `[dial]`: reaching a peer at another address than the one the cluster knows it by.
//!
//! The Raft membership holds one address per node, the one it advertises, and every node
//! dials every other there. Some networks need a different address per caller: a peer
//! behind NAT, split-horizon DNS, or a proxy on each link (the fault-injection tests put a
//! TCP proxy on every directed link between nodes, so they can cut one). `[dial]` maps a
//! node id to the `host:port` *this* node dials it at, and overrides the membership
//! address for the two things a node sends to a peer:
//!
//! - peer RPCs: [`DialNetwork`] wraps whatever peer network the server is given (HTTP in
//!   production, a simulated one in tests) and hands it the dial address when openraft
//!   asks for a client to a peer;
//! - forwarding a request to the leader: the leader is known by id
//!   (`NotLeader { leader_id, .. }`), and [`Dial::addr`] picks its dial address.
//!
//! Everything that names a node to others keeps the membership address: `advertise`, the
//! membership itself, the `lsm-leader` header and `leader` in errors, since those are read
//! by clients and peers that may dial differently.

use std::collections::BTreeMap;
use std::sync::Arc;

use lsm_raft::types::{Node, NodeId, TypeConfig};
use openraft::RaftNetworkFactory;

/// The `[dial]` table of one node: node id to the address this node dials it at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dial {
    table: Arc<BTreeMap<NodeId, String>>,
}

impl Dial {
    /// The table of a node's configuration.
    pub fn new(table: BTreeMap<NodeId, String>) -> Dial {
        Dial { table: Arc::new(table) }
    }

    /// The address to dial node `id` at, whose membership address is `known`.
    pub fn addr<'a>(&'a self, id: Option<NodeId>, known: &'a str) -> &'a str {
        id.and_then(|id| self.table.get(&id)).map_or(known, String::as_str)
    }

    /// True when no peer is dialed at another address.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// A peer network that dials each peer at its `[dial]` address, if it has one, instead of
/// its membership address. Errors name the address dialed.
#[derive(Clone, Debug)]
pub struct DialNetwork<N> {
    inner: N,
    dial: Dial,
}

impl<N> DialNetwork<N> {
    /// `inner`, dialing the peers in `dial` at their dial addresses.
    pub fn new(inner: N, dial: Dial) -> DialNetwork<N> {
        DialNetwork { inner, dial }
    }
}

impl<N> RaftNetworkFactory<TypeConfig> for DialNetwork<N>
where
    N: RaftNetworkFactory<TypeConfig>,
{
    type Network = N::Network;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> N::Network {
        let addr = self.dial.addr(Some(target), &node.addr);
        if addr == node.addr {
            return self.inner.new_client(target, node).await;
        }
        let dialed = Node::new(addr);
        self.inner.new_client(target, &dialed).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_overrides_only_the_nodes_it_names() {
        let dial = Dial::new(BTreeMap::from([(2, "proxy:9002".to_string())]));
        assert_eq!(dial.addr(Some(2), "10.0.0.2:7101"), "proxy:9002");
        assert_eq!(dial.addr(Some(3), "10.0.0.3:7101"), "10.0.0.3:7101");
        assert_eq!(dial.addr(None, "10.0.0.2:7101"), "10.0.0.2:7101", "an unknown id");
        assert!(!dial.is_empty());
        assert!(Dial::default().is_empty());
    }

    /// A factory that records the address it was asked to connect to.
    struct Recorder(std::sync::Mutex<Vec<String>>);

    #[derive(Clone)]
    struct Seen(Arc<Recorder>);

    impl RaftNetworkFactory<TypeConfig> for Seen {
        type Network = lsm_raft::network::http::HttpPeer;

        async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
            self.0.0.lock().unwrap().push(node.addr.clone());
            let mut http = lsm_raft::network::http::HttpNetwork::new("test", 1).unwrap();
            http.new_client(target, node).await
        }
    }

    #[tokio::test]
    async fn peers_are_dialed_at_their_dial_address() {
        let seen = Seen(Arc::new(Recorder(Default::default())));
        let dial = Dial::new(BTreeMap::from([(2, "127.0.0.1:9002".to_string())]));
        let mut network = DialNetwork::new(seen.clone(), dial);
        network.new_client(2, &Node { addr: "10.0.0.2:7101".into() }).await;
        network.new_client(3, &Node { addr: "10.0.0.3:7101".into() }).await;
        assert_eq!(*seen.0.0.lock().unwrap(), ["127.0.0.1:9002", "10.0.0.3:7101"]);
    }
}
