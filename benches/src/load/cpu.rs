//! How busy the machine was: CPU time of the whole machine (`/proc/stat`), of this tool
//! and of the nodes it started (`/proc/<pid>/stat`), between two samples. On a shared
//! machine the difference says how much CPU other work took from the run, which load
//! averages only hint at.

use serde::Serialize;

/// One reading.
#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    /// Busy and total ticks of all CPUs together.
    machine: (u64, u64),
    /// User + system ticks of this process.
    bench: u64,
    /// User + system ticks of each watched process, by pid.
    nodes: Vec<(u32, u64)>,
}

/// CPU use between two samples, in cores (1.0 = one CPU busy all the time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CpuUse {
    /// Every process on the machine.
    pub machine_cores: f64,
    /// This tool (its clients).
    pub bench_cores: f64,
    /// The nodes it started, killed and restarted ones included.
    pub nodes_cores: f64,
    /// Everything else: `machine - bench - nodes`.
    pub others_cores: f64,
}

impl CpuSample {
    /// Reads the machine, this process and `pids` now (what cannot be read counts 0).
    pub fn now(pids: &[u32]) -> CpuSample {
        let machine = std::fs::read_to_string("/proc/stat").map_or((0, 0), |t| machine_ticks(&t));
        let ticks = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| process_ticks(&t))
        };
        CpuSample {
            machine,
            bench: ticks("self").unwrap_or(0),
            nodes: pids.iter().filter_map(|&p| ticks(&p.to_string()).map(|t| (p, t))).collect(),
        }
    }

    /// The watched processes' ticks.
    pub fn node_ticks(&self) -> Vec<(u32, u64)> {
        self.nodes.clone()
    }

    /// Adds processes that have exited since `self`, with their last reading.
    pub fn with_exited(mut self, exited: &[(u32, u64)]) -> CpuSample {
        self.nodes.extend_from_slice(exited);
        self
    }

    /// Use from `self` to `later`, on a machine of `cpus` CPUs. A watched process that
    /// `self` did not see started in between and counts whole.
    pub fn until(&self, later: &CpuSample, cpus: usize) -> CpuUse {
        let total = later.machine.1.saturating_sub(self.machine.1);
        if total == 0 {
            return CpuUse::default();
        }
        let cores = |ticks: u64| ticks as f64 / total as f64 * cpus as f64;
        let nodes: u64 = later
            .nodes
            .iter()
            .map(|(pid, t)| {
                let before = self.nodes.iter().find(|(p, _)| p == pid).map_or(0, |n| n.1);
                t.saturating_sub(before)
            })
            .sum();
        let machine = cores(later.machine.0.saturating_sub(self.machine.0));
        let bench = cores(later.bench.saturating_sub(self.bench));
        let nodes = cores(nodes);
        CpuUse {
            machine_cores: machine,
            bench_cores: bench,
            nodes_cores: nodes,
            others_cores: (machine - bench - nodes).max(0.0),
        }
    }
}

/// Busy and total ticks from the `cpu` line of /proc/stat (idle and iowait are not busy).
fn machine_ticks(stat: &str) -> (u64, u64) {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// User + system ticks from /proc/<pid>/stat (the command name may hold spaces, so the
/// fields are counted after its closing parenthesis).
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(machine_ticks(stat), (160, 980));
        let pid = "4242 (tokio rt) x) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0";
        assert_eq!(process_ticks(pid), Some(333));
        assert_eq!(process_ticks("garbage"), None);
    }

    #[test]
    fn use_is_split_between_bench_nodes_and_others() {
        let before = CpuSample { machine: (100, 1_000), bench: 10, nodes: vec![(1, 5), (2, 5)] };
        // Node 1 ran throughout, node 2 was killed at 105 ticks, node 3 started since.
        let after =
            CpuSample { machine: (1_100, 2_000), bench: 210, nodes: vec![(1, 205), (3, 50)] }
                .with_exited(&[(2, 105)]);
        let used = after.machine.0 - before.machine.0;
        assert_eq!(used, 1_000);
        let u = before.until(&after, 2);
        assert!((u.machine_cores - 2.0).abs() < 1e-9, "{u:?}");
        assert!((u.bench_cores - 0.4).abs() < 1e-9, "{u:?}");
        assert!((u.nodes_cores - 0.7).abs() < 1e-9, "{u:?}");
        assert!((u.others_cores - 0.9).abs() < 1e-9, "{u:?}");
    }
}
