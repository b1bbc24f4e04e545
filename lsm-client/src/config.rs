//! The client's settings: which servers, who it is, and how long it tries.
//!
//! Two steps, as everywhere in lsm: build a [`ClientConfig`] (in code, or from the `LSM_`
//! environment with [`ClientConfig::from_env`]), then [`ClientConfig::validate`], whose
//! errors name the field and the fix. [`crate::Client::new`] validates for you.
//!
//! The client id keys the server's exactly-once session table. By default it is generated
//! per process (`<host>-<pid>-<8 hex>`), which is right for a launcher that holds its
//! checkouts for its own lifetime. Scripts that check out in one process and release in
//! another must pass the same id to both (see `docs/cli.md`).

use std::time::Duration;

use lsm_core::ClientId;

use crate::error::ClientError;

/// The servers of an `lsm-server dev` cluster on this machine.
pub const DEV_SERVERS: &[&str] = &["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"];

/// Environment variable: comma-separated `host:port` list of the cluster's nodes.
pub const ENV_SERVERS: &str = "LSM_SERVERS";
/// Environment variable: the admin token sent on admin routes.
pub const ENV_ADMIN_TOKEN: &str = "LSM_ADMIN_TOKEN";
/// Environment variable: the client id to use instead of a generated one.
pub const ENV_CLIENT_ID: &str = "LSM_CLIENT_ID";

/// How a [`crate::Client`] reaches the cluster and how long it keeps trying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The cluster's nodes as `host:port`, in any order; any node serves any request.
    pub servers: Vec<String>,
    /// The client's id; generated when `None` (see [`generate_client_id`]).
    pub client_id: Option<ClientId>,
    /// Longest wait for one HTTP exchange with one server.
    pub attempt_timeout: Duration,
    /// Longest time one operation keeps retrying before it fails with
    /// [`ClientError::Unavailable`].
    pub deadline: Duration,
    /// First pause between rounds of retries; doubled each round, with jitter.
    pub backoff_min: Duration,
    /// Longest pause between rounds of retries.
    pub backoff_max: Duration,
    /// Sent as `Authorization: Bearer <token>` on admin routes.
    pub admin_token: Option<String>,
    /// Seeds the jitter of the retry backoff (a ChaCha8 generator), so a deterministic
    /// simulation replays exactly; `None` (the default) draws from the thread's random
    /// source.
    pub rng_seed: Option<u64>,
    /// The sequence number of the client's first write; `None` (the default) starts at
    /// the wall clock in microseconds (see [`crate::session`]). A simulation sets it so
    /// runs replay exactly; it must stay above every number an earlier process used with
    /// the same client id.
    pub first_seq: Option<u64>,
}

impl Default for ClientConfig {
    /// The dev cluster's servers with the default timings.
    fn default() -> Self {
        ClientConfig::new(DEV_SERVERS.iter().copied())
    }
}

impl ClientConfig {
    /// Default timings for `servers`: 5 s per exchange, 30 s per operation, backoff from
    /// 50 ms to 2 s.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            client_id: None,
            attempt_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            admin_token: None,
            rng_seed: None,
            first_seq: None,
        }
    }

    /// Reads `LSM_SERVERS` (required, comma separated), `LSM_ADMIN_TOKEN` and
    /// `LSM_CLIENT_ID` (both optional), with default timings; validated.
    pub fn from_env() -> Result<ClientConfig, ClientError> {
        ClientConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`ClientConfig::from_env`] over any source of variables (for tests).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ClientConfig, ClientError> {
        let servers = lookup(ENV_SERVERS).ok_or_else(|| {
            ClientError::config(
                ENV_SERVERS,
                "not set; give the cluster's nodes as host:port,host:port",
            )
        })?;
        let mut config = ClientConfig::new(split_servers(&servers));
        if config.servers.is_empty() {
            return Err(ClientError::config(
                ENV_SERVERS,
                "is empty; give the cluster's nodes as host:port,host:port",
            ));
        }
        config.admin_token = lookup(ENV_ADMIN_TOKEN).filter(|t| !t.is_empty());
        if let Some(id) = lookup(ENV_CLIENT_ID).filter(|t| !t.is_empty()) {
            let id = id.parse().map_err(|e| ClientError::config(ENV_CLIENT_ID, format!("{e}")))?;
            config.client_id = Some(id);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.servers.is_empty() {
            return Err(ClientError::config("servers", "empty; give at least one host:port"));
        }
        for (i, server) in self.servers.iter().enumerate() {
            check_addr(server)
                .map_err(|problem| ClientError::config(format!("servers[{i}]"), problem))?;
        }
        let positive = [
            ("attempt_timeout", self.attempt_timeout),
            ("deadline", self.deadline),
            ("backoff_min", self.backoff_min),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ClientError::config(field, "must be longer than zero"));
            }
        }
        if self.backoff_max < self.backoff_min {
            return Err(ClientError::config(
                "backoff_max",
                format!(
                    "{:?} is shorter than backoff_min ({:?})",
                    self.backoff_max, self.backoff_min
                ),
            ));
        }
        if self.first_seq == Some(0) {
            return Err(ClientError::config("first_seq", "must be at least 1"));
        }
        if let Some(token) = &self.admin_token
            && (token.is_empty()
                || http::HeaderValue::from_str(&format!("Bearer {token}")).is_err())
        {
            return Err(ClientError::config(
                "admin_token",
                "must be non-empty printable ASCII without control characters",
            ));
        }
        Ok(())
    }
}

