//! The `lsm-server` command line: `run`, `init`, `dev`, `add-node` and `remove-node`.
//!
//! Flags are parsed by clap into [`Cli`]; each command turns them into settings (a
//! validated [`Config`], a server address) and calls the library. Exit codes: 0 done,
//! 1 failed, 2 bad configuration or usage.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lsm_client::api::{AddNodeBody, ClusterInfo, ErrorCode, InitBody};

use crate::config::{Config, Overrides};
use crate::dev::{self, DevOptions};
use crate::error::ServerError;
use crate::logging;
use crate::remote::Remote;

/// The lsm license server.
#[derive(Debug, Parser)]
#[command(name = "lsm-server", version, about = "A node of an lsm floating-license cluster")]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `lsm-server` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node.
    Run(RunArgs),
    /// Ask a running node to bootstrap the cluster with its configured peers and install
    /// its license file.
    Init(InitArgs),
    /// Start a three-node cluster on this machine (the quickest way to try lsm).
    Dev(DevArgs),
    /// Add a node to the cluster (as a voter, once it has caught up).
    AddNode(AddNodeArgs),
    /// Remove a node from the cluster.
    RemoveNode(RemoveNodeArgs),
}

/// `lsm-server run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node's TOML configuration.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Overrides `node_id`.
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Overrides `listen`.
    #[arg(long)]
    pub listen: Option<String>,
    /// Overrides `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `license_file`.
    #[arg(long)]
    pub license_file: Option<PathBuf>,
    /// Overrides any key: `--set raft.heartbeat_ms=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Exit as soon as the process `PID` is no longer this node's parent: a supervisor
    /// that starts nodes as its children (`lsm-server dev`, the test and bench harnesses)
    /// passes its own pid, so that its nodes die with it however it ends.
    #[arg(long, value_name = "PID")]
    pub exit_with_parent: Option<u32>,
}

impl RunArgs {
    /// The flags as configuration overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            node_id: self.node_id,
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            license_file: self.license_file.clone(),
            set: self.set.clone(),
        }
    }

    /// The validated configuration from the file, the environment and the flags.
    pub fn config(&self) -> Result<Config, ServerError> {
        let config = Config::load(self.config.as_deref(), &self.overrides())?;
        config.validate()?;
        Ok(config)
    }
}

/// Which node a command talks to.
#[derive(Debug, Args)]
pub struct Target {
    /// The node's configuration (its address and admin token are taken from it).
    #[arg(long, short, conflicts_with = "server")]
    pub config: Option<PathBuf>,
    /// The node's `host:port`.
    #[arg(long)]
    pub server: Option<String>,
    /// The admin token (default: the config's `admin_token`, else `LSM_ADMIN_TOKEN`).
    #[arg(long)]
    pub token: Option<String>,
}

impl Target {
    fn remote(&self) -> Result<Remote, ServerError> {
        let env_token = || std::env::var("LSM_ADMIN_TOKEN").ok();
        match (&self.config, &self.server) {
            (Some(file), _) => {
                let config = Config::load(Some(file), &Overrides::default())?;
                let token = self.token.clone().or(Some(config.admin_token.clone()));
                Ok(Remote::new(config.advertise(), token))
            }
            (None, Some(server)) => {
                Ok(Remote::new(server.clone(), self.token.clone().or_else(env_token)))
            }
            (None, None) => Err(ServerError::config(
                "--server",
                "say which node: --server HOST:PORT or --config node.toml",
            )),
        }
    }
}

/// `lsm-server init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The node to ask.
    #[command(flatten)]
    pub target: Target,
    /// Succeed (with a note) when the cluster is already initialized.
    #[arg(long)]
    pub if_needed: bool,
    /// Do not install the node's license file.
    #[arg(long)]
    pub no_license: bool,
}

/// `lsm-server dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where configs, the demo license, data and logs go.
    #[arg(long, default_value = "lsm-dev")]
    pub dir: PathBuf,
    /// Node n listens on 127.0.0.1:(base_port + n - 1).
    #[arg(long, default_value_t = 7101)]
    pub base_port: u16,
}

/// `lsm-server add-node`.
#[derive(Debug, Args)]
pub struct AddNodeArgs {
    /// A node of the cluster.
    #[command(flatten)]
    pub target: Target,
    /// The new node's id.
    #[arg(long)]
    pub id: u64,
    /// The new node's `host:port`.
    #[arg(long)]
    pub addr: String,
    /// Keep it a learner (it replicates but does not vote).
    #[arg(long)]
    pub learner: bool,
}

