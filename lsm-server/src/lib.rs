//! lsm-server: one node of an lsm cluster, serving the HTTP API over a Raft-replicated
//! license state, and the `lsm-server` command line.
//!
//! A node is an [`lsm_raft::node::LsmNode`] with an axum router around it ([`Server`]).
//! Any node accepts any request: writes are checked locally, then proposed on the leader
//! (a follower forwards the request there, once); reads are linearizable unless asked for
//! `consistency=local`. The wire types are `lsm_client::api`, shared with the client, so
//! the two cannot drift apart; `docs/api.md` describes every route and
//! `docs/operations.md` how to run a cluster.
//!
//! - [`config`]: the TOML file, `LSM_` variables and flags, and their validation;
//!   [`dial`]: reaching peers at another address than their membership one;
//! - [`server`]: [`Server::start`] (everything from outside injected, so a simulation can
//!   run the real server) and [`run`] (redb, HTTP peers, the system clock, a TCP socket);
//! - `routes/`: the handlers; `dispatch`: propose, read, forward; `extract`: bodies,
//!   queries and ids with the API's errors; `forward`: the hop to the leader;
//! - [`error`]: [`ServerError`] and the one mapping to HTTP errors; [`metrics`]:
//!   Prometheus; [`logging`]: tracing;
//! - [`cli`]: the `lsm-server` commands; [`dev`]: a three-node cluster on one machine;
//!   [`kit`]: `lsm-server` processes on one machine (for `dev`, tests and benchmarks);
//!   [`remote`]: a command's request to a running node.
//!
//! ```no_run
//! # async fn example() -> Result<(), lsm_server::ServerError> {
//! let config = lsm_server::Config::load(Some("node.toml".as_ref()), &Default::default())?;
//! lsm_server::run(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod cli;
pub mod config;
pub mod dev;
pub mod dial;
mod dispatch;
pub mod error;
mod extract;
mod forward;
pub mod kit;
pub mod logging;
pub mod metrics;
pub mod remote;
mod routes;
pub mod server;

pub use config::{Config, LogFormat, Overrides, RaftTiming};
pub use error::{ApiError, ServerError};
pub use server::{Server, run};
