//! The peer network: how Raft messages travel between the nodes of one cluster.
//!
//! Two transports implement openraft's [`RaftNetworkFactory`](openraft::RaftNetworkFactory):
//!
//! - [`http::HttpNetwork`] sends each RPC as one HTTP `POST` to the peer, and
//!   [`http::router`] serves them; this is the production transport.
//! - [`memory::MemoryNetwork`] connects the nodes of an in-process test cluster and can
//!   crash, isolate, partition and cut them, drop messages and delay them.
//!
//! Both encode with the same helpers and hand every received message to the same function,
//! [`serve_rpc`], so the in-memory network exercises exactly the code the HTTP server runs.
//!
//! # Wire format
//!
//! Every message, in both directions, is one byte of wire version ([`WIRE_VERSION`])
//! followed by exactly one [postcard] value; a message with a different version, with
//! bytes left over, or that does not decode is refused as malformed.
//!
//! - A request is an [`Envelope`]: the cluster id (a string), the sender's node id, the
//!   target's node id, and the openraft request: an `AppendEntriesRequest`, a `VoteRequest`,
//!   or one chunk of a snapshot as an `InstallSnapshotRequest`. Which one it is travels
//!   outside the message ([`RpcKind`]: the HTTP path, or the in-memory call), so the three
//!   kinds share one envelope.
//! - A response is the openraft handler's `Result<Response, RaftError<NodeId, E>>`, so a
//!   Raft error on the receiver reaches the caller as `RPCError::RemoteError`.
//! - A refusal is a [`Rejection`]: the receiver checked the envelope and will not hand the
//!   request to Raft, because it belongs to another cluster, is addressed to another node,
//!   or does not decode. The receiver logs every refusal with `tracing` at warn level.
//!
//! The cluster id is a guard against misconfiguration (a node of one cluster pointed at a
//! node of another, or an address that now belongs to a different node), not a secret:
//! a refusal tells the caller both ids.
//!
//! # Errors the caller sees
//!
//! - The peer cannot be connected to (connection refused, no route, unknown host, connect
//!   timeout), or it refused the envelope because it is a different cluster or a different
//!   node: `RPCError::Unreachable`. The node the caller wants is not at that address, so
//!   openraft backs off before it tries again instead of retrying at heartbeat rate.
//! - No answer within the call's `RPCOption::hard_ttl()`: `RPCError::Timeout`.
//! - The request was too large for [`MAX_MESSAGE_BYTES`]: `RPCError::PayloadTooLarge` with
//!   a hint of how many entries would fit, for an append of more than one entry, so
//!   openraft sends fewer; otherwise `RPCError::Network`.
//! - Anything else that went wrong on the way (a malformed request or response, a
//!   connection reset): `RPCError::Network`.
//! - The peer's Raft answered with an error: `RPCError::RemoteError`.
//!
//! # Sizes
//!
//! A message is at most [`MAX_MESSAGE_BYTES`] (8 MiB) on the wire; the HTTP server's body
//! limit is the same. A snapshot chunk of [`MAX_SNAPSHOT_CHUNK_BYTES`] (4 MiB, above
//! openraft's 3 MiB default `Config::snapshot_max_chunk_size`) always fits with its
//! envelope, so `snapshot_max_chunk_size` must not be set above it. Appends are split by
//! openraft's `max_payload_entries`; if a batch is still too large the caller asks openraft
//! to send fewer entries.

pub mod http;
pub mod memory;

use std::fmt;
use std::time::Duration;

use openraft::RPCTypes;
use openraft::error::{
    Infallible, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{Node, NodeId, Raft, TypeConfig};

/// The version of the wire format, the first byte of every message.
pub const WIRE_VERSION: u8 = 1;

/// The largest message, request or response, in bytes (8 MiB).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// The largest snapshot chunk that always fits in a message with its envelope, in bytes
/// (4 MiB). `openraft::Config::snapshot_max_chunk_size` must not be above it.
pub const MAX_SNAPSHOT_CHUNK_BYTES: u64 = 4 << 20;

/// The error openraft's network calls return, for handler error `E`.
pub type RpcError<E = Infallible> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

/// Which Raft RPC a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RpcKind {
    /// `AppendEntries`: log replication and heartbeats.
    Append,
    /// `RequestVote`: elections.
    Vote,
    /// `InstallSnapshot`: one chunk of a snapshot.
    Snapshot,
}

