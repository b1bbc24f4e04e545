//! The sled backend: log, metadata and snapshot in one sled database.
//!
//! Three trees: `log` (big-endian index -> entry bytes, so iteration is in index order),
//! `meta` (vote, committed, last purged) and `snapshot` (`meta` and `data`, replaced
//! together in one atomic batch). `flush` is sled's flush, which writes its log buffers
//! back with `sync_file_range` (that neither empties the disk's write cache nor records
//! the file's size), followed by our own `fdatasync` of sled's log file and of every blob
//! file it wrote since, then of the blob directory when its listing changed.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sled::{Batch, Db, Tree};

use super::{Backend, BackendResult, RawEntry};

/// sled on disk.
pub struct SledBackend {
    db: Db,
    log: Tree,
    meta: Tree,
    snapshot: Tree,
    /// sled's log file, opened for `fdatasync`.
    log_file: File,
    /// sled's blob directory and the blob files already synced.
    blobs: PathBuf,
    synced_blobs: Mutex<BTreeSet<PathBuf>>,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> BackendResult<SledBackend> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open()?;
        Ok(SledBackend {
            log: db.open_tree("log")?,
            meta: db.open_tree("meta")?,
            snapshot: db.open_tree("snapshot")?,
            db,
            log_file: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::default(),
        })
    }

    /// sled's flush, then an `fdatasync` of the files it wrote.
    fn sync(&self) -> BackendResult<()> {
        self.db.flush()?;
        self.log_file.sync_data()?;
        let listed = std::fs::read_dir(&self.blobs)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        if listed == *synced {
            return Ok(());
        }
        for path in listed.difference(&synced) {
            match File::open(path) {
                Ok(file) => file.sync_data()?,
                // sled removed it meanwhile; the directory sync below records that.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        File::open(&self.blobs)?.sync_all()?;
        *synced = listed;
        Ok(())
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&key[..8]);
    u64::from_be_bytes(bytes)
}

impl Backend for SledBackend {
    fn get_meta(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> BackendResult<()> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    fn put_meta_durable(&self, key: &str, value: &[u8]) -> BackendResult<()> {
        self.meta.insert(key, value)?;
        self.sync()
    }

    fn append(&self, entries: &[RawEntry]) -> BackendResult<()> {
        let mut batch = Batch::default();
        for (index, bytes) in entries {
            batch.insert(&key(*index), bytes.as_slice());
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    fn flush(&self) -> BackendResult<()> {
        self.sync()
    }

    fn entries(&self, from: u64, to: u64) -> BackendResult<Vec<RawEntry>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for item in self.log.range(key(from)..key(to)) {
            let (k, v) = item?;
            out.push((index_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    fn last_entry(&self) -> BackendResult<Option<RawEntry>> {
        Ok(self.log.last()?.map(|(k, v)| (index_of(&k), v.to_vec())))
    }

    fn truncate_from(&self, from: u64) -> BackendResult<()> {
        let mut batch = Batch::default();
        for item in self.log.range(key(from)..) {
            batch.remove(item?.0);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    fn purge_upto(&self, upto: u64) -> BackendResult<()> {
        let mut batch = Batch::default();
        for item in self.log.range(..=key(upto)) {
            batch.remove(item?.0);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> BackendResult<()> {
        let mut batch = Batch::default();
        batch.insert("meta", meta);
        batch.insert("data", data);
        self.snapshot.apply_batch(batch)?;
        self.sync()
    }

    fn load_snapshot(&self) -> BackendResult<Option<(Vec<u8>, Vec<u8>)>> {
        match (self.snapshot.get("meta")?, self.snapshot.get("data")?) {
            (Some(meta), Some(data)) => Ok(Some((meta.to_vec(), data.to_vec()))),
            _ => Ok(None),
        }
    }
}
