//! Liveness: after faults heal, the cluster serves within a bound.
//!
//! Every heal is followed, within the bound, by a successful probe (a fresh request the
//! cluster answered); no probe fails; and, where the workload can show it, some checkout
//! is granted after the last heal.

use std::time::Duration;

use crate::history::{Entry, Event, micros};
use crate::report::{Property, Violation};

/// How liveness is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Within this time after a heal, a probe must have succeeded.
    pub bound: Duration,
    /// Some checkout must be granted after the last heal. Off where every client may
    /// rightly hold its checkout from before the heal to the end (the simulation).
    pub progress_after_heal: bool,
}

/// Liveness (see the module docs).
pub fn check(entries: &[Entry], liveness: &Liveness) -> Vec<Violation> {
    let mut violations = Vec::new();
    let bound = micros(liveness.bound);
    for (i, entry) in entries.iter().enumerate() {
        match &entry.event {
            Event::Heal { what } => {
                let served = entries[i + 1..].iter().find_map(|e| match &e.event {
                    Event::Probe { ok: true, .. } => Some(e.at),
                    _ => None,
                });
                if served.is_none_or(|at| at > entry.at + bound) {
                    violations.push(Violation::new(
                        Property::Liveness,
                        entry.at,
                        format!(
                            "after healing {what}, no probe succeeded within {:.1} s",
                            bound as f64 / 1e6
                        ),
                    ));
                }
            }
            Event::Probe { ok: false, detail } => violations.push(Violation::new(
                Property::Liveness,
                entry.at,
                format!("a probe failed: {detail}"),
            )),
            _ => {}
        }
    }
    let last_heal = entries.iter().rposition(|e| matches!(e.event, Event::Heal { .. }));
    if liveness.progress_after_heal
        && let Some(last) = last_heal
    {
        let granted = entries[last..].iter().any(|e| matches!(e.event, Event::Granted { .. }));
        if !granted {
            violations.push(Violation::new(
                Property::Liveness,
                entries[last].at,
                "no checkout was granted after the last heal".into(),
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use crate::Property;
    use crate::history::Event;
    use crate::script::{Script, checks, properties, tokens};

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
        // Without the progress rule, the probe is the evidence.
        let mut checks = checks();
        checks.liveness.as_mut().unwrap().progress_after_heal = false;
        assert!(stuck.check_with(&checks).ok());
        assert_eq!(properties(&slow.check_with(&checks)), [Property::Liveness]);
    }
}
