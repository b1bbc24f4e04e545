//! The crate's error type: bugs and corrupt input, never business refusals.
//!
//! A refused checkout is a [`crate::Response::Denied`]. An [`Error`] means the state machine
//! cannot go on safely: the replicator must stop the node rather than serve from a state
//! that breaks an invariant.

/// An error that stops the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invariant of the state no longer holds. This is a bug; the node must stop.
    #[error("invariant violated: {0}")]
    Invariant(String),
    /// Entries were applied out of order (an index not above the last applied one).
    #[error("entry {got} applied after entry {last}: log indexes must increase")]
    OutOfOrder {
        /// The last applied index.
        last: u64,
        /// The index of the entry offered now.
        got: u64,
    },
    /// A snapshot could not be decoded.
    #[error("snapshot cannot be decoded: {0}")]
    Snapshot(String),
    /// A snapshot has a format version this build does not read.
    #[error("snapshot format version {found} is not supported (this build reads {supported})")]
    SnapshotVersion {
        /// The version in the snapshot.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
}
