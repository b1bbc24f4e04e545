//! The license state and its one write entry point, [`State::apply`].
//!
//! `apply` advances the replicated clock (`now = max(now, meta.now_ms)`), expires what is
//! due, runs the command, lets the queue take any tokens that came free, and checks the
//! accounting of every feature it touched. It never reads a clock, a random source or the
//! environment, and visits nothing in hash order, so the same commands give
//! byte-identical states on every node. The operations themselves live in `checkout.rs`, `queue.rs` and
//! `install.rs`; this file holds the tables, time and the dispatch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::clients::{Clients, Lookup};
use crate::command::{CheckoutRequest, Command, Meta, Op, Request};
use crate::deadlines::Deadlines;
use crate::error::Error;
use crate::id_table::IdTable;
use crate::ids::{CheckoutId, ClientId, FeatureName, HostName, JobId, UserName};
use crate::license::Policy;
use crate::limits::Limits;
use crate::pool::FeatureState;
use crate::response::{Denial, End, Event, Events, GrantedItem, Output, Response};

/// The whole replicated license state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub(crate) limits: Limits,
    /// The last applied log index.
    pub(crate) last_index: u64,
    /// Replicated time: the largest leader timestamp seen.
    pub(crate) now_ms: u64,
    /// The next checkout id to hand out.
    pub(crate) next_id: u64,
    /// The next fencing token to hand out.
    pub(crate) next_fence: u64,
    pub(crate) features: BTreeMap<FeatureName, FeatureState>,
    /// The policy in force; its pools live in `features`, so its `pools` map is empty.
    pub(crate) policy: Policy,
    /// Boxed: an empty slot of the table's window then costs 8 bytes, not 160, and
    /// its tree of older entries moves pointers when entries shift.
    pub(crate) checkouts: IdTable<Box<Checkout>>,
    pub(crate) waiters: BTreeMap<CheckoutId, Waiter>,
    /// How recently ended checkouts ended, so a late heartbeat learns why.
    pub(crate) tombstones: IdTable<End>,
    /// The client table: each client's session and, in the same entry, its live checkouts
    /// and queued requests.
    pub(crate) clients: Clients,
    /// Derived indexes, rebuilt on restore.
    #[serde(skip)]
    pub(crate) index: Index,
}

/// Indexes derived from the tables above; never serialized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Index {
    /// `(lease_expires_at_ms, id)` of every live checkout.
    pub leases: Deadlines,
    /// `(wait_expires_at_ms, id)` of every queued request.
    pub waits: BTreeSet<(u64, CheckoutId)>,
    /// Queue order: `(255 - priority, id)`, so higher priority first, then arrival.
    pub queue: BTreeSet<(u8, CheckoutId)>,
    /// Queued requests per feature.
    pub queue_by_feature: BTreeMap<FeatureName, BTreeSet<CheckoutId>>,
    /// Features with max rules: only their usage per user and host is counted.
    pub limited: BTreeSet<FeatureName>,
    /// Tokens held per limited feature and user.
    pub held_by_user: BTreeMap<(FeatureName, UserName), u64>,
    /// Tokens held per limited feature and host.
    pub held_by_host: BTreeMap<(FeatureName, HostName), u64>,
}

/// A live checkout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    /// Its id.
    pub id: CheckoutId,
    /// Its fencing token.
    pub fence: u64,
    /// The owning client; only it may renew or release.
    pub client: ClientId,
    /// The user.
    pub user: UserName,
    /// The host.
    pub host: HostName,
    /// The job.
    pub job: Option<JobId>,
    /// Tokens per feature, shared with the grant, its event and the session's reply.
    pub items: Arc<[GrantedItem]>,
    /// When it was granted.
    pub granted_at_ms: u64,
    /// The lease length renewed by each heartbeat (0 for an offline borrow).
    pub lease_ttl_ms: u64,
    /// The lease ends at this time unless renewed.
    pub lease_expires_at_ms: u64,
    /// An offline borrow.
    pub borrowed: bool,
}

