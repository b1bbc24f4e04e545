//! The HTTP API's wire types: what `lsm-server` accepts and answers, and what the client
//! sends and reads. One module for both sides, so they cannot drift apart.
//!
//! Everything is JSON under `/v1`. `docs/api.md` describes each route; the paths are the
//! constants and functions of [`path`]. Answers that are not 2xx carry an [`ErrorBody`]
//! with a stable [`ErrorCode`] and a human message.
//!
//! Writes carry the exactly-once envelope ([`Envelope`]): the client's id, the request's
//! sequence number and the client's ack. A client sends the same envelope on every retry
//! of one operation, so a retry after a lost reply is answered from the server's session
//! table instead of being applied twice. A write without an envelope gets a fresh one-shot
//! client id from the server: fine for `curl`, not retry-safe.

use std::collections::BTreeMap;

use lsm_core::{
    CheckoutId, CheckoutRequest, ClientId, Demand, Denial, FeatureName, Grant, HostName, Install,
    Item, JobId, ParallelMode, PoolName, Queued, UserName, Wait,
};
use serde::{Deserialize, Serialize};

/// Response header naming the leader's address, when the answering node knows it. Clients
/// send their next request there, saving the forwarding hop.
pub const LEADER_HEADER: &str = "lsm-leader";
/// Response header with the answering node's id.
pub const NODE_HEADER: &str = "lsm-node";
/// Request header a node sets when it forwards a request to the leader. A node that
/// receives a forwarded request and is not the leader answers [`ErrorCode::NotLeader`]
/// instead of forwarding again, so a request makes at most one hop.
pub const FORWARDED_HEADER: &str = "lsm-forwarded-by";

/// Route paths.
pub mod path {
    use lsm_core::CheckoutId;

    /// `POST`: check out ([`super::CheckoutBody`]); `GET`: list checkouts
    /// ([`super::CheckoutQuery`]).
    pub const CHECKOUTS: &str = "/v1/checkouts";
    /// `GET`: features and pools.
    pub const FEATURES: &str = "/v1/features";
    /// `GET`: the queue ([`super::QueueQuery`]).
    pub const QUEUE: &str = "/v1/queue";
    /// `GET`: counters and clocks of the license state.
    pub const SUMMARY: &str = "/v1/summary";
    /// `GET`: the cluster as the answering node sees it ([`super::ClusterInfo`]).
    pub const CLUSTER: &str = "/v1/admin/cluster";
    /// `POST`: bootstrap the cluster with the configured peers ([`super::InitBody`] to
    /// [`super::ClusterInfo`]).
    pub const INIT: &str = "/v1/admin/init";
    /// `POST`: install a license configuration ([`super::InstallBody`]).
    pub const LICENSE: &str = "/v1/admin/license";
    /// `POST`: add a node ([`super::AddNodeBody`] to [`super::ClusterInfo`]).
    pub const NODES: &str = "/v1/admin/nodes";
    /// `POST`: build a snapshot now ([`super::SnapshotReply`]).
    pub const SNAPSHOT: &str = "/v1/admin/snapshot";
    /// `GET`: the process is up ([`super::HealthReply`]).
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: the node knows a leader and can serve ([`super::HealthReply`]).
    pub const READYZ: &str = "/readyz";
    /// `GET`: Prometheus text metrics.
    pub const METRICS: &str = "/metrics";

    /// `GET`: one checkout or queued request.
    pub fn checkout(id: CheckoutId) -> String {
        format!("/v1/checkouts/{}", id.0)
    }
    /// `POST`: renew a lease or poll a queued request ([`super::Envelope`]).
    pub fn heartbeat(id: CheckoutId) -> String {
        format!("/v1/checkouts/{}/heartbeat", id.0)
    }
    /// `POST`: give a checkout back or withdraw a queued request ([`super::Envelope`]).
    pub fn release(id: CheckoutId) -> String {
        format!("/v1/checkouts/{}/release", id.0)
    }
    /// `POST`: end someone's checkout ([`super::RevokeBody`]).
    pub fn revoke(id: CheckoutId) -> String {
        format!("/v1/admin/checkouts/{}/revoke", id.0)
    }
    /// `DELETE`: remove a node from the cluster (answers [`super::ClusterInfo`]).
    pub fn node(id: u64) -> String {
        format!("/v1/admin/nodes/{id}")
    }
}

