//! Responses, refusals and events: everything `apply` says back.
//!
//! A refusal is a committed answer, not an error: [`Response::Denied`] carries a
//! [`Denial`] that names the rule, limit or field that refused. Events are the facts an
//! audit or usage log needs (grants, releases, expiries, revocations, denials, queue
//! changes); the server writes them, the state machine only reports them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::ids::{CheckoutId, ClientId, FeatureName, HostName, JobId, PoolName, UserName};
use crate::license::{InstallError, Subject};

/// The answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// A checkout was granted.
    Granted(Grant),
    /// The request waits in the queue; poll it with a heartbeat.
    Queued(Queued),
    /// A heartbeat renewed the lease (or found a queued request granted).
    Renewed(Grant),
    /// The checkout was given back.
    Released {
        /// The checkout.
        id: CheckoutId,
    },
    /// The queued request was withdrawn.
    Cancelled {
        /// The queued request.
        id: CheckoutId,
    },
    /// An admin revoked the checkout or queued request.
    Revoked {
        /// The checkout.
        id: CheckoutId,
    },
    /// A new license configuration is in force.
    Installed {
        /// Features in the new configuration.
        features: u64,
    },
    /// Time advanced.
    Ticked {
        /// Checkouts and queued requests that expired.
        expired: u64,
    },
    /// Leases were extended for a new leader.
    LeaderChanged {
        /// Leases extended.
        extended: u64,
    },
    /// The request was refused; the state did not change.
    Denied(Denial),
}

/// A granted checkout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The checkout's id.
    pub id: CheckoutId,
    /// Fencing token: strictly increasing in grant order across the whole cluster, so a
    /// resource guarded by licenses can refuse a holder older than one it has seen.
    pub fence: u64,
    /// Tokens granted, per feature.
    pub items: Arc<[GrantedItem]>,
    /// The lease ends at this time unless renewed.
    pub lease_expires_at_ms: u64,
    /// True for an offline borrow (no heartbeats needed until the lease ends).
    pub borrowed: bool,
}

/// Tokens of one feature in a grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedItem {
    /// The feature.
    pub feature: FeatureName,
    /// The pool the tokens are counted in.
    pub pool: PoolName,
    /// Tokens granted (0 when the cost rule charges nothing for the cores asked for).
    pub tokens: u64,
}

/// A request waiting in the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The id the checkout will have when granted.
    pub id: CheckoutId,
    /// 1-based position in the queue at the time of the answer.
    pub position: u64,
    /// The request leaves the queue at this time unless polled.
    pub wait_expires_at_ms: u64,
}

/// How a checkout or queued request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The holder released it.
    Released,
    /// Its lease ran out.
    Expired,
    /// An admin revoked it.
    Revoked {
        /// The admin's reason.
        reason: String,
    },
    /// The waiter withdrew it from the queue.
    Cancelled,
    /// It was queued and not polled in time.
    QueueExpired,
    /// It was queued and can no longer be granted (the license changed).
    QueueDenied(Box<Denial>),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Released => f.write_str("released"),
            End::Expired => f.write_str("lease expired"),
            End::Revoked { reason } => write!(f, "revoked: {reason}"),
            End::Cancelled => f.write_str("withdrawn from the queue"),
            End::QueueExpired => f.write_str("left the queue unpolled"),
            End::QueueDenied(denial) => write!(f, "dropped from the queue: {denial}"),
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Denial {
    /// A field of the request is out of range or malformed.
    #[error("bad request: {field}: {problem}")]
    BadRequest {
        /// The field, such as `items[0].demand`.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// An install was refused by validation.
    #[error("bad license configuration: {0}")]
    BadInstall(InstallError),
    /// A named limit of the state machine was reached.
    #[error("limit {limit} reached (max {max})")]
    LimitReached {
        /// The limit's field name in [`crate::Limits`].
        limit: String,
        /// Its value.
        max: u64,
    },
    /// No such feature is licensed.
    #[error("unknown feature {feature}")]
    UnknownFeature {
        /// The feature asked for.
        feature: FeatureName,
    },
    /// The feature has no such pool.
    #[error("feature {feature} has no pool {pool}")]
    UnknownPool {
        /// The feature.
        feature: FeatureName,
        /// The pool asked for.
        pool: PoolName,
    },
    /// The feature's license has not started yet.
    #[error("feature {feature} starts at {starts_at_ms}")]
    NotStarted {
        /// The feature.
        feature: FeatureName,
        /// Its start.
        starts_at_ms: u64,
    },
    /// The feature's license has expired.
    #[error("feature {feature} expired at {expired_at_ms}")]
    FeatureExpired {
        /// The feature.
        feature: FeatureName,
        /// Its expiry.
        expired_at_ms: u64,
    },
    /// An exclude rule, or the absence of an include rule, keeps the requester out.
    #[error("{subject} may not use feature {feature}")]
    Excluded {
        /// The feature.
        feature: FeatureName,
        /// The rule's subject (for a missing include, the requesting user).
        subject: Subject,
    },
    /// A max rule would be exceeded.
    #[error("limit for {subject} on {feature}: holds {held}, asks {requested}, max {max}")]
    OverLimit {
        /// The feature.
        feature: FeatureName,
        /// The rule's subject.
        subject: Subject,
        /// The rule's maximum.
        max: u64,
        /// Tokens the subject holds now.
        held: u64,
        /// Tokens asked for.
        requested: u64,
    },
    /// Borrowing is off for the feature, or the borrow is too long.
    #[error("feature {feature} allows borrowing for at most {max_borrow_ms} ms")]
    BorrowNotAllowed {
        /// The feature.
        feature: FeatureName,
        /// Its longest borrow; 0 when borrowing is off.
        max_borrow_ms: u64,
    },
    /// The pool's cap would be exceeded.
    #[error("pool {feature}/{pool}: holds {held}, asks {requested}, cap {cap}")]
    PoolCap {
        /// The feature.
        feature: FeatureName,
        /// The pool.
        pool: PoolName,
        /// The pool's cap.
        cap: u64,
        /// Tokens the pool holds now.
        held: u64,
        /// Tokens asked for.
        requested: u64,
    },
    /// Not enough free tokens for the pool right now.
    #[error("pool {feature}/{pool}: {available} tokens available, {requested} asked")]
    NoTokens {
        /// The feature.
        feature: FeatureName,
        /// The pool.
        pool: PoolName,
        /// Tokens the pool could get now.
        available: u64,
        /// Tokens asked for.
        requested: u64,
    },
    /// More tokens than the feature has in total.
    #[error("feature {feature} has {total} tokens in all, {requested} asked")]
    OverTotal {
        /// The feature.
        feature: FeatureName,
        /// Its total.
        total: u64,
        /// Tokens asked for.
        requested: u64,
    },
    /// A queued request that has waited too long holds the feature (anti-starvation).
    #[error("feature {feature} is held for queued request {waiter:?}")]
    QueueBlocked {
        /// The feature.
        feature: FeatureName,
        /// The queued request that blocks it.
        waiter: CheckoutId,
    },
    /// No checkout or queued request has this id.
    #[error("no checkout {id:?}")]
    UnknownCheckout {
        /// The id.
        id: CheckoutId,
    },
    /// The checkout belongs to another client.
    #[error("checkout {id:?} belongs to another client")]
    NotOwner {
        /// The id.
        id: CheckoutId,
    },
    /// The checkout was revoked by an admin; it will not come back.
    #[error("checkout {id:?} was revoked: {reason}")]
    Revoked {
        /// The id.
        id: CheckoutId,
        /// The admin's reason.
        reason: String,
    },
    /// The checkout's lease ran out; its tokens were reclaimed.
    #[error("checkout {id:?} expired")]
    LeaseExpired {
        /// The id.
        id: CheckoutId,
    },
    /// The checkout ended some other way (or so long ago that how is forgotten).
    #[error("checkout {id:?} has ended{}", end.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Ended {
        /// The id.
        id: CheckoutId,
        /// How, when still known.
        end: Option<End>,
    },
    /// The request's sequence number is older than the replies the session keeps; its
    /// original answer is no longer known. A correct client never sees this.
    #[error("request {seq} is older than the oldest kept reply ({oldest_kept})")]
    StaleRequest {
        /// The request's number.
        seq: u64,
        /// The oldest number the session still answers.
        oldest_kept: u64,
    },
}

