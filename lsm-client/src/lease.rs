//! [`Lease`]: a granted checkout kept alive in the background, and told when it is lost.
//!
//! A lease is renewed by a task on the tokio runtime every third of its TTL. Timing uses
//! tokio's monotonic clock (so a simulated clock drives it too); the server's wall-clock
//! expiry is only reported, never compared with the local clock.
//!
//! The holder learns of a loss through [`Lease::lost`] (or [`Lease::watch`]):
//! - [`LeaseLoss::Revoked`], [`LeaseLoss::Expired`], [`LeaseLoss::Ended`]: the server said
//!   the checkout is over;
//! - [`LeaseLoss::Unreachable`]: no renewal succeeded and the lease may have run out. The
//!   local deadline is the time the last successful renewal was *sent* (the server's lease
//!   runs from a later moment) plus the TTL, less a safety margin of a tenth of the TTL,
//!   at least 1 s, at most a quarter of the TTL. Renewals are retried until then.
//!
//! A loss is final: the task stops. An offline borrow (`grant.borrowed`) is not renewed;
//! it reports [`LeaseLoss::Expired`] when its end date passes.
//!
//! [`Lease::release`] gives the checkout back (retried, exactly once). Dropping a lease
//! releases it best-effort on the current runtime; [`Lease::detach`] stops the renewals
//! and keeps the checkout for someone else to heartbeat and release.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lsm_core::{CheckoutId, Denial, End, Grant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{ErrorCode, LeaseReply, ReleaseReply};
use crate::client::{Budget, Client};
use crate::error::ClientError;

/// A granted checkout whose lease a background task renews.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    id: CheckoutId,
    status: watch::Receiver<LeaseStatus>,
    task: Option<JoinHandle<()>>,
    /// Released or detached: nothing to do on drop.
    done: bool,
}

/// What the renewal task knows about its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The grant as of the last renewal.
    pub grant: Grant,
    /// Successful renewals so far.
    pub renewals: u64,
    /// Set once, when the lease is lost.
    pub lost: Option<LeaseLoss>,
}

/// How a lease was lost.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseLoss {
    /// An administrator revoked the checkout.
    #[error("revoked by an administrator: {reason}")]
    Revoked {
        /// The administrator's reason.
        reason: String,
    },
    /// The server let the lease run out.
    #[error("the lease expired on the server")]
    Expired,
    /// The server says the checkout has ended in some other way.
    #[error("the checkout ended: {0}")]
    Ended(Denial),
    /// No renewal succeeded before the local deadline: the lease may have run out.
    #[error("no server confirmed the lease in time; it may have expired")]
    Unreachable,
}

impl Lease {
    /// Starts renewing `grant`, whose lease lasts `ttl` from `confirmed_at`, the moment
    /// the request that granted or last renewed it was first sent.
    pub(crate) fn start(
        client: Client,
        grant: Grant,
        ttl: Duration,
        confirmed_at: Instant,
    ) -> Lease {
        let id = grant.id;
        let borrowed = grant.borrowed;
        let expires_at_ms = grant.lease_expires_at_ms;
        let (tx, rx) = watch::channel(LeaseStatus { grant, renewals: 0, lost: None });
        let task = if borrowed {
            tokio::spawn(watch_borrow(expires_at_ms, tx))
        } else {
            tokio::spawn(renew(client.clone(), id, ttl, confirmed_at, tx))
        };
        Lease { client, id, status: rx, task: Some(task), done: false }
    }

    /// The checkout's id.
    pub fn id(&self) -> CheckoutId {
        self.id
    }

    /// The grant as of the last renewal.
    pub fn grant(&self) -> Grant {
        self.status.borrow().grant.clone()
    }

    /// When the lease ends unless renewed, in ms since the Unix epoch (the leader's clock).
    pub fn expires_at_ms(&self) -> u64 {
        self.status.borrow().grant.lease_expires_at_ms
    }

    /// The renewal task's view: grant, renewals, loss.
    pub fn status(&self) -> LeaseStatus {
        self.status.borrow().clone()
    }

    /// The loss, if the lease is lost.
    pub fn loss(&self) -> Option<LeaseLoss> {
        self.status.borrow().lost.clone()
    }

    /// Waits until the lease is lost. Cancel-safe; returns at once if it already is.
    pub async fn lost(&mut self) -> LeaseLoss {
        match self.status.wait_for(|s| s.lost.is_some()).await {
            Ok(status) => status.lost.clone().expect("waited for a loss"),
            // The task ended without a loss only if it was stopped, which takes `self`.
            Err(_) => std::future::pending().await,
        }
    }

    /// A receiver of every change: renewals and the loss.
    pub fn watch(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// The client the lease renews through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Stops renewing and gives the checkout back, retrying under the client's deadline.
    pub async fn release(mut self) -> Result<ReleaseReply, ClientError> {
        self.stop();
        self.client.release(self.id).await
    }

    /// Stops renewing and keeps the checkout: someone else heartbeats and releases it
    /// (with the same client id).
    pub fn detach(mut self) -> Grant {
        self.stop();
        self.grant()
    }

    fn stop(&mut self) {
        self.done = true;
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Lease {
    /// Releases best-effort on the current tokio runtime, unless the lease was released,
    /// detached, or ended on the server.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.stop();
        let ended = matches!(
            self.loss(),
            Some(LeaseLoss::Revoked { .. } | LeaseLoss::Expired | LeaseLoss::Ended(_))
        );
        if ended {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, id) = (self.client.clone(), self.id);
            runtime.spawn(async move {
                let _ = client.release(id).await;
            });
        }
    }
}

/// The safety margin kept before a lease's local deadline.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_secs(1)).min(ttl / 4)
}