/// The exactly-once envelope of a write, and the body of a heartbeat or release. The
/// other write bodies carry the same three fields at their top level.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The client's id; absent for a one-shot request (the server picks one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientId>,
    /// The request's sequence number, the same on every retry; required with `client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The client has the replies to all its requests numbered below this; defaults to
    /// `seq` (no earlier request outstanding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
}

/// One feature of a checkout: either `tokens`, or `cores` with a `mode`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    /// The feature.
    pub feature: FeatureName,
    /// Tokens asked for directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Cores the job runs on; converted to tokens by the feature's cost rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u64>,
    /// `smp` or `mpp`, with `cores`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ParallelMode>,
    /// The pool to draw from; by default the pool serving the mode, else the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolName>,
}

impl ItemBody {
    /// An item asking for `tokens` tokens.
    pub fn tokens(feature: FeatureName, tokens: u64) -> ItemBody {
        ItemBody { feature, tokens: Some(tokens), cores: None, mode: None, pool: None }
    }

    /// An item asking for `cores` cores in `mode`.
    pub fn cores(feature: FeatureName, cores: u64, mode: ParallelMode) -> ItemBody {
        ItemBody { feature, tokens: None, cores: Some(cores), mode: Some(mode), pool: None }
    }

    /// The state machine's item, or what is wrong with this one; `at` names it
    /// (`items[0]`).
    pub fn to_item(&self, at: &str) -> Result<Item, FieldError> {
        let demand = match (self.tokens, self.cores, self.mode) {
            (Some(tokens), None, None) => Demand::Tokens(tokens),
            (None, Some(cores), Some(mode)) => Demand::Cores { cores, mode },
            (None, Some(_), None) => {
                return Err(FieldError::new(
                    format!("{at}.mode"),
                    "cores need a mode: \"smp\" or \"mpp\"",
                ));
            }
            (None, None, _) => {
                return Err(FieldError::new(
                    at.to_string(),
                    "ask for either \"tokens\" or \"cores\" with a \"mode\"",
                ));
            }
            (Some(_), _, _) => {
                return Err(FieldError::new(
                    at.to_string(),
                    "give either \"tokens\" or \"cores\", not both",
                ));
            }
        };
        Ok(Item { feature: self.feature.clone(), demand, pool: self.pool.clone() })
    }
}

/// How a checkout waits in the queue when the tokens are busy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitBody {
    /// Higher goes first; equal priorities in arrival order.
    #[serde(default)]
    pub priority: u8,
    /// The request leaves the queue unless polled (heartbeat) within this time; by
    /// default the server's `queue_poll_ttl_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_ttl_ms: Option<u64>,
}

/// `POST /v1/checkouts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// The client's id (see [`Envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientId>,
    /// The request's sequence number (see [`Envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The client's ack (see [`Envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// The features, all or nothing.
    pub items: Vec<ItemBody>,
    /// The user the job runs as.
    pub user: UserName,
    /// The host the job runs on (for MPP, the launching host).
    pub host: HostName,
    /// The batch job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// Lease length; by default the server's `lease_ttl_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
    /// Offline borrow: hold the checkout until this time (ms since the Unix epoch) with
    /// no heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrow_until_ms: Option<u64>,
    /// Wait in the queue instead of being denied when the tokens are busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitBody>,
}

impl CheckoutBody {
    /// The state machine's request, with the server's defaults for what the body leaves
    /// out, or the first field that is wrong.
    pub fn to_request(
        &self,
        default_lease_ttl_ms: u64,
        default_poll_ttl_ms: u64,
    ) -> Result<CheckoutRequest, FieldError> {
        let items = self
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| item.to_item(&format!("items[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CheckoutRequest {
            items,
            user: self.user.clone(),
            host: self.host.clone(),
            job: self.job.clone(),
            lease_ttl_ms: self.lease_ttl_ms.unwrap_or(default_lease_ttl_ms),
            borrow_until_ms: self.borrow_until_ms,
            wait: self.wait.map(|w| Wait {
                priority: w.priority,
                poll_ttl_ms: w.poll_ttl_ms.unwrap_or(default_poll_ttl_ms),
            }),
        })
    }
}

macro_rules! has_envelope {
    ($($body:ty),*) => {$(
        impl $body {
            /// The exactly-once envelope.
            pub fn envelope(&self) -> Envelope {
                Envelope { client: self.client.clone(), seq: self.seq, ack: self.ack }
            }
        }
    )*};
}
has_envelope!(CheckoutBody, RevokeBody, InstallBody);

