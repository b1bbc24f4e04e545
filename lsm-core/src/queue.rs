//! The queue: requests that wait for busy tokens instead of being denied.
//!
//! Order: higher priority first, then arrival (the id, which grows). Whenever tokens of a
//! feature come free, the same `apply` walks the queue in order and grants every waiter
//! that now fits, so a freed token goes to the queue before any later request.
//!
//! A small request may be granted past a larger one that does not fit yet. Such a grant
//! *competes* with the waiter when it takes tokens the waiter is waiting for: tokens of one
//! of its features, from the waiter's own pool, or from the shared remainder or a lender.
//! A grant served wholly from another pool's own reserve does not compete (reserves are
//! guaranteed), and a waiter held back only by a max rule is waiting for its own user to
//! release, not for tokens, so nothing competes with it.
//!
//! Anti-starvation rule: every competing grant counts as a bypass of the waiter. Once a
//! waiter has been bypassed `max_queue_bypass` times, it blocks: no later request, queued
//! or new, may be granted anything that competes with it until it is granted or leaves the
//! queue. A new request refused for that reason gets `QueueBlocked`, which is transient, so
//! it may queue behind.
//!
//! A waiter keeps its place only while its client polls it (a heartbeat on its id) within
//! `poll_ttl_ms`; a waiter that stops polling is dropped.

use std::collections::BTreeSet;

use crate::checkout::Planned;
use crate::command::{CheckoutRequest, Wait};
use crate::ids::{CheckoutId, ClientId};
use crate::response::{Denial, End, Event, Queued, Response};
use crate::state::{Effects, State, Waiter};

impl State {
    /// Puts a request that was refused for `denial` in the queue.
    pub(crate) fn enqueue(
        &mut self,
        client: &ClientId,
        request: CheckoutRequest,
        wait: Wait,
        denial: &Denial,
        fx: &mut Effects,
    ) -> Response {
        let limits = &self.limits;
        if self.waiters.len() as u64 >= limits.max_queue_len {
            return Response::Denied(Denial::limit("max_queue_len", limits.max_queue_len));
        }
        let load = self.clients.load(client);
        if load.queued >= limits.max_queued_per_client {
            let max = limits.max_queued_per_client;
            return Response::Denied(Denial::limit("max_queued_per_client", max));
        }
        let id = self.allocate_id();
        let wait_expires_at_ms = self.now_ms.saturating_add(wait.poll_ttl_ms);
        let waiter = Waiter {
            id,
            client: client.clone(),
            priority: wait.priority,
            poll_ttl_ms: wait.poll_ttl_ms,
            wait_expires_at_ms,
            bypassed: 0,
            short_of_tokens: short_of_tokens(denial),
            queued_at_ms: self.now_ms,
            request,
        };
        self.index.waits.insert((wait_expires_at_ms, id));
        self.index.queue.insert((u8::MAX - waiter.priority, id));
        for item in &waiter.request.items {
            self.index.queue_by_feature.entry(item.feature.clone()).or_default().insert(id);
        }
        self.waiters.insert(id, waiter);
        self.adjust_load(client, |l| l.queued += 1);
        let position = self.position(id);
        fx.events.push(Event::Queued { id, client: client.clone(), position });
        Response::Queued(Queued { id, position, wait_expires_at_ms })
    }

    /// A poll of a queued request: renews its wait and tells its position.
    pub(crate) fn poll_waiter(&mut self, client: &ClientId, id: CheckoutId) -> Response {
        let now = self.now_ms;
        let waiter = self.waiters.get_mut(&id).expect("caller checked");
        if &waiter.client != client {
            return Response::Denied(Denial::NotOwner { id });
        }
        let renewed = now.saturating_add(waiter.poll_ttl_ms);
        if renewed > waiter.wait_expires_at_ms {
            self.index.waits.remove(&(waiter.wait_expires_at_ms, id));
            waiter.wait_expires_at_ms = renewed;
            self.index.waits.insert((renewed, id));
        }
        let wait_expires_at_ms = waiter.wait_expires_at_ms;
        Response::Queued(Queued { id, position: self.position(id), wait_expires_at_ms })
    }

    /// Removes a waiter from the queue and its indexes.
    fn take_waiter(&mut self, id: CheckoutId) -> Option<Waiter> {
        let waiter = self.waiters.remove(&id)?;
        self.index.waits.remove(&(waiter.wait_expires_at_ms, id));
        self.index.queue.remove(&(u8::MAX - waiter.priority, id));
        for item in &waiter.request.items {
            if let Some(set) = self.index.queue_by_feature.get_mut(&item.feature) {
                set.remove(&id);
                if set.is_empty() {
                    self.index.queue_by_feature.remove(&item.feature);
                }
            }
        }
        self.adjust_load(&waiter.client, |l| l.queued -= 1);
        Some(waiter)
    }

    /// Drops a waiter without a grant. Requests behind it may now be served.
    pub(crate) fn drop_waiter(&mut self, id: CheckoutId, end: End, fx: &mut Effects) {
        if let Some(waiter) = self.take_waiter(id) {
            if self.is_blocking(&waiter) {
                fx.freed.extend(waiter.request.items.iter().map(|i| i.feature.clone()));
            }
            fx.events.push(Event::Dequeued { id, end: end.clone() });
            self.bury(id, end);
        }
    }

