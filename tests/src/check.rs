//! The four properties a fault test checks against its [`History`](crate::history::History).
//!
//! The checkers read the entries only; each returns the [`Violation`]s it found:
//!
//! - [`check_safety`]: at no moment do the tokens the clients believe they hold exceed a
//!   pool's cap or a feature's total, and no snapshot of the cluster shows more;
//! - [`check_durability`]: a checkout a client holds and renews is never lost on the
//!   server (its lease guard never hears "expired", "unknown" or "gone", a release never
//!   answers "gone") and every snapshot taken while a client held it lists it;
//! - [`check_exactly_once`]: no checkout id or fence is granted twice, and the cluster
//!   never holds more checkouts of a client that the client did not get than the client
//!   has requests whose answer it never got;
//! - [`check_liveness`]: every heal is followed, within the bound, by a successful probe
//!   (a leader, and a checkout and release through it), and checkouts are granted after
//!   the last heal.
//!
//! [`Report::check`] runs all four. The unit tests below feed each checker a history that
//! breaks its property, so a checker that cannot fail would be noticed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use lsm_core::FeatureStatus;

use crate::history::{Entry, Event, Loss, Micros, Outcome, Tokens, micros};

/// The property a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Property {
    /// Tokens held never exceed a cap or a total.
    Safety,
    /// An acknowledged, renewed checkout stays live until it ends.
    Durability,
    /// A retried request never checks out twice.
    ExactlyOnce,
    /// After faults heal, the cluster serves within a bound.
    Liveness,
}

/// One broken property, with the moment and the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The property.
    pub property: Property,
    /// When (microseconds since the start).
    pub at: Micros,
    /// What happened.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at {:.3} s: {}", self.property, self.at as f64 / 1e6, self.what)
    }
}

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
struct Holding {
    client: String,
    id: u64,
    items: Vec<Tokens>,
    start: Micros,
    end: Option<Micros>,
}

fn holdings(entries: &[Entry]) -> Vec<Holding> {
    let mut held: Vec<Holding> = Vec::new();
    let mut open: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for entry in entries {
        match &entry.event {
            Event::Granted { client, id, items, .. } => {
                open.insert((client.clone(), *id), held.len());
                held.push(Holding {
                    client: client.clone(),
                    id: *id,
                    items: items.clone(),
                    start: entry.at,
                    end: None,
                });
            }
            Event::Release { client, id } | Event::Lost { client, id, .. } => {
                if let Some(i) = open.remove(&(client.clone(), *id)) {
                    held[i].end = Some(entry.at);
                }
            }
            _ => {}
        }
    }
    held
}