impl RpcKind {
    /// The last segment of the kind's HTTP path: `append`, `vote` or `snapshot`.
    pub fn path(self) -> &'static str {
        match self {
            RpcKind::Append => "append",
            RpcKind::Vote => "vote",
            RpcKind::Snapshot => "snapshot",
        }
    }

    /// openraft's name for the kind.
    pub fn rpc_type(self) -> RPCTypes {
        match self {
            RpcKind::Append => RPCTypes::AppendEntries,
            RpcKind::Vote => RPCTypes::Vote,
            RpcKind::Snapshot => RPCTypes::InstallSnapshot,
        }
    }
}

impl fmt::Display for RpcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// A request as it travels: who it is from and for, and the openraft request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// The cluster the sender belongs to; the receiver refuses any other.
    pub cluster_id: String,
    /// The sender's node id, for the receiver's logs.
    pub from: NodeId,
    /// The node the sender means to reach; the receiver refuses the request if it is not
    /// that node.
    pub target: NodeId,
    /// The openraft request.
    pub rpc: T,
}

/// A message that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message is empty: not even the version byte.
    #[error("empty message")]
    Empty,
    /// The message is in another version of the wire format.
    #[error("wire format version {got}, but this node speaks version {WIRE_VERSION}")]
    Version {
        /// The version byte the message starts with.
        got: u8,
    },
    /// The message's bytes do not decode, or a value does not encode.
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
    /// The message goes on after its value.
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
}

/// Encodes a message: the version byte, then `value` in postcard.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    Ok(postcard::to_extend(value, vec![WIRE_VERSION])?)
}

/// Decodes a message written by [`encode`]. Checks the version and that nothing follows the
/// value; never panics on bad input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (&version, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version { got: version });
    }
    let (value, left) = postcard::take_from_bytes(rest)?;
    if !left.is_empty() {
        return Err(WireError::Trailing(left.len()));
    }
    Ok(value)
}

/// Why a receiver refused a request without handing it to Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The request belongs to another cluster.
    #[error("the request is for cluster {got:?}, but this node belongs to cluster {expected:?}")]
    WrongCluster {
        /// The receiver's cluster id.
        expected: String,
        /// The cluster id in the request.
        got: String,
    },
    /// The request is addressed to another node.
    #[error("the request is for node {got}, but this is node {expected}")]
    WrongTarget {
        /// The receiver's node id.
        expected: NodeId,
        /// The target node id in the request.
        got: NodeId,
    },
    /// The request does not decode.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The receiver could not encode its response.
    #[error("the receiver failed: {0}")]
    Internal(String),
}

/// Handles one received request: decodes the envelope, checks that it is for this cluster
/// and this node, hands the request to `raft`, and encodes what Raft answered.
///
/// `kind` says which request the body holds. A refusal is logged here, so every transport
/// logs it the same way; the transport only has to send the [`Rejection`] back.
pub async fn serve_rpc(
    raft: &Raft,
    cluster_id: &str,
    node_id: NodeId,
    kind: RpcKind,
    body: &[u8],
) -> Result<Vec<u8>, Rejection> {
    let encoded = match kind {
        RpcKind::Append => {
            let rpc: AppendEntriesRequest<TypeConfig> = open(cluster_id, node_id, kind, body)?;
            encode(&raft.append_entries(rpc).await)
        }
        RpcKind::Vote => {
            let rpc: VoteRequest<NodeId> = open(cluster_id, node_id, kind, body)?;
            encode(&raft.vote(rpc).await)
        }
        RpcKind::Snapshot => {
            let rpc: InstallSnapshotRequest<TypeConfig> = open(cluster_id, node_id, kind, body)?;
            encode(&raft.install_snapshot(rpc).await)
        }
    };
    encoded.map_err(|error| {
        tracing::error!(rpc = %kind, %error, "could not encode the response to a peer request");
        Rejection::Internal(format!("could not encode the response: {error}"))
    })
}

