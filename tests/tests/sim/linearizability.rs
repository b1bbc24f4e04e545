//! A linearizability checker for the client-observed history of small runs.
//!
//! Wing & Gong's search, with Lowe's memoization (as in porcupine): pick an operation
//! that may take effect next (no other pending operation completed before it was
//! invoked), apply it to a sequential model, recurse; remember `(operations done, model
//! state)` pairs already explored. The model is the license's token counts for
//! `abaqus`: a checkout of `n` tokens in pool `p` is granted exactly when `p`'s use plus
//! `n` fits its cap and the feature's use plus `n` fits its total, and refused otherwise;
//! a release gives a held checkout back; a read returns the use of every pool.
//!
//! An operation whose client got no answer (it gave up) may have taken effect at any
//! moment after it was invoked, or not at all; the search tries both. Times are whole
//! simulated milliseconds, and two operations in the same millisecond count as
//! concurrent, so the check never relies on an order the clock cannot show.

use std::collections::{BTreeMap, HashSet};

use lsm_check::history::{Entry, Event, Outcome};

/// What an operation asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// Check out `tokens` of `abaqus` in `pool`.
    Checkout {
        /// The pool.
        pool: String,
        /// Tokens.
        tokens: u64,
    },
    /// Give checkout `id` back.
    Release {
        /// The checkout.
        id: u64,
    },
    /// Read the tokens in use per pool.
    Read,
}

/// What it was answered; `Unknown` when no answer came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// Granted as checkout `id`.
    Granted(u64),
    /// Refused for want of tokens.
    Refused,
    /// Released.
    Released,
    /// The release found the checkout gone.
    Gone,
    /// Tokens in use per pool.
    InUse(BTreeMap<String, u64>),
    /// No answer: it may or may not have happened.
    Unknown,
}

/// One operation of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The client.
    pub client: String,
    /// Invocation time.
    pub invoke_ms: u64,
    /// Completion time; `None` if no answer came (pending forever).
    pub complete_ms: Option<u64>,
    /// The call.
    pub call: Call,
    /// The answer.
    pub ret: Ret,
}

/// The sequential model: held checkouts (id to pool and tokens).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Model {
    held: BTreeMap<u64, (String, u64)>,
    /// Checkouts with no known id (granted to a client that got no answer).
    anonymous: Vec<(String, u64)>,
}

impl Model {
    fn in_use(&self, pool: &str) -> u64 {
        self.held.values().chain(&self.anonymous).filter(|(p, _)| p == pool).map(|(_, n)| n).sum()
    }

    fn total(&self) -> u64 {
        self.held.values().chain(&self.anonymous).map(|(_, n)| n).sum()
    }

    fn fits(&self, pool: &str, tokens: u64, caps: &BTreeMap<String, u64>, total: u64) -> bool {
        let cap = caps.get(pool).copied().unwrap_or(0);
        self.in_use(pool) + tokens <= cap && self.total() + tokens <= total
    }

    /// The states `op` may lead to from this one (none: it cannot happen here).
    fn step(&self, op: &Op, caps: &BTreeMap<String, u64>, total: u64) -> Vec<Model> {
        match (&op.call, &op.ret) {
            (Call::Checkout { pool, tokens }, Ret::Granted(id)) => {
                if self.fits(pool, *tokens, caps, total) && !self.held.contains_key(id) {
                    let mut next = self.clone();
                    next.held.insert(*id, (pool.clone(), *tokens));
                    vec![next]
                } else {
                    vec![]
                }
            }
            (Call::Checkout { pool, tokens }, Ret::Refused) => {
                if self.fits(pool, *tokens, caps, total) { vec![] } else { vec![self.clone()] }
            }
            (Call::Checkout { pool, tokens }, Ret::Unknown) => {
                let mut out = vec![self.clone()];
                if self.fits(pool, *tokens, caps, total) {
                    let mut next = self.clone();
                    next.anonymous.push((pool.clone(), *tokens));
                    next.anonymous.sort();
                    out.push(next);
                }
                out
            }
            (Call::Release { id }, Ret::Released) => {
                if self.held.contains_key(id) {
                    let mut next = self.clone();
                    next.held.remove(id);
                    vec![next]
                } else {
                    vec![]
                }
            }
            (Call::Release { id }, Ret::Gone) => {
                if self.held.contains_key(id) {
                    vec![]
                } else {
                    vec![self.clone()]
                }
            }
            (Call::Release { id }, Ret::Unknown) => {
                let mut out = vec![self.clone()];
                if self.held.contains_key(id) {
                    let mut next = self.clone();
                    next.held.remove(id);
                    out.push(next);
                }
                out
            }
            (Call::Read, Ret::InUse(seen)) => {
                let matches = caps
                    .keys()
                    .all(|pool| seen.get(pool).copied().unwrap_or(0) == self.in_use(pool));
                if matches { vec![self.clone()] } else { vec![] }
            }
            (Call::Read, Ret::Unknown) => vec![self.clone()],
            _ => vec![],
        }
    }
}

