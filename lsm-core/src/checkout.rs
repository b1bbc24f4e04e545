//! Checkouts: grant, heartbeat, release, revoke and end.
//!
//! A checkout request is checked in three passes, so the answer names the first problem
//! in a fixed order: the request's own fields (`BadRequest`, limits), then what can never
//! be granted under the current license (unknown feature or pool, dates, exclusion, sizes
//! over a cap or total), then what may clear with time (busy tokens, max rules, a blocking
//! queued request). Only the last kind may wait in the queue. A grant of several features
//! is planned whole before anything is taken, so it is all or nothing.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::command::{CheckoutRequest, MAX_REASON_LEN};
use crate::ids::{CheckoutId, ClientId, FeatureName};
use crate::license::Demand;
use crate::pool::Allocation;
use crate::response::{Denial, End, Event, Grant, GrantedItem, Response};
use crate::state::{Checkout, Effects, State};

/// A planned grant, one entry per feature; most requests name one or two features, so
/// they are kept inline.
pub(crate) type Plan = SmallVec<[Planned; 2]>;

/// One feature of a planned grant.
pub(crate) struct Planned {
    pub feature: FeatureName,
    pub pool: usize,
    pub tokens: u64,
    pub alloc: Allocation,
}

impl State {
    /// Handles a checkout request from `client`.
    pub(crate) fn checkout(
        &mut self,
        client: &ClientId,
        req: CheckoutRequest,
        fx: &mut Effects,
    ) -> Response {
        if let Err(denial) = self.validate_request(&req) {
            return Response::Denied(denial);
        }
        let load = self.clients.load(client);
        if load.checkouts + load.queued >= self.limits.max_checkouts_per_client {
            let max = self.limits.max_checkouts_per_client;
            return Response::Denied(Denial::limit("max_checkouts_per_client", max));
        }
        let planned = match self.plan_checkout(&req, None) {
            Ok(planned) => planned,
            Err(denial) => {
                return match req.wait {
                    Some(wait) if denial.is_transient() => {
                        self.enqueue(client, req, wait, &denial, fx)
                    }
                    _ => Response::Denied(denial),
                };
            }
        };
        if self.checkouts.len() as u64 >= self.limits.max_checkouts {
            return Response::Denied(Denial::limit("max_checkouts", self.limits.max_checkouts));
        }
        let id = self.allocate_id();
        self.bypass(&planned, None);
        let grant = self.commit_grant(id, client.clone(), req, planned, false, fx);
        Response::Granted(grant)
    }

