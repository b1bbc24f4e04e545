//! Lost and duplicated grants: what the clients believe they hold against what the
//! cluster says, read linearizably.
//!
//! The clients keep running while the audit reads, so the audit takes each client's
//! [`View`] before and after its read and only counts what no interleaving explains:
//!
//! - **lost**: the client held checkout X from before the read to after it and had not
//!   started releasing it, yet X is not live. (A release that answers `gone`,
//!   `unknown_checkout` or `not_owner` is a lost grant too; the clients count those.)
//! - **duplicated**: a live checkout of the client that it does not believe it holds. It
//!   is explained if the client held it before or after the read, released it during the
//!   read, is unsure of it (its release got no answer), or may yet receive it (a checkout
//!   in flight after the read, or one it gave up on without an answer; one each). A live
//!   checkout whose release was acknowledged before the read started is never explained.
//!
//! After the run, with every client stopped, the same check is exact, and every live
//! checkout of a bench client is left over.

use std::collections::BTreeMap;
use std::sync::Arc;

use lsm_client::Client;
use lsm_client::api::{CheckoutQuery, Consistency};
use lsm_core::{Checkout, FeatureName};
use serde::Serialize;

use crate::load::workload::{LostGrant, View, ViewCell};

/// Checkouts one read asks for (the server's default `max_query_rows`).
const PAGE: u64 = 10_000;

/// A live checkout the client that owns it does not believe it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    /// The client.
    pub client: String,
    /// The checkout.
    pub id: u64,
    /// Why it cannot be explained.
    pub why: String,
}

/// What one audit found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Live checkouts of the bench clients.
    pub live: u64,
    /// Held grants the cluster no longer has.
    pub lost: Vec<LostGrant>,
    /// Live checkouts nobody believes they hold.
    pub duplicated: Vec<Duplicate>,
    /// Live checkouts explained only by a request still in flight or given up on.
    pub unconfirmed: u64,
}

/// The audited clients: their ids and views, in order.
pub struct Clients {
    ids: BTreeMap<String, usize>,
    views: Vec<Arc<ViewCell>>,
}

impl Clients {
    /// Clients `ids[i]` with views `views[i]`.
    pub fn new(ids: Vec<String>, views: Vec<Arc<ViewCell>>) -> Clients {
        let ids = ids.into_iter().enumerate().map(|(i, id)| (id, i)).collect();
        Clients { ids, views }
    }

    /// Every client's view, in order.
    pub fn views(&self) -> &[Arc<ViewCell>] {
        &self.views
    }

    fn snapshot(&self) -> Vec<View> {
        self.views.iter().map(|v| v.get()).collect()
    }
}

