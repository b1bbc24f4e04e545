//! Scenario tests: golden scripts that read like documentation of every licensing rule.
//!
//! Each file in `tests/scenarios/` is a goldenscript: commands, then `---`, then the
//! output the state machine printed for them. Run `UPDATE_GOLDENFILES=1 cargo test -p
//! lsm-core --test scenarios` to regenerate the outputs after a deliberate change, and
//! read the diff before committing it. After every command the runner also checks every
//! invariant and that a snapshot restores to an equal state, so a script cannot pass on a
//! state that does not add up.
//!
//! The commands (`key=value` arguments are optional unless shown without brackets):
//!
//! ```text
//! limits NAME=N...          starts over with an empty state with these limits
//! feature NAME tokens=N [license=ID] [starts=MS] [expires=MS] [cost=per_core/K/C[/BASE]|hpc/C[/BASE]] [borrow=MS]
//! pool FEATURE NAME [reserve=N] [cap=N] [lend=true] [keep=N] [modes=smp,mpp]
//! group NAME USER...          hostgroup NAME HOST...
//! rule max|include|exclude FEATURE (user=U|group=G|host=H|hostgroup=G|each_user) [N]
//! install [client=ID]         applies the features, pools, groups and rules given so far
//! time MS                     the leader's clock for the next commands
//! checkout CLIENT ITEM... [user=U] [host=H] [job=J] [ttl=MS] [wait=MS] [prio=P] [borrow=UNTIL] [seq=N] [ack=N]
//!     ITEM is FEATURE/TOKENS or FEATURE/CORESsmp or FEATURE/CORESmpp, optionally followed by @POOL
//! heartbeat|release CLIENT ID  revoke ID [reason=TEXT]  retry CLIENT
//! tick   leader NODE   status   checkouts [feature=F] [pool=P] [user=U] [host=H]   queue   show ID
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;

use goldenscript::{Argument, Command as Script, Context};
use lsm_core::*;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Drives a [`State`] from a script.
struct Runner {
    state: State,
    index: u64,
    now_ms: u64,
    pending: Install,
    /// Last request and its answer per client, for `retry` and auto-numbering.
    clients: BTreeMap<ClientId, (Request, Response)>,
}

impl Runner {
    fn new() -> Runner {
        Runner {
            state: State::default(),
            index: 0,
            now_ms: 0,
            pending: Install::default(),
            clients: BTreeMap::new(),
        }
    }

    fn apply(&mut self, command: Command) -> Result<String> {
        self.index += 1;
        let meta = Meta { index: self.index, now_ms: self.now_ms };
        let output = self.state.apply(meta, command.clone())?;
        if let Command::Request(request) = command {
            let entry = (request.clone(), output.response.clone());
            self.clients.insert(request.client, entry);
        }
        self.state.check_invariants()?;
        let restored = State::restore(&self.state.snapshot())?;
        if restored != self.state {
            return Err("the restored snapshot differs from the state".into());
        }
        let mut out = format!("→ {}\n", response(&output.response));
        for event in &output.events {
            writeln!(out, "  • {}", event_line(event))?;
        }
        Ok(out)
    }

    /// Builds a request for `client`, numbering it after the client's last one.
    fn request(&self, client: &str, args: &mut Args, op: Op) -> Result<Command> {
        let client: ClientId = client.parse()?;
        let last = self.clients.get(&client).map_or(0, |(r, _)| r.seq);
        let seq = args.num("seq")?.unwrap_or(last + 1);
        let ack = args.num("ack")?.unwrap_or(seq);
        Ok(Command::Request(Request { client, seq, ack, op }))
    }
}

impl goldenscript::Runner for Runner {
    type Command = Script;

