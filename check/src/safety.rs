//! Safety: at no moment do the tokens the clients believe they hold exceed a pool's cap
//! or a feature's total, and no snapshot of the cluster shows more.
//!
//! What the clients believe, not only what the servers say: a server that frees tokens
//! while their holder still runs its solver is as bad as one that over-grants. A client
//! believes it holds a checkout from its grant until it starts to give it back or its
//! lease guard reports the lease lost ([`holdings`]). A pool or feature the license does
//! not have has a cap of zero.

use std::collections::{BTreeMap, BTreeSet};

use lsm_core::FeatureStatus;

use crate::history::{Entry, Event, Micros, Tokens};
use crate::report::{Property, Violation};

/// Every feature's total and every pool's cap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Feature to its total.
    pub totals: BTreeMap<String, u64>,
    /// (feature, pool) to the pool's cap.
    pub caps: BTreeMap<(String, String), u64>,
}

impl Capacity {
    /// The capacity the cluster reports.
    pub fn of(features: &[FeatureStatus]) -> Capacity {
        let mut capacity = Capacity::default();
        for f in features {
            let feature = f.feature.to_string();
            capacity.totals.insert(feature.clone(), f.tokens_total);
            for p in &f.pools {
                capacity.caps.insert((feature.clone(), p.pool.to_string()), p.cap);
            }
        }
        capacity
    }
}

/// A checkout as its client saw it: held from its grant until its release began or its
/// loss was reported (`end`, `None` while still held when the history ends).
#[derive(Clone, Debug)]
pub struct Holding {
    /// The client.
    pub client: String,
    /// The checkout.
    pub id: u64,
    /// What it holds.
    pub items: Vec<Tokens>,
    /// When the grant arrived.
    pub start: Micros,
    /// When the client stopped counting on it.
    pub end: Option<Micros>,
}

/// Every checkout the clients of `entries` held, in grant order.
pub fn holdings(entries: &[Entry]) -> Vec<Holding> {
    let mut held: Vec<Holding> = Vec::new();
    let mut open: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for entry in entries {
        match &entry.event {
            Event::Granted { client, id, items, .. } => {
                open.insert((client, *id), held.len());
                held.push(Holding {
                    client: client.clone(),
                    id: *id,
                    items: items.clone(),
                    start: entry.at,
                    end: None,
                });
            }
            Event::Release { client, id, .. } | Event::Lost { client, id, .. } => {
                if let Some(i) = open.remove(&(client.as_str(), *id)) {
                    held[i].end = Some(entry.at);
                }
            }
            _ => {}
        }
    }
    held
}

/// Safety (see the module docs): every excess, once per pool or feature for the
/// clients' beliefs, and per snapshot.
pub fn check(entries: &[Entry], capacity: &Capacity) -> Vec<Violation> {
    let mut violations = Vec::new();
    // A sweep over grant and end times; at equal times ends go first (intervals are
    // half-open).
    let mut points: Vec<(Micros, bool, usize)> = Vec::new();
    let held = holdings(entries);
    for (i, h) in held.iter().enumerate() {
        if h.end == Some(h.start) {
            // Released within the microsecond it arrived: held for no time at all.
            continue;
        }
        points.push((h.start, true, i));
        if let Some(end) = h.end {
            points.push((end, false, i));
        }
    }
    points.sort_by_key(|&(at, starts, i)| (at, starts, i));
    let mut current: BTreeSet<usize> = BTreeSet::new();
    let mut over: BTreeSet<String> = BTreeSet::new();
    for (at, starts, i) in points {
        if !starts {
            current.remove(&i);
            continue;
        }
        current.insert(i);
        let holders: Vec<&Holding> = current.iter().map(|&i| &held[i]).collect();
        for (what, used, limit) in excesses(holders.iter().flat_map(|h| &h.items), capacity) {
            if over.insert(what.clone()) {
                let feature = what.split('/').next().unwrap_or_default();
                let who: Vec<String> = (holders.iter())
                    .filter(|h| h.items.iter().any(|t| t.feature == feature))
                    .map(|h| format!("#{} ({})", h.id, h.client))
                    .collect();
                violations.push(Violation::new(
                    Property::Safety,
                    at,
                    format!(
                        "clients believe they hold {used} tokens of {what}, above its {limit}: {}",
                        who.join(", ")
                    ),
                ));
            }
        }
    }
    for entry in entries {
        if let Event::Snapshot { node, checkouts, .. } = &entry.event {
            for (what, used, limit) in excesses(checkouts.iter().flat_map(|c| &c.items), capacity) {
                violations.push(Violation::new(
                    Property::Safety,
                    entry.at,
                    format!(
                        "node {node} has {used} tokens of {what} checked out, above its {limit}"
                    ),
                ));
            }
        }
    }
    violations
}

