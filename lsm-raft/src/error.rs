//! The crate's error type.

use crate::types::NodeId;

/// Why a node operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// This node is not the leader; send the request to the leader instead.
    #[error("not the leader; the leader is {}", leader_text(.leader_id, .leader_addr))]
    NotLeader {
        /// The leader's id, if known.
        leader_id: Option<NodeId>,
        /// The leader's address, if known.
        leader_addr: Option<String>,
    },
    /// No quorum answered: the cluster cannot serve right now.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The cluster was already initialized; bootstrapping it again is refused.
    #[error("the cluster is already initialized")]
    AlreadyInitialized,
    /// A membership change or other admin request was refused.
    #[error("refused: {0}")]
    Refused(String),
    /// The node is shutting down or has stopped after a fatal error.
    #[error("the node has stopped: {0}")]
    Stopped(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
}

fn leader_text(id: &Option<NodeId>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id}"),
        _ => "unknown (an election may be running)".to_string(),
    }
}