/// Decodes a request's envelope and checks its cluster id and target.
fn open<T: DeserializeOwned>(
    cluster_id: &str,
    node_id: NodeId,
    kind: RpcKind,
    body: &[u8],
) -> Result<T, Rejection> {
    let envelope: Envelope<T> = decode(body).map_err(|error| {
        tracing::warn!(rpc = %kind, len = body.len(), %error, "refused a malformed peer request");
        Rejection::Malformed(error.to_string())
    })?;
    let rejection = if envelope.cluster_id != cluster_id {
        Rejection::WrongCluster { expected: cluster_id.to_owned(), got: envelope.cluster_id }
    } else if envelope.target != node_id {
        Rejection::WrongTarget { expected: node_id, got: envelope.target }
    } else {
        return Ok(envelope.rpc);
    };
    tracing::warn!(
        rpc = %kind,
        from = envelope.from,
        "refused a peer request: {rejection}"
    );
    Err(rejection)
}

/// Why a call to a peer failed before Raft could answer; openraft's `Unreachable`,
/// `NetworkError` and `PayloadTooLarge` carry it as their source.
#[derive(Debug, thiserror::Error)]
#[error("{kind} request to node {target} at {addr:?}: {problem}")]
pub struct PeerError {
    /// The RPC.
    pub kind: RpcKind,
    /// The peer's node id.
    pub target: NodeId,
    /// The peer's address.
    pub addr: String,
    /// What went wrong.
    pub problem: Problem,
}

/// What went wrong with a call to a peer.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The peer refused the request.
    #[error("refused: {0}")]
    Refused(Rejection),
    /// The peer could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The request is larger than a message may be.
    #[error("the request is {0} bytes, more than the {MAX_MESSAGE_BYTES} a message may be")]
    TooLarge(usize),
    /// The request could not be encoded.
    #[error("could not encode the request: {0}")]
    Encode(WireError),
    /// The response could not be decoded.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The call failed on the way.
    #[error("failed: {0}")]
    Failed(String),
}

/// One outgoing call, for the client half that both transports share: building the
/// request and turning whatever came back into openraft's result.
pub(crate) struct Call<'a> {
    pub kind: RpcKind,
    pub from: NodeId,
    pub target: NodeId,
    pub node: &'a Node,
    pub hard_ttl: Duration,
}

