//! End-to-end: three real `lsm-server` processes on loopback, driven over HTTP and with the
//! `lsm` CLI. Each test starts its own cluster in a temporary directory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lsm_client::api::{self, ItemBody};
use lsm_core::{CheckoutId, FeatureStatus};
use lsm_tests::{ProcCluster, SETTLE, binary, cluster_slot, post_head_only};
use serde_json::{Value, json};

/// A checkout body for `tokens` tokens of `feature`, with an explicit envelope.
fn checkout(client: &str, seq: u64, feature: &str, tokens: u64) -> Value {
    json!({
        "client": client, "seq": seq,
        "items": [ItemBody::tokens(feature.parse().unwrap(), tokens)],
        "user": "jane", "host": "node-1", "lease_ttl_ms": 30_000,
    })
}

fn envelope(client: &str, seq: u64) -> Value {
    json!({ "client": client, "seq": seq })
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

fn checkout_id(body: &Value) -> CheckoutId {
    CheckoutId(body["id"].as_u64().unwrap_or_else(|| panic!("no id in {body}")))
}

/// Tokens of `feature` in use as node `id` reads them (linearizably).
async fn in_use(cluster: &ProcCluster, id: u64, feature: &str) -> u64 {
    let features: Vec<FeatureStatus> = cluster.read(id, api::path::FEATURES).await;
    let status = features.iter().find(|f| f.feature.as_str() == feature);
    status.unwrap_or_else(|| panic!("no feature {feature}")).in_use
}

fn followers(cluster: &ProcCluster, leader: u64) -> Vec<u64> {
    cluster.live().into_iter().filter(|&id| id != leader).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_through_a_follower_then_renew_and_release_through_any_node() {
    let _slot = cluster_slot().await;
    let cluster = ProcCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let [a, b] = followers(&cluster, leader)[..] else { panic!("two followers") };

    let (status, granted) =
        cluster.post(a, api::path::CHECKOUTS, &checkout("c1", 1, "abaqus", 3)).await;
    assert_eq!(status, 200, "{granted}");
    assert_eq!(granted["status"], "granted");
    let id = checkout_id(&granted);
    for node in [a, b, leader] {
        assert_eq!(in_use(&cluster, node, "abaqus").await, 3, "as node {node} reads it");
    }

    for (seq, node) in [(2, b), (3, leader), (4, a)] {
        let (status, renewed) =
            cluster.post(node, &api::path::heartbeat(id), &envelope("c1", seq)).await;
        assert_eq!(status, 200, "heartbeat through node {node}: {renewed}");
        assert_eq!(renewed["status"], "renewed");
        assert_eq!(checkout_id(&renewed), id);
    }

    let (status, released) = cluster.post(b, &api::path::release(id), &envelope("c1", 5)).await;
    assert_eq!(status, 200, "{released}");
    assert_eq!(released["status"], "released");
    for node in [a, b, leader] {
        assert_eq!(in_use(&cluster, node, "abaqus").await, 0, "as node {node} reads it");
    }
    // A second release of the same checkout (a new request, not a retry) says it is gone.
    let (status, gone) = cluster.post(a, &api::path::release(id), &envelope("c1", 6)).await;
    assert_eq!((status, code(&gone)), (410, "gone"), "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_can_be_checked_out_through_any_single_node() {
    let _slot = cluster_slot().await;
    let cluster = ProcCluster::start(3).await;
    for node in cluster.live() {
        let client = format!("only-via-{node}");
        let mut ids = Vec::new();
        for seq in 1..=10 {
            let (status, body) = cluster
                .post(node, api::path::CHECKOUTS, &checkout(&client, seq, "abaqus", 1))
                .await;
            assert_eq!(status, 200, "token {seq} through node {node}: {body}");
            ids.push(checkout_id(&body));
        }
        assert_eq!(in_use(&cluster, node, "abaqus").await, 10);
        let (status, body) =
            cluster.post(node, api::path::CHECKOUTS, &checkout(&client, 11, "abaqus", 1)).await;
        assert_eq!((status, code(&body)), (409, "no_tokens"), "the 11th token: {body}");
        for (seq, id) in (12..).zip(ids) {
            let (status, body) =
                cluster.post(node, &api::path::release(id), &envelope(&client, seq)).await;
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(in_use(&cluster, node, "abaqus").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_reply_gets_the_same_checkout() {
    let _slot = cluster_slot().await;
    let cluster = ProcCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = followers(&cluster, leader)[0];

    // The first attempt commits; its reply is lost on the way back (the client never
    // looks at it). The client retries the same request, with the same envelope, on
    // another node.
    let body = checkout("retrier", 1, "abaqus", 4);
    let (status, _lost) = cluster.post(follower, api::path::CHECKOUTS, &body).await;
    assert_eq!(status, 200);
    let (status, retried) = cluster.post(leader, api::path::CHECKOUTS, &body).await;
    assert_eq!(status, 200, "{retried}");
    let (status, again) = cluster.post(follower, api::path::CHECKOUTS, &body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(retried, again, "every retry gets the same answer");
    assert_eq!(retried, _lost, "the retry's answer is the lost one");

    let listed: Vec<lsm_core::Checkout> =
        cluster.read(leader, "/v1/checkouts?client=retrier").await;
    assert_eq!(listed.len(), 1, "exactly one checkout: {listed:?}");
    assert_eq!(listed[0].id, checkout_id(&retried));
    assert_eq!(in_use(&cluster, follower, "abaqus").await, 4, "the tokens are counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx_errors_and_change_nothing() {
    let _slot = cluster_slot().await;
    let cluster = ProcCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let node = followers(&cluster, leader)[0];
    let (status, held) =
        cluster.post(node, api::path::CHECKOUTS, &checkout("owner", 1, "abaqus", 2)).await;
    assert_eq!(status, 200, "{held}");
    let held = checkout_id(&held);

    let view = async || {
        let (_, features) = cluster.get(leader, api::path::FEATURES).await;
        let (_, checkouts) = cluster.get(leader, api::path::CHECKOUTS).await;
        (features, checkouts)
    };
    let before = view().await;

    let mut cases: Vec<(&str, u16, &str, (u16, Value))> = Vec::new();
    let post = async |body: Value| cluster.post(node, api::path::CHECKOUTS, &body).await;
    cases.push((
        "unknown feature",
        404,
        "unknown_feature",
        post(checkout("c", 1, "nosuch", 1)).await,
    ));
    cases.push(("zero tokens", 400, "bad_request", post(checkout("c", 2, "abaqus", 0)).await));
    cases.push((
        "absurd tokens",
        400,
        "bad_request",
        post(checkout("c", 3, "abaqus", 1 << 50)).await,
    ));
    let mut negative = checkout("c", 4, "abaqus", 1);
    negative["items"][0]["tokens"] = json!(-1);
    cases.push(("negative tokens", 400, "malformed_request", post(negative).await));
    let malformed = cluster
        .post_raw(node, api::path::CHECKOUTS, "application/json", b"{\"items\": [".to_vec())
        .await;
    cases.push(("malformed JSON", 400, "malformed_request", malformed));
    // A body declared just over the default 1 MiB limit is refused by its length, before
    // any of it is read. Only the head is sent: a client still writing the body when the
    // server closes the connection may see a reset instead of the answer.
    let oversized = post_head_only(cluster.addr(node), api::path::CHECKOUTS, 1024 * 1024 + 1);
    let oversized = oversized.await.unwrap_or_else(|e| panic!("POST an oversized body: {e}"));
    cases.push(("oversized body", 413, "body_too_large", oversized));
    let thief = cluster.post(node, &api::path::release(held), &envelope("thief", 1)).await;
    cases.push(("another client's release", 403, "not_owner", thief));

    for (what, status, expected, (got, body)) in &cases {
        assert_eq!((*got, code(body)), (*status, *expected), "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: the error says nothing: {body}");
    }
    let negative_message = cases[3].3.1["error"]["message"].as_str().unwrap().to_string();
    assert!(negative_message.contains("items[0].tokens"), "names the field: {negative_message}");
    assert_eq!(view().await, before, "a bad request changed the state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_old_leader_listed_first_is_served_and_not_stale() {
    let _slot = cluster_slot().await;
    let mut cluster = ProcCluster::start(3).await;
    let old = cluster.wait_for_leader().await;
    let (status, before) =
        cluster.post(old, api::path::CHECKOUTS, &checkout("early", 1, "abaqus", 1)).await;
    assert_eq!(status, 200, "{before}");

    cluster.kill(old);
    let new = cluster.wait_for_leader().await;
    assert_ne!(new, old);
    let (status, during) =
        cluster.post(new, api::path::CHECKOUTS, &checkout("during", 1, "abaqus", 2)).await;
    assert_eq!(status, 200, "{during}");

    cluster.restart(old).await;
    // The old leader answers at once, before or after it has caught up: a linearizable read
    // through it must already show the checkout made while it was down.
    assert_eq!(in_use(&cluster, old, "abaqus").await, 3);
    let (status, after) =
        cluster.post(old, api::path::CHECKOUTS, &checkout("after", 1, "abaqus", 3)).await;
    assert_eq!(status, 200, "a client listing the old leader first is served: {after}");
    let (status, renewed) = cluster
        .post(old, &api::path::heartbeat(checkout_id(&during)), &envelope("during", 2))
        .await;
    assert_eq!(status, 200, "{renewed}");
    for node in cluster.live() {
        assert_eq!(in_use(&cluster, node, "abaqus").await, 6, "as node {node} reads it");
    }
}

/// Runs `lsm run` holding 2 tokens of `abaqus` with a 3 s lease, kills the leader with
/// SIGKILL, and checks that the command keeps running, its lease is renewed on the new
/// leader and its tokens stay counted; when the command exits, `lsm run` exits with its
/// status and the tokens are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lsm_run_keeps_its_tokens_when_the_leader_is_killed() {
    let _slot = cluster_slot().await;
    let mut cluster = ProcCluster::start(3).await;
    let done = cluster.dir().join("done");
    let script = format!("while [ ! -e {done:?} ]; do sleep 0.1; done; exit 7");
    let mut run = Command::new(binary("lsm"))
        .arg("--servers")
        .arg(cluster.addrs().join(","))
        .args(["run", "--feature", "abaqus", "--tokens", "2", "--lease", "3s", "--"])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lsm run");

    // Wait for the grant line on stderr, then keep draining stderr in the background.
    let stderr = run.stderr.take().expect("piped stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let id = loop {
        let line = lines_rx.recv_timeout(SETTLE).expect("lsm run reports its checkout");
        if let Some(rest) = line.split("checked out #").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            break CheckoutId(digits.parse().expect("a checkout id"));
        }
        assert!(started.elapsed() < SETTLE, "no checkout line from lsm run");
    };

    let leader = cluster.wait_for_leader().await;
    assert_eq!(in_use(&cluster, leader, "abaqus").await, 2);
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);

    // Two full lease lengths after the kill: without renewals through the new leader the
    // lease would have expired by now.
    let expires_after_kill = lease_expiry(&cluster, new_leader, id).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(run.try_wait().expect("poll lsm run").is_none(), "lsm run stopped early");
    let expires_later = lease_expiry(&cluster, new_leader, id).await;
    assert!(expires_later > expires_after_kill, "the lease was renewed on the new leader");
    for node in cluster.live() {
        assert_eq!(in_use(&cluster, node, "abaqus").await, 2, "as node {node} reads it");
    }

    std::fs::write(&done, b"").expect("let the command finish");
    let status = wait_exit(&mut run, SETTLE).expect("lsm run exits after its command");
    assert_eq!(status.code(), Some(7), "lsm run exits with the command's status");
    for node in cluster.live() {
        assert_eq!(in_use(&cluster, node, "abaqus").await, 0, "released, as node {node} reads it");
    }
    let rest: Vec<String> = lines_rx.try_iter().collect();
    assert!(!rest.iter().any(|l| l.contains("lease lost")), "no lease loss reported: {rest:?}");
}

/// The lease expiry of live checkout `id`, as node `node` reads it.
async fn lease_expiry(cluster: &ProcCluster, node: u64, id: CheckoutId) -> u64 {
    let (status, body) = cluster.get(node, &api::path::checkout(id)).await;
    assert_eq!(status, 200, "{body}");
    body["live"]["lease_expires_at_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("checkout {id} is not live: {body}"))
}

fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}
