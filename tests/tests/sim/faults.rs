//! The fault schedule: what goes wrong, when, and for how long, drawn from the seed.
//!
//! Faults start after the license is installed and are all healed at the heal time, well
//! before the end of the run, so liveness can be checked afterwards:
//!
//! - a node crashes, either between two steps or at its `k`-th storage write (losing what
//!   it had not flushed, that write included), and restarts later on what survived;
//! - two hosts (nodes or clients) are partitioned, one way only, or have their messages
//!   held and then delivered all at once;
//! - a link gets slow (up to hundreds of ms per message) or lossy (a lost TCP segment
//!   stalls its connection until a timeout gives up on it);
//! - a client is cut off from whichever node leads at that moment;
//! - the leader's clock jumps backwards (up to seconds) or forwards (less than the
//!   client's lease safety margin, see [`max_forward_jump_ms`]);
//! - in full runs, any node's clock jumps by days, forwards or backwards
//!   ([`day_jumps`]), so that a node whose clock is days ahead may win an election.
//!
//! Every node's clock also has a constant skew of up to ±3 s from the start.
//!
//! Link faults never overlap on one pair of hosts (turmoil does not combine a hold with a
//! one-way partition), and a node is never crashed while it is already down.

use std::collections::BTreeSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Node `node` (0-based) crashes, at its `at_write`-th storage write or else between
    /// steps, and restarts `down_ms` later.
    Crash {
        /// Index into the nodes.
        node: usize,
        /// Crash at this storage write from now (`None`: between two steps).
        at_write: Option<u32>,
        /// How long it stays down.
        down_ms: u64,
    },
    /// No messages between `a` and `b` for `ms`.
    Partition {
        /// A host.
        a: String,
        /// The other.
        b: String,
        /// For how long.
        ms: u64,
    },
    /// No messages from `from` to `to` for `ms`; the other way works.
    OneWay {
        /// The sender cut off.
        from: String,
        /// The receiver.
        to: String,
        /// For how long.
        ms: u64,
    },
    /// Messages between `a` and `b` are held for `ms`, then all delivered.
    Hold {
        /// A host.
        a: String,
        /// The other.
        b: String,
        /// For how long.
        ms: u64,
    },
    /// Messages between `a` and `b` take up to `max_ms` for `ms`.
    Slow {
        /// A host.
        a: String,
        /// The other.
        b: String,
        /// Largest latency.
        max_ms: u64,
        /// For how long.
        ms: u64,
    },
    /// Each message between `a` and `b` breaks the link with probability `percent`% for
    /// `ms` (a broken link drops what is in flight until it repairs).
    Lossy {
        /// A host.
        a: String,
        /// The other.
        b: String,
        /// Loss probability per message, in percent.
        percent: u32,
        /// For how long.
        ms: u64,
    },
    /// Client `client` cannot reach the current leader for `ms`.
    CutFromLeader {
        /// The client host.
        client: String,
        /// For how long.
        ms: u64,
    },
    /// The leader's clock jumps by `delta_ms` (forwards when positive).
    Jump {
        /// The jump.
        delta_ms: i64,
    },
    /// Node `node`'s clock jumps by `delta_ms` (forwards when positive), whether it leads
    /// or not.
    NodeJump {
        /// Index into the nodes.
        node: usize,
        /// The jump.
        delta_ms: i64,
    },
}

/// A day in ms.
pub const DAY_MS: u64 = 86_400_000;

/// Draws one to three jumps of one to three days, forwards or backwards, on random nodes,
/// starting in `[500, heal_ms)` after the clients start. The heal does not undo them: a
/// clock that is days off stays so.
pub fn day_jumps(rng: &mut ChaCha8Rng, heal_ms: u64) -> Vec<Scheduled> {
    let count = rng.random_range(1..=3);
    (0..count)
        .map(|_| {
            let at_ms = rng.random_range(500..heal_ms.max(501));
            let node = rng.random_range(0..3);
            let jump = rng.random_range(DAY_MS..=3 * DAY_MS) as i64;
            let delta_ms = if rng.random_bool(0.5) { jump } else { -jump };
            Scheduled { at_ms, fault: Fault::NodeJump { node, delta_ms } }
        })
        .collect()
}

/// A fault and when it starts, in ms after the clients start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// Start, relative to the moment the clients start.
    pub at_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// The most the schedule moves the leader's clock forwards in one run: two lease TTLs,
/// far beyond the client's safety margin. Paced (`lsm_raft::clock::Pace`), replicated
/// time gains at most 5 % on real time however far the clock jumps; unpaced, such a jump
/// would expire leases early while their clients still believe them valid.
pub fn max_forward_jump_ms(lease_ttl_ms: u64) -> u64 {
    2 * lease_ttl_ms
}

