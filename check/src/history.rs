//! The history of a run: what every client asked, was told and believes it holds, what
//! the cluster showed, and the faults.
//!
//! Every harness records into one [`History`]: the clients record what they ask and what
//! they are told, and what they believe they hold (a checkout counts as held from the
//! moment its grant arrives until the client starts to give it back or its lease guard
//! reports the lease lost); an observer records [snapshots](Event::Snapshot) of the
//! cluster's live checkouts; the driver records faults, heals and liveness probes. Each
//! entry carries its time in microseconds, taken under the history's lock, so the entries
//! are in time order. The clock is the real one ([`History::new`]) or one the harness
//! gives ([`History::with_clock`]: the simulation's time). The checks in this crate read
//! the entries only.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Microseconds since the history started.
pub type Micros = u64;

/// Tokens of one feature in one pool.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tokens {
    /// The feature.
    pub feature: String,
    /// The pool.
    pub pool: String,
    /// How many.
    pub tokens: u64,
}

impl Tokens {
    /// `tokens` tokens of `feature` in `pool`.
    pub fn new(feature: &str, pool: &str, tokens: u64) -> Tokens {
        Tokens { feature: feature.to_string(), pool: pool.to_string(), tokens }
    }

    /// The items of a grant or a checkout.
    pub fn of(items: &[lsm_core::GrantedItem]) -> Vec<Tokens> {
        (items.iter()).map(|i| Tokens::new(i.feature.as_str(), i.pool.as_str(), i.tokens)).collect()
    }
}

/// A live checkout in a snapshot of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LiveCheckout {
    /// Its id.
    pub id: u64,
    /// Its fencing token.
    pub fence: u64,
    /// The client that owns it.
    pub client: String,
    /// The job id it carries, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// What it holds.
    pub items: Vec<Tokens>,
}

impl LiveCheckout {
    /// The snapshot form of a checkout the cluster lists.
    pub fn of(checkout: &lsm_core::Checkout) -> LiveCheckout {
        LiveCheckout {
            id: checkout.id.0,
            fence: checkout.fence,
            client: checkout.client.to_string(),
            job: checkout.job.as_ref().map(|j| j.to_string()),
            items: Tokens::of(&checkout.items),
        }
    }
}

/// How a lease guard reported its lease lost.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Released (or cancelled in the queue, or answered released on a retry).
    Released,
    /// Refused with this error code: the server did not find the checkout live.
    Refused(String),
    /// No definite answer.
    Unknown(String),
}

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A client asked for a checkout; `op` numbers the client's operations.
    Invoke {
        /// The client id.
        client: String,
        /// The operation.
        op: u64,
        /// The job id the request carries (empty when none).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        job: String,
        /// What it asks for, for the reader.
        what: String,
        /// What it asks for by feature and pool, when the workload names the pools.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        want: Vec<Tokens>,
        /// It may wait in the queue.
        #[serde(default)]
        wait: bool,
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
        /// The error code, when a server answered with one that does not say whether the
        /// checkout was created.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
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
        /// The client still believed its lease valid.
        believed: bool,
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
    /// A client starts a linearizable read of the tokens in use.
    Read {
        /// The client id.
        client: String,
        /// The operation.
        op: u64,
    },
    /// The read's answer: tokens in use per feature and pool, or `None` if it failed.
    ReadDone {
        /// The client id.
        client: String,
        /// The operation.
        op: u64,
        /// In use per feature and pool.
        in_use: Option<Vec<Tokens>>,
    },
    /// Every live checkout, through `node` (0 when the reader does not know which node
    /// answered), read from `invoked` to the entry's time. A linearizable read shows
    /// every checkout the cluster holds; a node's local state may lag behind.
    Snapshot {
        /// The node that answered.
        node: u64,
        /// When the read was sent.
        invoked: Micros,
        /// A linearizable read, not a node's local state.
        linearizable: bool,
        /// The live checkouts.
        checkouts: Vec<LiveCheckout>,
    },
    /// A fault began (or one of several ended).
    Fault {
        /// What it is.
        what: String,
    },
    /// Every fault so far was healed: a liveness probe must follow.
    Heal {
        /// What was healed.
        what: String,
    },
    /// A liveness probe: the cluster served a fresh request, or not.
    Probe {
        /// It succeeded.
        ok: bool,
        /// What happened.
        detail: String,
    },
    /// A note for the reader (a phase of the run); no check reads it.
    Note {
        /// What.
        what: String,
    },
}

/// An event and when it happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Microseconds since the start.
    pub at: Micros,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// Where a history's times come from.
enum Clock {
    /// Real time since this instant.
    Real(Instant),
    /// A clock the harness keeps.
    Given(Box<dyn Fn() -> Micros + Send + Sync>),
}

