//! A table keyed by checkout id, made for ids that are handed out in increasing order.
//!
//! Live checkouts and tombstones are mostly added at the newest id and removed near the
//! oldest, which a B-tree serves in a few hundred instructions per call (a descent of
//! three or four nodes, each a linear search). [`IdTable`] keeps a window of slots
//! indexed by `id - base` for the recent ids, so the common calls are an index and a
//! push or pop at either end, and a B-tree of the entries that outlived the window. The
//! window stays dense: when fewer than half its slots (less some slack) are occupied,
//! its oldest entries move to the tree, so memory stays proportional to the entries held
//! however the ids are spread. Every id moves to the tree at most once.
//!
//! The table iterates, compares and serializes in id order, exactly as a
//! `BTreeMap<CheckoutId, V>` would, so its snapshot bytes are a B-tree map's and two
//! tables with the same entries are equal however their windows lie.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::ids::CheckoutId;

/// Empty slots the window may hold beyond one per occupied slot.
const SLACK: usize = 64;

/// A map from checkout id to `V` (see the module documentation).
#[derive(Clone)]
pub(crate) struct IdTable<V> {
    /// Entries with ids below `base`.
    old: BTreeMap<CheckoutId, V>,
    /// The entry for id `base + i` is `window[i]`. Empty, or occupied at both ends.
    window: VecDeque<Option<V>>,
    /// The id of `window[0]`.
    base: u64,
    /// Occupied slots of `window`.
    in_window: usize,
}

impl<V> Default for IdTable<V> {
    fn default() -> Self {
        IdTable { old: BTreeMap::new(), window: VecDeque::new(), base: 0, in_window: 0 }
    }
}

impl<V> IdTable<V> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.old.len() + self.in_window
    }

    /// The window slot of `id`, if `id` is at or above `base` (the slot may lie beyond
    /// the window's end).
    fn offset(&self, id: CheckoutId) -> Option<usize> {
        id.0.checked_sub(self.base).map(|d| usize::try_from(d).unwrap_or(usize::MAX))
    }

    pub fn get(&self, id: &CheckoutId) -> Option<&V> {
        match self.offset(*id) {
            Some(i) => self.window.get(i)?.as_ref(),
            None => self.old.get(id),
        }
    }

    pub fn get_mut(&mut self, id: &CheckoutId) -> Option<&mut V> {
        match self.offset(*id) {
            Some(i) => self.window.get_mut(i)?.as_mut(),
            None => self.old.get_mut(id),
        }
    }

    pub fn contains_key(&self, id: &CheckoutId) -> bool {
        self.get(id).is_some()
    }

    /// Inserts `value` at `id`, returning the value it replaces.
    pub fn insert(&mut self, id: CheckoutId, value: V) -> Option<V> {
        let Some(mut i) = self.offset(id) else {
            return self.old.insert(id, value);
        };
        if let Some(slot) = self.window.get_mut(i) {
            let old = slot.replace(value);
            if old.is_none() {
                self.in_window += 1;
            }
            return old;
        }
        // Past the end: make room without letting the gap thin the window out.
        while !self.window.is_empty() && i >= self.bound(self.in_window + 1) {
            self.retire_front();
            i = self.offset(id).unwrap_or(0);
        }
        if self.window.is_empty() {
            self.base = id.0;
            i = 0;
        }
        self.window.resize_with(i, || None);
        self.window.push_back(Some(value));
        self.in_window += 1;
        None
    }

    /// Removes and returns the entry at `id`.
    pub fn remove(&mut self, id: &CheckoutId) -> Option<V> {
        let Some(i) = self.offset(*id) else {
            return self.old.remove(id);
        };
        let value = self.window.get_mut(i)?.take()?;
        self.in_window -= 1;
        self.trim();
        while self.window.len() > self.bound(self.in_window) {
            self.retire_front();
        }
        Some(value)
    }

    /// Removes and returns the entry with the lowest id.
    pub fn pop_first(&mut self) -> Option<(CheckoutId, V)> {
        if let Some(entry) = self.old.pop_first() {
            return Some(entry);
        }
        let value = self.window.pop_front()??;
        let id = CheckoutId(self.base);
        self.base += 1;
        self.in_window -= 1;
        self.trim();
        Some((id, value))
    }

    /// The most slots a window with `occupied` entries may span.
    fn bound(&self, occupied: usize) -> usize {
        2 * occupied + SLACK
    }

    /// Moves the window's first entry to the tree.
    fn retire_front(&mut self) {
        if let Some(Some(value)) = self.window.pop_front() {
            self.old.insert(CheckoutId(self.base), value);
            self.in_window -= 1;
        }
        self.base += 1;
        self.trim();
    }

    /// Drops empty slots from both ends of the window.
    fn trim(&mut self) {
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.base += 1;
        }
        while let Some(None) = self.window.back() {
            self.window.pop_back();
        }
    }

    /// Entries in id order.
    pub fn iter(&self) -> impl Iterator<Item = (CheckoutId, &V)> {
        self.range_from(CheckoutId(0))
    }

    /// Entries with ids from `start` on, in id order.
    pub fn range_from(&self, start: CheckoutId) -> impl Iterator<Item = (CheckoutId, &V)> {
        let skip = self.offset(start).unwrap_or(0);
        let base = self.base;
        let window = self.window.iter().enumerate().skip(skip);
        (self.old.range(start..).map(|(&id, v)| (id, v))).chain(
            window.filter_map(move |(i, v)| Some((CheckoutId(base + i as u64), v.as_ref()?))),
        )
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.old.values().chain(self.window.iter().flatten())
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.old.values_mut().chain(self.window.iter_mut().flatten())
    }
}

