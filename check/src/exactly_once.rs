//! Exactly-once: one request creates at most one checkout, and a checkout ends once.
//!
//! - No checkout id is granted to two operations, and no operation is granted twice.
//! - Every checkout a snapshot shows (linearizable or a node's local state) that carries
//!   the job id of an operation belongs to that operation alone: one operation never shows
//!   up as two checkout ids, and when the operation was granted, the id on the servers is
//!   the one the client was answered with.
//! - For every client, the checkouts snapshots show that the client was never told of
//!   (granted, or named by an error) are no more than its checkout requests that got no
//!   definite answer (or none yet: a history may be checked while requests are in flight).
//! - A checkout whose release was acknowledged is in no linearizable snapshot sent after
//!   the acknowledgement.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Entry, Event, Micros, Outcome};
use crate::report::{Property, Violation};

/// Exactly-once (see the module docs).
pub fn check(entries: &[Entry]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut violation = |at: Micros, what: String| {
        violations.push(Violation::new(Property::ExactlyOnce, at, what));
    };
    // Operations: their job ids, answers, and which are still open.
    let mut op_of_job: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    let mut clients: BTreeSet<&str> = BTreeSet::new();
    let mut in_flight: BTreeSet<(&str, u64)> = BTreeSet::new();
    let mut unanswered: BTreeMap<&str, u64> = BTreeMap::new();
    let mut known: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut id_of_op: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    let mut op_of_id: BTreeMap<u64, (&str, u64)> = BTreeMap::new();
    let mut released: BTreeMap<u64, Micros> = BTreeMap::new();
    for entry in entries {
        match &entry.event {
            Event::Invoke { client, op, job, .. } => {
                clients.insert(client);
                in_flight.insert((client, *op));
                if !job.is_empty() {
                    op_of_job.insert(job, (client, *op));
                }
            }
            Event::Granted { client, op, id, .. } => {
                in_flight.remove(&(client.as_str(), *op));
                known.entry(client).or_default().insert(*id);
                if let Some(before) = id_of_op.insert((client, *op), *id) {
                    violation(
                        entry.at,
                        format!("{client} op{op} was granted twice (#{before}, #{id})"),
                    );
                }
                if let Some((other, other_op)) = op_of_id.insert(*id, (client, *op)) {
                    violation(
                        entry.at,
                        format!(
                            "checkout #{id} was granted twice: to {other} (op {other_op}) and to {client} (op {op})"
                        ),
                    );
                }
            }
            Event::Refused { client, op, .. } => {
                in_flight.remove(&(client.as_str(), *op));
            }
            Event::Unknown { client, op, id, .. } => {
                in_flight.remove(&(client.as_str(), *op));
                match id {
                    Some(id) => {
                        known.entry(client).or_default().insert(*id);
                    }
                    None => *unanswered.entry(client).or_default() += 1,
                }
            }
            Event::Released { id, outcome: Outcome::Released, .. } => {
                released.entry(*id).or_insert(entry.at);
            }
            _ => {}
        }
    }
    for (client, _) in in_flight {
        *unanswered.entry(client).or_default() += 1;
    }
    let mut id_of_job: BTreeMap<&str, u64> = BTreeMap::new();
    let mut strangers: BTreeMap<&str, (BTreeSet<u64>, Micros)> = BTreeMap::new();
    for entry in entries {
        let Event::Snapshot { node, invoked, linearizable, checkouts } = &entry.event else {
            continue;
        };
        for c in checkouts {
            if let Some(job) = c.job.as_deref()
                && let Some(&(client, op)) = op_of_job.get(job)
            {
                match id_of_job.get(job) {
                    Some(&first) if first != c.id => violation(
                        entry.at,
                        format!(
                            "operation {job} produced checkouts #{first} and #{} (seen on node {node})",
                            c.id
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        id_of_job.insert(job, c.id);
                    }
                }
                if let Some(&answered) = id_of_op.get(&(client, op))
                    && answered != c.id
                {
                    violation(
                        entry.at,
                        format!(
                            "{client} op{op} was answered #{answered}, but node {node} holds #{} for it",
                            c.id
                        ),
                    );
                }
            }
            let client = c.client.as_str();
            let is_known = known.get(client).is_some_and(|ids| ids.contains(&c.id));
            if clients.contains(client) && !is_known {
                let (ids, first) = strangers.entry(client).or_insert((BTreeSet::new(), entry.at));
                if ids.is_empty() {
                    *first = entry.at;
                }
                ids.insert(c.id);
            }
            if *linearizable
                && let Some(&acknowledged) = released.get(&c.id)
                && acknowledged < *invoked
            {
                violation(
                    entry.at,
                    format!(
                        "checkout #{} of {client} is live in a read through node {node} sent {:.3} s after its release was acknowledged",
                        c.id,
                        (*invoked - acknowledged) as f64 / 1e6
                    ),
                );
            }
        }
    }
    for (client, (ids, first)) in strangers {
        let allowed = unanswered.get(client).copied().unwrap_or(0);
        if ids.len() as u64 > allowed {
            violation(
                first,
                format!(
                    "the cluster held checkouts {ids:?} of {client}, which the client never got, but only {allowed} of its requests went unanswered"
                ),
            );
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use crate::Property;
    use crate::history::Outcome;
    use crate::script::{Script, properties, tokens};

    #[test]
    fn exactly_once_fails_on_a_second_checkout_or_a_reused_id() {
        // The cluster holds two checkouts of a, which got one answer for one request.
        let two = [(1, "a", tokens("dyna", "smp", 1)), (2, "a", tokens("dyna", "smp", 1))];
        let twice = Script::default()
            .invoke(0, "a", 1)
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .snapshot(20, 30, &two)
            .release(40, "a", 1);
        assert_eq!(properties(&twice.check()), [Property::ExactlyOnce]);
        // The same, but a had a request that went unanswered: that may be #2.
        let unanswered = Script::default()
            .invoke(0, "a", 1)
            .unknown(5, "a", 1, None)
            .invoke(6, "a", 2)
            .grant(10, "a", 2, 1, tokens("dyna", "smp", 1))
            .snapshot(20, 30, &two)
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
        // One id granted to two requests (its fence reused too).
        let reused = Script::default()
            .grant(10, "a", 1, 1, tokens("dyna", "smp", 1))
            .release(20, "a", 1)
            .grant(30, "b", 1, 1, tokens("dyna", "smp", 1));
        let report = reused.check();
        assert_eq!(properties(&report), [Property::ExactlyOnce, Property::Fences], "{report}");
    }

    #[test]
    fn one_operation_granted_twice_is_caught() {
        let twice = Script::default().invoke(1, "c2", 1).grant(11, "c2", 1, 7, vec![]).grant(
            12,
            "c2",
            1,
            8,
            vec![],
        );
        let report = twice.check();
        assert_eq!(properties(&report), [Property::ExactlyOnce], "{report}");
        assert!(report.violations[0].what.contains("granted twice (#7, #8)"), "{report}");
    }

    #[test]
    fn one_operation_with_two_checkouts_is_caught() {
        let history = Script::default()
            .invoke(0, "c1", 3)
            .grant(5, "c1", 3, 10, vec![])
            .invoke(6, "c2", 1)
            .local(10, 1, &[("c1-op3", 10)])
            .local(11, 2, &[("c1-op3", 10)]);
        assert!(history.check().ok(), "{}", history.check());
        let report = history.clone().local(12, 3, &[("c1-op3", 11)]).check();
        // Two checkouts of one operation, one not the answered one; and #11 is a checkout
        // c1 never got with no request of c1 unanswered.
        assert_eq!(properties(&report), [Property::ExactlyOnce; 3], "{report}");
        assert!(report.violations[0].what.contains("#10 and #11"), "{report}");
        assert!(report.violations[1].what.contains("answered #10"), "{report}");
        // c2's op1 is still in flight: its checkout may be on the servers.
        assert!(history.local(13, 1, &[("c2-op1", 12)]).check().ok());
    }

    #[test]
    fn what_the_clients_hold_is_live_and_nothing_else() {
        let history = Script::default()
            .invoke(0, "c0", 1)
            .grant(1, "c0", 1, 7, tokens("dyna", "smp", 1))
            .invoke(2, "c1", 1)
            .grant(3, "c1", 1, 8, tokens("dyna", "smp", 1))
            .release(4, "c1", 8)
            // Another client's checkout is no business of this run's.
            .snapshot(10, 20, &[(7, "c0", tokens("dyna", "smp", 1)), (9, "other", vec![])]);
        assert!(history.check().ok(), "{}", history.check());
    }

    #[test]
    fn a_checkout_live_after_its_release_was_acknowledged_is_duplicated() {
        let released = Script::default()
            .invoke(0, "c0", 1)
            .grant(1, "c0", 1, 7, tokens("dyna", "smp", 1))
            .release(2, "c0", 7);
        let report =
            released.clone().snapshot(10, 20, &[(7, "c0", tokens("dyna", "smp", 1))]).check();
        assert_eq!(properties(&report), [Property::ExactlyOnce], "{report}");
        assert!(report.violations[0].what.contains("acknowledged"), "{report}");
        // Unless its release got no answer.
        let unsure = Script::default()
            .invoke(0, "c0", 1)
            .grant(1, "c0", 1, 7, tokens("dyna", "smp", 1))
            .release_answered(2, 3, "c0", 7, true, Outcome::Unknown("timeout".into()))
            .snapshot(10, 20, &[(7, "c0", tokens("dyna", "smp", 1))]);
        assert!(unsure.check().ok(), "{}", unsure.check());
        // Or the read was sent before the acknowledgement.
        let racing = released.snapshot(2, 20, &[(7, "c0", tokens("dyna", "smp", 1))]);
        assert!(racing.check().ok(), "{}", racing.check());
    }

    #[test]
    fn an_unknown_live_checkout_is_explained_only_by_a_request_in_flight() {
        let idle =
            Script::default().invoke(0, "c0", 1).grant(1, "c0", 1, 5, vec![]).release(2, "c0", 5);
        let live = |s: Script| s.snapshot(10, 20, &[(9, "c0", vec![])]);
        assert_eq!(properties(&live(idle.clone()).check()), [Property::ExactlyOnce]);
        let in_flight = idle.clone().invoke(5, "c0", 2);
        assert!(live(in_flight.clone()).check().ok());
        // One request explains one checkout, not two.
        let two = in_flight.clone().snapshot(10, 20, &[(9, "c0", vec![]), (10, "c0", vec![])]);
        assert_eq!(properties(&two.check()), [Property::ExactlyOnce]);
        // Granted and released during the read.
        let during =
            idle.clone().invoke(5, "c0", 2).grant(12, "c0", 2, 9, vec![]).release(14, "c0", 9);
        assert!(live(during.clone()).check().ok(), "{}", live(during).check());
        // Granted during the read and still held.
        let held = in_flight.grant(15, "c0", 2, 9, vec![]);
        assert!(live(held.clone()).check().ok(), "{}", live(held).check());
    }
}
