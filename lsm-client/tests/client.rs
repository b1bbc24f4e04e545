//! The client library against a fake cluster on loopback: routing, retries with the same
//! envelope, deadlines, acks, leases and the queue.
//!
//! Leases use TTLs under a second; the assertions count renewals and events with generous
//! bounds instead of measuring times, so a slow machine does not make them flaky.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Fake, Role, dead_addr};
use lsm_client::api::{CheckoutBody, ErrorCode, ItemBody, LeaseReply, SnapshotReply, WaitBody};
use lsm_client::transport::{BoxFuture, HyperTransport, Transport, TransportError};
use lsm_client::{CheckoutOptions, Client, ClientConfig, ClientError, LeaseLoss};
use lsm_core::{CheckoutId, Denial};

/// Every test gives up after this long instead of hanging.
const BOUND: Duration = Duration::from_secs(10);

fn config(servers: &[String]) -> ClientConfig {
    let mut config = ClientConfig::new(servers.iter().cloned());
    config.client_id = Some("tester-1".parse().unwrap());
    config.attempt_timeout = Duration::from_secs(2);
    config.deadline = Duration::from_secs(5);
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(100);
    config
}

fn body(tokens: u64, lease_ms: Option<u64>) -> CheckoutBody {
    CheckoutBody {
        client: None,
        seq: None,
        ack: None,
        items: vec![ItemBody::tokens("abaqus".parse().unwrap(), tokens)],
        user: "jane".parse().unwrap(),
        host: "node-1".parse().unwrap(),
        job: None,
        lease_ttl_ms: lease_ms,
        borrow_until_ms: None,
        wait: None,
    }
}

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
}

/// Waits until `check` holds, polling every 20 ms, for at most [`BOUND`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn retries_reuse_the_same_client_and_seq_across_servers() {
    let fake = Fake::start(&[Role::Unavailable, Role::Unavailable, Role::Leader]).await;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let reply = bounded("checkout", client.checkout_once(body(2, None))).await.unwrap();
    assert!(matches!(reply, LeaseReply::Granted(_)), "{reply:?}");

    let seen = fake.seen("/v1/checkouts");
    assert_eq!(seen.iter().map(|s| s.node).collect::<Vec<_>>(), [0, 1, 2], "tried in turn");
    let envelopes: Vec<_> = seen.iter().map(|s| s.envelope()).collect();
    assert!(envelopes.iter().all(|e| *e == envelopes[0]), "one envelope: {envelopes:?}");
    assert_eq!(envelopes[0].0, "tester-1");
    assert_eq!(envelopes[0].1, envelopes[0].2, "nothing else in flight: ack = seq");

    // The node that answered is tried first next time.
    client.heartbeat(CheckoutId(1)).await.unwrap();
    assert_eq!(fake.seen("/v1/checkouts/1/heartbeat")[0].node, 2);
}

#[tokio::test]
async fn a_not_leader_answer_sends_the_client_to_the_leader_it_names() {
    // The leader is not even in the client's list: the hint alone leads there.
    let fake = Fake::start(&[Role::Follower, Role::Leader]).await;
    let client = Client::new(config(&fake.addrs[..1])).unwrap();
    bounded("checkout", client.checkout_once(body(1, None))).await.unwrap();
    assert_eq!(client.leader().as_deref(), Some(fake.addrs[1].as_str()));
    for _ in 0..3 {
        client.heartbeat(CheckoutId(1)).await.unwrap();
    }
    let nodes: Vec<usize> = fake.seen("/v1/").iter().map(|s| s.node).collect();
    assert_eq!(nodes, [0, 1, 1, 1, 1], "one hop through the follower, then straight to the leader");
}

#[tokio::test]
async fn a_server_refusing_connections_is_skipped() {
    let fake = Fake::start(&[Role::Leader]).await;
    let servers = vec![dead_addr(), fake.addrs[0].clone()];
    let client = Client::new(config(&servers)).unwrap();
    let started = Instant::now();
    bounded("checkout", client.checkout_once(body(1, None))).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "no long wait on the dead server");
    assert_eq!(fake.seen("/v1/checkouts").len(), 1);
}

