//! openraft's storage test suite, run against every backend.

// openraft's builder trait returns `StorageError` by value.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use lsm_core::Limits;
use lsm_raft::backend::{Backend, MemoryBackend, SledBackend};
use lsm_raft::log_store::LogStore;
use lsm_raft::state_machine::StateMachineStore;
use lsm_raft::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

struct Sled;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Sled {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let backend: Arc<dyn Backend> =
            Arc::new(SledBackend::open(dir.path()).expect("sled opens"));
        let sm = StateMachineStore::open(backend.clone(), Limits::default())?;
        Ok((dir, LogStore::new(backend), sm))
    }
}

struct Memory;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for Memory {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError> {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let sm = StateMachineStore::open(backend.clone(), Limits::default())?;
        Ok(((), LogStore::new(backend), sm))
    }
}

#[test]
fn openraft_suite_passes_on_sled() -> Result<(), StorageError> {
    Suite::test_all(Sled)
}

#[test]
fn openraft_suite_passes_on_memory() -> Result<(), StorageError> {
    Suite::test_all(Memory)
}