/// Reads every live checkout (linearizably) between two snapshots of the views and
/// compares.
pub async fn audit(reader: &Client, clients: &Clients) -> Result<Audit, String> {
    let before = clients.snapshot();
    let live = live_checkouts(reader).await?;
    let after = clients.snapshot();
    Ok(compare(clients, &before, &live, &after))
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

/// The comparison itself (see the module docs).
pub fn compare(clients: &Clients, before: &[View], live: &[Checkout], after: &[View]) -> Audit {
    let mut mine: Vec<Vec<u64>> = vec![Vec::new(); before.len()];
    for checkout in live {
        if let Some(&i) = clients.ids.get(checkout.client.as_str()) {
            mine[i].push(checkout.id.0);
        }
    }
    let mut audit = Audit::default();
    let name = |i: usize| {
        clients.ids.iter().find(|(_, at)| **at == i).map_or_else(String::new, |(id, _)| id.clone())
    };
    for (i, ids) in mine.iter().enumerate() {
        let (b, a) = (&before[i], &after[i]);
        audit.live += ids.len() as u64;
        if let (Some(x), Some(y)) = (b.held, a.held)
            && x == y
            && !a.releasing
            && !ids.contains(&x)
        {
            audit.lost.push(LostGrant {
                client: name(i),
                id: x,
                answer: "held by the client, not live in a linearizable read".into(),
            });
        }
        let mut unexplained = Vec::new();
        for &id in ids {
            let unsure = a.unsure.contains(&id);
            // Without a checkout given up on, every id below the last release was
            // granted to this client and released (ids grow), so it must not be live.
            if id <= b.last_released && !unsure && a.abandoned == 0 {
                audit.duplicated.push(Duplicate {
                    client: name(i),
                    id,
                    why: format!(
                        "live after its release was acknowledged (released up to #{})",
                        b.last_released
                    ),
                });
            } else if b.held == Some(id) || a.held == Some(id) || id <= a.last_released || unsure {
                continue;
            } else {
                unexplained.push(id);
            }
        }
        let allowed = a.abandoned + u64::from(a.checkout_in_flight);
        if unexplained.len() as u64 <= allowed {
            audit.unconfirmed += unexplained.len() as u64;
        } else {
            for id in unexplained {
                audit.duplicated.push(Duplicate {
                    client: name(i),
                    id,
                    why: format!(
                        "live, never received by the client ({} checkouts in flight or \
                         given up on could explain {allowed})",
                        ids.len()
                    ),
                });
            }
        }
    }
    audit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout(client: &str, id: u64) -> Checkout {
        Checkout {
            id: lsm_core::CheckoutId(id),
            fence: id,
            client: client.parse().unwrap(),
            user: "u".parse().unwrap(),
            host: "h".parse().unwrap(),
            job: None,
            items: Arc::from(Vec::new()),
            granted_at_ms: 0,
            lease_ttl_ms: 1_000,
            lease_expires_at_ms: 1_000,
            borrowed: false,
        }
    }

    fn clients(n: usize) -> Clients {
        let ids = (0..n).map(|i| format!("c{i}")).collect();
        Clients::new(ids, (0..n).map(|_| Arc::default()).collect())
    }

    fn view(held: Option<u64>, last_released: u64) -> View {
        View { held, last_released, ..View::default() }
    }

    #[test]
    fn what_the_clients_hold_is_live_and_nothing_else() {
        let c = clients(2);
        let views = [view(Some(7), 5), view(None, 6)];
        let live = [checkout("c0", 7), checkout("other", 8)];
        let audit = compare(&c, &views, &live, &views);
        assert_eq!(audit, Audit { live: 1, ..Audit::default() });
    }

    #[test]
    fn a_held_checkout_that_is_not_live_is_lost() {
        let c = clients(1);
        let views = [view(Some(7), 5)];
        let audit = compare(&c, &views, &[], &views);
        assert_eq!(audit.lost.len(), 1);
        assert_eq!(audit.lost[0].id, 7);
        // Released during the read: not lost.
        let releasing = [View { releasing: true, ..view(Some(7), 5) }];
        assert!(compare(&c, &views, &[], &releasing).lost.is_empty());
        let released = [view(None, 7)];
        assert!(compare(&c, &views, &[], &released).lost.is_empty());
    }

    #[test]
    fn a_checkout_live_after_its_release_was_acknowledged_is_duplicated() {
        let c = clients(1);
        let views = [view(None, 7)];
        let audit = compare(&c, &views, &[checkout("c0", 7)], &views);
        assert_eq!(audit.duplicated.len(), 1);
        assert!(audit.duplicated[0].why.contains("release"), "{:?}", audit.duplicated);
        // Unless its release got no answer.
        let unsure = [View { unsure: vec![7], ..view(None, 7) }];
        assert!(compare(&c, &unsure, &[checkout("c0", 7)], &unsure).duplicated.is_empty());
    }

    #[test]
    fn an_unknown_live_checkout_is_explained_only_by_a_request_in_flight() {
        let c = clients(1);
        let idle = [view(None, 5)];
        let live = [checkout("c0", 9)];
        assert_eq!(compare(&c, &idle, &live, &idle).duplicated.len(), 1);
        let in_flight = [View { checkout_in_flight: true, ..view(None, 5) }];
        let audit = compare(&c, &idle, &live, &in_flight);
        assert_eq!((audit.duplicated.len(), audit.unconfirmed), (0, 1));
        // One request explains one checkout, not two.
        let two = [checkout("c0", 9), checkout("c0", 10)];
        assert_eq!(compare(&c, &idle, &two, &in_flight).duplicated.len(), 2);
        // Granted and released during the read.
        assert!(compare(&c, &idle, &live, &[view(None, 9)]).duplicated.is_empty());
        // Granted during the read and still held.
        assert!(compare(&c, &idle, &live, &[view(Some(9), 5)]).duplicated.is_empty());
    }
}
