//! Commands: everything that can change the state.
//!
//! A command is data. It is proposed by a node, stamped with the leader's clock, committed
//! by Raft and applied on every node with the same [`Meta`]. Client requests carry the
//! client's id and a sequence number so that a retry is answered from the session table
//! instead of being applied twice; system commands (`Tick`, `LeaderChange`) carry none.

use serde::{Deserialize, Serialize};

use crate::ids::{CheckoutId, ClientId, FeatureName, HostName, JobId, PoolName, UserName};
use crate::license::{Demand, Install};

/// What the replication layer knows about a committed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The Raft log index of the entry; strictly increasing from one apply to the next.
    pub index: u64,
    /// The leader's wall clock when it proposed the entry, in ms since the Unix epoch. The
    /// state machine never lets its own time run backwards, whatever this says.
    pub now_ms: u64,
}

/// A command for [`crate::State::apply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// A client's request, applied at most once per `(client, seq)`.
    Request(Request),
    /// Advances time: expires leases and queued requests that are due. The leader proposes
    /// it when [`crate::State::next_expiry`] has passed.
    Tick,
    /// A new leader took over. Every live lease is extended to at least one full TTL from
    /// now, so no client loses its checkout to the time the election took.
    LeaderChange {
        /// The new leader's node id, for the event log.
        leader: u64,
    },
}

/// A client's request with its exactly-once envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The client's own id; it names the session.
    pub client: ClientId,
    /// The client's sequence number for this request; a retry reuses it.
    pub seq: u64,
    /// The client has the replies of all its requests below this number, so the session
    /// may forget them. Must not be above `seq`.
    pub ack: u64,
    /// What the client asks for.
    pub op: Op,
}

/// A client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Check out tokens of one or more features, all or nothing.
    Checkout(CheckoutRequest),
    /// Renew a checkout's lease, or a queued request's wait.
    Heartbeat(CheckoutId),
    /// Give a checkout back, or withdraw a queued request.
    Release(CheckoutId),
    /// Admin: end someone's checkout or queued request (`lmremove`).
    Revoke {
        /// The checkout or queued request.
        id: CheckoutId,
        /// Why, for the holder and the audit log; at most [`MAX_REASON_LEN`] bytes.
        reason: String,
    },
    /// Admin: install a new license configuration, replacing the current one.
    Install(Install),
}

/// Longest revocation reason, in bytes.
pub const MAX_REASON_LEN: usize = 256;

/// A checkout request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRequest {
    /// The features asked for; each feature at most once.
    pub items: Vec<Item>,
    /// The user the job runs as.
    pub user: UserName,
    /// The host the job runs on (for MPP, the launching host).
    pub host: HostName,
    /// The batch job, if any.
    #[serde(default)]
    pub job: Option<JobId>,
    /// Lease length: the checkout ends this long after the last heartbeat.
    pub lease_ttl_ms: u64,
    /// Offline borrow: hold the checkout until this time with no heartbeats.
    #[serde(default)]
    pub borrow_until_ms: Option<u64>,
    /// Wait in the queue if the tokens are busy, instead of being denied.
    #[serde(default)]
    pub wait: Option<Wait>,
}

/// One feature of a checkout request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The feature.
    pub feature: FeatureName,
    /// Tokens, or cores in a mode.
    pub demand: Demand,
    /// The pool to draw from; when absent, the pool serving the demand's mode, else the
    /// feature's first pool.
    #[serde(default)]
    pub pool: Option<PoolName>,
}

/// How a request waits in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    /// Higher goes first; equal priorities go in arrival order.
    #[serde(default)]
    pub priority: u8,
    /// The request leaves the queue if it is not polled (heartbeat) for this long.
    pub poll_ttl_ms: u64,
}
