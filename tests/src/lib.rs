//! End-to-end harness: real `lsm-server` processes on loopback, and the `lsm` CLI.
//!
//! [`ProcCluster`] is an [`lsm_server::kit::Cluster`] in a temporary directory, on
//! ephemeral loopback ports, with the test license, that fails the test where the kit
//! returns an error: it starts the nodes, bootstraps the cluster through the admin API
//! and waits for a leader every node agrees on. Nodes can be killed with SIGKILL, paused
//! with SIGSTOP and restarted from their data directory. Every process is killed when the
//! cluster is dropped (and exits by itself if the test process dies); if the test
//! panicked, the nodes' logs are printed first.
//!
//! The binaries are built once per test run (`cargo build --bins`), so a test run of this
//! crate alone works too, and always runs the current code.
//!
//! For fault injection ([`Options::proxied_links`]), every directed link between nodes
//! goes through a [`proxy::Proxy`] the test controls ([`net::PeerLinks`]), by the `[dial]`
//! table of each node's configuration; [`net::ClientGroup`]s put proxies between groups of
//! clients and the nodes. [`workload`] runs many real clients and records an
//! [`lsm_check::History`] ([`history`] turns the client library's answers into its
//! entries), [`nemesis`] injects faults, and `lsm_check` checks safety, durability,
//! exactly-once, fences and liveness against what was recorded.

pub mod history;
pub mod nemesis;
pub mod net;
pub mod proxy;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lsm_client::api::{self, ClusterInfo};
use lsm_client::transport::{HyperTransport, Transport, TransportError};
use lsm_core::{Checkout, FeatureStatus};
use lsm_server::kit::{self, Ports, Spec};
use net::PeerLinks;
use nix::sys::signal::Signal;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How long the harness waits for a cluster to come up or settle before it fails.
pub const SETTLE: Duration = Duration::from_secs(20);

const LOCAL_FEATURES: &str = "/v1/features?consistency=local";
const LOCAL_CHECKOUTS: &str = "/v1/checkouts?consistency=local";

/// How many lines of each node's log a failure shows.
const LOG_LINES: usize = 60;

/// The path of a workspace binary, built (once per test process) if it is not current.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let status = Command::new(env!("CARGO"))
            .current_dir(root)
            .args(["build", "--quiet", "--bins", "-p", "lsm-server", "-p", "lsm-client"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
        // Test executables live in target/<profile>/deps; the binaries one level up.
        let exe = std::env::current_exe().expect("test executable path");
        exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
    });
    dir.join(name)
}

/// A cluster of `lsm-server` processes on loopback.
pub struct ProcCluster {
    /// Declared first, so the nodes are killed before their directory is removed.
    kit: kit::Cluster,
    dir: tempfile::TempDir,
    http: Http,
    links: Option<PeerLinks>,
}

/// How [`ProcCluster::start_with_options`] sets up a cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many nodes.
    pub size: u64,
    /// The license (TOML) `init` installs.
    pub license: String,
    /// Route every directed link between nodes through a proxy the test controls.
    pub proxied_links: bool,
    /// Extra top-level settings for every node (`key = value` lines), such as
    /// `lease_ttl_ms = 6000`.
    pub settings: Vec<String>,
}

impl Default for Options {
    /// Three nodes, [`TEST_LICENSE`], direct links.
    fn default() -> Self {
        Options {
            size: 3,
            license: TEST_LICENSE.to_string(),
            proxied_links: false,
            settings: Vec::new(),
        }
    }
}

/// A demo license for tests: `lsdyna` with 10 tokens split into smp and mpp pools (per-core
/// cost, one token per core), `abaqus` with 10 plain tokens, `fluent` with 4.
pub const TEST_LICENSE: &str = r#"
[[entitlements]]
feature = "lsdyna"
license = "e2e"
tokens_total = 10
expires_at_ms = 4102444800000
cost = { per_core = { base_tokens = 0, tokens_per_core = 1, cores_included = 0 } }

