//! lsm-raft: replicates `lsm_core::State` across nodes with openraft.
//!
//! [`node::LsmNode`] is a running node: openraft 0.9 (storage v2) over a
//! [`log_store::LogStore`] and a [`state_machine::StateMachineStore`], both written
//! against the small [`backend::Backend`] trait (redb on disk, or in memory with a crash
//! model). Writes are batched into log entries, stamped with the leader's
//! [`clock::Clock`], replicated, and answered with the state machine's output. Peers talk
//! through [`network`]: HTTP with postcard bodies, or an in-memory network with faults for
//! tests. [`cluster::Cluster`] runs several nodes in one process for tests and benchmarks.

// openraft's storage traits return `StorageError` by value; its size is theirs to choose.
#![allow(clippy::result_large_err)]

pub mod backend;
pub mod clock;
pub mod cluster;
pub mod error;
pub mod log_store;
pub mod network;
pub mod node;
pub mod runtime;
pub mod state_machine;
pub mod types;
