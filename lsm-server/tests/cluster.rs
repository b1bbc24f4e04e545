//! The HTTP API on a real three-node cluster in this process: forwarding, reads of each
//! consistency, refusals with their documented codes, admin routes and observability.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{TEST_TIMEOUT, TestCluster, checkout};
use lsm_client::api::{ErrorCode, HealthReply, InitBody, SnapshotReply};
use lsm_server::remote::Remote;
use serde_json::{Value, json};

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("the test took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_go_through_any_node() {
    bounded(async {
        let cluster = TestCluster::start(|_| {}).await;
        let http = &cluster.http;
        let leader = cluster.leader().await;
        let followers = cluster.followers().await;
        let (f1, f2) = (&cluster.addrs[followers[0]], &cluster.addrs[followers[1]]);
        let leader_addr = &cluster.addrs[leader];

        // A checkout through a follower is forwarded to the leader and served.
        let reply = http.post(f1, "/v1/checkouts", checkout("c1", 1, "dyna", 8)).await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        assert_eq!(reply.json["status"], "granted");
        assert_eq!(reply.json["items"][0]["tokens"], 8);
        let id = reply.json["id"].as_u64().unwrap();
        let node_id = cluster.servers[followers[0]].node().id().to_string();
        assert_eq!(reply.header("lsm-node"), Some(node_id.as_str()));
        assert_eq!(reply.header("lsm-leader"), Some(leader_addr.as_str()));

        // A retry with the same envelope gets the same checkout.
        let again = http.post(f2, "/v1/checkouts", checkout("c1", 1, "dyna", 8)).await;
        assert_eq!(again.json["id"].as_u64(), Some(id));

        // A linearizable read on the other follower sees it at once.
        let list = http.get(f2, "/v1/checkouts").await;
        assert_eq!(list.status, 200);
        assert_eq!(list.json.as_array().unwrap().len(), 1);
        assert_eq!(list.json[0]["id"].as_u64(), Some(id));
        let one = http.get(f2, &format!("/v1/checkouts/{id}")).await;
        assert_eq!(one.json["live"]["client"], "c1");

        // Heartbeat through a follower, release through the leader.
        let beat = http
            .post(f2, &format!("/v1/checkouts/{id}/heartbeat"), json!({"client": "c1", "seq": 2}))
            .await;
        assert_eq!(beat.status, 200, "{:?}", beat.json);
        assert_eq!(beat.json["status"], "renewed");
        let released = http
            .post(
                leader_addr,
                &format!("/v1/checkouts/{id}/release"),
                json!({"client": "c1", "seq": 3}),
            )
            .await;
        assert_eq!(released.status, 200, "{:?}", released.json);
        assert_eq!(released.json, json!({"status": "released", "id": id}));
        let gone = http.get(f1, &format!("/v1/checkouts/{id}")).await;
        assert!(gone.json["gone"].is_object(), "{:?}", gone.json);

        // All ten tokens of a ten-token feature through one follower, then no more.
        for seq in 1..=10 {
            let reply = http
                .post(f1, "/v1/checkouts", checkout(&format!("job{seq}"), 1, "solver", 1))
                .await;
            assert_eq!(reply.status, 200, "checkout {seq}: {:?}", reply.json);
        }
        let refused = http.post(f1, "/v1/checkouts", checkout("job11", 1, "solver", 1)).await;
        assert_eq!(refused.status, 409);
        assert_eq!(refused.code(), "no_tokens");
        assert!(refused.json["error"]["denial"]["no_tokens"].is_object());
        let features = http.get(f1, "/v1/features").await;
        let solver = feature(&features.json, "solver");
        assert_eq!((solver["in_use"].as_u64(), solver["free"].as_u64()), (Some(10), Some(0)));

        // A request that may wait is queued, and listed in the queue.
        let mut body = checkout("waiter", 1, "solver", 1);
        body["wait"] = json!({"priority": 5});
        let queued = http.post(f2, "/v1/checkouts", body).await;
        assert_eq!(queued.status, 200, "{:?}", queued.json);
        assert_eq!(queued.json["status"], "queued");
        let queue = http.get(f1, "/v1/queue?feature=solver").await;
        assert_eq!(queue.json.as_array().unwrap().len(), 1);
        assert_eq!(queue.json[0]["client"], "waiter");

        // A local read answers from the node's own state without a hop; it catches up.
        let mut local = Value::Null;
        for _ in 0..100 {
            local = http.get(f2, "/v1/checkouts?feature=solver&consistency=local").await.json;
            if local.as_array().is_some_and(|l| l.len() == 10) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(local.as_array().map(Vec::len), Some(10), "{local:?}");
        let summary = http.get(f2, "/v1/summary?consistency=local").await;
        assert_eq!(summary.status, 200);
        assert!(summary.json["checkouts"].as_u64().is_some());
        let paged = http.get(f1, "/v1/checkouts?feature=solver&limit=3").await;
        assert_eq!(paged.json.as_array().unwrap().len(), 3);

        cluster.shutdown().await;
    })
    .await;
}

/// One refused request and what it must answer.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: String,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

impl Case {
    fn raw(name: &'static str, path: &str, body: &str, status: u16, code: &'static str) -> Case {
        Case {
            name,
            method: "POST",
            path: path.to_string(),
            content_type: "application/json",
            body: body.to_string(),
            status,
            code,
            field: None,
        }
    }

    fn post(name: &'static str, path: &str, body: Value, status: u16, code: &'static str) -> Case {
        Case::raw(name, path, &body.to_string(), status, code)
    }

    fn get(name: &'static str, path: &str, status: u16, code: &'static str) -> Case {
        Case { method: "GET", content_type: "", ..Case::raw(name, path, "", status, code) }
    }

    fn field(self, field: &'static str) -> Case {
        Case { field: Some(field), ..self }
    }

    fn content_type(self, content_type: &'static str) -> Case {
        Case { content_type, ..self }
    }

    fn method(self, method: &'static str) -> Case {
        Case { method, ..self }
    }
}

fn feature<'a>(features: &'a Value, name: &str) -> &'a Value {
    features.as_array().unwrap().iter().find(|f| f["feature"] == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_code_and_change_nothing() {
    bounded(async {
        let cluster = TestCluster::start(|c| c.max_body_bytes = 4096).await;
        let http = &cluster.http;
        let followers = cluster.followers().await;
        let f = &cluster.addrs[followers[0]];
        let held = http.post(f, "/v1/checkouts", checkout("owner", 1, "solver", 2)).await;
        assert_eq!(held.status, 200);
        let id = held.json["id"].as_u64().unwrap();
        let before = (http.get(f, "/v1/features").await.json, http.get(f, "/v1/checkouts").await.json);

        let release = format!("/v1/checkouts/{id}/release");
        let cases = [
            Case::post("unknown feature", "/v1/checkouts", checkout("x", 1, "nope", 1), 404, "unknown_feature"),
            Case::raw("negative tokens", "/v1/checkouts",
                r#"{"items":[{"feature":"solver","tokens":-1}],"user":"u","host":"h"}"#, 400, "malformed_request")
                .field("items[0].tokens"),
            Case::post("zero tokens", "/v1/checkouts", checkout("x", 1, "solver", 0), 400, "bad_request")
                .field("items[0].demand"),
            Case::post("absurd tokens", "/v1/checkouts", checkout("x", 1, "solver", 1 << 50), 400, "bad_request")
                .field("items[0].demand"),
            Case::raw("cores without a mode", "/v1/checkouts",
                r#"{"items":[{"feature":"dyna","cores":4}],"user":"u","host":"h"}"#, 400, "bad_request")
                .field("items[0].mode"),
            Case::raw("malformed JSON", "/v1/checkouts", r#"{"items": [ "#, 400, "malformed_request"),
            Case::raw("unknown field", "/v1/checkouts",
                r#"{"items":[{"feature":"solver","tokns":1}],"user":"u","host":"h"}"#, 400, "malformed_request")
                .field("items[0].tokns"),
            Case::raw("wrong type", "/v1/checkouts", r#"{"items":[],"user":7,"host":"h"}"#, 400, "malformed_request")
                .field("user"),
            Case::raw("client without seq", "/v1/checkouts",
                r#"{"client":"c","items":[{"feature":"solver","tokens":1}],"user":"u","host":"h"}"#, 400, "bad_request")
                .field("seq"),
            Case::raw("ack above seq", "/v1/checkouts",
                r#"{"client":"c","seq":1,"ack":2,"items":[{"feature":"solver","tokens":1}],"user":"u","host":"h"}"#,
                400, "bad_request")
                .field("ack"),
            Case::raw("oversized body", "/v1/checkouts", &" ".repeat(5000), 413, "body_too_large"),
            Case::post("wrong content type", "/v1/checkouts", checkout("x", 1, "solver", 1), 415, "unsupported_media_type")
                .content_type("text/plain"),
            Case::raw("another client's release", &release, r#"{"client":"thief","seq":1}"#, 403, "not_owner"),
            Case::raw("anonymous release", &release, "", 403, "not_owner").content_type(""),
            Case::raw("unknown checkout", "/v1/checkouts/999999/heartbeat", r#"{"client":"owner","seq":5}"#,
                404, "unknown_checkout"),
            Case::get("checkout id not a number", "/v1/checkouts/abc", 400, "malformed_request").field("id"),
            Case::get("bad query", "/v1/checkouts?limit=many", 400, "malformed_request"),
            Case::get("unknown route", "/v1/nothing", 404, "not_found"),
            Case::get("path not UTF-8", "/v1/checkouts/%FF", 400, "malformed_request"),
            Case::get("wrong method", "/v1/features", 405, "method_not_allowed").method("DELETE"),
        ];
        for case in cases {
            let headers: Vec<(&str, &str)> = match case.content_type {
                "" => vec![],
                ct => vec![("content-type", ct)],
            };
            let reply = http.raw(f, case.method, &case.path, &headers, case.body.clone().into_bytes()).await;
            let name = case.name;
            assert_eq!(reply.status, case.status, "{name}: {:?}", reply.json);
            assert_eq!(reply.code(), case.code, "{name}: {:?}", reply.json);
            assert!(reply.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}");
            if let Some(field) = case.field {
                assert_eq!(reply.json["error"]["field"].as_str(), Some(field), "{name}: {:?}", reply.json);
            }
        }
        let after = (http.get(f, "/v1/features").await.json, http.get(f, "/v1/checkouts").await.json);
        assert_eq!(before, after, "a refused request changed the state");

        // Denials are counted by the node that answered.
        let metrics = http.text(f, "/metrics").await;
        assert!(metrics.contains("lsm_denials_total{code=\"not_owner\"} 2"), "{metrics}");
        assert!(metrics.contains("lsm_denials_total{code=\"unknown_feature\"} 1"), "{metrics}");

        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_health_and_metrics() {
    bounded(async {
        let cluster = TestCluster::start(|c| c.admin_token = "s3cret".into()).await;
        let http = &cluster.http;
        let leader = cluster.leader().await;
        let followers = cluster.followers().await;
        let f = &cluster.addrs[followers[0]];
        let auth = [("content-type", "application/json"), ("authorization", "Bearer s3cret")];

        // Admin routes need the token.
        let denied = http.post(f, "/v1/admin/init", json!({})).await;
        assert_eq!((denied.status, denied.code()), (401, "unauthorized"));
        let wrong = http.raw(f, "GET", "/v1/admin/cluster", &[("authorization", "Bearer nope")], vec![]).await;
        assert_eq!(wrong.status, 401);

        // Init again, on any node: refused, nothing changes.
        for addr in &cluster.addrs {
            let again = http.raw(addr, "POST", "/v1/admin/init", &auth, b"{}".to_vec()).await;
            assert_eq!((again.status, again.code()), (409, "already_initialized"), "{:?}", again.json);
        }
        // The command line's calls read the same answers as typed replies and refusals.
        let remote = Remote::new(f.clone(), Some("s3cret".into()));
        let info = remote.cluster(TEST_TIMEOUT).await.expect("the cluster view");
        assert_eq!((info.role.as_str(), info.members.len()), ("Follower", 3));
        let again = remote.init(&InitBody::default(), TEST_TIMEOUT).await.unwrap_err();
        assert_eq!(again.code(), Some(ErrorCode::AlreadyInitialized), "{again}");
        assert_eq!(remote.healthz(TEST_TIMEOUT).await.expect("healthz").status, "ok");

        // The cluster view is local.
        let view = http.raw(f, "GET", "/v1/admin/cluster", &auth, vec![]).await;
        assert_eq!(view.status, 200);
        assert_eq!(view.json["role"], "Follower");
        assert_eq!(view.json["members"].as_array().unwrap().len(), 3);
        assert_eq!(view.json["leader_addr"].as_str(), Some(cluster.addrs[leader].as_str()));

        // Revoke through a follower.
        let held = http.post(f, "/v1/checkouts", checkout("victim", 1, "solver", 3)).await;
        let id = held.json["id"].as_u64().unwrap();
        let revoked = http
            .raw(f, "POST", &format!("/v1/admin/checkouts/{id}/revoke"), &auth,
                json!({"reason": "maintenance"}).to_string().into_bytes())
            .await;
        assert_eq!(revoked.status, 200, "{:?}", revoked.json);
        assert_eq!(revoked.json, json!({"revoked": id}));
        let beat = http.post(f, &format!("/v1/checkouts/{id}/heartbeat"), json!({"client": "victim", "seq": 2})).await;
        assert_eq!((beat.status, beat.code()), (410, "gone"));

        // A new license through a follower: forwarded, installed.
        let install = json!({"client": "admin", "seq": 1, "install": {"entitlements": [
            {"feature": "solver", "license": "renewal", "tokens_total": 20, "expires_at_ms": 4102444800000u64}
        ]}});
        let installed =
            http.raw(f, "POST", "/v1/admin/license", &auth, install.to_string().into_bytes()).await;
        assert_eq!(installed.status, 200, "{:?}", installed.json);
        assert_eq!(installed.json, json!({"features": 1}));
        let bad = json!({"install": {"entitlements": [
            {"feature": "solver", "license": "x", "tokens_total": 5, "starts_at_ms": 10, "expires_at_ms": 5}
        ]}});
        let refused = http.raw(f, "POST", "/v1/admin/license", &auth, bad.to_string().into_bytes()).await;
        assert_eq!((refused.status, refused.code()), (400, "bad_license"), "{:?}", refused.json);
        let features = http.get(f, "/v1/features").await;
        assert_eq!(features.json.as_array().unwrap().len(), 1);
        assert_eq!(features.json[0]["tokens_total"], 20);

        // Health, readiness and metrics on every node.
        for addr in &cluster.addrs {
            assert_eq!(http.get(addr, "/healthz").await.status, 200);
            let ready = http.get(addr, "/readyz").await;
            assert_eq!(ready.status, 200, "{:?}", ready.json);
            let ready: HealthReply = serde_json::from_value(ready.json).expect("a HealthReply");
            assert_eq!((ready.status.as_str(), ready.leader.is_some()), ("ready", true));
            let metrics = http.text(addr, "/metrics").await;
            for needle in [
                "lsm_feature_tokens_total{feature=\"solver\"} 20",
                "lsm_feature_tokens_used{feature=\"solver\"}",
                "lsm_feature_tokens_free{feature=\"solver\"}",
                "lsm_pool_tokens_used{feature=\"solver\",pool=\"default\"}",
                "lsm_checkouts ",
                "lsm_raft_term ",
                "lsm_raft_leader_id ",
                "lsm_raft_is_leader ",
                "lsm_raft_commit_index ",
                "lsm_raft_applied_index ",
                "lsm_raft_last_log_index ",
                // Clocks in step: no term started clamped, the first one included.
                "lsm_clock_clamped_term_starts 0\n",
                "lsm_clock_skew_ms ",
                "lsm_http_request_duration_seconds_bucket{",
            ] {
                assert!(metrics.contains(needle), "{needle} missing from {metrics}");
            }
            // The dyna feature left the license, so it left the metrics.
            assert!(!metrics.contains("feature=\"dyna\""));
        }

        // A snapshot on a follower.
        let snap = http.raw(f, "POST", "/v1/admin/snapshot", &auth, vec![]).await;
        assert_eq!(snap.status, 200, "{:?}", snap.json);
        let snap: SnapshotReply = serde_json::from_value(snap.json).expect("a SnapshotReply");
        assert!(snap.snapshot_index.is_some_and(|i| i > 0), "{snap:?}");

        // When the leader cannot be reached, a follower answers 502 forward_failed.
        cluster.switches[followers[1]].fail.store(true, Ordering::SeqCst);
        let failed = http.post(&cluster.addrs[followers[1]], "/v1/checkouts", checkout("z", 1, "solver", 1)).await;
        assert_eq!((failed.status, failed.code()), (502, "forward_failed"), "{:?}", failed.json);
        assert_eq!(failed.json["error"]["leader"].as_str(), Some(cluster.addrs[leader].as_str()));

        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_through_the_admin_api() {
    bounded(async {
        let cluster = TestCluster::start(|_| {}).await;
        let http = &cluster.http;
        let followers = cluster.followers().await;
        let f = cluster.addrs[followers[0]].clone();
        let held = http.post(&f, "/v1/checkouts", checkout("c", 1, "solver", 4)).await;
        assert_eq!(held.status, 200);

        // A fourth node, not in anyone's initial peers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peers = std::collections::BTreeMap::from([(4, addr.clone())]);
        let license = cluster.dir.path().join("license.toml");
        let config = common::node_config(4, &peers, cluster.dir.path(), &license);
        let (fourth, _switch, task) = common::serve(config, listener).await;

        // Before it joins, it has no cluster: not ready, and requests say how to fix it.
        let ready = http.get(&addr, "/readyz").await;
        assert_eq!((ready.status, ready.code()), (503, "unavailable"));
        let write = http.post(&addr, "/v1/checkouts", checkout("early", 1, "solver", 1)).await;
        assert_eq!((write.status, write.code()), (503, "unavailable"), "{:?}", write.json);
        assert!(write.json["error"]["message"].as_str().unwrap().contains("init"));

        let added = http.post(&f, "/v1/admin/nodes", json!({"id": 4, "addr": addr})).await;
        assert_eq!(added.status, 200, "{:?}", added.json);
        let members = added.json["members"].as_array().unwrap();
        assert_eq!(members.len(), 4);
        assert!(members.iter().all(|m| m["voter"] == true), "{members:?}");

        // The new node has the state and serves reads, forwarding to the leader.
        let list = http.get(&addr, "/v1/checkouts").await;
        assert_eq!(list.status, 200, "{:?}", list.json);
        assert_eq!(list.json.as_array().unwrap().len(), 1);

        let removed = http.raw(&f, "DELETE", "/v1/admin/nodes/4", &[], vec![]).await;
        assert_eq!(removed.status, 200, "{:?}", removed.json);
        assert_eq!(removed.json["members"].as_array().unwrap().len(), 3);
        let again = http.raw(&f, "DELETE", "/v1/admin/nodes/4", &[], vec![]).await;
        assert_eq!((again.status, again.code()), (409, "membership_refused"));
        let bad = http.post(&f, "/v1/admin/nodes", json!({"id": 0, "addr": "x"})).await;
        assert_eq!((bad.status, bad.code()), (400, "bad_request"));

        task.abort();
        fourth.shutdown().await;
        cluster.shutdown().await;
    })
    .await;
}

/// A TCP relay to `target` on an ephemeral loopback port: its address, and how many
/// connections it has accepted.
async fn relay(target: String) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// Nodes 2 and 3 dial each other and node 1 through relays (their `[dial]` tables); node
/// 1 dials both at a closed port. Peer RPCs and forwarding take the dial addresses: 2 and
/// 3 elect a leader through the relays and keep node 1 up to date, a follower among them
/// forwards through its relay, and node 1, which cannot dial the leader, answers `502
/// forward_failed` naming the leader by its membership address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_and_forwarding_use_the_dial_addresses() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let license = dir.path().join("license.toml");
        std::fs::write(&license, common::LICENSE).unwrap();
        let mut listeners = Vec::new();
        let mut peers = BTreeMap::new();
        for id in 1..=3u64 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            peers.insert(id, listener.local_addr().unwrap().to_string());
            listeners.push(listener);
        }
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let mut relays = Vec::new();
        let mut dials: BTreeMap<u64, BTreeMap<u64, String>> = BTreeMap::new();
        for (from, to) in [(2, 1), (2, 3), (3, 1), (3, 2)] {
            let (addr, accepted) = relay(peers[&to].clone()).await;
            dials.entry(from).or_default().insert(to, addr);
            relays.push(((from, to), accepted));
        }
        dials.insert(1, BTreeMap::from([(2, closed.clone()), (3, closed.clone())]));

        let mut servers = Vec::new();
        let mut tasks = Vec::new();
        for (listener, id) in listeners.into_iter().zip(1..) {
            let mut config = common::node_config(id, &peers, dir.path(), &license);
            config.dial = dials[&id].clone();
            let (server, _switch, task) = common::serve(config, listener).await;
            servers.push(server);
            tasks.push(task);
        }
        let http = common::Http::new();
        let init = http.post(&peers[&2], "/v1/admin/init", json!({})).await;
        assert_eq!(init.status, 200, "init: {:?}", init.json);

        // Node 1 learns the leader and the license from the others' appends.
        let leader = loop {
            let status = servers[0].node().status();
            let features = http.get(&peers[&1], "/v1/features?consistency=local").await;
            if let Some(leader) = status.leader
                && features.json.as_array().is_some_and(|f| !f.is_empty())
            {
                break leader;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_ne!(leader, 1, "node 1 cannot reach anyone to win a vote");
        let follower = if leader == 2 { 3 } else { 2 };

        let through =
            http.post(&peers[&follower], "/v1/checkouts", checkout("d", 1, "solver", 2)).await;
        assert_eq!(through.status, 200, "forwarded through the relay: {:?}", through.json);
        let stuck = http.post(&peers[&1], "/v1/checkouts", checkout("e", 1, "solver", 1)).await;
        assert_eq!((stuck.status, stuck.code()), (502, "forward_failed"), "{:?}", stuck.json);
        assert_eq!(stuck.json["error"]["leader"].as_str(), Some(peers[&leader].as_str()));
        assert!(
            stuck.json["error"]["message"].as_str().unwrap().contains(&closed),
            "the error names the address dialed: {:?}",
            stuck.json
        );
        // The leader's appends and the follower's forwarding went through the relays.
        for link in [(leader, 1), (leader, follower), (follower, leader)] {
            let (_, accepted) = relays.iter().find(|(l, _)| *l == link).unwrap();
            assert!(accepted.load(Ordering::SeqCst) > 0, "nothing went through {link:?}");
        }

        for task in &tasks {
            task.abort();
        }
        for server in &servers {
            server.shutdown().await;
        }
    })
    .await;
}
