//! [`Client`]: requests, retries and the leader cache.
//!
//! Every operation is a loop of HTTP exchanges under one deadline. An exchange goes to the
//! cached leader when one is known (nodes name it in the `lsm-leader` header of every
//! answer), else to the servers of the configuration in turn, starting with the last one
//! that answered. A server that cannot be reached, or that answers with a retryable code
//! (`not_leader`, `no_quorum`, `unavailable`, `timeout`, `forward_failed`), is left for
//! the next; a leader hint is followed at once. When every server has failed once, the
//! client pauses (exponential backoff with jitter, from `backoff_min` to `backoff_max`)
//! and starts another round, until the deadline. While a live node says the leader is
//! changing (`not_leader`, `forward_failed`) the pause is capped at
//! [`ELECTION_BACKOFF_MAX`]: an election ends within a second, and a client asleep in a
//! long backoff round would leave the new leader idle.
//!
//! A write carries the same client id and sequence number on every exchange of one
//! operation (see [`crate::session`]), so retrying after a lost reply, a timeout or a
//! failover is always safe: the server answers a repeat from its session table. Reads
//! carry no envelope and are simply repeated.
//!
//! Every exchange goes through an `Arc<dyn Transport>`, so tests and simulations can
//! replace TCP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use lsm_core::{
    Checkout, CheckoutId, CheckoutStatus, ClientId, FeatureStatus, Install, Summary, WaiterInfo,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;

use crate::api::{
    self, AddNodeBody, CheckoutBody, CheckoutQuery, ClusterInfo, Consistency, Envelope, ErrorBody,
    InitBody, InstallBody, InstallReply, LeaseReply, QueueQuery, ReadQuery, ReleaseReply,
    RevokeBody, RevokeReply, SnapshotReply,
};
use crate::config::{ClientConfig, generate_client_id};
use crate::error::ClientError;
use crate::session::{Session, Ticket};
use crate::transport::{HyperTransport, Transport};

/// A handle on the cluster. Cheap to clone; clones share the session (sequence numbers),
/// the leader cache and the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    transport: Arc<dyn Transport>,
    session: Session,
    route: Mutex<Route>,
    /// The backoff jitter's generator when `config.rng_seed` is set.
    jitter: Option<Mutex<ChaCha8Rng>>,
}

/// Where the next exchange goes.
#[derive(Debug, Default)]
struct Route {
    /// The leader's address, as the last answer named it.
    leader: Option<String>,
    /// Index in `servers` of the server to try first when no leader is known.
    preferred: usize,
}

/// How long one operation may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// When the operation gives up.
    pub deadline: Instant,
    /// Longest single exchange.
    pub attempt_timeout: Duration,
    /// Longest pause between rounds of retries.
    pub backoff_max: Duration,
}

/// One operation's request, rebuilt for each exchange.
struct Call<'a> {
    method: Method,
    path: String,
    /// The JSON body; for a write, the envelope fields are set on each exchange.
    body: Option<Value>,
    /// A write's sequence number.
    ticket: Option<&'a Ticket>,
    /// Send the admin token.
    admin: bool,
}

