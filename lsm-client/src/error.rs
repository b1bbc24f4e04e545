//! The client's one error type.
//!
//! A server's refusal that retrying cannot change is [`ClientError::Api`], carrying the
//! server's stable [`ErrorCode`] and, when the state machine refused, its typed [`Denial`].
//! Everything retryable (no leader, no quorum, a node starting, a lost connection) is
//! retried inside the client until the operation's deadline; only when the deadline passes
//! with nothing but such failures does the caller see [`ClientError::Unavailable`]. Messages
//! are written for the person at the terminal: they say what happened, not where in the
//! code.

use std::time::Duration;

use lsm_core::{CheckoutId, Denial};

use crate::api::{ErrorCode, ErrorDetail};

/// Why a client operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The cluster answered and refused; retrying the same request will not help.
    #[error("{}", describe_refusal(*status, detail))]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's error: code, message, and the state machine's refusal if any
        /// (boxed: it is large, and errors travel in every `Result`).
        detail: Box<ErrorDetail>,
    },
    /// The deadline passed and every attempt met a retryable failure (no server reachable,
    /// no leader, no quorum).
    #[error(
        "the lsm cluster could not serve the request ({attempts} attempt{}); last error: {last}",
        if *attempts == 1 { "" } else { "s" }
    )]
    Unavailable {
        /// Exchanges tried.
        attempts: u32,
        /// The last failure, for the user.
        last: String,
    },
    /// A server answered something this client does not understand (a different version,
    /// or not an lsm server).
    #[error("unexpected answer from {addr}: {reason}")]
    Decode {
        /// The server.
        addr: String,
        /// What could not be read.
        reason: String,
    },
    /// The client's configuration is not valid.
    #[error("invalid client configuration: {field}: {problem}")]
    Config {
        /// The setting at fault (`servers`, `LSM_SERVERS`, `attempt_timeout`, ...).
        field: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A queued checkout was not granted within the wait the caller allowed; the request
    /// was withdrawn from the queue.
    #[error("gave up waiting for checkout #{id} after {waited:?} (last queue position {position})")]
    WaitTimedOut {
        /// The queued request.
        id: CheckoutId,
        /// Its last known position.
        position: u64,
        /// How long it waited.
        waited: Duration,
    },
}

impl ClientError {
    /// The server's error code, for a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { detail, .. } => Some(detail.code),
            _ => None,
        }
    }

    /// The state machine's typed refusal, when it refused.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            ClientError::Api { detail, .. } => detail.denial.as_ref(),
            _ => None,
        }
    }

    /// A configuration error naming `field`.
    pub fn config(field: impl Into<String>, problem: impl Into<String>) -> ClientError {
        ClientError::Config { field: field.into(), problem: problem.into() }
    }
}

/// `refused (no_tokens): ...`, with the field when the server named one.
fn describe_refusal(status: u16, detail: &ErrorDetail) -> String {
    let mut text = format!("refused ({}, HTTP {status}): {}", detail.code, detail.message);
    if let Some(field) = &detail.field
        && !detail.message.contains(field.as_str())
    {
        text.push_str(&format!(" (field {field})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_well() {
        let refused = ClientError::Api {
            status: 409,
            detail: Box::new(ErrorDetail {
                code: ErrorCode::NoTokens,
                message: "not enough tokens of abaqus: 2 free, 5 asked".into(),
                field: None,
                denial: None,
                leader: None,
            }),
        };
        assert_eq!(
            refused.to_string(),
            "refused (no_tokens, HTTP 409): not enough tokens of abaqus: 2 free, 5 asked"
        );
        assert_eq!(refused.code(), Some(ErrorCode::NoTokens));
        let down = ClientError::Unavailable { attempts: 1, last: "cannot connect".into() };
        assert!(down.to_string().contains("(1 attempt)"), "{down}");
        let bad = ClientError::config("servers", "give at least one host:port");
        assert_eq!(
            bad.to_string(),
            "invalid client configuration: servers: give at least one host:port"
        );
    }
}
