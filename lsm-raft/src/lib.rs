//! lsm-raft: replicates `lsm_core::State` across nodes with openraft.
//!
//! Not finished yet; see the open issue for its scope.

// openraft's storage traits return `StorageError` by value; its size is theirs to choose.
#![allow(clippy::result_large_err)]

pub mod backend;
pub mod clock;
pub mod cluster;
pub mod error;
pub mod log_store;
pub mod network;
pub mod node;
pub mod state_machine;
pub mod types;
