//! The checks: safety, durability, exactly-once and the state of every node.
//!
//! - **Safety** ([`check_beliefs`]): at every step, the tokens held by clients that
//!   believe their lease valid (granted, not reported lost, not being released) fit every
//!   pool's cap and every feature's total. What the clients believe, not only what the
//!   servers say: a server that frees tokens while their holder still runs its solver is
//!   as bad as one that over-grants.
//! - **Durability** ([`check_history`]): a client's lease guard reports a checkout lost by
//!   the server (expired, ended, revoked) only if the server dropped it while the client
//!   was renewing on time (its renewals give up at the local deadline and report
//!   `Unreachable` instead); and a release sent while the lease was believed valid and
//!   answered within the lease's safety margin must find the checkout live (the server's
//!   lease runs at least a margin past the client's deadline). Either means an
//!   acknowledged checkout was lost; no one revokes in these runs. A release answered later
//!   may rightly find the lease expired: the client stopped renewing when it began to
//!   release.
//! - **Exactly-once** ([`ExactlyOnce`]): every checkout on any node carries its operation
//!   as job id; one operation never shows up as two checkout ids, and the id on the servers
//!   is the one the client was answered with.
//! - **Nodes** ([`check_node`]): each running node's state passes
//!   `State::check_invariants` (token accounting per pool and feature, indexes, sessions).
//!
//! Each check has a unit test that feeds it a bad history and sees it complain.

use std::collections::BTreeMap;

use lsm_raft::node::LsmNode;

use crate::history::{Entry, Event, Held};

/// Refusals a checkout may get in these runs: for want of tokens, or (when it waited)
/// because the queue let it go.
const EXPECTED_REFUSALS: &[&str] = &["over_limit", "no_tokens", "over_total", "queue_blocked"];
const EXPECTED_WAIT_REFUSALS: &[&str] = &["wait_timed_out", "gone"];

/// Checks that what the clients believe they hold fits the license; the first excess.
pub fn check_beliefs<'a>(
    beliefs: impl IntoIterator<Item = (&'a (String, u64), &'a Vec<Held>)>,
    caps: &BTreeMap<(String, String), u64>,
    totals: &BTreeMap<String, u64>,
) -> Result<(), String> {
    let mut per_pool: BTreeMap<(String, String), (u64, Vec<String>)> = BTreeMap::new();
    let mut per_feature: BTreeMap<String, u64> = BTreeMap::new();
    for ((client, id), held) in beliefs {
        for h in held {
            let entry = per_pool.entry((h.feature.clone(), h.pool.clone())).or_default();
            entry.0 += h.tokens;
            entry.1.push(format!("{client}#{id}:{}", h.tokens));
            *per_feature.entry(h.feature.clone()).or_default() += h.tokens;
        }
    }
    for (key, (tokens, holders)) in &per_pool {
        let cap = caps.get(key).copied().unwrap_or(0);
        if *tokens > cap {
            return Err(format!(
                "safety: clients believe they hold {tokens} tokens of {}/{} (cap {cap}): {}",
                key.0,
                key.1,
                holders.join(", ")
            ));
        }
    }
    for (feature, tokens) in &per_feature {
        let total = totals.get(feature).copied().unwrap_or(0);
        if *tokens > total {
            return Err(format!(
                "safety: clients believe they hold {tokens} tokens of {feature} (total {total})"
            ));
        }
    }
    Ok(())
}

