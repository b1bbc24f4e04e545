//! The three `lsm-server` processes `lsm_bench` starts, kills and restarts itself: an
//! [`lsm_server::kit::Cluster`] in a temporary directory, with the bench's bookkeeping.
//!
//! The nodes keep their data in redb (every write is synced before it is acknowledged),
//! listen on free loopback ports and have the bench license as their license file. What
//! the bench adds to the kit is the CPU ticks of every process it kills (the run's CPU
//! account counts them) and the choice to keep the directory. Every node is killed
//! (SIGKILL) when the [`LocalCluster`] is dropped, which happens on success, on error, on
//! Ctrl-C (the run's future is dropped) and on a panic that unwinds through it; if the
//! tool dies without any of that, the nodes exit by themselves (`--exit-with-parent`).

use std::ops::Deref;
use std::path::{Path, PathBuf};

use lsm_server::kit::{self, Cluster, Spec};

/// Nodes in a started cluster.
pub const NODES: u64 = 3;

/// A cluster of `lsm-server` child processes on loopback.
pub struct LocalCluster {
    /// Declared first, so the nodes are killed before their directory is removed.
    kit: Cluster,
    /// The temporary directory, unless it is kept.
    dir: Option<tempfile::TempDir>,
    /// Killed processes and their CPU ticks just before the kill.
    killed: Vec<(u32, u64)>,
}

impl LocalCluster {
    /// The `lsm-server` binary next to this executable (`target/release/lsm-server` for
    /// `cargo run --release`).
    pub fn default_server_bin() -> Result<PathBuf, String> {
        kit::sibling_binary("lsm-server").map_err(|e| e.to_string())
    }

    /// Starts three nodes from `exe` (each with `--set` and every entry of `set`) with
    /// `license` (TOML) in a new temporary directory, bootstraps the cluster and waits
    /// until every node is ready. `keep` keeps the directory afterwards.
    pub async fn start(
        exe: &Path,
        set: &[String],
        license: &str,
        keep: bool,
    ) -> Result<LocalCluster, String> {
        if !exe.is_file() {
            return Err(format!(
                "{} does not exist; build it first with `cargo build --release -p lsm-server` \
                 (or pass --server-bin)",
                exe.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("lsm-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let (dir, path) = if keep {
            (None, dir.keep())
        } else {
            let path = dir.path().to_path_buf();
            (Some(dir), path)
        };
        let spec = Spec {
            nodes: NODES,
            cluster_id: "lsm-bench".into(),
            license: Some(license.to_string()),
            set: set.to_vec(),
            ..Spec::new(exe, path)
        };
        let kit = Cluster::start(spec).await.map_err(|e| e.to_string())?;
        Ok(LocalCluster { kit, dir, killed: Vec::new() })
    }

    /// The directory holding configs, data and logs.
    pub fn path(&self) -> &Path {
        self.kit.dir()
    }

    /// The processes killed so far, with their CPU ticks just before the kill.
    pub fn killed_ticks(&self) -> &[(u32, u64)] {
        &self.killed
    }

    /// Kills node `id` with SIGKILL and reaps it, noting its CPU ticks first.
    pub fn kill(&mut self, id: u64) -> Result<(), String> {
        let pid = self.kit.pid(id).ok_or(format!("node {id} is not running"))?;
        self.killed.extend(crate::load::cpu::CpuSample::now(&[pid]).node_ticks());
        self.kit.kill(id).map_err(|e| e.to_string())
    }

    /// Starts node `id` again from its configuration and data directory, and returns at
    /// once.
    pub fn restart(&mut self, id: u64) -> Result<(), String> {
        self.kit.spawn(id).map_err(|e| e.to_string())
    }
}

impl Deref for LocalCluster {
    type Target = Cluster;

    /// The kit's cluster: addresses, pids, the leader, catching up, logs.
    fn deref(&self) -> &Cluster {
        &self.kit
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.dir.is_none() {
            eprintln!("lsm_bench: kept the cluster's directory {}", self.kit.dir().display());
        }
    }
}
