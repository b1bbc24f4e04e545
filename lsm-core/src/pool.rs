//! Token accounting for one feature: pools, reserves, the shared remainder and lending.
//!
//! Each pool counts the tokens its checkouts hold (`used`) and where they came from:
//! its own reserve (`own`), the feature's unreserved remainder (`shared`), another
//! pool's idle reserve (`borrowed`), or nothing at all (`unbacked`, only after a new
//! license shrank the feature below what was in use). Tokens are fungible, so sources are
//! tracked per pool, not per checkout. The grant rule and its invariants are documented in
//! `docs/design/licensing-model.md`; [`FeatureState::check`] verifies them.
//!
//! Grant order for `n` tokens in pool `p`: `p`'s cap, then the feature total, then `p`'s
//! idle reserve, then the shared remainder, then lending pools in declaration order, each
//! down to its `keep_idle` mark. Release order is the reverse: unbacked, borrowed, shared,
//! own, so lenders get their tokens back first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smallvec::{SmallVec, smallvec};

use crate::ids::{FeatureName, PoolName};
use crate::license::{Entitlement, PoolSpec};
use crate::response::Denial;

/// One feature's entitlement and pools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureState {
    /// What the license grants.
    pub entitlement: Entitlement,
    /// Pools in declaration order (which is also the lending order).
    pub pools: Vec<PoolState>,
    /// The feature is no longer licensed; it stays until its checkouts are gone.
    pub retired: bool,
}

/// One pool's configuration and accounting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// The configuration.
    pub spec: PoolSpec,
    /// The cap in force (the spec's cap, or the feature total).
    pub cap: u64,
    /// Tokens held by this pool's checkouts.
    pub used: u64,
    /// Of `used`, tokens from this pool's own reserve.
    pub own: u64,
    /// Of `used`, tokens from the feature's unreserved remainder.
    pub shared: u64,
    /// Of `used`, tokens borrowed from lending pools, by lender.
    pub borrowed: BTreeMap<PoolName, u64>,
    /// Of `used`, tokens with no source because a new license shrank the feature.
    pub unbacked: u64,
    /// Tokens of this pool's reserve lent to other pools.
    pub lent: u64,
    /// Tokens above `cap` that were held when a new license lowered the cap. They only
    /// fall; a grant never adds to them.
    pub over_cap: u64,
    /// The pool is no longer configured; it stays until its checkouts are gone.
    pub retired: bool,
}

/// Where the tokens of one grant come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// From the pool's own reserve.
    pub own: u64,
    /// From the shared remainder.
    pub shared: u64,
    /// From lenders, by pool index.
    pub borrowed: Vec<(usize, u64)>,
}

impl PoolState {
    fn new(spec: PoolSpec, total: u64) -> PoolState {
        PoolState {
            cap: spec.cap.unwrap_or(total),
            spec,
            used: 0,
            own: 0,
            shared: 0,
            borrowed: BTreeMap::new(),
            unbacked: 0,
            lent: 0,
            over_cap: 0,
            retired: false,
        }
    }

    /// Reserved tokens neither used by the pool nor lent out.
    pub fn idle_reserve(&self) -> u64 {
        self.spec.reserve.saturating_sub(self.own + self.lent)
    }

    /// Idle reserve this pool may lend now (above its low-water mark).
    pub fn lendable(&self) -> u64 {
        if self.spec.lend { self.idle_reserve().saturating_sub(self.spec.keep_idle) } else { 0 }
    }

    /// Tokens borrowed from other pools, in all.
    pub fn borrowed_total(&self) -> u64 {
        self.borrowed.values().sum()
    }
}

impl FeatureState {
    /// Builds a feature with no tokens in use. `pools` must have passed validation.
    pub fn new(entitlement: Entitlement, pools: Vec<PoolSpec>) -> FeatureState {
        let total = entitlement.tokens_total;
        let pools = pools.into_iter().map(|spec| PoolState::new(spec, total)).collect();
        FeatureState { entitlement, pools, retired: false }
    }

    /// The feature's name.
    pub fn name(&self) -> &FeatureName {
        &self.entitlement.feature
    }

    /// Tokens in use across all pools.
    pub fn in_use(&self) -> u64 {
        self.pools.iter().map(|p| p.used).sum()
    }

    /// Tokens not reserved by any pool.
    pub fn shared_size(&self) -> u64 {
        let reserved: u64 = self.pools.iter().map(|p| p.spec.reserve).sum();
        self.entitlement.tokens_total.saturating_sub(reserved)
    }

    /// Tokens of the shared remainder not in use.
    pub fn shared_free(&self) -> u64 {
        let used: u64 = self.pools.iter().map(|p| p.shared).sum();
        self.shared_size().saturating_sub(used)
    }

