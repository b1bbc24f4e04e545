//! A cluster of `lsm-server` processes on this machine: the one launcher behind
//! `lsm-server dev`, the end-to-end and fault tests (`lsm-tests`) and `lsm_bench`.
//!
//! A [`Spec`] says what to start: how many nodes, from which binary, in which directory,
//! on which ports, with which extra configuration and license. [`Cluster::prepare`] writes
//! the license (`license.toml`) and one configuration per node (`node{id}.toml`) into the
//! directory, keeping any file that exists so that a rerun reuses it, and reads every
//! configuration back as the node will (so its address is the one the node listens on).
//! [`Cluster::launch`] starts each node as `lsm-server run --config node{id}.toml
//! --exit-with-parent <this process>` in its own process group, with its data in
//! `node{id}` and its output appended to `node{id}.log`; [`Cluster::bootstrap`] waits until
//! every node answers, initializes the cluster through node 1 (installing the license)
//! and waits until every node is ready. [`Cluster::start`] does all three.
//!
//! Nodes die with their parent: `--exit-with-parent` makes a node exit soon after this
//! process is gone, however it went (a panic, SIGKILL), and dropping a [`Cluster`] kills
//! its nodes (SIGKILL). Meanwhile one node can be killed, stopped (SIGTERM, then SIGKILL
//! after a grace period), paused (SIGSTOP) and resumed, and restarted from its data
//! directory; the admin API (`/v1/admin/cluster`) tells which node leads and whether a
//! node has caught up. The directory itself belongs to the caller: the kit neither
//! creates a temporary one nor removes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use lsm_client::api::{ClusterInfo, ErrorCode, InitBody, path};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::config::{Config, Overrides};
use crate::error::ServerError;
use crate::remote::Remote;

/// How long nodes get by default to start, elect a leader and install the license, and a
/// restarted node to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopped node gets by default after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often the kit looks again while it waits for a node.
const POLL: Duration = Duration::from_millis(50);

/// How long one question to a node may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a [`Cluster`] is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// How many nodes (ids 1 to `nodes`).
    pub nodes: u64,
    /// The `lsm-server` binary.
    pub exe: PathBuf,
    /// Where configurations, the license, data and logs go; it is created if missing.
    pub dir: PathBuf,
    /// Which loopback ports the nodes listen on.
    pub ports: Ports,
    /// The `cluster_id` of every node.
    pub cluster_id: String,
    /// The license (TOML) written to `license.toml`, named as every node's
    /// `license_file` and installed by `init`; `None`: no license file.
    pub license: Option<String>,
    /// Extra top-level settings for every node, one `key = value` line each, such as
    /// `lease_ttl_ms = 6000`.
    pub settings: Vec<String>,
    /// Extra TOML tables for single nodes, by node id, written after `[peers]`, such as a
    /// `[dial]` table.
    pub tables: BTreeMap<u64, String>,
    /// `--set KEY=VALUE` overrides on every node's command line.
    pub set: Vec<String>,
    /// Comment lines at the top of every configuration file.
    pub note: Vec<String>,
    /// Pass this process's `RUST_LOG` on to the nodes (otherwise their `log_level` rules).
    pub inherit_rust_log: bool,
    /// Initialize the cluster once the nodes answer ([`Cluster::bootstrap`]).
    pub bootstrap: bool,
    /// How long [`Cluster::bootstrap`] and [`Cluster::restart`] wait.
    pub start_timeout: Duration,
    /// How long [`Cluster::stop`] waits after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
}

/// The ports of a [`Spec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    /// Free ephemeral loopback ports, found by binding port 0 ([`free_ports`]).
    Free,
    /// Node `n` listens on `127.0.0.1:(base + n - 1)`.
    Base(u16),
    /// Node `n` listens on the `n`th port of the list.
    Given(Vec<u16>),
}

/// How [`Cluster::bootstrap`] found the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// It initialized the cluster (and installed the license, if there is one).
    Done,
    /// The cluster was initialized already (a rerun on the same data).
    Already,
    /// [`Spec::bootstrap`] is off: nothing was asked.
    Skipped,
}

/// One node of a [`Cluster`].
#[derive(Debug)]
pub struct Node {
    id: u64,
    addr: String,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    remote: Remote,
    child: Option<Child>,
}

