//! The client's writes: check out, heartbeat, release.
//!
//! Each parses its body (the exactly-once envelope and, for a checkout, the items), turns
//! it into the state machine's request with the server's default lease and poll TTLs, and
//! hands it to [`Shared::propose`](crate::server::Shared), which checks it, proposes it or
//! forwards it to the leader.

use std::sync::Arc;

use axum::extract::{Path, State};
use lsm_client::api::{CheckoutBody, Envelope};
use lsm_core::Op;

use crate::dispatch::Answer;
use crate::error::ApiError;
use crate::extract::{Incoming, checkout_id};
use crate::server::Shared;

/// `POST /v1/checkouts`: [`CheckoutBody`] to `LeaseReply`.
pub async fn checkout(State(shared): State<Arc<Shared>>, incoming: Incoming) -> Answer {
    let body: CheckoutBody = incoming.json()?;
    let config = &shared.config;
    let checkout = body
        .to_request(config.lease_ttl_ms, config.queue_poll_ttl_ms)
        .map_err(ApiError::field_error)?;
    let request = shared.request(body.envelope(), Op::Checkout(checkout))?;
    shared.propose(&incoming, request).await
}

/// `POST /v1/checkouts/{id}/heartbeat`: [`Envelope`] to `LeaseReply`.
pub async fn heartbeat(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    incoming: Incoming,
) -> Answer {
    let id = checkout_id(&id)?;
    let envelope: Envelope = incoming.json()?;
    let request = shared.request(envelope, Op::Heartbeat(id))?;
    shared.propose(&incoming, request).await
}

/// `POST /v1/checkouts/{id}/release`: [`Envelope`] to `ReleaseReply`.
pub async fn release(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    incoming: Incoming,
) -> Answer {
    let id = checkout_id(&id)?;
    let envelope: Envelope = incoming.json()?;
    let request = shared.request(envelope, Op::Release(id))?;
    shared.propose(&incoming, request).await
}
