//! Forwarding a request to the leader, and relaying its answer.
//!
//! A node that is not the leader resends the original request (method, path and query,
//! `content-type`, `authorization` and the raw body) to the leader through the shared
//! [`lsm_client::transport::Transport`], marked with `lsm-forwarded-by: <node id>` so the
//! leader never forwards it again: a request makes at most one hop. The leader is dialed
//! at its `[dial]` address when this node has one for it ([`crate::dial`]). The leader's
//! status and body go back to the caller unchanged. If the leader cannot be reached the
//! answer is `502 forward_failed`, which clients retry.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use lsm_client::api::{ErrorBody, ErrorCode, FORWARDED_HEADER};

use crate::error::{ApiError, DeniedWith};
use crate::extract::Incoming;
use crate::server::Shared;

/// Sends `incoming` to the leader, known as `leader` and reached at `dial` (its `[dial]`
/// address, else `leader` again), and relays the answer.
pub async fn forward(
    shared: &Shared,
    incoming: &Incoming,
    leader: &str,
    dial: &str,
    timeout: Duration,
) -> Response {
    let path = incoming.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut builder = http::Request::builder().method(incoming.method.clone()).uri(path);
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION] {
        if let Some(value) = incoming.headers.get(&name) {
            builder = builder.header(name, value.clone());
        }
    }
    builder = builder.header(FORWARDED_HEADER, HeaderValue::from(shared.node.id()));
    let request = match builder.body(incoming.body.clone()) {
        Ok(request) => request,
        Err(e) => {
            return ApiError::internal(format!("cannot build the forwarded request: {e}"))
                .into_response();
        }
    };
    tracing::debug!(node = shared.node.id(), leader, dial, path, "forwarding to the leader");
    match shared.transport.send(dial, request, timeout).await {
        Ok(answer) => relay(answer),
        Err(e) => ApiError::new(
            ErrorCode::ForwardFailed,
            format!("this node is not the leader and could not forward to the leader: {e}"),
        )
        .with_leader(Some(leader.to_string()))
        .into_response(),
    }
}

/// The leader's answer as this node's response.
fn relay(answer: http::Response<Bytes>) -> Response {
    let (parts, body) = answer.into_parts();
    let denied = (!parts.status.is_success())
        .then(|| serde_json::from_slice::<ErrorBody>(&body).ok())
        .flatten()
        .filter(|e| e.error.denial.is_some())
        .map(|e| DeniedWith(e.error.code));
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(value) = parts.headers.get(header::CONTENT_TYPE) {
        response.headers_mut().insert(header::CONTENT_TYPE, value.clone());
    }
    if let Some(denied) = denied {
        response.extensions_mut().insert(denied);
    }
    response
}