/// Checks that `ops` is linearizable against the token model with pool `caps` and the
/// feature's `total`. On failure, says which operations could not be placed.
pub fn check(ops: &[Op], caps: &BTreeMap<String, u64>, total: u64) -> Result<(), String> {
    assert!(ops.len() <= 128, "the checker handles at most 128 operations");
    let mut memo = HashSet::new();
    let mut deepest = 0u128;
    if search(ops, caps, total, 0, &Model::default(), &mut memo, &mut deepest) {
        return Ok(());
    }
    let placed: Vec<String> = (0..ops.len())
        .filter(|i| deepest & (1 << i) != 0)
        .map(|i| format!("{:?}", ops[i]))
        .collect();
    let rest: Vec<String> = (0..ops.len())
        .filter(|i| deepest & (1 << i) == 0)
        .map(|i| format!("{:?}", ops[i]))
        .collect();
    Err(format!(
        "not linearizable: the longest consistent prefix placed {} of {} operations;\n  placed: {}\n  could not place: {}",
        placed.len(),
        ops.len(),
        placed.join("\n          "),
        rest.join("\n          ")
    ))
}

fn search(
    ops: &[Op],
    caps: &BTreeMap<String, u64>,
    total: u64,
    done: u128,
    model: &Model,
    memo: &mut HashSet<(u128, Model)>,
    deepest: &mut u128,
) -> bool {
    let all_answered = (0..ops.len()).all(|i| done & (1 << i) != 0 || ops[i].complete_ms.is_none());
    if all_answered {
        return true;
    }
    if !memo.insert((done, model.clone())) {
        return false;
    }
    if done.count_ones() > deepest.count_ones() {
        *deepest = done;
    }
    // An operation may go next only if nothing still to place completed before it began.
    let horizon = (0..ops.len())
        .filter(|i| done & (1 << i) == 0)
        .filter_map(|i| ops[i].complete_ms)
        .min()
        .unwrap_or(u64::MAX);
    for (i, op) in ops.iter().enumerate() {
        if done & (1 << i) != 0 || op.invoke_ms > horizon {
            continue;
        }
        for next in model.step(op, caps, total) {
            if search(ops, caps, total, done | (1 << i), &next, memo, deepest) {
                return true;
            }
        }
    }
    false
}

/// The checkout, release and read operations of a history, for [`check`]. Checkouts are
/// of `abaqus` only (the linearizability mix).
pub fn operations(entries: &[Entry]) -> Vec<Op> {
    let mut ops: Vec<Op> = Vec::new();
    let mut open: BTreeMap<(String, &'static str, u64), usize> = BTreeMap::new();
    for entry in entries {
        let at = entry.at / 1_000;
        let mut start = |client: &str, kind: &'static str, key: u64, call: Call| {
            open.insert((client.to_string(), kind, key), ops.len());
            ops.push(Op {
                client: client.to_string(),
                invoke_ms: at,
                complete_ms: None,
                call,
                ret: Ret::Unknown,
            });
        };
        match &entry.event {
            Event::Invoke { client, op, want, .. } => {
                let w = &want[0];
                start(
                    client,
                    "checkout",
                    *op,
                    Call::Checkout { pool: w.pool.clone(), tokens: w.tokens },
                );
            }
            Event::Release { client, id, .. } => {
                start(client, "release", *id, Call::Release { id: *id })
            }
            Event::Read { client, op } => start(client, "read", *op, Call::Read),
            Event::Granted { client, op, id, .. } => {
                finish(&mut ops, &mut open, (client, "checkout", *op), at, Some(Ret::Granted(*id)))
            }
            Event::Refused { client, op, .. } => {
                finish(&mut ops, &mut open, (client, "checkout", *op), at, Some(Ret::Refused))
            }
            Event::Unknown { client, op, .. } => {
                finish(&mut ops, &mut open, (client, "checkout", *op), at, None)
            }
            Event::Released { client, id, outcome } => {
                let ret = match outcome {
                    Outcome::Released => Some(Ret::Released),
                    Outcome::Refused(code)
                        if matches!(code.as_str(), "gone" | "unknown_checkout") =>
                    {
                        Some(Ret::Gone)
                    }
                    _ => None,
                };
                finish(&mut ops, &mut open, (client, "release", *id), at, ret)
            }
            Event::ReadDone { client, op, in_use } => {
                let ret = in_use.as_ref().map(|in_use| {
                    Ret::InUse(
                        (in_use.iter())
                            .filter(|t| t.feature == "abaqus")
                            .map(|t| (t.pool.clone(), t.tokens))
                            .collect(),
                    )
                });
                finish(&mut ops, &mut open, (client, "read", *op), at, ret)
            }
            _ => {}
        }
    }
    ops
}