    fn run(&mut self, command: &Script, _: &Context) -> Result<String> {
        let mut args = Args::new(command);
        let out = match command.name.as_str() {
            "feature" => {
                let feature: FeatureName = args.pos()?.parse()?;
                let cost = match args.key("cost").as_deref() {
                    None => CostRule::default(),
                    Some(spec) => parse_cost(spec)?,
                };
                self.pending.entitlements.push(Entitlement {
                    feature,
                    license: args.parsed("license")?.unwrap_or("site".parse()?),
                    tokens_total: args.num("tokens")?.ok_or("tokens= is required")?,
                    starts_at_ms: args.num("starts")?.unwrap_or(0),
                    expires_at_ms: args.num("expires")?.unwrap_or(u64::MAX),
                    cost,
                    max_borrow_ms: args.num("borrow")?.unwrap_or(0),
                });
                String::new()
            }
            "pool" => {
                let feature: FeatureName = args.pos()?.parse()?;
                let mut spec = PoolSpec::open(args.pos()?.parse()?);
                spec.reserve = args.num("reserve")?.unwrap_or(0);
                spec.cap = args.num("cap")?;
                spec.lend = args.key("lend").as_deref() == Some("true");
                spec.keep_idle = args.num("keep")?.unwrap_or(0);
                if let Some(modes) = args.key("modes") {
                    spec.modes = modes.split(',').map(parse_mode).collect::<Result<_>>()?;
                }
                self.pending.policy.pools.entry(feature).or_default().push(spec);
                String::new()
            }
            "group" | "hostgroup" => {
                let name: GroupName = args.pos()?.parse()?;
                let members = args.rest();
                if command.name == "group" {
                    let users =
                        members.iter().map(|m| m.parse()).collect::<std::result::Result<_, _>>()?;
                    self.pending.policy.user_groups.insert(name, users);
                } else {
                    let hosts =
                        members.iter().map(|m| m.parse()).collect::<std::result::Result<_, _>>()?;
                    self.pending.policy.host_groups.insert(name, hosts);
                }
                String::new()
            }
            "rule" => {
                let kind = args.pos()?.to_string();
                let feature: FeatureName = args.pos()?.parse()?;
                let subject = if let Some(u) = args.parsed("user")? {
                    Subject::User(u)
                } else if let Some(g) = args.parsed("group")? {
                    Subject::Group(g)
                } else if let Some(h) = args.parsed("host")? {
                    Subject::Host(h)
                } else if let Some(g) = args.parsed("hostgroup")? {
                    Subject::HostGroup(g)
                } else if args.flag("each_user") {
                    Subject::EachUser
                } else {
                    return Err("rule needs a subject".into());
                };
                let rule = match kind.as_str() {
                    "max" => Rule::Max { feature, subject, tokens: args.pos()?.parse()? },
                    "include" => Rule::Include { feature, subject },
                    "exclude" => Rule::Exclude { feature, subject },
                    other => return Err(format!("unknown rule kind {other}").into()),
                };
                self.pending.policy.rules.push(rule);
                String::new()
            }
            "install" => {
                let install = std::mem::take(&mut self.pending);
                let client = args.key("client").unwrap_or_else(|| "admin".into());
                let command = self.request(&client, &mut args, Op::Install(install))?;
                self.apply(command)?
            }
            "limits" => {
                let mut limits = serde_json::to_value(Limits::default())?;
                for (key, value) in std::mem::take(&mut args.keys) {
                    let slot = limits.get_mut(&key).ok_or(format!("no limit {key}"))?;
                    *slot = serde_json::Value::from(value.parse::<u64>()?);
                }
                self.state = State::new(serde_json::from_value(limits)?);
                String::new()
            }
            "time" => {
                self.now_ms = args.pos()?.parse()?;
                String::new()
            }
            "checkout" => {
                let client = args.pos()?.to_string();
                let items = args.rest().iter().map(|s| parse_item(s)).collect::<Result<_>>()?;
                let wait = args.num("wait")?.map(|poll_ttl_ms| Wait { priority: 0, poll_ttl_ms });
                let priority = args.num("prio")?.unwrap_or(0);
                let req = CheckoutRequest {
                    items,
                    user: args.parsed("user")?.unwrap_or("user".parse()?),
                    host: args.parsed("host")?.unwrap_or("host".parse()?),
                    job: args.parsed("job")?,
                    lease_ttl_ms: args.num("ttl")?.unwrap_or(30_000),
                    borrow_until_ms: args.num("borrow")?,
                    wait: wait.map(|w| Wait { priority: priority as u8, ..w }),
                };
                let command = self.request(&client, &mut args, Op::Checkout(req))?;
                self.apply(command)?
            }
            "heartbeat" | "release" => {
                let client = args.pos()?.to_string();
                let id = CheckoutId(args.pos()?.trim_start_matches('#').parse()?);
                let op =
                    if command.name == "heartbeat" { Op::Heartbeat(id) } else { Op::Release(id) };
                let command = self.request(&client, &mut args, op)?;
                self.apply(command)?
            }
            "revoke" => {
                let id = CheckoutId(args.pos()?.trim_start_matches('#').parse()?);
                let reason = args.key("reason").unwrap_or_default();
                let command = self.request("admin", &mut args, Op::Revoke { id, reason })?;
                self.apply(command)?
            }
            "retry" => {
                let client: ClientId = args.pos()?.parse()?;
                let (request, first) =
                    self.clients.get(&client).ok_or("no request to retry")?.clone();
                let before = (
                    self.state.list_checkouts(&CheckoutFilter::default()),
                    self.state.list_queue(None),
                );
                let out = self.apply(Command::Request(request))?;
                let after = (
                    self.state.list_checkouts(&CheckoutFilter::default()),
                    self.state.list_queue(None),
                );
                if self.clients[&client].1 != first {
                    return Err(format!("the retry was answered differently:\n{out}").into());
                }
                if before != after {
                    return Err("the retry changed the checkouts or the queue".into());
                }
                out
            }
            "tick" => self.apply(Command::Tick)?,
            "leader" => {
                let leader = args.pos()?.parse()?;
                self.apply(Command::LeaderChange { leader })?
            }
            "status" => status(&self.state),
            "summary" => format!("{:?}\n", self.state.summary()),
            "checkouts" => {
                let filter = CheckoutFilter {
                    feature: args.parsed("feature")?,
                    pool: args.parsed("pool")?,
                    user: args.parsed("user")?,
                    host: args.parsed("host")?,
                    ..CheckoutFilter::default()
                };
                let mut out = String::new();
                for c in self.state.list_checkouts(&filter) {
                    writeln!(out, "{}", checkout_line(&c))?;
                }
                out
            }
            "queue" => {
                let mut out = String::new();
                for w in self.state.list_queue(None) {
                    let items: Vec<String> = w.items.iter().map(item_text).collect();
                    writeln!(
                        out,
                        "{}. #{} {} ({}@{}) {} prio={} bypassed={}{} wait_until={}",
                        w.position,
                        w.id,
                        w.client,
                        w.user,
                        w.host,
                        items.join(" "),
                        w.priority,
                        w.bypassed,
                        if w.blocking { " blocking" } else { "" },
                        w.wait_expires_at_ms
                    )?;
                }
                out
            }
            "show" => {
                let id = CheckoutId(args.pos()?.trim_start_matches('#').parse()?);
                match self.state.checkout_status(id) {
                    CheckoutStatus::Live(c) => format!("live {}\n", checkout_line(&c)),
                    CheckoutStatus::Queued(w) => {
                        format!("queued #{} position={}\n", w.id, w.position)
                    }
                    CheckoutStatus::Gone(d) => format!("gone: {d}\n"),
                }
            }
            name => return Err(format!("unknown command {name}").into()),
        };
        args.finish()?;
        Ok(out)
    }
}

