//! The reference model: the whole license state as `docs/design/licensing-model.md` and
//! the public API docs of lsm-core describe it, computed by brute force.
//!
//! Live checkouts, the queue, tombstones and sessions are plain lists; every count (a
//! pool's use, a user's holdings, a client's load, a queue position) is recomputed from
//! them when it is needed. Token sources live in each feature's parcel list
//! (`pools.rs`); the queue and anti-starvation are in `queue.rs`, the options-file rules
//! in `rules.rs`. The grant rule is followed step by step as the doc numbers it, and each
//! refusal carries the step that made it, so whether a request may wait is read off the
//! doc's rule ("a refusal of kind 3 is transient") rather than off the refusal's type.
//! Nothing here calls a rule of lsm-core: it uses lsm-core's command, response and
//! license types as data only.
//!
//! Where the doc leaves a choice open, the model takes lsm-core's documented or observed
//! answer: within step 3 an item's max rules come first, then its pool, then
//! anti-starvation (whether a grant competes depends on where its tokens would come
//! from), so a request short of tokens is told `NoTokens`, not `QueueBlocked`; a request
//! larger than a max rule itself can never be granted, so that `OverLimit` is not
//! transient; `QueueBlocked` names the oldest blocking waiter; `NoTokens` over the total
//! reports the smaller of the free tokens and what the sources have; only a waiter that
//! blocked a feature serves its queue by leaving; and room under the global limit serves
//! every feature.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use lsm_core::{
    Checkout, CheckoutId, CheckoutRequest, ClientId, Command, CostRule, Demand, Denial, End,
    Entitlement, Event, FeatureName, Grant, GrantedItem, Install, InstallError, Item, Limits,
    MAX_REASON_LEN, Meta, Op, Output, Policy, PoolName, Queued, Request, Response,
};

use crate::Ctx;
use crate::pools::{Feature, Pool, Take, open_pool};
pub use crate::queue::Waiter;

/// A refusal and whether the doc calls it transient (kind 3 of the grant rule).
#[derive(Clone, Debug)]
pub struct Refusal {
    pub denial: Denial,
    pub transient: bool,
}

fn never(denial: Denial) -> Refusal {
    Refusal { denial, transient: false }
}

fn not_now(denial: Denial) -> Refusal {
    Refusal { denial, transient: true }
}

/// A client session: when it was last seen, the oldest sequence number it still answers
/// and the kept replies, by sequence number.
pub struct Session {
    pub client: ClientId,
    pub last_seen_ms: u64,
    pub floor: u64,
    pub replies: Vec<(u64, Response)>,
}

impl Session {
    pub fn reply(&self, seq: u64) -> Option<&Response> {
        self.replies.iter().find(|(s, _)| *s == seq).map(|(_, r)| r)
    }
}

/// How the session table treated a command.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Disposition {
    /// `Tick` or `LeaderChange`.
    System,
    /// A request with `ack > seq`, refused before its session is looked at.
    AckAboveSeq,
    /// A retry answered from the session.
    Replay,
    /// A retry older than the kept replies.
    Stale,
    /// A new request.
    New,
}

/// What one command did besides its answer.
#[derive(Default)]
pub struct Fx {
    pub events: Vec<Event>,
    /// Features whose tokens came free, or whose blocking waiter left: the queue serves
    /// their waiters.
    pub freed: BTreeSet<FeatureName>,
    /// Everything may have changed (a new license, or room under the global limit).
    pub freed_all: bool,
}

/// The whole state.
pub struct Model {
    pub limits: Limits,
    /// Replicated time: the largest `now_ms` seen.
    pub now: u64,
    pub next_id: u64,
    pub next_fence: u64,
    /// In name order.
    pub features: Vec<Feature>,
    /// Rules and groups in force (pools live in `features`).
    pub policy: Policy,
    pub live: Vec<Checkout>,
    pub queue: Vec<Waiter>,
    pub tombstones: Vec<(CheckoutId, End)>,
    pub sessions: Vec<Session>,
    /// Recently ended ids and their owners, for the generator's late heartbeats.
    pub ended: VecDeque<(CheckoutId, ClientId)>,
    /// Features with nothing in use since the last install that found them in use, so
    /// none of their tokens came from a rederivation.
    pub clean: BTreeSet<FeatureName>,
    /// Features the last command had to serve the queue for, with the reason.
    pub woken: BTreeMap<FeatureName, String>,
    /// A new license came into force in the last command.
    pub woken_all: bool,
    /// Why the model walked the queue again in the last command, for failure messages.
    pub rewalks: Vec<String>,
}

