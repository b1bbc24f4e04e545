//! An in-memory backend with a crash model.
//!
//! It keeps two images of the store: `current`, what reads see, and `durable`, what a
//! node restarted after a crash would find. Every write changes `current` and queues an
//! operation; `flush` replays the queued operations onto `durable`. [`MemoryBackend::crash`]
//! builds a fresh backend from `durable` alone, so a crash loses exactly the writes that
//! were never flushed, like a power cut between `write` and `fsync`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Backend, BackendError, BackendResult, RawEntry};

#[derive(Clone, Debug, Default)]
struct Image {
    log: BTreeMap<u64, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
    snapshot: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
enum Op {
    Append(Vec<RawEntry>),
    Meta(String, Vec<u8>),
    TruncateFrom(u64),
    PurgeUpto(u64),
}

impl Image {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(entries) => {
                for (index, bytes) in entries {
                    self.log.insert(*index, bytes.clone());
                }
            }
            Op::Meta(key, value) => {
                self.meta.insert(key.clone(), value.clone());
            }
            Op::TruncateFrom(from) => {
                self.log.split_off(from);
            }
            Op::PurgeUpto(upto) => {
                self.log = self.log.split_off(&(upto.saturating_add(1)));
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    current: Image,
    durable: Image,
    pending: Vec<Op>,
    /// Flushes done, for tests that check group commit.
    flushes: u64,
}

/// In-memory storage that loses unflushed writes on [`MemoryBackend::crash`].
#[derive(Debug, Default)]
pub struct MemoryBackend {
    inner: Mutex<Inner>,
    /// How long a flush takes, in microseconds, to model a slow disk (0: instant).
    flush_latency_us: std::sync::atomic::AtomicU64,
    /// Flushes run one at a time, so operations reach the durable image in order.
    flush_order: Mutex<()>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// What a node restarted after a crash now would find: the durable image only.
    pub fn crash(&self) -> MemoryBackend {
        let durable = self.lock().durable.clone();
        let inner = Inner { current: durable.clone(), durable, pending: Vec::new(), flushes: 0 };
        MemoryBackend { inner: Mutex::new(inner), ..MemoryBackend::default() }
    }

    /// Makes every flush take `latency` (a slow disk), so tests can crash a node while
    /// writes are appended but not yet flushed.
    pub fn set_flush_latency(&self, latency: std::time::Duration) {
        let us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        self.flush_latency_us.store(us, std::sync::atomic::Ordering::Relaxed);
    }

    /// Number of flushes so far.
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }

    /// Number of writes not yet flushed.
    pub fn pending_writes(&self) -> usize {
        self.lock().pending.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the images consistent (each op is applied
        // whole), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, op: Op) {
        let mut inner = self.lock();
        inner.current.apply(&op);
        inner.pending.push(op);
    }

    /// Makes every earlier write durable, then runs `after` on the images.
    fn flush_then(&self, after: impl FnOnce(&mut Inner)) {
        let _in_order = self.flush_order.lock().unwrap_or_else(|e| e.into_inner());
        // The writes a flush makes durable are those made before it starts, as with an
        // fsync; the latency comes after, while the caller still waits.
        let pending = std::mem::take(&mut self.lock().pending);
        let latency = self.flush_latency_us.load(std::sync::atomic::Ordering::Relaxed);
        if latency > 0 {
            std::thread::sleep(std::time::Duration::from_micros(latency));
        }
        let mut inner = self.lock();
        for op in &pending {
            inner.durable.apply(op);
        }
        inner.flushes += 1;
        after(&mut inner);
    }
}

impl Backend for MemoryBackend {
    fn get_meta(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.lock().current.meta.get(key).cloned())
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> BackendResult<()> {
        self.write(Op::Meta(key.to_string(), value.to_vec()));
        Ok(())
    }

    fn put_meta_durable(&self, key: &str, value: &[u8]) -> BackendResult<()> {
        self.write(Op::Meta(key.to_string(), value.to_vec()));
        self.flush()
    }

    fn append(&self, entries: &[RawEntry]) -> BackendResult<()> {
        self.write(Op::Append(entries.to_vec()));
        Ok(())
    }

    fn flush(&self) -> BackendResult<()> {
        self.flush_then(|_| {});
        Ok(())
    }

    fn entries(&self, from: u64, to: u64) -> BackendResult<Vec<RawEntry>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let inner = self.lock();
        Ok(inner.current.log.range(from..to).map(|(i, b)| (*i, b.clone())).collect())
    }

    fn last_entry(&self) -> BackendResult<Option<RawEntry>> {
        Ok(self.lock().current.log.last_key_value().map(|(i, b)| (*i, b.clone())))
    }

    fn truncate_from(&self, from: u64) -> BackendResult<()> {
        self.write(Op::TruncateFrom(from));
        Ok(())
    }

    fn purge_upto(&self, upto: u64) -> BackendResult<()> {
        self.write(Op::PurgeUpto(upto));
        Ok(())
    }

    fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> BackendResult<()> {
        let snapshot = Some((meta.to_vec(), data.to_vec()));
        self.flush_then(|inner| {
            inner.current.snapshot = snapshot.clone();
            inner.durable.snapshot = snapshot;
        });
        Ok(())
    }

    fn load_snapshot(&self) -> BackendResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.lock().current.snapshot.clone())
    }

    fn blocks(&self) -> bool {
        false
    }
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        BackendError(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_exactly_the_unflushed_writes() {
        let b = MemoryBackend::new();
        b.append(&[(1, b"a".to_vec()), (2, b"b".to_vec())]).unwrap();
        b.flush().unwrap();
        b.append(&[(3, b"c".to_vec())]).unwrap();
        b.put_meta("committed", b"2").unwrap();
        assert_eq!(b.entries(1, 10).unwrap().len(), 3);
        let restarted = b.crash();
        assert_eq!(restarted.entries(1, 10).unwrap().len(), 2);
        assert_eq!(restarted.get_meta("committed").unwrap(), None);
    }

    #[test]
    fn durable_meta_and_snapshots_survive_and_take_earlier_writes_with_them() {
        let b = MemoryBackend::new();
        b.append(&[(1, b"a".to_vec())]).unwrap();
        b.put_meta_durable("vote", b"v").unwrap();
        b.truncate_from(1).unwrap();
        b.save_snapshot(b"m", b"d").unwrap();
        let restarted = b.crash();
        assert_eq!(restarted.get_meta("vote").unwrap(), Some(b"v".to_vec()));
        assert_eq!(restarted.entries(0, 10).unwrap(), Vec::<RawEntry>::new());
        assert_eq!(restarted.load_snapshot().unwrap(), Some((b"m".to_vec(), b"d".to_vec())));
    }

    #[test]
    fn purge_and_truncate_cut_the_right_ends() {
        let b = MemoryBackend::new();
        let entries: Vec<RawEntry> = (1..=6).map(|i| (i, vec![i as u8])).collect();
        b.append(&entries).unwrap();
        b.purge_upto(2).unwrap();
        b.truncate_from(5).unwrap();
        let left: Vec<u64> = b.entries(0, 100).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(left, [3, 4]);
        assert_eq!(b.last_entry().unwrap().map(|(i, _)| i), Some(4));
    }
}