/// The answer to a checkout or a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LeaseReply {
    /// The checkout was granted.
    Granted(Grant),
    /// The lease was renewed, or a queued request polled with a heartbeat was granted.
    Renewed(Grant),
    /// The request waits in the queue; poll it with heartbeats.
    Queued(Queued),
}

/// The answer to a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReleaseReply {
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
}

/// `POST /v1/admin/checkouts/{id}/revoke`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// The client's id (see [`Envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientId>,
    /// The request's sequence number (see [`Envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The client's ack (see [`Envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// Why, for the holder and the audit log.
    pub reason: String,
}

/// The answer to a revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeReply {
    /// The revoked checkout or queued request.
    pub revoked: CheckoutId,
}

/// `POST /v1/admin/license`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallBody {
    /// The client's id (see [`Envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientId>,
    /// The request's sequence number (see [`Envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The client's ack (see [`Envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// Entitlements and policy, replacing the current configuration.
    pub install: Install,
}

/// The answer to an install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReply {
    /// Features in the new configuration.
    pub features: u64,
}

/// `POST /v1/admin/init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitBody {
    /// The voters, id to `host:port`; by default the peers of the node's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<BTreeMap<u64, String>>,
    /// Also install the license file named in the node's configuration once the cluster
    /// has a leader (the default).
    #[serde(default = "yes")]
    pub install_license: bool,
}

impl Default for InitBody {
    /// The configured peers, and the license installed: what an empty body means.
    fn default() -> Self {
        InitBody { members: None, install_license: true }
    }
}

fn yes() -> bool {
    true
}

/// `POST /v1/admin/nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNodeBody {
    /// The new node's id.
    pub id: u64,
    /// Its `host:port`.
    pub addr: String,
    /// Add it as a voter once it has caught up (the default), or keep it a learner.
    #[serde(default = "yes")]
    pub voter: bool,
}

/// Query string of `GET /v1/checkouts`; every filter is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutQuery {
    /// Holding this feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<FeatureName>,
    /// In this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolName>,
    /// Of this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserName>,
    /// On this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostName>,
    /// Of this client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientId>,
    /// Only ids above this one (paging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `local` for a fast, possibly stale read of the answering node; by default reads
    /// are linearizable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
}

/// Query string of `GET /v1/queue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueQuery {
    /// Only requests for this feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<FeatureName>,
    /// See [`CheckoutQuery::consistency`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
}

/// Query string of the other reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// See [`CheckoutQuery::consistency`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Confirmed with a quorum by the leader: reflects every write acknowledged before it.
    #[default]
    Linearizable,
    /// The answering node's own state, possibly behind the leader.
    Local,
}

/// `GET /v1/admin/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The answering node.
    pub node: u64,
    /// Its role: `Leader`, `Follower`, `Candidate` or `Learner`.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// The leader's id, if known.
    pub leader: Option<u64>,
    /// The leader's address, if known.
    pub leader_addr: Option<String>,
    /// The last index in the answering node's log.
    pub last_log_index: Option<u64>,
    /// The last index it knows to be committed.
    pub commit_index: Option<u64>,
    /// The last index applied to its state.
    pub applied_index: Option<u64>,
    /// The members.
    pub members: Vec<MemberInfo>,
}

/// One member in [`ClusterInfo`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its id.
    pub id: u64,
    /// Its address.
    pub addr: String,
    /// A voter, or a learner.
    pub voter: bool,
    /// Known on the leader: the last index replicated to it.
    pub matched_index: Option<u64>,
    /// Known on the leader: entries it is behind.
    pub lag: Option<u64>,
}

/// The answer to `POST /v1/admin/snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReply {
    /// The node that built the snapshot.
    pub node: u64,
    /// The last log index the snapshot covers; `null` when the node has applied nothing.
    pub snapshot_index: Option<u64>,
}

/// The answer of `GET /healthz` and of a ready `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReply {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    pub status: String,
    /// The answering node.
    pub node: u64,
    /// The leader, if known; `/healthz` leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
}