/// Draws a schedule of `count` faults starting in `[500, heal_ms)` after the clients start,
/// each ending by `heal_ms`. `clients` are the client host names; nodes are `n1`..`n3`.
pub fn schedule(
    rng: &mut ChaCha8Rng,
    count: usize,
    heal_ms: u64,
    clients: &[String],
    lease_ttl_ms: u64,
) -> Vec<Scheduled> {
    let nodes: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
    let hosts: Vec<String> = nodes.iter().chain(clients).cloned().collect();
    let mut forward_left = max_forward_jump_ms(lease_ttl_ms);
    let mut out = Vec::new();
    for _ in 0..count {
        let at_ms = rng.random_range(500..heal_ms.max(501));
        let room = heal_ms.saturating_sub(at_ms).max(1);
        let ms = rng.random_range(1..=room.min(4_000));
        let pick =
            |rng: &mut ChaCha8Rng, from: &[String]| from[rng.random_range(0..from.len())].clone();
        let pair = |rng: &mut ChaCha8Rng| {
            let a = pick(rng, &nodes);
            let b = loop {
                let b = pick(rng, &hosts);
                if b != a {
                    break b;
                }
            };
            (a, b)
        };
        let fault = match rng.random_range(0..100) {
            0..=19 => Fault::Crash {
                node: rng.random_range(0..3),
                at_write: rng.random_bool(0.6).then(|| rng.random_range(1..=4)),
                down_ms: ms,
            },
            20..=34 => {
                let (a, b) = pair(rng);
                Fault::Partition { a, b, ms }
            }
            35..=46 => {
                let (a, b) = pair(rng);
                let (from, to) = if rng.random_bool(0.5) { (a, b) } else { (b, a) };
                Fault::OneWay { from, to, ms }
            }
            47..=56 => {
                let (a, b) = pair(rng);
                Fault::Hold { a, b, ms: ms.min(2_000) }
            }
            57..=66 => {
                let (a, b) = pair(rng);
                Fault::Slow { a, b, max_ms: rng.random_range(20..400), ms }
            }
            67..=76 => {
                let (a, b) = pair(rng);
                Fault::Lossy { a, b, percent: rng.random_range(1..=20), ms }
            }
            77..=86 if !clients.is_empty() => {
                Fault::CutFromLeader { client: pick(rng, clients), ms }
            }
            _ => {
                let forward = rng.random_bool(0.5) && forward_left > 0;
                let delta_ms = if forward {
                    let jump = rng.random_range(1..=forward_left);
                    forward_left -= jump;
                    jump as i64
                } else {
                    -(rng.random_range(1..=5_000) as i64)
                };
                Fault::Jump { delta_ms }
            }
        };
        out.push(Scheduled { at_ms, fault });
    }
    out.sort_by_key(|s| s.at_ms);
    out
}

/// The unordered pair of two hosts, for keeping link faults apart.
pub fn link(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) }
}

/// Link faults in force, by unordered pair.
pub type Links = BTreeSet<(String, String)>;

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn schedules_end_by_the_heal_and_bound_forward_jumps() {
        let clients = vec!["c1".to_string(), "c2".to_string()];
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let faults = schedule(&mut rng, 12, 8_000, &clients, 3_000);
            let mut forward = 0;
            for s in &faults {
                assert!(s.at_ms >= 500 && s.at_ms < 8_000, "{s:?}");
                if let Fault::Jump { delta_ms } = s.fault
                    && delta_ms > 0
                {
                    forward += delta_ms;
                }
            }
            assert!(forward as u64 <= max_forward_jump_ms(3_000), "seed {seed}");
        }
    }

    #[test]
    fn day_jumps_are_days_either_way_on_every_node() {
        let mut nodes = BTreeSet::new();
        let mut directions = BTreeSet::new();
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let jumps = day_jumps(&mut rng, 6_000);
            assert!((1..=3).contains(&jumps.len()), "seed {seed}");
            for s in jumps {
                assert!(s.at_ms >= 500 && s.at_ms < 6_000, "{s:?}");
                let Fault::NodeJump { node, delta_ms } = s.fault else { panic!("{s:?}") };
                assert!((DAY_MS..=3 * DAY_MS).contains(&delta_ms.unsigned_abs()), "{s:?}");
                nodes.insert(node);
                directions.insert(delta_ms > 0);
            }
        }
        assert_eq!(nodes.len(), 3);
        assert_eq!(directions.len(), 2);
    }
}
