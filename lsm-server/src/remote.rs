//! Talking to a running node from the command line (`init`, `add-node`, `dev`): one HTTP
//! request through the client library's transport, with the admin token when there is
//! one, and no retries. [`Remote::send`] gives the answer's status and body as they came;
//! the named calls ([`Remote::init`], [`Remote::cluster`], ...) give the route's reply
//! type from `lsm_client::api`, or the node's refusal as [`ServerError::Refused`].

use std::time::Duration;

use bytes::Bytes;
use http::header;
use lsm_client::api::{
    AddNodeBody, ClusterInfo, ErrorBody, ErrorCode, HealthReply, InitBody, SnapshotReply, path,
};
use lsm_client::transport::{HyperTransport, Transport};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ServerError;
use crate::server::FORWARD_CONNECT_TIMEOUT;

/// A node's address with the admin token.
#[derive(Clone, Debug)]
pub struct Remote {
    addr: String,
    token: Option<String>,
    transport: HyperTransport,
}

/// A node's answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ServerError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ServerError::Remote(format!(
                "unexpected answer (HTTP {}): {e}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ))
        })
    }

    /// A 2xx answer's body as `T`; any other answer as the refusal it carries.
    pub fn reply<T: DeserializeOwned>(&self) -> Result<T, ServerError> {
        if self.is_success() {
            return self.json();
        }
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(body) => {
                Err(ServerError::Refused { status: self.status, detail: Box::new(body.error) })
            }
            Err(_) => Err(ServerError::Remote(self.describe())),
        }
    }

    /// The error code of a non-2xx answer.
    pub fn error(&self) -> Option<(ErrorCode, String)> {
        let body: ErrorBody = serde_json::from_slice(&self.body).ok()?;
        Some((body.error.code, body.error.message))
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A readable account of a failed answer.
    pub fn describe(&self) -> String {
        match self.error() {
            Some((code, message)) => format!("{code} (HTTP {}): {message}", self.status),
            None => format!("HTTP {}: {}", self.status, String::from_utf8_lossy(&self.body)),
        }
    }
}

impl Remote {
    /// The node at `addr` (`host:port`), sending `token` as the admin token if given.
    pub fn new(addr: impl Into<String>, token: Option<String>) -> Remote {
        let token = token.filter(|t| !t.is_empty());
        Remote { addr: addr.into(), token, transport: HyperTransport::tcp(FORWARD_CONNECT_TIMEOUT) }
    }

    /// The node's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `method path` with an optional JSON body.
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<Answer, ServerError> {
        let mut builder = http::Request::builder().method(method).uri(path);
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = match body {
            Some(body) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = builder.body(bytes).map_err(|e| ServerError::Remote(e.to_string()))?;
        let response = self
            .transport
            .send(&self.addr, request, timeout)
            .await
            .map_err(|e| ServerError::Remote(e.to_string()))?;
        Ok(Answer { status: response.status().as_u16(), body: response.into_body() })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<Answer, ServerError> {
        self.send(http::Method::GET, path, None, timeout).await
    }

    /// `method path` with `body` as JSON, and its reply (see [`Answer::reply`]).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<T, ServerError> {
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| ServerError::Remote(format!("cannot encode the body: {e}")))?;
        self.send(method, path, body.as_ref(), timeout).await?.reply()
    }

    /// `GET /healthz`: the process serves.
    pub async fn healthz(&self, timeout: Duration) -> Result<HealthReply, ServerError> {
        self.get(path::HEALTHZ, timeout).await?.reply()
    }

    /// `GET /readyz`: the node knows a leader and has applied what it knows committed.
    pub async fn readyz(&self, timeout: Duration) -> Result<HealthReply, ServerError> {
        self.get(path::READYZ, timeout).await?.reply()
    }

    /// `GET /v1/admin/cluster`: the cluster as this node sees it.
    pub async fn cluster(&self, timeout: Duration) -> Result<ClusterInfo, ServerError> {
        self.get(path::CLUSTER, timeout).await?.reply()
    }

    /// `POST /v1/admin/init`: bootstraps the cluster; a cluster that already has one is
    /// refused with [`ErrorCode::AlreadyInitialized`].
    pub async fn init(
        &self,
        body: &InitBody,
        timeout: Duration,
    ) -> Result<ClusterInfo, ServerError> {
        self.call(http::Method::POST, path::INIT, Some(body), timeout).await
    }

    /// `POST /v1/admin/nodes`: adds a node, and answers once it is in the cluster.
    pub async fn add_node(
        &self,
        body: &AddNodeBody,
        timeout: Duration,
    ) -> Result<ClusterInfo, ServerError> {
        self.call(http::Method::POST, path::NODES, Some(body), timeout).await
    }

    /// `DELETE /v1/admin/nodes/{id}`: removes a node.
    pub async fn remove_node(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Result<ClusterInfo, ServerError> {
        self.call(http::Method::DELETE, &path::node(id), None::<&()>, timeout).await
    }

    /// `POST /v1/admin/snapshot`: builds a snapshot on this node now.
    pub async fn snapshot(&self, timeout: Duration) -> Result<SnapshotReply, ServerError> {
        self.call(http::Method::POST, path::SNAPSHOT, None::<&()>, timeout).await
    }
}
