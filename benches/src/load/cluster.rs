//! A three-node cluster of `lsm-server` processes that the tool starts, kills and
//! restarts itself.
//!
//! The nodes are configured as `lsm-server dev` configures them
//! (`lsm_server::dev::node_config`: sled in a data directory, so every write is flushed
//! before it is acknowledged), in a temporary directory, on three consecutive free
//! loopback ports, with the bench license as their license file. Every child process is
//! killed (SIGKILL) when the [`LocalCluster`] is dropped, which happens on success, on
//! error, on Ctrl-C (the run's future is dropped) and on a panic that unwinds through it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lsm_client::api::{ClusterInfo, InitBody};
use lsm_client::{Client, ClientConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

/// Nodes in a started cluster.
pub const NODES: u64 = 3;
/// How long the nodes get to start, elect a leader and install the license.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster of `lsm-server` child processes on loopback.
pub struct LocalCluster {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    exe: PathBuf,
    /// `--set` overrides for every node.
    set: Vec<String>,
    nodes: Vec<NodeProc>,
    /// Killed processes and their CPU ticks just before the kill.
    killed: Vec<(u32, u64)>,
    /// Asks single nodes about themselves.
    probe: Client,
}

/// One node process.
struct NodeProc {
    id: u64,
    addr: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl LocalCluster {
    /// The `lsm-server` binary next to this executable (`target/release/lsm-server` for
    /// `cargo run --release`).
    pub fn default_server_bin() -> Result<PathBuf, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let dir = exe.parent().ok_or("this executable has no directory")?;
        Ok(dir.join("lsm-server"))
    }

    /// Writes the configs and `license` (TOML) into a new temporary directory, starts
    /// three nodes from `exe` (each with `--set` and every entry of `set`), bootstraps the
    /// cluster and waits until it has a leader and has installed the license. `keep` keeps
    /// the directory afterwards.
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
            let path = dir.keep();
            (None, path)
        } else {
            let path = dir.path().to_path_buf();
            (Some(dir), path)
        };
        std::fs::write(path.join("license.toml"), license)
            .map_err(|e| format!("cannot write the license: {e}"))?;
        let base = free_consecutive_ports(NODES as u16)?;
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let config = path.join(format!("node{id}.toml"));
            std::fs::write(&config, lsm_server::dev::node_config(id, &path, base))
                .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
            nodes.push(NodeProc {
                id,
                addr: format!("127.0.0.1:{}", u64::from(base) + id - 1),
                config,
                log: path.join(format!("node{id}.log")),
                child: None,
            });
        }
        let mut probe = ClientConfig::new(nodes.iter().map(|n| n.addr.clone()));
        probe.attempt_timeout = Duration::from_secs(2);
        let probe = Client::new(probe).map_err(|e| e.to_string())?;
        let mut cluster = LocalCluster {
            dir,
            path,
            exe: exe.to_path_buf(),
            set: set.to_vec(),
            nodes,
            killed: Vec::new(),
            probe,
        };
        for id in 1..=NODES {
            cluster.spawn(id)?;
        }
        cluster.bootstrap().await?;
        Ok(cluster)
    }

    /// The directory holding configs, data and logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every node's address, in id order.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Node `id`'s address.
    pub fn addr(&self, id: u64) -> &str {
        &self.node(id).addr
    }

    /// The ids of the nodes whose process runs.
    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// The node ids and process ids of the running nodes.
    pub fn pids(&self) -> Vec<(u64, u32)> {
        self.nodes.iter().filter_map(|n| n.child.as_ref().map(|c| (n.id, c.id()))).collect()
    }

    /// The processes killed so far, with their CPU ticks just before the kill.
    pub fn killed_ticks(&self) -> &[(u32, u64)] {
        &self.killed
    }

    /// What node `addr` says about the cluster: one exchange, no retries.
    pub async fn info(&self, id: u64) -> Option<ClusterInfo> {
        self.probe.cluster_of(self.addr(id)).await.ok()
    }

    /// The running node that says it leads (the highest term wins), if any.
    pub async fn leader(&self) -> Option<(u64, ClusterInfo)> {
        let mut best: Option<(u64, ClusterInfo)> = None;
        for id in self.running() {
            if let Some(info) = self.info(id).await
                && info.role == "Leader"
                && best.as_ref().is_none_or(|(_, b)| info.term > b.term)
            {
                best = Some((id, info));
            }
        }
        best
    }

    /// Kills node `id` with SIGKILL and reaps it.
    pub fn kill(&mut self, id: u64) -> Result<(), String> {
        let node = self.node_mut(id);
        let mut child = node.child.take().ok_or(format!("node {id} is not running"))?;
        let ticks = crate::load::cpu::CpuSample::now(&[child.id()]).node_ticks();
        self.killed.extend(ticks);
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(|e| e.to_string())?);
        kill(pid, Signal::SIGKILL).map_err(|e| format!("cannot kill node {id}: {e}"))?;
        child.wait().map_err(|e| format!("cannot reap node {id}: {e}"))?;
        Ok(())
    }

    /// Starts node `id` again from its configuration and data directory.
    pub fn restart(&mut self, id: u64) -> Result<(), String> {
        self.spawn(id)
    }

    /// Waits until node `id` answers and, as the leader sees it, has caught up to within
    /// `lag` entries; `false` after `timeout`.
    pub async fn wait_caught_up(&self, id: u64, lag: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let answers = self.info(id).await.is_some_and(|info| info.leader.is_some());
            if answers && let Some((_, leader)) = self.leader().await {
                let member = leader.members.iter().find(|m| m.id == id);
                if member.and_then(|m| m.lag).is_some_and(|l| l <= lag) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64) -> Result<(), String> {
        let exe = self.exe.clone();
        let set: Vec<String> =
            self.set.iter().flat_map(|s| ["--set".to_string(), s.clone()]).collect();
        let node = self.node_mut(id);
        if node.child.is_some() {
            return Err(format!("node {id} already runs"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("cannot open {}: {e}", node.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(&node.config)
            .args(&set)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits for every node to answer, initializes the cluster through node 1 (which
    /// installs the license file), and waits for a leader and the license.
    async fn bootstrap(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        for id in 1..=NODES {
            while self.info(id).await.is_none() {
                self.check_alive(id)?;
                if Instant::now() > deadline {
                    return Err(self.failed(id, "did not answer"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut init = ClientConfig::new([self.addr(1).to_string()]);
        init.deadline = START_TIMEOUT;
        let init = Client::new(init).map_err(|e| e.to_string())?;
        init.init(InitBody::default()).await.map_err(|e| format!("init failed: {e}"))?;
        let ready = |info: Option<ClusterInfo>| info.is_some_and(|i| i.leader.is_some());
        for id in 1..=NODES {
            while !ready(self.info(id).await) {
                self.check_alive(id)?;
                if Instant::now() > deadline {
                    return Err(self.failed(id, "found no leader"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn check_alive(&mut self, id: u64) -> Result<(), String> {
        let node = self.node_mut(id);
        if let Some(child) = node.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            node.child = None;
            return Err(self.failed(id, &format!("exited ({status})")));
        }
        Ok(())
    }

    fn failed(&self, id: u64, what: &str) -> String {
        format!(
            "node {id} {what} while starting; the end of its log {}:\n{}",
            self.node(id).log.display(),
            self.log_tail(id, 20)
        )
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = child.wait();
            }
        }
        if self.dir.is_none() {
            eprintln!("lsm_bench: kept the cluster's directory {}", self.path.display());
        }
    }
}

/// The first of `n` consecutive loopback ports that are free now. Another process could
/// take one before the node binds it; the node then fails to start and says so.
fn free_consecutive_ports(n: u16) -> Result<u16, String> {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot bind a loopback port: {e}"))?
            .port();
        if first.checked_add(n).is_none() {
            continue;
        }
        let held: Result<Vec<TcpListener>, _> =
            (first..first + n).map(|p| TcpListener::bind(("127.0.0.1", p))).collect();
        if held.is_ok() {
            return Ok(first);
        }
    }
    Err(format!("found no {n} consecutive free loopback ports"))
}
