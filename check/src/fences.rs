//! Fences only grow: every grant's fencing token is new, and larger than that of every
//! grant answered before its request was sent.
//!
//! The state machine hands out fences in grant order across the whole cluster, so a
//! resource guarded by licenses can refuse a holder older than one it has seen. A
//! history shows grants in the order their answers arrived, which for concurrent
//! requests need not be the order they were committed in; but a grant answered before
//! another request was even sent was committed before it. So the check is:
//!
//! - no fence is granted twice;
//! - a grant's fence is larger than the fence of every grant answered before its
//!   request was sent (`Invoke`);
//! - every snapshot shows a checkout with the fence it was granted with.

use std::collections::BTreeMap;

use crate::history::{Entry, Event};
use crate::report::{Property, Violation};

/// Fences only grow (see the module docs).
pub fn check(entries: &[Entry]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut violation = |at, what| violations.push(Violation::new(Property::Fences, at, what));
    let mut fences: BTreeMap<u64, u64> = BTreeMap::new();
    let mut fence_of: BTreeMap<u64, u64> = BTreeMap::new();
    // The largest fence answered so far, and that seen by each open request when sent.
    let mut highest: Option<(u64, u64)> = None;
    let mut floor: BTreeMap<(&str, u64), (u64, u64)> = BTreeMap::new();
    for entry in entries {
        match &entry.event {
            Event::Invoke { client, op, .. } => {
                if let Some(highest) = highest {
                    floor.insert((client, *op), highest);
                }
            }
            Event::Granted { client, op, id, fence, .. } => {
                if let Some(other) = fences.insert(*fence, *id) {
                    violation(
                        entry.at,
                        format!("fence {fence} was granted twice: #{other} and #{id}"),
                    );
                }
                fence_of.entry(*id).or_insert(*fence);
                if let Some((before, before_id)) = floor.remove(&(client.as_str(), *op))
                    && *fence <= before
                {
                    violation(
                        entry.at,
                        format!(
                            "{client} op{op} was granted #{id} with fence {fence}, not above fence {before} of #{before_id}, answered before the request was sent"
                        ),
                    );
                }
                if highest.is_none_or(|(h, _)| *fence > h) {
                    highest = Some((*fence, *id));
                }
            }
            Event::Snapshot { node, checkouts, .. } => {
                for c in checkouts {
                    if let Some(&granted) = fence_of.get(&c.id)
                        && granted != c.fence
                    {
                        violation(
                            entry.at,
                            format!(
                                "node {node} shows checkout #{} with fence {}, granted with fence {granted}",
                                c.id, c.fence
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use crate::Property;
    use crate::history::{Event, LiveCheckout};
    use crate::script::{Script, properties, tokens};

    #[test]
    fn a_fence_granted_twice_is_caught() {
        let twice = Script::default()
            .invoke(0, "a", 1)
            .invoke(0, "b", 1)
            .grant_fenced(10, "a", 1, 1, 5, tokens("dyna", "smp", 1))
            .grant_fenced(11, "b", 1, 2, 5, tokens("dyna", "smp", 1));
        let report = twice.check();
        assert_eq!(properties(&report), [Property::Fences], "{report}");
        assert!(report.violations[0].what.contains("fence 5 was granted twice"), "{report}");
    }

    #[test]
    fn a_fence_below_an_earlier_answer_is_caught() {
        // Concurrent requests may be answered in either order.
        let concurrent = Script::default()
            .invoke(0, "a", 1)
            .invoke(1, "b", 1)
            .grant_fenced(10, "b", 1, 2, 9, vec![])
            .grant_fenced(11, "a", 1, 1, 8, vec![]);
        assert!(concurrent.check().ok(), "{}", concurrent.check());
        // A request sent after #2 was answered is granted a smaller fence.
        let shrinking = concurrent.invoke(20, "c", 1).grant_fenced(30, "c", 1, 3, 7, vec![]);
        let report = shrinking.check();
        assert_eq!(properties(&report), [Property::Fences], "{report}");
        assert!(report.violations[0].what.contains("not above fence 9 of #2"), "{report}");
    }

    #[test]
    fn a_checkout_whose_fence_changed_is_caught() {
        let granted = Script::default().invoke(0, "a", 1).grant_fenced(10, "a", 1, 1, 4, vec![]);
        let checkout =
            LiveCheckout { id: 1, fence: 3, client: "a".into(), job: None, items: vec![] };
        let snapshot = Event::Snapshot {
            node: 2,
            invoked: 20_000,
            linearizable: false,
            checkouts: vec![checkout],
        };
        let report = granted.at(25, snapshot).check();
        assert_eq!(properties(&report), [Property::Fences], "{report}");
        assert!(report.violations[0].what.contains("granted with fence 4"), "{report}");
    }
}
