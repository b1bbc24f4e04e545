//! Liveness, readiness and metrics: what load balancers and Prometheus ask.
//!
//! `/healthz` answers 200 while the process serves. `/readyz` answers 200 once the node
//! knows a leader and has applied everything it knows to be committed, so its local reads
//! are current and its writes have somewhere to go; otherwise 503 with the reason.
//! `/metrics` is Prometheus text, computed at scrape time from the local state.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use lsm_client::api::{ErrorCode, HealthReply};

use crate::error::ApiError;
use crate::server::Shared;

/// `GET /healthz`.
pub async fn healthz(State(shared): State<Arc<Shared>>) -> Json<HealthReply> {
    Json(HealthReply { status: "ok".into(), node: shared.node.id(), leader: None })
}

/// `GET /readyz`.
pub async fn readyz(State(shared): State<Arc<Shared>>) -> Result<Json<HealthReply>, ApiError> {
    let status = shared.node.status();
    if status.members.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "not ready: this node has no cluster yet; run `lsm-server init`",
        ));
    }
    let Some(leader) = status.leader else {
        return Err(ApiError::new(
            ErrorCode::NotLeader,
            "not ready: no known leader (an election may be running)",
        ));
    };
    let committed = status.commit_index.unwrap_or(0);
    let applied = status.applied_index.unwrap_or(0);
    if applied < committed {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("not ready: applied up to {applied}, committed up to {committed}"),
        ));
    }
    Ok(Json(HealthReply { status: "ready".into(), node: status.id, leader: Some(leader) }))
}

/// `GET /metrics`.
pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match shared.metrics.render(&shared.node) {
        Ok(text) => (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("cannot encode the metrics: {e}")).into_response(),
    }
}
