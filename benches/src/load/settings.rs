//! The tool's command line, in two steps: clap parses the raw flags into [`Flags`], and
//! [`Settings::from_flags`] checks them against each other and turns them into validated
//! settings, with errors that name the flag and the fix.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use lsm_core::FeatureName;

/// The most clients one run drives.
pub const MAX_CLIENTS: usize = 10_000;
/// The most clients of an uncontended run: one feature each, and a license holds at most
/// `Limits::max_features` (1,000 by default) features.
pub const MAX_UNCONTENDED_CLIENTS: usize = 1_000;
/// Shortest time between two leader kills: the election, the restart and the catch-up of
/// the killed node must fit in it.
pub const MIN_KILL_INTERVAL: Duration = Duration::from_secs(3);
/// The most tokens one checkout of the workload asks for (it asks for 1 to this many).
pub const MAX_TOKENS_PER_CHECKOUT: u64 = 4;

/// The raw flags.
#[derive(Debug, Parser)]
#[command(
    name = "lsm_bench",
    about = "Drives a live lsm cluster with concurrent checkout + release pairs and reports \
             throughput, latency, failover gaps and lost or duplicated grants."
)]
pub struct Flags {
    /// Drive an existing cluster at these `host:port` addresses (comma separated) instead of
    /// starting one.
    #[arg(long, value_delimiter = ',', conflicts_with = "start")]
    pub servers: Vec<String>,
    /// Start three `lsm-server` nodes on loopback (the default without `--servers`).
    #[arg(long)]
    pub start: bool,
    /// The workload: one feature shared by every client, a feature per client, or the
    /// contended workload with leader kills.
    #[arg(long, value_enum, default_value_t = Mode::Contended)]
    pub mode: Mode,
    /// Concurrent clients, each with its own client id.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long the clients run, measured.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Warm-up before the measured seconds: the clients run, nothing is recorded.
    #[arg(long, default_value_t = 1)]
    pub warmup_seconds: u64,
    /// Leader kills during a failover run, at even intervals.
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    /// Tokens of the shared feature (contended and failover); by default 4 per client, so
    /// every request fits and any denial is worth a look. Fewer make denials part of the
    /// workload.
    #[arg(long)]
    pub tokens: Option<u64>,
    /// The feature name (contended, failover) or name prefix (uncontended: NAME-0,
    /// NAME-1, ...).
    #[arg(long, default_value = "bench")]
    pub feature: String,
    /// With `--servers`: install the bench license first. This replaces the cluster's
    /// license.
    #[arg(long)]
    pub install: bool,
    /// The admin token for `--install` (default: `LSM_ADMIN_TOKEN`).
    #[arg(long, env = "LSM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The `lsm-server` binary to start (default: the one next to this executable).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Keep the started cluster's directory (configs, data, logs) and print its path.
    #[arg(long)]
    pub keep_dir: bool,
    /// Passed to every started node as `--set KEY=VALUE` (repeatable), such as
    /// `raft.election_min_ms=150` or `log_level=warn`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub server_set: Vec<String>,
    /// The clients' longest pause between rounds of retries (the client library's
    /// `backoff_max`; its default is 2000).
    #[arg(long)]
    pub backoff_max_ms: Option<u64>,
    /// Lease of each checkout, in ms.
    #[arg(long, default_value_t = 60_000)]
    pub lease_ttl_ms: u64,
    /// Seed of the token counts the clients ask for.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the summary as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every client checks out from one feature.
    Contended,
    /// Each client has a feature of its own.
    Uncontended,
    /// Contended, and the leader is killed (SIGKILL) several times during the run.
    Failover,
}

/// Where the cluster comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Start three nodes on loopback.
    Start {
        /// The `lsm-server` binary; `None`: next to this executable.
        server_bin: Option<PathBuf>,
        /// Keep the directory afterwards.
        keep_dir: bool,
        /// `--set` overrides for every node.
        server_set: Vec<String>,
    },
    /// A running cluster.
    Servers {
        /// Its nodes' `host:port`.
        addrs: Vec<String>,
        /// Install the bench license first (replacing the cluster's).
        install: bool,
        /// Sent on admin routes.
        admin_token: Option<String>,
    },
}

/// Validated settings of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Where the cluster comes from.
    pub target: Target,
    /// The workload.
    pub mode: Mode,
    /// Concurrent clients.
    pub clients: usize,
    /// How long the clients run, measured.
    pub duration: Duration,
    /// How long they run before that, unmeasured.
    pub warmup: Duration,
    /// Leader kills (failover only; 0 otherwise).
    pub kills: usize,
    /// Tokens of each bench feature.
    pub tokens_total: u64,
    /// The feature name or prefix.
    pub feature: String,
    /// Lease of each checkout.
    pub lease_ttl_ms: u64,
    /// Seed of the token counts.
    pub seed: u64,
    /// The clients' `backoff_max`; the library's default when `None`.
    pub backoff_max: Option<Duration>,
    /// JSON output.
    pub json: bool,
}

