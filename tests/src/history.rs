//! The client library's answers as entries of the shared history
//! ([`lsm_check::history`]), for the fault tests and the simulation alike.
//!
//! A checkout's answer is definite only when nothing can have been created besides what
//! it says: a grant, or a refusal the state machine committed. Anything else (no answer,
//! a stale request, an internal error, a wait that timed out) may hide a grant, and is
//! recorded as [`Event::Unknown`], with the checkout id when the error names one.

use lsm_check::history::{Event, Loss, Outcome, Tokens, definite_refusal};
use lsm_client::api::ReleaseReply;
use lsm_client::{ClientError, Lease, LeaseLoss};

/// The entry for the answer to `client`'s checkout `op`.
pub fn checkout_answer(client: &str, op: u64, answer: &Result<Lease, ClientError>) -> Event {
    let client = client.to_string();
    match answer {
        Ok(lease) => {
            let grant = lease.grant();
            let items = Tokens::of(&grant.items);
            Event::Granted { client, op, id: grant.id.0, fence: grant.fence, items }
        }
        Err(ClientError::Api { detail, .. })
            if definite_refusal(detail.denial.is_some(), detail.code.as_str()) =>
        {
            Event::Refused { client, op, code: detail.code.to_string() }
        }
        Err(error) => {
            let (id, code) = match error {
                ClientError::WaitTimedOut { id, .. } => (Some(id.0), None),
                ClientError::Api { detail, .. } => (None, Some(detail.code.to_string())),
                _ => (None, None),
            };
            Event::Unknown { client, op, id, code, error: error.to_string() }
        }
    }
}

/// How a lease guard's loss is recorded.
pub fn loss(loss: &LeaseLoss) -> Loss {
    match loss {
        LeaseLoss::Unreachable => Loss::Unreachable,
        LeaseLoss::Expired => Loss::Expired,
        LeaseLoss::Revoked { .. } => Loss::Revoked,
        LeaseLoss::Ended(denial) => Loss::Ended(denial.to_string()),
    }
}

/// How the answer to a release is recorded.
pub fn outcome(answer: &Result<ReleaseReply, ClientError>) -> Outcome {
    match answer {
        Ok(ReleaseReply::Released { .. } | ReleaseReply::Cancelled { .. }) => Outcome::Released,
        Err(ClientError::Api { detail, .. }) => Outcome::Refused(detail.code.to_string()),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}
