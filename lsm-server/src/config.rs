//! A node's configuration: one TOML file, overridable by `LSM_` environment variables and
//! by flags, then checked by [`Config::validate`].
//!
//! Loading is figment's layering, lowest first: the built-in defaults, the TOML file,
//! environment variables (`LSM_NODE_ID=2`, `LSM_RAFT__HEARTBEAT_MS=100`: `__` separates
//! the levels of a key), then [`Overrides`] (`--node-id`, `--listen`, `--data-dir`,
//! `--license-file` and any `--set key=value`). Only variables whose first key names a
//! field are read, so the `lsm` client's own `LSM_` variables do not upset the server.
//!
//! Loading checks types and unknown keys; [`Config::validate`] checks meaning, and every
//! error names the field and says how to fix it. Relative paths are relative to the
//! working directory of the process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Value;
use lsm_core::{Install, Limits, Policy};
use lsm_raft::node::{NodeConfig, Timing};
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// Everything one node needs. See `lsm-server/examples/node.toml` for a commented file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id: a positive integer, its key in `peers`.
    pub node_id: u64,
    /// The cluster's name; peers with another name are refused.
    #[serde(deserialize_with = "text::string")]
    pub cluster_id: String,
    /// The socket address the HTTP server binds, for clients and peers alike.
    #[serde(deserialize_with = "text::string")]
    pub listen: String,
    /// The `host:port` peers and clients reach this node at; by default its entry in
    /// `peers`, else `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "text::option")]
    pub advertise: Option<String>,
    /// The node's Raft log, snapshots and metadata.
    #[serde(deserialize_with = "text::path")]
    pub data_dir: PathBuf,
    /// Entitlements (and an optional `[policy]`) that `init` installs.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text::option_path"
    )]
    pub license_file: Option<PathBuf>,
    /// A policy that replaces the license file's `[policy]`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text::option_path"
    )]
    pub policy_file: Option<PathBuf>,
    /// The lease of a checkout that names none.
    pub lease_ttl_ms: u64,
    /// The poll TTL of a queued request that names none.
    pub queue_poll_ttl_ms: u64,
    /// A write or read taking longer answers `504 timeout` (it may still take effect).
    pub request_timeout_ms: u64,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// When not empty, `/v1/admin/*` need `Authorization: Bearer <token>`.
    #[serde(deserialize_with = "text::string")]
    pub admin_token: String,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `lsm_server=debug,info`; `RUST_LOG` wins.
    #[serde(deserialize_with = "text::string")]
    pub log_level: String,
    /// Every voter of the initial cluster, this node included: id to `host:port`.
    #[serde(with = "peer_keys")]
    pub peers: BTreeMap<u64, String>,
    /// Where this node dials a peer, by node id, when that is not the peer's address in
    /// the cluster's membership (NAT, split-horizon DNS, a proxy). Peer RPCs and
    /// forwarding to the leader use it; the membership, `advertise` and the `lsm-leader`
    /// header keep the peer's own address. Empty by default.
    #[serde(with = "peer_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub dial: BTreeMap<u64, String>,
    /// Raft timing.
    pub raft: RaftTiming,
    /// The state machine's limits (for a fresh state; a restored one keeps its own).
    pub limits: Limits,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// [`lsm_raft::node::Timing`] as configuration: every field optional, with its default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    /// The leader sends a heartbeat this often.
    pub heartbeat_ms: u64,
    /// Shortest election timeout; at least 3 x `heartbeat_ms`.
    pub election_min_ms: u64,
    /// Longest election timeout; above `election_min_ms`.
    pub election_max_ms: u64,
    /// A snapshot is built after this many log entries since the last one.
    pub snapshot_after_entries: u64,
    /// Log entries kept after a snapshot for lagging followers.
    pub keep_after_snapshot: u64,
    /// The leader checks for due expiries at least this often.
    pub tick_poll_ms: u64,
    /// How far, in parts per million, the leader's timestamps may run faster or slower
    /// than its monotonic clock while they follow its wall clock (0: not paced).
    pub max_clock_drift_ppm: u64,
    /// The most a new leader's first timestamp may be ahead of replicated time, however
    /// far its wall clock is ahead; at least 1.
    pub max_term_start_step_ms: u64,
}

