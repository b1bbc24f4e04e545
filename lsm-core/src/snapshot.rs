//! Snapshots, the state hash, and the full invariant check.
//!
//! A snapshot is a format version followed by the state in postcard encoding. Only the
//! tables are encoded; the indexes are rebuilt on restore, and the restored state is
//! checked against every invariant before it is handed out, so a node never serves from a
//! snapshot that does not add up. The state hash is SHA-256 over the snapshot bytes; since
//! every table is written in key order (the client table sorted by client id), equal
//! states have equal bytes and equal hashes.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::ids::{ClientId, FeatureName, PoolName};
use crate::state::{ClientLoad, State};

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

impl State {
    /// Encodes the whole state.
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&(SNAPSHOT_VERSION, self)).expect("encoding to memory cannot fail")
    }

    /// Decodes a snapshot, rebuilds the indexes and checks every invariant.
    pub fn restore(bytes: &[u8]) -> Result<State, Error> {
        let (version, rest): (u32, _) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::Snapshot(e.to_string()))?;
        if version != SNAPSHOT_VERSION {
            return Err(Error::SnapshotVersion { found: version, supported: SNAPSHOT_VERSION });
        }
        let mut state: State =
            postcard::from_bytes(rest).map_err(|e| Error::Snapshot(e.to_string()))?;
        state.rebuild_index();
        state.check_invariants()?;
        Ok(state)
    }

    /// SHA-256 of the snapshot: equal on every node that applied the same commands.
    pub fn state_hash(&self) -> [u8; 32] {
        Sha256::digest(self.snapshot()).into()
    }

    /// The state hash as lowercase hex.
    pub fn state_hash_hex(&self) -> String {
        self.state_hash().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks every invariant of the whole state. `apply` checks the features it touches
    /// as it goes; this is the full check, run after restore and by the tests.
    pub fn check_invariants(&self) -> Result<(), Error> {
        self.check_all().map_err(Error::Invariant)
    }

    fn check_all(&self) -> Result<(), String> {
        let limits = &self.limits;
        for feature in self.features.values() {
            feature.check()?;
        }
        let mut pool_use: BTreeMap<(&FeatureName, &PoolName), u64> = BTreeMap::new();
        let mut loads: BTreeMap<&ClientId, ClientLoad> = BTreeMap::new();
        let mut fences = BTreeSet::new();
        for (id, c) in self.checkouts.iter() {
            if id != c.id || id.0 == 0 || id.0 >= self.next_id {
                return Err(format!("checkout {id:?} has a bad id"));
            }
            if c.fence == 0 || c.fence >= self.next_fence || !fences.insert(c.fence) {
                return Err(format!("checkout {id:?} has a bad or repeated fence {}", c.fence));
            }
            if c.lease_expires_at_ms <= self.now_ms && self.last_index > 0 {
                return Err(format!("checkout {id:?} outlived its lease"));
            }
            if self.waiters.contains_key(&id) {
                return Err(format!("{id:?} is both live and queued"));
            }
            for item in c.items.iter() {
                *pool_use.entry((&item.feature, &item.pool)).or_default() += item.tokens;
            }
            loads.entry(&c.client).or_default().checkouts += 1;
        }
        for feature in self.features.values() {
            for pool in &feature.pools {
                let held = pool_use.remove(&(feature.name(), &pool.spec.name)).unwrap_or(0);
                if held != pool.used {
                    return Err(format!(
                        "{}/{}: pool counts {} but checkouts hold {held}",
                        feature.name(),
                        pool.spec.name,
                        pool.used
                    ));
                }
            }
        }
        if let Some(((f, p), n)) = pool_use.into_iter().find(|&(_, n)| n > 0) {
            return Err(format!("checkouts hold {n} tokens of missing pool {f}/{p}"));
        }
        for (id, w) in &self.waiters {
            if *id != w.id || id.0 == 0 || id.0 >= self.next_id {
                return Err(format!("queued request {id:?} has a bad id"));
            }
            if w.wait_expires_at_ms <= self.now_ms && self.last_index > 0 {
                return Err(format!("queued request {id:?} outlived its wait"));
            }
            loads.entry(&w.client).or_default().queued += 1;
        }
        let held: BTreeMap<&ClientId, ClientLoad> = self.clients.loads().collect();
        if loads != held {
            return Err("per-client counts do not match the checkouts and queue".into());
        }
        let mut fresh = self.clone();
        fresh.rebuild_index();
        if fresh.index != self.index {
            return Err("derived indexes do not match the tables".into());
        }
        self.clients.check()?;
        let sizes = [
            ("max_checkouts", self.checkouts.len(), limits.max_checkouts),
            ("max_queue_len", self.waiters.len(), limits.max_queue_len),
            ("max_sessions", self.clients.session_count(), limits.max_sessions),
            ("max_tombstones", self.tombstones.len(), limits.max_tombstones),
        ];
        for (limit, len, max) in sizes {
            if len as u64 > max {
                return Err(format!("{len} entries over {limit} = {max}"));
            }
        }
        Ok(())
    }
}
