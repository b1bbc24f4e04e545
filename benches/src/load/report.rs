//! The summary of a run: a serializable [`Summary`] (`--json`) and the table printed for
//! people, with the targets checked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use lsm_check::Violation;
use serde::Serialize;

use crate::load::cpu::CpuUse;
use crate::load::settings::Mode;
use crate::load::stats::Percentiles;

/// Target: checkout + release pairs per second at 64 clients.
pub const TARGET_PAIRS_PER_S: f64 = 5_000.0;
/// Target: checkout p99 at 64 clients, ms.
pub const TARGET_P99_MS: f64 = 20.0;
/// Target: median failover gap over the kills, ms.
pub const TARGET_FAILOVER_GAP_MS: f64 = 1_000.0;

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The workload.
    pub mode: Mode,
    /// Concurrent clients.
    pub clients: usize,
    /// Measured seconds asked for.
    pub seconds: u64,
    /// Measured seconds, from the end of the warm-up to the last client's stop.
    pub elapsed_s: f64,
    /// Warm-up seconds before the measurement.
    pub warmup_s: u64,
    /// Where the cluster came from.
    pub cluster: String,
    /// Its nodes.
    pub servers: Vec<String>,
    /// `--set` overrides the started nodes ran with.
    pub server_set: Vec<String>,
    /// The clients' longest pause between retry rounds, ms.
    pub backoff_max_ms: u64,
    /// Bench features.
    pub features: usize,
    /// Tokens of each (the smallest total, if they differ).
    pub tokens_per_feature: u64,
    /// Checkout + release pairs completed.
    pub pairs: u64,
    /// Pairs per measured second.
    pub pairs_per_s: f64,
    /// Checkouts granted.
    pub grants: u64,
    /// Refused checkouts by error code.
    pub denials: BTreeMap<String, u64>,
    /// Operations that failed without a refusal, by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Client operations (checkouts and releases), warm-up included.
    pub operations: u64,
    /// HTTP exchanges of those operations.
    pub exchanges: u64,
    /// Exchanges beyond one per operation: the client library's retries.
    pub retries: u64,
    /// Exchanges without an answer (connection refused or reset, timeout).
    pub failed_exchanges: u64,
    /// Exchanges answered 502, 503 or 504.
    pub unavailable_answers: u64,
    /// Checkout latency (granted and refused).
    pub checkout_ms: Percentiles,
    /// Release latency.
    pub release_ms: Percentiles,
    /// The longest time without a successful operation, in ms.
    pub longest_gap_ms: f64,
    /// Leader kills (failover mode).
    pub failover: Option<Failover>,
    /// Grants the cluster lost while the client held them (durability violations found
    /// by the audits and the final check: releases that found them gone, reads that
    /// missed them).
    pub lost_grants: Vec<Violation>,
    /// Live checkouts their client was never told of, or live after their release was
    /// acknowledged (exactly-once violations, audits and the final check).
    pub duplicated_grants: Vec<Violation>,
    /// Every other violation the audits found (safety, fences).
    pub other_violations: Vec<Violation>,
    /// The check after the run.
    pub final_check: FinalCheck,
    /// The machine.
    pub machine: Machine,
}

/// Leader kills and what they cost.
#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    /// One per kill.
    pub kills: Vec<Kill>,
    /// Median over the kills of the longest gap, ms.
    pub median_gap_ms: f64,
    /// Largest of them, ms.
    pub max_gap_ms: f64,
}

/// One leader kill.
#[derive(Clone, Debug, Serialize)]
pub struct Kill {
    /// The killed leader.
    pub node: u64,
    /// When, in seconds after the warm-up.
    pub at_s: f64,
    /// The node that took over.
    pub new_leader: Option<u64>,
    /// From the kill until a survivor said it leads (polled every 10 ms), ms.
    pub elected_after_ms: Option<f64>,
    /// From the kill to the end of `gap_ms`: when the cluster served again, ms.
    pub served_again_after_ms: Option<f64>,
    /// The longest gap between successful operations around the kill (see
    /// `stats::longest_gap`), ms.
    pub gap_ms: f64,
    /// The restarted node caught up before the next kill.
    pub rejoined: bool,
    /// Live checkouts, lost and duplicated grants found by the audit after the kill.
    pub audit_live: u64,
    /// See `audit_live`.
    pub audit_lost: usize,
    /// See `audit_live`.
    pub audit_duplicated: usize,
    /// What went wrong, if anything (no leader to kill, no election, an audit error).
    pub problems: Vec<String>,
}

