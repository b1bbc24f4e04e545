//! The state machine store: `lsm_core::State` in memory, snapshots on the [`Backend`].
//!
//! The state lives in memory behind a read-write lock shared with the node, which reads it
//! for queries and for the next lease expiry. On start it is restored from the last
//! snapshot; openraft then re-applies the committed log entries after it, so a restarted
//! node rebuilds exactly the state it had. Snapshots are written atomically and flushed
//! before they are reported, and a received snapshot is checked against every invariant
//! (`State::restore`) before it replaces the state.
//!
//! If applying an entry breaks an invariant, `apply` returns a storage error: openraft
//! stops the node rather than let it serve from a state that does not add up.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use lsm_core::{Limits, Meta, State};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::backend::{self, Backend};
use crate::types::{
    Applied, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The replicated state and what Raft needs to know about it.
#[derive(Debug)]
pub struct Machine {
    /// The last log entry applied.
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
    /// The license state.
    pub state: State,
    /// Snapshots built so far, for unique snapshot ids.
    snapshots_built: u64,
}

/// A snapshot as stored and sent: the Raft position and the encoded state.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: Vec<u8>,
}

/// The state machine store. Clones share the machine.
#[derive(Clone)]
pub struct StateMachineStore {
    backend: Arc<dyn Backend>,
    machine: Arc<RwLock<Machine>>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snapshot_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Opens the store on `backend`, restoring the last snapshot if there is one; a fresh
    /// state gets `limits`.
    pub fn open(
        backend: Arc<dyn Backend>,
        limits: Limits,
    ) -> Result<StateMachineStore, StorageError> {
        let machine = match backend.load_snapshot().map_err(snapshot_err)? {
            Some((_, data)) => {
                let file: SnapshotFile = postcard::from_bytes(&data).map_err(snapshot_err)?;
                Machine {
                    last_applied: file.last_applied,
                    membership: file.membership,
                    state: State::restore(&file.state).map_err(snapshot_err)?,
                    snapshots_built: 0,
                }
            }
            None => Machine {
                last_applied: None,
                membership: StoredMembership::default(),
                state: State::new(limits),
                snapshots_built: 0,
            },
        };
        Ok(StateMachineStore { backend, machine: Arc::new(RwLock::new(machine)) })
    }

    /// Read access to the machine.
    pub fn read(&self) -> RwLockReadGuard<'_, Machine> {
        self.machine.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Machine> {
        self.machine.write().unwrap_or_else(|e| e.into_inner())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let Some((meta, data)) = self.backend.load_snapshot().map_err(snapshot_err)? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = postcard::from_bytes(&meta).map_err(snapshot_err)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = {
            let mut machine = self.write();
            machine.snapshots_built += 1;
            let file = SnapshotFile {
                last_applied: machine.last_applied,
                membership: machine.membership.clone(),
                state: machine.state.snapshot(),
            };
            let index = machine.last_applied.map_or(0, |id| id.index);
            let meta = SnapshotMeta {
                last_log_id: machine.last_applied,
                last_membership: machine.membership.clone(),
                snapshot_id: format!("{index}-{}", machine.snapshots_built),
            };
            (meta, postcard::to_allocvec(&file).map_err(sm_err)?)
        };
        let meta_bytes = postcard::to_allocvec(&meta).map_err(sm_err)?;
        let saved = data.clone();
        backend::run(&self.backend, move |b| b.save_snapshot(&meta_bytes, &saved))
            .await
            .map_err(sm_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let machine = self.read();
        Ok((machine.last_applied, machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut machine = self.write();
        let mut applied = Vec::new();
        for entry in entries {
            machine.last_applied = Some(entry.log_id);
            let outputs = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(membership) => {
                    machine.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
                EntryPayload::Normal(proposal) => {
                    let meta = Meta { index: entry.log_id.index, now_ms: proposal.now_ms };
                    match machine.state.apply_batch(meta, proposal.commands) {
                        Ok(outputs) => outputs,
                        Err(error) => {
                            tracing::error!(%error, index = meta.index, "the state machine failed; stopping");
                            return Err(
                                StorageIOError::apply(entry.log_id, AnyError::new(&error)).into()
                            );
                        }
                    }
                }
            };
            applied.push(Applied { outputs });
        }
        Ok(applied)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let file: SnapshotFile = postcard::from_bytes(&data).map_err(snapshot_err)?;
        let state = State::restore(&file.state).map_err(snapshot_err)?;
        let meta_bytes = postcard::to_allocvec(meta).map_err(sm_err)?;
        let saved = data;
        backend::run(&self.backend, move |b| b.save_snapshot(&meta_bytes, &saved))
            .await
            .map_err(sm_err)?;
        let mut machine = self.write();
        machine.last_applied = meta.last_log_id;
        machine.membership = meta.last_membership.clone();
        machine.state = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.current_snapshot()
    }
}