impl<V> FromIterator<(CheckoutId, V)> for IdTable<V> {
    fn from_iter<I: IntoIterator<Item = (CheckoutId, V)>>(entries: I) -> Self {
        let mut table = IdTable::default();
        for (id, value) in entries {
            table.insert(id, value);
        }
        table
    }
}

impl<V: PartialEq> PartialEq for IdTable<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<V: Eq> Eq for IdTable<V> {}

impl<V: fmt::Debug> fmt::Debug for IdTable<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Serialized as the map it stands for: its length, then its entries in id order.
impl<V: Serialize> Serialize for IdTable<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (id, value) in self.iter() {
            map.serialize_entry(&id, value)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for IdTable<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<CheckoutId, V>::deserialize(deserializer)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random calls on a table and on the `BTreeMap` it stands for, mostly inserts at the
    /// next id and removals anywhere, with some inserts at old ids, gaps in the ids and
    /// removals of missing ones. After every call the two hold the same entries in the
    /// same order and the window is dense; at the end they serialize to the same bytes.
    #[test]
    fn it_behaves_as_a_btree_map() {
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut table = IdTable::default();
            let mut model = BTreeMap::new();
            let mut next = 1u64;
            for n in 0..rng.random_range(1..600) {
                match rng.random_range(0..13) {
                    0..3 => {
                        let id = CheckoutId(next.saturating_sub(rng.random_range(0..300)).max(1));
                        assert_eq!(table.insert(id, n), model.insert(id, n), "seed {seed}");
                    }
                    3..6 => {
                        next += 1;
                        let id = CheckoutId(next);
                        assert_eq!(table.insert(id, n), model.insert(id, n), "seed {seed}");
                    }
                    6..10 => {
                        let nth = rng.random_range(0..model.len().max(1));
                        if let Some(&id) = model.keys().nth(nth) {
                            assert_eq!(table.remove(&id), model.remove(&id), "seed {seed}");
                        }
                    }
                    10 => {
                        let id = CheckoutId(rng.random_range(0..next + 100));
                        assert_eq!(table.remove(&id), model.remove(&id), "seed {seed}");
                    }
                    11 => assert_eq!(table.pop_first(), model.pop_first(), "seed {seed}"),
                    _ => next += rng.random_range(0..1_000),
                }
                assert_eq!(table.len(), model.len(), "seed {seed}");
                assert!(table.iter().eq(model.iter().map(|(k, v)| (*k, v))), "seed {seed}");
                assert!(table.values().eq(model.values()), "seed {seed}");
                let probes = (0..8).map(|_| rng.random_range(0..next + 2));
                let near = [table.base.saturating_sub(1), table.base, table.base + 1];
                for id in probes.chain(near).chain(model.keys().map(|id| id.0)).map(CheckoutId) {
                    assert_eq!(table.get(&id), model.get(&id), "seed {seed}, {id:?}");
                }
                assert!(table.window.len() <= table.bound(table.in_window), "seed {seed}");
                assert_eq!(table.in_window, table.window.iter().flatten().count());
                assert!(table.window.front().is_none_or(Option::is_some), "seed {seed}");
                assert!(table.window.back().is_none_or(Option::is_some), "seed {seed}");
                assert!(table.old.keys().all(|id| id.0 < table.base), "seed {seed}");
            }
            let bytes = postcard::to_allocvec(&table).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&model).unwrap(), "seed {seed}");
            let back: IdTable<usize> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, table, "seed {seed}");
            let start = CheckoutId(next / 2);
            let expected = model.range(start..).map(|(k, v)| (*k, v));
            assert!(table.range_from(start).eq(expected), "seed {seed}");
        }
    }

    #[test]
    fn oldest_first_removal_keeps_everything_in_the_window() {
        let mut table = IdTable::default();
        for id in 1..=1_000 {
            table.insert(CheckoutId(id), id);
        }
        for id in 1..=500 {
            assert_eq!(table.remove(&CheckoutId(id)), Some(id));
            table.insert(CheckoutId(1_000 + id), id);
        }
        assert!(table.old.is_empty());
        assert_eq!((table.base, table.window.len(), table.len()), (501, 1_000, 1_000));
    }

    #[test]
    fn one_long_lived_entry_moves_out_of_a_thinning_window() {
        let mut table = IdTable::default();
        table.insert(CheckoutId(1), 0);
        for id in 2..10_000 {
            table.insert(CheckoutId(id * 2), 1);
            table.remove(&CheckoutId(id * 2));
        }
        assert_eq!(table.old.keys().copied().collect::<Vec<_>>(), [CheckoutId(1)]);
        assert!(table.window.is_empty());
        assert_eq!(table.get(&CheckoutId(1)), Some(&0));
    }
}
