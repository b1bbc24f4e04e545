//! Read-only queries: what `lsm status`, `lsm checkouts` and `lsm queue` show.
//!
//! Queries never change the state. Each has a typed method on [`State`]; [`Query`] and
//! [`QueryResponse`] wrap them as data so a server can carry them over the wire and run
//! them as linearizable reads.

use serde::{Deserialize, Serialize};

use crate::command::Item;
use crate::ids::{
    CheckoutId, ClientId, FeatureName, HostName, JobId, LicenseId, PoolName, UserName,
};
use crate::response::Denial;
use crate::state::{Checkout, State};

/// A query, as data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// Every feature with its pools.
    Features,
    /// Live checkouts matching a filter.
    Checkouts(CheckoutFilter),
    /// The queue in order, optionally for one feature.
    Queue {
        /// Only waiters asking for this feature.
        feature: Option<FeatureName>,
    },
    /// One checkout or queued request.
    Checkout(CheckoutId),
    /// Counters and clocks.
    Summary,
}

/// A query's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryResponse {
    /// For [`Query::Features`].
    Features(Vec<FeatureStatus>),
    /// For [`Query::Checkouts`].
    Checkouts(Vec<Checkout>),
    /// For [`Query::Queue`].
    Queue(Vec<WaiterInfo>),
    /// For [`Query::Checkout`].
    Checkout(CheckoutStatus),
    /// For [`Query::Summary`].
    Summary(Summary),
}

/// A feature's tokens and pools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureStatus {
    /// The feature.
    pub feature: FeatureName,
    /// The license it came from.
    pub license: LicenseId,
    /// Tokens licensed.
    pub tokens_total: u64,
    /// Tokens checked out.
    pub in_use: u64,
    /// Tokens not checked out (never negative, even after a shrink).
    pub free: u64,
    /// Requests waiting for it.
    pub queued: u64,
    /// Licensed from.
    pub starts_at_ms: u64,
    /// Licensed until.
    pub expires_at_ms: u64,
    /// True once `expires_at_ms` has passed.
    pub expired: bool,
    /// True when no longer licensed but still held by running checkouts.
    pub retired: bool,
    /// Its pools.
    pub pools: Vec<PoolStatus>,
}

/// A pool's tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool.
    pub pool: PoolName,
    /// Guaranteed tokens.
    pub reserve: u64,
    /// Most tokens it may hold.
    pub cap: u64,
    /// Tokens its checkouts hold.
    pub in_use: u64,
    /// Tokens it could be granted right now.
    pub available: u64,
    /// Tokens of its reserve lent to other pools.
    pub lent: u64,
    /// Tokens it has borrowed from other pools.
    pub borrowed: u64,
    /// True when no longer configured but still held.
    pub retired: bool,
}

/// Which checkouts to list. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutFilter {
    /// Holding this feature.
    #[serde(default)]
    pub feature: Option<FeatureName>,
    /// In this pool (of any feature).
    #[serde(default)]
    pub pool: Option<PoolName>,
    /// Of this user.
    #[serde(default)]
    pub user: Option<UserName>,
    /// On this host.
    #[serde(default)]
    pub host: Option<HostName>,
    /// Of this client.
    #[serde(default)]
    pub client: Option<ClientId>,
    /// Only ids above this one (for paging).
    #[serde(default)]
    pub after: Option<CheckoutId>,
    /// At most this many (capped by `max_query_rows`).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// A queued request with its position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterInfo {
    /// Its id.
    pub id: CheckoutId,
    /// 1-based position in the whole queue.
    pub position: u64,
    /// The client.
    pub client: ClientId,
    /// The user.
    pub user: UserName,
    /// The host.
    pub host: HostName,
    /// The job.
    pub job: Option<JobId>,
    /// What it asks for.
    pub items: Vec<Item>,
    /// Its priority.
    pub priority: u8,
    /// Times it was bypassed.
    pub bypassed: u32,
    /// True when it blocks later requests for its features.
    pub blocking: bool,
    /// When it was queued.
    pub queued_at_ms: u64,
    /// It leaves the queue at this time unless polled.
    pub wait_expires_at_ms: u64,
}

/// One id's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutStatus {
    /// A live checkout.
    Live(Checkout),
    /// A queued request.
    Queued(WaiterInfo),
    /// Not live: why, as a heartbeat would be told.
    Gone(Denial),
}

/// Counters and clocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The last applied log index.
    pub last_index: u64,
    /// Replicated time.
    pub now_ms: u64,
    /// Features, retired ones included.
    pub features: u64,
    /// Live checkouts.
    pub checkouts: u64,
    /// Queued requests.
    pub queued: u64,
    /// Client sessions.
    pub sessions: u64,
    /// The next lease or wait due to expire.
    pub next_expiry: Option<u64>,
}