/// Safety: the tokens clients believe they hold, at every moment, and the tokens every
/// snapshot shows, stay within every pool's cap and every feature's total.
pub fn check_safety(entries: &[Entry], capacity: &Capacity) -> Vec<Violation> {
    let mut violations = Vec::new();
    // A sweep over grant and end times; at equal times ends go first (intervals are
    // half-open).
    let mut points: Vec<(Micros, bool, usize)> = Vec::new();
    let held = holdings(entries);
    for (i, h) in held.iter().enumerate() {
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
                violations.push(Violation {
                    property: Property::Safety,
                    at,
                    what: format!(
                        "clients believe they hold {used} tokens of {what}, above its {limit}: {}",
                        who.join(", ")
                    ),
                });
            }
        }
    }
    for entry in entries {
        if let Event::Snapshot { node, checkouts, .. } = &entry.event {
            for (what, used, limit) in excesses(checkouts.iter().flat_map(|c| &c.items), capacity) {
                violations.push(Violation {
                    property: Property::Safety,
                    at: entry.at,
                    what: format!(
                        "node {node} has {used} tokens of {what} checked out, above its {limit}"
                    ),
                });
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
        let cap = capacity.caps.get(&(feature.to_string(), pool.to_string()));
        if let Some(&cap) = cap
            && used > cap
        {
            out.push((format!("{feature}/{pool}"), used, format!("cap of {cap}")));
        }
    }
    for (feature, used) in per_feature {
        if let Some(&total) = capacity.totals.get(feature)
            && used > total
        {
            out.push((feature.to_string(), used, format!("total of {total}")));
        }
    }
    out
}

/// Durability: a held checkout is never lost on the server while its client renews it,
/// its release never finds it gone, and every snapshot taken entirely while it was held
/// lists it.
pub fn check_durability(entries: &[Entry]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut lost: BTreeSet<(String, u64)> = BTreeSet::new();
    for entry in entries {
        match &entry.event {
            Event::Lost { client, id, loss } => {
                lost.insert((client.clone(), *id));
                if *loss != Loss::Unreachable {
                    violations.push(Violation {
                        property: Property::Durability,
                        at: entry.at,
                        what: format!(
                            "checkout #{id} of {client} was lost on the server while its client renewed it on time: {loss:?}"
                        ),
                    });
                }
            }
            Event::Released { client, id, outcome: Outcome::Refused(code) }
                if !lost.contains(&(client.clone(), *id)) =>
            {
                violations.push(Violation {
                    property: Property::Durability,
                    at: entry.at,
                    what: format!(
                        "the release of checkout #{id} of {client}, held and renewed, was refused: {code}"
                    ),
                });
            }
            _ => {}
        }
    }
    // Snapshots in the order they were answered; for each holding, the snapshots
    // answered after it began whose read was also sent after it began, and answered
    // before it ended.
    let snapshots: Vec<(Micros, u64, Micros, BTreeSet<u64>)> = (entries.iter())
        .filter_map(|e| match &e.event {
            Event::Snapshot { node, invoked, checkouts } => {
                Some((e.at, *node, *invoked, checkouts.iter().map(|c| c.id).collect()))
            }
            _ => None,
        })
        .collect();
    for h in holdings(entries) {
        let first = snapshots.partition_point(|(at, ..)| *at <= h.start);
        for (at, node, invoked, listed) in &snapshots[first..] {
            if h.end.is_some_and(|end| *at >= end) {
                break;
            }
            if *invoked > h.start && !listed.contains(&h.id) {
                violations.push(Violation {
                    property: Property::Durability,
                    at: *at,
                    what: format!(
                        "a snapshot through node {node} (sent at {:.3} s) misses checkout #{} of {}, held since {:.3} s",
                        *invoked as f64 / 1e6,
                        h.id,
                        h.client,
                        h.start as f64 / 1e6
                    ),
                });
            }
        }
    }
    violations.sort_by_key(|v| v.at);
    violations
}

/// Exactly-once: no checkout id or fence is granted twice, and for every client, the
/// checkouts the cluster showed that the client was never told of are no more than the
/// client's checkout requests that got no definite answer (or none yet: a history may be
/// checked while requests are in flight).
pub fn check_exactly_once(entries: &[Entry]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut ids: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    let mut fences: BTreeMap<u64, u64> = BTreeMap::new();
    let mut known: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut unanswered: BTreeMap<&str, u64> = BTreeMap::new();
    let mut clients: BTreeSet<&str> = BTreeSet::new();
    let mut in_flight: BTreeSet<(&str, u64)> = BTreeSet::new();
    for entry in entries {
        match &entry.event {
            Event::Invoke { client, op, .. } => {
                clients.insert(client);
                in_flight.insert((client, *op));
            }
            Event::Granted { client, op, .. }
            | Event::Refused { client, op, .. }
            | Event::Unknown { client, op, .. } => {
                in_flight.remove(&(client.as_str(), *op));
            }
            _ => {}
        }
    }
    for (client, _) in in_flight {
        *unanswered.entry(client).or_default() += 1;
    }
    for entry in entries {
        match &entry.event {
            Event::Granted { client, op, id, fence, .. } => {
                known.entry(client).or_default().insert(*id);
                if let Some((other, other_op)) = ids.insert(*id, (client.clone(), *op)) {
                    violations.push(Violation {
                        property: Property::ExactlyOnce,
                        at: entry.at,
                        what: format!(
                            "checkout #{id} was granted twice: to {other} (op {other_op}) and to {client} (op {op})"
                        ),
                    });
                }
                if let Some(other) = fences.insert(*fence, *id) {
                    violations.push(Violation {
                        property: Property::ExactlyOnce,
                        at: entry.at,
                        what: format!("fence {fence} was granted twice: #{other} and #{id}"),
                    });
                }
            }
            Event::Unknown { client, id: Some(id), .. } => {
                known.entry(client).or_default().insert(*id);
            }
            Event::Unknown { client, id: None, .. } => {
                *unanswered.entry(client).or_default() += 1;
            }
            _ => {}
        }
    }
    let mut strangers: BTreeMap<&str, (BTreeSet<u64>, Micros)> = BTreeMap::new();
    for entry in entries {
        let Event::Snapshot { checkouts, .. } = &entry.event else { continue };
        for c in checkouts {
            let client = c.client.as_str();
            let is_known = known.get(client).is_some_and(|ids| ids.contains(&c.id));
            if clients.contains(client) && !is_known {
                let (ids, first) = strangers.entry(client).or_insert((BTreeSet::new(), entry.at));
                if ids.is_empty() {
                    *first = entry.at;
                }
                ids.insert(c.id);
            }
        }
    }
    for (client, (ids, first)) in strangers {
        let allowed = unanswered.get(client).copied().unwrap_or(0);
        if ids.len() as u64 > allowed {
            violations.push(Violation {
                property: Property::ExactlyOnce,
                at: first,
                what: format!(
                    "the cluster held checkouts {ids:?} of {client}, which the client never got, but only {allowed} of its requests went unanswered"
                ),
            });
        }
    }
    violations
}

/// Liveness: every heal is followed by a successful probe within `bound`, no probe
/// fails, and some checkout is granted after the last heal.
pub fn check_liveness(entries: &[Entry], bound: Duration) -> Vec<Violation> {
    let mut violations = Vec::new();
    let bound = micros(bound);
    for (i, entry) in entries.iter().enumerate() {
        match &entry.event {
            Event::Heal { what } => {
                let served = entries[i + 1..].iter().find_map(|e| match &e.event {
                    Event::Probe { ok: true, .. } => Some(e.at),
                    _ => None,
                });
                if served.is_none_or(|at| at > entry.at + bound) {
                    violations.push(Violation {
                        property: Property::Liveness,
                        at: entry.at,
                        what: format!(
                            "after healing {what}, no probe succeeded within {:.1} s",
                            bound as f64 / 1e6
                        ),
                    });
                }
            }
            Event::Probe { ok: false, detail } => violations.push(Violation {
                property: Property::Liveness,
                at: entry.at,
                what: format!("a probe failed: {detail}"),
            }),
            _ => {}
        }
    }
    let last_heal = entries.iter().rposition(|e| matches!(e.event, Event::Heal { .. }));
    if let Some(last) = last_heal {
        let granted = entries[last..].iter().any(|e| matches!(e.event, Event::Granted { .. }));
        if !granted {
            violations.push(Violation {
                property: Property::Liveness,
                at: entries[last].at,
                what: "no checkout was granted after the last heal".into(),
            });
        }
    }
    violations
}

/// What a history holds, and every violation of the four properties.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Counts of what happened, by kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// Every violation found, by property and time.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Runs every checker over `entries`.
    pub fn check(entries: &[Entry], capacity: &Capacity, liveness_bound: Duration) -> Report {
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for entry in entries {
            let kind = match &entry.event {
                Event::Invoke { .. } => "checkouts asked",
                Event::Granted { .. } => "granted",
                Event::Refused { .. } => "refused",
                Event::Unknown { .. } => "unanswered",
                Event::Renewed { .. } => "renewals",
                Event::Lost { loss: Loss::Unreachable, .. } => "leases given up (unreachable)",
                Event::Lost { .. } => "leases lost on the server",
                Event::Release { .. } => "releases",
                Event::Released { .. } => continue,
                Event::Snapshot { .. } => "snapshots",
                Event::Fault { .. } => "faults",
                Event::Heal { .. } => "heals",
                Event::Probe { .. } => "probes",
            };
            *counts.entry(kind).or_default() += 1;
        }
        let mut violations = check_safety(entries, capacity);
        violations.extend(check_durability(entries));
        violations.extend(check_exactly_once(entries));
        violations.extend(check_liveness(entries, liveness_bound));
        violations.sort_by_key(|v| (v.property, v.at));
        Report { counts, violations }
    }

    /// True when no property was broken.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many events of `kind` (one of the keys of [`Report::counts`]).
    pub fn count(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: Vec<String> = self.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        writeln!(f, "{}", counts.join(", "))?;
        if self.violations.is_empty() {
            return writeln!(f, "no violations");
        }
        writeln!(f, "{} violations:", self.violations.len())?;
        for v in self.violations.iter().take(50) {
            writeln!(f, "  {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::LiveCheckout;

    fn tokens(feature: &str, pool: &str, n: u64) -> Vec<Tokens> {
        vec![Tokens { feature: feature.into(), pool: pool.into(), tokens: n }]
    }

    fn capacity() -> Capacity {
        Capacity {
            totals: BTreeMap::from([("dyna".into(), 10)]),
            caps: BTreeMap::from([
                (("dyna".into(), "smp".into()), 6),
                (("dyna".into(), "mpp".into()), 10),
            ]),
        }
    }

    /// A small history builder: events at given milliseconds.
    #[derive(Default)]
    struct Script(Vec<Entry>);

    impl Script {
        fn at(mut self, ms: u64, event: Event) -> Script {
            self.0.push(Entry { at: ms * 1000, event });
            self
        }
        fn invoke(self, ms: u64, client: &str, op: u64) -> Script {
            self.at(ms, Event::Invoke { client: client.into(), op, job: "job".into() })
        }
        fn grant(self, ms: u64, client: &str, op: u64, id: u64, items: Vec<Tokens>) -> Script {
            self.at(ms, Event::Granted { client: client.into(), op, id, fence: id, items })
        }
        fn release(self, ms: u64, client: &str, id: u64) -> Script {
            self.at(ms, Event::Release { client: client.into(), id }).at(
                ms + 1,
                Event::Released { client: client.into(), id, outcome: Outcome::Released },
            )
        }
        fn snapshot(self, sent: u64, ms: u64, live: &[(u64, &str, Vec<Tokens>)]) -> Script {
            let checkouts = live
                .iter()
                .map(|(id, client, items)| LiveCheckout {
                    id: *id,
                    client: client.to_string(),
                    items: items.clone(),
                })
                .collect();
            self.at(ms, Event::Snapshot { node: 1, invoked: sent * 1000, checkouts })
        }
        fn check(&self) -> Report {
            Report::check(&self.0, &capacity(), Duration::from_secs(5))
        }
    }

    fn properties(report: &Report) -> Vec<Property> {
        report.violations.iter().map(|v| v.property).collect()
    }

    /// Two clients hold 4 SMP tokens each, one after the other, and are seen doing so.
    fn good() -> Script {
        Script::default()
            .invoke(0, "a", 1)
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 4))
            .snapshot(20, 30, &[(1, "a", tokens("dyna", "smp", 4))])
            .release(40, "a", 1)
            .invoke(50, "b", 1)
            .grant(60, "b", 1, 2, tokens("dyna", "smp", 4))
            .at(70, Event::Renewed { client: "b".into(), id: 2, renewals: 1 })
            .at(80, Event::Lost { client: "b".into(), id: 2, loss: Loss::Unreachable })
            .at(90, Event::Fault { what: "kill".into() })
            .at(100, Event::Heal { what: "kill".into() })
            .at(200, Event::Probe { ok: true, detail: "served".into() })
            .invoke(210, "a", 2)
            .grant(220, "a", 2, 3, tokens("dyna", "mpp", 10))
            .release(230, "a", 3)
    }

    #[test]
    fn a_good_history_passes() {
        let report = good().check();
        assert!(report.ok(), "{report}");
        assert_eq!(report.count("granted"), 3);
    }

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
            .at(15, Event::Lost { client: "a".into(), id: 1, loss: Loss::Unreachable })
            .grant(20, "b", 1, 2, tokens("dyna", "smp", 6));
        assert!(handed_over.check().ok());
    }

    #[test]
    fn durability_fails_when_a_held_checkout_vanishes() {
        let expired =
            good().at(300, Event::Lost { client: "a".into(), id: 3, loss: Loss::Expired });
        // (#3 was released at 230: the loss of a released lease is still a loss report.)
        assert!(properties(&expired.check()).contains(&Property::Durability));
        let forgotten = Script::default().grant(10, "a", 1, 1, tokens("dyna", "smp", 1)).at(
            20,
            Event::Lost { client: "a".into(), id: 1, loss: Loss::Ended("unknown_checkout".into()) },
        );
        assert_eq!(properties(&forgotten.check()), [Property::Durability]);
        let gone = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .at(20, Event::Release { client: "a".into(), id: 1 })
            .at(
                30,
                Event::Released {
                    client: "a".into(),
                    id: 1,
                    outcome: Outcome::Refused("gone".into()),
                },
            );
        assert_eq!(properties(&gone.check()), [Property::Durability]);
        // A snapshot taken while a held it does not list it.
        let missing = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .snapshot(20, 30, &[])
            .release(40, "a", 1);
        assert_eq!(properties(&missing.check()), [Property::Durability]);
        // A snapshot sent before the grant arrived, or answered after the release began,
        // may miss it.
        let racing = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .snapshot(5, 15, &[])
            .snapshot(35, 45, &[])
            .release(40, "a", 1);
        assert!(racing.check().ok(), "{}", racing.check());
        // After an unreachable loss, a refused release is expected.
        let expired_late = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .at(20, Event::Lost { client: "a".into(), id: 1, loss: Loss::Unreachable })
            .at(30, Event::Release { client: "a".into(), id: 1 })
            .at(
                40,
                Event::Released {
                    client: "a".into(),
                    id: 1,
                    outcome: Outcome::Refused("gone".into()),
                },
            );
        assert!(expired_late.check().ok());
    }

    #[test]
    fn exactly_once_fails_on_a_second_checkout_or_a_reused_id() {
        // The cluster holds two checkouts of a, which got one answer for one request.
        let twice = Script::default()
            .invoke(0, "a", 1)
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .snapshot(
                20,
                30,
                &[(1, "a", tokens("dyna", "smp", 1)), (2, "a", tokens("dyna", "smp", 1))],
            )
            .release(40, "a", 1);
        assert_eq!(properties(&twice.check()), [Property::ExactlyOnce]);
        // The same, but a had a request that went unanswered: that may be #2.
        let unanswered = Script::default()
            .invoke(0, "a", 1)
            .at(5, Event::Unknown { client: "a".into(), op: 1, id: None, error: "timeout".into() })
            .invoke(6, "a", 2)
            .grant(10, "a", 2, 1, tokens("dyna", "smp", 1))
            .snapshot(
                20,
                30,
                &[(1, "a", tokens("dyna", "smp", 1)), (2, "a", tokens("dyna", "smp", 1))],
            )
            .release(40, "a", 1);
        assert!(unanswered.check().ok(), "{}", unanswered.check());
        // A request still in flight may be the one the snapshot shows.
        let in_flight = Script::default().invoke(0, "a", 1).snapshot(
            20,
            30,
            &[(1, "a", tokens("dyna", "smp", 1))],
        );
        assert!(in_flight.check().ok(), "{}", in_flight.check());
        // ... but not for two of them.
        let more = unanswered.snapshot(50, 60, &[(3, "a", tokens("dyna", "smp", 1))]);
        assert_eq!(properties(&more.check()), [Property::ExactlyOnce]);
        // One id granted to two requests, and a fence reused.
        let reused = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .release(20, "a", 1)
            .grant(30, "b", 1, 1, tokens("dyna", "smp", 1));
        let report = reused.check();
        assert_eq!(properties(&report), [Property::ExactlyOnce, Property::ExactlyOnce], "{report}");
    }

    #[test]
    fn liveness_fails_without_a_timely_probe_or_progress() {
        let slow = Script::default()
            .at(0, Event::Heal { what: "partition".into() })
            .at(6000, Event::Probe { ok: true, detail: "served".into() })
            .grant(6001, "a", 1, 1, tokens("dyna", "smp", 1));
        assert_eq!(properties(&slow.check()), [Property::Liveness]);
        let failed = Script::default()
            .at(0, Event::Heal { what: "partition".into() })
            .at(100, Event::Probe { ok: false, detail: "no leader".into() })
            .at(200, Event::Probe { ok: true, detail: "served".into() })
            .grant(300, "a", 1, 1, tokens("dyna", "smp", 1));
        assert_eq!(properties(&failed.check()), [Property::Liveness]);
        let stuck = Script::default()
            .grant(0, "a", 1, 1, tokens("dyna", "smp", 1))
            .at(10, Event::Heal { what: "partition".into() })
            .at(20, Event::Probe { ok: true, detail: "served".into() });
        assert_eq!(properties(&stuck.check()), [Property::Liveness]);
    }
}