/// `Denial::BadRequest` with the wording left out.
pub fn bad(field: impl Into<String>) -> Denial {
    Denial::BadRequest { field: field.into(), problem: String::new() }
}

pub fn limit(limit: &str, max: u64) -> Denial {
    Denial::LimitReached { limit: limit.to_string(), max }
}

/// Tokens a demand costs, from "How much a request costs"; `None` when it does not fit
/// in 64 bits.
pub fn cost(rule: &CostRule, demand: Demand) -> Option<u64> {
    let cores = match demand {
        Demand::Tokens(tokens) => return Some(tokens),
        Demand::Cores { cores, .. } => cores,
    };
    match *rule {
        CostRule::PerCore { base_tokens, tokens_per_core, cores_included } => tokens_per_core
            .checked_mul(cores.saturating_sub(cores_included))?
            .checked_add(base_tokens),
        CostRule::HpcPacks { base_tokens, cores_included } => {
            let extra = cores.saturating_sub(cores_included);
            // The fewest packs n with 2 * 4^n >= extra, and none when nothing is extra.
            let packs = if extra == 0 {
                0
            } else {
                (1u32..).find(|&n| 2u128 * 4u128.pow(n) >= u128::from(extra)).expect("found")
            };
            base_tokens.checked_add(u64::from(packs))
        }
    }
}

impl Model {
    pub fn new(limits: Limits) -> Model {
        Model {
            limits,
            now: 0,
            next_id: 1,
            next_fence: 1,
            features: Vec::new(),
            policy: Policy::default(),
            live: Vec::new(),
            queue: Vec::new(),
            tombstones: Vec::new(),
            sessions: Vec::new(),
            ended: VecDeque::new(),
            clean: BTreeSet::new(),
            woken: BTreeMap::new(),
            woken_all: false,
            rewalks: Vec::new(),
        }
    }

    pub fn feature(&self, name: &FeatureName) -> Option<&Feature> {
        self.features.iter().find(|f| f.name() == name)
    }

    fn feature_mut(&mut self, name: &FeatureName) -> Option<&mut Feature> {
        self.features.iter_mut().find(|f| f.name() == name)
    }

    pub fn live_checkout(&self, id: CheckoutId) -> Option<&Checkout> {
        self.live.iter().find(|c| c.id == id)
    }

    pub fn waiter(&self, id: CheckoutId) -> Option<&Waiter> {
        self.queue.iter().find(|w| w.id == id)
    }

    pub fn waiter_mut(&mut self, id: CheckoutId) -> &mut Waiter {
        self.queue.iter_mut().find(|w| w.id == id).expect("the waiter is queued")
    }

    pub fn session(&self, client: &ClientId) -> Option<&Session> {
        self.sessions.iter().find(|s| &s.client == client)
    }

    /// Tokens per pool of one feature, counted from the live checkouts.
    pub fn held(&self, feature: &FeatureName) -> BTreeMap<PoolName, u64> {
        let mut usage = BTreeMap::new();
        for item in self.live.iter().flat_map(|c| c.items.iter()) {
            if &item.feature == feature && item.tokens > 0 {
                *usage.entry(item.pool.clone()).or_default() += item.tokens;
            }
        }
        usage
    }

    /// Live checkouts plus queued requests of a client.
    pub fn load(&self, client: &ClientId) -> (u64, u64) {
        let live = self.live.iter().filter(|c| &c.client == client).count();
        let queued = self.queue.iter().filter(|w| &w.client == client).count();
        (live as u64, queued as u64)
    }

    pub fn position(&self, w: &Waiter) -> u64 {
        1 + self.queue.iter().filter(|o| o.key() < w.key()).count() as u64
    }