/// Argument access that fails on anything left unused, so a typo in a script is an error.
struct Args {
    pos: std::collections::VecDeque<String>,
    keys: BTreeMap<String, String>,
}

impl Args {
    fn new(command: &Script) -> Args {
        let mut args = Args { pos: Default::default(), keys: BTreeMap::new() };
        for arg in &command.args {
            match arg {
                Argument::Positional(v) => args.pos.push_back(v.clone()),
                Argument::KeyValue(k, v) => {
                    args.keys.insert(k.clone(), v.clone());
                }
                _ => {}
            }
        }
        args
    }

    fn pos(&mut self) -> Result<String> {
        self.pos.pop_front().ok_or_else(|| "missing argument".into())
    }

    fn rest(&mut self) -> Vec<String> {
        self.pos.drain(..).collect()
    }

    fn flag(&mut self, name: &str) -> bool {
        match self.pos.iter().position(|p| p == name) {
            Some(i) => self.pos.remove(i).is_some(),
            None => false,
        }
    }

    fn key(&mut self, name: &str) -> Option<String> {
        self.keys.remove(name)
    }

    fn parsed<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>>
    where
        T::Err: Error + 'static,
    {
        Ok(self.key(name).map(|v| v.parse()).transpose()?)
    }

    fn num(&mut self, name: &str) -> Result<Option<u64>> {
        self.parsed(name)
    }

