//! Reading requests: the raw request a handler may forward, its JSON body, its query
//! string and the ids in its path, each refused with the API's own errors.
//!
//! Axum's stock extractors answer with plain-text rejections; the API promises an
//! [`lsm_client::api::ErrorBody`] for everything, with the field at fault named. So a
//! handler takes an [`Incoming`] (method, path and query, headers and the raw body, read
//! up to `max_body_bytes`), keeps it to forward to the leader unchanged, and parses from
//! it:
//!
//! - a body that is not `application/json` answers `415 unsupported_media_type`;
//! - a body over `max_body_bytes` answers `413 body_too_large`;
//! - JSON that does not parse or does not match the type (wrong type, negative count,
//!   unknown field) answers `400 malformed_request` with the path of the field
//!   (`items[0].tokens`), found by `serde_path_to_error`.
//!
//! An empty body counts as `{}`, so `curl -X POST` works for routes whose fields are all
//! optional.

use std::sync::Arc;

use axum::extract::{FromRequest, Query, Request};
use axum::http::{HeaderMap, Method, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use lsm_client::api::{ErrorCode, FORWARDED_HEADER};
use lsm_core::CheckoutId;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::server::Shared;

/// A request as it arrived: what forwarding needs to resend it, and its whole body.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub uri: Uri,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, at most `max_body_bytes`.
    pub body: Bytes,
}

impl Incoming {
    /// The node that forwarded this request, if it was forwarded.
    pub fn forwarded_by(&self) -> Option<&str> {
        self.headers.get(FORWARDED_HEADER).and_then(|v| v.to_str().ok())
    }

    /// The body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return parse_json(b"{}");
        }
        if !is_json(&self.headers) {
            let given = self
                .headers
                .get(header::CONTENT_TYPE)
                .map_or("none".to_string(), |v| format!("{:?}", v.to_str().unwrap_or("?")));
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("the body must be JSON with content-type: application/json (got {given})"),
            ));
        }
        parse_json(&self.body)
    }

    /// The query string as `T`.
    pub fn query<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        Query::<T>::try_from_uri(&self.uri).map(|Query(q)| q).map_err(|rejection| {
            ApiError::malformed(format!("the query string is malformed: {}", rejection.body_text()))
        })
    }
}

impl FromRequest<Arc<Shared>> for Incoming {
    type Rejection = ApiError;

    async fn from_request(request: Request, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let max = shared.config.max_body_bytes;
        let (parts, body) = request.into_parts();
        let too_large = || {
            ApiError::new(
                ErrorCode::BodyTooLarge,
                format!(
                    "the body is larger than the {max} bytes this server accepts (max_body_bytes)"
                ),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return Err(too_large());
        }
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
            Err(e) => {
                return Err(ApiError::malformed(format!("the body could not be read: {e}")));
            }
        };
        Ok(Incoming { method: parts.method, uri: parts.uri, headers: parts.headers, body })
    }
}

/// Parses `bytes` as `T`, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::malformed(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::malformed(format!("the body does not match the schema: {inner}"))
        } else {
            ApiError::malformed(format!("{path}: {inner}")).with_field(path)
        }
    })?;
    de.end().map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// True for `application/json` and `application/*+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A checkout id from a path segment.
pub fn checkout_id(raw: &str) -> Result<CheckoutId, ApiError> {
    raw.parse::<u64>().map(CheckoutId).map_err(|_| {
        ApiError::malformed(format!("{raw:?} is not a checkout id (a non-negative integer)"))
            .with_field("id")
    })
}

/// A node id from a path segment.
pub fn node_id(raw: &str) -> Result<u64, ApiError> {
    match raw.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::malformed(format!("{raw:?} is not a node id (a positive integer)"))
            .with_field("id")),
    }
}

#[cfg(test)]
mod tests {
    use lsm_client::api::CheckoutBody;

    use super::*;

    #[test]
    fn errors_name_the_field() {
        let err = parse_json::<CheckoutBody>(
            br#"{"items":[{"feature":"f","tokens":-1}],"user":"u","host":"h"}"#,
        )
        .unwrap_err();
        assert_eq!(err.code(), ErrorCode::MalformedRequest);
        assert_eq!(err.detail.field.as_deref(), Some("items[0].tokens"));
        let err = parse_json::<CheckoutBody>(br#"{"items":[], "user": 3}"#).unwrap_err();
        assert_eq!(err.detail.field.as_deref(), Some("user"));
        let err = parse_json::<CheckoutBody>(br#"{"items":[}"#).unwrap_err();
        assert!(err.detail.message.contains("not valid JSON"), "{err}");
        let err =
            parse_json::<CheckoutBody>(br#"{"items":[],"user":"u","host":"h"} x"#).unwrap_err();
        assert!(err.detail.message.contains("not valid JSON"), "{err}");
        let err =
            parse_json::<CheckoutBody>(br#"{"items":[],"user":"u","host":"h","x":1}"#).unwrap_err();
        assert!(err.detail.message.contains("unknown field `x`"), "{err}");
    }

    #[test]
    fn json_content_types() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn ids_from_paths() {
        assert_eq!(checkout_id("7").unwrap(), CheckoutId(7));
        assert_eq!(checkout_id("x").unwrap_err().code(), ErrorCode::MalformedRequest);
        assert!(node_id("0").is_err());
        assert_eq!(node_id("4").unwrap(), 4);
    }
}