[[entitlements]]
feature = "abaqus"
license = "e2e"
tokens_total = 10
expires_at_ms = 4102444800000

[[entitlements]]
feature = "fluent"
license = "e2e"
tokens_total = 4
expires_at_ms = 4102444800000

[[policy.pools.lsdyna]]
name = "smp"
modes = ["smp"]

[[policy.pools.lsdyna]]
name = "mpp"
modes = ["mpp"]
"#;

impl ProcCluster {
    /// The checks of a history of this cluster: the capacity it reports, releases held
    /// to finding their checkout live however long they take, and liveness within
    /// `liveness` after every heal.
    pub async fn checks(&self, liveness: Duration) -> lsm_check::Checks {
        let leader = self.wait_for_leader().await;
        let features: Vec<FeatureStatus> = self.read(leader, api::path::FEATURES).await;
        lsm_check::Checks {
            capacity: lsm_check::Capacity::of(&features),
            release_window: None,
            liveness: Some(lsm_check::Liveness { bound: liveness, progress_after_heal: true }),
        }
    }
    /// Starts `size` nodes with [`TEST_LICENSE`], bootstraps them and waits for a leader.
    pub async fn start(size: u64) -> ProcCluster {
        ProcCluster::start_with(size, TEST_LICENSE).await
    }

    /// Starts `size` nodes with `license` (TOML), bootstraps them and waits for a leader
    /// that has installed the license.
    pub async fn start_with(size: u64, license: &str) -> ProcCluster {
        let options = Options { size, license: license.to_string(), ..Options::default() };
        ProcCluster::start_with_options(options).await
    }

