//! A fake lsm cluster for the client's tests: axum servers on 127.0.0.1:0 that implement
//! just enough of the API contract (`lsm_client::api`) and record every request.
//!
//! All nodes share one state. A node's [`Role`] says how it answers: as the leader (with
//! exactly-once replies per `(client, seq)`), as a follower that refuses with
//! `503 not_leader` naming the leader in `lsm-leader`, or as a node that answers
//! `503 unavailable` to everything.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use lsm_client::api::{self, ErrorBody, ErrorCode, ErrorDetail, LeaseReply, ReleaseReply};
use lsm_core::{Checkout, CheckoutId, CheckoutStatus, Denial, Grant, GrantedItem, Queued};
use serde_json::{Value, json};

/// How a node answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serves everything.
    Leader,
    /// `503 not_leader` with the leader's address.
    Follower,
    /// `503 unavailable` to everything.
    Unavailable,
}

/// One request a node received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The node's index.
    pub node: usize,
    /// The method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// The JSON body (`Null` when empty).
    pub body: Value,
    /// The `authorization` header.
    pub auth: Option<String>,
}

impl Seen {
    /// The envelope's `(client, seq, ack)`.
    pub fn envelope(&self) -> (String, u64, u64) {
        let client = self.body["client"].as_str().expect("client").to_string();
        (client, self.body["seq"].as_u64().expect("seq"), self.body["ack"].as_u64().expect("ack"))
    }
}

/// A checkout in the fake.
#[derive(Clone, Debug)]
pub struct FakeCheckout {
    /// The owner.
    pub client: String,
    /// Polls left before a queued request is granted; 0 once granted.
    pub polls_left: u64,
    /// Revoked with this reason.
    pub revoked: Option<String>,
    /// Released or withdrawn.
    pub released: bool,
    /// Heartbeats that renewed it.
    pub renewals: u64,
    /// Its items.
    pub items: Vec<GrantedItem>,
}

/// The shared state of the fake cluster.
#[derive(Debug)]
pub struct FakeState {
    /// Every request, in arrival order.
    pub seen: Vec<Seen>,
    /// Each node's role.
    pub roles: Vec<Role>,
    /// Each node's address.
    pub addrs: Vec<String>,
    /// Kept replies per `(client, seq)`.
    pub replies: HashMap<(String, u64), (StatusCode, Value)>,
    /// Checkouts by id.
    pub checkouts: BTreeMap<u64, FakeCheckout>,
    /// The next id.
    pub next_id: u64,
    /// Lease TTL of every grant.
    pub lease_ttl_ms: u64,
    /// A checkout that asks to wait is queued for this many polls (0: granted at once).
    pub queue_polls: u64,
    /// Requests to paths starting with this are answered only after the delay.
    pub delays: Vec<(String, Duration)>,
    /// Refuse every checkout with this denial.
    pub refuse_checkouts: Option<Denial>,
    /// Node index to name as leader in follower refusals, instead of the first leader.
    pub leader_hint: Option<String>,
}

/// The fake cluster.
pub struct Fake {
    /// Shared state; lock it to inspect or change.
    pub state: Arc<Mutex<FakeState>>,
    /// Node addresses.
    pub addrs: Vec<String>,
}

