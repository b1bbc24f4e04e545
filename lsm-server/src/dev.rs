//! `lsm-server dev`: a three-node cluster on this machine, for trying lsm out.
//!
//! It writes three node configurations and a demo license into one directory (unless
//! they exist: a rerun reuses them and the nodes' data), starts three `lsm-server run`
//! child processes with their logs in that directory, initializes the cluster, prints the
//! endpoints and what to try, and then watches. A node that exits is reported, not
//! restarted: killing the leader and watching the others elect a new one is the point.
//! On Ctrl-C or SIGTERM it stops the nodes (SIGTERM, then SIGKILL after a grace period)
//! and exits; if it dies without doing so, the nodes exit by themselves
//! (`--exit-with-parent`). The processes are a [`kit::Cluster`].

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use lsm_client::api::ClusterInfo;

use crate::error::ServerError;
use crate::kit::{self, Cluster, Init, Ports, Spec};

/// The demo license `dev` installs: the example license of this crate.
pub const DEMO_LICENSE: &str = include_str!("../examples/license.toml");

/// Nodes in a dev cluster.
pub const NODES: u64 = 3;

/// How long the nodes get to start, elect a leader and install the license.
pub const START_TIMEOUT: Duration = kit::START_TIMEOUT;

/// How long stopping nodes get after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = kit::STOP_GRACE;

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

/// The cluster `dev` runs: [`NODES`] nodes of cluster `lsm-dev` on consecutive ports from
/// the base port, with the demo license, in the directory.
pub fn spec(options: &DevOptions) -> Spec {
    Spec {
        nodes: NODES,
        ports: Ports::Base(options.base_port),
        cluster_id: "lsm-dev".into(),
        license: Some(DEMO_LICENSE.into()),
        note: vec![
            "lsm dev cluster: written by `lsm-server dev`, kept on reruns.".into(),
            "See lsm-server/examples/node.toml for every field.".into(),
        ],
        inherit_rust_log: true,
        start_timeout: START_TIMEOUT,
        stop_grace: STOP_GRACE,
        ..Spec::new(&options.exe, &options.dir)
    }
}

/// Runs the dev cluster until `shutdown` completes.
pub async fn run(
    options: DevOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let mut cluster = Cluster::prepare(spec(&options))?;
    if let Err(e) = cluster.launch() {
        stop_all(&mut cluster).await;
        return Err(e);
    }
    tokio::pin!(shutdown);
    let started = tokio::select! {
        result = start(&mut cluster) => result,
        () = &mut shutdown => Err(ServerError::Remote("interrupted while starting".into())),
    };
    let leader = match started {
        Ok(leader) => leader,
        Err(e) => {
            stop_all(&mut cluster).await;
            return Err(e);
        }
    };
    print_ready(&options, &cluster, &leader);

    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = poll.tick() => report_exits(&options, &mut cluster),
        }
    }
    println!("stopping the nodes...");
    stop_all(&mut cluster).await;
    println!("stopped");
    Ok(())
}

/// Bootstraps the cluster, says how, and returns it as node 1 sees it.
async fn start(cluster: &mut Cluster) -> Result<ClusterInfo, ServerError> {
    match cluster.bootstrap().await? {
        Init::Done => println!("cluster initialized; demo license installed"),
        Init::Already => println!("cluster already initialized: reusing the nodes' data"),
        Init::Skipped => {}
    }
    cluster
        .info(1)
        .await
        .ok_or_else(|| ServerError::Remote("node 1 does not say how the cluster stands".into()))
}

/// Prints the endpoints and what to try, ending with the `ready` line.
fn print_ready(options: &DevOptions, cluster: &Cluster, leader: &ClusterInfo) {
    let exe = options.exe.display();
    let servers: Vec<&str> = cluster.nodes().map(kit::Node::addr).collect();
    let mut text = String::from("\nlsm dev cluster (cluster_id lsm-dev)\n");
    for node in cluster.nodes() {
        let role = if leader.leader == Some(node.id()) { "  leader" } else { "" };
        let _ = writeln!(
            text,
            "  node {}: http://{}  pid {}  log {}{role}",
            node.id(),
            node.addr(),
            node.pid().unwrap_or(0),
            node.log().display()
        );
    }
    let leader_line = match (leader.leader, &leader.leader_addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        _ => "unknown".into(),
    };
    let leader_pid = leader.leader.and_then(|id| cluster.pid(id)).unwrap_or(0);
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
    for node in cluster.nodes() {
        let _ = writeln!(text, "  {exe} run --config {}", node.config().display());
    }
    let _ = writeln!(text, "\nready: {} nodes serving; Ctrl-C stops them", cluster.ids().len());
    print!("{text}");
    flush();
}

/// Reports nodes that exited since the last look.
fn report_exits(options: &DevOptions, cluster: &mut Cluster) {
    for (id, pid, status) in cluster.reap() {
        println!(
            "node {id} (pid {pid}) exited: {status}. It is not restarted; to restart it:\n  {} run --config {}",
            options.exe.display(),
            cluster.node(id).config().display()
        );
        flush();
    }
}

/// Stops every running node (SIGTERM, then SIGKILL after [`STOP_GRACE`]).
async fn stop_all(cluster: &mut Cluster) {
    for id in cluster.stop_all().await {
        println!("node {id} did not stop within {STOP_GRACE:?}; it was killed");
    }
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    #[test]
    fn dev_configs_and_the_demo_license_validate() {
        let dir = tempfile::tempdir().unwrap();
        let options =
            DevOptions { dir: dir.path().into(), base_port: 7101, exe: "lsm-server".into() };
        let cluster = Cluster::prepare(spec(&options)).unwrap();
        assert!(cluster.live().is_empty());
        for id in 1..=NODES {
            let file = dir.path().join(format!("node{id}.toml"));
            assert_eq!(cluster.node(id).config(), file);
            let config = Config::load(Some(&file), &Overrides::default()).unwrap();
            config.validate().unwrap();
            assert_eq!(config.listen, format!("127.0.0.1:{}", 7100 + id));
            assert_eq!(config.cluster_id, "lsm-dev");
            assert_eq!(config.peers.len(), 3);
            let install = config.license().unwrap().unwrap();
            assert_eq!(install.entitlements.len(), 4);
        }
    }

    #[test]
    fn a_rerun_keeps_the_files_it_finds() {
        let dir = tempfile::tempdir().unwrap();
        let options =
            DevOptions { dir: dir.path().into(), base_port: 7101, exe: "lsm-server".into() };
        drop(Cluster::prepare(spec(&options)).unwrap());
        let moved = DevOptions { base_port: 7201, ..options };
        let cluster = Cluster::prepare(spec(&moved)).unwrap();
        assert_eq!(cluster.addrs(), ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]);
    }
}