/// The features and pools whose tokens in `items` exceed the capacity: what, how many,
/// and the limit.
fn excesses<'a>(
    items: impl Iterator<Item = &'a Tokens>,
    capacity: &Capacity,
) -> Vec<(String, u64, String)> {
    let mut per_feature: BTreeMap<&str, u64> = BTreeMap::new();
    let mut per_pool: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for t in items {
        *per_feature.entry(&t.feature).or_default() += t.tokens;
        *per_pool.entry((&t.feature, &t.pool)).or_default() += t.tokens;
    }
    let mut out = Vec::new();
    for ((feature, pool), used) in per_pool {
        let cap = capacity.caps.get(&(feature.to_string(), pool.to_string())).copied();
        if used > cap.unwrap_or(0) {
            let limit = cap.map_or("cap of 0 (no such pool)".into(), |cap| format!("cap of {cap}"));
            out.push((format!("{feature}/{pool}"), used, limit));
        }
    }
    for (feature, used) in per_feature {
        let total = capacity.totals.get(feature).copied();
        if used > total.unwrap_or(0) {
            let limit =
                total.map_or("total of 0 (no such feature)".into(), |t| format!("total of {t}"));
            out.push((feature.to_string(), used, limit));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::Property;
    use crate::history::Loss;
    use crate::script::{Script, checks, properties, tokens};

    #[test]
    fn safety_fails_when_beliefs_overlap_beyond_a_cap_or_total() {
        // b is granted while a still believes it holds: 8 SMP tokens at once, cap 6.
        let over_cap = Script::default()
            .invoke(0, "a", 1)
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 4))
            .invoke(11, "b", 1)
            .grant(20, "b", 1, 2, tokens("dyna", "smp", 4))
            .release(30, "a", 1)
            .release(40, "b", 2);
        let report = over_cap.check();
        assert_eq!(properties(&report), [Property::Safety], "{report}");
        assert!(report.violations[0].what.contains("dyna/smp"), "{report}");
        // 6 SMP + 6 MPP: both pools within their caps, the feature over its total.
        let over_total = Script::default().grant(10, "a", 1, 1, tokens("dyna", "smp", 6)).grant(
            20,
            "b",
            1,
            2,
            tokens("dyna", "mpp", 6),
        );
        let report = over_total.check();
        assert_eq!(properties(&report), [Property::Safety], "{report}");
        assert!(report.violations[0].what.contains("total of 10"), "{report}");
        // A snapshot of the cluster over a cap.
        let seen = Script::default().snapshot(0, 5, &[(1, "a", tokens("dyna", "smp", 7))]);
        assert_eq!(properties(&seen.check()), [Property::Safety]);
        // A lost lease ends the belief: no overlap.
        let handed_over = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 6))
            .lost(15, "a", 1, Loss::Unreachable)
            .grant(20, "b", 1, 2, tokens("dyna", "smp", 6));
        assert!(handed_over.check().ok());
        // A grant given back within the microsecond it arrived holds nothing for no time.
        let instant = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 6))
            .release(10, "a", 1)
            .grant(20, "b", 1, 2, tokens("dyna", "smp", 6));
        assert!(instant.check().ok(), "{}", instant.check());
        // A pool the license does not have holds nothing.
        let unknown = Script::default().grant(10, "a", 1, 1, tokens("dyna", "gpu", 1));
        let report = unknown.check();
        assert_eq!(properties(&report), [Property::Safety], "{report}");
        assert!(report.violations[0].what.contains("no such pool"), "{report}");
    }

    #[test]
    fn beliefs_over_a_cap_or_a_total_are_caught() {
        // abaqus: 8 tokens, pools a and b capped at 5 (the simulation's license).
        let mut checks = checks();
        checks.capacity.totals = BTreeMap::from([("abaqus".into(), 8)]);
        checks.capacity.caps = BTreeMap::from([
            (("abaqus".into(), "a".into()), 5),
            (("abaqus".into(), "b".into()), 5),
        ]);
        checks.liveness = None;
        let fits = Script::default().grant(1, "c1", 1, 1, tokens("abaqus", "a", 3)).grant(
            2,
            "c2",
            1,
            2,
            tokens("abaqus", "b", 4),
        );
        assert!(fits.check_with(&checks).ok());
        let report =
            fits.clone().grant(3, "c3", 1, 3, tokens("abaqus", "a", 3)).check_with(&checks);
        // (6 tokens of pool a, and 10 of the feature.)
        assert_eq!(properties(&report), [Property::Safety, Property::Safety], "{report}");
        assert!(report.violations[0].what.contains("abaqus/a"), "{report}");
        assert!(report.violations[0].what.contains("cap of 5"), "{report}");
        let report = fits
            .grant(3, "c3", 1, 3, tokens("abaqus", "b", 1))
            .grant(4, "c4", 1, 4, tokens("abaqus", "a", 1))
            .check_with(&checks);
        assert_eq!(properties(&report), [Property::Safety], "{report}");
        assert!(report.violations[0].what.contains("total of 8"), "{report}");
    }
}
