//! The `lsm` command line, as clap parses it: raw flags, checked only for shape.
//!
//! [`crate::cli::request`] turns the checkout flags into a validated request (step two, as
//! in ripgrep): defaults from the environment, item specs combined with `--tokens` and
//! friends, dates resolved against the clock.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lsm_core::{
    CheckoutId, ClientId, FeatureName, HostName, JobId, ParallelMode, PoolName, UserName,
};

/// The default `--servers`: an `lsm-server dev` cluster on this machine.
pub const DEFAULT_SERVERS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// `lsm`: check out, watch and administer floating licenses on an lsm cluster.
#[derive(Debug, Parser)]
#[command(
    name = "lsm",
    version,
    about = "Check out, watch and administer floating licenses on an lsm cluster.",
    max_term_width = 100,
    args_override_self = true
)]
pub struct Cli {
    /// The cluster's nodes, host:port, comma separated; any node serves any request.
    #[arg(
        long,
        env = "LSM_SERVERS",
        value_delimiter = ',',
        default_value = DEFAULT_SERVERS,
        global = true,
        value_name = "HOST:PORT,..."
    )]
    pub servers: Vec<String>,
    /// Print the API's JSON instead of tables and sentences.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on the cluster after this long per request (`30s`, `5m`).
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub timeout: Duration,
    /// Token for the admin routes.
    #[arg(
        long,
        env = "LSM_ADMIN_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Features and pools: totals, use, queue, expiry (like `lmstat -a`).
    Status {
        /// Read the answering node's own state: fast, possibly a little behind.
        #[arg(long)]
        local: bool,
    },
    /// Live checkouts, optionally filtered.
    Checkouts(CheckoutsArgs),
    /// The queue, in the order it is served.
    Queue {
        /// Only requests for this feature.
        #[arg(long, short = 'f')]
        feature: Option<FeatureName>,
    },
    /// Every listed server's view of the cluster: role, term, leader, indexes, lag.
    Cluster,
    /// One checkout or queued request.
    Show {
        /// The checkout id (`42` or `#42`).
        #[arg(value_parser = parse_checkout_id)]
        id: CheckoutId,
    },
    /// Check out and print the checkout id; the checkout stays until released or expired.
    Checkout(CheckoutArgs),
    /// Renew a checkout's lease (or poll a queued request).
    Heartbeat {
        /// The checkout id.
        #[arg(value_parser = parse_checkout_id)]
        id: CheckoutId,
        /// The owner.
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Give a checkout back (or withdraw a queued request).
    Release {
        /// The checkout id.
        #[arg(value_parser = parse_checkout_id)]
        id: CheckoutId,
        /// The owner.
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Check out, run a command while keeping the lease alive, release when it exits.
    Run(RunArgs),
    /// Administration (needs the admin token when the cluster sets one).
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// `lsm checkouts` filters.
#[derive(Debug, Args)]
pub struct CheckoutsArgs {
    /// Holding this feature.
    #[arg(long, short = 'f')]
    pub feature: Option<FeatureName>,
    /// Of this user.
    #[arg(long)]
    pub user: Option<UserName>,
    /// On this host.
    #[arg(long)]
    pub host: Option<HostName>,
    /// In this pool.
    #[arg(long)]
    pub pool: Option<PoolName>,
    /// Of this client id.
    #[arg(long)]
    pub client: Option<ClientId>,
}

/// Whose checkout a heartbeat or release is about.
#[derive(Debug, Args)]
pub struct OwnerArgs {
    /// The client id the checkout was made with (`lsm checkout` prints it).
    #[arg(long, env = "LSM_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<ClientId>,
}

/// What to check out: the flags `lsm checkout` and `lsm run` share.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// A feature: NAME (amount from --tokens or --cores/--mode), or NAME:COUNT for tokens,
    /// or NAME:COUNT:MODE for cores, with an optional @POOL. Repeat for several features,
    /// granted all or nothing.
    #[arg(long = "feature", short = 'f', required = true, value_name = "FEATURE")]
    pub features: Vec<ItemSpec>,
    /// Tokens for each feature given without a count.
    #[arg(long, conflicts_with = "cores", value_name = "N")]
    pub tokens: Option<u64>,
    /// Cores for each feature given without a count (with --mode).
    #[arg(long, requires = "mode", value_name = "N")]
    pub cores: Option<u64>,
    /// The parallel mode of --cores.
    #[arg(long, requires = "cores", value_enum)]
    pub mode: Option<Mode>,
    /// The pool for each feature given without @POOL.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<PoolName>,
    /// The user the job runs as [default: $USER].
    #[arg(long, value_name = "USER")]
    pub user: Option<UserName>,
    /// The host the job runs on [default: this host's name].
    #[arg(long, value_name = "HOST")]
    pub host: Option<HostName>,
    /// The batch job [default: $SLURM_JOB_ID, $PBS_JOBID or $LSB_JOBID].
    #[arg(long, value_name = "JOB")]
    pub job: Option<JobId>,
    /// Lease length [default: the server's].
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub lease: Option<Duration>,
    /// Wait in the queue up to this long when the tokens are busy, instead of failing.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub wait: Option<Duration>,
    /// Queue priority (0-255, higher first), with --wait.
    #[arg(long, requires = "wait", value_name = "N")]
    pub priority: Option<u8>,
    /// Offline borrow: hold the checkout with no heartbeats until this RFC 3339 time or
    /// for this long (`2030-01-31T18:00:00Z`, `3days`).
    #[arg(long, value_parser = parse_when, value_name = "WHEN")]
    pub borrow_until: Option<When>,
}

/// `lsm checkout`.
#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// What to check out.
    #[command(flatten)]
    pub request: RequestArgs,
    /// The client id to check out as [default: generated]; heartbeat and release need it.
    #[arg(long, env = "LSM_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<ClientId>,
}

