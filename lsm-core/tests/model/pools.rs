//! The model's token accounting for one feature, written from "What each pool counts",
//! "The grant rule" and "A license that shrinks while jobs run" in
//! `docs/design/licensing-model.md`.
//!
//! Tokens are fungible, so the doc tracks sources per pool, not per checkout. The model
//! keeps them as a plain list of parcels (a pool, the source its tokens came from, how
//! many), and every figure the doc names (`own`, `shared`, `borrowed`, `lent`, `unbacked`,
//! `used`, idle reserve, shared free, lendable) is a sum over that list computed when it
//! is asked for. Nothing is counted incrementally, so the only state is the list.
//!
//! Two points the doc leaves open follow lsm-core's public docs (`lsm_core::FeatureState`):
//! borrowed tokens go back to lenders in lender name order, and while any tokens are
//! unbacked (and after every new license) the sources are derived afresh from the use
//! of each pool: own reserve, then the shared remainder, then lenders, the rest unbacked.

use lsm_core::{Denial, Entitlement, FeatureName, PoolName, PoolSpec};

/// A pool with no reserve, no cap, no lending and no modes: the `default` pool of a
/// feature without pools, and what a pool that is gone but held is kept as (with a cap
/// of 0).
pub fn open_pool(name: PoolName) -> PoolSpec {
    PoolSpec { name, reserve: 0, cap: None, lend: false, keep_idle: 0, modes: Vec::new() }
}

/// Where the tokens of a parcel came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// From nothing: held above a total that a new license lowered.
    Unbacked,
    /// From another pool's idle reserve.
    Lender(PoolName),
    /// From the shared remainder.
    Shared,
    /// From the pool's own reserve.
    Own,
}

/// Tokens held by one pool from one source. The derived order of `Source` is the doc's
/// release order: unbacked, borrowed (by lender name), shared, own.
#[derive(Clone, Debug)]
pub struct Parcel {
    pub pool: PoolName,
    pub from: Source,
    pub tokens: u64,
}

/// One pool's configuration as the model keeps it.
#[derive(Clone, Debug)]
pub struct Pool {
    pub spec: PoolSpec,
    /// The cap in force: the spec's cap, or the feature total.
    pub cap: u64,
    /// No longer configured, kept while its checkouts hold it.
    pub retired: bool,
}

/// One feature: its entitlement, pools in declaration order, and the parcel list.
#[derive(Clone, Debug)]
pub struct Feature {
    pub ent: Entitlement,
    pub pools: Vec<Pool>,
    pub parcels: Vec<Parcel>,
    /// No longer licensed, kept while checkouts hold it.
    pub retired: bool,
}

/// Where a grant of one item takes its tokens.
#[derive(Clone, Debug)]
pub struct Take {
    pub feature: FeatureName,
    pub pool: PoolName,
    pub tokens: u64,
    /// Source and tokens, in the order they were taken.
    pub sources: Vec<(Source, u64)>,
}

impl Take {
    /// The grant uses the shared remainder or a lender, so it takes tokens that any
    /// waiter of the feature may be waiting for.
    pub fn beyond_own_reserve(&self) -> bool {
        self.sources.iter().any(|(s, n)| *n > 0 && !matches!(s, Source::Own))
    }
}

impl Feature {
    pub fn new(ent: Entitlement, specs: Vec<PoolSpec>) -> Feature {
        let total = ent.tokens_total;
        let pools = specs
            .into_iter()
            .map(|spec| Pool { cap: spec.cap.unwrap_or(total), spec, retired: false })
            .collect();
        Feature { ent, pools, parcels: Vec::new(), retired: false }
    }

    pub fn name(&self) -> &FeatureName {
        &self.ent.feature
    }

    pub fn pool(&self, name: &PoolName) -> Option<&Pool> {
        self.pools.iter().find(|p| &p.spec.name == name)
    }

    /// Sum of the parcels that match.
    fn sum(&self, keep: impl Fn(&Parcel) -> bool) -> u64 {
        self.parcels.iter().filter(|p| keep(p)).map(|p| p.tokens).sum()
    }

    pub fn used(&self, pool: &PoolName) -> u64 {
        self.sum(|p| &p.pool == pool)
    }