/// `lsm-server` processes on this machine, made as a [`Spec`] says.
#[derive(Debug)]
pub struct Cluster {
    spec: Spec,
    nodes: BTreeMap<u64, Node>,
}

/// `n` free loopback ports, found by binding port 0. Another process could take one
/// before the node binds it; the node then fails to start, and says so in its log.
pub fn free_ports(n: usize) -> Result<Vec<u16>, ServerError> {
    let bind = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr().map(|a| (l, a)));
    let held: Vec<_> = (0..n)
        .map(|_| bind())
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::io("cannot bind a loopback port", e))?;
    Ok(held.iter().map(|(_, addr)| addr.port()).collect())
}

/// The binary `name` in the directory of the running executable (`target/release/` for
/// a `cargo run --release` tool, `target/debug/` for a debug one).
pub fn sibling_binary(name: &str) -> Result<PathBuf, ServerError> {
    let exe = std::env::current_exe()
        .map_err(|e| ServerError::io("cannot find the running executable", e))?;
    let dir = exe.parent().ok_or_else(|| fail("the running executable has no directory"))?;
    Ok(dir.join(name))
}

impl Spec {
    /// Three nodes of `exe` in `dir` on free ports, no license, bootstrapped, with the
    /// default timeouts.
    pub fn new(exe: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Spec {
        Spec {
            nodes: 3,
            exe: exe.into(),
            dir: dir.into(),
            ports: Ports::Free,
            cluster_id: "lsm".into(),
            license: None,
            settings: Vec::new(),
            tables: BTreeMap::new(),
            set: Vec::new(),
            note: Vec::new(),
            inherit_rust_log: false,
            bootstrap: true,
            start_timeout: START_TIMEOUT,
            stop_grace: STOP_GRACE,
        }
    }

    /// The license file's path.
    pub fn license_file(&self) -> PathBuf {
        self.dir.join("license.toml")
    }

    /// Node `id`'s configuration file.
    pub fn config_file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.toml"))
    }

    /// The nodes' addresses, by id, as [`Spec::ports`] gives them ([`Ports::Free`] finds
    /// new ones at every call).
    pub fn peers(&self) -> Result<BTreeMap<u64, String>, ServerError> {
        let count = usize::try_from(self.nodes).map_err(|_| fail("too many nodes"))?;
        let ports = match &self.ports {
            Ports::Free => free_ports(count)?,
            Ports::Base(base) => (0..self.nodes)
                .map(|i| u16::try_from(u64::from(*base) + i))
                .collect::<Result<_, _>>()
                .map_err(|_| fail(format!("{} nodes from port {base} pass 65535", self.nodes)))?,
            Ports::Given(ports) if ports.len() == count => ports.clone(),
            Ports::Given(ports) => {
                return Err(fail(format!("{} ports given for {count} nodes", ports.len())));
            }
        };
        Ok((1..=self.nodes)
            .zip(ports)
            .map(|(id, port)| (id, format!("127.0.0.1:{port}")))
            .collect())
    }

    /// The configuration file text of node `id` among `peers`.
    pub fn config_text(&self, id: u64, peers: &BTreeMap<u64, String>) -> String {
        let quote = |path: PathBuf| toml::Value::String(path.display().to_string()).to_string();
        let mut text = String::new();
        for line in &self.note {
            let _ = writeln!(text, "# {line}");
        }
        let _ = writeln!(text, "node_id = {id}");
        let _ = writeln!(text, "cluster_id = {}", toml::Value::String(self.cluster_id.clone()));
        let _ = writeln!(text, "listen = \"{}\"", peers.get(&id).map_or("", String::as_str));
        let _ = writeln!(text, "data_dir = {}", quote(self.dir.join(format!("node{id}"))));
        if self.license.is_some() {
            let _ = writeln!(text, "license_file = {}", quote(self.license_file()));
        }
        let _ = writeln!(text, "log_level = \"info\"");
        for setting in &self.settings {
            let _ = writeln!(text, "{setting}");
        }
        let _ = writeln!(text, "\n[peers]");
        for (peer, addr) in peers {
            let _ = writeln!(text, "{peer} = \"{addr}\"");
        }
        if let Some(table) = self.tables.get(&id) {
            let _ = write!(text, "\n{}", table.trim_end());
            text.push('\n');
        }
        text
    }
}