impl Fake {
    /// Starts one node per role.
    pub async fn start(roles: &[Role]) -> Fake {
        let mut listeners = Vec::new();
        for _ in roles {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let addrs: Vec<String> =
            listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
        let state = Arc::new(Mutex::new(FakeState {
            seen: Vec::new(),
            roles: roles.to_vec(),
            addrs: addrs.clone(),
            replies: HashMap::new(),
            checkouts: BTreeMap::new(),
            next_id: 1,
            lease_ttl_ms: 30_000,
            queue_polls: 0,
            delays: Vec::new(),
            refuse_checkouts: None,
            leader_hint: None,
        }));
        for (node, listener) in listeners.into_iter().enumerate() {
            let app = Router::new().fallback(handle).with_state((node, state.clone()));
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
        Fake { state, addrs }
    }

    /// Locks the state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake state")
    }

    /// Every request seen whose path starts with `prefix`.
    pub fn seen(&self, prefix: &str) -> Vec<Seen> {
        self.lock().seen.iter().filter(|s| s.path.starts_with(prefix)).cloned().collect()
    }

    /// Sets every node's role.
    pub fn set_all(&self, role: Role) {
        self.lock().roles.iter_mut().for_each(|r| *r = role);
    }

    /// The checkout with `id`.
    pub fn checkout(&self, id: CheckoutId) -> FakeCheckout {
        self.lock().checkouts[&id.0].clone()
    }
}

/// A free loopback address nothing listens on (connections are refused).
pub fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

type Ctx = (usize, Arc<Mutex<FakeState>>);

async fn handle(
    State((node, state)): State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.to_string());
    let body: Value =
        if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    let auth = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_string());
    let delay = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            node,
            method: method.clone(),
            path: path.clone(),
            body: body.clone(),
            auth,
        });
        s.delays.iter().find(|(p, _)| path.starts_with(p.as_str())).map(|(_, d)| *d)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().unwrap();
    let leader_addr = s
        .leader_hint
        .clone()
        .or_else(|| s.roles.iter().position(|r| *r == Role::Leader).map(|i| s.addrs[i].clone()));
    let mut response = match s.roles[node] {
        Role::Unavailable => error(ErrorCode::Unavailable, "starting up", None),
        Role::Follower => {
            let mut response = error(ErrorCode::NotLeader, "not the leader", None);
            if let Some(leader) = &leader_addr {
                response.headers_mut().insert(api::LEADER_HEADER, leader.parse().unwrap());
            }
            response
        }
        Role::Leader => serve(&mut s, &method, &path, &body),
    };
    response.headers_mut().insert(api::NODE_HEADER, node.to_string().parse().unwrap());
    response
}

fn error(code: ErrorCode, message: &str, denial: Option<Denial>) -> Response {
    let detail = ErrorDetail { code, message: message.into(), field: None, denial, leader: None };
    let status = StatusCode::from_u16(code.status()).unwrap();
    (status, axum::Json(ErrorBody { error: detail })).into_response()
}