/// What was left after the run, read linearizably once every client had stopped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FinalCheck {
    /// Live checkouts of the bench clients.
    pub live_checkouts: u64,
    /// Tokens in use of the bench features.
    pub tokens_in_use: u64,
    /// Tokens in use of the bench features before the run (another user's, on a given
    /// cluster).
    pub tokens_in_use_before: u64,
    /// Checkouts whose release got no answer.
    pub unsure_releases: u64,
    /// Checkouts given up on without an answer.
    pub abandoned_checkouts: u64,
    /// Nothing of the bench clients is checked out, and the features' usage is back
    /// where it started.
    pub nothing_left: bool,
    /// The check could not be made.
    pub error: Option<String>,
}

/// The machine the tool ran on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    /// CPUs available.
    pub cpus: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// /proc/loadavg (1, 5, 15 min) before the run.
    pub load_before: [f64; 3],
    /// And after.
    pub load_after: [f64; 3],
    /// CPU use during the measured seconds: the machine, this tool, the started nodes,
    /// and everything else.
    pub cpu: CpuUse,
}

impl Machine {
    /// CPUs and model now; `load_after` is filled in later.
    pub fn now() -> Machine {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            cpus,
            cpu_model,
            load_before: load_average(),
            load_after: [0.0; 3],
            cpu: CpuUse::default(),
        }
    }
}

/// The load averages of /proc/loadavg (zeros where unreadable).
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = field.parse().unwrap_or(0.0);
    }
    out
}

impl Summary {
    /// True when nothing was lost, duplicated or left over, and no other property broke.
    pub fn verified(&self) -> bool {
        self.lost_grants.is_empty()
            && self.duplicated_grants.is_empty()
            && self.other_violations.is_empty()
            && self.final_check.nothing_left
    }

