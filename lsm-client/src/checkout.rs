//! Checking out with a guard: [`Client::checkout`] and [`Client::checkout_with`].
//!
//! A checkout is one exactly-once request. When the body asks to `wait` and the tokens are
//! busy, the answer is a place in the queue; the client then polls the queued request with
//! heartbeats (every third of its poll TTL, so the server keeps it queued), reports each
//! position to the caller, and returns a [`Lease`] once a poll finds it granted. If the
//! caller's wait timeout passes, the request is withdrawn (a release) before the error is
//! returned; if the future is dropped while waiting, it is withdrawn best-effort in the
//! background, so an abandoned wait never holds a place in the queue until its TTL.

use std::time::Duration;

use lsm_core::{CheckoutId, CheckoutStatus, Grant, Queued};
use tokio::time::Instant;

use crate::api::{CheckoutBody, LeaseReply};
use crate::client::{Budget, Client};
use crate::error::ClientError;
use crate::lease::{Lease, wall_clock_until};

/// Callback told each queue position while a checkout waits.
pub type OnQueued = Box<dyn FnMut(&Queued) + Send>;

/// How [`Client::checkout_with`] waits in the queue.
#[derive(Default)]
pub struct CheckoutOptions {
    /// Told the queue position after the first answer and after every poll.
    pub on_queued: Option<OnQueued>,
    /// Give up (and withdraw the request) after waiting this long; by default wait until
    /// granted or refused.
    pub wait_timeout: Option<Duration>,
}

impl std::fmt::Debug for CheckoutOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckoutOptions")
            .field("on_queued", &self.on_queued.as_ref().map(|_| "callback"))
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

/// Shortest pause between polls of a queued request.
const POLL_EVERY_MIN: Duration = Duration::from_millis(50);
/// Longest pause between polls. A waiter granted from the queue holds a lease from the
/// moment of the grant, so it must poll well within the lease TTL; when the request leaves
/// the TTL to the server, the client does not know it and polls at least this often.
const POLL_EVERY_MAX: Duration = Duration::from_secs(5);

impl Client {
    /// Checks out and returns a [`Lease`] that renews itself; waits in the queue if the
    /// body asks to (see [`Client::checkout_with`]).
    pub async fn checkout(&self, body: CheckoutBody) -> Result<Lease, ClientError> {
        self.checkout_with(body, CheckoutOptions::default()).await
    }

    /// Checks out, waiting in the queue if `body.wait` is set and the tokens are busy, and
    /// returns a [`Lease`] that renews itself. The client fills in the envelope.
    pub async fn checkout_with(
        &self,
        body: CheckoutBody,
        mut options: CheckoutOptions,
    ) -> Result<Lease, ClientError> {
        let ttl = body.lease_ttl_ms.map(Duration::from_millis);
        let poll_ttl = body.wait.and_then(|w| w.poll_ttl_ms).map(Duration::from_millis);
        let started = Instant::now();
        let (grant, confirmed_at) = match self.checkout_once(body).await? {
            LeaseReply::Granted(grant) | LeaseReply::Renewed(grant) => (grant, started),
            LeaseReply::Queued(queued) => {
                let every = poll_every(poll_ttl, ttl, queued.wait_expires_at_ms);
                self.wait_in_queue(queued, every, &mut options, started).await?
            }
        };
        // Until the lease guard exists, a dropped future must not strand the grant.
        let mut release = Withdraw { client: self.clone(), id: grant.id, armed: true };
        let ttl = match ttl {
            Some(ttl) => ttl,
            None => self.lease_ttl_of(&grant).await,
        };
        release.armed = false;
        Ok(Lease::start(self.clone(), grant, ttl, confirmed_at))
    }

