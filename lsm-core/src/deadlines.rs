//! The lease index: `(expires_at_ms, id)` of every live checkout, earliest first.
//!
//! Leases are mostly granted and renewed to "now plus the lease length", so new keys
//! arrive in increasing order, and they mostly leave from the front (expiry, and release
//! of the oldest checkouts). [`Deadlines`] keeps those keys in a sorted run, a ring buffer
//! where they are appended and popped at either end in a few instructions, and only keys
//! that arrive out of order (a shorter lease than the last one granted, an offline borrow
//! ending before it) in a B-tree beside it. A key leaving from the middle of the run is
//! marked dead where it lies (found by binary search) and dropped when it reaches the
//! front or the back, or when dead keys make up half the run, which is then compacted in
//! one pass; so the run never holds more than twice the live keys it indexes (plus some
//! slack), and both its ends are always live.
//!
//! Offline borrows, which end days or weeks later than any lease, go straight to the
//! tree ([`Deadlines::insert_aside`]): at the back of the run, one would send every lease
//! granted after it to the tree for as long as it lasts. A site whose clients ask for
//! lease lengths far apart gets the same effect from its longest ones, and the index then
//! costs what a B-tree costs, no more.

use std::collections::{BTreeSet, VecDeque};

use crate::ids::CheckoutId;

/// Marks a dead key in the run. Checkout ids never come near it.
const DEAD: u64 = 1 << 63;

/// Dead keys the run may hold beyond half its length.
const SLACK: usize = 32;

/// The lease index (see the module documentation).
#[derive(Clone, Debug, Default)]
pub(crate) struct Deadlines {
    /// `(at, id)` in increasing order of `(at, id & !DEAD)`; its front is live.
    run: VecDeque<(u64, u64)>,
    /// Dead keys in `run`.
    dead: usize,
    /// Keys that arrived below the run's last one.
    rest: BTreeSet<(u64, CheckoutId)>,
}

impl Deadlines {
    /// Adds a key that is expected to be the latest so far.
    pub fn insert(&mut self, at: u64, id: CheckoutId) {
        match self.run.back() {
            Some(&(t, i)) if (at, id.0) < (t, i & !DEAD) => {
                self.rest.insert((at, id));
            }
            _ => self.run.push_back((at, id.0)),
        }
    }

    /// Adds a key that is expected to be later than most keys to come.
    pub fn insert_aside(&mut self, at: u64, id: CheckoutId) {
        self.rest.insert((at, id));
    }

    /// Removes a key; false if it was not there.
    pub fn remove(&mut self, at: u64, id: CheckoutId) -> bool {
        if self.run.front() == Some(&(at, id.0)) {
            self.run.pop_front();
            self.drop_dead_front();
            return true;
        }
        if !self.rest.is_empty() && self.rest.remove(&(at, id)) {
            return true;
        }
        let key = (at, id.0);
        let Ok(pos) = self.run.binary_search_by(|&(t, i)| (t, i & !DEAD).cmp(&key)) else {
            return false;
        };
        if self.run[pos].1 & DEAD != 0 {
            return false;
        }
        self.run[pos].1 |= DEAD;
        self.dead += 1;
        while let Some(&(_, i)) = self.run.back()
            && i & DEAD != 0
        {
            self.run.pop_back();
            self.dead -= 1;
        }
        if self.dead > self.run.len() / 2 + SLACK {
            self.run.retain(|&(_, i)| i & DEAD == 0);
            self.dead = 0;
        }
        true
    }

    /// Pops dead keys off the front of the run.
    fn drop_dead_front(&mut self) {
        while let Some(&(_, i)) = self.run.front()
            && i & DEAD != 0
        {
            self.run.pop_front();
            self.dead -= 1;
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
        self.run.len() - self.dead + self.rest.len()
    }

    /// Every key, in order.
    fn keys(&self) -> Vec<(u64, CheckoutId)> {
        let run = self.run.iter().filter(|&&(_, i)| i & DEAD == 0);
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
        Deadlines { run: keys.into(), dead: 0, rest: BTreeSet::new() }
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
                            assert!(index.remove(key.0, key.1), "seed {seed}");
                            model.remove(&key);
                        }
                    }
                    6..8 => {
                        let nth = rng.random_range(0..model.len().max(1));
                        if let Some(&(at, id)) = model.iter().nth(nth) {
                            assert!(index.remove(at, id), "seed {seed}");
                            model.remove(&(at, id));
                            if rng.random_bool(0.5) {
                                index.insert(now + 30, id);
                                model.insert((now + 30, id));
                            }
                        }
                    }
                    _ => {
                        let key = (
                            rng.random_range(0..now + 50),
                            CheckoutId(rng.random_range(0..next_id + 5)),
                        );
                        assert_eq!(index.remove(key.0, key.1), model.remove(&key), "seed {seed}");
                    }
                }
                assert_eq!(index.first(), model.first().copied(), "seed {seed}");
                assert_eq!(index.len(), model.len(), "seed {seed}");
                assert_eq!(index.keys(), model.iter().copied().collect::<Vec<_>>(), "seed {seed}");
                assert!(index.run.front().is_none_or(|&(_, i)| i & DEAD == 0), "seed {seed}");
                assert!(index.run.back().is_none_or(|&(_, i)| i & DEAD == 0), "seed {seed}");
                assert!(index.dead <= index.run.len() / 2 + SLACK, "seed {seed}");
                let run: Vec<_> = index.run.iter().map(|&(t, i)| (t, i & !DEAD)).collect();
                assert!(run.is_sorted(), "seed {seed}");
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
            assert!(index.remove(30_000 + id * 10, CheckoutId(id)));
        }
        assert!(index.rest.is_empty());
        assert_eq!((index.run.len(), index.dead), (500, 0));
        assert_eq!(index.first(), Some((35_010, CheckoutId(501))));
    }
}
