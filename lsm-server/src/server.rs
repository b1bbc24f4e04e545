//! A running server: the Raft node, the HTTP API around it, and [`run`], which serves it
//! on a socket until told to stop.
//!
//! [`Server::start`] takes everything that touches the outside world as a parameter (the
//! storage backend, the peer network, the clock, and the transport used to forward to
//! the leader), so the same server runs in production ([`run`]: redb, HTTP peers, the
//! system clock, TCP) and in a deterministic simulation (memory storage, simulated
//! network and time). [`Server::router`] is a plain `axum::Router`; whoever owns the
//! socket serves it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use lsm_client::api::{ErrorCode, FORWARDED_HEADER, LEADER_HEADER, NODE_HEADER, path};
use lsm_client::transport::{HyperTransport, Transport};
use lsm_raft::backend::{Backend, RedbBackend};
use lsm_raft::clock::{Clock, SystemClock};
use lsm_raft::network::http::HttpNetwork;
use lsm_raft::node::LsmNode;
use lsm_raft::types::TypeConfig;
use openraft::RaftNetworkFactory;
use tokio::time::Instant;

use crate::config::Config;
use crate::dial::{Dial, DialNetwork};
use crate::error::{self, ApiError, DeniedWith, ServerError};
use crate::metrics::Metrics;
use crate::routes::{admin, checkouts, health, reads};

/// How long a node waits to connect to the leader when it forwards a request.
pub const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long [`run`] lets open requests finish after the shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running node with its HTTP API.
pub struct Server {
    shared: Arc<Shared>,
    router: Router,
}

/// What every handler shares.
pub(crate) struct Shared {
    /// The node's configuration.
    pub config: Config,
    /// The Raft node.
    pub node: Arc<LsmNode>,
    /// How requests are forwarded to the leader.
    pub transport: Arc<dyn Transport>,
    /// Where this node dials its peers, when not at their membership address.
    pub dial: Dial,
    /// The metrics registry.
    pub metrics: Metrics,
}

impl Server {
    /// Validates `config`, starts the Raft node on `backend`, talking to peers through
    /// `network`, stamping with `clock`, and builds the HTTP API, which forwards to the
    /// leader through `transport`. Peers named in the config's `[dial]` are reached at
    /// their dial address, over `network` and `transport` alike (see [`crate::dial`]).
    /// Nothing listens yet: serve [`Server::router`].
    pub async fn start<N>(
        config: Config,
        backend: Arc<dyn Backend>,
        network: N,
        clock: Arc<dyn Clock>,
        transport: Arc<dyn Transport>,
    ) -> Result<Server, ServerError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        config.validate()?;
        let dial = Dial::new(config.dial.clone());
        for (id, addr) in &config.dial {
            tracing::info!(node = config.node_id, peer = id, dial = %addr, "dialing a peer at its [dial] address");
        }
        let network = DialNetwork::new(network, dial.clone());
        let node = LsmNode::start(config.node_config(), backend, network, clock).await?;
        let shared = Arc::new(Shared { config, node, transport, dial, metrics: Metrics::new() });
        let router = build_router(shared.clone());
        Ok(Server { shared, router })
    }

    /// The HTTP API and the peer RPC routes, as one router.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The Raft node.
    pub fn node(&self) -> &Arc<LsmNode> {
        &self.shared.node
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Stops the Raft node. Serving the router afterwards answers `503 unavailable`.
    pub async fn shutdown(&self) {
        self.shared.node.shutdown().await;
    }
}

