//! lsm-core: the license state machine that lsm replicates.
//!
//! The whole license state of a site (entitlements, pools, checkouts and their leases,
//! the queue, client sessions) is one [`State`]. It changes only through
//! [`State::apply`], which takes a committed [`Command`] and the leader's [`Meta`] (log
//! index and timestamp) and returns an [`Output`]: the [`Response`] for the caller and
//! the [`Event`]s for the audit log. Reads go through [`State::query`] and friends.
//!
//! The crate is pure: no IO, no clock, no randomness, no global state, no async. Time is
//! the leader's timestamp carried in [`Meta`]; the state keeps the largest one it has seen
//! so it never runs backwards. Nothing that reaches a snapshot or an answer is visited
//! in hash order: features and queued requests are B-trees; live checkouts and
//! tombstones are id tables (a window of recent ids beside a B-tree, iterated in id
//! order); the client table keeps its entries in slots found through a hash map and
//! writes them sorted by client id; the derived indexes, rebuilt on restore, are B-trees
//! and a lease index that keeps a sorted ring beside a B-tree (its hash set of gone keys
//! is only probed). With all arithmetic on integers, the same commands give
//! byte-identical states (and equal [`State::state_hash`]es) on every node. A refusal is
//! a committed answer, [`Response::Denied`] with a typed [`Denial`]; [`Error`] is for
//! bugs only.
//!
//! ```
//! use lsm_core::*;
//!
//! let mut state = State::default();
//! let admin: ClientId = "admin".parse().unwrap();
//! let install = Install {
//!     entitlements: vec![Entitlement {
//!         feature: "lsdyna".parse().unwrap(),
//!         license: "site-2026".parse().unwrap(),
//!         tokens_total: 10,
//!         starts_at_ms: 0,
//!         expires_at_ms: u64::MAX,
//!         cost: CostRule::default(),
//!         max_borrow_ms: 0,
//!     }],
//!     policy: Policy::default(),
//! };
//! let request = |client: &ClientId, seq, op| {
//!     Command::Request(Request { client: client.clone(), seq, ack: seq, op })
//! };
//! state.apply(Meta { index: 1, now_ms: 1_000 }, request(&admin, 1, Op::Install(install))).unwrap();
//!
//! let job: ClientId = "launcher-1".parse().unwrap();
//! let checkout = CheckoutRequest {
//!     items: vec![Item {
//!         feature: "lsdyna".parse().unwrap(),
//!         demand: Demand::Cores { cores: 8, mode: ParallelMode::Smp },
//!         pool: None,
//!     }],
//!     user: "jane".parse().unwrap(),
//!     host: "node-1".parse().unwrap(),
//!     job: None,
//!     lease_ttl_ms: 30_000,
//!     borrow_until_ms: None,
//!     wait: None,
//! };
//! let out = state.apply(Meta { index: 2, now_ms: 2_000 }, request(&job, 1, Op::Checkout(checkout))).unwrap();
//! let Response::Granted(grant) = out.response else { panic!("{:?}", out.response) };
//! assert_eq!(grant.items[0].tokens, 8);
//! assert_eq!(grant.lease_expires_at_ms, 32_000);
//! ```

mod checkout;
pub mod clients;
mod command;
mod deadlines;
mod error;
mod id_table;
mod ids;
mod install;
mod license;
mod limits;
mod pool;
mod query;
mod queue;
mod response;
mod rules;
mod snapshot;
mod state;

pub use command::{CheckoutRequest, Command, Item, MAX_REASON_LEN, Meta, Op, Request, Wait};
pub use error::Error;
pub use ids::{
    CheckoutId, ClientId, FeatureName, GroupName, HostName, JobId, LicenseId, NameError, PoolName,
    UserName,
};
pub use license::{
    CostRule, Demand, Entitlement, Install, InstallError, ParallelMode, Policy, PoolSpec, Rule,
    Subject, hpc_packs_for,
};
pub use limits::Limits;
pub use pool::{FeatureState, PoolState};
pub use query::{
    CheckoutFilter, CheckoutStatus, FeatureStatus, PoolStatus, Query, QueryResponse, Summary,
    WaiterInfo,
};
pub use response::{Denial, End, Event, Events, Grant, GrantedItem, Output, Queued, Response};
pub use snapshot::SNAPSHOT_VERSION;
pub use state::{Checkout, ClientLoad, State, Waiter};