    pub fn in_use(&self) -> u64 {
        self.sum(|_| true)
    }

    pub fn free(&self) -> u64 {
        self.ent.tokens_total.saturating_sub(self.in_use())
    }

    pub fn own(&self, pool: &PoolName) -> u64 {
        self.sum(|p| &p.pool == pool && p.from == Source::Own)
    }

    pub fn shared(&self, pool: &PoolName) -> u64 {
        self.sum(|p| &p.pool == pool && p.from == Source::Shared)
    }

    pub fn unbacked(&self, pool: &PoolName) -> u64 {
        self.sum(|p| &p.pool == pool && p.from == Source::Unbacked)
    }

    /// Tokens pool `pool` holds from lenders.
    pub fn borrowed(&self, pool: &PoolName) -> u64 {
        self.sum(|p| &p.pool == pool && matches!(p.from, Source::Lender(_)))
    }

    /// Tokens of `lender`'s reserve that other pools hold.
    pub fn lent(&self, lender: &PoolName) -> u64 {
        self.sum(|p| p.from == Source::Lender(lender.clone()))
    }

    /// `S = T - sum(R_p)`.
    pub fn shared_size(&self) -> u64 {
        let reserved: u64 = self.pools.iter().map(|p| p.spec.reserve).sum();
        self.ent.tokens_total.saturating_sub(reserved)
    }

    pub fn shared_free(&self) -> u64 {
        self.shared_size().saturating_sub(self.sum(|p| p.from == Source::Shared))
    }

    /// `R_p - own_p - lent_p`.
    pub fn idle(&self, pool: &Pool) -> u64 {
        let name = &pool.spec.name;
        pool.spec.reserve.saturating_sub(self.own(name) + self.lent(name))
    }

    /// `max(0, idle_p - K_p)` for a lending pool, else 0.
    pub fn lendable(&self, pool: &Pool) -> u64 {
        if pool.spec.lend { self.idle(pool).saturating_sub(pool.spec.keep_idle) } else { 0 }
    }

    /// The sources a grant to `pool` draws on, in the doc's order, with what each has:
    /// the pool's idle reserve, the shared remainder, then each other lending pool.
    fn sources_for(&self, pool: &Pool) -> Vec<(Source, u64)> {
        let mut sources =
            vec![(Source::Own, self.idle(pool)), (Source::Shared, self.shared_free())];
        for lender in self.pools.iter().filter(|q| q.spec.name != pool.spec.name) {
            sources.push((Source::Lender(lender.spec.name.clone()), self.lendable(lender)));
        }
        sources
    }

    /// What all sources of `pool` have together.
    fn reachable(&self, pool: &Pool) -> u64 {
        self.sources_for(pool).iter().map(|(_, n)| n).sum()
    }

    /// What `features_status` reports as available: the most a grant to the pool could
    /// take now, within its cap, the total and its sources.
    pub fn available(&self, pool: &Pool) -> u64 {
        let room = pool.cap.saturating_sub(self.used(&pool.spec.name));
        self.free().min(room).min(self.reachable(pool))
    }

    /// Step 3 of the grant rule for the pool: the cap unless it is the total, the total,
    /// then the sources in order. A refusal here is always transient.
    pub fn plan(&self, pool: &Pool, tokens: u64) -> Result<Take, Denial> {
        let name = &pool.spec.name;
        let total = self.ent.tokens_total;
        let used = self.used(name);
        if pool.cap < total && used + tokens > pool.cap {
            return Err(Denial::PoolCap {
                feature: self.name().clone(),
                pool: name.clone(),
                cap: pool.cap,
                held: used,
                requested: tokens,
            });
        }
        let no_tokens = |available| Denial::NoTokens {
            feature: self.name().clone(),
            pool: name.clone(),
            available,
            requested: tokens,
        };
        if self.in_use() + tokens > total {
            return Err(no_tokens(self.free().min(self.reachable(pool))));
        }
        let mut rest = tokens;
        let mut sources = Vec::new();
        for (source, has) in self.sources_for(pool) {
            let n = rest.min(has);
            if n > 0 {
                sources.push((source, n));
                rest -= n;
            }
        }
        if rest > 0 {
            return Err(no_tokens(tokens - rest));
        }
        Ok(Take { feature: self.name().clone(), pool: name.clone(), tokens, sources })
    }

