//! The openraft type configuration: what a log entry carries and what applying it returns.
//!
//! A log entry's payload is a [`Proposal`]: a batch of `lsm_core::Command`s stamped with
//! the proposing leader's clock. Every node applies it with the same `Meta { index,
//! now_ms }`, so every node reaches the same state. Applying an entry returns an
//! [`Applied`]: one `Output` per command, and none for Raft's own entries. Batching lets one
//! disk flush and one replication round carry many concurrent requests.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster.
pub type NodeId = u64;

/// A node's address, as peers and clients reach it (`host:port`).
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// lsm's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::LsmRuntime,
);

/// The payload of a normal log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposing leader's wall clock, in ms since the Unix epoch.
    pub now_ms: u64,
    /// The commands for the state machine, applied in order.
    pub commands: Vec<lsm_core::Command>,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} commands at {}", self.commands.len(), self.now_ms)
    }
}

/// What applying one log entry produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The state machine's answer and events per command of a normal entry; empty for
    /// Raft's blank and membership entries.
    pub outputs: Vec<lsm_core::Output>,
}

/// A Raft handle for lsm's types.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// Membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A snapshot.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