    pub fn next_expiry(&self) -> Option<u64> {
        let leases = self.live.iter().map(|c| c.lease_expires_at_ms);
        leases.chain(self.queue.iter().map(|w| w.wait_expires_at_ms)).min()
    }

    /// Step 1 of the grant rule, up to the per-client limit: the request's own fields.
    fn check_fields(&self, req: &CheckoutRequest) -> Result<(), Denial> {
        let l = &self.limits;
        if req.items.is_empty() || req.items.len() as u64 > l.max_items_per_request {
            return Err(bad("items"));
        }
        for (i, item) in req.items.iter().enumerate() {
            if req.items[..i].iter().any(|other| other.feature == item.feature) {
                return Err(bad(format!("items[{i}].feature")));
            }
            let (n, max) = match item.demand {
                Demand::Tokens(n) => (n, l.max_tokens_per_request),
                Demand::Cores { cores, .. } => (cores, l.max_cores_per_request),
            };
            if n == 0 || n > max {
                return Err(bad(format!("items[{i}].demand")));
            }
        }
        if let Some(until) = req.borrow_until_ms {
            if until <= self.now {
                return Err(bad("borrow_until_ms"));
            }
            if req.wait.is_some() {
                return Err(bad("wait"));
            }
        } else if req.lease_ttl_ms < l.min_lease_ttl_ms || req.lease_ttl_ms > l.max_lease_ttl_ms {
            return Err(bad("lease_ttl_ms"));
        }
        if let Some(wait) = req.wait
            && (wait.poll_ttl_ms < l.min_queue_ttl_ms || wait.poll_ttl_ms > l.max_queue_ttl_ms)
        {
            return Err(bad("wait.poll_ttl_ms"));
        }
        Ok(())
    }

