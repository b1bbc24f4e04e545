//! The lease index: `(expires_at_ms, id)` of every live checkout, earliest first.
//!
//! Leases are mostly granted and renewed to "now plus the lease length", so new keys
//! arrive in increasing order, and they mostly leave from the front (expiry, and release
//! of the oldest checkouts). [`Deadlines`] keeps those keys in a sorted run, a ring buffer
//! where they are appended and popped at either end in a few instructions, and only keys
//! that arrive out of order (a shorter lease than the last one granted, an offline borrow
//! ending before it) in a B-tree beside it.
//!
//! A key leaving from the middle of the run (a renewal, a release out of order) stays
//! where it lies and is put in a hash set of gone keys: one probe of a small table,
//! where finding it in the run would take a binary search whose probes, in a run of
//! 100,000 keys, mostly miss the cache. A gone key leaves the run when it reaches the
//! front, or when gone keys make up half the run, which is then compacted in one pass; so
//! the run never holds more than twice the live keys it indexes (plus some slack), and
//! its front is always live. The set is only probed, never iterated.
//!
//! Offline borrows, which end days or weeks later than any lease, go straight to the
//! tree ([`Deadlines::insert_aside`]): at the back of the run, one would send every lease
//! granted after it to the tree for as long as it lasts. A site whose clients ask for
//! lease lengths far apart gets the same effect from its longest ones, and the index then
//! costs what a B-tree costs, no more.

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashSet;

use crate::ids::CheckoutId;

/// Gone keys the run may hold beyond half its length.
const SLACK: usize = 32;

/// The lease index (see the module documentation).
#[derive(Clone, Debug, Default)]
pub(crate) struct Deadlines {
    /// `(at, id)` in increasing order; its front is live.
    run: VecDeque<(u64, u64)>,
    /// Keys removed from the run but still in it.
    gone: FxHashSet<(u64, u64)>,
    /// Keys that arrived below the run's last one.
    rest: BTreeSet<(u64, CheckoutId)>,
}

impl Deadlines {
    /// Adds a key that is expected to be the latest so far.
    pub fn insert(&mut self, at: u64, id: CheckoutId) {
        let key = (at, id.0);
        if !self.gone.is_empty() && self.gone.remove(&key) {
            return; // still in its place in the run
        }
        match self.run.back() {
            Some(&back) if key < back => {
                self.rest.insert((at, id));
            }
            _ => self.run.push_back(key),
        }
    }

    /// Adds a key that is expected to be later than most keys to come.
    pub fn insert_aside(&mut self, at: u64, id: CheckoutId) {
        self.rest.insert((at, id));
    }

    /// Removes a key, which must be in the index.
    pub fn remove(&mut self, at: u64, id: CheckoutId) {
        let key = (at, id.0);
        if self.run.front() == Some(&key) {
            self.run.pop_front();
            self.drop_gone_front();
            return;
        }
        if !self.rest.is_empty() && self.rest.remove(&(at, id)) {
            return;
        }
        // Finding the key in the run is the binary search this index exists to avoid, so
        // only debug builds look; a key removed twice is caught in every build, for free.
        debug_assert!(
            self.run.binary_search(&key).is_ok(),
            "removing {key:?}, which the lease index does not hold"
        );
        let fresh = self.gone.insert(key);
        assert!(fresh, "removing {key:?} from the lease index twice");
        if self.gone.len() > self.run.len() / 2 + SLACK {
            let gone = std::mem::take(&mut self.gone);
            self.run.retain(|key| !gone.contains(key));
        }
    }

    /// Pops gone keys off the front of the run.
    fn drop_gone_front(&mut self) {
        while !self.gone.is_empty()
            && let Some(front) = self.run.front()
            && self.gone.remove(front)
        {
            self.run.pop_front();
        }
    }

    /// The earliest key.
    pub fn first(&self) -> Option<(u64, CheckoutId)> {
        let run = self.run.front().map(|&(t, i)| (t, CheckoutId(i)));
        match (run, self.rest.first()) {
            (Some(a), Some(&b)) => Some(a.min(b)),
            (a, b) => a.or(b.copied()),
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.run.len() - self.gone.len() + self.rest.len()
    }

    /// Every key, in order.
    fn keys(&self) -> Vec<(u64, CheckoutId)> {
        let run = self.run.iter().filter(|key| !self.gone.contains(key));
        let mut keys: Vec<_> = run.map(|&(t, i)| (t, CheckoutId(i))).collect();
        keys.extend(self.rest.iter().copied());
        keys.sort_unstable();
        keys
    }
}

/// Built in one sort, all in the run.
impl FromIterator<(u64, CheckoutId)> for Deadlines {
    fn from_iter<I: IntoIterator<Item = (u64, CheckoutId)>>(keys: I) -> Self {
        let mut keys: Vec<(u64, u64)> = keys.into_iter().map(|(t, id)| (t, id.0)).collect();
        keys.sort_unstable();
        Deadlines { run: keys.into(), gone: FxHashSet::default(), rest: BTreeSet::new() }
    }
}

/// Equal when they hold the same keys, however these lie between run and tree.
impl PartialEq for Deadlines {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.keys() == other.keys()
    }
}

