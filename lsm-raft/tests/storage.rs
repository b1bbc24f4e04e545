//! openraft's storage test suite, run against every backend, and the syncs the redb
//! backend makes on its file.

// openraft's builder trait returns `StorageError` by value.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use lsm_core::Limits;
use lsm_raft::backend::{Backend, MemoryBackend, RedbBackend};
use lsm_raft::log_store::LogStore;
use lsm_raft::state_machine::StateMachineStore;
use lsm_raft::types::{StorageError, TypeConfig};
use openraft::storage::RaftLogStorage;
use openraft::testing::{StoreBuilder, Suite};

/// A backend in a fresh temporary directory, opened by the given function.
struct OnDisk(fn(&std::path::Path) -> Arc<dyn Backend>);

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for OnDisk {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let backend = (self.0)(dir.path());
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
fn openraft_suite_passes_on_redb() -> Result<(), StorageError> {
    Suite::test_all(OnDisk(|dir| Arc::new(RedbBackend::open(dir).expect("redb opens"))))
}

#[test]
fn openraft_suite_passes_on_memory() -> Result<(), StorageError> {
    Suite::test_all(Memory)
}

#[test]
fn redb_syncs_once_per_flush_and_keeps_what_it_synced() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let backend = RedbBackend::open(dir.path()).expect("redb opens");
    let opened = backend.syncs();
    assert!(opened >= 1, "creating the tables is synced");

    for index in 1..=50u64 {
        backend.append(&[(index, vec![index as u8; 100])]).unwrap();
    }
    backend.put_meta("committed", b"50").unwrap();
    backend.truncate_from(41).unwrap();
    assert_eq!(backend.syncs(), opened, "writes that wait for a flush are not synced");
    assert_eq!(backend.last_entry().unwrap().map(|(i, _)| i), Some(40), "but visible");

    backend.flush().unwrap();
    assert_eq!(backend.syncs(), opened + 1, "one flush, one sync, for all of them");
    backend.put_meta_durable("vote", b"v").unwrap();
    assert_eq!(backend.syncs(), opened + 2);
    backend.save_snapshot(b"m", &vec![7u8; 1 << 20]).unwrap();
    assert_eq!(backend.syncs(), opened + 3);
    backend.append(&[(41, b"unflushed".to_vec())]).unwrap();
    drop(backend);

    let reopened = RedbBackend::open(dir.path()).expect("redb reopens");
    assert_eq!(reopened.entries(0, 100).unwrap().len(), 41);
    assert_eq!(reopened.get_meta("committed").unwrap(), Some(b"50".to_vec()));
    assert_eq!(reopened.get_meta("vote").unwrap(), Some(b"v".to_vec()));
    let (meta, data) = reopened.load_snapshot().unwrap().expect("the snapshot");
    assert_eq!((meta.as_slice(), data.len()), (&b"m"[..], 1 << 20));
}

#[test]
fn redb_refuses_a_sled_data_dir_and_a_second_opener() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // What sled 0.34 leaves in a data directory it opened: its `conf` and `db` files.
    std::fs::write(dir.path().join("conf"), b"segment_size: 524288\n").expect("conf written");
    std::fs::write(dir.path().join("db"), b"").expect("db written");
    let refused = RedbBackend::open(dir.path()).err().expect("a sled directory is refused");
    assert!(refused.to_string().contains("holds a sled database"), "{refused}");

    let fresh = tempfile::tempdir().expect("a temporary directory");
    let first = RedbBackend::open(fresh.path()).expect("redb opens");
    let second = RedbBackend::open(fresh.path()).err().expect("the file is locked");
    assert!(second.to_string().contains("another node"), "{second}");
    drop(first);
}

#[tokio::test]
async fn the_log_store_syncs_the_committed_index_before_it_returns() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let backend = Arc::new(RedbBackend::open(dir.path()).expect("redb opens"));
    let mut store = LogStore::new(backend.clone());
    let before = backend.syncs();
    let committed = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 7);
    store.save_committed(Some(committed)).await.unwrap();
    assert!(backend.syncs() > before, "save_committed returned before a sync");
    drop(store);
    drop(backend);
    // The flusher task lets go of the file once it sees the store is gone.
    let mut reopened = loop {
        match RedbBackend::open(dir.path()) {
            Ok(backend) => break LogStore::new(Arc::new(backend)),
            Err(e) if e.to_string().contains("another node") => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("redb reopens: {e}"),
        }
    };
    assert_eq!(reopened.read_committed().await.unwrap(), Some(committed));
}
