//! What happened in a run, as the clients saw it, stamped with simulated time.
//!
//! Client hosts record every operation they start and how it ended, every lease they
//! lose, and what they believe they hold; the driver records faults. [`History`] is shared
//! by all hosts of one run (they run on one thread, but the client library's renewal tasks
//! need `Send`). The checkers in `checks.rs` and `linearizability.rs` read it, and a failing
//! seed prints it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock::SimTime;

/// Tokens of one feature in one pool.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Held {
    /// The feature.
    pub feature: String,
    /// The pool.
    pub pool: String,
    /// Tokens.
    pub tokens: u64,
}

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A client sends a checkout: operation `op`, carried as job `<client>-op<op>`.
    Checkout {
        /// The client host.
        client: String,
        /// The client's operation number.
        op: u64,
        /// What it asks for, as `feature/pool:tokens` (the pool as the workload expects it).
        want: Vec<Held>,
        /// It may wait in the queue.
        wait: bool,
    },
    /// The checkout was granted (directly or from the queue).
    Granted {
        /// The client host.
        client: String,
        /// The operation.
        op: u64,
        /// The checkout id.
        id: u64,
        /// What the grant holds.
        held: Vec<Held>,
    },
    /// The cluster refused the checkout (a committed answer).
    Refused {
        /// The client host.
        client: String,
        /// The operation.
        op: u64,
        /// The API's error code.
        code: String,
    },
    /// No final answer: the request may or may not have taken effect.
    Failed {
        /// The client host.
        client: String,
        /// The operation.
        op: u64,
        /// Why.
        error: String,
    },
    /// The client's lease guard reported the checkout lost.
    Lost {
        /// The client host.
        client: String,
        /// The checkout.
        id: u64,
        /// The loss as the library reports it.
        loss: String,
        /// The server said the checkout is over (expired, ended, revoked), as opposed to
        /// the client giving up when no renewal succeeded in time.
        server_said: bool,
    },
    /// The client starts giving a checkout back (and stops using its tokens).
    Release {
        /// The client host.
        client: String,
        /// The checkout.
        id: u64,
        /// The client still believed its lease valid.
        believed: bool,
    },
    /// The answer to a release.
    Released {
        /// The client host.
        client: String,
        /// The checkout.
        id: u64,
        /// `released`, an error code, or the failure.
        result: String,
    },
    /// A client starts a linearizable read of the tokens in use.
    Read {
        /// The client host.
        client: String,
        /// The operation.
        op: u64,
    },
    /// The read's answer: tokens in use per `feature/pool`, or `None` if it failed.
    ReadDone {
        /// The client host.
        client: String,
        /// The operation.
        op: u64,
        /// In use per (feature, pool).
        in_use: Option<BTreeMap<(String, String), u64>>,
    },
    /// The driver injected or healed a fault, or noted a phase.
    Fault(String),
}

/// An event and when it happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Simulated ms since the run started.
    pub at_ms: u64,
    /// What happened.
    pub event: Event,
}

/// The shared record of one run.
#[derive(Clone)]
pub struct History {
    time: SimTime,
    inner: Arc<Mutex<Inner>>,
}

/// What [`History`] holds.
#[derive(Default)]
pub struct Inner {
    /// Every event in order.
    pub entries: Vec<Entry>,
    /// What each client believes it holds now: (client, checkout id) to tokens.
    pub beliefs: BTreeMap<(String, u64), Vec<Held>>,
    /// Checkout ids each client was granted, by operation: (client, op) to id.
    pub granted: BTreeMap<(String, u64), u64>,
    /// Everything the checkers found wrong, in order.
    pub violations: Vec<String>,
}

impl History {
    /// An empty history stamped with `time`.
    pub fn new(time: SimTime) -> History {
        History { time, inner: Arc::default() }
    }

    /// The simulated time now.
    pub fn now_ms(&self) -> u64 {
        self.time.ms()
    }

    /// Locks the record.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `event` now.
    pub fn record(&self, event: Event) {
        let at_ms = self.now_ms();
        let mut inner = self.lock();
        match &event {
            Event::Granted { client, op, id, held } => {
                inner.beliefs.insert((client.clone(), *id), held.clone());
                inner.granted.insert((client.clone(), *op), *id);
            }
            Event::Lost { client, id, .. } | Event::Release { client, id, .. } => {
                inner.beliefs.remove(&(client.clone(), *id));
            }
            _ => {}
        }
        inner.entries.push(Entry { at_ms, event });
    }

    /// Records a violation found by a checker (with the time it was found).
    pub fn violation(&self, what: impl Into<String>) {
        let what = format!("at {} ms: {}", self.now_ms(), what.into());
        self.lock().violations.push(what);
    }

    /// The violations so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// A copy of every entry.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = |held: &[Held]| {
            held.iter()
                .map(|h| format!("{}/{}:{}", h.feature, h.pool, h.tokens))
                .collect::<Vec<_>>()
                .join(" ")
        };
        write!(f, "{:>7} ms  ", self.at_ms)?;
        match &self.event {
            Event::Checkout { client, op, want, wait } => {
                let wait = if *wait { " (may wait)" } else { "" };
                write!(f, "{client} op{op} checkout {}{wait}", held(want))
            }
            Event::Granted { client, op, id, held: h } => {
                write!(f, "{client} op{op} granted #{id} {}", held(h))
            }
            Event::Refused { client, op, code } => write!(f, "{client} op{op} refused: {code}"),
            Event::Failed { client, op, error } => write!(f, "{client} op{op} failed: {error}"),
            Event::Lost { client, id, loss, server_said } => {
                let by = if *server_said { "server says" } else { "client gave up" };
                write!(f, "{client} lost #{id} ({by}): {loss}")
            }
            Event::Release { client, id, believed } => {
                let state = if *believed { "" } else { " (lease already lost)" };
                write!(f, "{client} releases #{id}{state}")
            }
            Event::Released { client, id, result } => {
                write!(f, "{client} release #{id}: {result}")
            }
            Event::Read { client, op } => write!(f, "{client} op{op} reads in_use"),
            Event::ReadDone { client, op, in_use } => match in_use {
                Some(map) => {
                    let text: Vec<String> =
                        map.iter().map(|((f, p), n)| format!("{f}/{p}={n}")).collect();
                    write!(f, "{client} op{op} read {}", text.join(" "))
                }
                None => write!(f, "{client} op{op} read failed"),
            },
            Event::Fault(what) => write!(f, "** {what}"),
        }
    }
}