impl Denial {
    /// True when the refusal may clear by itself as tokens free up, so the request may
    /// wait in the queue for it.
    pub fn is_transient(&self) -> bool {
        match self {
            Denial::NoTokens { .. } | Denial::QueueBlocked { .. } => true,
            Denial::PoolCap { cap, requested, .. } => requested <= cap,
            Denial::OverLimit { max, requested, .. } => requested <= max,
            _ => false,
        }
    }

    pub(crate) fn bad(field: impl Into<String>, problem: impl Into<String>) -> Denial {
        Denial::BadRequest { field: field.into(), problem: problem.into() }
    }

    pub(crate) fn limit(limit: &str, max: u64) -> Denial {
        Denial::LimitReached { limit: limit.to_string(), max }
    }
}

/// Something that happened, for the audit and usage log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A checkout was granted, directly or from the queue.
    Granted {
        /// The checkout.
        id: CheckoutId,
        /// Its fencing token.
        fence: u64,
        /// The owning client.
        client: ClientId,
        /// The user.
        user: UserName,
        /// The host.
        host: HostName,
        /// The job.
        job: Option<JobId>,
        /// Tokens per feature.
        items: Arc<[GrantedItem]>,
        /// True when granted from the queue.
        from_queue: bool,
    },
    /// A checkout ended and its tokens returned.
    Ended {
        /// The checkout.
        id: CheckoutId,
        /// Tokens per feature that came back.
        items: Arc<[GrantedItem]>,
        /// How it ended.
        end: End,
    },
    /// A request was refused.
    Denied {
        /// The client.
        client: ClientId,
        /// Why.
        denial: Denial,
    },
    /// A request joined the queue.
    Queued {
        /// The queued request's id.
        id: CheckoutId,
        /// The client.
        client: ClientId,
        /// Its position.
        position: u64,
    },
    /// A request left the queue without a grant.
    Dequeued {
        /// The queued request's id.
        id: CheckoutId,
        /// Why.
        end: End,
    },
    /// A new license configuration is in force.
    Installed {
        /// Its features.
        features: Vec<FeatureName>,
    },
    /// A new leader extended the live leases.
    LeasesExtended {
        /// The new leader.
        leader: u64,
        /// Leases extended.
        count: u64,
    },
}

/// The events of one command. A checkout or a release yields one event, kept inline, so
/// the common command allocates nothing for its events.
pub type Events = SmallVec<[Event; 1]>;

/// The result of one `apply`: the answer for the caller and the events for the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The answer for the client who sent the command.
    pub response: Response,
    /// What happened, in order. A retried request adds no events of its own; the command
    /// may still expire leases or serve the queue, and those events are here.
    pub events: Events,
}