/// Completes an open operation: with `ret`, or left pending forever when `None`.
fn finish(
    ops: &mut [Op],
    open: &mut BTreeMap<(String, &'static str, u64), usize>,
    (client, kind, key): (&String, &'static str, u64),
    at: u64,
    ret: Option<Ret>,
) {
    if let Some(i) = open.remove(&(client.clone(), kind, key))
        && let Some(ret) = ret
    {
        ops[i].complete_ms = Some(at);
        ops[i].ret = ret;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> BTreeMap<String, u64> {
        [("a".to_string(), 5), ("b".to_string(), 5)].into()
    }

    fn op(client: &str, invoke: u64, complete: Option<u64>, call: Call, ret: Ret) -> Op {
        Op { client: client.into(), invoke_ms: invoke, complete_ms: complete, call, ret }
    }

    fn checkout(pool: &str, tokens: u64) -> Call {
        Call::Checkout { pool: pool.into(), tokens }
    }

    fn in_use(a: u64, b: u64) -> Ret {
        Ret::InUse([("a".to_string(), a), ("b".to_string(), b)].into())
    }

    #[test]
    fn a_correct_concurrent_history_passes() {
        let ops = vec![
            op("c1", 0, Some(10), checkout("a", 3), Ret::Granted(1)),
            // Concurrent with the first: refused, so it took effect after it.
            op("c2", 5, Some(12), checkout("a", 3), Ret::Refused),
            op("c3", 11, Some(20), Call::Read, in_use(3, 0)),
            op("c1", 21, Some(30), Call::Release { id: 1 }, Ret::Released),
            op("c2", 31, Some(40), checkout("a", 3), Ret::Granted(2)),
            // No answer: it may have taken 4 tokens of b, or nothing.
            op("c3", 41, None, checkout("b", 4), Ret::Unknown),
            op("c1", 50, Some(60), Call::Read, in_use(3, 4)),
        ];
        assert_eq!(check(&ops, &caps(), 8), Ok(()));
    }

    #[test]
    fn an_over_grant_is_not_linearizable() {
        let ops = vec![
            op("c1", 0, Some(10), checkout("a", 3), Ret::Granted(1)),
            op("c2", 5, Some(12), checkout("a", 3), Ret::Granted(2)),
        ];
        assert!(check(&ops, &caps(), 8).is_err());
        // Within the pool caps, but over the feature total.
        let ops = vec![
            op("c1", 0, Some(10), checkout("a", 5), Ret::Granted(1)),
            op("c2", 5, Some(12), checkout("b", 4), Ret::Granted(2)),
        ];
        assert!(check(&ops, &caps(), 8).is_err());
    }

    #[test]
    fn a_stale_read_after_a_completed_release_is_not_linearizable() {
        let ops = vec![
            op("c1", 0, Some(10), checkout("a", 3), Ret::Granted(1)),
            op("c1", 20, Some(30), Call::Release { id: 1 }, Ret::Released),
            op("c2", 31, Some(40), Call::Read, in_use(3, 0)),
        ];
        let err = check(&ops, &caps(), 8).unwrap_err();
        assert!(err.contains("could not place"), "{err}");
    }

    #[test]
    fn a_refusal_when_tokens_were_free_is_not_linearizable() {
        let ops = vec![
            op("c1", 0, Some(10), checkout("a", 3), Ret::Granted(1)),
            op("c1", 20, Some(30), Call::Release { id: 1 }, Ret::Released),
            op("c2", 31, Some(40), checkout("a", 5), Ret::Refused),
        ];
        assert!(check(&ops, &caps(), 8).is_err());
    }
}
