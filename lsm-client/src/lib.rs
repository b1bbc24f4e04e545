//! lsm-client: the client library embedded in solver launchers, and the `lsm` CLI.
//!
//! A [`Client`] talks to any node of an lsm cluster. It finds the leader from the nodes'
//! hints, moves on from nodes that are down or in an election, and retries every request
//! under one deadline with the same exactly-once envelope, so a retry never checks out
//! twice. [`Client::checkout`] returns a [`Lease`]: a guard that renews the checkout in
//! the background, tells its holder when the checkout is lost, and gives the tokens back
//! when released or dropped.
//!
//! # Embedding in a launcher
//!
//! Check out, run the solver while the lease renews itself, stop the solver if the lease
//! is lost, give the tokens back at the end (`docs/cli.md` describes the same flow as
//! `lsm run`):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use lsm_client::api::{CheckoutBody, ItemBody, WaitBody};
//! use lsm_client::{CheckoutOptions, Client, ClientConfig, LeaseLoss};
//! use lsm_core::ParallelMode;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = Client::new(ClientConfig::from_env()?)?;
//!     let body = CheckoutBody {
//!         client: None, // the client fills in the envelope
//!         seq: None,
//!         ack: None,
//!         items: vec![ItemBody::cores("lsdyna".parse()?, 64, ParallelMode::Mpp)],
//!         user: "jane".parse()?,
//!         host: "node-17".parse()?,
//!         job: Some("slurm-4711".parse()?),
//!         lease_ttl_ms: Some(30_000),
//!         borrow_until_ms: None,
//!         wait: Some(WaitBody { priority: 0, poll_ttl_ms: Some(60_000) }),
//!     };
//!     let options = CheckoutOptions {
//!         on_queued: Some(Box::new(|q| eprintln!("queued at position {}", q.position))),
//!         wait_timeout: Some(Duration::from_secs(3600)),
//!     };
//!     let mut lease = client.checkout_with(body, options).await?;
//!     eprintln!("checked out #{} (fence {})", lease.id(), lease.grant().fence);
//!
//!     let mut solver = tokio::process::Command::new("lsdyna").arg("i=model.k").spawn()?;
//!     tokio::select! {
//!         status = solver.wait() => {
//!             lease.release().await?;
//!             eprintln!("solver finished: {}", status?);
//!         }
//!         loss = lease.lost() => {
//!             eprintln!("license lost: {loss}; stopping the solver");
//!             solver.kill().await?;
//!             if loss == LeaseLoss::Unreachable {
//!                 let _ = lease.release().await; // best effort
//!             }
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Map
//!
//! - [`config`] — [`ClientConfig`], from code or the `LSM_` environment.
//! - [`client`] — [`Client`], its requests, retries and leader cache.
//! - [`session`] — sequence numbers and acks of the exactly-once protocol.
//! - [`checkout`] — checking out with a guard, waiting in the queue.
//! - [`lease`] — [`Lease`], renewal and loss.
//! - [`error`] — [`ClientError`].
//! - [`api`] — the HTTP API's wire types, shared with `lsm-server`.
//! - [`transport`] — the seam through which every request travels.
//! - `cli` (feature `cli`, on by default): the pieces of the `lsm` binary.

pub mod api;
pub mod checkout;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod lease;
pub mod session;
pub mod transport;

pub use checkout::{CheckoutOptions, OnQueued};
pub use client::Client;
pub use config::ClientConfig;
pub use error::ClientError;
pub use lease::{Lease, LeaseLoss, LeaseStatus};
