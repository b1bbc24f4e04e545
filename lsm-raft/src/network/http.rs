//! The HTTP transport: one `POST` per Raft RPC.
//!
//! A node sends `POST http://{addr}/raft/{append|vote|snapshot}` to a peer, where `addr`
//! is the peer's `BasicNode::addr` (`host:port`), with an `application/octet-stream` body
//! in the format of the [module docs](super). The peer answers `200 OK` with the encoded
//! Raft result, or refuses:
//!
//! - `421 Misdirected Request`: the request is for another cluster or another node;
//! - `400 Bad Request`: the request does not decode;
//! - `500 Internal Server Error`: the receiver could not encode its answer;
//!
//! each with the encoded [`Rejection`] as the body, or `413 Payload Too Large` for a body
//! over [`MAX_MESSAGE_BYTES`], which the caller turns into `RPCError::PayloadTooLarge`.
//!
//! Calls travel through a [`PeerTransport`]. [`HttpNetwork::new`] uses one
//! `reqwest::Client` per node, so all calls share its pool of kept-alive connections, and
//! never a proxy, whatever the environment says: peers talk directly. A simulation gives
//! [`HttpNetwork::with_transport`] a transport over its simulated network instead. A call
//! is bounded by its `RPCOption::hard_ttl()`, from connecting to the end of the response
//! body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::RaftNetworkFactory;
use openraft::network::RPCOption;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Call, MAX_MESSAGE_BYTES, Problem, Rejection, RpcError, RpcKind, decode, encode};
use crate::types::{Node, NodeId, Raft, TypeConfig};

/// How long a node waits for a peer to accept a TCP connection before it counts the peer
/// as unreachable. A call's own hard TTL ends it sooner if that is shorter, as a timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an unused connection to a peer is kept open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const OCTET_STREAM: &str = "application/octet-stream";

/// The HTTP network of one node: openraft's factory of clients for its peers.
///
/// Clones share the transport and its connections.
#[derive(Clone)]
pub struct HttpNetwork {
    cluster_id: Arc<str>,
    node_id: NodeId,
    transport: Arc<dyn PeerTransport>,
}

impl std::fmt::Debug for HttpNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpNetwork")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// How a node's peer calls travel: one `POST` and its whole answer. [`HttpNetwork::new`]
/// uses reqwest over TCP; a simulation supplies its own, over a simulated network.
pub trait PeerTransport: Send + Sync + 'static {
    /// Posts `body` (`application/octet-stream`) to `http://{addr}{path}` and returns the
    /// status and at most [`MAX_MESSAGE_BYTES`] of the answer's body, within `timeout`.
    fn post(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<PeerAnswer, PeerFailure>> + Send + 'static>>;
}

/// A peer's answer to a [`PeerTransport::post`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The body, or `None` when it was longer than [`MAX_MESSAGE_BYTES`].
    pub body: Option<Bytes>,
}

/// Why a [`PeerTransport::post`] got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerFailure {
    /// No connection could be made; the peer did not get the request.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time; the peer may or may not have handled the request.
    #[error("timed out")]
    Timeout,
    /// The exchange failed midway.
    #[error("{0}")]
    Failed(String),
}

/// [`PeerTransport`] over a `reqwest::Client`.
#[derive(Clone, Debug)]
struct Reqwest(reqwest::Client);

impl PeerTransport for Reqwest {
    fn post(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<PeerAnswer, PeerFailure>> + Send + 'static>> {
        let request = self
            .0
            .post(format!("http://{addr}{path}"))
            .header(header::CONTENT_TYPE, OCTET_STREAM)
            .timeout(timeout)
            .body(body);
        Box::pin(async move {
            let mut response = request.send().await.map_err(|e| failure(&e))?;
            let status = response.status().as_u16();
            // Read the body, but no more of it than a message may be.
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| failure(&e))? {
                if bytes.len() + chunk.len() > MAX_MESSAGE_BYTES {
                    return Ok(PeerAnswer { status, body: None });
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(PeerAnswer { status, body: Some(bytes.into()) })
        })
    }
}

/// A failed reqwest call: a peer that cannot be connected to is unreachable, a call that
/// ran out of time timed out, anything else failed.
fn failure(error: &reqwest::Error) -> PeerFailure {
    // A connect timeout is both; it is the connecting that failed.
    if error.is_connect() || error.is_builder() {
        PeerFailure::Unreachable(causes(error))
    } else if error.is_timeout() {
        PeerFailure::Timeout
    } else {
        PeerFailure::Failed(causes(error))
    }
}

impl HttpNetwork {
    /// The network of node `node_id` in cluster `cluster_id`, with its own HTTP client.
    pub fn new(
        cluster_id: impl Into<String>,
        node_id: NodeId,
    ) -> Result<HttpNetwork, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .build()?;
        Ok(HttpNetwork::with_client(cluster_id, node_id, client))
    }