/// Durability and protocol checks over the whole history, for leases with safety margin
/// `margin_ms` (`lsm_client::lease::safety_margin`); every problem found.
pub fn check_history(entries: &[Entry], margin_ms: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let mut waited: BTreeMap<(String, u64), bool> = BTreeMap::new();
    let mut op_of_id: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    let mut granted_ops: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut believed_release: BTreeMap<(String, u64), (bool, u64)> = BTreeMap::new();
    for entry in entries {
        let at = entry.at_ms;
        match &entry.event {
            Event::Checkout { client, op, wait, .. } => {
                waited.insert((client.clone(), *op), *wait);
            }
            Event::Granted { client, op, id, .. } => {
                if let Some(before) = granted_ops.insert((client.clone(), *op), *id) {
                    problems.push(format!(
                        "exactly-once: at {at} ms {client} op{op} was granted twice (#{before}, #{id})"
                    ));
                }
                if let Some((other, other_op)) = op_of_id.insert(*id, (client.clone(), *op)) {
                    problems.push(format!(
                        "exactly-once: at {at} ms checkout #{id} was granted to {other} op{other_op} and to {client} op{op}"
                    ));
                }
            }
            Event::Refused { client, op, code } => {
                let wait = waited.get(&(client.clone(), *op)).copied().unwrap_or(false);
                let expected = EXPECTED_REFUSALS.contains(&code.as_str())
                    || (wait && EXPECTED_WAIT_REFUSALS.contains(&code.as_str()));
                if !expected {
                    problems.push(format!(
                        "at {at} ms {client} op{op}: a valid checkout was refused with {code}"
                    ));
                }
            }
            Event::Lost { client, id, loss, server_said: true } => {
                problems.push(format!(
                    "durability: at {at} ms the server dropped {client}'s checkout #{id} while the client renewed on time: {loss}"
                ));
            }
            Event::Release { client, id, believed } => {
                believed_release.insert((client.clone(), *id), (*believed, at));
            }
            Event::Released { client, id, result } => {
                let (believed, sent) =
                    believed_release.get(&(client.clone(), *id)).copied().unwrap_or((false, 0));
                let gone = matches!(result.as_str(), "gone" | "unknown_checkout" | "not_owner");
                if believed && gone && at <= sent + margin_ms {
                    problems.push(format!(
                        "durability: at {at} ms {client} released #{id}, which it renewed on time, {} ms after sending the release, and the server said {result}",
                        at - sent
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

/// Remembers which checkout id each operation (job) produced on the servers.
#[derive(Default)]
pub struct ExactlyOnce {
    /// Job id to the checkout id first seen with it.
    seen: BTreeMap<String, u64>,
}

impl ExactlyOnce {
    /// Records the live checkouts of one node's state; problems found.
    pub fn observe(
        &mut self,
        node: u64,
        checkouts: impl IntoIterator<Item = (String, u64)>,
        granted: &BTreeMap<(String, u64), u64>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for (job, id) in checkouts {
            match self.seen.get(&job) {
                Some(first) if *first != id => problems.push(format!(
                    "exactly-once: operation {job} produced checkouts #{first} and #{id} (seen on n{node})"
                )),
                Some(_) => {}
                None => {
                    self.seen.insert(job.clone(), id);
                }
            }
            if let Some((client, op)) = parse_job(&job)
                && let Some(answered) = granted.get(&(client.clone(), op))
                && *answered != id
            {
                problems.push(format!(
                    "exactly-once: {client} op{op} was answered #{answered}, but n{node} holds #{id} for it"
                ));
            }
        }
        problems
    }
}

/// `c1-op7` to (`c1`, 7).
fn parse_job(job: &str) -> Option<(String, u64)> {
    let (client, op) = job.rsplit_once("-op")?;
    Some((client.to_string(), op.parse().ok()?))
}

/// The live checkouts of a node as (job, id), and its invariant check.
pub fn check_node(node: &LsmNode) -> (Vec<(String, u64)>, Result<(), String>) {
    node.read_local(|state| {
        let checkouts = state
            .list_checkouts(&lsm_core::CheckoutFilter {
                limit: Some(u64::MAX),
                ..Default::default()
            })
            .into_iter()
            .filter_map(|c| c.job.map(|job| (job.to_string(), c.id.0)))
            .collect();
        (checkouts, state.check_invariants().map_err(|e| e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(feature: &str, pool: &str, tokens: u64) -> Vec<Held> {
        vec![Held { feature: feature.into(), pool: pool.into(), tokens }]
    }

    fn at(at_ms: u64, event: Event) -> Entry {
        Entry { at_ms, event }
    }

    #[test]
    fn beliefs_over_a_cap_or_a_total_are_caught() {
        let (caps, totals) = crate::world::caps();
        let mut beliefs = BTreeMap::new();
        beliefs.insert(("c1".to_string(), 1), held("abaqus", "a", 3));
        beliefs.insert(("c2".to_string(), 2), held("abaqus", "b", 4));
        assert!(check_beliefs(&beliefs, &caps, &totals).is_ok());
        beliefs.insert(("c3".to_string(), 3), held("abaqus", "a", 3));
        let err = check_beliefs(&beliefs, &caps, &totals).unwrap_err();
        assert!(err.contains("abaqus/a") && err.contains("cap 5"), "{err}");
        beliefs.remove(&("c3".to_string(), 3));
        beliefs.insert(("c3".to_string(), 3), held("abaqus", "b", 1));
        beliefs.insert(("c4".to_string(), 4), held("abaqus", "a", 1));
        let err = check_beliefs(&beliefs, &caps, &totals).unwrap_err();
        assert!(err.contains("total 8"), "{err}");
    }

    #[test]
    fn lost_acknowledged_checkouts_and_double_grants_are_caught() {
        let c = |s: &str| s.to_string();
        let good = vec![
            at(1, Event::Checkout { client: c("c1"), op: 1, want: vec![], wait: false }),
            at(2, Event::Granted { client: c("c1"), op: 1, id: 7, held: vec![] }),
            at(
                3,
                Event::Lost { client: c("c1"), id: 7, loss: c("unreachable"), server_said: false },
            ),
            at(4, Event::Release { client: c("c1"), id: 7, believed: false }),
            at(5, Event::Released { client: c("c1"), id: 7, result: c("gone") }),
            at(6, Event::Checkout { client: c("c1"), op: 2, want: vec![], wait: true }),
            at(7, Event::Refused { client: c("c1"), op: 2, code: c("wait_timed_out") }),
        ];
        assert_eq!(check_history(&good, 500), Vec::<String>::new());

        let mut bad = good.clone();
        bad.push(at(
            8,
            Event::Lost { client: c("c1"), id: 7, loss: c("expired"), server_said: true },
        ));
        bad.push(at(9, Event::Release { client: c("c2"), id: 9, believed: true }));
        bad.push(at(10, Event::Released { client: c("c2"), id: 9, result: c("gone") }));
        bad.push(at(11, Event::Granted { client: c("c2"), op: 1, id: 7, held: vec![] }));
        bad.push(at(12, Event::Granted { client: c("c2"), op: 1, id: 8, held: vec![] }));
        bad.push(at(13, Event::Checkout { client: c("c3"), op: 1, want: vec![], wait: false }));
        bad.push(at(14, Event::Refused { client: c("c3"), op: 1, code: c("unknown_feature") }));
        // A release that took longer than the margin may rightly find the lease gone.
        bad.push(at(15, Event::Release { client: c("c4"), id: 20, believed: true }));
        bad.push(at(900, Event::Released { client: c("c4"), id: 20, result: c("gone") }));
        let problems = check_history(&bad, 500);
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].starts_with("durability"), "{problems:#?}");
        assert!(problems[1].starts_with("durability"), "{problems:#?}");
        assert!(problems.iter().filter(|p| p.starts_with("exactly-once")).count() == 2);
        assert!(problems[4].contains("unknown_feature"), "{problems:#?}");
    }

    #[test]
    fn one_operation_with_two_checkouts_is_caught() {
        let mut seen = ExactlyOnce::default();
        let mut granted = BTreeMap::new();
        granted.insert(("c1".to_string(), 3), 10);
        assert!(seen.observe(1, [("c1-op3".to_string(), 10)], &granted).is_empty());
        assert!(seen.observe(2, [("c1-op3".to_string(), 10)], &granted).is_empty());
        let problems = seen.observe(3, [("c1-op3".to_string(), 11)], &granted);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        let problems = seen.observe(1, [("c2-op1".to_string(), 12)], &granted);
        assert!(problems.is_empty());
    }
}
