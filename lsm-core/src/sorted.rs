//! Hash maps that serialize in key order.
//!
//! The two tables looked up on every request by client id (sessions and per-client load)
//! are hash maps: a B-tree keyed by strings costs a dozen string comparisons and cache
//! misses per lookup, which dominated `apply`. Determinism does not suffer, because the
//! hasher is fixed (FxHash, no random seed), `apply` never iterates these maps, and they
//! serialize as entries sorted by key, so snapshots and state hashes stay byte-identical
//! across nodes whatever order the entries were inserted in.

use std::hash::Hash;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serializes a hash map as a sequence of `(key, value)` sorted by key.
pub fn serialize<S, K, V>(map: &FxHashMap<K, V>, serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    K: Ord + Serialize,
    V: Serialize,
{
    let mut entries: Vec<(&K, &V)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    serializer.collect_seq(entries)
}

/// Reads what [`serialize`] wrote.
pub fn deserialize<'de, D, K, V>(deserializer: D) -> Result<FxHashMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Eq + Hash,
    V: Deserialize<'de>,
{
    let entries = Vec::<(K, V)>::deserialize(deserializer)?;
    Ok(entries.into_iter().collect())
}