#[tokio::test]
async fn the_deadline_ends_an_operation_that_only_meets_retryable_errors() {
    let fake = Fake::start(&[Role::Unavailable, Role::Follower]).await;
    let mut config = config(&fake.addrs);
    config.deadline = Duration::from_millis(400);
    let client = Client::new(config).unwrap();
    let started = Instant::now();
    let error = bounded("checkout", client.checkout_once(body(1, None))).await.unwrap_err();
    let elapsed = started.elapsed();
    let ClientError::Unavailable { attempts, last } = &error else { panic!("{error}") };
    assert!(*attempts >= 4, "kept trying: {attempts}");
    assert!(last.contains("not the leader") || last.contains("starting up"), "{last}");
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    let seqs: Vec<u64> = fake.seen("/v1/checkouts").iter().map(|s| s.envelope().1).collect();
    assert!(seqs.iter().all(|s| *s == seqs[0]), "{seqs:?}");
}

#[tokio::test]
async fn refusals_are_returned_at_once_with_their_code_and_denial() {
    let fake = Fake::start(&[Role::Leader]).await;
    let denial = Denial::NoTokens {
        feature: "abaqus".parse().unwrap(),
        pool: "default".parse().unwrap(),
        available: 1,
        requested: 5,
    };
    fake.lock().refuse_checkouts = Some(denial.clone());
    let client = Client::new(config(&fake.addrs)).unwrap();
    let error = client.checkout_once(body(5, None)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NoTokens));
    assert_eq!(error.denial(), Some(&denial));
    assert!(error.to_string().starts_with("refused (no_tokens, HTTP 409)"), "{error}");
    assert_eq!(fake.seen("/v1/checkouts").len(), 1, "not retried");
}

#[tokio::test]
async fn ack_is_the_lowest_request_still_waiting_for_its_reply() {
    let fake = Fake::start(&[Role::Leader]).await;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let LeaseReply::Granted(first) = client.checkout_once(body(1, None)).await.unwrap() else {
        panic!()
    };
    let LeaseReply::Granted(second) = client.checkout_once(body(1, None)).await.unwrap() else {
        panic!()
    };
    let (_, seq1, ack1) = fake.seen("/v1/checkouts")[0].envelope();
    let (_, seq2, ack2) = fake.seen("/v1/checkouts")[1].envelope();
    assert_eq!((seq2, ack1, ack2), (seq1 + 1, seq1, seq2), "acks advance as replies arrive");

    // A slow heartbeat stays in flight while a release goes out: the release acks only
    // up to the heartbeat.
    fake.lock()
        .delays
        .push((format!("/v1/checkouts/{}/heartbeat", first.id), Duration::from_millis(500)));
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.heartbeat(first.id).await }
    });
    eventually("the heartbeat arrives", || !fake.seen("/v1/checkouts/1/heartbeat").is_empty())
        .await;
    client.release(second.id).await.unwrap();
    bounded("slow heartbeat", slow).await.unwrap().unwrap();
    client.release(first.id).await.unwrap();

    let (_, hb_seq, hb_ack) = fake.seen("/v1/checkouts/1/heartbeat")[0].envelope();
    let (_, rel_seq, rel_ack) = fake.seen("/v1/checkouts/2/release")[0].envelope();
    let (_, last_seq, last_ack) = fake.seen("/v1/checkouts/1/release")[0].envelope();
    assert_eq!((hb_seq, hb_ack), (seq2 + 1, seq2 + 1));
    assert_eq!((rel_seq, rel_ack), (hb_seq + 1, hb_seq), "held back by the slow heartbeat");
    assert_eq!((last_seq, last_ack), (rel_seq + 1, rel_seq + 1), "everything answered");
}