/// A history being recorded; shared by every task of a run.
pub struct History {
    clock: Clock,
    entries: Mutex<Vec<Entry>>,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History").field("entries", &self.len()).finish()
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history on the real clock, starting now.
    pub fn new() -> History {
        History { clock: Clock::Real(Instant::now()), entries: Mutex::new(Vec::new()) }
    }

    /// An empty history whose times come from `clock` (microseconds, never decreasing).
    pub fn with_clock(clock: impl Fn() -> Micros + Send + Sync + 'static) -> History {
        History { clock: Clock::Given(Box::new(clock)), entries: Mutex::new(Vec::new()) }
    }

    /// Microseconds since the start.
    pub fn now(&self) -> Micros {
        match &self.clock {
            Clock::Real(start) => micros(start.elapsed()),
            Clock::Given(clock) => clock(),
        }
    }

    /// Records `event` now, and returns when.
    pub fn record(&self, event: Event) -> Micros {
        let mut entries = self.lock();
        let at = self.now();
        entries.push(Entry { at, event });
        at
    }

    /// Every entry so far, in time order.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    /// How many entries so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads a history written by [`History::write_jsonl`].
pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path)?;
    (text.lines().filter(|l| !l.trim().is_empty()))
        .map(|line| serde_json::from_str(line).map_err(std::io::Error::other))
        .collect()
}

/// Whether a refused checkout is a definite answer (nothing was created): a refusal the
/// state machine committed (`committed`: the error carries its denial), other than a
/// stale request or an internal error, which may hide a grant.
pub fn definite_refusal(committed: bool, code: &str) -> bool {
    committed && !matches!(code, "stale_request" | "internal")
}

/// `d` in microseconds (saturating).
pub fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `feature/pool:tokens ...`.
pub fn describe(tokens: &[Tokens]) -> String {
    let words: Vec<String> =
        tokens.iter().map(|t| format!("{}/{}:{}", t.feature, t.pool, t.tokens)).collect();
    words.join(" ")
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Invoke { client, op, job, what, want: _, wait } => {
                let wait = if *wait { " (may wait)" } else { "" };
                write!(f, "{client} op{op} checkout {what}{wait}")?;
                if !job.is_empty() {
                    write!(f, " as job {job}")?;
                }
                Ok(())
            }
            Event::Granted { client, op, id, fence, items } => {
                write!(f, "{client} op{op} granted #{id} (fence {fence}) {}", describe(items))
            }
            Event::Refused { client, op, code } => write!(f, "{client} op{op} refused: {code}"),
            Event::Unknown { client, op, id, code: _, error } => {
                let id = id.map(|id| format!(" (#{id})")).unwrap_or_default();
                write!(f, "{client} op{op} got no answer{id}: {error}")
            }
            Event::Renewed { client, id, renewals } => {
                write!(f, "{client} renewed #{id} ({renewals} so far)")
            }
            Event::Lost { client, id, loss } => write!(f, "{client} lost #{id}: {loss:?}"),
            Event::Release { client, id, believed } => {
                let state = if *believed { "" } else { " (lease already lost)" };
                write!(f, "{client} releases #{id}{state}")
            }
            Event::Released { client, id, outcome } => {
                write!(f, "{client} release #{id}: {outcome:?}")
            }
            Event::Read { client, op } => write!(f, "{client} op{op} reads in_use"),
            Event::ReadDone { client, op, in_use } => match in_use {
                Some(in_use) => write!(f, "{client} op{op} read {}", describe(in_use)),
                None => write!(f, "{client} op{op} read failed"),
            },
            Event::Snapshot { node, invoked, linearizable, checkouts } => {
                let how = if *linearizable { "linearizable read" } else { "local state" };
                let ids: Vec<String> =
                    checkouts.iter().map(|c| format!("#{} ({})", c.id, c.client)).collect();
                write!(
                    f,
                    "node {node}, {how} sent at {:.3} ms: {} live {}",
                    *invoked as f64 / 1e3,
                    checkouts.len(),
                    ids.join(" ")
                )
            }
            Event::Fault { what } => write!(f, "** {what}"),
            Event::Heal { what } => write!(f, "** healed: {what}"),
            Event::Probe { ok, detail } => {
                write!(f, "** probe {}: {detail}", if *ok { "served" } else { "FAILED" })
            }
            Event::Note { what } => write!(f, "-- {what}"),
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>11.3} ms  {}", self.at as f64 / 1e3, self.event)
    }
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
        assert_eq!(read_jsonl(&path).unwrap(), history.entries());
    }

    #[test]
    fn a_given_clock_stamps_the_entries() {
        let history = History::with_clock(|| 42_000);
        assert_eq!(history.record(Event::Note { what: "start".into() }), 42_000);
        assert_eq!(history.entries()[0].to_string(), "     42.000 ms  -- start");
    }
}
