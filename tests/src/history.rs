//! The history of a fault test: what every client asked, was told and believes it holds,
//! what the cluster showed, and the faults.
//!
//! Every client of the workload records what it asks and what it is told, and what it
//! believes it holds: a checkout counts as held from the moment its grant arrives until
//! the client starts to give it back or its lease guard reports the lease lost. An
//! observer records snapshots of the cluster's live checkouts (linearizable reads), and
//! the fault driver records its faults, heals and liveness probes. Each entry carries the
//! time since the start of the test in microseconds, taken under the history's lock, so
//! the entries are in time order. [`crate::check`] reads them.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Microseconds since the history started.
pub type Micros = u64;

/// Tokens of one feature in one pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// The feature.
    pub feature: String,
    /// The pool.
    pub pool: String,
    /// How many.
    pub tokens: u64,
}

/// A live checkout in a snapshot of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveCheckout {
    /// Its id.
    pub id: u64,
    /// The client that owns it.
    pub client: String,
    /// What it holds.
    pub items: Vec<Tokens>,
}

/// How a lease guard reported its lease lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// No renewal succeeded in time: the client stops counting on it, and the server may
    /// expire it later.
    Unreachable,
    /// The server said the lease expired.
    Expired,
    /// The server said it was revoked.
    Revoked,
    /// The server said it ended otherwise (unknown, gone, not the owner).
    Ended(String),
}

/// How a release ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Released (or answered released on a retry).
    Released,
    /// Refused: the checkout was not live (`gone`, `unknown_checkout`, ...).
    Refused(String),
    /// No definite answer.
    Unknown(String),
}

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A client asked for a checkout; `op` numbers the client's checkouts.
    Invoke {
        /// The client id.
        client: String,
        /// The operation.
        op: u64,
        /// What it asked for, for the reader.
        job: String,
    },
    /// The checkout was granted: from now on the client counts it as held.
    Granted {
        /// The client id.
        client: String,
        /// The operation.
        op: u64,
        /// The checkout id.
        id: u64,
        /// Its fencing token.
        fence: u64,
        /// What it holds.
        items: Vec<Tokens>,
    },
    /// The checkout was refused: a definite answer; nothing was created.
    Refused {
        /// The client id.
        client: String,
        /// The operation.
        op: u64,
        /// The error code.
        code: String,
    },
    /// The checkout ended without a definite answer: it may have been granted, under an
    /// id the client may (`id`) or may not know.
    Unknown {
        /// The client id.
        client: String,
        /// The operation.
        op: u64,
        /// The id, when the error named one.
        id: Option<u64>,
        /// What failed.
        error: String,
    },
    /// A renewal of a held checkout succeeded.
    Renewed {
        /// The client id.
        client: String,
        /// The checkout.
        id: u64,
        /// Renewals so far.
        renewals: u64,
    },
    /// The client's lease guard reported the lease lost: the client stops counting it.
    Lost {
        /// The client id.
        client: String,
        /// The checkout.
        id: u64,
        /// How.
        loss: Loss,
    },
    /// The client starts to give the checkout back: it stops counting it.
    Release {
        /// The client id.
        client: String,
        /// The checkout.
        id: u64,
    },
    /// The release was answered.
    Released {
        /// The client id.
        client: String,
        /// The checkout.
        id: u64,
        /// How.
        outcome: Outcome,
    },
    /// A linearizable read of every live checkout, through `node`, invoked at `invoked`
    /// and answered at the entry's time.
    Snapshot {
        /// The node that answered.
        node: u64,
        /// When the read was sent.
        invoked: Micros,
        /// The live checkouts.
        checkouts: Vec<LiveCheckout>,
    },
    /// A fault began.
    Fault {
        /// What it is.
        what: String,
    },
    /// Every fault was healed.
    Heal {
        /// What was healed.
        what: String,
    },
    /// A liveness probe: a leader, then a checkout and a release.
    Probe {
        /// It succeeded.
        ok: bool,
        /// What happened.
        detail: String,
    },
}

/// An event and when it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Microseconds since the start.
    pub at: Micros,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// A history being recorded; shared by every task of a test.
#[derive(Debug)]
pub struct History {
    start: Instant,
    entries: Mutex<Vec<Entry>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history starting now.
    pub fn new() -> History {
        History { start: Instant::now(), entries: Mutex::new(Vec::new()) }
    }

    /// Microseconds since the start.
    pub fn now(&self) -> Micros {
        micros(self.start.elapsed())
    }

    /// Records `event` now, and returns when.
    pub fn record(&self, event: Event) -> Micros {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let at = self.now();
        entries.push(Entry { at, event });
        at
    }

    /// Every entry so far, in time order.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes the history as JSON lines to `path`.
    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for entry in self.entries() {
            serde_json::to_writer(&mut out, &entry)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

/// `d` in microseconds (saturating).
pub fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_serialize_as_json_lines() {
        let history = History::new();
        history.record(Event::Fault { what: "kill -9 node 1".into() });
        history.record(Event::Lost { client: "a".into(), id: 1, loss: Loss::Unreachable });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        history.write_jsonl(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["kind"], "fault");
        assert_eq!(lines[1]["loss"], "unreachable");
        assert!(lines[1]["at"].as_u64().unwrap() >= lines[0]["at"].as_u64().unwrap());
    }
}