impl Call<'_> {
    fn error(&self, problem: Problem) -> PeerError {
        PeerError { kind: self.kind, target: self.target, addr: self.node.addr.clone(), problem }
    }

    /// Encodes `rpc` in its envelope. `entries` is the number of log entries it carries,
    /// for the hint when the request is too large.
    // The error is the one openraft's network methods return; it is large, but not ours.
    #[allow(clippy::result_large_err)]
    pub fn request<T: Serialize, E: std::error::Error>(
        &self,
        cluster_id: &str,
        rpc: &T,
        entries: usize,
    ) -> Result<Vec<u8>, RpcError<E>> {
        let envelope = Envelope {
            cluster_id: cluster_id.to_owned(),
            from: self.from,
            target: self.target,
            rpc,
        };
        let bytes = encode(&envelope).map_err(|e| self.failed(Problem::Encode(e)))?;
        if bytes.len() <= MAX_MESSAGE_BYTES {
            return Ok(bytes);
        }
        Err(self.too_large(bytes.len(), entries))
    }

    /// The error for a request of `len` bytes that is too large to send.
    pub fn too_large<E: std::error::Error>(&self, len: usize, entries: usize) -> RpcError<E> {
        let error = self.error(Problem::TooLarge(len));
        if self.kind == RpcKind::Append && entries > 1 {
            // Scale the batch down to what fits, with some room for the envelope, and
            // always by at least half so that openraft makes progress.
            let fits = (entries as u128 * MAX_MESSAGE_BYTES as u128 * 9 / 10) / len.max(1) as u128;
            let hint = fits.min(entries as u128 / 2).max(1) as u64;
            return PayloadTooLarge::new_entries_hint(hint).with_source_error(&error).into();
        }
        tracing::warn!(%error, "a peer request is too large to send");
        NetworkError::new(&error).into()
    }

    /// Decodes the peer's answer.
    #[allow(clippy::result_large_err)]
    pub fn reply<R: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<R, RpcError<E>> {
        match decode::<Result<R, RaftError<NodeId, E>>>(bytes) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => {
                Err(RemoteError::new_with_node(self.target, self.node.clone(), remote).into())
            }
            Err(e) => Err(self.failed(Problem::BadResponse(e.to_string()))),
        }
    }

    /// The error for a request the peer refused. A wrong cluster or target means the node
    /// the caller wants is not at that address, which is unreachable; a malformed request
    /// or a failure on the receiver is a network error.
    pub fn refused<E: std::error::Error>(&self, rejection: Rejection) -> RpcError<E> {
        let misdirected =
            matches!(rejection, Rejection::WrongCluster { .. } | Rejection::WrongTarget { .. });
        let error = self.error(Problem::Refused(rejection));
        tracing::warn!(%error, "a peer refused a request");
        if misdirected { Unreachable::new(&error).into() } else { NetworkError::new(&error).into() }
    }

    /// The error for a peer that cannot be reached.
    pub fn unreachable<E: std::error::Error>(&self, reason: String) -> RpcError<E> {
        Unreachable::new(&self.error(Problem::Unreachable(reason))).into()
    }

    /// The error for a call that failed on the way.
    pub fn failed<E: std::error::Error>(&self, problem: Problem) -> RpcError<E> {
        NetworkError::new(&self.error(problem)).into()
    }

    /// The error for a call that got no answer within its hard TTL.
    pub fn timeout<E: std::error::Error>(&self) -> RpcError<E> {
        RPCError::Timeout(Timeout {
            action: self.kind.rpc_type(),
            id: self.from,
            target: self.target,
            timeout: self.hard_ttl,
        })
    }
}

/// Implements openraft's `RaftNetwork` for a peer type with an inherent `call(kind, rpc,
/// entries, option)`: every transport forwards the three RPCs the same way.
macro_rules! forward_rpcs {
    ($peer:ty) => {
        impl openraft::RaftNetwork<$crate::types::TypeConfig> for $peer {
            async fn append_entries(
                &mut self,
                rpc: openraft::raft::AppendEntriesRequest<$crate::types::TypeConfig>,
                option: openraft::network::RPCOption,
            ) -> Result<
                openraft::raft::AppendEntriesResponse<$crate::types::NodeId>,
                $crate::network::RpcError,
            > {
                self.call($crate::network::RpcKind::Append, &rpc, rpc.entries.len(), &option).await
            }

            async fn install_snapshot(
                &mut self,
                rpc: openraft::raft::InstallSnapshotRequest<$crate::types::TypeConfig>,
                option: openraft::network::RPCOption,
            ) -> Result<
                openraft::raft::InstallSnapshotResponse<$crate::types::NodeId>,
                $crate::network::RpcError<openraft::error::InstallSnapshotError>,
            > {
                self.call($crate::network::RpcKind::Snapshot, &rpc, 0, &option).await
            }

            async fn vote(
                &mut self,
                rpc: openraft::raft::VoteRequest<$crate::types::NodeId>,
                option: openraft::network::RPCOption,
            ) -> Result<
                openraft::raft::VoteResponse<$crate::types::NodeId>,
                $crate::network::RpcError,
            > {
                self.call($crate::network::RpcKind::Vote, &rpc, 0, &option).await
            }
        }
    };
}
pub(crate) use forward_rpcs;
