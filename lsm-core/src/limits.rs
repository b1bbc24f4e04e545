//! Named limits on everything in the state that grows.
//!
//! The limits are part of the replicated state (they are set when the state is created and
//! travel in snapshots), so every node enforces the same numbers. A request that would pass
//! a limit is refused with `Denied(LimitReached { limit, max })`, naming the limit; nothing
//! in the state can grow without bound.

use serde::{Deserialize, Serialize};

/// Upper bounds on the state machine's tables and on the values a request may carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Live checkouts across all clients.
    pub max_checkouts: u64,
    /// Live checkouts and queued requests of one client id, counted together.
    pub max_checkouts_per_client: u64,
    /// Waiting requests in the queue, across all features.
    pub max_queue_len: u64,
    /// Waiting requests of one client id.
    pub max_queued_per_client: u64,
    /// Client sessions kept for exactly-once replies. When full, the least recently seen
    /// session is evicted (see [`crate::clients`]).
    pub max_sessions: u64,
    /// Replies kept per session for requests the client has not yet acknowledged.
    pub max_replies_per_session: u64,
    /// A session unseen for this long is dropped.
    pub session_idle_ttl_ms: u64,
    /// Tombstones of ended checkouts kept so that a late heartbeat learns why its checkout
    /// ended (`Revoked`, `Expired`, `Released`). The oldest are dropped first; a checkout
    /// without a tombstone still answers `Ended`, never a new grant.
    pub max_tombstones: u64,
    /// Shortest lease a checkout may ask for.
    pub min_lease_ttl_ms: u64,
    /// Longest lease a checkout may ask for (offline borrowing is bounded separately, per
    /// feature, by the entitlement's `max_borrow_ms`).
    pub max_lease_ttl_ms: u64,
    /// Longest offline borrow any entitlement may allow.
    pub max_borrow_ms: u64,
    /// Shortest and longest time a queued request stays queued without being polled.
    pub min_queue_ttl_ms: u64,
    /// See `min_queue_ttl_ms`.
    pub max_queue_ttl_ms: u64,
    /// Features in one installed license set.
    pub max_features: u64,
    /// Pools per feature.
    pub max_pools_per_feature: u64,
    /// Token total of one feature.
    pub max_tokens_per_feature: u64,
    /// Features (items) in one checkout request.
    pub max_items_per_request: u64,
    /// Tokens one item may ask for directly.
    pub max_tokens_per_request: u64,
    /// Cores one item may ask for.
    pub max_cores_per_request: u64,
    /// Rules, groups and members in a policy, counted together.
    pub max_policy_entries: u64,
    /// Checkouts one query may return.
    pub max_query_rows: u64,
    /// Times a queued request may be passed over by later grants for the same feature
    /// before it blocks every later request for that feature (anti-starvation).
    pub max_queue_bypass: u32,
}

impl Default for Limits {
    fn default() -> Self {
        const SECOND: u64 = 1_000;
        const HOUR: u64 = 3_600 * SECOND;
        Limits {
            max_checkouts: 2_000_000,
            max_checkouts_per_client: 10_000,
            max_queue_len: 10_000,
            max_queued_per_client: 100,
            max_sessions: 2_000_000,
            max_replies_per_session: 64,
            session_idle_ttl_ms: 24 * HOUR,
            max_tombstones: 100_000,
            min_lease_ttl_ms: SECOND,
            max_lease_ttl_ms: HOUR,
            max_borrow_ms: 90 * 24 * HOUR,
            min_queue_ttl_ms: SECOND,
            max_queue_ttl_ms: HOUR,
            max_features: 1_000,
            max_pools_per_feature: 32,
            max_tokens_per_feature: 1_000_000_000,
            max_items_per_request: 16,
            max_tokens_per_request: 1_000_000,
            max_cores_per_request: 1 << 20,
            max_policy_entries: 100_000,
            max_query_rows: 10_000,
            max_queue_bypass: 8,
        }
    }
}