    /// Checks the fields of a request against each other and the limits.
    pub(crate) fn validate_request(&self, req: &CheckoutRequest) -> Result<(), Denial> {
        let limits = &self.limits;
        let items = req.items.len() as u64;
        if items == 0 {
            return Err(Denial::bad("items", "ask for at least one feature"));
        }
        if items > limits.max_items_per_request {
            return Err(Denial::bad(
                "items",
                format!("{items} features; the limit is {}", limits.max_items_per_request),
            ));
        }
        for (i, item) in req.items.iter().enumerate() {
            if req.items[..i].iter().any(|other| other.feature == item.feature) {
                return Err(Denial::bad(
                    format!("items[{i}].feature"),
                    format!("feature {} is asked for twice; merge the items", item.feature),
                ));
            }
            let field = || format!("items[{i}].demand");
            match item.demand {
                Demand::Tokens(0) => return Err(Denial::bad(field(), "ask for at least 1 token")),
                Demand::Tokens(n) if n > limits.max_tokens_per_request => {
                    return Err(Denial::bad(
                        field(),
                        format!("{n} tokens; the limit is {}", limits.max_tokens_per_request),
                    ));
                }
                Demand::Cores { cores: 0, .. } => {
                    return Err(Denial::bad(field(), "ask for at least 1 core"));
                }
                Demand::Cores { cores, .. } if cores > limits.max_cores_per_request => {
                    return Err(Denial::bad(
                        field(),
                        format!("{cores} cores; the limit is {}", limits.max_cores_per_request),
                    ));
                }
                _ => {}
            }
        }
        match req.borrow_until_ms {
            Some(until) => {
                if until <= self.now_ms {
                    return Err(Denial::bad(
                        "borrow_until_ms",
                        "the borrow must end in the future",
                    ));
                }
                if req.wait.is_some() {
                    return Err(Denial::bad("wait", "an offline borrow cannot wait in the queue"));
                }
            }
            None => {
                let ttl = req.lease_ttl_ms;
                if !(limits.min_lease_ttl_ms..=limits.max_lease_ttl_ms).contains(&ttl) {
                    return Err(Denial::bad(
                        "lease_ttl_ms",
                        format!(
                            "{ttl} is outside {}..={}",
                            limits.min_lease_ttl_ms, limits.max_lease_ttl_ms
                        ),
                    ));
                }
            }
        }
        if let Some(wait) = req.wait {
            let ttl = wait.poll_ttl_ms;
            if !(limits.min_queue_ttl_ms..=limits.max_queue_ttl_ms).contains(&ttl) {
                return Err(Denial::bad(
                    "wait.poll_ttl_ms",
                    format!(
                        "{ttl} is outside {}..={}",
                        limits.min_queue_ttl_ms, limits.max_queue_ttl_ms
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Plans a grant of the whole request, or names the first reason it cannot be made:
    /// permanent reasons across all items before transient ones. `waiter` is the queued
    /// request being served, if any (the queue handles blocking for those itself).
    pub(crate) fn plan_checkout(
        &self,
        req: &CheckoutRequest,
        waiter: Option<CheckoutId>,
    ) -> Result<Plan, Denial> {
        let mut sized: SmallVec<[_; 2]> = SmallVec::with_capacity(req.items.len());
        for item in &req.items {
            let feature = match self.features.get(&item.feature) {
                Some(f) if !f.retired => f,
                _ => return Err(Denial::UnknownFeature { feature: item.feature.clone() }),
            };
            let ent = &feature.entitlement;
            if self.now_ms < ent.starts_at_ms {
                return Err(Denial::NotStarted {
                    feature: item.feature.clone(),
                    starts_at_ms: ent.starts_at_ms,
                });
            }
            if self.now_ms >= ent.expires_at_ms {
                return Err(Denial::FeatureExpired {
                    feature: item.feature.clone(),
                    expired_at_ms: ent.expires_at_ms,
                });
            }
            if let Some(until) = req.borrow_until_ms
                && until - self.now_ms > ent.max_borrow_ms
            {
                return Err(Denial::BorrowNotAllowed {
                    feature: item.feature.clone(),
                    max_borrow_ms: ent.max_borrow_ms,
                });
            }
            let pool = self.resolve_pool(feature, item)?;
            let Some(tokens) = ent.cost.tokens_for(item.demand) else {
                return Err(Denial::bad("demand", "the cost in tokens does not fit in 64 bits"));
            };
            if tokens > ent.tokens_total {
                return Err(Denial::OverTotal {
                    feature: item.feature.clone(),
                    total: ent.tokens_total,
                    requested: tokens,
                });
            }
            let cap = feature.pools[pool].cap;
            if tokens > cap {
                return Err(Denial::PoolCap {
                    feature: item.feature.clone(),
                    pool: feature.pools[pool].spec.name.clone(),
                    cap,
                    held: feature.pools[pool].used,
                    requested: tokens,
                });
            }
            self.check_access(&item.feature, &req.user, &req.host)?;
            sized.push((feature, pool, tokens));
        }
        let mut planned = Plan::with_capacity(sized.len());
        for (feature, pool, tokens) in sized {
            let name = feature.name();
            self.check_max(name, &req.user, &req.host, tokens)?;
            let alloc = feature.plan(pool, tokens)?;
            let plan = Planned { feature: name.clone(), pool, tokens, alloc };
            if waiter.is_none()
                && let Some(blocker) = self.blocking_waiter(&plan)
            {
                return Err(Denial::QueueBlocked { feature: name.clone(), waiter: blocker });
            }
            planned.push(plan);
        }
        Ok(planned)
    }

    /// Takes the planned tokens and records the checkout.
    pub(crate) fn commit_grant(
        &mut self,
        id: CheckoutId,
        client: ClientId,
        req: CheckoutRequest,
        planned: Plan,
        from_queue: bool,
        fx: &mut Effects,
    ) -> Grant {
        for plan in &planned {
            let feature = self.features.get_mut(&plan.feature).expect("planned feature exists");
            feature.take(plan.pool, plan.tokens, &plan.alloc);
            self.add_held(&plan.feature, &req.user, &req.host, plan.tokens);
            fx.touched.insert(plan.feature.clone());
        }
        // Collected straight into the shared slice: one allocation per grant.
        let items: Arc<[GrantedItem]> = planned
            .into_iter()
            .map(|plan| {
                let pool = self.features[&plan.feature].pools[plan.pool].spec.name.clone();
                GrantedItem { feature: plan.feature, pool, tokens: plan.tokens }
            })
            .collect();
        let fence = self.next_fence;
        self.next_fence += 1;
        let now = self.now_ms;
        let (lease_ttl_ms, lease_expires_at_ms, borrowed) = match req.borrow_until_ms {
            Some(until) => (0, until, true),
            None => (req.lease_ttl_ms, now.saturating_add(req.lease_ttl_ms), false),
        };
        let checkout = Checkout {
            id,
            fence,
            client: client.clone(),
            user: req.user,
            host: req.host,
            job: req.job,
            items,
            granted_at_ms: now,
            lease_ttl_ms,
            lease_expires_at_ms,
            borrowed,
        };
        fx.events.push(Event::Granted {
            id,
            fence,
            client: client.clone(),
            user: checkout.user.clone(),
            host: checkout.host.clone(),
            job: checkout.job.clone(),
            items: checkout.items.clone(),
            from_queue,
        });
        let grant = grant_of(&checkout);
        if borrowed {
            self.index.leases.insert_aside(lease_expires_at_ms, id);
        } else {
            self.index.leases.insert(lease_expires_at_ms, id);
        }
        self.checkouts.insert(id, Box::new(checkout));
        self.adjust_load(&client, |l| l.checkouts += 1);
        grant
    }

    /// Renews a checkout's lease, or a queued request's wait.
    pub(crate) fn heartbeat(&mut self, client: &ClientId, id: CheckoutId) -> Response {
        if let Some(checkout) = self.checkouts.get_mut(&id) {
            if &checkout.client != client {
                return Response::Denied(Denial::NotOwner { id });
            }
            let renewed = self.now_ms.saturating_add(checkout.lease_ttl_ms);
            if !checkout.borrowed && renewed > checkout.lease_expires_at_ms {
                self.index.leases.remove(checkout.lease_expires_at_ms, id);
                checkout.lease_expires_at_ms = renewed;
                self.index.leases.insert(renewed, id);
            }
            return Response::Renewed(grant_of(checkout));
        }
        if self.waiters.contains_key(&id) {
            return self.poll_waiter(client, id);
        }
        Response::Denied(self.gone(id))
    }

    /// Gives back a checkout, or withdraws a queued request.
    pub(crate) fn release(
        &mut self,
        client: &ClientId,
        id: CheckoutId,
        fx: &mut Effects,
    ) -> Response {
        if let Some(checkout) = self.checkouts.get(&id) {
            if &checkout.client != client {
                return Response::Denied(Denial::NotOwner { id });
            }
            self.end_checkout(id, End::Released, fx);
            return Response::Released { id };
        }
        match self.waiters.get(&id) {
            Some(w) if &w.client != client => Response::Denied(Denial::NotOwner { id }),
            Some(_) => {
                self.drop_waiter(id, End::Cancelled, fx);
                Response::Cancelled { id }
            }
            None => Response::Denied(self.gone(id)),
        }
    }

    /// Admin revocation of a checkout or queued request. The id's tombstone makes any
    /// later heartbeat or release answer `Revoked`.
    pub(crate) fn revoke(&mut self, id: CheckoutId, reason: String, fx: &mut Effects) -> Response {
        if reason.len() > MAX_REASON_LEN {
            return Response::Denied(Denial::bad(
                "reason",
                format!("{} bytes; the limit is {MAX_REASON_LEN}", reason.len()),
            ));
        }
        let end = End::Revoked { reason };
        if self.checkouts.contains_key(&id) {
            self.end_checkout(id, end, fx);
        } else if self.waiters.contains_key(&id) {
            self.drop_waiter(id, end, fx);
        } else {
            return Response::Denied(self.gone(id));
        }
        Response::Revoked { id }
    }

    /// Ends a live checkout: returns its tokens and leaves a tombstone.
    pub(crate) fn end_checkout(&mut self, id: CheckoutId, end: End, fx: &mut Effects) {
        if let Some(checkout) = self.checkouts.remove(&id) {
            self.retire(checkout, end, fx);
        }
    }

    /// Returns the tokens of a checkout just taken out of the table and leaves a tombstone.
    #[expect(
        clippy::boxed_local,
        reason = "the box comes straight out of the table; unboxing would copy 160 bytes"
    )]
    fn retire(&mut self, checkout: Box<Checkout>, end: End, fx: &mut Effects) {
        let id = checkout.id;
        if self.checkouts.len() as u64 + 1 >= self.limits.max_checkouts {
            fx.freed_all = true;
        }
        self.index.leases.remove(checkout.lease_expires_at_ms, id);
        for item in checkout.items.iter().filter(|i| i.tokens > 0) {
            if let Some(feature) = self.features.get_mut(&item.feature) {
                let pool = feature.pools.iter().position(|p| p.spec.name == item.pool);
                feature.give_back(pool.expect("a held pool is never dropped"), item.tokens);
                feature.prune();
                if feature.retired && feature.in_use() == 0 {
                    self.features.remove(&item.feature);
                }
            }
            self.sub_held(&item.feature, &checkout.user, &checkout.host, item.tokens);
            fx.touched.insert(item.feature.clone());
            fx.freed.insert(item.feature.clone());
        }
        self.adjust_load(&checkout.client, |l| l.checkouts -= 1);
        fx.events.push(Event::Ended { id, items: checkout.items, end: end.clone() });
        self.bury(id, end);
    }
}

/// The client's view of a checkout.
pub(crate) fn grant_of(checkout: &Checkout) -> Grant {
    Grant {
        id: checkout.id,
        fence: checkout.fence,
        items: checkout.items.clone(),
        lease_expires_at_ms: checkout.lease_expires_at_ms,
        borrowed: checkout.borrowed,
    }
}
