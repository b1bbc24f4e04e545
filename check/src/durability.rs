//! Durability: a checkout the cluster acknowledged stays live while its client holds it.
//!
//! Three kinds of evidence, each a violation on its own:
//!
//! - the client's lease guard reports the lease ended by the server (expired, revoked,
//!   unknown, gone) while the client renewed it on time: its guard gives up at its own
//!   deadline and reports `Unreachable` instead, and the server's lease outlives that
//!   deadline by a safety margin;
//! - a release begun while the client believed the lease valid is refused (the server
//!   did not find the checkout live) within the run's release window of being sent. A
//!   release answered later may rightly find the lease expired, since the client stopped
//!   renewing when it began to release: the window is the lease's safety margin where
//!   releases can take long (the simulation), and unbounded where they cannot;
//! - a linearizable snapshot sent after the grant arrived and answered before the client
//!   stopped counting on the checkout does not list it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::history::{Entry, Event, Loss, Micros, Outcome, micros};
use crate::report::{Property, Violation};
use crate::safety::holdings;

/// Durability (see the module docs), with releases answered within `release_window` of
/// being sent (`None`: at any time) held to finding their checkout live.
pub fn check(entries: &[Entry], release_window: Option<Duration>) -> Vec<Violation> {
    let window = release_window.map_or(Micros::MAX, micros);
    let mut violations = Vec::new();
    let mut lost: BTreeSet<(&str, u64)> = BTreeSet::new();
    let mut releases: BTreeMap<(&str, u64), (bool, Micros)> = BTreeMap::new();
    for entry in entries {
        match &entry.event {
            Event::Lost { client, id, loss } => {
                lost.insert((client, *id));
                if *loss != Loss::Unreachable {
                    violations.push(Violation::new(
                        Property::Durability,
                        entry.at,
                        format!(
                            "checkout #{id} of {client} was lost on the server while its client renewed it on time: {loss:?}"
                        ),
                    ));
                }
            }
            Event::Release { client, id, believed } => {
                releases.insert((client, *id), (*believed, entry.at));
            }
            Event::Released { client, id, outcome: Outcome::Refused(code) } => {
                let key = (client.as_str(), *id);
                let (believed, sent) = releases.get(&key).copied().unwrap_or((true, entry.at));
                let took = entry.at.saturating_sub(sent);
                if believed && !lost.contains(&key) && took <= window {
                    violations.push(Violation::new(
                        Property::Durability,
                        entry.at,
                        format!(
                            "the release of checkout #{id} of {client}, held and renewed, was refused {:.3} s after it was sent: {code}",
                            took as f64 / 1e6
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    // Linearizable snapshots in the order they were answered; for each holding, the
    // snapshots answered after it began whose read was also sent after it began, and
    // answered before it ended.
    let snapshots: Vec<(Micros, u64, Micros, BTreeSet<u64>)> = (entries.iter())
        .filter_map(|e| match &e.event {
            Event::Snapshot { node, invoked, linearizable: true, checkouts } => {
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
                violations.push(Violation::new(
                    Property::Durability,
                    *at,
                    format!(
                        "a snapshot through node {node} (sent at {:.3} s) misses checkout #{} of {}, held since {:.3} s",
                        *invoked as f64 / 1e6,
                        h.id,
                        h.client,
                        h.start as f64 / 1e6
                    ),
                ));
            }
        }
    }
    violations.sort_by_key(|v| v.at);
    violations
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Property;
    use crate::history::{Event, Loss, Outcome};
    use crate::script::{Script, checks, good, properties, tokens};

    fn gone() -> Outcome {
        Outcome::Refused("gone".into())
    }

    #[test]
    fn durability_fails_when_a_held_checkout_vanishes() {
        let expired = good().lost(300, "a", 3, Loss::Expired);
        // (#3 was released at 230: the loss of a released lease is still a loss report.)
        assert!(properties(&expired.check()).contains(&Property::Durability));
        let forgotten = Script::default().grant(10, "a", 1, 1, tokens("dyna", "smp", 1)).lost(
            20,
            "a",
            1,
            Loss::Ended("unknown_checkout".into()),
        );
        assert_eq!(properties(&forgotten.check()), [Property::Durability]);
        let refused = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .release_answered(20, 30, "a", 1, true, gone());
        assert_eq!(properties(&refused.check()), [Property::Durability]);
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
        // A node's local state may lag: only linearizable snapshots count.
        let lagging = Script::default()
            .invoke(0, "a", 1)
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .local(20, 2, &[])
            .release(40, "a", 1);
        assert!(lagging.check().ok(), "{}", lagging.check());
        // After an unreachable loss, a refused release is expected.
        let expired_late = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .lost(20, "a", 1, Loss::Unreachable)
            .release_answered(30, 40, "a", 1, false, gone());
        assert!(expired_late.check().ok());
    }

    #[test]
    fn lost_acknowledged_checkouts_are_caught_within_the_release_window() {
        let mut checks = checks();
        checks.release_window = Some(Duration::from_millis(500));
        let good = Script::default()
            .invoke(1, "c1", 1)
            .grant(2, "c1", 1, 7, vec![])
            .lost(3, "c1", 7, Loss::Unreachable)
            .release_answered(4, 5, "c1", 7, false, gone());
        assert!(good.check_with(&checks).ok(), "{}", good.check_with(&checks));
        let bad = good
            .lost(8, "c1", 7, Loss::Expired)
            .release_answered(9, 10, "c2", 9, true, gone())
            // A release that took longer than the window may rightly find the lease gone.
            .release_answered(15, 900, "c4", 20, true, gone());
        let report = bad.check_with(&checks);
        assert_eq!(properties(&report), [Property::Durability, Property::Durability], "{report}");
        assert!(report.violations[0].what.contains("Expired"), "{report}");
        assert!(report.violations[1].what.contains("#9 of c2"), "{report}");
        // Without a window, the slow release counts too.
        checks.release_window = None;
        assert_eq!(bad.check_with(&checks).violations.len(), 3);
    }

    #[test]
    fn a_held_checkout_that_is_not_live_is_lost() {
        let held = Script::default()
            .invoke(0, "c0", 1)
            .grant(10, "c0", 1, 7, tokens("dyna", "smp", 1))
            .snapshot(20, 30, &[]);
        let report = held.check();
        assert_eq!(properties(&report), [Property::Durability], "{report}");
        assert!(report.violations[0].what.contains("#7 of c0"), "{report}");
        // Released during the read: not lost.
        let releasing = Script::default()
            .invoke(0, "c0", 1)
            .grant(10, "c0", 1, 7, tokens("dyna", "smp", 1))
            .at(25, Event::Release { client: "c0".into(), id: 7, believed: true })
            .snapshot(20, 30, &[])
            .at(35, Event::Released { client: "c0".into(), id: 7, outcome: Outcome::Released });
        assert!(releasing.check().ok(), "{}", releasing.check());
    }
}