impl Eq for Deadlines {}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random grants (mostly at increasing times, some shorter leases, some far borrows),
    /// renewals, and removals from the front and from anywhere, checked against a
    /// `BTreeSet` after every call; the run stays within its bound and its front live.
    #[test]
    fn it_behaves_as_a_btree_set() {
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut index = Deadlines::default();
            let mut model: BTreeSet<(u64, CheckoutId)> = BTreeSet::new();
            let (mut now, mut next_id) = (0u64, 1u64);
            let mut removed = Vec::new();
            for _ in 0..rng.random_range(1..800) {
                now += rng.random_range(0..3);
                match rng.random_range(0..10) {
                    0..4 => {
                        let ttl = match rng.random_range(0..10) {
                            0 => rng.random_range(0..100),
                            1 => 10_000,
                            _ => 30,
                        };
                        let key = (now + ttl, CheckoutId(next_id));
                        next_id += 1;
                        if rng.random_bool(0.05) {
                            index.insert_aside(key.0, key.1);
                        } else {
                            index.insert(key.0, key.1);
                        }
                        model.insert(key);
                    }
                    4..6 => {
                        if let Some(&key) = model.first() {
                            index.remove(key.0, key.1);
                            model.remove(&key);
                            removed.push(key);
                        }
                    }
                    6..8 => {
                        let nth = rng.random_range(0..model.len().max(1));
                        if let Some(&(at, id)) = model.iter().nth(nth) {
                            index.remove(at, id);
                            model.remove(&(at, id));
                            removed.push((at, id));
                            if rng.random_bool(0.5) {
                                index.insert(now + 30, id);
                                model.insert((now + 30, id));
                            }
                        }
                    }
                    _ => {
                        // A key removed earlier comes back: gone keys still in the run
                        // become live in place, others are added anew.
                        let nth = rng.random_range(0..removed.len().max(1));
                        if let Some(&key) = removed.get(nth)
                            && !model.contains(&key)
                        {
                            index.insert(key.0, key.1);
                            model.insert(key);
                        }
                    }
                }
                assert_eq!(index.first(), model.first().copied(), "seed {seed}");
                assert_eq!(index.len(), model.len(), "seed {seed}");
                assert_eq!(index.keys(), model.iter().copied().collect::<Vec<_>>(), "seed {seed}");
                assert!(index.run.front().is_none_or(|k| !index.gone.contains(k)), "seed {seed}");
                assert!(index.gone.len() <= index.run.len() / 2 + SLACK, "seed {seed}");
                assert!(index.gone.iter().all(|k| index.run.contains(k)), "seed {seed}");
                assert!(index.run.iter().is_sorted(), "seed {seed}");
            }
            let rebuilt: Deadlines = model.iter().copied().collect();
            assert_eq!(rebuilt, index, "seed {seed}");
        }
    }

    #[test]
    fn keys_in_order_stay_out_of_the_tree() {
        let mut index = Deadlines::default();
        for id in 1..=1_000 {
            index.insert(30_000 + id * 10, CheckoutId(id));
        }
        for id in 1..=500 {
            index.remove(30_000 + id * 10, CheckoutId(id));
        }
        assert!(index.rest.is_empty());
        assert_eq!((index.run.len(), index.gone.len()), (500, 0));
        assert_eq!(index.first(), Some((35_010, CheckoutId(501))));
    }

    /// Removals from the middle leave gone keys in the run until they pass half of it;
    /// then one pass drops them all, and the live keys are all still there, in order.
    #[test]
    fn gone_keys_are_compacted_at_half() {
        let mut index = Deadlines::default();
        for id in 1..=1_000 {
            index.insert(30_000 + id, CheckoutId(id));
        }
        let mut live: BTreeSet<(u64, CheckoutId)> =
            (1..=1_000).map(|id| (30_000 + id, CheckoutId(id))).collect();
        let mut compacted = false;
        for id in (1..=1_000).filter(|id| id % 4 != 1) {
            index.remove(30_000 + id, CheckoutId(id));
            live.remove(&(30_000 + id, CheckoutId(id)));
            let run = index.run.len();
            compacted |= run < 1_000;
            assert!(index.gone.len() <= run / 2 + SLACK);
            assert_eq!(index.len(), live.len());
        }
        assert!(compacted, "removing three keys in four from the middle compacts the run");
        assert!(index.rest.is_empty());
        assert_eq!(index.keys(), live.iter().copied().collect::<Vec<_>>());
        assert_eq!(index.first(), Some((30_001, CheckoutId(1))));
    }
}