/// Performs the first exchange, then reports it failed, as if the reply was lost.
struct LoseFirstReply {
    inner: HyperTransport,
    lost: Mutex<bool>,
}

impl Transport for LoseFirstReply {
    fn send(
        &self,
        addr: &str,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, TransportError>> {
        let exchange = self.inner.send(addr, request, timeout);
        let lose = !std::mem::replace(&mut *self.lost.lock().unwrap(), true);
        let addr = addr.to_string();
        Box::pin(async move {
            let response = exchange.await?;
            if lose {
                return Err(TransportError::Io { addr, reason: "connection reset (test)".into() });
            }
            Ok(response)
        })
    }
}

#[tokio::test]
async fn a_lost_reply_is_retried_with_the_same_seq_and_checks_out_once() {
    let fake = Fake::start(&[Role::Leader]).await;
    let transport = LoseFirstReply {
        inner: HyperTransport::tcp(Duration::from_secs(1)),
        lost: Mutex::new(false),
    };
    let client = Client::with_transport(config(&fake.addrs), Arc::new(transport)).unwrap();
    let reply = bounded("checkout", client.checkout_once(body(3, None))).await.unwrap();
    let LeaseReply::Granted(grant) = reply else { panic!("{reply:?}") };

    let seen = fake.seen("/v1/checkouts");
    assert_eq!(seen.len(), 2, "sent twice");
    assert_eq!(seen[0].envelope(), seen[1].envelope(), "with the same envelope");
    assert_eq!(fake.lock().checkouts.len(), 1, "checked out once");
    assert_eq!(grant.id, CheckoutId(1));
}

#[tokio::test]
async fn a_lease_renews_itself_and_releases_on_request() {
    let fake = Fake::start(&[Role::Leader, Role::Follower]).await;
    fake.lock().lease_ttl_ms = 600;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let lease = bounded("checkout", client.checkout(body(2, Some(600)))).await.unwrap();
    let id = lease.id();
    eventually("three renewals", || fake.checkout(id).renewals >= 3).await;
    assert!(lease.status().renewals >= 2, "the lease saw its renewals");
    assert!(lease.loss().is_none());
    assert!(lease.expires_at_ms() > 0);

    lease.release().await.unwrap();
    assert!(fake.checkout(id).released);
    let renewals = fake.checkout(id).renewals;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.checkout(id).renewals, renewals, "no renewals after the release");
}

#[tokio::test]
async fn a_lease_learns_the_servers_default_ttl() {
    let fake = Fake::start(&[Role::Leader]).await;
    fake.lock().lease_ttl_ms = 600;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let lease = bounded("checkout", client.checkout(body(2, None))).await.unwrap();
    eventually("renewals at a third of 600 ms", || fake.checkout(lease.id()).renewals >= 3).await;
    assert_eq!(fake.seen("/v1/checkouts/1").iter().filter(|s| s.method == "GET").count(), 1);
}

#[tokio::test]
async fn a_revoked_lease_reports_revoked_with_the_reason() {
    let fake = Fake::start(&[Role::Leader]).await;
    fake.lock().lease_ttl_ms = 600;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let mut lease = bounded("checkout", client.checkout(body(2, Some(600)))).await.unwrap();
    let reply = client.revoke(lease.id(), "maintenance").await.unwrap();
    assert_eq!(reply.revoked, lease.id());
    let loss = bounded("loss", lease.lost()).await;
    assert_eq!(loss, LeaseLoss::Revoked { reason: "maintenance".into() });
    assert_eq!(lease.loss(), Some(loss), "lost() and loss() agree");
    drop(lease);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(fake.seen("/v1/checkouts/1/release").is_empty(), "a revoked lease is not released");
}