/// The renewal loop.
async fn renew(
    client: Client,
    id: CheckoutId,
    ttl: Duration,
    mut confirmed_at: Instant,
    tx: watch::Sender<LeaseStatus>,
) {
    let every = ttl / 3;
    let margin = safety_margin(ttl);
    let retry_pause = client.config().backoff_min.max(Duration::from_millis(20));
    // A renewal has less than a TTL to succeed: shorter exchanges and pauses than an
    // ordinary request, so a failover is noticed quickly.
    let attempt_timeout =
        client.config().attempt_timeout.min((ttl / 4).max(Duration::from_millis(250)));
    let backoff_max = client.config().backoff_max.min(ttl / 10).max(client.config().backoff_min);
    let mut next = Instant::now() + every;
    loop {
        let unreachable_at = confirmed_at + ttl - margin;
        tokio::time::sleep_until(next.min(unreachable_at)).await;
        let sent = Instant::now();
        if sent >= unreachable_at {
            tx.send_modify(|s| s.lost = Some(LeaseLoss::Unreachable));
            return;
        }
        let budget = Budget { deadline: unreachable_at, attempt_timeout, backoff_max };
        match client.heartbeat_within(id, budget).await {
            Ok(LeaseReply::Renewed(grant) | LeaseReply::Granted(grant)) => {
                confirmed_at = sent;
                next = Instant::now() + every;
                tx.send_modify(|s| {
                    s.grant = grant;
                    s.renewals += 1;
                });
            }
            Ok(LeaseReply::Queued(_)) => next = Instant::now() + retry_pause,
            Err(error) => match loss_of(id, &error) {
                Some(loss) => {
                    tx.send_modify(|s| s.lost = Some(loss));
                    return;
                }
                None => next = Instant::now() + retry_pause,
            },
        }
    }
}

/// An offline borrow: no renewals; it ends at its date.
async fn watch_borrow(expires_at_ms: u64, tx: watch::Sender<LeaseStatus>) {
    tokio::time::sleep(wall_clock_until(expires_at_ms)).await;
    tx.send_modify(|s| s.lost = Some(LeaseLoss::Expired));
}

/// Time from now until `at_ms` (ms since the Unix epoch) on the local wall clock.
pub(crate) fn wall_clock_until(at_ms: u64) -> Duration {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(at_ms.saturating_sub(now_ms))
}

/// The loss an error means, or `None` when it may clear and renewing should go on.
fn loss_of(id: CheckoutId, error: &ClientError) -> Option<LeaseLoss> {
    let ClientError::Api { detail, .. } = error else { return None };
    match &detail.denial {
        Some(Denial::Revoked { reason, .. }) => Some(LeaseLoss::Revoked { reason: reason.clone() }),
        Some(Denial::Ended { end: Some(End::Revoked { reason }), .. }) => {
            Some(LeaseLoss::Revoked { reason: reason.clone() })
        }
        Some(Denial::LeaseExpired { .. } | Denial::Ended { end: Some(End::Expired), .. }) => {
            Some(LeaseLoss::Expired)
        }
        Some(denial) => Some(LeaseLoss::Ended(denial.clone())),
        None if matches!(
            detail.code,
            ErrorCode::Gone | ErrorCode::UnknownCheckout | ErrorCode::NotOwner
        ) =>
        {
            Some(LeaseLoss::Ended(Denial::Ended { id, end: None }))
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorDetail;

    fn refused(code: ErrorCode, denial: Option<Denial>) -> ClientError {
        let detail = ErrorDetail { code, message: "m".into(), field: None, denial, leader: None };
        ClientError::Api { status: code.status(), detail: Box::new(detail) }
    }

    #[test]
    fn margins_stay_inside_the_ttl() {
        assert_eq!(safety_margin(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(safety_margin(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(safety_margin(Duration::from_secs(3)), Duration::from_millis(750));
        assert_eq!(safety_margin(Duration::from_millis(600)), Duration::from_millis(150));
    }

    #[test]
    fn refusals_map_to_losses() {
        let id = CheckoutId(4);
        let revoked = Denial::Revoked { id, reason: "maintenance".into() };
        assert_eq!(
            loss_of(id, &refused(ErrorCode::Gone, Some(revoked))),
            Some(LeaseLoss::Revoked { reason: "maintenance".into() })
        );
        let expired = Denial::LeaseExpired { id };
        assert_eq!(loss_of(id, &refused(ErrorCode::Gone, Some(expired))), Some(LeaseLoss::Expired));
        let unknown = Denial::UnknownCheckout { id };
        assert_eq!(
            loss_of(id, &refused(ErrorCode::UnknownCheckout, Some(unknown.clone()))),
            Some(LeaseLoss::Ended(unknown))
        );
        assert_eq!(
            loss_of(id, &refused(ErrorCode::Gone, None)),
            Some(LeaseLoss::Ended(Denial::Ended { id, end: None }))
        );
        assert_eq!(loss_of(id, &refused(ErrorCode::Internal, None)), None);
        let down = ClientError::Unavailable { attempts: 3, last: "x".into() };
        assert_eq!(loss_of(id, &down), None);
    }
}
