//! The reads: checkouts, one checkout, features, the queue, the summary.
//!
//! Linearizable by default: the leader confirms it still leads with a quorum and has
//! applied everything committed before it answers, and a follower forwards the read to
//! it. `?consistency=local` answers from the receiving node's own state, which may be a
//! little behind, without a network round trip.

use std::sync::Arc;

use axum::extract::{Path, State};
use lsm_client::api::{CheckoutQuery, QueueQuery, ReadQuery};
use lsm_core::{CheckoutFilter, CheckoutId};

use crate::dispatch::Answer;
use crate::extract::{Incoming, checkout_id};
use crate::server::Shared;

/// `GET /v1/checkouts`: live checkouts matching [`CheckoutQuery`].
pub async fn checkouts(State(shared): State<Arc<Shared>>, incoming: Incoming) -> Answer {
    let query: CheckoutQuery = incoming.query()?;
    let filter = CheckoutFilter {
        feature: query.feature,
        pool: query.pool,
        user: query.user,
        host: query.host,
        client: query.client,
        after: query.after.map(CheckoutId),
        limit: query.limit,
    };
    shared.read(&incoming, query.consistency, move |s| s.list_checkouts(&filter)).await
}

/// `GET /v1/checkouts/{id}`: a live checkout, a queued request, or why it is gone.
pub async fn checkout(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    incoming: Incoming,
) -> Answer {
    let id = checkout_id(&id)?;
    let query: ReadQuery = incoming.query()?;
    shared.read(&incoming, query.consistency, move |s| s.checkout_status(id)).await
}

/// `GET /v1/features`: every feature with its pools.
pub async fn features(State(shared): State<Arc<Shared>>, incoming: Incoming) -> Answer {
    let query: ReadQuery = incoming.query()?;
    shared.read(&incoming, query.consistency, |s| s.features_status()).await
}

/// `GET /v1/queue`: the queue in order, optionally for one feature.
pub async fn queue(State(shared): State<Arc<Shared>>, incoming: Incoming) -> Answer {
    let query: QueueQuery = incoming.query()?;
    let feature = query.feature;
    shared.read(&incoming, query.consistency, move |s| s.list_queue(feature.as_ref())).await
}

/// `GET /v1/summary`: counters and clocks.
pub async fn summary(State(shared): State<Arc<Shared>>, incoming: Incoming) -> Answer {
    let query: ReadQuery = incoming.query()?;
    shared.read(&incoming, query.consistency, |s| s.summary()).await
}
