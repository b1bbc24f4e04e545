//! The redb backend: log, metadata and snapshot in one redb file, `lsm.redb`.
//!
//! Three tables: `log` (index -> entry bytes), `meta` (vote, committed, last purged) and
//! `snapshot` (`meta` and `data`). Every write is one redb write transaction. The writes
//! that may wait for the next flush (appends, truncations, purges, `put_meta`) commit
//! with `Durability::None`: visible to reads at once, nothing synced. `flush` commits an
//! empty transaction with `Durability::Immediate`, which writes the header that names
//! every earlier commit and syncs the file with `fdatasync`, so one sync makes all the
//! writes before it durable (group commit). redb frees no page that the last durable
//! commit uses until the next durable commit, and checksums its roots, so a power cut
//! leaves the file as of the last durable commit, whole. `put_meta_durable` and
//! `save_snapshot` commit with `Durability::Immediate` themselves. Every sync goes through
//! [`SyncCounter`], which counts the real `fdatasync` calls redb makes on the file.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::backends::FileBackend;
use redb::{
    Database, Durability, ReadableTable, StorageBackend, TableDefinition, WriteTransaction,
};

use super::{Backend, BackendError, BackendResult, RawEntry};

/// The database file inside a node's data directory.
pub const FILE_NAME: &str = "lsm.redb";

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// How much of the file redb may cache in memory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// redb in one file on disk.
pub struct RedbBackend {
    db: Database,
    syncs: Arc<AtomicU64>,
}

/// redb's file backend, counting the `fdatasync` calls it makes.
#[derive(Debug)]
struct SyncCounter {
    file: FileBackend,
    syncs: Arc<AtomicU64>,
}

impl StorageBackend for SyncCounter {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.file.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.file.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        self.file.sync_data(eventual)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.file.write(offset, data)
    }
}

fn err(e: impl Into<redb::Error>) -> BackendError {
    BackendError(e.into().to_string())
}

fn open_err(path: &Path, e: redb::DatabaseError) -> BackendError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => BackendError(format!(
            "{} is locked by another process (is another node running on this data_dir?)",
            path.display()
        )),
        e => err(e),
    }
}

impl RedbBackend {
    /// Opens (or creates) the database in `dir`. A directory that holds a sled database
    /// (the files `conf` and `db`) and no `lsm.redb` is refused: its log and snapshot are
    /// not read, so the node would start empty under an old identity.
    pub fn open(dir: &Path) -> BackendResult<RedbBackend> {
        let path = dir.join(FILE_NAME);
        if !path.exists() && dir.join("conf").exists() && dir.join("db").exists() {
            return Err(BackendError(format!(
                "{} holds a sled database, which this version does not read; remove the node \
                 from the cluster (lsm-server remove-node), empty the directory and add the \
                 node back (lsm-server add-node) so it receives the state from the leader",
                dir.display()
            )));
        }
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let syncs = Arc::new(AtomicU64::new(0));
        let file = FileBackend::new(file).map_err(|e| open_err(&path, e))?;
        let counted = SyncCounter { file, syncs: syncs.clone() };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(counted)
            .map_err(|e| open_err(&path, e))?;
        let backend = RedbBackend { db, syncs };
        backend.write(Durability::Immediate, |txn| {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            txn.open_table(SNAPSHOT)?;
            Ok(())
        })?;
        // The file's name is on disk only once its directory is synced.
        File::open(dir)?.sync_all()?;
        Ok(backend)
    }

    /// The `fdatasync` calls made on the database file since it was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn write(
        &self,
        durability: Durability,
        op: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
    ) -> BackendResult<()> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(durability);
        op(&txn).map_err(err)?;
        txn.commit().map_err(err)
    }

    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        durability: Durability,
        pairs: &[(&str, &[u8])],
    ) -> BackendResult<()> {
        self.write(durability, |txn| {
            let mut table = txn.open_table(table)?;
            for (key, value) in pairs {
                table.insert(*key, *value)?;
            }
            Ok(())
        })
    }

    fn get(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> BackendResult<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(table).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }
}

impl Backend for RedbBackend {
    fn get_meta(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        self.get(META, key)
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> BackendResult<()> {
        self.put(META, Durability::None, &[(key, value)])
    }

    fn put_meta_durable(&self, key: &str, value: &[u8]) -> BackendResult<()> {
        self.put(META, Durability::Immediate, &[(key, value)])
    }

    fn append(&self, entries: &[RawEntry]) -> BackendResult<()> {
        self.write(Durability::None, |txn| {
            let mut log = txn.open_table(LOG)?;
            for (index, bytes) in entries {
                log.insert(*index, bytes.as_slice())?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> BackendResult<()> {
        self.write(Durability::Immediate, |_| Ok(()))
    }

    fn entries(&self, from: u64, to: u64) -> BackendResult<Vec<RawEntry>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(err)?;
        let log = txn.open_table(LOG).map_err(err)?;
        let mut out = Vec::new();
        for item in log.range(from..to).map_err(err)? {
            let (index, bytes) = item.map_err(err)?;
            out.push((index.value(), bytes.value().to_vec()));
        }
        Ok(out)
    }

    fn last_entry(&self) -> BackendResult<Option<RawEntry>> {
        let txn = self.db.begin_read().map_err(err)?;
        let log = txn.open_table(LOG).map_err(err)?;
        Ok(log.last().map_err(err)?.map(|(index, bytes)| (index.value(), bytes.value().to_vec())))
    }

    fn truncate_from(&self, from: u64) -> BackendResult<()> {
        self.write(Durability::None, |txn| {
            let mut log = txn.open_table(LOG)?;
            log.retain_in(from.., |_, _| false)?;
            Ok(())
        })
    }

    fn purge_upto(&self, upto: u64) -> BackendResult<()> {
        self.write(Durability::None, |txn| {
            let mut log = txn.open_table(LOG)?;
            log.retain_in(..=upto, |_, _| false)?;
            Ok(())
        })
    }

    fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> BackendResult<()> {
        self.put(SNAPSHOT, Durability::Immediate, &[("meta", meta), ("data", data)])
    }

    fn load_snapshot(&self) -> BackendResult<Option<(Vec<u8>, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(SNAPSHOT).map_err(err)?;
        let meta = table.get("meta").map_err(err)?;
        let data = table.get("data").map_err(err)?;
        match (meta, data) {
            (Some(meta), Some(data)) => Ok(Some((meta.value().to_vec(), data.value().to_vec()))),
            _ => Ok(None),
        }
    }
}
