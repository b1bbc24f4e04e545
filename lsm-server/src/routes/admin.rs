//! The admin routes: the cluster view, bootstrapping, membership, revocation, license
//! installs and snapshots, behind the admin token when one is configured.
//!
//! `GET /v1/admin/cluster`, `POST /v1/admin/init` and `POST /v1/admin/snapshot` are about
//! the node that receives them and are never forwarded. Revocations and installs are
//! client writes with the exactly-once envelope; membership changes run on the leader
//! (forwarded there) and wait until the change is committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use lsm_client::api::{
    AddNodeBody, ClusterInfo, ErrorBody, ErrorCode, FORWARDED_HEADER, InitBody, InstallBody,
    MemberInfo, RevokeBody, SnapshotReply, path,
};
use lsm_core::{ClientId, Command, Install, Op, Request as CoreRequest};
use lsm_raft::error::Error as RaftError;
use lsm_raft::node::LsmNode;
use lsm_raft::runtime::ThreadRng;
use rand08::RngCore;
use tokio::time::Instant;

use crate::config::is_host_port;
use crate::dispatch::{Answer, reply};
use crate::error::ApiError;
use crate::extract::{Incoming, checkout_id, node_id};
use crate::server::Shared;

/// How long a membership change may take: adding a node waits until it has caught up.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `init` waits for a leader and for the license install after bootstrapping.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses admin requests without the configured token (`401 unauthorized`).
pub async fn authorize(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let token = &shared.config.admin_token;
    if token.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        ErrorCode::Unauthorized,
        "admin routes need the admin token: send Authorization: Bearer <admin_token>",
    )
    .into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /v1/admin/cluster`: the cluster as this node sees it.
pub async fn cluster(State(shared): State<Arc<Shared>>) -> Json<ClusterInfo> {
    Json(cluster_info(&shared.node))
}

/// The cluster as `node` sees it, in wire form.
pub fn cluster_info(node: &LsmNode) -> ClusterInfo {
    let status = node.status();
    let leader_addr = status
        .leader
        .and_then(|leader| status.members.iter().find(|m| m.id == leader))
        .map(|m| m.addr.clone());
    ClusterInfo {
        node: status.id,
        role: status.role,
        term: status.term,
        leader: status.leader,
        leader_addr,
        last_log_index: status.last_log_index,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        members: status
            .members
            .into_iter()
            .map(|m| MemberInfo {
                id: m.id,
                addr: m.addr,
                voter: m.voter,
                matched_index: m.matched_index,
                lag: m.lag,
            })
            .collect(),
    }
}

/// `POST /v1/admin/init`: bootstraps the cluster with the configured peers (or the
/// body's members), waits for a leader, and installs the configured license. Answers the
/// cluster as [`ClusterInfo`]; `409 already_initialized` if this node already has one.
pub async fn init(State(shared): State<Arc<Shared>>, incoming: Incoming) -> Answer {
    let body: InitBody = incoming.json()?;
    let members = body.members.unwrap_or_else(|| shared.config.peers.clone());
    check_members(&members)?;
    // Read the license before bootstrapping, so a broken file changes nothing.
    let license = if body.install_license {
        shared.config.license().map_err(|e| {
            ApiError::new(ErrorCode::BadLicense, format!("nothing was initialized: {e}"))
        })?
    } else {
        None
    };
    shared.node.bootstrap(members.clone()).await.map_err(ApiError::raft)?;
    tracing::info!(node = shared.node.id(), ?members, "cluster bootstrapped");
    let deadline = Instant::now() + INIT_TIMEOUT;
    match license {
        Some(install) => {
            install_after_init(&shared, install, deadline).await.map_err(|mut e| {
                e.detail.message = format!(
                    "the cluster was initialized, but the license was not installed: {}",
                    e.detail.message
                );
                e
            })?;
            tracing::info!(node = shared.node.id(), "license installed");
        }
        None => wait_for_leader(&shared.node, deadline).await?,
    }
    Ok(Json(cluster_info(&shared.node)).into_response())
}

fn check_members(members: &BTreeMap<u64, String>) -> Result<(), ApiError> {
    if members.is_empty() {
        return Err(ApiError::new(ErrorCode::BadRequest, "members: list at least one voter")
            .with_field("members"));
    }
    for (id, addr) in members {
        if *id == 0 || !is_host_port(addr) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("members.{id}: give a positive id and a host:port address (got {addr:?})"),
            )
            .with_field(format!("members.{id}")));
        }
    }
    Ok(())
}

async fn wait_for_leader(node: &LsmNode, deadline: Instant) -> Result<(), ApiError> {
    while node.status().leader.is_none() {
        if Instant::now() > deadline {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the cluster was initialized, but no leader was elected in time; are the peers running?",
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// Installs `install` through the leader once there is one, retrying with the same
/// envelope (so at most once) until `deadline`.
async fn install_after_init(
    shared: &Shared,
    install: Install,
    deadline: Instant,
) -> Result<(), ApiError> {
    let node = &shared.node;
    let client = ClientId::new(&format!("init-{}-{:08x}", node.id(), ThreadRng.next_u32()))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let body = InstallBody {
        client: Some(client.clone()),
        seq: Some(1),
        ack: Some(1),
        install: install.clone(),
    };
    let request = CoreRequest { client, seq: 1, ack: 1, op: Op::Install(install) };
    let mut last = String::from("no leader was elected");
    while Instant::now() < deadline {
        let status = node.status();
        match status.leader {
            None => {}
            Some(leader) if leader == node.id() => {
                let write = node.write(Command::Request(request.clone()));
                match tokio::time::timeout(shared.request_timeout(), write).await {
                    Ok(Ok(output)) => return reply(output.response).map(drop),
                    Ok(Err(e @ (RaftError::NotLeader { .. } | RaftError::NoQuorum(_)))) => {
                        last = e.to_string();
                    }
                    Ok(Err(e)) => return Err(ApiError::raft(e)),
                    Err(_) => last = "the install timed out".into(),
                }
            }
            Some(_) => {
                if let Some(addr) = shared.leader_addr() {
                    match send_install(shared, &addr, &body).await {
                        Ok(()) => return Ok(()),
                        Err(e) if e.code().is_retryable() => last = e.to_string(),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ApiError::new(ErrorCode::Timeout, format!("gave up after {INIT_TIMEOUT:?}: {last}")))
}

/// Sends an install to the leader at `addr` as an admin request.
async fn send_install(shared: &Shared, addr: &str, body: &InstallBody) -> Result<(), ApiError> {
    let json = serde_json::to_vec(body).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut builder = http::Request::post(path::LICENSE)
        .header(header::CONTENT_TYPE, "application/json")
        .header(FORWARDED_HEADER, HeaderValue::from(shared.node.id()));
    if !shared.config.admin_token.is_empty() {
        builder =
            builder.header(header::AUTHORIZATION, format!("Bearer {}", shared.config.admin_token));
    }
    let request = builder.body(Bytes::from(json)).map_err(|e| ApiError::internal(e.to_string()))?;
    let answer = shared
        .transport
        .send(addr, request, shared.request_timeout() + Duration::from_secs(1))
        .await
        .map_err(|e| ApiError::new(ErrorCode::ForwardFailed, e.to_string()))?;
    if answer.status().is_success() {
        return Ok(());
    }
    match serde_json::from_slice::<ErrorBody>(answer.body()) {
        Ok(body) => Err(ApiError { detail: Box::new(body.error) }),
        Err(_) => Err(ApiError::new(
            ErrorCode::ForwardFailed,
            format!("the leader answered HTTP {}", answer.status()),
        )),
    }
}

/// `POST /v1/admin/checkouts/{id}/revoke`: [`RevokeBody`] to `RevokeReply`.
pub async fn revoke(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    incoming: Incoming,
) -> Answer {
    let id = checkout_id(&id)?;
    let body: RevokeBody = incoming.json()?;
    let request = shared.request(body.envelope(), Op::Revoke { id, reason: body.reason })?;
    shared.propose(&incoming, request).await
}

/// `POST /v1/admin/license`: [`InstallBody`] to `InstallReply`.
pub async fn install(State(shared): State<Arc<Shared>>, incoming: Incoming) -> Answer {
    let body: InstallBody = incoming.json()?;
    let request = shared.request(body.envelope(), Op::Install(body.install))?;
    shared.propose(&incoming, request).await
}

/// `POST /v1/admin/nodes`: adds a learner, waits until it has caught up, and (unless
/// `voter` is false) makes it a voter. Answers the new [`ClusterInfo`].
pub async fn add_node(State(shared): State<Arc<Shared>>, incoming: Incoming) -> Answer {
    let body: AddNodeBody = incoming.json()?;
    if body.id == 0 {
        return Err(
            ApiError::new(ErrorCode::BadRequest, "id: node ids start at 1").with_field("id")
        );
    }
    if !is_host_port(&body.addr) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("addr: {:?} is not host:port", body.addr),
        )
        .with_field("addr"));
    }
    let node = shared.node.clone();
    shared
        .on_leader(&incoming, MEMBERSHIP_TIMEOUT, || async move {
            node.add_learner(body.id, body.addr.clone()).await?;
            if body.voter {
                let mut voters = voters(&node);
                voters.insert(body.id);
                node.change_membership(voters).await?;
            }
            tracing::info!(id = body.id, addr = %body.addr, voter = body.voter, "node added");
            Ok(Json(cluster_info(&node)))
        })
        .await
}

/// `DELETE /v1/admin/nodes/{id}`: removes a voter or a learner from the cluster. Answers
/// the new [`ClusterInfo`].
pub async fn remove_node(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    incoming: Incoming,
) -> Answer {
    let id = node_id(&id)?;
    let node = shared.node.clone();
    shared
        .on_leader(&incoming, MEMBERSHIP_TIMEOUT, || async move {
            let status = node.status();
            let Some(member) = status.members.iter().find(|m| m.id == id) else {
                return Err(RaftError::Refused(format!(
                    "node {id} is not a member of the cluster"
                )));
            };
            if member.voter {
                let mut voters = voters(&node);
                voters.remove(&id);
                if voters.is_empty() {
                    return Err(RaftError::Refused(format!(
                        "node {id} is the last voter; a cluster needs at least one"
                    )));
                }
                node.change_membership(voters).await?;
            } else {
                node.remove_learner(id).await?;
            }
            tracing::info!(id, "node removed");
            Ok(Json(cluster_info(&node)))
        })
        .await
}

/// The current voters.
fn voters(node: &LsmNode) -> BTreeSet<u64> {
    node.status().members.into_iter().filter(|m| m.voter).map(|m| m.id).collect()
}

/// `POST /v1/admin/snapshot`: builds a snapshot of this node's state now and answers once
/// it is on disk, with the index it covers.
pub async fn snapshot(State(shared): State<Arc<Shared>>) -> Answer {
    let node = &shared.node;
    let Some(applied) = node.status().applied_index else {
        return Ok(Json(SnapshotReply { node: node.id(), snapshot_index: None }).into_response());
    };
    node.trigger_snapshot().await.map_err(ApiError::raft)?;
    let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
    loop {
        let built = node.snapshot_index();
        if built.is_some_and(|index| index >= applied) {
            return Ok(
                Json(SnapshotReply { node: node.id(), snapshot_index: built }).into_response()
            );
        }
        if Instant::now() > deadline {
            return Err(ApiError::timeout(MEMBERSHIP_TIMEOUT.as_millis() as u64));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
