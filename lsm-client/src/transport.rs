//! How requests reach a server: one HTTP exchange at a time, over connections the library
//! controls.
//!
//! [`Transport`] is the seam. [`HyperTransport`] is hyper's pooled HTTP/1 client over a
//! connector: by default tokio TCP, but any `hyper_util` connector works, so the same
//! client (and the server's forwarding, which uses it too) can run over a simulated
//! network in deterministic tests. Timeouts are tokio timers, so they follow a simulated
//! clock as well.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest response body a transport reads; larger answers are an error.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Sends one HTTP request and reads the whole answer.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to the server at `addr` (`host:port`; the request's URI carries
    /// only the path and query) and returns the answer with its whole body, or fails
    /// after `timeout`.
    fn send(
        &self,
        addr: &str,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, TransportError>>;
}

/// Why an exchange failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made: the request was not delivered.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The server.
        addr: String,
        /// What the connector said.
        reason: String,
    },
    /// No complete answer within the timeout: the request may or may not have arrived.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The server.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The connection failed during the exchange: the request may or may not have arrived.
    #[error("exchange with {addr} failed: {reason}")]
    Io {
        /// The server.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The request could not be built (a bad address, for instance).
    #[error("bad request to {addr}: {reason}")]
    Invalid {
        /// The server.
        addr: String,
        /// What is wrong.
        reason: String,
    },
}

impl TransportError {
    /// True when the request certainly did not reach the server.
    pub fn not_delivered(&self) -> bool {
        matches!(self, TransportError::Connect { .. } | TransportError::Invalid { .. })
    }
}

/// hyper's pooled HTTP/1 client over connector `C`.
#[derive(Clone, Debug)]
pub struct HyperTransport<C = HttpConnector> {
    client: HyperClient<C, Full<Bytes>>,
}

impl HyperTransport<HttpConnector> {
    /// Over tokio TCP, with `TCP_NODELAY` and a connect timeout of `connect_timeout`.
    pub fn tcp(connect_timeout: Duration) -> HyperTransport<HttpConnector> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        HyperTransport::with_connector(connector)
    }
}

impl<C> HyperTransport<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    /// Over `connector`: anything that turns a URI into a connection.
    pub fn with_connector(connector: C) -> HyperTransport<C> {
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        HyperTransport { client }
    }
}

impl<C> Transport for HyperTransport<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fn send(
        &self,
        addr: &str,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, TransportError>> {
        let client = self.client.clone();
        let addr = addr.to_string();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = match format!("http://{addr}{path}").parse() {
                Ok(uri) => uri,
                Err(e) => {
                    return Err(TransportError::Invalid { addr, reason: e.to_string() });
                }
            };
            let request = http::Request::from_parts(parts, Full::new(body));
            let exchange = async {
                let response = client.request(request).await.map_err(|e| {
                    let reason = causes(&e);
                    if e.is_connect() {
                        TransportError::Connect { addr: addr.clone(), reason }
                    } else {
                        TransportError::Io { addr: addr.clone(), reason }
                    }
                })?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                    .map_err(|e| TransportError::Io { addr: addr.clone(), reason: e.to_string() })?
                    .to_bytes();
                Ok(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Timeout { addr, timeout }),
            }
        })
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
