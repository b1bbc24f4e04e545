//! `lsm-server dev`: a three-node cluster on this machine, for trying lsm out.
//!
//! It writes three node configurations and a demo license into one directory (unless
//! they exist: a rerun reuses them and the nodes' data), starts three `lsm-server run`
//! child processes with their logs in that directory, initializes the cluster, prints the
//! endpoints and what to try, and then watches. A node that exits is reported, not
//! restarted: killing the leader and watching the others elect a new one is the point.
//! On Ctrl-C or SIGTERM it stops the nodes (SIGTERM, then SIGKILL after a grace period)
//! and exits.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lsm_client::api::{ClusterInfo, ErrorCode, path};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::config::{Config, Overrides};
use crate::error::ServerError;
use crate::remote::Remote;

/// The demo license `dev` installs: the example license of this crate.
pub const DEMO_LICENSE: &str = include_str!("../examples/license.toml");

/// Nodes in a dev cluster.
pub const NODES: u64 = 3;

/// How long the nodes get to start, elect a leader and install the license.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long stopping nodes get after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `dev` was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevOptions {
    /// Where configs, the license, data and logs go.
    pub dir: PathBuf,
    /// Node `n` listens on `127.0.0.1:base_port + n - 1`.
    pub base_port: u16,
    /// The `lsm-server` binary to start the nodes with.
    pub exe: PathBuf,
}

/// One child node.
struct Node {
    id: u64,
    config: PathBuf,
    addr: String,
    log: PathBuf,
    child: Child,
    pid: u32,
    running: bool,
}

/// The configuration file text of node `id`.
pub fn node_config(id: u64, dir: &Path, base_port: u16) -> String {
    let quote = |text: String| toml::Value::String(text).to_string();
    let port = |n: u64| u64::from(base_port) + n - 1;
    let mut text = format!(
        "# lsm dev cluster, node {id} of {NODES}: written by `lsm-server dev`, kept on reruns.\n\
         # See lsm-server/examples/node.toml for every field.\n\
         node_id = {id}\n\
         cluster_id = \"lsm-dev\"\n\
         listen = \"127.0.0.1:{}\"\n\
         data_dir = {}\n\
         license_file = {}\n\
         log_level = \"info\"\n\n\
         [peers]\n",
        port(id),
        quote(dir.join(format!("node{id}")).display().to_string()),
        quote(dir.join("license.toml").display().to_string()),
    );
    for n in 1..=NODES {
        let _ = writeln!(text, "{n} = \"127.0.0.1:{}\"", port(n));
    }
    text
}

/// Runs the dev cluster until `shutdown` completes.
pub async fn run(
    options: DevOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let dir = &options.dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| ServerError::io(format!("cannot create {}", dir.display()), e))?;
    let license = dir.join("license.toml");
    write_new(&license, DEMO_LICENSE)?;
    let mut configs = Vec::new();
    for id in 1..=NODES {
        let file = dir.join(format!("node{id}.toml"));
        write_new(&file, &node_config(id, dir, options.base_port))?;
        let config = Config::load(Some(&file), &Overrides::default())?;
        config.validate().map_err(|e| ServerError::Remote(format!("{}: {e}", file.display())))?;
        configs.push((file, config));
    }

    let mut nodes = Vec::new();
    for (file, config) in configs {
        let log = dir.join(format!("node{}.log", config.node_id));
        let node = spawn(&options.exe, config.node_id, &file, &log, config.advertise());
        match node {
            Ok(node) => nodes.push(node),
            Err(e) => {
                stop_all(&mut nodes).await;
                return Err(e);
            }
        }
    }
    tokio::pin!(shutdown);
    let started = tokio::select! {
        result = start(&mut nodes) => result,
        () = &mut shutdown => Err(ServerError::Remote("interrupted while starting".into())),
    };
    let leader = match started {
        Ok(leader) => leader,
        Err(e) => {
            stop_all(&mut nodes).await;
            return Err(e);
        }
    };
    print_ready(&options, &nodes, &leader);

    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = poll.tick() => report_exits(&options, &mut nodes),
        }
    }
    println!("stopping the nodes...");
    stop_all(&mut nodes).await;
    println!("stopped");
    Ok(())
}

/// Writes `text` to `file` unless it exists.
fn write_new(file: &Path, text: &str) -> Result<(), ServerError> {
    if file.exists() {
        return Ok(());
    }
    std::fs::write(file, text)
        .map_err(|e| ServerError::io(format!("cannot write {}", file.display()), e))
}

/// Starts `exe run --config file` with its output appended to `log`.
fn spawn(exe: &Path, id: u64, file: &Path, log: &Path, addr: String) -> Result<Node, ServerError> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| ServerError::io(format!("cannot open {}", log.display()), e))
    };
    let (out, err) = (open()?, open()?);
    let child = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        // Their own process group: Ctrl-C reaches this supervisor only, which stops them
        // in order.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| ServerError::io(format!("cannot start {}", exe.display()), e))?;
    let pid = child.id().unwrap_or(0);
    Ok(Node {
        id,
        config: file.to_path_buf(),
        addr,
        log: log.to_path_buf(),
        child,
        pid,
        running: true,
    })
}