/// `lsm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to check out.
    #[command(flatten)]
    pub request: RequestArgs,
    /// What to do when the lease is lost while the command runs.
    #[arg(long, value_enum, default_value_t = OnLeaseLoss::Kill)]
    pub on_lease_loss: OnLeaseLoss,
    /// With `--on-lease-loss kill`: time between SIGTERM and SIGKILL.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DUR")]
    pub kill_grace: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `lsm admin` commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// End someone's checkout or queued request (like `lmremove`).
    Revoke {
        /// The checkout id.
        #[arg(value_parser = parse_checkout_id)]
        id: CheckoutId,
        /// Why, for the holder and the audit log.
        #[arg(long, default_value = "revoked by an administrator")]
        reason: String,
    },
    /// Install a license configuration (TOML, or JSON by extension), replacing the current.
    InstallLicense {
        /// The file: `[[entitlements]]` and an optional `[policy]`.
        file: PathBuf,
    },
    /// Add a node to the cluster.
    AddNode {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// Its host:port.
        #[arg(long)]
        addr: String,
        /// Keep it a learner instead of promoting it to a voter once it has caught up.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
    /// Build a snapshot now.
    Snapshot,
    /// Bootstrap a new cluster (once, on any one node).
    Init {
        /// A voter as ID=HOST:PORT; repeat for each [default: the node's configured peers].
        #[arg(long = "member", value_parser = parse_member, value_name = "ID=HOST:PORT")]
        members: Vec<(u64, String)>,
        /// Do not install the license file named in the node's configuration.
        #[arg(long)]
        no_license: bool,
    },
}

/// A parallel mode on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Threads on one host.
    Smp,
    /// MPI ranks across hosts.
    Mpp,
}

impl From<Mode> for ParallelMode {
    fn from(mode: Mode) -> ParallelMode {
        match mode {
            Mode::Smp => ParallelMode::Smp,
            Mode::Mpp => ParallelMode::Mpp,
        }
    }
}

/// What `lsm run` does when the lease is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnLeaseLoss {
    /// SIGTERM the command, SIGKILL it after the grace period, exit 75.
    Kill,
    /// Print a warning and let the command run on.
    Warn,
}

/// One `--feature` value: `NAME[:COUNT[:MODE]][@POOL]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemSpec {
    /// The feature.
    pub feature: FeatureName,
    /// Tokens (no mode) or cores (with a mode); `None` takes the amount from the flags.
    pub count: Option<u64>,
    /// With a count: the cores' mode.
    pub mode: Option<ParallelMode>,
    /// The pool; `None` takes `--pool`.
    pub pool: Option<PoolName>,
}

impl FromStr for ItemSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<ItemSpec, String> {
        let (rest, pool) = match text.rsplit_once('@') {
            Some((rest, pool)) => {
                (rest, Some(pool.parse::<PoolName>().map_err(|e| e.to_string())?))
            }
            None => (text, None),
        };
        let mut parts = rest.split(':');
        let feature = parts.next().unwrap_or_default();
        let feature = feature.parse::<FeatureName>().map_err(|e| e.to_string())?;
        let count = match parts.next() {
            None => None,
            Some(count) => match count.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(format!("count {count:?} is not a positive whole number")),
            },
        };
        let mode = match parts.next() {
            None => None,
            Some("smp") => Some(ParallelMode::Smp),
            Some("mpp") => Some(ParallelMode::Mpp),
            Some(other) => return Err(format!("mode {other:?} is neither smp nor mpp")),
        };
        if parts.next().is_some() {
            return Err("too many ':'; write NAME, NAME:TOKENS or NAME:CORES:MODE".into());
        }
        Ok(ItemSpec { feature, count, mode, pool })
    }
}

/// A point in time, given as a date or as a length from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// At this time, in ms since the Unix epoch.
    At(u64),
    /// This long from now.
    In(Duration),
}

impl When {
    /// The time in ms since the Unix epoch, with `now_ms` as now.
    pub fn resolve(self, now_ms: u64) -> u64 {
        match self {
            When::At(ms) => ms,
            When::In(duration) => now_ms.saturating_add(duration.as_millis() as u64),
        }
    }
}

/// A human duration: `30s`, `5m`, `1h 30m`, `2days`, or plain milliseconds `1500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (write durations like 30s, 5m, 2h)"))
}

/// An RFC 3339 time or a duration from now.
pub fn parse_when(text: &str) -> Result<When, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text.trim()) {
        let ms = at.duration_since(UNIX_EPOCH).map_err(|_| "the time is before 1970")?;
        return Ok(When::At(ms.as_millis() as u64));
    }
    humantime::parse_duration(text.trim()).map(When::In).map_err(|_| {
        format!(
            "{text:?} is neither an RFC 3339 time (2030-01-31T18:00:00Z) nor a duration (3days)"
        )
    })
}

/// A checkout id, `42` or `#42`.
pub fn parse_checkout_id(text: &str) -> Result<CheckoutId, String> {
    let digits = text.trim().trim_start_matches('#');
    digits
        .parse()
        .map(CheckoutId)
        .map_err(|_| format!("{text:?} is not a checkout id (a number such as 42)"))
}

/// `ID=HOST:PORT`.
fn parse_member(text: &str) -> Result<(u64, String), String> {
    let (id, addr) = text.split_once('=').ok_or("write ID=HOST:PORT, such as 1=10.0.0.1:7101")?;
    let id = id.trim().parse().map_err(|_| format!("node id {id:?} is not a number"))?;
    Ok((id, addr.trim().to_string()))
}