impl Settings {
    /// Checks the flags against each other; the error names the flag and the fix.
    pub fn from_flags(flags: Flags) -> Result<Settings, String> {
        if flags.clients == 0 || flags.clients > MAX_CLIENTS {
            return Err(format!("--clients {}: use 1 to {MAX_CLIENTS}", flags.clients));
        }
        if flags.mode == Mode::Uncontended && flags.clients > MAX_UNCONTENDED_CLIENTS {
            return Err(format!(
                "--clients {}: an uncontended run has a feature per client, and a license \
                 holds at most {MAX_UNCONTENDED_CLIENTS} features",
                flags.clients
            ));
        }
        if flags.seconds == 0 {
            return Err("--seconds 0: run for at least 1 second".into());
        }
        let duration = Duration::from_secs(flags.seconds);
        let target = if flags.servers.is_empty() {
            if flags.install {
                return Err("--install only applies to --servers (a started cluster always \
                            gets the bench license)"
                    .into());
            }
            if let Some(bad) = flags.server_set.iter().find(|s| !s.contains('=')) {
                return Err(format!("--server-set {bad:?}: write KEY=VALUE"));
            }
            Target::Start {
                server_bin: flags.server_bin,
                keep_dir: flags.keep_dir,
                server_set: flags.server_set,
            }
        } else {
            if flags.server_bin.is_some() || flags.keep_dir || !flags.server_set.is_empty() {
                return Err(
                    "--server-bin, --keep-dir and --server-set only apply to --start".into()
                );
            }
            let addrs: Vec<String> = flags
                .servers
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if addrs.is_empty() {
                return Err("--servers: give the cluster's nodes as host:port,host:port".into());
            }
            Target::Servers { addrs, install: flags.install, admin_token: flags.admin_token }
        };
        let kills = match flags.mode {
            Mode::Failover => {
                if !matches!(target, Target::Start { .. }) {
                    return Err("--mode failover kills and restarts the nodes, so it needs a \
                                cluster it started: drop --servers"
                        .into());
                }
                if flags.kills == 0 {
                    return Err("--kills 0: a failover run needs at least one kill".into());
                }
                let interval = duration / (flags.kills as u32 + 1);
                if interval < MIN_KILL_INTERVAL {
                    let needed = MIN_KILL_INTERVAL.as_secs() * (flags.kills as u64 + 1);
                    return Err(format!(
                        "--seconds {}: {} kills need at least {needed} s ({} s between kills \
                         for the election, the restart and the catch-up)",
                        flags.seconds,
                        flags.kills,
                        MIN_KILL_INTERVAL.as_secs()
                    ));
                }
                flags.kills
            }
            _ => 0,
        };
        let tokens_total = match (flags.mode, flags.tokens) {
            (Mode::Uncontended, Some(_)) => {
                return Err(format!(
                    "--tokens: an uncontended run gives each client a feature of \
                     {MAX_TOKENS_PER_CHECKOUT} tokens; drop the flag"
                ));
            }
            (Mode::Uncontended, None) => MAX_TOKENS_PER_CHECKOUT,
            (_, Some(tokens)) if tokens < MAX_TOKENS_PER_CHECKOUT => {
                return Err(format!(
                    "--tokens {tokens}: a checkout asks for up to {MAX_TOKENS_PER_CHECKOUT} \
                     tokens, so the feature needs at least that many"
                ));
            }
            (_, Some(tokens)) => tokens,
            (_, None) => MAX_TOKENS_PER_CHECKOUT * flags.clients as u64,
        };
        let longest = match flags.mode {
            Mode::Uncontended => format!("{}-{}", flags.feature, flags.clients - 1),
            _ => flags.feature.clone(),
        };
        longest
            .parse::<FeatureName>()
            .map_err(|e| format!("--feature {:?}: {e}", flags.feature))?;
        if flags.lease_ttl_ms < 1_000 || flags.lease_ttl_ms > 3_600_000 {
            return Err(format!(
                "--lease-ttl-ms {}: use 1000 to 3600000 (the server's default limits)",
                flags.lease_ttl_ms
            ));
        }
        Ok(Settings {
            target,
            mode: flags.mode,
            clients: flags.clients,
            duration,
            warmup: Duration::from_secs(flags.warmup_seconds),
            kills,
            tokens_total,
            feature: flags.feature,
            lease_ttl_ms: flags.lease_ttl_ms,
            seed: flags.seed,
            backoff_max: flags.backoff_max_ms.map(Duration::from_millis),
            json: flags.json,
        })
    }