#[tokio::test]
async fn a_lease_reports_unreachable_when_no_server_answers() {
    let fake = Fake::start(&[Role::Leader, Role::Follower]).await;
    fake.lock().lease_ttl_ms = 900;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let mut lease = bounded("checkout", client.checkout(body(2, Some(900)))).await.unwrap();
    eventually("a renewal", || fake.checkout(lease.id()).renewals >= 1).await;
    fake.set_all(Role::Unavailable);
    let silenced = Instant::now();
    let loss = bounded("loss", lease.lost()).await;
    assert_eq!(loss, LeaseLoss::Unreachable);
    // The margin for 900 ms is 225 ms: the loss comes before the lease could end.
    assert!(silenced.elapsed() < Duration::from_millis(900), "{:?}", silenced.elapsed());
    let attempts = fake.seen("/v1/checkouts/1/heartbeat").len();
    assert!(attempts >= 3, "renewals were retried: {attempts}");
}

#[tokio::test]
async fn dropping_a_lease_releases_it() {
    let fake = Fake::start(&[Role::Leader]).await;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let lease = bounded("checkout", client.checkout(body(2, Some(30_000)))).await.unwrap();
    let id = lease.id();
    drop(lease);
    eventually("released", || fake.checkout(id).released).await;
}

#[tokio::test]
async fn a_detached_lease_is_neither_renewed_nor_released() {
    let fake = Fake::start(&[Role::Leader]).await;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let lease = bounded("checkout", client.checkout(body(2, Some(600)))).await.unwrap();
    let id = lease.id();
    let grant = lease.detach();
    assert_eq!(grant.id, id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = fake.checkout(id);
    assert_eq!((c.renewals, c.released), (0, false));
}

fn waiting(poll_ttl_ms: u64) -> CheckoutBody {
    CheckoutBody {
        wait: Some(WaitBody { priority: 0, poll_ttl_ms: Some(poll_ttl_ms) }),
        ..body(4, Some(600))
    }
}

#[tokio::test]
async fn a_queued_checkout_polls_reports_positions_and_returns_a_lease() {
    let fake = Fake::start(&[Role::Leader]).await;
    fake.lock().queue_polls = 3;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let positions = Arc::new(Mutex::new(Vec::new()));
    let seen = positions.clone();
    let options = CheckoutOptions {
        on_queued: Some(Box::new(move |q| seen.lock().unwrap().push(q.position))),
        wait_timeout: Some(BOUND),
    };
    let lease =
        bounded("queued checkout", client.checkout_with(waiting(300), options)).await.unwrap();
    assert_eq!(*positions.lock().unwrap(), [3, 2, 1]);
    assert_eq!(lease.id(), CheckoutId(1));
    eventually("the granted lease renews", || fake.checkout(lease.id()).renewals >= 1).await;
    assert!(!fake.checkout(lease.id()).released);
}

#[tokio::test]
async fn a_wait_timeout_withdraws_the_queued_request() {
    let fake = Fake::start(&[Role::Leader]).await;
    fake.lock().queue_polls = 1_000;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let options =
        CheckoutOptions { on_queued: None, wait_timeout: Some(Duration::from_millis(400)) };
    let error =
        bounded("queued checkout", client.checkout_with(waiting(300), options)).await.unwrap_err();
    let ClientError::WaitTimedOut { id, position, .. } = error else { panic!("{error}") };
    assert_eq!(id, CheckoutId(1));
    assert!(position > 900, "{position}");
    assert!(fake.checkout(id).released, "withdrawn before returning");
    assert!(!fake.seen("/v1/checkouts/1/heartbeat").is_empty(), "polled while waiting");
}

#[tokio::test]
async fn dropping_a_waiting_checkout_withdraws_it() {
    let fake = Fake::start(&[Role::Leader]).await;
    fake.lock().queue_polls = 1_000;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let wait = client.checkout_with(waiting(300), CheckoutOptions::default());
    assert!(tokio::time::timeout(Duration::from_millis(300), wait).await.is_err(), "still waiting");
    eventually("withdrawn", || fake.checkout(CheckoutId(1)).released).await;
}

#[test]
fn futures_and_guards_can_move_between_threads() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
    send_sync::<ClientError>();
    let client = Client::new(config(&["127.0.0.1:1".to_string()])).unwrap();
    send(&client.checkout_with(body(1, None), CheckoutOptions::default()));
    send(&client.checkout_once(body(1, None)));
    send(&client.heartbeat(CheckoutId(1)));
    fn lease_is_send(lease: lsm_client::Lease) -> impl Send {
        lease
    }
    let _ = lease_is_send;
}