    /// Polls a queued request until it is granted; the grant and when its request was sent.
    async fn wait_in_queue(
        &self,
        queued: Queued,
        every: Duration,
        options: &mut CheckoutOptions,
        started: Instant,
    ) -> Result<(Grant, Instant), ClientError> {
        let id = queued.id;
        let mut withdraw = Withdraw { client: self.clone(), id, armed: true };
        let give_up_at = options.wait_timeout.map(|wait| started + wait);
        let mut position = queued.position;
        let mut report = |q: &Queued| {
            if let Some(on_queued) = options.on_queued.as_mut() {
                on_queued(q);
            }
        };
        report(&queued);
        loop {
            let next = Instant::now() + every;
            if let Some(give_up_at) = give_up_at
                && next >= give_up_at
            {
                tokio::time::sleep_until(give_up_at).await;
                withdraw.armed = false;
                let budget = self.budget();
                let budget = Budget {
                    deadline: budget.deadline.min(Instant::now() + Duration::from_secs(5)),
                    ..budget
                };
                match self.release_within(id, budget).await {
                    Ok(_) => {}
                    // Granted between the last poll and the withdrawal, then released:
                    // either way nothing is held.
                    Err(ClientError::Api { .. }) => {}
                    Err(_) => withdraw.armed = true,
                }
                return Err(ClientError::WaitTimedOut { id, position, waited: started.elapsed() });
            }
            tokio::time::sleep_until(next).await;
            let sent = Instant::now();
            match self.heartbeat(id).await {
                Ok(LeaseReply::Granted(grant) | LeaseReply::Renewed(grant)) => {
                    withdraw.armed = false;
                    return Ok((grant, sent));
                }
                Ok(LeaseReply::Queued(queued)) => {
                    position = queued.position;
                    report(&queued);
                }
                Err(error) => {
                    // A refusal means the request left the queue; otherwise withdraw it.
                    withdraw.armed = !matches!(error, ClientError::Api { .. });
                    return Err(error);
                }
            }
        }
    }

    /// The lease TTL of a grant whose request left it to the server's default: read from
    /// the checkout, else estimated from its expiry on the local wall clock.
    async fn lease_ttl_of(&self, grant: &Grant) -> Duration {
        if grant.borrowed {
            return Duration::ZERO;
        }
        let estimate = wall_clock_until(grant.lease_expires_at_ms)
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let read =
            tokio::time::timeout(self.config().attempt_timeout, self.checkout_status(grant.id));
        match read.await {
            Ok(Ok(CheckoutStatus::Live(checkout))) if checkout.lease_ttl_ms > 0 => {
                Duration::from_millis(checkout.lease_ttl_ms)
            }
            _ => estimate,
        }
    }
}

/// How often to poll a queued request: a third of its poll TTL (estimated from its
/// expiry when the request left it to the server) or of its lease TTL, whichever is
/// shorter, within [`POLL_EVERY_MIN`] and [`POLL_EVERY_MAX`].
fn poll_every(
    poll_ttl: Option<Duration>,
    lease_ttl: Option<Duration>,
    wait_expires_at_ms: u64,
) -> Duration {
    let poll_ttl = poll_ttl.unwrap_or_else(|| wall_clock_until(wait_expires_at_ms));
    let shortest = lease_ttl.map_or(poll_ttl, |lease| lease.min(poll_ttl));
    (shortest / 3).clamp(POLL_EVERY_MIN, POLL_EVERY_MAX)
}

/// Withdraws a queued request (or gives back a grant) in the background when dropped
/// armed.
struct Withdraw {
    client: Client,
    id: CheckoutId,
    armed: bool,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.armed {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_within_both_ttls() {
        let s = Duration::from_secs;
        assert_eq!(poll_every(Some(s(60)), Some(s(30)), 0), s(5), "capped");
        assert_eq!(poll_every(Some(s(6)), Some(s(30)), 0), s(2), "a third of the poll TTL");
        assert_eq!(poll_every(Some(s(60)), Some(s(3)), 0), s(1), "a third of the lease TTL");
        assert_eq!(poll_every(Some(Duration::ZERO), None, 0), POLL_EVERY_MIN);
        assert_eq!(poll_every(None, None, 0), POLL_EVERY_MIN, "already expired: poll at once");
    }
}
