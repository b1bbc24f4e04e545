//! The comparisons after every step: the state's output against the model's prediction,
//! its queries against the model's views, and checks of the model's own state against
//! bounds that follow from the doc independently of how the model plans grants.

use std::collections::BTreeMap;

use lsm_core::{
    CheckoutFilter, CheckoutId, CheckoutRequest, CheckoutStatus, Command, Denial, Entitlement,
    Event, FeatureName, FeatureStatus, GrantedItem, InstallError, Meta, Output, PoolName,
    PoolStatus, Request, Response, State, WaiterInfo,
};
use rand::Rng;

use crate::model::{Disposition, Model, Waiter, bad};
use crate::{Ctx, Run};

/// A denial with its free-text parts blanked, so answers compare without the wording.
fn blank(denial: &Denial) -> Denial {
    match denial {
        Denial::BadRequest { field, .. } => bad(field.clone()),
        Denial::BadInstall(_) => {
            Denial::BadInstall(InstallError { field: String::new(), problem: String::new() })
        }
        other => other.clone(),
    }
}

fn blank_response(response: &Response) -> Response {
    match response {
        Response::Denied(denial) => Response::Denied(blank(denial)),
        other => other.clone(),
    }
}

/// An output with the free-text parts of its refusals blanked.
fn blank_output(out: &Output) -> Output {
    let events = (out.events.iter())
        .map(|event| match event {
            Event::Denied { client, denial } => {
                Event::Denied { client: client.clone(), denial: blank(denial) }
            }
            other => other.clone(),
        })
        .collect();
    Output { response: blank_response(&out.response), events }
}

/// Checks a grant the model is about to record against the feature total, the pool cap,
/// the license dates and the rules, with usage counted from the live checkouts.
pub fn grant_bounds(model: &Model, ctx: &Ctx, req: &CheckoutRequest, item: &GrantedItem) {
    let f = model.feature(&item.feature).expect("granted features exist");
    let held = model.held(&item.feature);
    let in_use: u64 = held.values().sum();
    let total = f.ent.tokens_total;
    ensure!(
        ctx,
        in_use + item.tokens <= total,
        "the model grants {item:?} with {in_use} of {total} tokens in use"
    );
    let pool = f.pool(&item.pool).filter(|p| !p.retired);
    let Some(pool) = pool else {
        ctx.fail(format_args!("the model grants {item:?} from a pool not configured"))
    };
    let pool_use = held.get(&item.pool).copied().unwrap_or(0);
    ensure!(
        ctx,
        pool_use + item.tokens <= pool.cap,
        "the model grants {item:?} with {pool_use} in use and a cap of {}",
        pool.cap
    );
    let ent = &f.ent;
    ensure!(
        ctx,
        (ent.starts_at_ms..ent.expires_at_ms).contains(&model.now),
        "the model grants {item:?} outside the license dates"
    );
    let access = model.access(&item.feature, &req.user, &req.host);
    let max = model.max_rules(&item.feature, &req.user, &req.host, item.tokens);
    ensure!(ctx, access.is_ok() && max.is_ok(), "the model grants {item:?}: {access:?} {max:?}");
}

/// The queue promise of the doc: when tokens of a feature come free, or a waiter that
/// blocked it leaves, the same command serves every waiter of that feature that fits,
/// unless a blocking waiter ahead of it would be passed or the global limit is reached,
/// and drops those that can never fit.
fn queue_progress(model: &Model, ctx: &Ctx) {
    if model.woken.is_empty() && !model.woken_all {
        return;
    }
    for w in &model.queue {
        if !model.woken_all && !w.request.items.iter().any(|i| model.woken.contains_key(&i.feature))
        {
            continue;
        }
        match model.plan(&w.request, true) {
            Ok(takes) => {
                let held_back = (model.queue.iter()).any(|b| {
                    b.key() < w.key()
                        && model.blocking(b)
                        && takes.iter().any(|t| model.competes(b, t))
                });
                // Step 4: at the global limit nothing more is granted, from the queue either.
                let full = model.live.len() as u64 >= model.limits.max_checkouts;
                ensure!(
                    ctx,
                    held_back || full,
                    "{w:?} fits and no blocking waiter ahead of it competes, but it is still \
                     queued although the queue had to be served for its features: {:?}",
                    model.woken
                );
            }
            Err(refusal) => ensure!(
                ctx,
                refusal.transient,
                "{w:?} can never be granted ({:?}), but it is still queued",
                refusal.denial
            ),
        }
    }
}