/// Waits for every node to serve, initializes the cluster, and waits until every node
/// is ready. Returns the cluster as node 1 sees it.
async fn start(nodes: &mut [Node]) -> Result<ClusterInfo, ServerError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let short = Duration::from_secs(2);
    for node in nodes.iter_mut() {
        let remote = Remote::new(node.addr.clone(), None);
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                node.running = false;
                return Err(ServerError::Remote(format!(
                    "node {} exited while starting ({status}); its log {} ends with:\n{}",
                    node.id,
                    node.log.display(),
                    tail(&node.log, 20)
                )));
            }
            if remote.get(path::HEALTHZ, short).await.is_ok_and(|a| a.is_success()) {
                break;
            }
            if Instant::now() > deadline {
                return Err(ServerError::Remote(format!(
                    "node {} did not answer at {} within {START_TIMEOUT:?}; see {}",
                    node.id,
                    node.addr,
                    node.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let first = Remote::new(nodes[0].addr.clone(), None);
    let body = serde_json::json!({});
    let answer = first.send(http::Method::POST, path::INIT, Some(&body), START_TIMEOUT).await?;
    if answer.is_success() {
        println!("cluster initialized; demo license installed");
    } else if answer.error().is_some_and(|(code, _)| code == ErrorCode::AlreadyInitialized) {
        println!("cluster already initialized: reusing the nodes' data");
    } else {
        return Err(ServerError::Remote(format!("init failed: {}", answer.describe())));
    }

    for node in nodes.iter() {
        let remote = Remote::new(node.addr.clone(), None);
        while !remote.get(path::READYZ, short).await.is_ok_and(|a| a.is_success()) {
            if Instant::now() > deadline {
                return Err(ServerError::Remote(format!(
                    "node {} did not become ready within {START_TIMEOUT:?}; see {}",
                    node.id,
                    node.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    first.get(path::CLUSTER, short).await?.json()
}

/// Prints the endpoints and what to try, ending with the `ready` line.
fn print_ready(options: &DevOptions, nodes: &[Node], leader: &ClusterInfo) {
    let exe = options.exe.display();
    let servers: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let mut text = String::from("\nlsm dev cluster (cluster_id lsm-dev)\n");
    for node in nodes {
        let role = if leader.leader == Some(node.id) { "  leader" } else { "" };
        let _ = writeln!(
            text,
            "  node {}: http://{}  pid {}  log {}{role}",
            node.id,
            node.addr,
            node.pid,
            node.log.display()
        );
    }
    let leader_line = match (leader.leader, &leader.leader_addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        _ => "unknown".into(),
    };
    let leader_pid = nodes.iter().find(|n| Some(n.id) == leader.leader).map_or(0, |n| n.pid);
    let _ = write!(
        text,
        "\nleader: {leader_line}\n\
         \ntry:\n\
         \x20 export LSM_SERVERS={servers}\n\
         \x20 lsm status\n\
         \x20 lsm run --feature lsdyna --cores 8 --mode smp -- sleep 60\n\
         \x20 curl -s http://{first}/v1/features\n\
         \nfailover: kill the leader and watch another node take over:\n\
         \x20 kill -9 {leader_pid}\n\
         restart a node (it rejoins from its data directory):\n",
        servers = servers.join(","),
        first = servers[0],
    );
    for node in nodes {
        let _ = writeln!(text, "  {exe} run --config {}", node.config.display());
    }
    let _ = writeln!(text, "\nready: {} nodes serving; Ctrl-C stops them", nodes.len());
    print!("{text}");
    flush();
}

/// Reports nodes that exited since the last look.
fn report_exits(options: &DevOptions, nodes: &mut [Node]) {
    for node in nodes.iter_mut().filter(|n| n.running) {
        if let Ok(Some(status)) = node.child.try_wait() {
            node.running = false;
            println!(
                "node {} (pid {}) exited: {status}. It is not restarted; to restart it:\n  {} run --config {}",
                node.id,
                node.pid,
                options.exe.display(),
                node.config.display()
            );
            flush();
        }
    }
}

/// Sends SIGTERM to every running node, waits for them, and SIGKILLs the ones still
/// running after [`STOP_GRACE`].
async fn stop_all(nodes: &mut [Node]) {
    for node in nodes.iter_mut().filter(|n| n.running) {
        if let Ok(Some(_)) = node.child.try_wait() {
            node.running = false;
            continue;
        }
        if let Ok(pid) = i32::try_from(node.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for node in nodes.iter_mut().filter(|n| n.running) {
        match tokio::time::timeout_at(deadline, node.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                println!("node {} did not stop within {STOP_GRACE:?}; killing it", node.id);
                let _ = node.child.kill().await;
            }
        }
        node.running = false;
    }
}

/// The last `lines` lines of a log file.
fn tail(file: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_configs_and_the_demo_license_validate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("license.toml"), DEMO_LICENSE).unwrap();
        for id in 1..=NODES {
            let file = dir.path().join(format!("node{id}.toml"));
            std::fs::write(&file, node_config(id, dir.path(), 7101)).unwrap();
            let config = Config::load(Some(&file), &Overrides::default()).unwrap();
            config.validate().unwrap();
            assert_eq!(config.listen, format!("127.0.0.1:{}", 7100 + id));
            assert_eq!(config.peers.len(), 3);
            let install = config.license().unwrap().unwrap();
            assert_eq!(install.entitlements.len(), 4);
        }
    }
}