/// Runs one node until `shutdown` completes: opens redb in `data_dir`, binds `listen`,
/// serves the API and the peer RPCs, then drains open requests (for at most
/// [`SHUTDOWN_GRACE`]) and stops the node.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let addr: SocketAddr =
        config.listen.parse().map_err(|_| ServerError::config("listen", "not a socket address"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::io(format!("cannot listen on {addr} (listen)"), e))?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServerError::io(format!("cannot create data_dir {}", config.data_dir.display()), e)
    })?;
    let backend = RedbBackend::open(&config.data_dir).map_err(|e| ServerError::Storage {
        path: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let network = HttpNetwork::new(config.cluster_id.clone(), config.node_id)
        .map_err(|e| ServerError::Remote(format!("cannot build the peer HTTP client: {e}")))?;
    let transport = Arc::new(HyperTransport::tcp(FORWARD_CONNECT_TIMEOUT));
    let server =
        Server::start(config, Arc::new(backend), network, Arc::new(SystemClock), transport).await?;
    let id = server.node().id();
    tracing::info!(node = id, %addr, advertise = %server.node().addr(), "serving");

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(node = id, "shutting down");
        let _ = stop_tx.send(true);
    });
    let mut graceful = stop_rx.clone();
    let serve = axum::serve(listener, server.router()).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|stop| *stop).await;
    });
    let forced = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = serve => {
            result.map_err(|e| ServerError::io("serving HTTP", e))?;
        }
        _ = forced => {
            tracing::warn!(node = id, "open requests did not finish in time; stopping anyway");
        }
    }
    server.shutdown().await;
    tracing::info!(node = id, "stopped");
    Ok(())
}

/// Every route, the error fallbacks, and the layer that stamps and measures responses.
fn build_router(shared: Arc<Shared>) -> Router {
    let admin = Router::new()
        .route(path::CLUSTER, get(admin::cluster))
        .route(path::INIT, post(admin::init))
        .route("/v1/admin/checkouts/{id}/revoke", post(admin::revoke))
        .route(path::LICENSE, post(admin::install))
        .route(path::NODES, post(admin::add_node))
        .route("/v1/admin/nodes/{id}", delete(admin::remove_node))
        .route(path::SNAPSHOT, post(admin::snapshot))
        .route_layer(middleware::from_fn_with_state(shared.clone(), admin::authorize));
    let api = Router::new()
        .route(path::CHECKOUTS, post(checkouts::checkout).get(reads::checkouts))
        .route("/v1/checkouts/{id}", get(reads::checkout))
        .route("/v1/checkouts/{id}/heartbeat", post(checkouts::heartbeat))
        .route("/v1/checkouts/{id}/release", post(checkouts::release))
        .route(path::FEATURES, get(reads::features))
        .route(path::QUEUE, get(reads::queue))
        .route(path::SUMMARY, get(reads::summary))
        .route(path::HEALTHZ, get(health::healthz))
        .route(path::READYZ, get(health::readyz))
        .route(path::METRICS, get(health::metrics))
        .merge(admin);
    let node = &shared.node;
    let peers = lsm_raft::network::http::router(
        node.raft().clone(),
        shared.config.cluster_id.clone(),
        node.id(),
    );
    api.with_state(shared.clone())
        .merge(peers)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared, stamp))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route {} {}; see docs/api.md", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} does not take {}; see docs/api.md", request.uri().path(), request.method()),
    )
}

/// Adds the node and leader headers to every answer of the API (and makes its errors
/// JSON), and records its latency and any denial it carries (unless another node forwarded the request: that node answers the
/// client and counts it).
async fn stamp(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let forwarded = request.headers().contains_key(FORWARDED_HEADER);
    let mut response = next.run(request).await;
    // Peer RPCs keep their binary refusals and need no headers.
    if !route.starts_with("/raft/") {
        response = error::as_json(response).await;
        let headers = response.headers_mut();
        headers.insert(NODE_HEADER, HeaderValue::from(shared.node.id()));
        if let Some(leader) = shared.leader_addr()
            && let Ok(value) = HeaderValue::from_str(&leader)
        {
            headers.insert(LEADER_HEADER, value);
        }
    }
    if !forwarded && let Some(DeniedWith(code)) = response.extensions().get::<DeniedWith>() {
        shared.metrics.count_denial(*code);
    }
    shared.metrics.observe_request(&route, response.status().as_u16(), started.elapsed());
    response
}

impl Shared {
    /// The leader's address, if this node knows it.
    pub fn leader_addr(&self) -> Option<String> {
        self.node.leader_addr()
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }
}