/// The body of every answer that is not 2xx.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// The field at fault, for a bad request (`items[0].tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The state machine's refusal, when it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denial: Option<Denial>,
    /// The leader's address, when the error is about leadership and it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// Stable error codes. New codes may be added; existing ones keep their meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body or query is not valid JSON or does not match the schema.
    MalformedRequest,
    /// 400: a field is out of range or inconsistent with another.
    BadRequest,
    /// 400: the license configuration does not validate.
    BadLicense,
    /// 401: an admin route without the right admin token.
    Unauthorized,
    /// 404: no such route.
    NotFound,
    /// 404: no such feature.
    UnknownFeature,
    /// 404: the feature has no such pool.
    UnknownPool,
    /// 404: no such checkout.
    UnknownCheckout,
    /// 403: the checkout belongs to another client.
    NotOwner,
    /// 403: the site policy keeps the requester out of the feature.
    Excluded,
    /// 403: the feature's license has not started or has expired.
    NotLicensed,
    /// 403: borrowing is off for the feature or the borrow is too long.
    BorrowNotAllowed,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 409: not enough free tokens now (may clear by itself; consider `wait`).
    NoTokens,
    /// 409: a pool cap or a max rule would be exceeded.
    OverLimit,
    /// 409: a queued request that waited too long holds the feature.
    QueueBlocked,
    /// 409: the request asks for more than the feature has in all.
    OverTotal,
    /// 409: the request is older than the replies the session keeps.
    StaleRequest,
    /// 409: the cluster is already initialized.
    AlreadyInitialized,
    /// 409: the membership change was refused.
    MembershipRefused,
    /// 410: the checkout has ended (released, expired, revoked).
    Gone,
    /// 413: the body is larger than the server accepts.
    BodyTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 429: a named limit of the state machine was reached.
    LimitReached,
    /// 500: a bug or a storage failure.
    Internal,
    /// 502: the leader could not be reached to forward the request.
    ForwardFailed,
    /// 503: this node is not the leader and does not know one (an election is running),
    /// or it is not the leader and the request was already forwarded once.
    NotLeader,
    /// 503: no quorum answered.
    NoQuorum,
    /// 503: the node is starting or stopping.
    Unavailable,
    /// 504: the request did not complete in time; it may still take effect, so retry it
    /// with the same envelope.
    Timeout,
}

impl ErrorCode {
    /// The HTTP status for the code.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MalformedRequest | BadRequest | BadLicense => 400,
            Unauthorized => 401,
            NotOwner | Excluded | NotLicensed | BorrowNotAllowed => 403,
            NotFound | UnknownFeature | UnknownPool | UnknownCheckout => 404,
            MethodNotAllowed => 405,
            NoTokens | OverLimit | QueueBlocked | OverTotal | StaleRequest | AlreadyInitialized
            | MembershipRefused => 409,
            Gone => 410,
            BodyTooLarge => 413,
            UnsupportedMediaType => 415,
            LimitReached => 429,
            Internal => 500,
            ForwardFailed => 502,
            NotLeader | NoQuorum | Unavailable => 503,
            Timeout => 504,
        }
    }

    /// True when the same request may succeed if retried (on this or another node)
    /// without any change: the cluster was briefly unable to answer.
    pub fn is_retryable(self) -> bool {
        use ErrorCode::*;
        matches!(self, ForwardFailed | NotLeader | NoQuorum | Unavailable | Timeout)
    }

    /// The code for a refusal of the state machine.
    pub fn of_denial(denial: &Denial) -> ErrorCode {
        use ErrorCode::*;
        match denial {
            Denial::BadRequest { .. } => BadRequest,
            Denial::BadInstall(_) => BadLicense,
            Denial::LimitReached { .. } => LimitReached,
            Denial::UnknownFeature { .. } => UnknownFeature,
            Denial::UnknownPool { .. } => UnknownPool,
            Denial::NotStarted { .. } | Denial::FeatureExpired { .. } => NotLicensed,
            Denial::Excluded { .. } => Excluded,
            Denial::OverLimit { .. } | Denial::PoolCap { .. } => OverLimit,
            Denial::BorrowNotAllowed { .. } => BorrowNotAllowed,
            Denial::NoTokens { .. } => NoTokens,
            Denial::OverTotal { .. } => OverTotal,
            Denial::QueueBlocked { .. } => QueueBlocked,
            Denial::UnknownCheckout { .. } => UnknownCheckout,
            Denial::NotOwner { .. } => NotOwner,
            Denial::Revoked { .. } | Denial::LeaseExpired { .. } | Denial::Ended { .. } => Gone,
            Denial::StaleRequest { .. } => StaleRequest,
        }
    }

    /// The code's name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        ERROR_CODE_NAMES
            .iter()
            .find(|(code, _)| *code == self)
            .map(|(_, name)| *name)
            .unwrap_or("internal")
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every code with its wire name (checked against serde by a test).
pub const ERROR_CODE_NAMES: &[(ErrorCode, &str)] = &[
    (ErrorCode::MalformedRequest, "malformed_request"),
    (ErrorCode::BadRequest, "bad_request"),
    (ErrorCode::BadLicense, "bad_license"),
    (ErrorCode::Unauthorized, "unauthorized"),
    (ErrorCode::NotFound, "not_found"),
    (ErrorCode::UnknownFeature, "unknown_feature"),
    (ErrorCode::UnknownPool, "unknown_pool"),
    (ErrorCode::UnknownCheckout, "unknown_checkout"),
    (ErrorCode::NotOwner, "not_owner"),
    (ErrorCode::Excluded, "excluded"),
    (ErrorCode::NotLicensed, "not_licensed"),
    (ErrorCode::BorrowNotAllowed, "borrow_not_allowed"),
    (ErrorCode::MethodNotAllowed, "method_not_allowed"),
    (ErrorCode::NoTokens, "no_tokens"),
    (ErrorCode::OverLimit, "over_limit"),
    (ErrorCode::QueueBlocked, "queue_blocked"),
    (ErrorCode::OverTotal, "over_total"),
    (ErrorCode::StaleRequest, "stale_request"),
    (ErrorCode::AlreadyInitialized, "already_initialized"),
    (ErrorCode::MembershipRefused, "membership_refused"),
    (ErrorCode::Gone, "gone"),
    (ErrorCode::BodyTooLarge, "body_too_large"),
    (ErrorCode::UnsupportedMediaType, "unsupported_media_type"),
    (ErrorCode::LimitReached, "limit_reached"),
    (ErrorCode::Internal, "internal"),
    (ErrorCode::ForwardFailed, "forward_failed"),
    (ErrorCode::NotLeader, "not_leader"),
    (ErrorCode::NoQuorum, "no_quorum"),
    (ErrorCode::Unavailable, "unavailable"),
    (ErrorCode::Timeout, "timeout"),
];

