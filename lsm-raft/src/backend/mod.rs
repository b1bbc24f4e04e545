//! Storage backends: the small durable store the Raft glue is written against.
//!
//! The log store and state machine never touch a storage engine directly; they use
//! [`Backend`], so engines can be swapped without touching the Raft glue. Two exist:
//!
//! - [`RedbBackend`]: redb in one file, on disk: the server's and the in-process test
//!   clusters'. Its syncs are real `fdatasync` calls, counted by [`RedbBackend::syncs`].
//! - [`MemoryBackend`]: in memory, with a crash model: writes are pending until
//!   [`Backend::flush`], and [`MemoryBackend::crash`] returns what a restarted node would
//!   find on disk, losing exactly what was never flushed. Used by simulation tests.
//!
//! The durability contract, which all honour:
//! - `append`, `truncate_from`, `purge_upto` and `put_meta` are visible to reads at once
//!   and durable after the next `flush` returns;
//! - `flush`, `put_meta_durable` and `save_snapshot` return only once every earlier write
//!   (and their own) is on stable storage: synced with `fdatasync`, not only handed to
//!   the kernel;
//! - `save_snapshot` replaces the previous snapshot atomically: a crash leaves either the
//!   old one or the new one, whole.

mod memory;
mod redb_backend;

pub use memory::MemoryBackend;
pub use redb_backend::RedbBackend;

/// A storage failure: the node cannot go on safely.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct BackendError(pub String);

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

/// A log entry as stored: its index and its encoded bytes.
pub type RawEntry = (u64, Vec<u8>);

/// What the Raft glue needs from a durable store.
pub trait Backend: Send + Sync + 'static {
    /// A metadata value (vote, committed log id, last purged log id).
    fn get_meta(&self, key: &str) -> BackendResult<Option<Vec<u8>>>;
    /// Writes a metadata value; durable after the next flush.
    fn put_meta(&self, key: &str, value: &[u8]) -> BackendResult<()>;
    /// Writes a metadata value and makes it, and all earlier writes, durable.
    fn put_meta_durable(&self, key: &str, value: &[u8]) -> BackendResult<()>;
    /// Appends (or overwrites) log entries; durable after the next flush.
    fn append(&self, entries: &[RawEntry]) -> BackendResult<()>;
    /// Makes every earlier write durable. This is the fsync the log store batches.
    fn flush(&self) -> BackendResult<()>;
    /// Entries with `from <= index < to`, in index order.
    fn entries(&self, from: u64, to: u64) -> BackendResult<Vec<RawEntry>>;
    /// The entry with the highest index, if any.
    fn last_entry(&self) -> BackendResult<Option<RawEntry>>;
    /// Removes entries with `index >= from`.
    fn truncate_from(&self, from: u64) -> BackendResult<()>;
    /// Removes entries with `index <= upto`.
    fn purge_upto(&self, upto: u64) -> BackendResult<()>;
    /// Replaces the snapshot atomically and durably.
    fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> BackendResult<()>;
    /// The current snapshot's metadata and data, if any.
    fn load_snapshot(&self) -> BackendResult<Option<(Vec<u8>, Vec<u8>)>>;
    /// True when calls may block on IO, so async callers run the slow ones (flushes,
    /// durable writes, snapshots) on a blocking thread; false for a backend whose every
    /// call returns at once, which is then called inline. Inline calls keep a simulated
    /// node on its one thread, so a seed replays exactly.
    fn blocks(&self) -> bool {
        true
    }
}

/// Runs `op` on `backend` from async code: on one of tokio's blocking threads when the
/// backend [blocks](Backend::blocks), else inline.
pub(crate) async fn run<T: Send + 'static>(
    backend: &std::sync::Arc<dyn Backend>,
    op: impl FnOnce(&dyn Backend) -> BackendResult<T> + Send + 'static,
) -> BackendResult<T> {
    if !backend.blocks() {
        return op(backend.as_ref());
    }
    let backend = backend.clone();
    tokio::task::spawn_blocking(move || op(backend.as_ref()))
        .await
        .map_err(|e| BackendError(format!("storage task failed: {e}")))?
}