/// A queued request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The id the checkout will have.
    pub id: CheckoutId,
    /// The waiting client.
    pub client: ClientId,
    /// What it asks for.
    pub request: CheckoutRequest,
    /// Higher goes first.
    pub priority: u8,
    /// The wait is renewed to this length by each poll.
    pub poll_ttl_ms: u64,
    /// It leaves the queue at this time unless polled.
    pub wait_expires_at_ms: u64,
    /// How many later grants took tokens it was waiting for.
    pub bypassed: u32,
    /// Its last refusal was for want of tokens (not a max rule), so grants to others can
    /// pass it and, after `max_queue_bypass` of them, it blocks (see `queue.rs`).
    pub short_of_tokens: bool,
    /// When it joined the queue.
    pub queued_at_ms: u64,
}

/// Live checkouts and queued requests of one client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLoad {
    /// Live checkouts.
    pub checkouts: u64,
    /// Queued requests.
    pub queued: u64,
}

/// What one `apply` did besides its answer: events, and which features need the queue
/// drained and their accounting checked.
#[derive(Default)]
pub(crate) struct Effects {
    pub events: Events,
    /// Features whose tokens or configuration changed.
    pub touched: FeatureSet,
    /// Features with tokens that came free (the queue may now be served).
    pub freed: FeatureSet,
    /// Something freed that any waiter may use (a global limit, a new license).
    pub freed_all: bool,
}

/// A small set of feature names: one `apply` touches one or a few features, so a vector
/// kept inline is cheaper than a tree.
#[derive(Default)]
pub(crate) struct FeatureSet(SmallVec<[FeatureName; 2]>);

impl FeatureSet {
    pub fn insert(&mut self, feature: FeatureName) {
        if !self.contains(&feature) {
            self.0.push(feature);
        }
    }

    pub fn contains(&self, feature: &FeatureName) -> bool {
        self.0.contains(feature)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &FeatureName> {
        self.0.iter()
    }
}

impl Extend<FeatureName> for FeatureSet {
    fn extend<I: IntoIterator<Item = FeatureName>>(&mut self, features: I) {
        features.into_iter().for_each(|f| self.insert(f));
    }
}

impl Default for State {
    fn default() -> Self {
        State::new(Limits::default())
    }
}

impl State {
    /// An empty state with no license installed.
    pub fn new(limits: Limits) -> State {
        State {
            limits,
            last_index: 0,
            now_ms: 0,
            next_id: 1,
            next_fence: 1,
            features: BTreeMap::new(),
            policy: Policy::default(),
            checkouts: IdTable::default(),
            waiters: BTreeMap::new(),
            tombstones: IdTable::default(),
            clients: Clients::default(),
            index: Index::default(),
        }
    }