    /// The network of node `node_id` in cluster `cluster_id`, sending with `client`. The
    /// client should not use a proxy; every call sets its own timeout.
    pub fn with_client(
        cluster_id: impl Into<String>,
        node_id: NodeId,
        client: reqwest::Client,
    ) -> HttpNetwork {
        HttpNetwork::with_transport(cluster_id, node_id, Arc::new(Reqwest(client)))
    }

    /// The network of node `node_id` in cluster `cluster_id`, sending through `transport`.
    pub fn with_transport(
        cluster_id: impl Into<String>,
        node_id: NodeId,
        transport: Arc<dyn PeerTransport>,
    ) -> HttpNetwork {
        HttpNetwork { cluster_id: cluster_id.into().into(), node_id, transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> HttpPeer {
        HttpPeer { network: self.clone(), target, node: node.clone() }
    }
}

/// A node's connection to one peer over HTTP.
#[derive(Clone, Debug)]
pub struct HttpPeer {
    network: HttpNetwork,
    target: NodeId,
    node: Node,
}

impl HttpPeer {
    /// Sends one request and decodes the answer.
    async fn call<Req, Resp, E>(
        &self,
        kind: RpcKind,
        rpc: &Req,
        entries: usize,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let call = Call {
            kind,
            from: self.network.node_id,
            target: self.target,
            node: &self.node,
            hard_ttl: option.hard_ttl(),
        };
        let body = call.request(&self.network.cluster_id, rpc, entries)?;
        let len = body.len();
        let path = format!("/raft/{}", kind.path());
        let sent = self.network.transport.post(&self.node.addr, &path, body, option.hard_ttl());
        let answer = match sent.await {
            Ok(answer) => answer,
            Err(PeerFailure::Unreachable(reason)) => return Err(call.unreachable(reason)),
            Err(PeerFailure::Timeout) => return Err(call.timeout()),
            Err(PeerFailure::Failed(reason)) => return Err(call.failed(Problem::Failed(reason))),
        };
        let Some(bytes) = answer.body else {
            let problem = Problem::BadResponse(format!(
                "the response is larger than the {MAX_MESSAGE_BYTES} bytes a message may be"
            ));
            return Err(call.failed(problem));
        };
        match answer.status {
            200 => call.reply(&bytes),
            413 => Err(call.too_large(len, entries)),
            status => match decode::<Rejection>(&bytes) {
                Ok(rejection) => Err(call.refused(rejection)),
                Err(_) => {
                    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                    Err(call.failed(Problem::Failed(format!("HTTP {status}: {text:?}"))))
                }
            },
        }
    }
}

/// An error with the chain of its causes, which say what actually happened.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

super::forward_rpcs!(HttpPeer);

/// What the routes share.
struct Server {
    raft: Raft,
    cluster_id: String,
    node_id: NodeId,
}

/// The routes that receive Raft RPCs for node `node_id` of cluster `cluster_id`:
/// `POST /raft/append`, `/raft/vote` and `/raft/snapshot`.
///
/// Request bodies are limited to [`MAX_MESSAGE_BYTES`] (8 MiB): a snapshot chunk of up to
/// [`super::MAX_SNAPSHOT_CHUNK_BYTES`] with its envelope, or a batch of entries. The limit
/// applies to these routes only, whatever the router they are merged into sets.
///
/// A request, once received, is handled to the end even if the caller stops waiting, as
/// it would be had it arrived just before the caller gave up.
pub fn router(raft: Raft, cluster_id: String, node_id: NodeId) -> axum::Router {
    let server = Arc::new(Server { raft, cluster_id, node_id });
    axum::Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
        .with_state(server)
}

async fn append(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    serve(server, RpcKind::Append, body).await
}

async fn vote(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    serve(server, RpcKind::Vote, body).await
}

async fn snapshot(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    serve(server, RpcKind::Snapshot, body).await
}

async fn serve(server: Arc<Server>, kind: RpcKind, body: Bytes) -> Response {
    // Handled in a task of its own so that a caller that hangs up does not cancel it.
    let task = tokio::spawn(async move {
        super::serve_rpc(&server.raft, &server.cluster_id, server.node_id, kind, &body).await
    });
    let result = match task.await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(rpc = %kind, %error, "the task serving a peer request failed");
            Err(Rejection::Internal(format!("the task serving the request failed: {error}")))
        }
    };
    match result {
        Ok(bytes) => ([(header::CONTENT_TYPE, OCTET_STREAM)], bytes).into_response(),
        Err(rejection) => refusal(rejection),
    }
}

/// The HTTP response for a refused request.
fn refusal(rejection: Rejection) -> Response {
    let status = match rejection {
        Rejection::WrongCluster { .. } | Rejection::WrongTarget { .. } => {
            StatusCode::MISDIRECTED_REQUEST
        }
        Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
        Rejection::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    match encode(&rejection) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, OCTET_STREAM)], bytes).into_response(),
        Err(_) => (status, rejection.to_string()).into_response(),
    }
}