/// `lsm-server remove-node`.
#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    /// A node of the cluster.
    #[command(flatten)]
    pub target: Target,
    /// The id of the node to remove.
    #[arg(long)]
    pub id: u64,
}

/// Runs a command; the process exits with the code returned.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Init(args) => block_on(init(&args)),
        Command::Dev(args) => dev(&args),
        Command::AddNode(args) => block_on(add_node(&args)),
        Command::RemoveNode(args) => block_on(remove_node(&args)),
    };
    match result {
        Ok(code) => code,
        Err(e @ (ServerError::Config { .. } | ServerError::ConfigLoad(_))) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ServerError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::io("cannot start the async runtime", e))
}

fn block_on(
    future: impl Future<Output = Result<ExitCode, ServerError>>,
) -> Result<ExitCode, ServerError> {
    runtime()?.block_on(future)
}

fn run(args: &RunArgs) -> Result<ExitCode, ServerError> {
    let config = args.config()?;
    logging::init(config.log_format, &config.log_level);
    if let Some(parent) = args.exit_with_parent {
        exit_with_parent(parent)?;
    }
    runtime()?.block_on(crate::server::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// How often `--exit-with-parent` looks at the parent.
pub const PARENT_POLL: Duration = Duration::from_millis(200);

/// Watches, on a thread of its own, that `parent` is still this process's parent, and
/// exits the process once it is not (the parent died and this one was adopted).
fn exit_with_parent(parent: u32) -> Result<(), ServerError> {
    let watch = move || {
        loop {
            let now = std::os::unix::process::parent_id();
            if now != parent {
                tracing::warn!(parent, now, "the parent process is gone; exiting with it");
                std::process::exit(1);
            }
            std::thread::sleep(PARENT_POLL);
        }
    };
    std::thread::Builder::new()
        .name("exit-with-parent".into())
        .spawn(watch)
        .map(drop)
        .map_err(|e| ServerError::io("cannot start the parent watch", e))
}

fn dev(args: &DevArgs) -> Result<ExitCode, ServerError> {
    let exe = std::env::current_exe()
        .map_err(|e| ServerError::io("cannot find the lsm-server binary", e))?;
    let options = DevOptions { dir: args.dir.clone(), base_port: args.base_port, exe };
    runtime()?.block_on(dev::run(options, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

async fn init(args: &InitArgs) -> Result<ExitCode, ServerError> {
    let remote = args.target.remote()?;
    let body = InitBody { members: None, install_license: !args.no_license };
    let timeout = crate::routes::admin::INIT_TIMEOUT + Duration::from_secs(10);
    match remote.init(&body, timeout).await {
        Ok(info) => {
            print_cluster("cluster initialized", &info);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.code() == Some(ErrorCode::AlreadyInitialized) => {
            if args.if_needed {
                println!(
                    "note: the cluster at {} is already initialized; nothing changed",
                    remote.addr()
                );
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "error: the cluster at {} is already initialized; nothing changed (use --if-needed to accept that)",
                remote.addr()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(ServerError::Remote(format!("init failed: {e}"))),
    }
}

async fn add_node(args: &AddNodeArgs) -> Result<ExitCode, ServerError> {
    let remote = args.target.remote()?;
    let body = AddNodeBody { id: args.id, addr: args.addr.clone(), voter: !args.learner };
    let timeout = crate::routes::admin::MEMBERSHIP_TIMEOUT + Duration::from_secs(10);
    let info = remote
        .add_node(&body, timeout)
        .await
        .map_err(|e| ServerError::Remote(format!("add-node failed: {e}")))?;
    print_cluster(&format!("node {} added", args.id), &info);
    Ok(ExitCode::SUCCESS)
}

async fn remove_node(args: &RemoveNodeArgs) -> Result<ExitCode, ServerError> {
    let remote = args.target.remote()?;
    let timeout = crate::routes::admin::MEMBERSHIP_TIMEOUT + Duration::from_secs(10);
    let info = remote
        .remove_node(args.id, timeout)
        .await
        .map_err(|e| ServerError::Remote(format!("remove-node failed: {e}")))?;
    print_cluster(&format!("node {} removed", args.id), &info);
    Ok(ExitCode::SUCCESS)
}

fn print_cluster(what: &str, info: &ClusterInfo) {
    let leader = match (info.leader, &info.leader_addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id}"),
        _ => "not known yet".into(),
    };
    println!("{what}; leader: {leader}; term {}", info.term);
    for m in &info.members {
        let kind = if m.voter { "voter" } else { "learner" };
        println!("  node {} at {} ({kind})", m.id, m.addr);
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(%e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