    /// Parses and validates a command line (the program name first).
    pub fn parse_from<I, T>(args: I) -> Result<Settings, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let flags = Flags::try_parse_from(args).map_err(|e| e.to_string())?;
        Settings::from_flags(flags)
    }

    /// The feature client `i` checks out from.
    pub fn feature_of(&self, i: usize) -> FeatureName {
        let name = match self.mode {
            Mode::Uncontended => format!("{}-{i}", self.feature),
            _ => self.feature.clone(),
        };
        name.parse().expect("checked by from_flags")
    }

    /// Every bench feature, in order.
    pub fn features(&self) -> Vec<FeatureName> {
        match self.mode {
            Mode::Uncontended => (0..self.clients).map(|i| self.feature_of(i)).collect(),
            _ => vec![self.feature_of(0)],
        }
    }

    /// The bench license: every bench feature with `tokens_total` tokens, as TOML (the
    /// format of a node's `license_file`).
    pub fn license_toml(&self) -> String {
        let mut text =
            String::from("# The lsm_bench license: one entitlement per bench feature.\n");
        for feature in self.features() {
            text.push_str(&format!(
                "\n[[entitlements]]\nfeature = \"{feature}\"\nlicense = \"lsm-bench\"\n\
                 tokens_total = {}\nexpires_at_ms = 4102444800000\n",
                self.tokens_total
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Settings, String> {
        Settings::parse_from(std::iter::once("lsm_bench").chain(args.split_whitespace()))
    }

    #[test]
    fn defaults_start_a_contended_cluster_where_every_request_fits() {
        let s = parse("").unwrap();
        let server_set = Vec::new();
        assert_eq!(s.target, Target::Start { server_bin: None, keep_dir: false, server_set });
        assert_eq!((s.mode, s.clients, s.duration), (Mode::Contended, 64, Duration::from_secs(10)));
        assert_eq!((s.kills, s.tokens_total), (0, 256));
        assert_eq!(s.features(), vec![s.feature_of(7)]);
    }

    #[test]
    fn servers_and_modes_parse() {
        let s = parse("--servers a:1,b:2,,c:3 --mode uncontended --clients 3 --seconds 2 --json")
            .unwrap();
        let Target::Servers { addrs, install, .. } = &s.target else { panic!("{:?}", s.target) };
        assert_eq!(addrs, &["a:1", "b:2", "c:3"]);
        assert!(!install);
        assert_eq!(s.mode, Mode::Uncontended);
        assert!(s.json);
        let names: Vec<String> = s.features().iter().map(|f| f.to_string()).collect();
        assert_eq!(names, ["bench-0", "bench-1", "bench-2"]);
        assert_eq!(s.tokens_total, 4);

        let s = parse(
            "--start --mode failover --seconds 20 --kills 5 --tokens 100 --backoff-max-ms 250 \
             --server-set log_level=warn --server-set raft.heartbeat_ms=40",
        )
        .unwrap();
        assert_eq!((s.mode, s.kills, s.tokens_total), (Mode::Failover, 5, 100));
        assert_eq!(s.backoff_max, Some(Duration::from_millis(250)));
        let Target::Start { server_set, .. } = &s.target else { panic!("{:?}", s.target) };
        assert_eq!(server_set, &["log_level=warn", "raft.heartbeat_ms=40"]);
    }

    #[test]
    fn the_license_parses_as_an_install() {
        let s = parse("--mode uncontended --clients 3").unwrap();
        let install: lsm_core::Install = toml::from_str(&s.license_toml()).unwrap();
        assert_eq!(install.entitlements.len(), 3);
        assert_eq!(install.entitlements[2].feature.as_str(), "bench-2");
        assert_eq!(install.entitlements[2].tokens_total, 4);
        install.validate(&lsm_core::Limits::default()).unwrap();
    }

    #[test]
    fn errors_name_the_flag() {
        let err = |args: &str| parse(args).unwrap_err();
        assert!(err("--clients 0").contains("--clients"));
        assert!(err("--mode uncontended --clients 1001").contains("features"));
        assert!(err("--seconds 0").contains("--seconds"));
        assert!(err("--servers a:1 --mode failover --seconds 60").contains("drop --servers"));
        assert!(err("--mode failover --kills 5 --seconds 10").contains("at least 18 s"));
        assert!(err("--mode failover --kills 0 --seconds 10").contains("--kills"));
        assert!(err("--tokens 3").contains("--tokens 3"));
        assert!(err("--mode uncontended --tokens 10").contains("--tokens"));
        assert!(err("--install").contains("--servers"));
        assert!(err("--feature b@d").contains("--feature"));
        assert!(err("--servers a:1 --start").contains("--start"));
        assert!(err("--servers a:1 --keep-dir").contains("--keep-dir"));
        assert!(err("--server-set log_level").contains("KEY=VALUE"));
        assert!(err("--lease-ttl-ms 10").contains("--lease-ttl-ms"));
        assert!(err("--clients").contains("--clients"));
    }
}
