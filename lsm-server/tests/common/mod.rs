//! A three-node cluster in the test process: real `Server`s on loopback ephemeral ports,
//! talking HTTP to each other, with memory storage, and an HTTP client for the tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lsm_client::transport::{BoxFuture, HyperTransport, Transport, TransportError};
use lsm_raft::backend::MemoryBackend;
use lsm_raft::clock::SystemClock;
use lsm_raft::network::http::HttpNetwork;
use lsm_server::{Config, Server};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A license with a 10-token feature `solver` and a pooled feature `dyna`.
pub const LICENSE: &str = r#"
[[entitlements]]
feature = "solver"
license = "test"
tokens_total = 10
expires_at_ms = 4102444800000

[[entitlements]]
feature = "dyna"
license = "test"
tokens_total = 64
expires_at_ms = 4102444800000
cost = { per_core = { tokens_per_core = 1 } }

[[policy.pools.dyna]]
name = "smp"
reserve = 16
modes = ["smp"]

[[policy.pools.dyna]]
name = "mpp"
reserve = 16
modes = ["mpp"]
"#;

/// Every test is bounded by this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A transport that can be told to fail, to test forwarding failures.
pub struct Switch {
    inner: HyperTransport,
    /// While true, every send fails to connect.
    pub fail: AtomicBool,
}

impl Transport for Switch {
    fn send(
        &self,
        addr: &str,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, TransportError>> {
        if self.fail.load(Ordering::SeqCst) {
            let addr = addr.to_string();
            return Box::pin(async move {
                Err(TransportError::Connect { addr, reason: "switched off by the test".into() })
            });
        }
        self.inner.send(addr, request, timeout)
    }
}

/// An answer, with its body parsed as JSON (or `Null`).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub json: Value,
}

impl Reply {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The tests' HTTP client.
#[derive(Clone)]
pub struct Http {
    transport: HyperTransport,
}

impl Http {
    pub fn new() -> Http {
        Http { transport: HyperTransport::tcp(Duration::from_secs(1)) }
    }

    /// Sends a request with a raw body and headers.
    pub async fn raw(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut builder = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Bytes::from(body)).unwrap();
        let response = self
            .transport
            .send(addr, request, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"));
        let (parts, body) = response.into_parts();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Reply { status: parts.status.as_u16(), headers: parts.headers, json }
    }

    /// `GET path`.
    pub async fn get(&self, addr: &str, path: &str) -> Reply {
        self.raw(addr, "GET", path, &[], Vec::new()).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, addr: &str, path: &str, body: Value) -> Reply {
        self.raw(
            addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
    }

    /// `GET /metrics` as text.
    pub async fn text(&self, addr: &str, path: &str) -> String {
        let request = http::Request::get(path).body(Bytes::new()).unwrap();
        let response = self.transport.send(addr, request, Duration::from_secs(20)).await.unwrap();
        String::from_utf8(response.into_body().to_vec()).unwrap()
    }
}

/// Three nodes serving on loopback.
pub struct TestCluster {
    pub servers: Vec<Server>,
    pub addrs: Vec<String>,
    pub switches: Vec<Arc<Switch>>,
    pub http: Http,
    pub dir: tempfile::TempDir,
    tasks: Vec<JoinHandle<()>>,
}

/// The configuration of node `id` of a cluster with `peers`.
pub fn node_config(
    id: u64,
    peers: &BTreeMap<u64, String>,
    dir: &std::path::Path,
    license: &std::path::Path,
) -> Config {
    Config {
        node_id: id,
        cluster_id: "test".into(),
        listen: peers[&id].clone(),
        data_dir: dir.join(format!("node{id}")),
        license_file: Some(license.to_path_buf()),
        peers: peers.clone(),
        ..Config::default()
    }
}

/// Starts a server for `config` on `listener`.
pub async fn serve(config: Config, listener: TcpListener) -> (Server, Arc<Switch>, JoinHandle<()>) {
    let switch = Arc::new(Switch {
        inner: HyperTransport::tcp(Duration::from_secs(1)),
        fail: AtomicBool::new(false),
    });
    let network = HttpNetwork::new(config.cluster_id.clone(), config.node_id).unwrap();
    let server = Server::start(
        config,
        Arc::new(MemoryBackend::new()),
        network,
        Arc::new(SystemClock),
        switch.clone(),
    )
    .await
    .unwrap();
    let router = server.router();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (server, switch, task)
}

impl TestCluster {
    /// Starts three nodes, initializes the cluster through node 1 (which installs
    /// [`LICENSE`]) and waits until every node is ready and has the license.
    pub async fn start(tweak: impl Fn(&mut Config)) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let license = dir.path().join("license.toml");
        std::fs::write(&license, LICENSE).unwrap();
        let mut listeners = Vec::new();
        let mut peers = BTreeMap::new();
        for id in 1..=3u64 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            peers.insert(id, listener.local_addr().unwrap().to_string());
            listeners.push(listener);
        }
        let mut cluster = TestCluster {
            servers: Vec::new(),
            addrs: peers.values().cloned().collect(),
            switches: Vec::new(),
            http: Http::new(),
            dir,
            tasks: Vec::new(),
        };
        for (listener, id) in listeners.into_iter().zip(1..) {
            let mut config = node_config(id, &peers, cluster.dir.path(), &license);
            tweak(&mut config);
            let (server, switch, task) = serve(config, listener).await;
            cluster.servers.push(server);
            cluster.switches.push(switch);
            cluster.tasks.push(task);
        }
        let token = cluster.servers[0].config().admin_token.clone();
        let auth = format!("Bearer {token}");
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            vec![("content-type", "application/json")]
        } else {
            vec![("content-type", "application/json"), ("authorization", &auth)]
        };
        let init = cluster
            .http
            .raw(&cluster.addrs[0], "POST", "/v1/admin/init", &headers, b"{}".to_vec())
            .await;
        assert_eq!(init.status, 200, "init: {:?}", init.json);
        cluster.wait_ready().await;
        cluster
    }

    /// Waits until every node is ready and sees the license in its own state.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in &self.addrs {
            loop {
                let ready = self.http.get(addr, "/readyz").await.status == 200;
                let features = self.http.get(addr, "/v1/features?consistency=local").await;
                if ready && features.json.as_array().is_some_and(|f| !f.is_empty()) {
                    break;
                }
                assert!(Instant::now() < deadline, "node at {addr} did not become ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// The index of the current leader (waiting for one).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for (i, server) in self.servers.iter().enumerate() {
                if server.node().status().leader == Some(server.node().id()) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The indexes of the followers.
    pub async fn followers(&self) -> Vec<usize> {
        let leader = self.leader().await;
        (0..self.servers.len()).filter(|&i| i != leader).collect()
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        for server in &self.servers {
            server.shutdown().await;
        }
    }
}

/// A checkout body for `tokens` tokens of `feature` by `client` with `seq`.
pub fn checkout(client: &str, seq: u64, feature: &str, tokens: u64) -> Value {
    serde_json::json!({
        "client": client,
        "seq": seq,
        "items": [{"feature": feature, "tokens": tokens}],
        "user": "jane",
        "host": "node-1",
    })
}