/// Leases and waits that were due are gone.
fn nothing_overdue(model: &Model, ctx: &Ctx, command: &Command) {
    let now = model.now;
    if let Some(c) = model.live.iter().find(|c| c.lease_expires_at_ms <= now) {
        ctx.fail(format_args!(
            "checkout {:?} (borrowed: {}) is still live after {command:?} although its lease \
             ended at {} <= now {now}",
            c.id, c.borrowed, c.lease_expires_at_ms
        ));
    }
    if let Some(w) = model.queue.iter().find(|w| w.wait_expires_at_ms <= now) {
        ctx.fail(format_args!(
            "queued request {:?} is still queued although its wait ended at {} <= now {now}",
            w.id, w.wait_expires_at_ms
        ));
    }
}

/// The parcels of every pool add up to its live checkouts and respect the doc's
/// invariants, and the free tokens of a clean feature cover the idle reserve of every
/// pool that does not lend.
fn accounting(model: &Model, ctx: &Ctx) {
    for f in &model.features {
        let name = f.name();
        let held = model.held(name);
        let counted: BTreeMap<PoolName, u64> = (f.pools.iter())
            .map(|p| (p.spec.name.clone(), f.used(&p.spec.name)))
            .filter(|&(_, used)| used > 0)
            .collect();
        ensure_eq!(ctx, counted, held, "{name}: parcels against the live checkouts");
        let mut backed = 0;
        for p in &f.pools {
            let pool = &p.spec.name;
            ensure!(
                ctx,
                f.own(pool) + f.lent(pool) <= p.spec.reserve,
                "{name}/{pool}: own {} and lent {} over the reserve {}",
                f.own(pool),
                f.lent(pool),
                p.spec.reserve
            );
            ensure!(ctx, p.spec.lend || f.lent(pool) == 0, "{name}/{pool} lends but may not");
            backed += f.used(pool) - f.unbacked(pool);
        }
        ensure!(ctx, backed <= f.ent.tokens_total, "{name}: {backed} backed tokens over the total");
        let shared: u64 = f.pools.iter().map(|p| f.shared(&p.spec.name)).sum();
        ensure!(
            ctx,
            shared <= f.shared_size(),
            "{name}: {shared} shared tokens over the remainder"
        );
        if !model.clean.contains(name) {
            continue;
        }
        let free = f.ent.tokens_total.saturating_sub(held.values().sum());
        let idle: u64 = (f.pools.iter().filter(|p| !p.spec.lend))
            .map(|p| p.spec.reserve.saturating_sub(held.get(&p.spec.name).copied().unwrap_or(0)))
            .sum();
        ensure!(
            ctx,
            free >= idle,
            "{name}: {free} tokens free but {idle} reserved and idle ({held:?})"
        );
    }
}

/// The queue as `list_queue` should show it.
fn waiter_infos(model: &Model) -> Vec<WaiterInfo> {
    let mut waiters: Vec<&Waiter> = model.queue.iter().collect();
    waiters.sort_by_key(|w| w.key());
    waiters.into_iter().map(|w| waiter_info(model, w)).collect()
}

fn waiter_info(model: &Model, w: &Waiter) -> WaiterInfo {
    let CheckoutRequest { items, user, host, job, .. } = w.request.clone();
    let (id, client, bypassed) = (w.id, w.client.clone(), w.bypassed);
    let (queued_at_ms, wait_expires_at_ms) = (w.since_ms, w.wait_expires_at_ms);
    let (position, blocking, priority) = (model.position(w), model.blocking(w), w.wait().priority);
    WaiterInfo {
        id,
        position,
        client,
        user,
        host,
        job,
        items,
        priority,
        bypassed,
        blocking,
        queued_at_ms,
        wait_expires_at_ms,
    }
}