/// Splits a comma-separated server list, dropping blanks around and between entries.
pub fn split_servers(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Checks a `host:port` address.
fn check_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} has no port; write host:port, such as 10.0.0.5:7101"));
    };
    if host.is_empty() {
        return Err(format!("{addr:?} has no host; write host:port"));
    }
    if addr.contains('/') || addr.contains(char::is_whitespace) {
        return Err(format!("{addr:?} is not host:port (no scheme, path or spaces)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{addr:?} has a bad port {port:?}; use 1-65535")),
    }
}

/// A fresh client id: `<host>-<pid>-<8 random hex digits>`, with the host name cut and
/// cleaned so the whole is a valid [`ClientId`].
pub fn generate_client_id() -> ClientId {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "client".to_string());
    client_id_for(&host, std::process::id(), rand::random::<u32>())
}

/// The id [`generate_client_id`] builds from its parts.
pub fn client_id_for(host: &str, pid: u32, random: u32) -> ClientId {
    let suffix = format!("-{pid}-{random:08x}");
    let mut clean: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(ClientId::MAX_LEN - suffix.len())
        .collect();
    if clean.is_empty() {
        clean.push_str("client");
    }
    ClientId::new(&format!("{clean}{suffix}")).expect("built from allowed characters only")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn reads_the_environment() {
        let config = ClientConfig::from_lookup(env(&[
            ("LSM_SERVERS", " a:1, b:2 ,,c:3"),
            ("LSM_ADMIN_TOKEN", "s3cret"),
            ("LSM_CLIENT_ID", "launcher-7"),
        ]))
        .unwrap();
        assert_eq!(config.servers, ["a:1", "b:2", "c:3"]);
        assert_eq!(config.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(config.client_id.unwrap().as_str(), "launcher-7");
    }

    #[test]
    fn errors_name_the_field() {
        let field = |r: Result<ClientConfig, ClientError>| match r.unwrap_err() {
            ClientError::Config { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(field(ClientConfig::from_lookup(env(&[]))), "LSM_SERVERS");
        assert_eq!(field(ClientConfig::from_lookup(env(&[("LSM_SERVERS", " , ")]))), "LSM_SERVERS");
        assert_eq!(
            field(ClientConfig::from_lookup(env(&[("LSM_SERVERS", "a:1,nohost")]))),
            "servers[1]"
        );
        assert_eq!(
            field(ClientConfig::from_lookup(env(&[
                ("LSM_SERVERS", "a:1"),
                ("LSM_CLIENT_ID", "-x")
            ]))),
            "LSM_CLIENT_ID"
        );
        let mut config = ClientConfig::new(["a:99999"]);
        assert!(config.validate().unwrap_err().to_string().contains("bad port"));
        config.servers = vec!["a:1".into()];
        config.deadline = Duration::ZERO;
        assert_eq!(field(config.validate().map(|_| config.clone())), "deadline");
        config.deadline = Duration::from_secs(1);
        config.backoff_max = Duration::from_millis(1);
        assert_eq!(field(config.validate().map(|_| config.clone())), "backoff_max");
        config.backoff_max = Duration::from_secs(1);
        config.admin_token = Some("bad\ntoken".into());
        assert_eq!(field(config.validate().map(|_| config.clone())), "admin_token");
        config.admin_token = None;
        config.first_seq = Some(0);
        assert_eq!(field(config.validate().map(|_| config.clone())), "first_seq");
    }

    #[test]
    fn generated_ids_are_valid_and_fit() {
        assert_eq!(client_id_for("node-1.site", 42, 0xab).as_str(), "node-1.site-42-000000ab");
        let long = client_id_for(&"h".repeat(300), u32::MAX, u32::MAX);
        assert_eq!(long.as_str().len(), ClientId::MAX_LEN);
        assert_eq!(client_id_for("_weird host!", 1, 1).as_str(), "weird-host--1-00000001");
        assert_eq!(client_id_for("", 1, 1).as_str(), "client-1-00000001");
        generate_client_id();
    }
}