    fn finish(&self) -> Result<()> {
        if let Some(p) = self.pos.front() {
            return Err(format!("unused argument {p}").into());
        }
        if let Some(k) = self.keys.keys().next() {
            return Err(format!("unused argument {k}=").into());
        }
        Ok(())
    }
}

fn parse_mode(s: &str) -> Result<ParallelMode> {
    match s {
        "smp" => Ok(ParallelMode::Smp),
        "mpp" => Ok(ParallelMode::Mpp),
        other => Err(format!("unknown mode {other}").into()),
    }
}

fn parse_cost(spec: &str) -> Result<CostRule> {
    let parts: Vec<u64> =
        spec.split('/').skip(1).map(str::parse).collect::<std::result::Result<_, _>>()?;
    match (spec.split('/').next(), parts.as_slice()) {
        (Some("per_core"), [k, c]) => {
            Ok(CostRule::PerCore { base_tokens: 0, tokens_per_core: *k, cores_included: *c })
        }
        (Some("per_core"), [k, c, b]) => {
            Ok(CostRule::PerCore { base_tokens: *b, tokens_per_core: *k, cores_included: *c })
        }
        (Some("hpc"), [c]) => Ok(CostRule::HpcPacks { base_tokens: 0, cores_included: *c }),
        (Some("hpc"), [c, b]) => Ok(CostRule::HpcPacks { base_tokens: *b, cores_included: *c }),
        _ => Err(format!("bad cost rule {spec}").into()),
    }
}

/// `lsdyna/4`, `lsdyna/16mpp`, `lsdyna/4@smp`.
fn parse_item(spec: &str) -> Result<Item> {
    let (spec, pool) = match spec.split_once('@') {
        Some((s, p)) => (s, Some(p.parse()?)),
        None => (spec, None),
    };
    let (feature, amount) = spec.split_once('/').ok_or("item is FEATURE/AMOUNT")?;
    let demand = match amount.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => {
            Demand::Cores { cores: amount[..at].parse()?, mode: parse_mode(&amount[at..])? }
        }
        None => Demand::Tokens(amount.parse()?),
    };
    Ok(Item { feature: feature.parse()?, demand, pool })
}

fn item_text(item: &Item) -> String {
    let amount = match item.demand {
        Demand::Tokens(n) => n.to_string(),
        Demand::Cores { cores, mode } => format!("{cores}{mode:?}").to_lowercase(),
    };
    match &item.pool {
        Some(pool) => format!("{}/{amount}@{pool}", item.feature),
        None => format!("{}/{amount}", item.feature),
    }
}

fn granted(items: &[GrantedItem]) -> String {
    let parts: Vec<String> =
        items.iter().map(|i| format!("{}/{}:{}", i.feature, i.pool, i.tokens)).collect();
    parts.join(" ")
}