impl Node {
    /// Its id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its configuration file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Its log file (stdout and stderr of every run, appended).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its process id, while the kit has a process for it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the kit has a process for it (started, and not seen to exit).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Cluster {
    /// Writes the directory as `spec` says (keeping the files that exist) and reads every
    /// node's configuration back; starts nothing.
    pub fn prepare(spec: Spec) -> Result<Cluster, ServerError> {
        let dir = &spec.dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| ServerError::io(format!("cannot create {}", dir.display()), e))?;
        if let Some(license) = &spec.license {
            write_new(&spec.license_file(), license)?;
        }
        let peers = spec.peers()?;
        let overrides = Overrides { set: spec.set.clone(), ..Overrides::default() };
        let mut nodes = BTreeMap::new();
        for id in 1..=spec.nodes {
            let file = spec.config_file(id);
            write_new(&file, &spec.config_text(id, &peers))?;
            let config = Config::load(Some(&file), &overrides)?;
            config.validate().map_err(|e| fail(format!("{}: {e}", file.display())))?;
            if config.node_id != id {
                return Err(fail(format!(
                    "{} is node {}, not {id}",
                    file.display(),
                    config.node_id
                )));
            }
            let addr = config.advertise();
            let node = Node {
                id,
                remote: Remote::new(addr.clone(), None),
                addr,
                config: file,
                data: config.data_dir.clone(),
                log: dir.join(format!("node{id}.log")),
                child: None,
            };
            nodes.insert(id, node);
        }
        Ok(Cluster { spec, nodes })
    }

    /// Starts every node that does not run.
    pub fn launch(&mut self) -> Result<(), ServerError> {
        for id in self.ids() {
            if !self.nodes[&id].running() {
                self.spawn(id)?;
            }
        }
        Ok(())
    }

    /// Waits until every node answers, initializes the cluster through the first node if
    /// [`Spec::bootstrap`] says so, and then waits until every node is ready (`/readyz`:
    /// it knows a leader and has applied what it knows to be committed).
    pub async fn bootstrap(&mut self) -> Result<Init, ServerError> {
        let deadline = Instant::now() + self.spec.start_timeout;
        for id in self.ids() {
            self.wait_answers(id, deadline).await?;
        }
        if !self.spec.bootstrap {
            return Ok(Init::Skipped);
        }
        let first = &self.nodes.values().next().ok_or_else(|| fail("a cluster of no nodes"))?;
        let timeout = self.spec.start_timeout;
        let init = match first.remote.init(&InitBody::default(), timeout).await {
            Ok(_) => Init::Done,
            Err(e) if e.code() == Some(ErrorCode::AlreadyInitialized) => Init::Already,
            Err(e) => return Err(fail(format!("init failed: {e}"))),
        };
        for id in self.ids() {
            while !self.answers(id, path::READYZ).await {
                self.check_running(id, "while starting")?;
                if Instant::now() > deadline {
                    return Err(
                        self.failed(id, &format!("did not become ready within {timeout:?}"))
                    );
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(init)
    }

    /// Prepares, launches and bootstraps a cluster as `spec` says. If that fails, the
    /// nodes started are killed.
    pub async fn start(spec: Spec) -> Result<Cluster, ServerError> {
        let mut cluster = Cluster::prepare(spec)?;
        cluster.launch()?;
        cluster.bootstrap().await?;
        Ok(cluster)
    }

    /// What the cluster was made from.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The directory of configurations, data and logs.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// Every node id, in order.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Node `id`. Panics on an id the cluster does not have.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes.get(&id).unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Node `id`'s address.
    pub fn addr(&self, id: u64) -> &str {
        self.node(id).addr()
    }

    /// Every node's address, in id order.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// Every node's id and address.
    pub fn peers(&self) -> BTreeMap<u64, String> {
        self.nodes.iter().map(|(&id, n)| (id, n.addr.clone())).collect()
    }

    /// The ids of the nodes that run.
    pub fn live(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.running()).map(|n| n.id).collect()
    }

    /// Node `id`'s process id, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).pid()
    }

    /// The ids and process ids of the nodes that run.
    pub fn pids(&self) -> Vec<(u64, u32)> {
        self.nodes.values().filter_map(|n| Some((n.id, n.pid()?))).collect()
    }

    /// Starts node `id`'s process (from its configuration and data directory) and returns
    /// at once.
    pub fn spawn(&mut self, id: u64) -> Result<(), ServerError> {
        let spec = &self.spec;
        let node = self.nodes.get_mut(&id).ok_or_else(|| fail(format!("no node {id}")))?;
        if node.running() {
            return Err(fail(format!("node {id} already runs")));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| ServerError::io(format!("cannot open {}", node.log.display()), e))?;
        let err = log.try_clone().map_err(|e| ServerError::io("cannot share the log", e))?;
        let mut command = Command::new(&spec.exe);
        command
            .arg("run")
            .arg("--config")
            .arg(&node.config)
            .arg("--exit-with-parent")
            .arg(std::process::id().to_string())
            .args(spec.set.iter().flat_map(|s| ["--set", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Their own process group: Ctrl-C in a terminal reaches the parent only,
            // which stops them in order.
            .process_group(0);
        if !spec.inherit_rust_log {
            command.env_remove("RUST_LOG");
        }
        let child = command
            .spawn()
            .map_err(|e| ServerError::io(format!("cannot start {}", spec.exe.display()), e))?;
        node.child = Some(child);
        Ok(())
    }

    /// Kills node `id` with SIGKILL and reaps it.
    pub fn kill(&mut self, id: u64) -> Result<(), ServerError> {
        let mut child = self.take_child(id)?;
        child.kill().map_err(|e| ServerError::io(format!("cannot kill node {id}"), e))?;
        child.wait().map_err(|e| ServerError::io(format!("cannot reap node {id}"), e))?;
        Ok(())
    }

    /// Stops node `id`: SIGTERM (and SIGCONT, should it be paused), then SIGKILL if it
    /// still runs after [`Spec::stop_grace`]. True if it had to be killed.
    pub async fn stop(&mut self, id: u64) -> Result<bool, ServerError> {
        self.signal(id, Signal::SIGTERM)?;
        self.signal(id, Signal::SIGCONT)?;
        let deadline = Instant::now() + self.spec.stop_grace;
        Ok(self.reap_or_kill(id, deadline).await)
    }

    /// Stops every node that runs, all at once, as [`Cluster::stop`] does one. Returns the
    /// ids of those that had to be killed.
    pub async fn stop_all(&mut self) -> Vec<u64> {
        let live = self.live();
        for &id in &live {
            let _ = self.signal(id, Signal::SIGTERM);
            let _ = self.signal(id, Signal::SIGCONT);
        }
        let deadline = Instant::now() + self.spec.stop_grace;
        let mut killed = Vec::new();
        for id in live {
            if self.reap_or_kill(id, deadline).await {
                killed.push(id);
            }
        }
        killed
    }

    /// Pauses node `id` (SIGSTOP).
    pub fn pause(&self, id: u64) -> Result<(), ServerError> {
        self.signal(id, Signal::SIGSTOP)
    }

    /// Resumes a paused node `id` (SIGCONT).
    pub fn resume(&self, id: u64) -> Result<(), ServerError> {
        self.signal(id, Signal::SIGCONT)
    }

    /// Sends `signal` to node `id`'s process.
    pub fn signal(&self, id: u64, signal: Signal) -> Result<(), ServerError> {
        let pid = self.pid(id).ok_or_else(|| fail(format!("node {id} does not run")))?;
        let pid = i32::try_from(pid).map_err(|_| fail(format!("pid {pid} out of range")))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| fail(format!("cannot send {signal} to node {id}: {e}")))
    }

    /// Starts node `id` again from its data directory and waits until it answers.
    pub async fn restart(&mut self, id: u64) -> Result<(), ServerError> {
        self.spawn(id)?;
        self.wait_answers(id, Instant::now() + self.spec.start_timeout).await
    }

    /// The nodes that exited since the last look: id, process id and how; they no
    /// longer run.
    pub fn reap(&mut self) -> Vec<(u64, u32, ExitStatus)> {
        let mut exited = Vec::new();
        for node in self.nodes.values_mut() {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                exited.push((node.id, child.id(), status));
                node.child = None;
            }
        }
        exited
    }

    /// The cluster as node `id` sees it: one question, `None` if it does not answer.
    pub async fn info(&self, id: u64) -> Option<ClusterInfo> {
        let ask = self.node(id).remote.get(path::CLUSTER, PROBE_TIMEOUT);
        let answer = tokio::time::timeout(PROBE_TIMEOUT, ask).await.ok()?.ok()?;
        if answer.is_success() { answer.json().ok() } else { None }
    }

    /// The running node that says it leads (the highest term, if several do), and what
    /// it says.
    pub async fn leader(&self) -> Option<(u64, ClusterInfo)> {
        let mut best: Option<(u64, ClusterInfo)> = None;
        for id in self.live() {
            if let Some(info) = self.info(id).await
                && info.role == "Leader"
                && best.as_ref().is_none_or(|(_, b)| info.term > b.term)
            {
                best = Some((id, info));
            }
        }
        best
    }

    /// The leader every node of `among` names, in the same term, if they come to agree on
    /// one of themselves within `within` (the others may be paused or cut off, and think
    /// otherwise); `None` if they do not.
    pub async fn agreed_leader(&self, among: &[u64], within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            let mut views = Vec::new();
            for &id in among {
                views.push(self.info(id).await.and_then(|i| Some((i.leader?, i.term))));
            }
            if let Some(Some((leader, term))) = views.first().copied()
                && views.iter().all(|v| *v == Some((leader, term)))
                && among.contains(&leader)
            {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL * 2).await;
        }
    }

    /// Waits until node `id` answers and, as the leader sees it, has caught up to within
    /// `lag` log entries; `false` after `timeout`.
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
            tokio::time::sleep(POLL).await;
        }
        false
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The last `lines` lines of every node's log, each under a heading, for failure
    /// messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for id in self.ids() {
            let tail = self.log_tail(id, lines);
            let _ = writeln!(out, "---- node {id} log (last {} lines)", tail.lines().count());
            if !tail.is_empty() {
                let _ = writeln!(out, "{tail}");
            }
        }
        out
    }

    /// Waits until node `id` answers `/healthz`; fails if its process exits or `deadline`
    /// passes first.
    async fn wait_answers(&mut self, id: u64, deadline: Instant) -> Result<(), ServerError> {
        while !self.answers(id, path::HEALTHZ).await {
            self.check_running(id, "while starting")?;
            if Instant::now() > deadline {
                let addr = self.addr(id).to_string();
                return Err(self.failed(id, &format!("did not answer at {addr}")));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// True if node `id` answers `GET path` with a success.
    async fn answers(&self, id: u64, path: &str) -> bool {
        let ask = self.node(id).remote.get(path, PROBE_TIMEOUT);
        tokio::time::timeout(PROBE_TIMEOUT, ask)
            .await
            .is_ok_and(|a| a.is_ok_and(|a| a.is_success()))
    }

    /// Fails if node `id` does not run or has exited.
    fn check_running(&mut self, id: u64, when: &str) -> Result<(), ServerError> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| fail(format!("no node {id}")))?;
        let Some(child) = node.child.as_mut() else {
            return Err(fail(format!("node {id} does not run")));
        };
        if let Ok(Some(status)) = child.try_wait() {
            node.child = None;
            return Err(self.failed(id, &format!("exited ({status}) {when}")));
        }
        Ok(())
    }

    /// A failure of node `id`, with the end of its log.
    fn failed(&self, id: u64, what: &str) -> ServerError {
        let log = self.node(id).log.display();
        fail(format!("node {id} {what}; its log {log} ends with:\n{}", self.log_tail(id, 20)))
    }

    fn take_child(&mut self, id: u64) -> Result<Child, ServerError> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| fail(format!("no node {id}")))?;
        node.child.take().ok_or_else(|| fail(format!("node {id} does not run")))
    }

    /// Waits until node `id` exits, SIGKILLs it at `deadline`; true if it had to.
    async fn reap_or_kill(&mut self, id: u64, deadline: Instant) -> bool {
        let Ok(mut child) = self.take_child(id) else {
            return false;
        };
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let _ = child.kill();
        let _ = child.wait();
        true
    }
}

impl Drop for Cluster {
    /// Kills every node that runs (SIGKILL) and reaps it.
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Writes `text` to `file` unless it exists.
fn write_new(file: &Path, text: &str) -> Result<(), ServerError> {
    if file.exists() {
        return Ok(());
    }
    std::fs::write(file, text)
        .map_err(|e| ServerError::io(format!("cannot write {}", file.display()), e))
}

fn fail(message: impl Into<String>) -> ServerError {
    ServerError::Remote(message.into())
}