fn checkout_status(model: &Model, id: CheckoutId) -> CheckoutStatus {
    if let Some(c) = model.live_checkout(id) {
        CheckoutStatus::Live(c.clone())
    } else if let Some(w) = model.waiter(id) {
        CheckoutStatus::Queued(waiter_info(model, w))
    } else {
        CheckoutStatus::Gone(model.gone(id))
    }
}

/// The features as `features_status` should show them.
fn features_status(model: &Model) -> Vec<FeatureStatus> {
    (model.features.iter())
        .map(|f| {
            let pools = (f.pools.iter())
                .map(|pool| {
                    let name = &pool.spec.name;
                    PoolStatus {
                        pool: name.clone(),
                        reserve: pool.spec.reserve,
                        cap: pool.cap,
                        in_use: f.used(name),
                        available: f.available(pool),
                        lent: f.lent(name),
                        borrowed: f.borrowed(name),
                        retired: pool.retired,
                    }
                })
                .collect();
            let Entitlement { feature, license, tokens_total, starts_at_ms, expires_at_ms, .. } =
                f.ent.clone();
            let queued = model.queue.iter().filter(|w| w.wants(&feature)).count() as u64;
            let expired = model.now >= expires_at_ms;
            let (in_use, free, retired) = (f.in_use(), f.free(), f.retired);
            FeatureStatus {
                feature,
                license,
                tokens_total,
                in_use,
                free,
                queued,
                starts_at_ms,
                expires_at_ms,
                expired,
                retired,
                pools,
            }
        })
        .collect()
}

impl Run {
    /// The state's answer and events must be the model's, up to the wording of refusals; a
    /// replay must repeat the first answer exactly.
    pub fn compare_output(
        &mut self,
        command: &Command,
        out: &Output,
        expected: &Output,
        disposition: Disposition,
    ) {
        let ctx = &self.ctx;
        let actual = blank_output(out);
        let notes = &self.model.rewalks;
        ensure_eq!(ctx, actual.response, expected.response, "answer to {command:?} {notes:?}");
        for (i, (a, e)) in actual.events.iter().zip(&expected.events).enumerate() {
            ensure_eq!(ctx, a, e, "event {i} of {:?} {notes:?}", out.events);
        }
        let (got, want) = (actual.events.len(), expected.events.len());
        ensure_eq!(
            ctx,
            got,
            want,
            "events {:?}, expected {:?} {notes:?}",
            out.events,
            expected.events
        );
        let Command::Request(req) = command else { return };
        let who = self.clients.iter().position(|c| c.id == req.client).expect("a generated client");
        let sent = &mut self.clients[who].sent;
        let original = sent.iter_mut().rev().find(|(r, _)| r.seq == req.seq);
        match (disposition, original) {
            (Disposition::New, Some((_, answer))) => *answer = Some(out.response.clone()),
            (Disposition::Replay, Some((_, Some(first)))) => {
                ensure_eq!(self.ctx, out.response, *first, "replay of seq {}", req.seq)
            }
            _ => {}
        }
    }

    /// A refused or replayed request must do what a `Tick` at the same time does, plus its
    /// `Denied` event, and leave the same checkouts, queue and features.
    pub fn compare_with_tick(&self, mut twin: State, meta: Meta, out: &Output) {
        let ctx = &self.ctx;
        let tick = match twin.apply(meta, Command::Tick) {
            Ok(tick) => tick,
            Err(e) => ctx.fail(format_args!("twin tick failed: {e}")),
        };
        let events: Vec<&Event> =
            out.events.iter().filter(|e| !matches!(e, Event::Denied { .. })).collect();
        ensure_eq!(ctx, events, tick.events.iter().collect::<Vec<_>>(), "events against a tick");
        let all = CheckoutFilter { limit: Some(u64::MAX), ..CheckoutFilter::default() };
        ensure_eq!(
            ctx,
            self.state.list_checkouts(&all),
            twin.list_checkouts(&all),
            "checkouts against a tick"
        );
        ensure_eq!(ctx, self.state.list_queue(None), twin.list_queue(None), "queue against a tick");
        ensure_eq!(
            ctx,
            self.state.features_status(),
            twin.features_status(),
            "features against a tick"
        );
        let (mut mine, theirs) = (self.state.summary(), twin.summary());
        mine.sessions = theirs.sessions;
        ensure_eq!(ctx, mine, theirs, "summary against a tick");
    }