    /// The table for people.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let line = |t: &mut String, key: &str, value: String| {
            let _ = writeln!(t, "{key:<18}{value}");
        };
        let mode = match self.mode {
            Mode::Contended => "contended (one feature)",
            Mode::Uncontended => "uncontended (a feature per client)",
            Mode::Failover => "failover (contended, leader killed)",
        };
        let _ = writeln!(
            t,
            "lsm_bench: {mode}, {} clients, {} s measured after {} s warm-up",
            self.clients, self.seconds, self.warmup_s
        );
        line(&mut t, "cluster", format!("{} ({})", self.cluster, self.servers.join(",")));
        if !self.server_set.is_empty() {
            line(&mut t, "", format!("nodes run with --set {}", self.server_set.join(" --set ")));
        }
        line(&mut t, "clients", format!("retry backoff up to {} ms", self.backoff_max_ms));
        line(
            &mut t,
            "license",
            format!("{} feature(s) of {} tokens", self.features, self.tokens_per_feature),
        );
        line(
            &mut t,
            "pairs",
            format!(
                "{} in {:.2} s: {:.0} pairs/s ({} grants)",
                self.pairs, self.elapsed_s, self.pairs_per_s, self.grants
            ),
        );
        line(&mut t, "checkout", latency(&self.checkout_ms));
        line(&mut t, "release", latency(&self.release_ms));
        line(&mut t, "denials", counts(&self.denials));
        line(
            &mut t,
            "retries",
            format!(
                "{} ({} exchanges for {} operations; {} without an answer, {} answered 5xx)",
                self.retries,
                self.exchanges,
                self.operations,
                self.failed_exchanges,
                self.unavailable_answers
            ),
        );
        line(&mut t, "errors", counts(&self.errors));
        for sample in &self.error_samples {
            line(&mut t, "", format!("e.g. {sample}"));
        }
        line(
            &mut t,
            "longest gap",
            format!("{:.1} ms without a successful operation", self.longest_gap_ms),
        );
        if let Some(failover) = &self.failover {
            for (k, kill) in failover.kills.iter().enumerate() {
                let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
                let new = kill.new_leader.map_or("none".to_string(), |n| format!("node {n}"));
                line(
                    &mut t,
                    if k == 0 { "failover" } else { "" },
                    format!(
                        "kill {}: node {} at {:.1} s; {new} leads after {}, served again after \
                         {}, gap {:.0} ms; {}; audit: {} live, {} lost, {} duplicated{}",
                        k + 1,
                        kill.node,
                        kill.at_s,
                        ms(kill.elected_after_ms),
                        ms(kill.served_again_after_ms),
                        kill.gap_ms,
                        if kill.rejoined { "rejoined" } else { "DID NOT REJOIN" },
                        kill.audit_live,
                        kill.audit_lost,
                        kill.audit_duplicated,
                        if kill.problems.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", kill.problems.join("; "))
                        }
                    ),
                );
            }
            line(
                &mut t,
                "",
                format!(
                    "gap median {:.0} ms, max {:.0} ms over {} kills",
                    failover.median_gap_ms,
                    failover.max_gap_ms,
                    failover.kills.len()
                ),
            );
        }
        line(&mut t, "lost grants", self.lost_grants.len().to_string());
        for lost in self.lost_grants.iter().take(5) {
            line(&mut t, "", lost.to_string());
        }
        line(&mut t, "duplicated grants", self.duplicated_grants.len().to_string());
        for dup in self.duplicated_grants.iter().take(5) {
            line(&mut t, "", dup.to_string());
        }
        if !self.other_violations.is_empty() {
            line(&mut t, "other violations", self.other_violations.len().to_string());
        }
        for other in self.other_violations.iter().take(5) {
            line(&mut t, "", other.to_string());
        }
        let f = &self.final_check;
        line(
            &mut t,
            "left checked out",
            match &f.error {
                Some(error) => format!("UNKNOWN: {error}"),
                None => format!(
                    "{}: {} live checkouts of bench clients, {} tokens in use ({} before); \
                     {} releases and {} checkouts without an answer",
                    if f.nothing_left { "nothing" } else { "SOMETHING" },
                    f.live_checkouts,
                    f.tokens_in_use,
                    f.tokens_in_use_before,
                    f.unsure_releases,
                    f.abandoned_checkouts
                ),
            },
        );
        let m = &self.machine;
        line(
            &mut t,
            "machine",
            format!(
                "{} CPUs ({}); load {:.2} {:.2} {:.2} before, {:.2} {:.2} {:.2} after",
                m.cpus,
                m.cpu_model,
                m.load_before[0],
                m.load_before[1],
                m.load_before[2],
                m.load_after[0],
                m.load_after[1],
                m.load_after[2]
            ),
        );
        let c = &m.cpu;
        line(
            &mut t,
            "cpu",
            format!(
                "{:.2} of {} cores busy while measuring: clients {:.2}, nodes {:.2}, other \
                 processes {:.2}",
                c.machine_cores, m.cpus, c.bench_cores, c.nodes_cores, c.others_cores
            ),
        );
        for (i, target) in self.targets().iter().enumerate() {
            line(&mut t, if i == 0 { "targets" } else { "" }, target.clone());
        }
        t
    }

    /// The targets that apply to this run, each with the result.
    pub fn targets(&self) -> Vec<String> {
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        let mut out = Vec::new();
        let at = if self.clients == 64 { "" } else { " (the target is set for 64 clients)" };
        if self.mode != Mode::Failover {
            out.push(format!(
                ">= {TARGET_PAIRS_PER_S:.0} pairs/s: {:.0}, {}{at}",
                self.pairs_per_s,
                met(self.pairs_per_s >= TARGET_PAIRS_PER_S)
            ));
            out.push(format!(
                "checkout p99 < {TARGET_P99_MS:.0} ms: {:.2} ms, {}{at}",
                self.checkout_ms.p99_ms,
                met(self.checkout_ms.p99_ms < TARGET_P99_MS)
            ));
        }
        if let Some(failover) = &self.failover {
            let enough =
                if failover.kills.len() >= 5 { "" } else { " (the target asks for 5 kills)" };
            out.push(format!(
                "failover gap median < {TARGET_FAILOVER_GAP_MS:.0} ms: {:.0} ms, {}{enough}",
                failover.median_gap_ms,
                met(failover.median_gap_ms < TARGET_FAILOVER_GAP_MS)
            ));
            out.push(format!(
                "zero lost and zero duplicated grants: {} lost, {} duplicated, {}",
                self.lost_grants.len(),
                self.duplicated_grants.len(),
                met(self.lost_grants.is_empty() && self.duplicated_grants.is_empty())
            ));
        }
        out
    }
}

fn latency(p: &Percentiles) -> String {
    if p.count == 0 {
        return "none".into();
    }
    format!(
        "p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, n {})",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.mean_ms, p.count
    )
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    let total: u64 = map.values().sum();
    if total == 0 {
        return "0".into();
    }
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}