/// What flags override, on top of the file and the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--node-id`.
    pub node_id: Option<u64>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--license-file`.
    pub license_file: Option<PathBuf>,
    /// `--set key=value`, any field by its dotted path (`raft.heartbeat_ms=100`).
    pub set: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 0,
            cluster_id: "lsm".into(),
            listen: "127.0.0.1:7101".into(),
            advertise: None,
            data_dir: PathBuf::new(),
            license_file: None,
            policy_file: None,
            lease_ttl_ms: 30_000,
            queue_poll_ttl_ms: 60_000,
            request_timeout_ms: 5_000,
            max_body_bytes: 1 << 20,
            admin_token: String::new(),
            log_format: LogFormat::Human,
            log_level: "info".into(),
            peers: BTreeMap::new(),
            dial: BTreeMap::new(),
            raft: RaftTiming::default(),
            limits: Limits::default(),
        }
    }
}

impl Default for RaftTiming {
    fn default() -> Self {
        let t = Timing::default();
        RaftTiming {
            heartbeat_ms: t.heartbeat_ms,
            election_min_ms: t.election_min_ms,
            election_max_ms: t.election_max_ms,
            snapshot_after_entries: t.snapshot_after_entries,
            keep_after_snapshot: t.keep_after_snapshot,
            tick_poll_ms: t.tick_poll_ms,
            max_clock_drift_ppm: t.max_clock_drift_ppm,
            max_term_start_step_ms: t.max_term_start_step_ms,
        }
    }
}

impl From<&RaftTiming> for Timing {
    fn from(t: &RaftTiming) -> Timing {
        Timing {
            heartbeat_ms: t.heartbeat_ms,
            election_min_ms: t.election_min_ms,
            election_max_ms: t.election_max_ms,
            snapshot_after_entries: t.snapshot_after_entries,
            keep_after_snapshot: t.keep_after_snapshot,
            tick_poll_ms: t.tick_poll_ms,
            max_clock_drift_ppm: t.max_clock_drift_ppm,
            max_term_start_step_ms: t.max_term_start_step_ms,
        }
    }
}

/// The largest `raft.max_clock_drift_ppm`: 9 %, under the clients' lease safety margin
/// of at least a tenth of the TTL.
const MAX_CLOCK_DRIFT_PPM: u64 = 90_000;

/// The top-level keys, for filtering the environment and checking `--set`: the fields of
/// [`Config`] in declaration order, as its derived `Deserialize` names them, so the list
/// follows the struct.
static TOP_LEVEL_KEYS: LazyLock<&'static [&'static str]> = LazyLock::new(struct_fields::<Config>);

/// The field names a struct's derived `Deserialize` passes to `deserialize_struct`.
fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Deserializer, Visitor, value::Error as Found};

    /// A deserializer that only records the field names it is asked for.
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Found;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            *self.0 = fields;
            Err(de::Error::custom("the fields are recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Bounds of the settings that are not the state machine's.
const MAX_REQUEST_TIMEOUT_MS: u64 = 600_000;
const MIN_BODY_BYTES: u64 = 1_024;
const MAX_BODY_BYTES: u64 = 64 << 20;

impl Config {
    /// Loads `file` (if given; it must exist), the `LSM_` environment and `overrides`.
    /// Types and unknown keys are checked here; call [`Config::validate`] next.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ServerError> {
        Config::extract(Config::figment(file, overrides)?)
    }

    /// The layered sources [`Config::load`] reads, for callers that add their own.
    pub fn figment(file: Option<&Path>, overrides: &Overrides) -> Result<Figment, ServerError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ServerError::config(
                    "--config",
                    format!(
                        "{} is not a readable file; give the path of a node's TOML config",
                        file.display()
                    ),
                ));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("LSM_").split("__").filter(|key| {
            let first = key.as_str().split('.').next().unwrap_or_default();
            TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(first))
        }));
        if let Some(id) = overrides.node_id {
            figment = figment.merge(Serialized::default("node_id", id));
        }
        if let Some(listen) = &overrides.listen {
            figment = figment.merge(Serialized::default("listen", listen));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("data_dir", dir));
        }
        if let Some(file) = &overrides.license_file {
            figment = figment.merge(Serialized::default("license_file", file));
        }
        for set in &overrides.set {
            let Some((key, value)) = set.split_once('=') else {
                return Err(ServerError::config(
                    "--set",
                    format!("{set:?} is not key=value; write it like raft.heartbeat_ms=100"),
                ));
            };
            let key = key.trim();
            let first = key.split('.').next().unwrap_or_default();
            if !TOP_LEVEL_KEYS.contains(&first) {
                return Err(ServerError::config(
                    "--set",
                    format!(
                        "{key:?} is not a configuration key; the keys are {}",
                        TOP_LEVEL_KEYS.join(", ")
                    ),
                ));
            }
            let value = Value::from_str(value.trim()).unwrap_or_else(|e| match e {});
            figment = figment.merge(Serialized::default(key, value));
        }
        Ok(figment)
    }

    /// Extracts a configuration from `figment`, refusing unknown keys.
    pub fn extract(figment: Figment) -> Result<Config, ServerError> {
        let config: Config = figment.extract().map_err(|e| ServerError::ConfigLoad(Box::new(e)))?;
        // `Limits` takes unknown keys silently; a misspelled limit must not.
        if let Ok(Value::Dict(_, dict)) = figment.find_value("limits") {
            let known = serde_json::to_value(Limits::default()).unwrap_or_default();
            for key in dict.keys() {
                if known.get(key).is_none() {
                    return Err(ServerError::config(
                        format!("limits.{key}"),
                        "not a limit; see lsm_core::Limits for the names",
                    ));
                }
            }
        }
        Ok(config)
    }

    /// Checks the configuration; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |field: &str, problem: String| Err(ServerError::config(field, problem));
        if self.node_id == 0 {
            return bad(
                "node_id",
                "0 is not a node id; set node_id to this node's key in [peers] (1, 2, ...)".into(),
            );
        }
        if self.cluster_id.trim().is_empty() {
            return bad("cluster_id", "is empty; name the cluster, such as \"lsm-prod\"".into());
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "listen",
                format!(
                    "{:?} is not a socket address; write an IP and a port, such as \"0.0.0.0:7101\"",
                    self.listen
                ),
            );
        }
        if let Some(advertise) = &self.advertise {
            check_host_port("advertise", advertise)?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad(
                "data_dir",
                "is empty; name the directory for this node's Raft log and snapshots".into(),
            );
        }
        if self.peers.is_empty() {
            return bad(
                "peers",
                format!(
                    "is empty; list every voter of the initial cluster, this node included, such as {} = \"{}\"",
                    self.node_id,
                    self.advertise()
                ),
            );
        }
        for (id, addr) in &self.peers {
            if *id == 0 {
                return bad("peers.0", "0 is not a node id; number the nodes from 1".into());
            }
            check_host_port(&format!("peers.{id}"), addr)?;
        }
        match self.peers.get(&self.node_id) {
            None => {
                return bad(
                    "peers",
                    format!(
                        "does not list this node (node_id = {id}); add {id} = \"{addr}\" to [peers]",
                        id = self.node_id,
                        addr = self.advertise.as_deref().unwrap_or(&self.listen)
                    ),
                );
            }
            Some(addr) => {
                if let Some(advertise) = &self.advertise
                    && advertise != addr
                {
                    return bad(
                        "advertise",
                        format!(
                            "{advertise:?} differs from this node's entry in [peers] ({} = {addr:?}); make them the same",
                            self.node_id
                        ),
                    );
                }
            }
        }
        for (id, addr) in &self.dial {
            if *id == 0 {
                return bad("dial.0", "0 is not a node id; the keys of [dial] are node ids".into());
            }
            if *id == self.node_id {
                return bad(
                    &format!("dial.{id}"),
                    format!(
                        "names this node (node_id = {id}), which never dials itself; remove the entry"
                    ),
                );
            }
            check_host_port(&format!("dial.{id}"), addr)?;
        }
        self.validate_raft()?;
        self.validate_limits()?;
        if self.request_timeout_ms == 0 || self.request_timeout_ms > MAX_REQUEST_TIMEOUT_MS {
            return bad(
                "request_timeout_ms",
                format!(
                    "{} is outside 1..={MAX_REQUEST_TIMEOUT_MS}; 5000 is a good value",
                    self.request_timeout_ms
                ),
            );
        }
        if !(MIN_BODY_BYTES..=MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            return bad(
                "max_body_bytes",
                format!(
                    "{} is outside {MIN_BODY_BYTES}..={MAX_BODY_BYTES}; 1048576 (1 MiB) is a good value",
                    self.max_body_bytes
                ),
            );
        }
        if self.admin_token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad(
                "admin_token",
                "contains whitespace; use letters, digits and punctuation only".into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return bad(
                "log_level",
                format!(
                    "{:?} is not a log filter ({e}); use error, warn, info, debug or trace",
                    self.log_level
                ),
            );
        }
        self.license()?;
        Ok(())
    }

    fn validate_raft(&self) -> Result<(), ServerError> {
        let r = &self.raft;
        let bad = |field: &str, problem: String| Err(ServerError::config(field, problem));
        if r.heartbeat_ms == 0 {
            return bad("raft.heartbeat_ms", "0 must be at least 1; 50 is the default".into());
        }
        if r.election_min_ms < 3 * r.heartbeat_ms {
            return bad(
                "raft.election_min_ms",
                format!(
                    "{} must be at least 3 x raft.heartbeat_ms ({}), so a follower misses several heartbeats before it stands; raise it to {} or lower raft.heartbeat_ms",
                    r.election_min_ms,
                    r.heartbeat_ms,
                    3 * r.heartbeat_ms
                ),
            );
        }
        if r.election_max_ms <= r.election_min_ms {
            return bad(
                "raft.election_max_ms",
                format!(
                    "{} must be above raft.election_min_ms ({}), so candidates time out at different moments; 300 goes with the default 150",
                    r.election_max_ms, r.election_min_ms
                ),
            );
        }
        if r.snapshot_after_entries == 0 {
            return bad(
                "raft.snapshot_after_entries",
                "0 must be at least 1; 20000 is the default".into(),
            );
        }
        if r.tick_poll_ms == 0 {
            return bad("raft.tick_poll_ms", "0 must be at least 1; 100 is the default".into());
        }
        if r.max_clock_drift_ppm > MAX_CLOCK_DRIFT_PPM {
            return bad(
                "raft.max_clock_drift_ppm",
                format!(
                    "{} is above {MAX_CLOCK_DRIFT_PPM}: leases would run out faster than clients renew them (their safety margin is a tenth of the TTL); 50000 is the default, 0 turns pacing off",
                    r.max_clock_drift_ppm
                ),
            );
        }
        if r.max_term_start_step_ms == 0 {
            return bad(
                "raft.max_term_start_step_ms",
                "0 must be at least 1: it is how far a new leader may move cluster time past replicated time; 60000 is the default".into(),
            );
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ServerError> {
        let l = &self.limits;
        let bad = |field: &str, problem: String| Err(ServerError::config(field, problem));
        if l.min_lease_ttl_ms > l.max_lease_ttl_ms {
            return bad(
                "limits.min_lease_ttl_ms",
                format!(
                    "{} is above limits.max_lease_ttl_ms ({}); lower it",
                    l.min_lease_ttl_ms, l.max_lease_ttl_ms
                ),
            );
        }
        if l.min_queue_ttl_ms > l.max_queue_ttl_ms {
            return bad(
                "limits.min_queue_ttl_ms",
                format!(
                    "{} is above limits.max_queue_ttl_ms ({}); lower it",
                    l.min_queue_ttl_ms, l.max_queue_ttl_ms
                ),
            );
        }
        if !(l.min_lease_ttl_ms..=l.max_lease_ttl_ms).contains(&self.lease_ttl_ms) {
            return bad(
                "lease_ttl_ms",
                format!(
                    "{} is outside limits.min_lease_ttl_ms..=limits.max_lease_ttl_ms ({}..={}); pick a lease in that range",
                    self.lease_ttl_ms, l.min_lease_ttl_ms, l.max_lease_ttl_ms
                ),
            );
        }
        if !(l.min_queue_ttl_ms..=l.max_queue_ttl_ms).contains(&self.queue_poll_ttl_ms) {
            return bad(
                "queue_poll_ttl_ms",
                format!(
                    "{} is outside limits.min_queue_ttl_ms..=limits.max_queue_ttl_ms ({}..={}); pick a poll ttl in that range",
                    self.queue_poll_ttl_ms, l.min_queue_ttl_ms, l.max_queue_ttl_ms
                ),
            );
        }
        Ok(())
    }

    /// The address peers and clients reach this node at: `advertise`, else this node's
    /// entry in `peers`, else `listen`.
    pub fn advertise(&self) -> String {
        self.advertise
            .clone()
            .or_else(|| self.peers.get(&self.node_id).cloned())
            .unwrap_or_else(|| self.listen.clone())
    }

    /// What the Raft node needs.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            id: self.node_id,
            cluster_id: self.cluster_id.clone(),
            addr: self.advertise(),
            timing: Timing::from(&self.raft),
            limits: self.limits.clone(),
        }
    }

    /// The license to install at `init`: the license file, with its policy replaced by
    /// the policy file if one is set, validated against the limits. `None` when no license
    /// file is configured.
    pub fn license(&self) -> Result<Option<Install>, ServerError> {
        let Some(path) = &self.license_file else {
            if self.policy_file.is_some() {
                return Err(ServerError::config(
                    "policy_file",
                    "is set without a license_file; set license_file too, or drop policy_file",
                ));
            }
            return Ok(None);
        };
        let mut install: Install = read_toml("license_file", path)?;
        if let Some(policy) = &self.policy_file {
            install.policy = read_toml::<Policy>("policy_file", policy)?;
        }
        install.validate(&self.limits).map_err(|e| {
            ServerError::config(
                "license_file",
                format!("{} does not validate: {e}", path.display()),
            )
        })?;
        Ok(Some(install))
    }
}

/// Reads a TOML file into `T`; errors name `field`, the path and the TOML error.
pub fn read_toml<T: serde::de::DeserializeOwned>(
    field: &str,
    path: &Path,
) -> Result<T, ServerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServerError::config(field, format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| ServerError::config(field, format!("{} is not valid: {e}", path.display())))
}

/// True when `value` is `host:port` with a non-zero port.
pub fn is_host_port(value: &str) -> bool {
    match value.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && !host.contains('/')
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// Checks that `value` is `host:port`.
fn check_host_port(field: &str, value: &str) -> Result<(), ServerError> {
    if is_host_port(value) {
        Ok(())
    } else {
        Err(ServerError::config(
            field,
            format!("{value:?} is not host:port; write it like \"10.0.0.2:7101\""),
        ))
    }
}

/// `peers` and `dial` keys are node ids, written as TOML keys (strings).
mod peer_keys {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        peers: &BTreeMap<u64, String>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<String, &String> =
            peers.iter().map(|(id, addr)| (id.to_string(), addr)).collect();
        map.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, String>, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        map.into_iter()
            .map(|(key, addr)| match key.trim().parse::<u64>() {
                Ok(id) => Ok((id, addr)),
                Err(_) => Err(D::Error::custom(format!(
                    "{key:?} is not a node id; the keys of [peers] and [dial] are node ids (1 = \"10.0.0.1:7101\")"
                ))),
            })
            .collect()
    }
}

/// Text fields that also take a number or a boolean: an environment variable or `--set`
/// value such as `LSM_ADMIN_TOKEN=12345` arrives as a number.
mod text {
    use std::fmt;
    use std::path::PathBuf;

    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    struct Text;

    impl Visitor<'_> for Text {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_string<E: Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u128<E: Error>(self, v: u128) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i128<E: Error>(self, v: i128) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    struct OptionalText;

    impl<'de> Visitor<'de> for OptionalText {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_none<E: Error>(self) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
            d.deserialize_any(Text).map(Some)
        }
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_any(Text)
    }

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_option(OptionalText)
    }

    pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        string(d).map(PathBuf::from)
    }

    pub fn option_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        option(d).map(|p| p.map(PathBuf::from))
    }
}