    /// Two different replays by the same client leave identical states.
    pub fn compare_with_alt_retry(&self, alt_state: &mut State, meta: Meta, alt: Request) {
        let ctx = &self.ctx;
        let kept = self.model.session(&alt.client).is_some_and(|s| s.reply(alt.seq).is_some());
        let client = self.clients.iter().find(|c| c.id == alt.client).expect("a generated client");
        let first = client.sent.iter().find(|(r, _)| r.seq == alt.seq).and_then(|(_, a)| a.clone());
        let (true, Some(reply)) = (kept, first) else { return };
        let out = match alt_state.apply(meta, Command::Request(alt)) {
            Ok(out) => out,
            Err(e) => ctx.fail(format_args!("alternative retry failed: {e}")),
        };
        ensure_eq!(ctx, out.response, reply, "alternative retry");
        ensure_eq!(
            ctx,
            alt_state.state_hash_hex(),
            self.state.state_hash_hex(),
            "hash after another retry"
        );
    }

    pub fn check_state(&mut self, command: &Command, out: &Output) {
        let ctx = &self.ctx;
        let model = &self.model;
        if let Err(e) = self.state.check_invariants() {
            ctx.fail(format_args!("check_invariants after {command:?}: {e}"));
        }
        nothing_overdue(model, ctx, command);
        let summary = self.state.summary();
        let expected = (self.index, model.now, model.live.len() as u64, model.queue.len() as u64);
        let actual = (summary.last_index, summary.now_ms, summary.checkouts, summary.queued);
        ensure_eq!(ctx, actual, expected, "summary (index, now, checkouts, queued)");
        ensure_eq!(ctx, summary.sessions, model.sessions.len() as u64, "sessions");
        ensure_eq!(ctx, summary.next_expiry, model.next_expiry(), "next expiry");

        let filter = CheckoutFilter { limit: Some(10_000), ..CheckoutFilter::default() };
        let listed = self.state.list_checkouts(&filter);
        let mut live: Vec<&lsm_core::Checkout> = model.live.iter().collect();
        live.sort_by_key(|c| c.id);
        if listed.len() != live.len() || !listed.iter().zip(&live).all(|(a, b)| a == *b) {
            let first = listed.iter().zip(&live).find(|(a, b)| *a != **b);
            ctx.fail(format_args!(
                "list_checkouts differs from the model ({} listed, {} in the model); first \
                 difference: {first:?}",
                listed.len(),
                model.live.len()
            ));
        }
        ensure_eq!(ctx, self.state.list_queue(None), waiter_infos(model), "list_queue");

        let status = self.state.features_status();
        ensure_eq!(ctx, status, features_status(model), "features_status");
        accounting(model, ctx);
        queue_progress(model, ctx);

        // Every token that moved is in a `Granted` or `Ended` event.
        let mut expected: BTreeMap<(FeatureName, PoolName), i128> =
            self.usage.iter().map(|(k, &n)| (k.clone(), i128::from(n))).collect();
        for event in &out.events {
            let (items, sign) = match event {
                Event::Granted { items, .. } => (items, 1),
                Event::Ended { items, .. } => (items, -1),
                _ => continue,
            };
            for item in items.iter() {
                *expected.entry((item.feature.clone(), item.pool.clone())).or_default() +=
                    sign * i128::from(item.tokens);
            }
        }
        expected.retain(|_, n| *n != 0);
        let actual: BTreeMap<(FeatureName, PoolName), u64> = (status.iter())
            .flat_map(|s| {
                s.pools.iter().map(move |p| ((s.feature.clone(), p.pool.clone()), p.in_use))
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        let actual_wide: BTreeMap<_, i128> =
            actual.iter().map(|(k, &n)| (k.clone(), i128::from(n))).collect();
        ensure_eq!(ctx, actual_wide, expected, "pool usage against the events");
        self.usage = actual;

        let id = CheckoutId(self.rng.random_range(0..self.model.next_id + 2));
        ensure_eq!(
            self.ctx,
            self.state.checkout_status(id),
            checkout_status(&self.model, id),
            "status of {id:?}"
        );
    }
}
