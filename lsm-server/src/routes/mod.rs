//! The HTTP handlers, one file per group of routes. `crate::server` wires them to their
//! paths (the constants of `lsm_client::api::path`); `docs/api.md` describes each.

pub mod admin;
pub mod checkouts;
pub mod health;
pub mod reads;
