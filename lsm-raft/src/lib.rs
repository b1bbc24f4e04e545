//! lsm-raft: replicates `lsm_core::State` across nodes with openraft.
//!
//! Not finished yet; see the open issue for its scope.

pub mod backend;
pub mod clock;
pub mod error;
pub mod log_store;
pub mod node;
pub mod state_machine;
pub mod types;
