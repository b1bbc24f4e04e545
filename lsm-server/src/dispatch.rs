//! How a handler runs a write or a read: build the request, check it locally, propose it
//! with a deadline, and forward it to the leader when this node is not the leader.
//!
//! Every node accepts every request. A write is checked against the local state first
//! (`State::precheck`), so a malformed request is refused by the node that received it and
//! never reaches the log. A node that is not the leader forwards the original request, as
//! it arrived, to the leader it knows (see [`crate::forward`]). If it knows none (an
//! election is running, or it has just started), it waits up to two election timeouts for
//! one and forwards there; if none appears, or the request was already forwarded once, it
//! answers `503 not_leader` and the client retries.
//! The state machine's answer is turned into the wire type of the reply by [`reply`].

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use lsm_client::api::{
    Consistency, Envelope, ErrorCode, InstallReply, LeaseReply, ReleaseReply, RevokeReply,
};
use lsm_core::{ClientId, Command, Op, Request, State};
use lsm_raft::error::Error as RaftError;
use lsm_raft::runtime::ThreadRng;
use rand08::RngCore;
use serde::Serialize;

use crate::error::ApiError;
use crate::extract::Incoming;
use crate::forward;
use crate::server::Shared;

/// What a handler answers: a response, or an error that becomes one.
pub type Answer = Result<Response, ApiError>;

impl Shared {
    /// The state machine's request for `op` with the body's envelope. Without a client id
    /// the request gets a fresh one-shot id (`anon-<node>-<hex>`) with `seq = ack = 1`,
    /// drawn from lsm-raft's thread random source, which a simulation seeds.
    pub fn request(&self, envelope: Envelope, op: Op) -> Result<Request, ApiError> {
        let Envelope { client, seq, ack } = envelope;
        match (client, seq) {
            (Some(client), Some(seq)) => Ok(Request { client, seq, ack: ack.unwrap_or(seq), op }),
            (Some(_), None) => Err(ApiError::new(
                ErrorCode::BadRequest,
                "seq: a request with a client id needs a seq (the same on every retry)",
            )
            .with_field("seq")),
            (None, Some(_)) | (None, None) if ack.is_some() => Err(ApiError::new(
                ErrorCode::BadRequest,
                "client: seq and ack need a client id; leave all three out for a one-shot request",
            )
            .with_field("client")),
            (None, Some(_)) => Err(ApiError::new(
                ErrorCode::BadRequest,
                "client: a seq needs a client id; leave both out for a one-shot request",
            )
            .with_field("client")),
            (None, None) => {
                let client = ClientId::new(&format!(
                    "anon-{}-{:016x}",
                    self.node.id(),
                    ThreadRng.next_u64()
                ))
                .map_err(|e| ApiError::internal(e.to_string()))?;
                Ok(Request { client, seq: 1, ack: 1, op })
            }
        }
    }

    /// Checks `request` locally, proposes it, and answers with the state machine's reply;
    /// forwards `incoming` to the leader when this node is not the leader.
    pub async fn propose(&self, incoming: &Incoming, request: Request) -> Answer {
        self.node.read_local(|s| s.precheck(&request)).map_err(ApiError::denial)?;
        let timeout = self.request_timeout();
        let written = with_deadline(timeout, self.node.write(Command::Request(request))).await?;
        match written {
            Ok(output) => reply(output.response),
            Err(error) => self.not_here(incoming, error, timeout).await,
        }
    }

    /// Runs `read` on the state: linearizable on the leader (forwarded from a follower),
    /// or on this node's own state for `consistency=local`.
    pub async fn read<T, F>(
        &self,
        incoming: &Incoming,
        consistency: Option<Consistency>,
        read: F,
    ) -> Answer
    where
        T: Serialize,
        F: FnOnce(&State) -> T,
    {
        if consistency == Some(Consistency::Local) {
            return Ok(Json(self.node.read_local(read)).into_response());
        }
        let timeout = self.request_timeout();
        match with_deadline(timeout, self.node.read(read)).await? {
            Ok(value) => Ok(Json(value).into_response()),
            Err(error) => self.not_here(incoming, error, timeout).await,
        }
    }

    /// Runs an operation that only the leader can run (membership changes): forwards
    /// `incoming` right away when another node leads, and again if `op` finds this node
    /// no longer leads.
    pub async fn on_leader<T, F, Fut>(
        &self,
        incoming: &Incoming,
        timeout: Duration,
        op: F,
    ) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, RaftError>>,
        T: IntoResponse,
    {
        let status = self.node.status();
        if status.leader != Some(self.node.id()) {
            let error =
                RaftError::NotLeader { leader_id: status.leader, leader_addr: self.leader_addr() };
            return self.not_here(incoming, error, timeout).await;
        }
        match with_deadline(timeout, op()).await? {
            Ok(value) => Ok(value.into_response()),
            Err(error) => self.not_here(incoming, error, timeout).await,
        }
    }

