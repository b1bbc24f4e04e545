//! Errors: the crate's [`ServerError`], and [`ApiError`], an HTTP answer that is not 2xx.
//!
//! Every refusal the HTTP API gives is built here, so the mapping from a cause (a bad
//! body, a state-machine [`Denial`], a Raft [`lsm_raft::error::Error`], a timeout, or a
//! plain-text error of axum's own, see [`as_json`]) to a stable [`ErrorCode`] lives in
//! one place; the code's HTTP status is [`ErrorCode::status`]. The body is always
//! [`ErrorBody`] JSON.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use lsm_client::api::{ErrorBody, ErrorCode, ErrorDetail, FieldError};
use lsm_core::Denial;
use lsm_raft::error::Error as RaftError;

/// Why the server could not start, run or carry out a command.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A configuration value is wrong; `field` names it and `problem` says how to fix it.
    #[error("{field}: {problem}")]
    Config {
        /// The field, such as `raft.election_min_ms`.
        field: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The configuration sources do not load (a TOML syntax error, a wrong type, an
    /// unknown key).
    #[error("configuration: {0}")]
    ConfigLoad(Box<figment::Error>),
    /// The Raft node failed to start or stopped.
    #[error("raft: {0}")]
    Raft(#[from] RaftError),
    /// The data directory could not be opened.
    #[error("storage at {path}: {reason}")]
    Storage {
        /// The data directory.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A request to a running node failed, or its answer was not what the API promises.
    #[error("{0}")]
    Remote(String),
    /// A running node refused a request with an error of the API.
    #[error("{} (HTTP {status}): {}", detail.code, detail.message)]
    Refused {
        /// The HTTP status of the answer.
        status: u16,
        /// The answer's error.
        detail: Box<ErrorDetail>,
    },
}

impl ServerError {
    /// A configuration error for `field`.
    pub fn config(field: impl Into<String>, problem: impl Into<String>) -> ServerError {
        ServerError::Config { field: field.into(), problem: problem.into() }
    }

    /// An IO error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ServerError {
        ServerError::Io { context: context.into(), source }
    }

    /// The code of a running node's refusal, if it is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ServerError::Refused { detail, .. } => Some(detail.code),
            _ => None,
        }
    }

    /// The field a configuration error names, if it is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ServerError::Config { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// An answer that is not 2xx: a code, a message and what the code is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The detail sent as the body (boxed: errors travel in `Result`s).
    pub detail: Box<ErrorDetail>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            detail: Box::new(ErrorDetail {
                code,
                message: message.into(),
                field: None,
                denial: None,
                leader: None,
            }),
        }
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.detail.code
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.detail.field = Some(field.into());
        self
    }

    /// Names the leader's address.
    pub fn with_leader(mut self, leader: Option<String>) -> ApiError {
        self.detail.leader = leader;
        self
    }

    /// A refusal of the state machine (committed, or found by the precheck).
    pub fn denial(denial: Denial) -> ApiError {
        let code = ErrorCode::of_denial(&denial);
        let mut error = ApiError::new(code, denial.to_string());
        if let Denial::BadRequest { field, .. } = &denial {
            error.detail.field = Some(field.clone());
        }
        if let Denial::BadInstall(e) = &denial {
            error.detail.field = Some(e.field.clone());
        }
        error.detail.denial = Some(denial);
        error
    }

    /// A field of the body that is wrong.
    pub fn field_error(e: FieldError) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, e.to_string()).with_field(e.field)
    }

    /// A body or query that does not parse.
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::MalformedRequest, message)
    }

    /// A bug or a storage failure.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }

    /// The request did not complete within the request timeout.
    pub fn timeout(ms: u64) -> ApiError {
        ApiError::new(
            ErrorCode::Timeout,
            format!(
                "no answer within {ms} ms; the request may still take effect, so retry it with the same envelope"
            ),
        )
    }

    /// An error of the Raft node. `NotLeader` maps to `not_leader` here; the caller
    /// forwards first when it can.
    pub fn raft(error: RaftError) -> ApiError {
        let message = error.to_string();
        match error {
            RaftError::NotLeader { leader_addr, .. } => {
                ApiError::new(ErrorCode::NotLeader, message).with_leader(leader_addr)
            }
            RaftError::NoQuorum(_) => ApiError::new(ErrorCode::NoQuorum, message),
            RaftError::Stopped(_) => ApiError::new(ErrorCode::Unavailable, message),
            RaftError::AlreadyInitialized => ApiError::new(
                ErrorCode::AlreadyInitialized,
                "the cluster is already initialized; nothing was changed",
            ),
            RaftError::Refused(_) => ApiError::new(ErrorCode::MembershipRefused, message),
            RaftError::Storage(_) | RaftError::Config(_) => {
                ApiError::new(ErrorCode::Internal, message)
            }
        }
    }

    /// An error answer that is not the API's own (a rejection of axum's extractors, a
    /// plain-text error): the code for its status, and its text as the message.
    pub fn of_status(status: StatusCode, text: &str) -> ApiError {
        let code = match status.as_u16() {
            400 => ErrorCode::MalformedRequest,
            401 => ErrorCode::Unauthorized,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            408 | 504 => ErrorCode::Timeout,
            413 => ErrorCode::BodyTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            503 => ErrorCode::Unavailable,
            s if (400..500).contains(&s) => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        };
        let message = if text.trim().is_empty() { status.to_string() } else { text.to_string() };
        ApiError::new(code, message)
    }

    /// The HTTP status of the code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.detail.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.detail.code, self.detail.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let denied = self.detail.denial.is_some().then_some(DeniedWith(self.detail.code));
        let mut response = (status, Json(ErrorBody { error: *self.detail })).into_response();
        if let Some(denied) = denied {
            response.extensions_mut().insert(denied);
        }
        response
    }
}

/// Turns an error answer that is not JSON into an [`ApiError`] ([`ApiError::of_status`]),
/// so every error of the API has the same shape; any other answer passes unchanged.
pub async fn as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = Limited::new(response.into_body(), 64 * 1024).collect().await;
    let text =
        body.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
    ApiError::of_status(status, &text).into_response()
}

/// Marks a response that carries a refusal of the state machine, with its code, so the
/// metrics layer can count denials without parsing bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeniedWith(pub ErrorCode);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_error_gets_the_code_of_its_status() {
        use ErrorCode::*;
        let cases = [
            (400, MalformedRequest),
            (401, Unauthorized),
            (404, NotFound),
            (405, MethodNotAllowed),
            (408, Timeout),
            (413, BodyTooLarge),
            (415, UnsupportedMediaType),
            (422, BadRequest),
            (500, Internal),
            (502, Internal),
            (503, Unavailable),
            (504, Timeout),
        ];
        for (status, code) in cases {
            let error = ApiError::of_status(StatusCode::from_u16(status).unwrap(), "why");
            assert_eq!((status, error.code()), (status, code));
            assert_eq!(error.detail.message, "why");
        }
        let silent = ApiError::of_status(StatusCode::PAYLOAD_TOO_LARGE, " \n");
        assert_eq!(silent.detail.message, "413 Payload Too Large");
        assert_eq!(silent.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
