//! The run's history: the shared `lsm_check` history stamped with simulated time, and
//! the problems the simulation's own checks found.
//!
//! Client hosts record every operation they start and how it ended, every lease they
//! lose and every release; the operator host records its liveness probe; the driver
//! records faults, the heal, and each node's live checkouts whenever they change. One
//! [`History`] is shared by all hosts of a run (they run on one thread, but the client
//! library's renewal tasks need `Send`). `lsm_check` and `linearizability.rs` read it,
//! and a failing seed prints it.

use std::sync::{Arc, Mutex};

use lsm_check::history::{Entry, Event};

use crate::clock::SimTime;

/// The shared record of one run.
#[derive(Clone)]
pub struct History {
    time: SimTime,
    entries: Arc<lsm_check::History>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl History {
    /// An empty history stamped with `time`.
    pub fn new(time: SimTime) -> History {
        let clock = time.clone();
        let entries = Arc::new(lsm_check::History::with_clock(move || clock.ms() * 1_000));
        History { time, entries, violations: Arc::default() }
    }

    /// The simulated time now.
    pub fn now_ms(&self) -> u64 {
        self.time.ms()
    }

    /// Records `event` now.
    pub fn record(&self, event: Event) {
        self.entries.record(event);
    }

    /// Records a problem found now by one of the simulation's own checks.
    pub fn violation(&self, what: impl Into<String>) {
        self.found(format!("at {} ms: {}", self.now_ms(), what.into()));
    }

    /// Records a problem as found (it says when).
    pub fn found(&self, what: String) {
        self.violations.lock().unwrap_or_else(|e| e.into_inner()).push(what);
    }

    /// The problems so far.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A copy of every entry.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.entries()
    }
}