    /// The limits this state enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The last applied log index.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Replicated time, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// When the next lease or queued request is due to expire, if any. The leader proposes
    /// a [`Command::Tick`] once its clock passes this time.
    pub fn next_expiry(&self) -> Option<u64> {
        let lease = self.index.leases.first().map(|(t, _)| t);
        let wait = self.index.waits.first().map(|&(t, _)| t);
        match (lease, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies one committed command. A refusal is an `Ok` answer; `Err` means a bug or an
    /// out-of-order entry, and the node must stop.
    pub fn apply(&mut self, meta: Meta, command: Command) -> Result<Output, Error> {
        self.advance(meta)?;
        self.apply_one(command)
    }

    /// Applies the commands of one committed log entry, in order, all at the entry's
    /// index and time. The replicator batches concurrent requests into one entry, so one
    /// disk write and one round of replication carry them all.
    pub fn apply_batch(
        &mut self,
        meta: Meta,
        commands: Vec<Command>,
    ) -> Result<Vec<Output>, Error> {
        self.advance(meta)?;
        commands.into_iter().map(|command| self.apply_one(command)).collect()
    }

    /// Moves to a new log index and time.
    fn advance(&mut self, meta: Meta) -> Result<(), Error> {
        if meta.index <= self.last_index {
            return Err(Error::OutOfOrder { last: self.last_index, got: meta.index });
        }
        self.last_index = meta.index;
        self.now_ms = self.now_ms.max(meta.now_ms);
        Ok(())
    }

    fn apply_one(&mut self, command: Command) -> Result<Output, Error> {
        let mut fx = Effects::default();
        // A new leader extends leases before anything expires, so the election gap never
        // costs a client its checkout.
        let extended = match command {
            Command::LeaderChange { .. } => self.extend_leases(),
            _ => 0,
        };
        let expired = self.expire_due(&mut fx);
        self.drain_queue(&mut fx);
        let response = match command {
            Command::Tick => Response::Ticked { expired },
            Command::LeaderChange { leader } => {
                fx.events.push(Event::LeasesExtended { leader, count: extended });
                Response::LeaderChanged { extended }
            }
            Command::Request(request) => self.request(request, &mut fx),
        };
        self.drain_queue(&mut fx);
        for feature in fx.touched.iter() {
            if let Some(state) = self.features.get(feature) {
                state.check().map_err(Error::Invariant)?;
            }
        }
        Ok(Output { response, events: fx.events })
    }

    /// Checks a request's fields against each other and the limits, without changing
    /// anything: the checks `apply` makes before it looks at tokens, sessions or rules.
    /// A server runs this before proposing, so malformed requests never reach the log;
    /// `apply` still makes the same checks, so a request that passes here may yet be
    /// refused when committed (a borrow whose end has passed by then, for instance).
    pub fn precheck(&self, request: &Request) -> Result<(), Denial> {
        if request.ack > request.seq {
            let (ack, seq) = (request.ack, request.seq);
            return Err(Denial::bad("ack", format!("ack {ack} is above seq {seq}")));
        }
        match &request.op {
            Op::Checkout(req) => self.validate_request(req),
            Op::Heartbeat(_) | Op::Release(_) => Ok(()),
            Op::Revoke { reason, .. } if reason.len() > crate::command::MAX_REASON_LEN => {
                Err(Denial::bad(
                    "reason",
                    format!(
                        "{} bytes; the limit is {}",
                        reason.len(),
                        crate::command::MAX_REASON_LEN
                    ),
                ))
            }
            Op::Revoke { .. } => Ok(()),
            Op::Install(install) => install.validate(&self.limits).map_err(Denial::BadInstall),
        }
    }

    /// Runs a client request through its session, so a retry is answered, not re-applied.
    fn request(&mut self, request: Request, fx: &mut Effects) -> Response {
        let Request { client, seq, ack, op } = request;
        if ack > seq {
            let denial = Denial::bad("ack", format!("ack {ack} is above seq {seq}"));
            fx.events.push(Event::Denied { client, denial: denial.clone() });
            return Response::Denied(denial);
        }
        let max_sessions = self.limits.max_sessions;
        let at = (self.last_index, self.now_ms);
        match self.clients.begin(&client, (seq, ack), at, max_sessions) {
            Lookup::Replay(reply) => return reply,
            Lookup::Stale { oldest_kept } => {
                let denial = Denial::StaleRequest { seq, oldest_kept };
                fx.events.push(Event::Denied { client, denial: denial.clone() });
                return Response::Denied(denial);
            }
            Lookup::New => {}
        }
        let response = match op {
            Op::Checkout(req) => self.checkout(&client, req, fx),
            Op::Heartbeat(id) => self.heartbeat(&client, id),
            Op::Release(id) => self.release(&client, id, fx),
            Op::Revoke { id, reason } => self.revoke(id, reason, fx),
            Op::Install(install) => self.install(install, fx),
        };
        if let Response::Denied(denial) = &response {
            fx.events.push(Event::Denied { client: client.clone(), denial: denial.clone() });
        }
        self.clients.record(&client, seq, &response, self.limits.max_replies_per_session);
        response
    }

    /// Expires every lease and queued wait that is due at `now`, and idle sessions.
    fn expire_due(&mut self, fx: &mut Effects) -> u64 {
        let now = self.now_ms;
        let mut expired = 0;
        while let Some((at, id)) = self.index.leases.first() {
            if at > now {
                break;
            }
            self.end_checkout(id, End::Expired, fx);
            expired += 1;
        }
        while let Some(&(at, id)) = self.index.waits.first() {
            if at > now {
                break;
            }
            self.drop_waiter(id, End::QueueExpired, fx);
            expired += 1;
        }
        self.clients.expire(now, self.limits.session_idle_ttl_ms);
        expired
    }

    /// Extends every live lease and queued wait to at least one full TTL from now.
    fn extend_leases(&mut self) -> u64 {
        let now = self.now_ms;
        let mut extended = 0;
        for checkout in self.checkouts.values_mut() {
            let floor = now.saturating_add(checkout.lease_ttl_ms);
            if !checkout.borrowed && checkout.lease_expires_at_ms < floor {
                checkout.lease_expires_at_ms = floor;
                extended += 1;
            }
        }
        for waiter in self.waiters.values_mut() {
            let floor = now.saturating_add(waiter.poll_ttl_ms);
            if waiter.wait_expires_at_ms < floor {
                waiter.wait_expires_at_ms = floor;
                extended += 1;
            }
        }
        if extended > 0 {
            self.rebuild_index();
        }
        extended
    }

    /// Rebuilds the derived indexes from the tables.
    pub(crate) fn rebuild_index(&mut self) {
        let mut index = Index::default();
        for rule in &self.policy.rules {
            if let crate::license::Rule::Max { feature, .. } = rule {
                index.limited.insert(feature.clone());
            }
        }
        let (borrows, leases): (Vec<&Checkout>, _) =
            self.checkouts.values().map(|c| &**c).partition(|c| c.borrowed);
        index.leases = leases.into_iter().map(|c| (c.lease_expires_at_ms, c.id)).collect();
        for c in borrows {
            index.leases.insert_aside(c.lease_expires_at_ms, c.id);
        }
        for c in self.checkouts.values() {
            for item in c.items.iter().filter(|i| i.tokens > 0) {
                if index.limited.contains(&item.feature) {
                    let user = (item.feature.clone(), c.user.clone());
                    *index.held_by_user.entry(user).or_default() += item.tokens;
                    let host = (item.feature.clone(), c.host.clone());
                    *index.held_by_host.entry(host).or_default() += item.tokens;
                }
            }
        }
        for w in self.waiters.values() {
            index.waits.insert((w.wait_expires_at_ms, w.id));
            index.queue.insert((u8::MAX - w.priority, w.id));
            for item in &w.request.items {
                index.queue_by_feature.entry(item.feature.clone()).or_default().insert(w.id);
            }
        }
        self.index = index;
        self.clients.rebuild_index();
    }

    /// Allocates the next checkout id.
    pub(crate) fn allocate_id(&mut self) -> CheckoutId {
        let id = CheckoutId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Records how a checkout or queued request ended, within the tombstone limit.
    pub(crate) fn bury(&mut self, id: CheckoutId, end: End) {
        self.tombstones.insert(id, end);
        while self.tombstones.len() as u64 > self.limits.max_tombstones {
            self.tombstones.pop_first();
        }
    }

    /// The refusal for an id that is neither live nor queued.
    pub(crate) fn gone(&self, id: CheckoutId) -> Denial {
        if id.0 == 0 || id.0 >= self.next_id {
            return Denial::UnknownCheckout { id };
        }
        match self.tombstones.get(&id) {
            Some(End::Revoked { reason }) => Denial::Revoked { id, reason: reason.clone() },
            Some(End::Expired) => Denial::LeaseExpired { id },
            end => Denial::Ended { id, end: end.cloned() },
        }
    }

    /// Changes a client's load.
    pub(crate) fn adjust_load(&mut self, client: &ClientId, change: impl FnOnce(&mut ClientLoad)) {
        self.clients.adjust_load(client, change);
    }
}