    /// Answers a failed node call: forwards to the leader when that is what it means and
    /// the request has not been forwarded yet, else maps the error.
    async fn not_here(&self, incoming: &Incoming, error: RaftError, timeout: Duration) -> Answer {
        match error {
            RaftError::NotLeader { leader_addr: Some(addr), leader_id }
                if incoming.forwarded_by().is_none() && leader_id != Some(self.node.id()) =>
            {
                Ok(self.forward_to(incoming, leader_id, &addr, timeout).await)
            }
            RaftError::NotLeader { leader_addr: None, .. } if self.node.status().members.is_empty() => {
                Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "this node has no cluster yet; initialize it with `lsm-server init` (POST /v1/admin/init)",
                ))
            }
            RaftError::NotLeader { leader_addr: None, .. } if incoming.forwarded_by().is_none() => {
                // No known leader: an election is running, or this node has just started
                // and not yet heard from the leader. Wait a little for one and forward
                // there, so a client that lists this node first is served.
                match self.wait_for_other_leader(self.leader_wait(timeout)).await {
                    Some((leader_id, addr)) => {
                        Ok(self.forward_to(incoming, Some(leader_id), &addr, timeout).await)
                    }
                    // Still none, or this node leads now: the client retries.
                    None => Err(ApiError::raft(error)),
                }
            }
            RaftError::NotLeader { leader_addr, .. } if incoming.forwarded_by().is_some() => {
                Err(ApiError::new(
                    ErrorCode::NotLeader,
                    format!(
                        "node {} was forwarded this request as the leader, but no longer leads; retry",
                        self.node.id()
                    ),
                )
                .with_leader(leader_addr))
            }
            error => Err(ApiError::raft(error)),
        }
    }

    /// Forwards `incoming` to the leader at `addr` (dialed at its `[dial]` address if it
    /// has one). The leader gets the whole request timeout, and this node waits a little
    /// longer, so the leader's own `504 timeout` is what the client sees.
    async fn forward_to(
        &self,
        incoming: &Incoming,
        leader_id: Option<u64>,
        addr: &str,
        timeout: Duration,
    ) -> Response {
        let dial = self.dial.addr(leader_id, addr);
        forward::forward(self, incoming, addr, dial, timeout + Duration::from_secs(1)).await
    }

    /// How long a request that found no leader waits for one: two of the longest election
    /// timeouts (an election usually ends within one), and never more than `timeout`.
    fn leader_wait(&self, timeout: Duration) -> Duration {
        Duration::from_millis(2 * self.config.raft.election_max_ms).min(timeout)
    }

    /// Waits at most `within` until this node knows another node as the leader; its id
    /// and address. (A node restarted from a term it led believes it leads until it
    /// hears of the newer term: that is not a leader to forward to.)
    async fn wait_for_other_leader(&self, within: Duration) -> Option<(u64, String)> {
        let mut metrics = self.node.raft().metrics();
        let me = self.node.id();
        let known = async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if let Some(id) = m.current_leader.filter(|&id| id != me)
                        && let Some(node) = m.membership_config.membership().get_node(&id)
                    {
                        return Some((id, node.addr.clone()));
                    }
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(within, known).await.ok().flatten()
    }
}

/// Runs `future` for at most `timeout`.
pub async fn with_deadline<T>(
    timeout: Duration,
    future: impl Future<Output = T>,
) -> Result<T, ApiError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| ApiError::timeout(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)))
}

/// The HTTP answer for the state machine's response to a client request.
pub fn reply(response: lsm_core::Response) -> Answer {
    use lsm_core::Response as R;
    let answer = match response {
        R::Granted(grant) => Json(LeaseReply::Granted(grant)).into_response(),
        R::Renewed(grant) => Json(LeaseReply::Renewed(grant)).into_response(),
        R::Queued(queued) => Json(LeaseReply::Queued(queued)).into_response(),
        R::Released { id } => Json(ReleaseReply::Released { id }).into_response(),
        R::Cancelled { id } => Json(ReleaseReply::Cancelled { id }).into_response(),
        R::Revoked { id } => Json(RevokeReply { revoked: id }).into_response(),
        R::Installed { features } => Json(InstallReply { features }).into_response(),
        R::Denied(denial) => return Err(ApiError::denial(denial)),
        other @ (R::Ticked { .. } | R::LeaderChanged { .. }) => {
            return Err(ApiError::internal(format!(
                "a client request was answered with a system response: {other:?}"
            )));
        }
    };
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use lsm_core::{CheckoutId, Denial};

    use super::*;

    #[test]
    fn denials_map_to_their_codes() {
        let err =
            reply(lsm_core::Response::Denied(Denial::NotOwner { id: CheckoutId(3) })).unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotOwner);
        assert_eq!(err.status().as_u16(), 403);
        assert!(err.detail.denial.is_some());
        let ok = reply(lsm_core::Response::Released { id: CheckoutId(3) }).unwrap();
        assert_eq!(ok.status().as_u16(), 200);
    }
}