fn response(response: &Response) -> String {
    match response {
        Response::Granted(g) | Response::Renewed(g) => format!(
            "{} #{} fence={} {} lease_until={}{}",
            if matches!(response, Response::Granted(_)) { "granted" } else { "renewed" },
            g.id,
            g.fence,
            granted(&g.items),
            g.lease_expires_at_ms,
            if g.borrowed { " borrowed" } else { "" }
        ),
        Response::Queued(q) => {
            format!("queued #{} position={} wait_until={}", q.id, q.position, q.wait_expires_at_ms)
        }
        Response::Released { id } => format!("released #{id}"),
        Response::Cancelled { id } => format!("cancelled #{id}"),
        Response::Revoked { id } => format!("revoked #{id}"),
        Response::Installed { features } => format!("installed {features} features"),
        Response::Ticked { expired } => format!("ticked, {expired} expired"),
        Response::LeaderChanged { extended } => {
            format!("leader changed, {extended} leases extended")
        }
        Response::Denied(d) => format!("denied: {d}"),
    }
}

fn event_line(event: &Event) -> String {
    match event {
        Event::Granted { id, fence, client, user, host, items, from_queue, .. } => format!(
            "granted #{id} fence={fence} to {client} ({user}@{host}) {}{}",
            granted(items),
            if *from_queue { " from queue" } else { "" }
        ),
        Event::Ended { id, items, end } => {
            format!("ended #{id} ({end}): returned {}", granted(items))
        }
        Event::Denied { client, denial } => format!("denied {client}: {denial}"),
        Event::Queued { id, client, position } => {
            format!("queued #{id} for {client} at {position}")
        }
        Event::Dequeued { id, end } => format!("dequeued #{id} ({end})"),
        Event::Installed { features } => {
            let names: Vec<String> = features.iter().map(|f| f.to_string()).collect();
            format!("installed {}", names.join(" "))
        }
        Event::LeasesExtended { leader, count } => {
            format!("leader {leader} extended {count} leases")
        }
    }
}

fn checkout_line(c: &Checkout) -> String {
    format!(
        "#{} {} ({}@{}{}) {} lease_until={}{}",
        c.id,
        c.client,
        c.user,
        c.host,
        c.job.as_ref().map(|j| format!(" job {j}")).unwrap_or_default(),
        granted(&c.items),
        c.lease_expires_at_ms,
        if c.borrowed { " borrowed" } else { "" }
    )
}

fn status(state: &State) -> String {
    let mut out = String::new();
    for f in state.features_status() {
        let flags = match (f.expired, f.retired) {
            (_, true) => " retired",
            (true, _) => " expired",
            _ => "",
        };
        let _ = writeln!(
            out,
            "{} total={} in_use={} free={} queued={}{flags}",
            f.feature, f.tokens_total, f.in_use, f.free, f.queued
        );
        for p in f.pools {
            let _ = writeln!(
                out,
                "  {} reserve={} cap={} in_use={} available={} lent={} borrowed={}{}",
                p.pool,
                p.reserve,
                p.cap,
                p.in_use,
                p.available,
                p.lent,
                p.borrowed,
                if p.retired { " retired" } else { "" }
            );
        }
    }
    out
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() -> std::io::Result<()> {
                let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scenarios/", stringify!($name));
                goldenscript::run(&mut Runner::new(), path)
            }
        )*

        /// Every script in the directory has a test above.
        #[test]
        fn every_scenario_is_listed() {
            let listed = [$(stringify!($name)),*];
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scenarios");
            for entry in std::fs::read_dir(dir).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                assert!(listed.contains(&name.as_str()), "scenario {name} is not listed in scenarios.rs");
            }
        }
    };
}

scenarios!(
    basics,
    entitlements,
    cost_rules,
    pools,
    sentinel,
    limits,
    bounds,
    leases,
    multi_feature,
    borrowing,
    queue,
    starvation,
    revocation,
    exactly_once,
    bad_input,
);