    pub fn take(&mut self, take: &Take) {
        for (from, tokens) in &take.sources {
            self.parcels.push(Parcel {
                pool: take.pool.clone(),
                from: from.clone(),
                tokens: *tokens,
            });
        }
    }

    /// Gives back `tokens` of `pool` in the doc's release order, then prunes retired
    /// pools that hold nothing and derives the sources afresh if anything is unbacked.
    pub fn give_back(&mut self, pool: &PoolName, tokens: u64) {
        let mut rest = tokens;
        let mut order: Vec<usize> =
            (0..self.parcels.len()).filter(|&i| &self.parcels[i].pool == pool).collect();
        order.sort_by(|&a, &b| self.parcels[a].from.cmp(&self.parcels[b].from));
        for i in order {
            let n = rest.min(self.parcels[i].tokens);
            self.parcels[i].tokens -= n;
            rest -= n;
        }
        assert_eq!(rest, 0, "the model gave back more of {pool} than it held");
        self.parcels.retain(|p| p.tokens > 0);
        let before = self.pools.len();
        let used: Vec<u64> = self.pools.iter().map(|p| self.used(&p.spec.name)).collect();
        let mut keep = used.iter().map(|&u| u > 0);
        self.pools.retain(|p| keep.next().is_some_and(|held| held || !p.retired));
        if self.pools.len() != before || self.parcels.iter().any(|p| p.from == Source::Unbacked) {
            self.rederive();
        }
    }

    /// Derives every pool's sources from its use alone: first each pool's own reserve,
    /// then, pool by pool in order, the shared remainder, the lenders, and the rest
    /// unbacked.
    pub fn rederive(&mut self) {
        let used: Vec<(PoolName, u64)> =
            self.pools.iter().map(|p| (p.spec.name.clone(), self.used(&p.spec.name))).collect();
        self.parcels.clear();
        for (pool, (name, used)) in self.pools.iter().zip(&used) {
            let own = (*used).min(pool.spec.reserve);
            self.parcels.push(Parcel { pool: name.clone(), from: Source::Own, tokens: own });
        }
        for (i, (name, used)) in used.iter().enumerate() {
            let mut rest = used - self.own(name);
            let shared = rest.min(self.shared_free());
            self.parcels.push(Parcel { pool: name.clone(), from: Source::Shared, tokens: shared });
            rest -= shared;
            for q in (0..self.pools.len()).filter(|&q| q != i) {
                let lender = self.pools[q].clone();
                let n = rest.min(self.lendable(&lender));
                let from = Source::Lender(lender.spec.name);
                self.parcels.push(Parcel { pool: name.clone(), from, tokens: n });
                rest -= n;
            }
            self.parcels.push(Parcel { pool: name.clone(), from: Source::Unbacked, tokens: rest });
        }
        self.parcels.retain(|p| p.tokens > 0);
    }

    /// A new configuration: pools keep their use by name; pools that are gone but held
    /// stay, retired (no reserve, a cap of 0), after the configured ones in name order.
    pub fn reconfigure(&mut self, ent: Entitlement, specs: Vec<PoolSpec>) {
        let total = ent.tokens_total;
        let mut held: Vec<(PoolName, u64)> =
            self.pools.iter().map(|p| (p.spec.name.clone(), self.used(&p.spec.name))).collect();
        let mut pools = Vec::new();
        let mut parcels = Vec::new();
        for spec in specs {
            if let Some(i) = held.iter().position(|(n, _)| n == &spec.name) {
                let (name, used) = held.remove(i);
                parcels.push(Parcel { pool: name, from: Source::Unbacked, tokens: used });
            }
            pools.push(Pool { cap: spec.cap.unwrap_or(total), spec, retired: false });
        }
        held.sort();
        for (name, used) in held.into_iter().filter(|(_, used)| *used > 0) {
            let spec = PoolSpec { cap: Some(0), ..open_pool(name.clone()) };
            pools.push(Pool { spec, cap: 0, retired: true });
            parcels.push(Parcel { pool: name, from: Source::Unbacked, tokens: used });
        }
        self.ent = ent;
        self.pools = pools;
        self.parcels = parcels;
        self.retired = false;
        self.rederive();
    }
}
