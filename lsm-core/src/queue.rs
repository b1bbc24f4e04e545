//! The queue: requests that wait for busy tokens instead of being denied.
//!
//! Order: higher priority first, then arrival (the id, which grows). Whenever tokens of a
//! feature come free, the same `apply` walks the queue in order and grants every waiter
//! that now fits, so a freed token goes to the queue before any later request.
//!
//! A small request may be granted past a larger one that does not fit yet; that is a
//! bypass, and the larger waiter counts it. Anti-starvation rule: once a waiter has been
//! bypassed `max_queue_bypass` times, no later request (queued or new) may take tokens of
//! any of its features until it is granted or leaves the queue. A new request refused for
//! that reason gets `QueueBlocked`, which is transient, so it may queue behind.
//!
//! A waiter keeps its place only while its client polls it (a heartbeat on its id) within
//! `poll_ttl_ms`; a waiter that stops polling is dropped.

use std::collections::BTreeSet;

use crate::command::{CheckoutRequest, Wait};
use crate::ids::{CheckoutId, ClientId, FeatureName};
use crate::response::{Denial, End, Event, Queued, Response};
use crate::state::{Effects, State, Waiter};

impl State {
    /// Puts a request in the queue.
    pub(crate) fn enqueue(
        &mut self,
        client: &ClientId,
        request: CheckoutRequest,
        wait: Wait,
        fx: &mut Effects,
    ) -> Response {
        let limits = &self.limits;
        if self.waiters.len() as u64 >= limits.max_queue_len {
            return Response::Denied(Denial::limit("max_queue_len", limits.max_queue_len));
        }
        let load = self.clients.get(client).copied().unwrap_or_default();
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
            if waiter.bypassed >= self.limits.max_queue_bypass {
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

    /// A waiter that holds `feature` against later requests, if any.
    pub(crate) fn blocking_waiter(&self, feature: &FeatureName) -> Option<CheckoutId> {
        let ids = self.index.queue_by_feature.get(feature)?;
        let limit = self.limits.max_queue_bypass;
        ids.iter().copied().find(|id| self.waiters[id].bypassed >= limit)
    }

    /// Counts a bypass against every waiter sharing a feature with a new grant.
    pub(crate) fn note_bypass(&mut self, req: &CheckoutRequest) {
        if self.waiters.is_empty() {
            return;
        }
        let mut bypassed = BTreeSet::new();
        for item in &req.items {
            if let Some(ids) = self.index.queue_by_feature.get(&item.feature) {
                bypassed.extend(ids.iter().copied());
            }
        }
        for id in bypassed {
            if let Some(waiter) = self.waiters.get_mut(&id) {
                waiter.bypassed = waiter.bypassed.saturating_add(1);
            }
        }
    }

    /// Grants every waiter that fits now, in queue order, honouring blocking waiters.
    /// Only waiters of features that came free are considered.
    pub(crate) fn drain_queue(&mut self, fx: &mut Effects) {
        if self.waiters.is_empty() || (fx.freed.is_empty() && !fx.freed_all) {
            return;
        }
        let order: Vec<CheckoutId> = self.index.queue.iter().map(|&(_, id)| id).collect();
        let mut blocked: BTreeSet<FeatureName> = BTreeSet::new();
        let mut pending: Vec<CheckoutId> = Vec::new();
        for id in order {
            let waiter = &self.waiters[&id];
            let features: Vec<FeatureName> =
                waiter.request.items.iter().map(|i| i.feature.clone()).collect();
            let dirty = fx.freed_all || features.iter().any(|f| fx.freed.contains(f));
            if !dirty || features.iter().any(|f| blocked.contains(f)) {
                if waiter.bypassed >= self.limits.max_queue_bypass {
                    blocked.extend(features);
                }
                pending.push(id);
                continue;
            }
            match self.plan_checkout(&waiter.request, Some(id)) {
                Ok(planned) if (self.checkouts.len() as u64) < self.limits.max_checkouts => {
                    let waiter = self.take_waiter(id).expect("waiter is queued");
                    for &other in &pending {
                        let w = self.waiters.get_mut(&other).expect("pending is queued");
                        if w.request.items.iter().any(|i| features.contains(&i.feature)) {
                            w.bypassed = w.bypassed.saturating_add(1);
                            if w.bypassed >= self.limits.max_queue_bypass {
                                blocked.extend(w.request.items.iter().map(|i| i.feature.clone()));
                            }
                        }
                    }
                    self.commit_grant(id, waiter.client, waiter.request, planned, true, fx);
                }
                Ok(_) => break,
                Err(denial) if !denial.is_transient() => {
                    self.drop_waiter(id, End::QueueDenied(Box::new(denial)), fx);
                }
                Err(_) => {
                    if self.waiters[&id].bypassed >= self.limits.max_queue_bypass {
                        blocked.extend(features);
                    }
                    pending.push(id);
                }
            }
        }
    }
}
