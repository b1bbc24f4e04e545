//! Talking to a running node from the command line (`init`, `add-node`, `dev`): one HTTP
//! request through the client library's transport, with the admin token when there is
//! one, and the answer's status and body.

use std::time::Duration;

use bytes::Bytes;
use http::header;
use lsm_client::api::{ErrorBody, ErrorCode};
use lsm_client::transport::{HyperTransport, Transport};

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
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ServerError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ServerError::Remote(format!(
                "unexpected answer (HTTP {}): {e}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ))
        })
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
}