/// A field of a request body that is wrong, and how.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field, such as `items[0].mode`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), problem: problem.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_names_match_serde() {
        for (code, name) in ERROR_CODE_NAMES {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(name));
            assert_eq!(code.as_str(), *name);
            let back: ErrorCode = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(back, *code);
        }
    }

    #[test]
    fn checkout_body_parses_and_converts() {
        let body: CheckoutBody = serde_json::from_str(
            r#"{"client":"c1","seq":3,"items":[{"feature":"lsdyna","cores":16,"mode":"mpp"},
                {"feature":"abaqus","tokens":5,"pool":"smp"}],"user":"jane","host":"n1"}"#,
        )
        .unwrap();
        assert_eq!(body.envelope().seq, Some(3));
        let req = body.to_request(30_000, 60_000).unwrap();
        assert_eq!(req.lease_ttl_ms, 30_000);
        assert_eq!(req.items[0].demand, Demand::Cores { cores: 16, mode: ParallelMode::Mpp });
        assert_eq!(req.items[1].demand, Demand::Tokens(5));
        assert_eq!(req.items[1].pool.as_ref().map(|p| p.as_str()), Some("smp"));
    }

    #[test]
    fn items_must_say_tokens_or_cores_with_a_mode() {
        let item = |json: &str| serde_json::from_str::<ItemBody>(json).unwrap();
        let err = item(r#"{"feature":"f","cores":4}"#).to_item("items[0]").unwrap_err();
        assert_eq!(err.field, "items[0].mode");
        let err = item(r#"{"feature":"f"}"#).to_item("items[1]").unwrap_err();
        assert_eq!(err.field, "items[1]");
        let err = item(r#"{"feature":"f","tokens":1,"cores":2}"#).to_item("items[2]").unwrap_err();
        assert!(err.problem.contains("not both"), "{err}");
    }

    #[test]
    fn unknown_fields_and_negative_counts_are_refused() {
        let err = serde_json::from_str::<CheckoutBody>(
            r#"{"items":[{"feature":"f","tokens":-1}],"user":"u","host":"h"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("-1"), "{err}");
        let err = serde_json::from_str::<ItemBody>(r#"{"feature":"f","tokns":1}"#).unwrap_err();
        assert!(err.to_string().contains("tokns"), "{err}");
    }

    #[test]
    fn an_empty_init_body_means_the_default() {
        let empty: InitBody = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, InitBody::default());
        assert!(empty.install_license);
    }

    #[test]
    fn replies_are_tagged_with_their_status() {
        let reply = ReleaseReply::Released { id: CheckoutId(7) };
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json, serde_json::json!({"status": "released", "id": 7}));
        assert_eq!(serde_json::from_value::<ReleaseReply>(json).unwrap(), reply);
    }
}