    /// "Which pool a request draws on": the named pool, else the one serving the mode,
    /// else the first (retired pools are not configured, so never chosen).
    pub fn route<'f>(&self, f: &'f Feature, item: &Item) -> Result<&'f Pool, Denial> {
        let configured = || f.pools.iter().filter(|p| !p.retired);
        if let Some(name) = &item.pool {
            return configured().find(|p| &p.spec.name == name).ok_or_else(|| {
                Denial::UnknownPool { feature: item.feature.clone(), pool: name.clone() }
            });
        }
        if let Demand::Cores { mode, .. } = item.demand
            && let Some(pool) = configured().find(|p| p.spec.modes.contains(&mode))
        {
            return Ok(pool);
        }
        configured().next().ok_or_else(|| Denial::UnknownFeature { feature: item.feature.clone() })
    }

    /// Steps 2 and 3 of the grant rule for a whole request: "never grantable" over every
    /// item first, then "not grantable now" item by item (max rules, the pool, and for a
    /// request that is not already queued, a blocking waiter it would pass).
    pub fn plan(&self, req: &CheckoutRequest, queued: bool) -> Result<Vec<Take>, Refusal> {
        let mut sized = Vec::new();
        for item in &req.items {
            let feature = item.feature.clone();
            let Some(f) = self.feature(&item.feature).filter(|f| !f.retired) else {
                return Err(never(Denial::UnknownFeature { feature }));
            };
            let ent = &f.ent;
            if self.now < ent.starts_at_ms {
                return Err(never(Denial::NotStarted { feature, starts_at_ms: ent.starts_at_ms }));
            }
            if self.now >= ent.expires_at_ms {
                let expired_at_ms = ent.expires_at_ms;
                return Err(never(Denial::FeatureExpired { feature, expired_at_ms }));
            }
            if let Some(until) = req.borrow_until_ms
                && until - self.now > ent.max_borrow_ms
            {
                let max_borrow_ms = ent.max_borrow_ms;
                return Err(never(Denial::BorrowNotAllowed { feature, max_borrow_ms }));
            }
            let pool = self.route(f, item).map_err(never)?;
            let Some(tokens) = cost(&ent.cost, item.demand) else {
                return Err(never(bad("demand")));
            };
            let total = ent.tokens_total;
            if tokens > total {
                return Err(never(Denial::OverTotal { feature, total, requested: tokens }));
            }
            if tokens > pool.cap {
                return Err(never(Denial::PoolCap {
                    feature,
                    pool: pool.spec.name.clone(),
                    cap: pool.cap,
                    held: f.used(&pool.spec.name),
                    requested: tokens,
                }));
            }
            self.access(&item.feature, &req.user, &req.host).map_err(never)?;
            sized.push((f, pool, tokens));
        }
        let mut takes = Vec::new();
        for (f, pool, tokens) in sized {
            self.max_rules(f.name(), &req.user, &req.host, tokens)?;
            let take = f.plan(pool, tokens).map_err(not_now)?;
            if !queued && let Some(waiter) = self.blocker_of(&take) {
                let feature = f.name().clone();
                return Err(not_now(Denial::QueueBlocked { feature, waiter }));
            }
            takes.push(take);
        }
        Ok(takes)
    }

    /// Records a grant, after `checks::grant_bounds` has checked it against the bounds
    /// the live checkouts imply.
    pub fn grant(
        &mut self,
        ctx: &Ctx,
        (id, client): (CheckoutId, ClientId),
        req: CheckoutRequest,
        takes: Vec<Take>,
        from_queue: bool,
        fx: &mut Fx,
    ) -> Grant {
        let mut items = Vec::new();
        for take in &takes {
            let item = GrantedItem {
                feature: take.feature.clone(),
                pool: take.pool.clone(),
                tokens: take.tokens,
            };
            crate::checks::grant_bounds(self, ctx, &req, &item);
            self.feature_mut(&take.feature).expect("planned features exist").take(take);
            items.push(item);
        }
        let items: Arc<[GrantedItem]> = items.into();
        let fence = self.next_fence;
        self.next_fence += 1;
        let (lease_ttl_ms, lease_expires_at_ms, borrowed) = match req.borrow_until_ms {
            Some(until) => (0, until, true),
            None => (req.lease_ttl_ms, self.now + req.lease_ttl_ms, false),
        };
        fx.events.push(Event::Granted {
            id,
            fence,
            client: client.clone(),
            user: req.user.clone(),
            host: req.host.clone(),
            job: req.job.clone(),
            items: items.clone(),
            from_queue,
        });
        self.live.push(Checkout {
            id,
            fence,
            client,
            user: req.user,
            host: req.host,
            job: req.job,
            items: items.clone(),
            granted_at_ms: self.now,
            lease_ttl_ms,
            lease_expires_at_ms,
            borrowed,
        });
        Grant { id, fence, items, lease_expires_at_ms, borrowed }
    }

    /// Leaves a tombstone; past `max_tombstones` the oldest ids are forgotten.
    fn bury(&mut self, id: CheckoutId, end: End, client: ClientId) {
        self.tombstones.push((id, end));
        while self.tombstones.len() as u64 > self.limits.max_tombstones {
            let oldest = (0..self.tombstones.len()).min_by_key(|&i| self.tombstones[i].0);
            self.tombstones.remove(oldest.expect("not empty"));
        }
        self.ended.push_back((id, client));
        if self.ended.len() > 64 {
            self.ended.pop_front();
        }
    }

    /// Ends a live checkout: its tokens go back, and its features are served.
    fn end_checkout(&mut self, id: CheckoutId, end: End, fx: &mut Fx) {
        let i = self.live.iter().position(|c| c.id == id).expect("the checkout is live");
        let c = self.live.remove(i);
        if self.live.len() as u64 + 1 >= self.limits.max_checkouts {
            fx.freed_all = true;
        }
        for item in c.items.iter().filter(|i| i.tokens > 0) {
            if let Some(f) = self.feature_mut(&item.feature) {
                f.give_back(&item.pool, item.tokens);
                if f.retired && f.in_use() == 0 {
                    self.features.retain(|f| f.name() != &item.feature);
                }
            }
            fx.freed.insert(item.feature.clone());
            self.woken.entry(item.feature.clone()).or_insert_with(|| format!("{id:?} ended"));
            if self.held(&item.feature).is_empty() {
                self.clean.insert(item.feature.clone());
            }
        }
        fx.events.push(Event::Ended { id, items: c.items, end: end.clone() });
        self.bury(id, end, c.client);
    }

    /// Takes a request out of the queue without a grant; if it was blocking, the
    /// requests it held back are served.
    pub fn drop_waiter(&mut self, id: CheckoutId, end: End, fx: &mut Fx) {
        let i = self.queue.iter().position(|w| w.id == id).expect("the request is queued");
        let w = self.queue.remove(i);
        if self.blocking(&w) {
            for item in &w.request.items {
                fx.freed.insert(item.feature.clone());
                let why = || format!("blocking waiter {id:?} left the queue ({end:?})");
                self.woken.entry(item.feature.clone()).or_insert_with(why);
            }
        }
        fx.events.push(Event::Dequeued { id, end: end.clone() });
        self.bury(id, end, w.client);
    }

    /// Leases, then waits, that are due, each in expiry order; then idle sessions.
    fn expire_due(&mut self, fx: &mut Fx) -> u64 {
        let now = self.now;
        let mut leases: Vec<(u64, CheckoutId)> = (self.live.iter())
            .filter(|c| c.lease_expires_at_ms <= now)
            .map(|c| (c.lease_expires_at_ms, c.id))
            .collect();
        leases.sort();
        let mut waits: Vec<(u64, CheckoutId)> = (self.queue.iter())
            .filter(|w| w.wait_expires_at_ms <= now)
            .map(|w| (w.wait_expires_at_ms, w.id))
            .collect();
        waits.sort();
        for &(_, id) in &leases {
            self.end_checkout(id, End::Expired, fx);
        }
        for &(_, id) in &waits {
            self.drop_waiter(id, End::QueueExpired, fx);
        }
        let ttl = self.limits.session_idle_ttl_ms;
        self.sessions.retain(|s| s.last_seen_ms.saturating_add(ttl) > now);
        (leases.len() + waits.len()) as u64
    }

    /// Everything one command does: the answer and the events. `install_ok` is the
    /// generator's verdict on an install (the model does not validate licenses).
    pub fn apply(
        &mut self,
        ctx: &Ctx,
        meta: Meta,
        command: &Command,
        install_ok: Option<bool>,
    ) -> (Output, Disposition) {
        self.now = self.now.max(meta.now_ms);
        self.woken.clear();
        self.woken_all = false;
        self.rewalks.clear();
        let mut fx = Fx::default();
        let extended = match command {
            Command::LeaderChange { .. } => self.extend_leases(),
            _ => 0,
        };
        let expired = self.expire_due(&mut fx);
        self.serve(ctx, &mut fx);
        let (response, disposition) = match command {
            Command::Tick => (Response::Ticked { expired }, Disposition::System),
            Command::LeaderChange { leader } => {
                fx.events.push(Event::LeasesExtended { leader: *leader, count: extended });
                (Response::LeaderChanged { extended }, Disposition::System)
            }
            Command::Request(req) => self.request(ctx, req, install_ok, &mut fx),
        };
        self.serve(ctx, &mut fx);
        (Output { response, events: fx.events.into() }, disposition)
    }

    /// `LeaderChange`: every live lease but an offline borrow, and every wait, reaches at
    /// least one full TTL from now.
    fn extend_leases(&mut self) -> u64 {
        let now = self.now;
        let mut extended = 0;
        for c in self.live.iter_mut().filter(|c| !c.borrowed) {
            if c.lease_expires_at_ms < now + c.lease_ttl_ms {
                c.lease_expires_at_ms = now + c.lease_ttl_ms;
                extended += 1;
            }
        }
        for w in &mut self.queue {
            let floor = now + w.wait().poll_ttl_ms;
            if w.wait_expires_at_ms < floor {
                w.wait_expires_at_ms = floor;
                extended += 1;
            }
        }
        extended
    }

    /// A client request through its session: answered from it, or run and recorded.
    fn request(
        &mut self,
        ctx: &Ctx,
        req: &Request,
        install_ok: Option<bool>,
        fx: &mut Fx,
    ) -> (Response, Disposition) {
        let client = &req.client;
        let deny = |fx: &mut Fx, denial: Denial| {
            fx.events.push(Event::Denied { client: client.clone(), denial: denial.clone() });
            Response::Denied(denial)
        };
        if req.ack > req.seq {
            return (deny(fx, bad("ack")), Disposition::AckAboveSeq);
        }
        let now = self.now;
        let i = match self.sessions.iter().position(|s| &s.client == client) {
            Some(i) => i,
            None => {
                let fresh = Session {
                    client: client.clone(),
                    last_seen_ms: now,
                    floor: 0,
                    replies: vec![],
                };
                self.sessions.push(fresh);
                self.sessions.len() - 1
            }
        };
        let session = &mut self.sessions[i];
        session.last_seen_ms = now;
        if req.ack > session.floor {
            session.floor = req.ack;
            session.replies.retain(|&(seq, _)| seq >= req.ack);
        }
        if let Some(reply) = session.reply(req.seq) {
            return (reply.clone(), Disposition::Replay);
        }
        if req.seq < session.floor {
            let stale = Denial::StaleRequest { seq: req.seq, oldest_kept: session.floor };
            return (deny(fx, stale), Disposition::Stale);
        }
        let response = match &req.op {
            Op::Checkout(creq) => self.checkout(ctx, client, creq, fx),
            Op::Heartbeat(id) => self.heartbeat(client, *id),
            Op::Release(id) => self.release(client, *id, fx),
            Op::Revoke { id, reason } => self.revoke(*id, reason, fx),
            Op::Install(install) => match install_ok {
                Some(true) => self.install(install, fx),
                Some(false) => Response::Denied(Denial::BadInstall(InstallError {
                    field: String::new(),
                    problem: String::new(),
                })),
                None => ctx.fail(format_args!("an install the generator did not classify")),
            },
        };
        let response = match response {
            Response::Denied(denial) => deny(fx, denial),
            other => other,
        };
        self.record(client, req.seq, &response);
        (response, Disposition::New)
    }

    /// Keeps the reply; past `max_replies_per_session` the oldest go and the floor rises
    /// to the oldest kept one.
    fn record(&mut self, client: &ClientId, seq: u64, response: &Response) {
        let max = self.limits.max_replies_per_session.max(1) as usize;
        let session = self.sessions.iter_mut().find(|s| &s.client == client).expect("opened");
        session.replies.push((seq, response.clone()));
        session.replies.sort_by_key(|(seq, _)| *seq);
        if session.replies.len() > max {
            let excess = session.replies.len() - max;
            session.replies.drain(..excess);
            session.floor = session.floor.max(session.replies[0].0);
        }
    }

    fn checkout(
        &mut self,
        ctx: &Ctx,
        client: &ClientId,
        req: &CheckoutRequest,
        fx: &mut Fx,
    ) -> Response {
        if let Err(denial) = self.check_fields(req) {
            return Response::Denied(denial);
        }
        let (live, queued) = self.load(client);
        let max = self.limits.max_checkouts_per_client;
        if live + queued >= max {
            return Response::Denied(limit("max_checkouts_per_client", max));
        }
        let takes = match self.plan(req, false) {
            Ok(takes) => takes,
            Err(refusal) if refusal.transient && req.wait.is_some() => {
                return self.enqueue(client, req, &refusal.denial, fx);
            }
            Err(refusal) => return Response::Denied(refusal.denial),
        };
        // Step 4: the global limit.
        if self.live.len() as u64 >= self.limits.max_checkouts {
            return Response::Denied(limit("max_checkouts", self.limits.max_checkouts));
        }
        let id = CheckoutId(self.next_id);
        self.next_id += 1;
        self.count_bypasses(&takes, None);
        Response::Granted(self.grant(ctx, (id, client.clone()), req.clone(), takes, false, fx))
    }

    /// The answer for an id that is neither live nor queued.
    pub fn gone(&self, id: CheckoutId) -> Denial {
        if id.0 == 0 || id.0 >= self.next_id {
            return Denial::UnknownCheckout { id };
        }
        match self.tombstones.iter().find(|(t, _)| *t == id).map(|(_, end)| end) {
            Some(End::Revoked { reason }) => Denial::Revoked { id, reason: reason.clone() },
            Some(End::Expired) => Denial::LeaseExpired { id },
            end => Denial::Ended { id, end: end.cloned() },
        }
    }

    fn heartbeat(&mut self, client: &ClientId, id: CheckoutId) -> Response {
        let now = self.now;
        if let Some(c) = self.live.iter_mut().find(|c| c.id == id) {
            if &c.client != client {
                return Response::Denied(Denial::NotOwner { id });
            }
            if !c.borrowed {
                c.lease_expires_at_ms = c.lease_expires_at_ms.max(now + c.lease_ttl_ms);
            }
            let (fence, items, borrowed) = (c.fence, c.items.clone(), c.borrowed);
            return Response::Renewed(Grant {
                id,
                fence,
                items,
                lease_expires_at_ms: c.lease_expires_at_ms,
                borrowed,
            });
        }
        if let Some(w) = self.queue.iter_mut().find(|w| w.id == id) {
            if &w.client != client {
                return Response::Denied(Denial::NotOwner { id });
            }
            w.wait_expires_at_ms = w.wait_expires_at_ms.max(now + w.wait().poll_ttl_ms);
            let w = self.waiter(id).expect("queued");
            let position = self.position(w);
            return Response::Queued(Queued {
                id,
                position,
                wait_expires_at_ms: w.wait_expires_at_ms,
            });
        }
        Response::Denied(self.gone(id))
    }

    fn release(&mut self, client: &ClientId, id: CheckoutId, fx: &mut Fx) -> Response {
        if let Some(c) = self.live_checkout(id) {
            if &c.client != client {
                return Response::Denied(Denial::NotOwner { id });
            }
            self.end_checkout(id, End::Released, fx);
            return Response::Released { id };
        }
        match self.waiter(id) {
            Some(w) if &w.client != client => Response::Denied(Denial::NotOwner { id }),
            Some(_) => {
                self.drop_waiter(id, End::Cancelled, fx);
                Response::Cancelled { id }
            }
            None => Response::Denied(self.gone(id)),
        }
    }

    fn revoke(&mut self, id: CheckoutId, reason: &str, fx: &mut Fx) -> Response {
        if reason.len() > MAX_REASON_LEN {
            return Response::Denied(bad("reason"));
        }
        let end = End::Revoked { reason: reason.to_string() };
        if self.live_checkout(id).is_some() {
            self.end_checkout(id, end, fx);
        } else if self.waiter(id).is_some() {
            self.drop_waiter(id, end, fx);
        } else {
            return Response::Denied(self.gone(id));
        }
        Response::Revoked { id }
    }

    /// A new license replaces the old one whole; features and pools it drops that are
    /// still held stay, retired, until their checkouts end.
    fn install(&mut self, install: &Install, fx: &mut Fx) -> Response {
        let mut features = Vec::new();
        let mut old = std::mem::take(&mut self.features);
        for ent in &install.entitlements {
            let name = &ent.feature;
            let specs = (install.policy.pools.get(name).cloned())
                .unwrap_or_else(|| vec![open_pool("default".parse().expect("a pool name"))]);
            let feature = match old.iter().position(|f| f.name() == name) {
                Some(i) => {
                    let mut f = old.remove(i);
                    f.reconfigure(ent.clone(), specs);
                    f
                }
                None => Feature::new(ent.clone(), specs),
            };
            if feature.in_use() == 0 {
                self.clean.insert(name.clone());
            } else {
                self.clean.remove(name);
            }
            features.push(feature);
        }
        for mut f in old.into_iter().filter(|f| f.in_use() > 0) {
            let ent = Entitlement { tokens_total: 0, ..f.ent.clone() };
            f.reconfigure(ent, Vec::new());
            f.retired = true;
            features.push(f);
        }
        features.sort_by(|a, b| a.name().cmp(b.name()));
        let licensed: Vec<FeatureName> =
            features.iter().filter(|f| !f.retired).map(|f| f.name().clone()).collect();
        self.features = features;
        self.policy = Policy { pools: BTreeMap::new(), ..install.policy.clone() };
        fx.freed_all = true;
        self.woken_all = true;
        let count = licensed.len() as u64;
        fx.events.push(Event::Installed { features: licensed });
        Response::Installed { features: count }
    }
}