#[tokio::test]
async fn admin_routes_carry_the_admin_token_and_reads_do_not() {
    let fake = Fake::start(&[Role::Leader]).await;
    let mut config = config(&fake.addrs);
    config.admin_token = Some("s3cret".into());
    let client = Client::new(config).unwrap();
    client.cluster().await.unwrap();
    client.features(Default::default()).await.unwrap();
    let info = client.cluster_of(&fake.addrs[0]).await.unwrap();
    assert_eq!(info.node, 1);
    let seen = fake.seen("/v1/");
    assert_eq!(seen[0].auth.as_deref(), Some("Bearer s3cret"));
    assert_eq!(seen[1].auth, None);
    assert!(matches!(
        client.cluster_of(&dead_addr()).await,
        Err(ClientError::Unavailable { attempts: 1, .. })
    ));
}

#[tokio::test]
async fn admin_calls_answer_the_routes_reply_types() {
    let fake = Fake::start(&[Role::Leader]).await;
    let client = Client::new(config(&fake.addrs)).unwrap();
    let snapshot = client.snapshot().await.unwrap();
    assert_eq!(snapshot, SnapshotReply { node: 1, snapshot_index: Some(5) });
    let info = client.remove_node(2).await.unwrap();
    assert_eq!((info.node, info.members.len(), info.members[0].voter), (1, 1, true));
    assert_eq!(fake.seen("/v1/admin/nodes/2").len(), 1);
}

/// Answers every exchange at once, without a network: `not_leader` from a live node, or
/// a refused connection, and counts the exchanges.
struct Scripted {
    electing: bool,
    exchanges: Mutex<u32>,
}

impl Transport for Scripted {
    fn send(
        &self,
        addr: &str,
        _request: http::Request<Bytes>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, TransportError>> {
        *self.exchanges.lock().unwrap() += 1;
        let addr = addr.to_string();
        let electing = self.electing;
        Box::pin(async move {
            if !electing {
                return Err(TransportError::Connect { addr, reason: "refused (test)".into() });
            }
            let body = r#"{"error":{"code":"not_leader","message":"an election is running"}}"#;
            Ok(http::Response::builder().status(503).body(Bytes::from(body)).unwrap())
        })
    }
}

/// Exchanges in a failed 10 s operation with a 10 s backoff cap, on paused time.
async fn exchanges_until_the_deadline(electing: bool) -> u32 {
    let transport = Arc::new(Scripted { electing, exchanges: Mutex::new(0) });
    let mut config = config(&["n1:1".to_string(), "n2:1".to_string()]);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_secs(10);
    config.deadline = Duration::from_secs(10);
    let client = Client::with_transport(config, transport.clone()).unwrap();
    let error = client.checkout_once(body(1, None)).await.unwrap_err();
    assert!(matches!(error, ClientError::Unavailable { .. }), "{error}");
    *transport.exchanges.lock().unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_stay_frequent_while_an_election_runs_and_back_off_when_nodes_are_down() {
    // Live nodes saying the leader is changing: rounds at most 250 ms apart, so at least
    // 10 s / 250 ms = 40 rounds of two exchanges.
    let electing = exchanges_until_the_deadline(true).await;
    assert!(electing >= 80, "{electing} exchanges while electing");
    // Nodes that cannot be reached: the backoff doubles to the 10 s cap (50, 100, ...
    // 6.4 s at most 12.7 s in all), so no more than 9 rounds.
    let down = exchanges_until_the_deadline(false).await;
    assert!(down <= 18, "{down} exchanges while the nodes are down");
}
