//! The Raft log on a [`Backend`], with group commit.
//!
//! `append` writes the entries to the backend at once (visible, not yet durable) and hands
//! openraft's completion callback to a flusher task. The flusher takes every callback that
//! is waiting, runs one `flush` (the fsync), and only then reports all of them complete.
//! While one fsync runs, the appends that arrive queue up for the next, so one fsync covers
//! every append that arrived meanwhile and throughput grows with load instead of paying one
//! fsync per request. openraft treats an entry as durable on this node only once its
//! callback reports it, so an entry is never counted towards a quorum before it is on disk.
//!
//! The vote is on disk before `save_vote` returns, and so is a truncation. The committed
//! index joins the flusher's queue too: `save_committed` returns once a flush that
//! started after its write has finished, so it shares that fsync with the appends
//! waiting for it.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, RaftLogReader, StorageIOError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{self, Backend, BackendError};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The Raft log store. Clones share the backend and the flusher.
#[derive(Clone)]
pub struct LogStore {
    backend: Arc<dyn Backend>,
    flushes: mpsc::UnboundedSender<Waiter>,
    /// The last committed index plus one (0: none), for status reports.
    committed: Arc<AtomicU64>,
}

impl LogStore {
    /// A log store on `backend`. Must be called inside a tokio runtime: it starts the
    /// flusher task, which ends when the last clone of the store is dropped.
    pub fn new(backend: Arc<dyn Backend>) -> LogStore {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(flusher(backend.clone(), rx));
        let store = LogStore { backend, flushes: tx, committed: Arc::default() };
        if let Ok(Some(Some(committed))) = store.get::<Option<LogId>>(COMMITTED) {
            store.committed.store(committed.index + 1, Ordering::Relaxed);
        }
        store
    }

    /// The last index this node knows to be committed.
    pub fn committed_index(&self) -> Option<u64> {
        self.committed.load(Ordering::Relaxed).checked_sub(1)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&dyn Backend) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        backend::run(&self.backend, op).await
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let bytes = self.backend.get_meta(key).map_err(read_err)?;
        bytes.map(|b| postcard::from_bytes(&b).map_err(read_err)).transpose()
    }
}

/// A write waiting for the next flush.
enum Waiter {
    /// Appended entries: openraft's callback.
    Append(LogFlushed<TypeConfig>),
    /// Any other write, such as the committed index: told the flush's outcome.
    Write(oneshot::Sender<Result<(), String>>),
}

/// Runs one flush for every batch of waiting writes.
async fn flusher(backend: Arc<dyn Backend>, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let failure = backend::run(&backend, |b| b.flush()).await.err().map(|e| e.to_string());
        if let Some(failure) = &failure {
            tracing::error!(%failure, "log flush failed; writes are not durable");
        }
        for waiter in batch {
            match waiter {
                Waiter::Append(callback) => callback.log_io_completed(match &failure {
                    None => Ok(()),
                    Some(message) => Err(io::Error::other(message.clone())),
                }),
                Waiter::Write(tx) => {
                    let _ = tx.send(failure.clone().map_or(Ok(()), Err));
                }
            }
        }
    }
}

fn flusher_stopped() -> StorageError {
    write_err(BackendError("the log flusher has stopped".into()))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(value).map_err(write_err)
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (from, to) = bounds(&range);
        let raw = self.backend.entries(from, to).map_err(read_err)?;
        raw.iter().map(|(_, bytes)| postcard::from_bytes(bytes).map_err(read_err)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get(LAST_PURGED)?;
        let last = self.backend.last_entry().map_err(read_err)?;
        let last_log_id = match last {
            Some((_, bytes)) => {
                let entry: Entry = postcard::from_bytes(&bytes).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = encode(vote)?;
        self.blocking(move |b| b.put_meta_durable(VOTE, &bytes))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = encode(&committed)?;
        self.backend.put_meta(COMMITTED, &bytes).map_err(write_err)?;
        let (tx, rx) = oneshot::channel();
        self.flushes.send(Waiter::Write(tx)).map_err(|_| flusher_stopped())?;
        rx.await.map_err(|_| flusher_stopped())?.map_err(|e| write_err(BackendError(e)))?;
        self.committed.store(committed.map_or(0, |c| c.index + 1), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let raw = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode(&entry)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        self.backend.append(&raw).map_err(write_err)?;
        self.flushes.send(Waiter::Append(callback)).map_err(|_| flusher_stopped())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        self.blocking(move |b| {
            b.truncate_from(from)?;
            b.flush()
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&log_id)?;
        self.backend.put_meta(LAST_PURGED, &bytes).map_err(write_err)?;
        self.backend.purge_upto(log_id.index).map_err(write_err)
    }
}
