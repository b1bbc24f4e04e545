//! Violations, the settings of a run's checks, and the report of all of them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::history::{Entry, Event, Loss, Micros};
use crate::liveness::Liveness;
use crate::safety::Capacity;
use crate::{durability, exactly_once, fences, liveness, safety};

/// The property a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Property {
    /// Tokens held never exceed a cap or a total.
    Safety,
    /// An acknowledged checkout stays live while its client holds it.
    Durability,
    /// One request creates at most one checkout, and a checkout ends once.
    ExactlyOnce,
    /// Fencing tokens are unique and only grow.
    Fences,
    /// After faults heal, the cluster serves within a bound.
    Liveness,
}

/// One broken property, with the moment and the evidence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Violation {
    /// The property.
    pub property: Property,
    /// When (microseconds since the start).
    pub at: Micros,
    /// What happened.
    pub what: String,
}

impl Violation {
    /// A violation of `property` at `at`.
    pub fn new(property: Property, at: Micros, what: String) -> Violation {
        Violation { property, at, what }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at {:.3} s: {}", self.property, self.at as f64 / 1e6, self.what)
    }
}

/// What a run's checks need to know beyond its history.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    /// Every feature's total and every pool's cap.
    pub capacity: Capacity,
    /// A release answered within this time of being sent must find its checkout live
    /// (see [`durability::check`]); `None`: at any time.
    pub release_window: Option<Duration>,
    /// The liveness check, for runs that heal their faults and probe.
    pub liveness: Option<Liveness>,
}

/// What a history holds, and every violation found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Counts of what happened, by kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// Every violation found, by property and time.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Runs every check over `entries`.
    pub fn check(entries: &[Entry], checks: &Checks) -> Report {
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
                Event::Read { .. } => "reads",
                Event::Snapshot { .. } => "snapshots",
                Event::Fault { .. } => "faults",
                Event::Heal { .. } => "heals",
                Event::Probe { .. } => "probes",
                Event::Released { .. } | Event::ReadDone { .. } | Event::Note { .. } => continue,
            };
            *counts.entry(kind).or_default() += 1;
        }
        let mut violations = safety::check(entries, &checks.capacity);
        violations.extend(durability::check(entries, checks.release_window));
        violations.extend(exactly_once::check(entries));
        violations.extend(fences::check(entries));
        if let Some(bound) = &checks.liveness {
            violations.extend(liveness::check(entries, bound));
        }
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

    /// The violations of `property`.
    pub fn of(&self, property: Property) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.property == property)
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
    use crate::script::{Script, good, properties};

    #[test]
    fn a_good_history_passes() {
        let report = good().check();
        assert!(report.ok(), "{report}");
        assert_eq!(report.count("granted"), 3);
    }

    #[test]
    fn one_check_per_property_runs() {
        // A history that breaks all five at once is reported under all five.
        let report = Script::default()
            .grant(10, "a", 1, 1, crate::script::tokens("dyna", "smp", 7))
            .grant(20, "b", 1, 1, crate::script::tokens("dyna", "smp", 1))
            .at(30, crate::Event::Lost { client: "b".into(), id: 1, loss: crate::Loss::Expired })
            .at(40, crate::Event::Heal { what: "all".into() })
            .check();
        let mut seen = properties(&report);
        seen.dedup();
        use crate::Property::*;
        assert_eq!(seen, [Safety, Durability, ExactlyOnce, Fences, Liveness], "{report}");
    }
}