impl State {
    /// Runs a query given as data.
    pub fn query(&self, query: &Query) -> QueryResponse {
        match query {
            Query::Features => QueryResponse::Features(self.features_status()),
            Query::Checkouts(filter) => QueryResponse::Checkouts(self.list_checkouts(filter)),
            Query::Queue { feature } => QueryResponse::Queue(self.list_queue(feature.as_ref())),
            Query::Checkout(id) => QueryResponse::Checkout(self.checkout_status(*id)),
            Query::Summary => QueryResponse::Summary(self.summary()),
        }
    }

    /// Every feature with its pools, by name.
    pub fn features_status(&self) -> Vec<FeatureStatus> {
        self.features
            .values()
            .map(|f| {
                let ent = &f.entitlement;
                let pools = (f.pools.iter().enumerate())
                    .map(|(p, pool)| PoolStatus {
                        pool: pool.spec.name.clone(),
                        reserve: pool.spec.reserve,
                        cap: pool.cap,
                        in_use: pool.used,
                        available: if pool.retired { 0 } else { f.available(p) },
                        lent: pool.lent,
                        borrowed: pool.borrowed_total(),
                        retired: pool.retired,
                    })
                    .collect();
                let queued = self.index.queue_by_feature.get(f.name()).map_or(0, |s| s.len());
                FeatureStatus {
                    feature: ent.feature.clone(),
                    license: ent.license.clone(),
                    tokens_total: ent.tokens_total,
                    in_use: f.in_use(),
                    free: f.free(),
                    queued: queued as u64,
                    starts_at_ms: ent.starts_at_ms,
                    expires_at_ms: ent.expires_at_ms,
                    expired: self.now_ms >= ent.expires_at_ms,
                    retired: f.retired,
                    pools,
                }
            })
            .collect()
    }

    /// Live checkouts matching `filter`, by id, at most `max_query_rows`.
    pub fn list_checkouts(&self, filter: &CheckoutFilter) -> Vec<Checkout> {
        let limit = filter.limit.unwrap_or(u64::MAX).min(self.limits.max_query_rows) as usize;
        let start = filter.after.map_or(0, |id| id.0.saturating_add(1));
        let matches = |c: &&Checkout| {
            filter.user.as_ref().is_none_or(|u| &c.user == u)
                && filter.host.as_ref().is_none_or(|h| &c.host == h)
                && filter.client.as_ref().is_none_or(|x| &c.client == x)
                && filter.feature.as_ref().is_none_or(|f| c.items.iter().any(|i| &i.feature == f))
                && filter.pool.as_ref().is_none_or(|p| c.items.iter().any(|i| &i.pool == p))
        };
        self.checkouts
            .range_from(CheckoutId(start))
            .map(|(_, c)| &**c)
            .filter(matches)
            .take(limit)
            .cloned()
            .collect()
    }

    /// The queue in order, optionally only waiters for `feature`.
    pub fn list_queue(&self, feature: Option<&FeatureName>) -> Vec<WaiterInfo> {
        (self.index.queue.iter().enumerate())
            .map(|(rank, &(_, id))| self.waiter_info(id, rank as u64 + 1))
            .filter(|w| feature.is_none_or(|f| w.items.iter().any(|i| &i.feature == f)))
            .collect()
    }

    /// One id: live, queued, or gone and why.
    pub fn checkout_status(&self, id: CheckoutId) -> CheckoutStatus {
        if let Some(c) = self.checkouts.get(&id) {
            CheckoutStatus::Live(Checkout::clone(c))
        } else if self.waiters.contains_key(&id) {
            CheckoutStatus::Queued(self.waiter_info(id, self.position(id)))
        } else {
            CheckoutStatus::Gone(self.gone(id))
        }
    }

    /// Counters and clocks.
    pub fn summary(&self) -> Summary {
        Summary {
            last_index: self.last_index,
            now_ms: self.now_ms,
            features: self.features.len() as u64,
            checkouts: self.checkouts.len() as u64,
            queued: self.waiters.len() as u64,
            sessions: self.clients.session_count() as u64,
            next_expiry: self.next_expiry(),
        }
    }

    fn waiter_info(&self, id: CheckoutId, position: u64) -> WaiterInfo {
        let w = &self.waiters[&id];
        WaiterInfo {
            id,
            position,
            client: w.client.clone(),
            user: w.request.user.clone(),
            host: w.request.host.clone(),
            job: w.request.job.clone(),
            items: w.request.items.clone(),
            priority: w.priority,
            bypassed: w.bypassed,
            blocking: w.short_of_tokens && w.bypassed >= self.limits.max_queue_bypass,
            queued_at_ms: w.queued_at_ms,
            wait_expires_at_ms: w.wait_expires_at_ms,
        }
    }
}