    /// Free tokens of the feature (total minus in use, never negative).
    pub fn free(&self) -> u64 {
        self.entitlement.tokens_total.saturating_sub(self.in_use())
    }

    /// The index of a pool by name.
    pub fn pool_index(&self, name: &PoolName) -> Option<usize> {
        self.pools.iter().position(|p| &p.spec.name == name && !p.retired)
    }

    /// Tokens pool `p` could be granted now, ignoring its cap and the feature total.
    fn reachable(&self, p: usize) -> u64 {
        let lent: u64 = (self.pools.iter().enumerate())
            .filter(|&(q, _)| q != p)
            .map(|(_, pool)| pool.lendable())
            .sum();
        self.pools[p].idle_reserve() + self.shared_free() + lent
    }

    /// Tokens pool `p` could be granted now, within its cap and the feature total.
    pub fn available(&self, p: usize) -> u64 {
        let pool = &self.pools[p];
        let room = pool.cap.saturating_sub(pool.used);
        self.free().min(room).min(self.reachable(p))
    }

    /// Plans a grant of `tokens` to pool `p`, or says why it cannot be made now: the
    /// pool's cap, then the feature's free tokens, then the sources in grant order.
    pub fn plan(&self, p: usize, tokens: u64) -> Result<Allocation, Denial> {
        let pool = &self.pools[p];
        let denied = |available: u64| Denial::NoTokens {
            feature: self.name().clone(),
            pool: pool.spec.name.clone(),
            available,
            requested: tokens,
        };
        let total = self.entitlement.tokens_total;
        if pool.used + tokens > pool.cap && pool.cap < total {
            return Err(Denial::PoolCap {
                feature: self.name().clone(),
                pool: pool.spec.name.clone(),
                cap: pool.cap,
                held: pool.used,
                requested: tokens,
            });
        }
        // `in_use + n <= total`: after a new license shrank the feature below what is in
        // use, even a request that costs nothing waits until usage falls.
        if self.in_use() + tokens > total {
            return Err(denied(self.free().min(self.reachable(p))));
        }
        let own = tokens.min(pool.idle_reserve());
        let shared = (tokens - own).min(self.shared_free());
        let mut rest = tokens - own - shared;
        let mut borrowed = Vec::new();
        for (q, lender) in self.pools.iter().enumerate() {
            if rest == 0 {
                break;
            }
            let take = if q == p { 0 } else { rest.min(lender.lendable()) };
            if take > 0 {
                borrowed.push((q, take));
                rest -= take;
            }
        }
        if rest > 0 {
            return Err(denied(tokens - rest));
        }
        Ok(Allocation { own, shared, borrowed })
    }

    /// Applies a planned grant of `tokens` to pool `p`.
    pub fn take(&mut self, p: usize, tokens: u64, alloc: &Allocation) {
        for &(q, n) in &alloc.borrowed {
            self.pools[q].lent += n;
            let lender = self.pools[q].spec.name.clone();
            *self.pools[p].borrowed.entry(lender).or_default() += n;
        }
        let pool = &mut self.pools[p];
        pool.used += tokens;
        pool.own += alloc.own;
        pool.shared += alloc.shared;
    }

    /// Returns `tokens` held by pool `p`: unbacked first, then borrowed, shared, own.
    pub fn give_back(&mut self, p: usize, tokens: u64) {
        let pool = &mut self.pools[p];
        // Unchecked, the subtraction below would wrap in a release build and the pool
        // would count tokens nobody holds.
        assert!(tokens <= pool.used, "returning more than the pool holds");
        pool.used -= tokens;
        pool.over_cap = pool.over_cap.min(pool.used.saturating_sub(pool.cap));
        let mut rest = tokens;
        let from_unbacked = rest.min(pool.unbacked);
        pool.unbacked -= from_unbacked;
        rest -= from_unbacked;
        let mut returned = Vec::new();
        while rest > 0 {
            let Some(mut entry) = pool.borrowed.first_entry() else { break };
            let n = rest.min(*entry.get());
            *entry.get_mut() -= n;
            rest -= n;
            if *entry.get() == 0 {
                returned.push((entry.remove_entry().0, n));
            } else {
                returned.push((entry.key().clone(), n));
            }
        }
        let from_shared = rest.min(pool.shared);
        pool.shared -= from_shared;
        rest -= from_shared;
        pool.own -= rest;
        for (lender, n) in returned {
            if let Some(q) = self.pools.iter_mut().find(|q| q.spec.name == lender) {
                q.lent -= n;
            }
        }
        if self.pools.iter().any(|p| p.unbacked > 0) {
            self.rebalance();
        }
    }