fn json_response(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

/// The leader's logic, with exactly-once replies for writes.
fn serve(s: &mut FakeState, method: &Method, path: &str, body: &Value) -> Response {
    let key = body["client"].as_str().zip(body["seq"].as_u64()).map(|(c, q)| (c.to_string(), q));
    if *method == Method::POST
        && let Some(key) = &key
        && let Some((status, value)) = s.replies.get(key)
    {
        return json_response(*status, value.clone());
    }
    let (status, value) = apply(s, method, path, body);
    if *method == Method::POST
        && let Some(key) = key
    {
        s.replies.insert(key, (status, value.clone()));
    }
    json_response(status, value)
}

fn refusal(code: ErrorCode, denial: Denial) -> (StatusCode, Value) {
    let detail = ErrorDetail {
        code,
        message: denial.to_string(),
        field: None,
        denial: Some(denial),
        leader: None,
    };
    (
        StatusCode::from_u16(code.status()).unwrap(),
        serde_json::to_value(ErrorBody { error: detail }).unwrap(),
    )
}

fn grant_of(s: &FakeState, id: u64) -> Grant {
    Grant {
        id: CheckoutId(id),
        fence: id,
        items: s.checkouts[&id].items.clone().into(),
        lease_expires_at_ms: now_ms() + s.lease_ttl_ms,
        borrowed: false,
    }
}

fn ok(value: impl serde::Serialize) -> (StatusCode, Value) {
    (StatusCode::OK, serde_json::to_value(value).unwrap())
}

fn apply(s: &mut FakeState, method: &Method, path: &str, body: &Value) -> (StatusCode, Value) {
    let segments: Vec<&str> =
        path.split('?').next().unwrap().trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "checkouts"]) => {
            if let Some(denial) = s.refuse_checkouts.clone() {
                return refusal(ErrorCode::of_denial(&denial), denial);
            }
            let id = s.next_id;
            s.next_id += 1;
            let items = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| GrantedItem {
                    feature: item["feature"].as_str().unwrap().parse().unwrap(),
                    pool: item["pool"].as_str().unwrap_or("default").parse().unwrap(),
                    tokens: item["tokens"].as_u64().or(item["cores"].as_u64()).unwrap(),
                })
                .collect();
            let waits = !body["wait"].is_null() && s.queue_polls > 0;
            let polls_left = if waits { s.queue_polls } else { 0 };
            let client = body["client"].as_str().unwrap_or("anonymous").to_string();
            s.checkouts.insert(
                id,
                FakeCheckout {
                    client,
                    polls_left,
                    revoked: None,
                    released: false,
                    renewals: 0,
                    items,
                },
            );
            if waits {
                ok(LeaseReply::Queued(Queued {
                    id: CheckoutId(id),
                    position: polls_left,
                    wait_expires_at_ms: now_ms() + 60_000,
                }))
            } else {
                ok(LeaseReply::Granted(grant_of(s, id)))
            }
        }
        ("POST", ["v1", "checkouts", id, "heartbeat"]) => {
            let id: u64 = id.parse().unwrap();
            let Some(c) = s.checkouts.get_mut(&id) else {
                return refusal(
                    ErrorCode::UnknownCheckout,
                    Denial::UnknownCheckout { id: CheckoutId(id) },
                );
            };
            if let Some(reason) = c.revoked.clone() {
                return refusal(ErrorCode::Gone, Denial::Revoked { id: CheckoutId(id), reason });
            }
            if c.released {
                return refusal(ErrorCode::Gone, Denial::Ended { id: CheckoutId(id), end: None });
            }
            if c.polls_left > 0 {
                c.polls_left -= 1;
                if c.polls_left > 0 {
                    let position = c.polls_left;
                    return ok(LeaseReply::Queued(Queued {
                        id: CheckoutId(id),
                        position,
                        wait_expires_at_ms: now_ms() + 60_000,
                    }));
                }
            } else {
                c.renewals += 1;
            }
            ok(LeaseReply::Renewed(grant_of(s, id)))
        }
        ("POST", ["v1", "checkouts", id, "release"]) => {
            let id: u64 = id.parse().unwrap();
            let client = body["client"].as_str().unwrap_or_default().to_string();
            let Some(c) = s.checkouts.get_mut(&id) else {
                return refusal(
                    ErrorCode::UnknownCheckout,
                    Denial::UnknownCheckout { id: CheckoutId(id) },
                );
            };
            if c.client != client {
                return refusal(ErrorCode::NotOwner, Denial::NotOwner { id: CheckoutId(id) });
            }
            if c.released || c.revoked.is_some() {
                return refusal(ErrorCode::Gone, Denial::Ended { id: CheckoutId(id), end: None });
            }
            c.released = true;
            if c.polls_left > 0 {
                ok(ReleaseReply::Cancelled { id: CheckoutId(id) })
            } else {
                ok(ReleaseReply::Released { id: CheckoutId(id) })
            }
        }
        ("GET", ["v1", "checkouts", id]) => {
            let id: u64 = id.parse().unwrap();
            let grant = grant_of(s, id);
            let c = &s.checkouts[&id];
            let checkout = Checkout {
                id: CheckoutId(id),
                fence: id,
                client: c.client.parse().unwrap(),
                user: "jane".parse().unwrap(),
                host: "node-1".parse().unwrap(),
                job: None,
                items: grant.items.clone(),
                granted_at_ms: now_ms(),
                lease_ttl_ms: s.lease_ttl_ms,
                lease_expires_at_ms: grant.lease_expires_at_ms,
                borrowed: false,
            };
            ok(CheckoutStatus::Live(checkout))
        }
        ("GET", ["v1", "features"]) => ok(json!([])),
        ("GET", ["v1", "admin", "cluster"]) => ok(json!({
            "node": 1, "role": "Leader", "term": 2, "leader": 1, "leader_addr": "x:1",
            "last_log_index": 5, "commit_index": 5, "applied_index": 5, "members": []
        })),
        ("DELETE", ["v1", "admin", "nodes", _]) => ok(json!({
            "node": 1, "role": "Leader", "term": 2, "leader": 1, "leader_addr": "x:1",
            "last_log_index": 6, "commit_index": 6, "applied_index": 6,
            "members": [{"id": 1, "addr": "x:1", "voter": true, "matched_index": 6, "lag": 0}],
        })),
        ("POST", ["v1", "admin", "snapshot"]) => ok(json!({ "node": 1, "snapshot_index": 5 })),
        ("POST", ["v1", "admin", "checkouts", id, "revoke"]) => {
            let id: u64 = id.parse().unwrap();
            let reason = body["reason"].as_str().unwrap().to_string();
            s.checkouts.get_mut(&id).unwrap().revoked = Some(reason);
            ok(json!({ "revoked": id }))
        }
        _ => refusal(
            ErrorCode::NotFound,
            Denial::BadRequest { field: "path".into(), problem: path.into() },
        ),
    }
}