/// The longest pause between retry rounds while a live node reports that the leader is
/// changing (see the module docs).
pub const ELECTION_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// The answer to one exchange.
enum Outcome<T> {
    /// Final: an answer or a refusal.
    Done(Result<T, ClientError>),
    /// Try elsewhere or later; `hint` is the leader an answer named; `electing` when a
    /// live node answered that the leader is changing.
    Retry { reason: String, hint: Option<String>, electing: bool },
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", self.id())
            .field("servers", &self.inner.config.servers)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client over TCP ([`HyperTransport::tcp`]); validates `config`.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let transport = Arc::new(HyperTransport::tcp(config.attempt_timeout));
        Client::with_transport(config, transport)
    }

    /// A client whose every exchange goes through `transport`; validates `config`.
    pub fn with_transport(
        config: ClientConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<Client, ClientError> {
        config.validate()?;
        let id = config.client_id.clone().unwrap_or_else(generate_client_id);
        let session = match config.first_seq {
            Some(first) => Session::starting_at(id, first),
            None => Session::new(id),
        };
        let jitter = config.rng_seed.map(|seed| Mutex::new(ChaCha8Rng::seed_from_u64(seed)));
        let inner =
            Inner { config, transport, session, route: Mutex::new(Route::default()), jitter };
        Ok(Client { inner: Arc::new(inner) })
    }

    /// The client id every write carries.
    pub fn id(&self) -> &ClientId {
        self.inner.session.client()
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The leader's address as the last answer named it, if any.
    pub fn leader(&self) -> Option<String> {
        self.route().leader.clone()
    }

    /// One checkout request, exactly once (retried with the same envelope), with no lease
    /// guard: the caller heartbeats and releases it itself. The client fills in the
    /// envelope (`client`, `seq`, `ack`), replacing any in `body`. With `wait` set, the
    /// answer may be [`LeaseReply::Queued`]; poll it with [`Client::heartbeat`].
    pub async fn checkout_once(&self, body: CheckoutBody) -> Result<LeaseReply, ClientError> {
        self.write(api::path::CHECKOUTS.to_string(), to_value(&body), false, self.budget()).await
    }

    /// Renews checkout `id`'s lease, or polls its queued request.
    pub async fn heartbeat(&self, id: CheckoutId) -> Result<LeaseReply, ClientError> {
        self.heartbeat_within(id, self.budget()).await
    }

    /// Gives checkout `id` back, or withdraws its queued request.
    pub async fn release(&self, id: CheckoutId) -> Result<ReleaseReply, ClientError> {
        self.release_within(id, self.budget()).await
    }

    /// Every feature with its pools (`GET /v1/features`).
    pub async fn features(
        &self,
        consistency: Consistency,
    ) -> Result<Vec<FeatureStatus>, ClientError> {
        let query = ReadQuery { consistency: explicit(consistency) };
        self.get(with_query(api::path::FEATURES, &query), false).await
    }

    /// Live checkouts matching `query` (`GET /v1/checkouts`).
    pub async fn checkouts(&self, query: CheckoutQuery) -> Result<Vec<Checkout>, ClientError> {
        self.get(with_query(api::path::CHECKOUTS, &query), false).await
    }

    /// The queue in order (`GET /v1/queue`).
    pub async fn queue(&self, query: QueueQuery) -> Result<Vec<WaiterInfo>, ClientError> {
        self.get(with_query(api::path::QUEUE, &query), false).await
    }

    /// One checkout or queued request: live, queued, or gone and why.
    pub async fn checkout_status(&self, id: CheckoutId) -> Result<CheckoutStatus, ClientError> {
        self.get(api::path::checkout(id), false).await
    }

    /// Counters and clocks of the license state.
    pub async fn summary(&self) -> Result<Summary, ClientError> {
        self.get(api::path::SUMMARY.to_string(), false).await
    }

    /// The cluster as whichever node answers sees it.
    pub async fn cluster(&self) -> Result<ClusterInfo, ClientError> {
        self.get(api::path::CLUSTER.to_string(), true).await
    }

    /// The cluster as the node at `addr` sees it: one exchange with that node only, no
    /// retries, no forwarding.
    pub async fn cluster_of(&self, addr: &str) -> Result<ClusterInfo, ClientError> {
        let call = Call {
            method: Method::GET,
            path: api::path::CLUSTER.to_string(),
            body: None,
            ticket: None,
            admin: true,
        };
        match self.exchange(addr, &call, self.inner.config.attempt_timeout).await {
            Outcome::Done(result) => result,
            Outcome::Retry { reason, .. } => {
                Err(ClientError::Unavailable { attempts: 1, last: reason })
            }
        }
    }

    /// Admin: ends checkout or queued request `id` (`lmremove`).
    pub async fn revoke(
        &self,
        id: CheckoutId,
        reason: impl Into<String>,
    ) -> Result<RevokeReply, ClientError> {
        let body = RevokeBody { client: None, seq: None, ack: None, reason: reason.into() };
        self.write(api::path::revoke(id), to_value(&body), true, self.budget()).await
    }

    /// Admin: installs a license configuration, replacing the current one.
    pub async fn install(&self, install: Install) -> Result<InstallReply, ClientError> {
        let body = InstallBody { client: None, seq: None, ack: None, install };
        self.write(api::path::LICENSE.to_string(), to_value(&body), true, self.budget()).await
    }

    /// Admin: adds a node to the cluster; answers the cluster once the node is in it.
    pub async fn add_node(&self, body: AddNodeBody) -> Result<ClusterInfo, ClientError> {
        self.call(Method::POST, api::path::NODES.to_string(), Some(to_value(&body)), true).await
    }

    /// Admin: removes node `id` from the cluster; answers the cluster without it.
    pub async fn remove_node(&self, id: u64) -> Result<ClusterInfo, ClientError> {
        self.call(Method::DELETE, api::path::node(id), None, true).await
    }

    /// Admin: builds a snapshot now on whichever node answers.
    pub async fn snapshot(&self) -> Result<SnapshotReply, ClientError> {
        // The route reads no body; an empty object is what `curl -d '{}'` sends.
        let body = Some(Value::Object(Default::default()));
        self.call(Method::POST, api::path::SNAPSHOT.to_string(), body, true).await
    }

    /// Admin: bootstraps the cluster; answers the cluster once it has a leader (and the
    /// license, unless `install_license` is off).
    pub async fn init(&self, body: InitBody) -> Result<ClusterInfo, ClientError> {
        self.call(Method::POST, api::path::INIT.to_string(), Some(to_value(&body)), true).await
    }

    /// The default budget: the configured deadline from now.
    pub(crate) fn budget(&self) -> Budget {
        Budget {
            deadline: Instant::now() + self.inner.config.deadline,
            attempt_timeout: self.inner.config.attempt_timeout,
            backoff_max: self.inner.config.backoff_max,
        }
    }

    pub(crate) async fn heartbeat_within(
        &self,
        id: CheckoutId,
        budget: Budget,
    ) -> Result<LeaseReply, ClientError> {
        let body = to_value(&Envelope::default());
        self.write(api::path::heartbeat(id), body, false, budget).await
    }

    pub(crate) async fn release_within(
        &self,
        id: CheckoutId,
        budget: Budget,
    ) -> Result<ReleaseReply, ClientError> {
        let body = to_value(&Envelope::default());
        self.write(api::path::release(id), body, false, budget).await
    }

    async fn get<T: DeserializeOwned>(&self, path: String, admin: bool) -> Result<T, ClientError> {
        self.call(Method::GET, path, None, admin).await
    }

    /// A request without an envelope, retried under the default budget.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
        admin: bool,
    ) -> Result<T, ClientError> {
        let call = Call { method, path, body, ticket: None, admin };
        self.run(&call, self.budget()).await
    }

    /// A write: one sequence number for the whole operation.
    async fn write<T: DeserializeOwned>(
        &self,
        path: String,
        body: Value,
        admin: bool,
        budget: Budget,
    ) -> Result<T, ClientError> {
        let ticket = self.inner.session.begin();
        let call =
            Call { method: Method::POST, path, body: Some(body), ticket: Some(&ticket), admin };
        self.run(&call, budget).await
    }

    /// The retry loop (see the module docs).
    async fn run<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        budget: Budget,
    ) -> Result<T, ClientError> {
        let mut attempts = 0u32;
        let mut last = "the deadline passed before any server was tried".to_string();
        let mut tried: Vec<String> = Vec::new();
        let mut rounds = 0u32;
        let mut hint: Option<String> = None;
        let mut electing = false;
        loop {
            let target = match hint.take().filter(|h| !tried.contains(h)) {
                Some(leader) => leader,
                None => match self.pick(&tried) {
                    Some(target) => target,
                    None => {
                        // Every server failed once: pause before the next round.
                        let max = if electing {
                            budget.backoff_max.min(ELECTION_BACKOFF_MAX)
                        } else {
                            budget.backoff_max
                        };
                        electing = false;
                        let pause = self.backoff(max, rounds);
                        rounds = rounds.saturating_add(1);
                        let now = Instant::now();
                        if now + pause >= budget.deadline {
                            tokio::time::sleep_until(budget.deadline).await;
                            return Err(ClientError::Unavailable { attempts, last });
                        }
                        tokio::time::sleep(pause).await;
                        tried.clear();
                        self.pick(&tried).expect("an empty round has a server")
                    }
                },
            };
            let now = Instant::now();
            if now >= budget.deadline {
                return Err(ClientError::Unavailable { attempts, last });
            }
            let timeout = budget.attempt_timeout.min(budget.deadline - now);
            attempts += 1;
            tried.push(target.clone());
            match self.exchange(&target, call, timeout).await {
                Outcome::Done(result) => {
                    if result.is_ok() {
                        self.answered(&target);
                    }
                    return result;
                }
                Outcome::Retry { reason, hint: named, electing: changing } => {
                    last = reason;
                    electing |= changing;
                    self.failed(&target);
                    hint = named.filter(|h| *h != target);
                }
            }
        }
    }

    /// One exchange with `addr`.
    async fn exchange<T: DeserializeOwned>(
        &self,
        addr: &str,
        call: &Call<'_>,
        timeout: Duration,
    ) -> Outcome<T> {
        let request = match self.build(call) {
            Ok(request) => request,
            Err(e) => return Outcome::Done(Err(e)),
        };
        let response = match self.inner.transport.send(addr, request, timeout).await {
            Ok(response) => response,
            Err(e) => return Outcome::Retry { reason: e.to_string(), hint: None, electing: false },
        };
        let status = response.status();
        let hint = response
            .headers()
            .get(api::LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(String::from);
        if let Some(leader) = &hint {
            self.route().leader = Some(leader.clone());
        }
        let body = response.into_body();
        if status.is_success() {
            let text: &[u8] = if body.is_empty() { b"null" } else { &body };
            return Outcome::Done(serde_json::from_slice(text).map_err(|e| ClientError::Decode {
                addr: addr.to_string(),
                reason: format!("{} {}: {e}", call.method, call.path),
            }));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) if error.code.is_retryable() => {
                let reason = format!("{addr}: {} ({})", error.message, error.code);
                let hint = hint.or(error.leader);
                let electing =
                    matches!(error.code, api::ErrorCode::NotLeader | api::ErrorCode::ForwardFailed);
                Outcome::Retry { reason, hint, electing }
            }
            Ok(ErrorBody { error }) => Outcome::Done(Err(ClientError::Api {
                status: status.as_u16(),
                detail: Box::new(error),
            })),
            Err(_) if is_gateway_trouble(status) => {
                Outcome::Retry { reason: format!("{addr}: HTTP {status}"), hint, electing: false }
            }
            Err(e) => Outcome::Done(Err(ClientError::Decode {
                addr: addr.to_string(),
                reason: format!(
                    "HTTP {status} without an lsm error body ({e}): {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            })),
        }
    }

    /// The HTTP request for one exchange; a write gets its envelope with the ack as of now.
    fn build(&self, call: &Call<'_>) -> Result<http::Request<Bytes>, ClientError> {
        let mut builder = http::Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            .header(header::ACCEPT, "application/json");
        if call.admin
            && let Some(token) = &self.inner.config.admin_token
        {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match &call.body {
            None => Bytes::new(),
            Some(value) => {
                let mut value = value.clone();
                if let (Some(ticket), Value::Object(map)) = (call.ticket, &mut value) {
                    let session = &self.inner.session;
                    map.insert("client".into(), Value::String(session.client().to_string()));
                    map.insert("seq".into(), Value::from(ticket.seq()));
                    map.insert("ack".into(), Value::from(session.ack().min(ticket.seq())));
                }
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&value).expect("JSON values serialize"))
            }
        };
        builder.body(body).map_err(|e| ClientError::Decode {
            addr: "(request)".into(),
            reason: format!("cannot build {} {}: {e}", call.method, call.path),
        })
    }

    /// The next server to try: the leader if known, else the configured servers from the
    /// preferred one on; `None` when every one was tried this round.
    fn pick(&self, tried: &[String]) -> Option<String> {
        let route = self.route();
        let servers = &self.inner.config.servers;
        let n = servers.len();
        let in_turn = (0..n).map(|k| &servers[(route.preferred + k) % n]);
        route.leader.iter().chain(in_turn).find(|s| !tried.contains(s)).cloned()
    }

    /// `addr` answered: prefer it next time when no leader is known.
    fn answered(&self, addr: &str) {
        let mut route = self.route();
        if let Some(i) = self.inner.config.servers.iter().position(|s| s == addr) {
            route.preferred = i;
        }
    }

    /// `addr` failed: forget it as the leader, and start the next round after it.
    fn failed(&self, addr: &str) {
        let mut route = self.route();
        if route.leader.as_deref() == Some(addr) {
            route.leader = None;
        }
        let servers = &self.inner.config.servers;
        if servers.get(route.preferred).is_some_and(|s| s == addr) {
            route.preferred = (route.preferred + 1) % servers.len();
        }
    }

    fn route(&self) -> std::sync::MutexGuard<'_, Route> {
        self.inner.route.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The pause before retry round `round`, jittered by the seeded generator if the
    /// configuration has a seed, else by the thread's.
    fn backoff(&self, max: Duration, round: u32) -> Duration {
        let min = self.inner.config.backoff_min;
        match &self.inner.jitter {
            Some(rng) => {
                let mut rng = rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                backoff(min, max, round, &mut *rng)
            }
            None => backoff(min, max, round, &mut rand::rng()),
        }
    }
}

/// The pause before retry round `round` (0-based): between half and all of
/// `min * 2^round`, capped at `max`, and never below `min`; the jitter drawn from `rng`.
fn backoff(min: Duration, max: Duration, round: u32, rng: &mut impl Rng) -> Duration {
    let cap = min.saturating_mul(1u32 << round.min(20)).min(max);
    let low = (cap / 2).max(min).min(cap);
    if low >= cap { cap } else { rng.random_range(low..=cap) }
}

/// 502, 503 and 504 from something that is not an lsm node (a proxy, a load balancer).
fn is_gateway_trouble(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// `None` for the server's default, so the query string stays empty.
fn explicit(consistency: Consistency) -> Option<Consistency> {
    (consistency != Consistency::default()).then_some(consistency)
}

/// `path?query`, or `path` when the query is empty.
fn with_query(path: &str, query: &impl Serialize) -> String {
    let query = serde_urlencoded::to_string(query).expect("flat query structs encode");
    if query.is_empty() { path.to_string() } else { format!("{path}?{query}") }
}

fn to_value(body: &impl Serialize) -> Value {
    serde_json::to_value(body).expect("API bodies serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_in_bounds() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(2));
        for round in 0..40 {
            for _ in 0..20 {
                let pause = backoff(min, max, round, &mut rand::rng());
                assert!(pause >= min && pause <= max, "round {round}: {pause:?}");
                let cap = min.saturating_mul(1 << round.min(20)).min(max);
                assert!(pause <= cap && pause >= cap / 2, "round {round}: {pause:?}");
            }
        }
        assert_eq!(backoff(min, min, 5, &mut rand::rng()), min);
    }

    #[test]
    fn a_seeded_backoff_repeats_its_jitter() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(2));
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..10).map(|round| backoff(min, max, round, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn queries_encode_only_what_is_set() {
        let query = CheckoutQuery {
            feature: Some("lsdyna".parse().unwrap()),
            user: Some("jane@site".parse().unwrap()),
            consistency: Some(Consistency::Local),
            ..Default::default()
        };
        assert_eq!(
            with_query("/v1/checkouts", &query),
            "/v1/checkouts?feature=lsdyna&user=jane%40site&consistency=local"
        );
        assert_eq!(with_query("/v1/queue", &QueueQuery::default()), "/v1/queue");
        let linearizable = ReadQuery { consistency: explicit(Consistency::Linearizable) };
        assert_eq!(with_query("/v1/features", &linearizable), "/v1/features");
    }
}
