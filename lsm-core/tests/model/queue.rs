//! The model's queue, written from "The queue" in `docs/design/licensing-model.md`:
//! waiters in a plain list ordered when needed (higher priority first, then arrival),
//! the competing-grant and bypass rule of anti-starvation, and serving the queue when
//! tokens come free.

use lsm_core::{
    CheckoutId, CheckoutRequest, ClientId, Denial, End, Event, FeatureName, Queued, Response, Wait,
};

use crate::Ctx;
use crate::model::{Fx, Model, limit};
use crate::pools::Take;

/// A queued request: the request as sent (its `wait` says the priority and poll TTL),
/// its id and owner, the span of its wait, and its standing under anti-starvation.
#[derive(Clone, Debug)]
pub struct Waiter {
    pub id: CheckoutId,
    pub client: ClientId,
    pub request: CheckoutRequest,
    /// When it joined, and when it leaves unless polled.
    pub since_ms: u64,
    pub wait_expires_at_ms: u64,
    /// Competing grants that passed it.
    pub bypassed: u32,
    /// Its last refusal was for want of tokens; a waiter held back only by a max rule
    /// waits for its own user, so nothing competes with it.
    pub short_of_tokens: bool,
}

impl Waiter {
    pub fn wait(&self) -> Wait {
        self.request.wait.expect("only a request with a wait is queued")
    }

    /// Queue order: higher priority first, then arrival (ids grow).
    pub fn key(&self) -> (std::cmp::Reverse<u8>, CheckoutId) {
        (std::cmp::Reverse(self.wait().priority), self.id)
    }

    pub fn wants(&self, feature: &FeatureName) -> bool {
        self.request.items.iter().any(|i| &i.feature == feature)
    }
}

impl Model {
    /// "Anti-starvation": a grant competes with a waiter short of tokens of the same
    /// feature when it takes from the waiter's pool, the shared remainder or a lender.
    pub fn competes(&self, w: &Waiter, take: &Take) -> bool {
        if !w.short_of_tokens {
            return false;
        }
        let Some(item) = w.request.items.iter().find(|i| i.feature == take.feature) else {
            return false;
        };
        let Some(f) = self.feature(&take.feature) else { return false };
        let Ok(pool) = self.route(f, item) else { return false };
        pool.spec.name == take.pool || take.beyond_own_reserve()
    }

    pub fn blocking(&self, w: &Waiter) -> bool {
        w.short_of_tokens && w.bypassed >= self.limits.max_queue_bypass
    }

    /// The oldest blocking waiter a new grant would compete with.
    pub fn blocker_of(&self, take: &Take) -> Option<CheckoutId> {
        let mut ids: Vec<CheckoutId> = (self.queue.iter())
            .filter(|w| self.blocking(w) && self.competes(w, take))
            .map(|w| w.id)
            .collect();
        ids.sort();
        ids.first().copied()
    }

    /// Counts a bypass against every waiter the grant competes with; for a grant from the
    /// queue, only against waiters ahead of it (`ahead_of`).
    pub fn count_bypasses(
        &mut self,
        takes: &[Take],
        ahead_of: Option<(std::cmp::Reverse<u8>, CheckoutId)>,
    ) {
        let passed: Vec<CheckoutId> = (self.queue.iter())
            .filter(|w| ahead_of.is_none_or(|key| w.key() < key))
            .filter(|w| takes.iter().any(|t| self.competes(w, t)))
            .map(|w| w.id)
            .collect();
        for id in passed {
            let w = self.waiter_mut(id);
            w.bypassed = w.bypassed.saturating_add(1);
        }
    }

    /// "Serving": walks the queue in order and grants every waiter of a freed feature
    /// that fits, unless a blocking waiter ahead of it would be passed; drops a waiter
    /// that can never fit. A blocking waiter that leaves lets through what it held back,
    /// so the queue is then walked again.
    pub fn serve(&mut self, ctx: &Ctx, fx: &mut Fx) {
        while !self.queue.is_empty() && (fx.freed_all || !fx.freed.is_empty()) {
            let mut order: Vec<(std::cmp::Reverse<u8>, CheckoutId)> =
                self.queue.iter().map(Waiter::key).collect();
            order.sort();
            let mut again = None;
            for (_, id) in order {
                let w = self.waiter(id).expect("only the visited waiter leaves").clone();
                if !fx.freed_all && !w.request.items.iter().any(|i| fx.freed.contains(&i.feature)) {
                    continue;
                }
                match self.plan(&w.request, true) {
                    Ok(takes) => {
                        let held_back = (self.queue.iter()).any(|b| {
                            b.key() < w.key()
                                && self.blocking(b)
                                && takes.iter().any(|t| self.competes(b, t))
                        });
                        if held_back {
                            self.waiter_mut(id).short_of_tokens = true;
                            continue;
                        }
                        if self.live.len() as u64 >= self.limits.max_checkouts {
                            break;
                        }
                        self.count_bypasses(&takes, Some(w.key()));
                        let was_blocking = self.blocking(&w);
                        self.queue.retain(|q| q.id != id);
                        if was_blocking {
                            again = Some(id);
                            for item in &w.request.items {
                                fx.freed.insert(item.feature.clone());
                                let why = || format!("blocking waiter {id:?} was granted");
                                self.woken.entry(item.feature.clone()).or_insert_with(why);
                            }
                        }
                        self.grant(ctx, (id, w.client), w.request, takes, true, fx);
                    }
                    Err(refusal) if !refusal.transient => {
                        if self.blocking(&w) {
                            again = Some(id);
                        }
                        self.drop_waiter(id, End::QueueDenied(Box::new(refusal.denial)), fx);
                    }
                    Err(refusal) => {
                        let short = !matches!(refusal.denial, Denial::OverLimit { .. });
                        self.waiter_mut(id).short_of_tokens = short;
                    }
                }
            }
            let Some(blocker) = again else { return };
            self.rewalks.push(format!("walked the queue again: blocking waiter {blocker:?} left"));
        }
    }

    pub fn enqueue(
        &mut self,
        client: &ClientId,
        req: &CheckoutRequest,
        denial: &Denial,
        fx: &mut Fx,
    ) -> Response {
        let l = &self.limits;
        if self.queue.len() as u64 >= l.max_queue_len {
            return Response::Denied(limit("max_queue_len", l.max_queue_len));
        }
        if self.load(client).1 >= l.max_queued_per_client {
            return Response::Denied(limit("max_queued_per_client", l.max_queued_per_client));
        }
        let wait = req.wait.expect("only a request with a wait is queued");
        let id = CheckoutId(self.next_id);
        self.next_id += 1;
        let waiter = Waiter {
            id,
            client: client.clone(),
            request: req.clone(),
            since_ms: self.now,
            wait_expires_at_ms: self.now + wait.poll_ttl_ms,
            bypassed: 0,
            short_of_tokens: !matches!(denial, Denial::OverLimit { .. }),
        };
        let position = self.position(&waiter);
        let wait_expires_at_ms = waiter.wait_expires_at_ms;
        self.queue.push(waiter);
        fx.events.push(Event::Queued { id, client: client.clone(), position });
        Response::Queued(Queued { id, position, wait_expires_at_ms })
    }
}
