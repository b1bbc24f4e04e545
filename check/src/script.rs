//! A small builder of histories for the unit tests: events at given milliseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::history::{Entry, Event, LiveCheckout, Loss, Outcome, Tokens};
use crate::{Capacity, Checks, Liveness, Property, Report};

/// `n` tokens of `feature` in `pool`.
pub fn tokens(feature: &str, pool: &str, n: u64) -> Vec<Tokens> {
    vec![Tokens::new(feature, pool, n)]
}

/// `dyna`: 10 tokens, pools `smp` (cap 6) and `mpp` (cap 10).
pub fn capacity() -> Capacity {
    Capacity {
        totals: BTreeMap::from([("dyna".into(), 10)]),
        caps: BTreeMap::from([
            (("dyna".into(), "smp".into()), 6),
            (("dyna".into(), "mpp".into()), 10),
        ]),
    }
}

/// The checks of the tests: [`capacity`], releases answered at any time, liveness within
/// 5 s with progress after the last heal.
pub fn checks() -> Checks {
    Checks {
        capacity: capacity(),
        release_window: None,
        liveness: Some(Liveness { bound: Duration::from_secs(5), progress_after_heal: true }),
    }
}

/// A history being written.
#[derive(Clone, Default)]
pub struct Script(pub Vec<Entry>);

impl Script {
    pub fn at(mut self, ms: u64, event: Event) -> Script {
        self.0.push(Entry { at: ms * 1000, event });
        self
    }
    /// `client` asks for its operation `op`, as job `<client>-op<op>`.
    pub fn invoke(self, ms: u64, client: &str, op: u64) -> Script {
        let job = format!("{client}-op{op}");
        let what = "job".into();
        self.at(
            ms,
            Event::Invoke { client: client.into(), op, job, what, want: vec![], wait: false },
        )
    }
    /// A grant with fence `id`.
    pub fn grant(self, ms: u64, client: &str, op: u64, id: u64, items: Vec<Tokens>) -> Script {
        self.grant_fenced(ms, client, op, id, id, items)
    }
    pub fn grant_fenced(
        self,
        ms: u64,
        client: &str,
        op: u64,
        id: u64,
        fence: u64,
        items: Vec<Tokens>,
    ) -> Script {
        self.at(ms, Event::Granted { client: client.into(), op, id, fence, items })
    }
    pub fn unknown(self, ms: u64, client: &str, op: u64, id: Option<u64>) -> Script {
        self.at(
            ms,
            Event::Unknown { client: client.into(), op, id, code: None, error: "timeout".into() },
        )
    }
    pub fn lost(self, ms: u64, client: &str, id: u64, loss: Loss) -> Script {
        self.at(ms, Event::Lost { client: client.into(), id, loss })
    }
    /// The release begins at `ms` and is answered released 1 ms later.
    pub fn release(self, ms: u64, client: &str, id: u64) -> Script {
        self.release_answered(ms, ms + 1, client, id, true, Outcome::Released)
    }
    pub fn release_answered(
        self,
        ms: u64,
        answered: u64,
        client: &str,
        id: u64,
        believed: bool,
        outcome: Outcome,
    ) -> Script {
        self.at(ms, Event::Release { client: client.into(), id, believed })
            .at(answered, Event::Released { client: client.into(), id, outcome })
    }
    /// A linearizable snapshot sent at `sent` and answered at `ms`; fences equal ids.
    pub fn snapshot(self, sent: u64, ms: u64, live: &[(u64, &str, Vec<Tokens>)]) -> Script {
        let checkouts = live
            .iter()
            .map(|(id, client, items)| LiveCheckout {
                id: *id,
                fence: *id,
                client: client.to_string(),
                job: None,
                items: items.clone(),
            })
            .collect();
        self.at(
            ms,
            Event::Snapshot { node: 1, invoked: sent * 1000, linearizable: true, checkouts },
        )
    }
    /// A node's local state at `ms`: checkouts (job, id), of the job's client.
    pub fn local(self, ms: u64, node: u64, live: &[(&str, u64)]) -> Script {
        let checkouts = live
            .iter()
            .map(|(job, id)| LiveCheckout {
                id: *id,
                fence: *id,
                client: job.rsplit_once("-op").map_or(*job, |(c, _)| c).to_string(),
                job: Some(job.to_string()),
                items: vec![],
            })
            .collect();
        self.at(ms, Event::Snapshot { node, invoked: ms * 1000, linearizable: false, checkouts })
    }
    pub fn check(&self) -> Report {
        Report::check(&self.0, &checks())
    }
    pub fn check_with(&self, checks: &Checks) -> Report {
        Report::check(&self.0, checks)
    }
}

/// The properties of a report's violations, in its order.
pub fn properties(report: &Report) -> Vec<Property> {
    report.violations.iter().map(|v| v.property).collect()
}

/// Two clients hold 4 SMP tokens each, one after the other, and are seen doing so.
pub fn good() -> Script {
    Script::default()
        .invoke(0, "a", 1)
        .grant(10, "a", 1, 1, tokens("dyna", "smp", 4))
        .snapshot(20, 30, &[(1, "a", tokens("dyna", "smp", 4))])
        .release(40, "a", 1)
        .invoke(50, "b", 1)
        .grant(60, "b", 1, 2, tokens("dyna", "smp", 4))
        .at(70, Event::Renewed { client: "b".into(), id: 2, renewals: 1 })
        .lost(80, "b", 2, Loss::Unreachable)
        .at(90, Event::Fault { what: "kill".into() })
        .at(100, Event::Heal { what: "kill".into() })
        .at(200, Event::Probe { ok: true, detail: "served".into() })
        .invoke(210, "a", 2)
        .grant(220, "a", 2, 3, tokens("dyna", "mpp", 10))
        .release(230, "a", 3)
}
