//! The simulation's own checks, beside the properties `lsm_check` checks on the history:
//! only expected refusals, and the state of every node.
//!
//! - **Refusals** ([`unexpected_refusals`]): a checkout is refused only for want of
//!   tokens, or (when it waited) because the queue let it go; any other code the servers
//!   answer with means a valid request was turned away.
//! - **Nodes** ([`check_node`]): each running node's state passes
//!   `State::check_invariants` (token accounting per pool and feature, indexes, sessions).
//!   Its live checkouts go into the history, where `lsm_check` holds them to
//!   exactly-once, fences and safety.
//!
//! Each check has a unit test that feeds it a bad history and sees it complain.

use std::collections::BTreeMap;

use lsm_check::history::{Entry, Event, LiveCheckout};
use lsm_raft::node::LsmNode;

/// Refusals a checkout may get in these runs: for want of tokens, or (when it waited)
/// because the queue let it go.
const EXPECTED_REFUSALS: &[&str] = &["over_limit", "no_tokens", "over_total", "queue_blocked"];
const EXPECTED_WAIT_REFUSALS: &[&str] = &["wait_timed_out", "gone"];

/// Every checkout answered with an error code these runs should never see.
pub fn unexpected_refusals(entries: &[Entry]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut waited: BTreeMap<(&str, u64), bool> = BTreeMap::new();
    for entry in entries {
        let at = entry.at / 1_000;
        let (client, op, code) = match &entry.event {
            Event::Invoke { client, op, wait, .. } => {
                waited.insert((client, *op), *wait);
                continue;
            }
            Event::Refused { client, op, code } => (client, op, code),
            Event::Unknown { client, op, code: Some(code), .. } => (client, op, code),
            _ => continue,
        };
        let wait = waited.get(&(client.as_str(), *op)).copied().unwrap_or(false);
        let expected = EXPECTED_REFUSALS.contains(&code.as_str())
            || (wait && EXPECTED_WAIT_REFUSALS.contains(&code.as_str()));
        if !expected {
            problems.push(format!(
                "at {at} ms {client} op{op}: a valid checkout was refused with {code}"
            ));
        }
    }
    problems
}

/// The live checkouts of a node, and its invariant check.
pub fn check_node(node: &LsmNode) -> (Vec<LiveCheckout>, Result<(), String>) {
    node.read_local(|state| {
        let filter = lsm_core::CheckoutFilter { limit: Some(u64::MAX), ..Default::default() };
        let checkouts = state.list_checkouts(&filter).iter().map(LiveCheckout::of).collect();
        (checkouts, state.check_invariants().map_err(|e| e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, event: Event) -> Entry {
        Entry { at: ms * 1_000, event }
    }

    fn invoke(client: &str, op: u64, wait: bool) -> Event {
        let (client, job, what) = (client.to_string(), String::new(), String::new());
        Event::Invoke { client, op, job, what, want: vec![], wait }
    }

    fn refused(client: &str, op: u64, code: &str) -> Event {
        Event::Refused { client: client.into(), op, code: code.into() }
    }

    #[test]
    fn only_expected_refusals_pass() {
        let good = vec![
            at(1, invoke("c1", 1, false)),
            at(2, refused("c1", 1, "no_tokens")),
            at(6, invoke("c1", 2, true)),
            at(7, refused("c1", 2, "gone")),
        ];
        assert_eq!(unexpected_refusals(&good), Vec::<String>::new());
        let mut bad = good.clone();
        bad.push(at(13, invoke("c3", 1, false)));
        bad.push(at(14, refused("c3", 1, "unknown_feature")));
        // A queue's answer to a checkout that did not wait.
        bad.push(at(15, invoke("c3", 2, false)));
        bad.push(at(16, refused("c3", 2, "gone")));
        // An error code without a definite answer.
        bad.push(at(17, invoke("c3", 3, false)));
        bad.push(at(
            18,
            Event::Unknown {
                client: "c3".into(),
                op: 3,
                id: None,
                code: Some("stale_request".into()),
                error: "stale".into(),
            },
        ));
        let problems = unexpected_refusals(&bad);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("unknown_feature"), "{problems:#?}");
        assert!(problems[2].contains("stale_request"), "{problems:#?}");
    }
}