    /// Starts a cluster as `options` say, bootstraps it and waits for a leader that has
    /// installed the license.
    pub async fn start_with_options(options: Options) -> ProcCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = kit::free_ports(options.size as usize).expect("free loopback ports");
        let mut spec = Spec {
            nodes: options.size,
            ports: Ports::Given(ports),
            cluster_id: "e2e".into(),
            license: Some(options.license),
            settings: options.settings,
            ..Spec::new(binary("lsm-server"), dir.path())
        };
        let links = if options.proxied_links {
            let links = PeerLinks::start(&spec.peers().expect("the nodes' addresses")).await;
            for id in 1..=options.size {
                let mut table = String::from("[dial]\n");
                for (peer, proxy) in links.dial_table(id) {
                    table.push_str(&format!("{peer} = \"{proxy}\"\n"));
                }
                spec.tables.insert(id, table);
            }
            Some(links)
        } else {
            None
        };
        let kit = kit::Cluster::start(spec).await.unwrap_or_else(|e| panic!("{e}"));
        let cluster = ProcCluster { kit, dir, http: Http::new(), links };
        cluster.wait_for_leader().await;
        cluster
            .wait_until("the license is installed", |c| async move {
                let (status, body) = c.get(c.any_live(), "/v1/features").await;
                status == 200 && body.as_array().is_some_and(|f| !f.is_empty())
            })
            .await;
        cluster
    }

    /// The temporary directory holding configs, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The processes themselves.
    pub fn kit(&self) -> &kit::Cluster {
        &self.kit
    }

    /// Node `id`'s address.
    pub fn addr(&self, id: u64) -> &str {
        self.kit.addr(id)
    }

    /// Every node's address, in id order.
    pub fn addrs(&self) -> Vec<String> {
        self.kit.addrs()
    }

    /// Every node's id and address.
    pub fn nodes(&self) -> BTreeMap<u64, String> {
        self.kit.peers()
    }

    /// The proxies on the links between nodes ([`Options::proxied_links`]).
    pub fn links(&self) -> &PeerLinks {
        self.links.as_ref().expect("the cluster was started with proxied_links")
    }

    /// The harness's HTTP caller (straight to the nodes, around every proxy).
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// The ids of the nodes whose process runs.
    pub fn live(&self) -> Vec<u64> {
        self.kit.live()
    }

    fn any_live(&self) -> u64 {
        self.live()[0]
    }

    /// The node's process id, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.kit.pid(id)
    }

    /// Kills node `id` with SIGKILL and reaps it.
    pub fn kill(&mut self, id: u64) {
        self.kit.kill(id).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sends `signal` to node `id` (SIGSTOP to pause it, SIGCONT to resume it).
    pub fn signal(&self, id: u64, signal: Signal) {
        self.kit.signal(id, signal).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Restarts node `id` from its data directory and waits until it answers.
    pub async fn restart(&mut self, id: u64) {
        self.kit.restart(id).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// The cluster as node `id` sees it, if it answers.
    pub async fn cluster_info(&self, id: u64) -> Option<ClusterInfo> {
        self.kit.info(id).await
    }

    /// Waits until every live node names the same live leader in the same term, and
    /// returns it.
    pub async fn wait_for_leader(&self) -> u64 {
        let leader = self.leader_within(SETTLE).await;
        leader.unwrap_or_else(|| panic!("no leader all live nodes agree on within {SETTLE:?}"))
    }

    /// The leader every live node that answers within `within` agrees on, if there is
    /// one; `None` rather than a failure when there is not.
    pub async fn leader_within(&self, within: Duration) -> Option<u64> {
        self.leader_among(&self.live(), within).await
    }

    /// The leader the nodes `among` agree on, if they agree within `within` on one of
    /// them (the others may be paused or cut off, and think otherwise).
    pub async fn leader_among(&self, among: &[u64], within: Duration) -> Option<u64> {
        self.kit.agreed_leader(among, within).await
    }

    /// Waits until every live node has applied the same log index and holds the same
    /// features and checkouts in its own state (`consistency=local`), and returns them;
    /// fails the test after [`SETTLE`].
    pub async fn converged(&self) -> (Vec<FeatureStatus>, Vec<Checkout>) {
        let started = Instant::now();
        loop {
            let mut views = Vec::new();
            for id in self.live() {
                let addr = self.addr(id);
                let local = async {
                    let info = self.cluster_info(id).await?;
                    let features = self.http.call(addr, "GET", LOCAL_FEATURES, None).await;
                    let checkouts = self.http.call(addr, "GET", LOCAL_CHECKOUTS, None).await;
                    let (Ok((200, features)), Ok((200, checkouts))) = (features, checkouts) else {
                        return None;
                    };
                    let features: Vec<FeatureStatus> = serde_json::from_value(features).ok()?;
                    let checkouts: Vec<Checkout> = serde_json::from_value(checkouts).ok()?;
                    Some((info.applied_index, features, checkouts))
                };
                views
                    .push(tokio::time::timeout(Duration::from_secs(2), local).await.ok().flatten());
            }
            if let Some(Some(first)) = views.first()
                && views.iter().all(|v| v.as_ref() == Some(first))
            {
                let (_, features, checkouts) = first.clone();
                return (features, checkouts);
            }
            assert!(
                started.elapsed() < SETTLE,
                "the nodes did not converge within {SETTLE:?}: {:?}\n{}",
                views.iter().map(|v| v.as_ref().map(|(i, _, c)| (*i, c.len()))).collect::<Vec<_>>(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `check` every 100 ms until it holds, failing the test after [`SETTLE`].
    pub async fn wait_until<'a, F, Fut>(&'a self, what: &str, mut check: F)
    where
        F: FnMut(&'a ProcCluster) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        while !check(self).await {
            assert!(started.elapsed() < SETTLE, "{what}: not within {SETTLE:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET path` on node `id`: the status and the JSON body (`Null` when there is none).
    pub async fn get(&self, id: u64, path: &str) -> (u16, Value) {
        self.http.call(self.addr(id), "GET", path, None).await.unwrap_or_else(|e| {
            panic!("GET {path} on node {id}: {e}\n{}", self.logs());
        })
    }

    /// `POST path` on node `id` with `body` as JSON.
    pub async fn post(&self, id: u64, path: &str, body: &impl Serialize) -> (u16, Value) {
        let body = serde_json::to_vec(body).expect("serializable body");
        self.post_raw(id, path, "application/json", body).await
    }

    /// `POST path` on node `id` with a raw body of the given content type.
    pub async fn post_raw(
        &self,
        id: u64,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let addr = self.addr(id);
        self.http
            .call_with(addr, "POST", path, content_type, Bytes::from(body))
            .await
            .unwrap_or_else(|e| panic!("POST {path} on node {id}: {e}\n{}", self.logs()))
    }

    /// `GET path` on node `id`, decoded as `T`; fails the test on any other status.
    pub async fn read<T: DeserializeOwned>(&self, id: u64, path: &str) -> T {
        let (status, body) = self.get(id, path).await;
        assert_eq!(status, 200, "GET {path} on node {id}: {body}");
        serde_json::from_value(body).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The end of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.kit.logs(LOG_LINES)
    }
}

impl Drop for ProcCluster {
    /// Prints the nodes' logs if the test failed; the kit then kills the nodes.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A small JSON-over-HTTP caller on the client library's transport.
#[derive(Clone)]
pub struct Http {
    transport: Arc<dyn Transport>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    /// Over TCP.
    pub fn new() -> Http {
        Http { transport: Arc::new(HyperTransport::tcp(Duration::from_secs(2))) }
    }

    /// `method path` on `addr` with an optional JSON body.
    pub async fn call(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), TransportError> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        self.call_with(addr, method, path, "application/json", bytes).await
    }

    /// `method path` on `addr` with a raw body.
    pub async fn call_with(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(u16, Value), TransportError> {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body)
            .expect("valid request");
        let response = self.transport.send(addr, request, Duration::from_secs(10)).await?;
        let status = response.status().as_u16();
        let body = response.into_body();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        Ok((status, value))
    }
}

/// Sends the head of a JSON `POST` that declares a body of `length` bytes, none of which
/// it sends, and reads the answer. A server that refuses a body by its declared length
/// answers at once; since no unread body sits in its socket, closing the connection
/// afterwards sends the answer and a FIN, never a reset that could overtake the answer
/// (as happens when a client is still writing a large body).
pub async fn post_head_only(addr: &str, path: &str, length: u64) -> std::io::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    let read = async {
        loop {
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&answer[..end]).into_owned();
                let declared = head.lines().find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim())
                });
                let declared: usize = declared
                    .ok_or_else(|| bad("the answer declares no content-length"))?
                    .parse()
                    .map_err(|_| bad("the answer's content-length is not a number"))?;
                if answer.len() >= end + 4 + declared {
                    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok());
                    let status = status.ok_or_else(|| bad("the answer has no status code"))?;
                    let body = serde_json::from_slice(&answer[end + 4..end + 4 + declared])
                        .map_err(|_| bad("the answer's body is not JSON"))?;
                    return Ok((status, body));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("the connection closed before the whole answer came"));
            }
            answer.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))?
}

/// How many clusters of one test binary may run at once.
const SLOTS: u32 = 2;

static CLUSTER_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SLOTS as usize);

/// A permit to run one multi-process cluster: at most two run at once, so the nodes of
/// concurrent tests do not starve each other of the machine's cores.
pub async fn cluster_slot() -> tokio::sync::SemaphorePermit<'static> {
    CLUSTER_SLOTS.acquire().await.expect("the semaphore is never closed")
}

/// A permit to run a cluster alone: no other cluster of this test binary runs meanwhile
/// (for a heavy workload whose timing should not suffer from a neighbour).
pub async fn cluster_alone() -> tokio::sync::SemaphorePermit<'static> {
    CLUSTER_SLOTS.acquire_many(SLOTS).await.expect("the semaphore is never closed")
}

/// The environment variable `name` as a number, if set; a value that is not one panics
/// with the variable's name, so a long-mode run never silently falls back to CI mode.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

/// The seed in the environment variable `name`, or one taken from the clock (the test
/// prints it, so the run can be replayed).
pub fn env_seed(name: &str) -> u64 {
    env_u64(name).unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |t| t.as_nanos() as u64)
    })
}