    /// Recomputes every pool's sources from its `used` count: own reserve first, then
    /// the shared remainder, then lenders down to their low-water marks, and the rest
    /// unbacked. Used after a new license, and while any tokens are unbacked.
    pub fn rebalance(&mut self) {
        for pool in &mut self.pools {
            pool.own = pool.used.min(pool.spec.reserve);
            pool.shared = 0;
            pool.borrowed.clear();
            pool.unbacked = 0;
            pool.lent = 0;
        }
        for p in 0..self.pools.len() {
            let mut rest = self.pools[p].used - self.pools[p].own;
            let shared = rest.min(self.shared_free());
            self.pools[p].shared = shared;
            rest -= shared;
            for q in 0..self.pools.len() {
                if rest == 0 {
                    break;
                }
                let take = if q == p { 0 } else { rest.min(self.pools[q].lendable()) };
                if take > 0 {
                    self.pools[q].lent += take;
                    let lender = self.pools[q].spec.name.clone();
                    *self.pools[p].borrowed.entry(lender).or_default() += take;
                    rest -= take;
                }
            }
            self.pools[p].unbacked = rest;
        }
    }

    /// Replaces the entitlement and pools with a new configuration, keeping the usage of
    /// pools that continue and retiring those that are gone but still in use.
    pub fn reconfigure(&mut self, entitlement: Entitlement, specs: Vec<PoolSpec>) {
        let total = entitlement.tokens_total;
        let mut old: BTreeMap<PoolName, PoolState> =
            self.pools.drain(..).map(|p| (p.spec.name.clone(), p)).collect();
        let mut pools: Vec<PoolState> = specs
            .into_iter()
            .map(|spec| {
                let mut pool = PoolState::new(spec, total);
                if let Some(prev) = old.remove(&pool.spec.name) {
                    pool.used = prev.used;
                }
                pool
            })
            .collect();
        for (_, prev) in old {
            if prev.used > 0 {
                let mut spec = PoolSpec::open(prev.spec.name.clone());
                spec.cap = Some(0);
                let mut pool = PoolState::new(spec, total);
                pool.used = prev.used;
                pool.retired = true;
                pools.push(pool);
            }
        }
        for pool in &mut pools {
            pool.over_cap = pool.used.saturating_sub(pool.cap);
        }
        self.entitlement = entitlement;
        self.pools = pools;
        self.retired = false;
        self.rebalance();
    }

    /// Drops retired pools that no longer hold tokens.
    pub fn prune(&mut self) {
        if self.pools.iter().any(|p| p.retired && p.used == 0) {
            self.pools.retain(|p| !(p.retired && p.used == 0));
            self.rebalance();
        }
    }

    /// Checks the accounting invariants of this feature.
    pub fn check(&self) -> Result<(), String> {
        let name = self.name();
        // Tokens lent per pool, by position: one pass, no map (this runs on every apply).
        let mut lent_to: SmallVec<[u64; 8]> = smallvec![0; self.pools.len()];
        let (mut shared, mut reserved, mut backed) = (0u64, 0u64, 0u64);
        for pool in &self.pools {
            let p = &pool.spec.name;
            let sources = pool.own + pool.shared + pool.borrowed_total() + pool.unbacked;
            if sources != pool.used {
                return Err(format!("{name}/{p}: used {} but sources add to {sources}", pool.used));
            }
            if pool.own + pool.lent > pool.spec.reserve {
                return Err(format!(
                    "{name}/{p}: own {} + lent {} exceed reserve {}",
                    pool.own, pool.lent, pool.spec.reserve
                ));
            }
            if pool.used > pool.cap + pool.over_cap {
                return Err(format!("{name}/{p}: used {} over cap {}", pool.used, pool.cap));
            }
            for (lender, n) in &pool.borrowed {
                match self.pools.iter().position(|q| &q.spec.name == lender) {
                    Some(q) => lent_to[q] += n,
                    None => {
                        return Err(format!("{name}: tokens borrowed from unknown pool {lender}"));
                    }
                }
            }
            shared += pool.shared;
            reserved += pool.spec.reserve;
            backed += pool.used - pool.unbacked;
        }
        for (pool, lent) in self.pools.iter().zip(lent_to) {
            if lent != pool.lent {
                return Err(format!(
                    "{name}/{}: lent {} but borrowers hold {lent}",
                    pool.spec.name, pool.lent
                ));
            }
        }
        let shared_size = self.entitlement.tokens_total.saturating_sub(reserved);
        if shared > shared_size {
            return Err(format!("{name}: shared use {shared} over remainder {shared_size}"));
        }
        if backed > self.entitlement.tokens_total {
            return Err(format!(
                "{name}: {backed} backed tokens over the total {}",
                self.entitlement.tokens_total
            ));
        }
        Ok(())
    }
}
