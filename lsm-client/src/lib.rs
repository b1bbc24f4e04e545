//! lsm-client: the client library embedded in solver launchers, and the `lsm` CLI.
//!
//! [`api`] holds the HTTP API's wire types, shared with `lsm-server`; [`transport`] is the
//! seam through which every request travels.

pub mod api;
pub mod transport;