    /// 1-based position of a waiter in queue order.
    pub(crate) fn position(&self, id: CheckoutId) -> u64 {
        let rank = self.index.queue.iter().take_while(|&&(_, other)| other != id).count();
        rank as u64 + 1
    }

    /// Whether a grant planned as `plan` takes tokens that waiter `w` is waiting for.
    fn competes(&self, w: &Waiter, plan: &Planned) -> bool {
        if !w.short_of_tokens {
            return false;
        }
        let Some(item) = w.request.items.iter().find(|i| i.feature == plan.feature) else {
            return false;
        };
        let Some(feature) = self.features.get(&plan.feature) else { return false };
        let Ok(pool) = self.resolve_pool(feature, item) else { return false };
        pool == plan.pool || plan.alloc.shared > 0 || !plan.alloc.borrowed.is_empty()
    }

    /// True when `w` has been bypassed often enough to block competing grants.
    fn is_blocking(&self, w: &Waiter) -> bool {
        w.short_of_tokens && w.bypassed >= self.limits.max_queue_bypass
    }

    /// A blocking waiter that a grant planned as `plan` would compete with, if any.
    pub(crate) fn blocking_waiter(&self, plan: &Planned) -> Option<CheckoutId> {
        let ids = self.index.queue_by_feature.get(&plan.feature)?;
        ids.iter().copied().find(|id| {
            let w = &self.waiters[id];
            self.is_blocking(w) && self.competes(w, plan)
        })
    }

    /// Counts a bypass against every waiter (of `only`, if given) that a grant planned as
    /// `planned` competes with. Returns the waiters that start blocking because of it.
    pub(crate) fn bypass(
        &mut self,
        planned: &[Planned],
        only: Option<&BTreeSet<CheckoutId>>,
    ) -> Vec<CheckoutId> {
        if self.waiters.is_empty() {
            return Vec::new();
        }
        let mut passed = BTreeSet::new();
        for plan in planned {
            let Some(ids) = self.index.queue_by_feature.get(&plan.feature) else { continue };
            for id in ids {
                if only.is_none_or(|o| o.contains(id)) && self.competes(&self.waiters[id], plan) {
                    passed.insert(*id);
                }
            }
        }
        let mut now_blocking = Vec::new();
        for id in passed {
            let waiter = self.waiters.get_mut(&id).expect("indexed waiter exists");
            waiter.bypassed = waiter.bypassed.saturating_add(1);
            if waiter.bypassed == self.limits.max_queue_bypass {
                now_blocking.push(id);
            }
        }
        now_blocking
    }

    /// Grants every waiter that fits now, in queue order, unless a blocking waiter ahead of
    /// it would be passed. Only waiters of features that came free are tried. A blocking
    /// waiter that is granted or dropped releases what it held back, so the queue is
    /// walked again.
    pub(crate) fn drain_queue(&mut self, fx: &mut Effects) {
        while self.drain_pass(fx) {}
    }

    /// One walk of the queue; true if a blocking waiter was granted or dropped.
    fn drain_pass(&mut self, fx: &mut Effects) -> bool {
        if self.waiters.is_empty() || (fx.freed.is_empty() && !fx.freed_all) {
            return false;
        }
        let mut walk_again = false;
        let order: Vec<CheckoutId> = self.index.queue.iter().map(|&(_, id)| id).collect();
        let mut pending = BTreeSet::new();
        let mut blockers: Vec<CheckoutId> = Vec::new();
        for id in order {
            let waiter = &self.waiters[&id];
            let dirty =
                fx.freed_all || waiter.request.items.iter().any(|i| fx.freed.contains(&i.feature));
            if dirty {
                match self.plan_checkout(&waiter.request, Some(id)) {
                    Ok(planned) => {
                        let blocked = blockers.iter().any(|b| {
                            planned.iter().any(|plan| self.competes(&self.waiters[b], plan))
                        });
                        if blocked {
                            self.waiters.get_mut(&id).expect("queued").short_of_tokens = true;
                        } else if (self.checkouts.len() as u64) < self.limits.max_checkouts {
                            blockers.extend(self.bypass(&planned, Some(&pending)));
                            let waiter = self.take_waiter(id).expect("waiter is queued");
                            if self.is_blocking(&waiter) {
                                walk_again = true;
                                fx.freed
                                    .extend(waiter.request.items.iter().map(|i| i.feature.clone()));
                            }
                            self.commit_grant(id, waiter.client, waiter.request, planned, true, fx);
                            continue;
                        } else {
                            break;
                        }
                    }
                    Err(denial) if !denial.is_transient() => {
                        // A blocker leaving frees what it held back, as a granted one does.
                        walk_again |= self.is_blocking(&self.waiters[&id]);
                        self.drop_waiter(id, End::QueueDenied(Box::new(denial)), fx);
                        continue;
                    }
                    Err(denial) => {
                        let short = short_of_tokens(&denial);
                        self.waiters.get_mut(&id).expect("queued").short_of_tokens = short;
                    }
                }
            }
            pending.insert(id);
            if self.is_blocking(&self.waiters[&id]) {
                blockers.push(id);
            }
        }
        walk_again
    }
}

/// True when a transient refusal is for want of tokens rather than a max rule.
fn short_of_tokens(denial: &Denial) -> bool {
    !matches!(denial, Denial::OverLimit { .. })
}
