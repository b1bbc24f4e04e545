//! One history of a run against lsm and one set of checks of its promises, for every
//! harness: the deterministic simulation (`tests/tests/sim`), the real-process fault
//! tests (`tests/tests/faults.rs`) and the load tool's audit (`lsm_bench`).
//!
//! A harness records what its clients asked, were told and believe they hold, what the
//! cluster showed, and its faults into a [`History`](history::History); the checks read
//! the entries only and return the [`Violation`]s they find. `docs/testing.md`
//! ("Properties") defines each property once; the checks are those definitions:
//!
//! - [`safety`]: the tokens clients believe they hold, and the tokens any snapshot shows,
//!   never exceed a pool's cap or a feature's total;
//! - [`durability`]: an acknowledged checkout stays live while its client holds it;
//! - [`exactly_once`]: one request creates at most one checkout, and a checkout ends once;
//! - [`fences`]: fencing tokens are unique and only grow;
//! - [`liveness`]: after every heal, the cluster serves within a bound.
//!
//! [`Report::check`] runs them all with the run's [`Checks`]. Every check has unit tests
//! that feed it a history breaking its property, so a check that cannot fail would be
//! noticed.

pub mod durability;
pub mod exactly_once;
pub mod fences;
pub mod history;
pub mod liveness;
pub mod report;
pub mod safety;

#[cfg(test)]
mod script;

pub use history::{Entry, Event, History, LiveCheckout, Loss, Micros, Outcome, Tokens};
pub use liveness::Liveness;
pub use report::{Checks, Property, Report, Violation};
pub use safety::Capacity;
