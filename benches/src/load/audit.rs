//! Lost and duplicated grants: the clients' history against what the cluster says, read
//! linearizably, checked by `lsm_check`.
//!
//! Every client records its checkouts and releases in one shared
//! [`History`](lsm_check::History) (see `workload.rs`). An audit reads every live
//! checkout linearizably, records the read as a snapshot of that history, and runs the
//! checks of `lsm_check` over the whole history so far (`docs/testing.md`, "Properties"):
//!
//! - **lost** grants break durability: a client held checkout X from before the read was
//!   sent to after it was answered, and X is not live; or a release of a checkout the
//!   client held was refused (`gone`, `unknown_checkout`, ...);
//! - **duplicated** grants break exactly-once: a live checkout of a client that the client
//!   was never told of, beyond its checkouts in flight or given up on without an answer;
//!   or a checkout live in a read sent after its release was acknowledged;
//! - anything else (over a cap or a total, a fence granted twice or out of order) is
//!   reported as a violation of its property.
//!
//! The clients keep running while the audit reads; the history's times say what each
//! client knew before the read was sent and after it was answered. After the run, with
//! every client stopped, the last audit also counts what is left over. Each audit
//! reports only what no earlier audit of the same [`Clients`] reported.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use lsm_check::history::{Event, History, LiveCheckout, Outcome};
use lsm_check::{Capacity, Checks, Property, Report, Violation};
use lsm_client::Client;
use lsm_client::api::{CheckoutQuery, Consistency};
use lsm_core::{Checkout, FeatureName};
use serde::Serialize;

/// Checkouts one read asks for (the server's default `max_query_rows`).
const PAGE: u64 = 10_000;

/// What one audit found that no earlier audit had.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Live checkouts of the bench clients.
    pub live: u64,
    /// Held grants the cluster no longer had (durability).
    pub lost: Vec<Violation>,
    /// Live checkouts nobody was told of, or live again after their release
    /// (exactly-once).
    pub duplicated: Vec<Violation>,
    /// Every other violation (safety, fences).
    pub other: Vec<Violation>,
}

/// The audited clients: their ids, their history, and what earlier audits reported.
pub struct Clients {
    ids: BTreeSet<String>,
    history: Arc<History>,
    reported: Mutex<HashSet<Violation>>,
}

impl Clients {
    /// Clients `ids`, recording into `history`.
    pub fn new(ids: Vec<String>, history: Arc<History>) -> Clients {
        Clients { ids: ids.into_iter().collect(), history, reported: Mutex::default() }
    }

    /// Releases that got no definite answer: their checkouts may still be live.
    pub fn unsure_releases(&self) -> u64 {
        self.count(|e| matches!(e, Event::Released { outcome: Outcome::Unknown(_), .. }))
    }

    /// Checkouts that failed without an answer: the cluster may have granted them.
    pub fn abandoned_checkouts(&self) -> u64 {
        self.count(|e| matches!(e, Event::Unknown { .. }))
    }

    fn count(&self, which: impl Fn(&Event) -> bool) -> u64 {
        self.history.entries().iter().filter(|e| which(&e.event)).count() as u64
    }
}

/// Reads every live checkout (linearizably) into the history and checks it; what no
/// earlier audit reported.
pub async fn audit(reader: &Client, clients: &Clients) -> Result<Audit, String> {
    let features = reader
        .features(Consistency::Linearizable)
        .await
        .map_err(|e| format!("cannot read features: {e}"))?;
    let invoked = clients.history.now();
    let live = live_checkouts(reader).await?;
    let checkouts: Vec<LiveCheckout> = live.iter().map(LiveCheckout::of).collect();
    let ours = checkouts.iter().filter(|c| clients.ids.contains(&c.client)).count() as u64;
    let snapshot = Event::Snapshot { node: 0, invoked, linearizable: true, checkouts };
    clients.history.record(snapshot);
    let checks = Checks { capacity: Capacity::of(&features), ..Checks::default() };
    let report = Report::check(&clients.history.entries(), &checks);
    let mut reported = clients.reported.lock().unwrap_or_else(|p| p.into_inner());
    let mut audit = Audit { live: ours, ..Audit::default() };
    for violation in report.violations {
        if !reported.insert(violation.clone()) {
            continue;
        }
        match violation.property {
            Property::Durability => audit.lost.push(violation),
            Property::ExactlyOnce => audit.duplicated.push(violation),
            _ => audit.other.push(violation),
        }
    }
    Ok(audit)
}

/// Every live checkout, read linearizably page by page.
pub async fn live_checkouts(reader: &Client) -> Result<Vec<Checkout>, String> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let query = CheckoutQuery {
            after,
            limit: Some(PAGE),
            consistency: Some(Consistency::Linearizable),
            ..Default::default()
        };
        let page =
            reader.checkouts(query).await.map_err(|e| format!("cannot list checkouts: {e}"))?;
        let full = page.len() as u64 >= PAGE;
        after = page.last().map(|c| c.id.0);
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// Tokens in use of `features`, read linearizably.
pub async fn tokens_in_use(reader: &Client, features: &[FeatureName]) -> Result<u64, String> {
    let status = reader
        .features(Consistency::Linearizable)
        .await
        .map_err(|e| format!("cannot read features: {e}"))?;
    Ok(status.iter().filter(|f| features.contains(&f.feature)).map(|f| f.in_use).sum())
}
