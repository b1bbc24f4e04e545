//! Bad input: every malformed or unauthorised request gets a typed refusal that names the
//! problem, never a panic, and leaves the license state exactly as it was.

use lsm_core::*;

const TTL: u64 = 30_000;

fn name<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

struct Fixture {
    state: State,
    index: u64,
    seq: u64,
}

impl Fixture {
    /// A license with `lsdyna` (10 tokens, an smp pool) and `huge` (an absurd cost rule),
    /// with one checkout held by client `owner`.
    fn new() -> Fixture {
        let mut f = Fixture { state: State::default(), index: 0, seq: 0 };
        let entitlement = |feature: &str, tokens_total, cost| Entitlement {
            feature: name(feature),
            license: name("test"),
            tokens_total,
            starts_at_ms: 0,
            expires_at_ms: u64::MAX,
            cost,
            max_borrow_ms: 0,
        };
        let mut policy = Policy::default();
        let mut smp = PoolSpec::open(name("smp"));
        smp.modes = vec![ParallelMode::Smp];
        policy.pools.insert(name("lsdyna"), vec![smp]);
        let huge =
            CostRule::PerCore { base_tokens: 0, tokens_per_core: u64::MAX / 2, cores_included: 0 };
        let install = Install {
            entitlements: vec![
                entitlement("lsdyna", 10, CostRule::default()),
                entitlement("huge", 10, huge),
            ],
            policy,
        };
        let out = f.send("admin", Op::Install(install));
        assert!(matches!(out, Response::Installed { features: 2 }), "{out:?}");
        let out = f.send("owner", Op::Checkout(request("lsdyna", Demand::Tokens(3))));
        assert!(matches!(out, Response::Granted(_)), "{out:?}");
        f
    }

    fn send(&mut self, client: &str, op: Op) -> Response {
        self.seq += 1;
        let request = Request { client: name(client), seq: self.seq, ack: self.seq, op };
        self.raw(Command::Request(request))
    }

    fn raw(&mut self, command: Command) -> Response {
        self.index += 1;
        let meta = Meta { index: self.index, now_ms: 1_000 };
        self.state.apply(meta, command).expect("apply never fails on bad input").response
    }

    /// What a user of the license state can see.
    fn view(&self) -> String {
        format!(
            "{:?}\n{:?}\n{:?}",
            self.state.features_status(),
            self.state.list_checkouts(&CheckoutFilter::default()),
            self.state.list_queue(None)
        )
    }
}

fn request(feature: &str, demand: Demand) -> CheckoutRequest {
    CheckoutRequest {
        items: vec![Item { feature: name(feature), demand, pool: None }],
        user: name("jane"),
        host: name("node1"),
        job: None,
        lease_ttl_ms: TTL,
        borrow_until_ms: None,
        wait: None,
    }
}

/// Sends `op` as `client` and checks that it is refused as `expected` says, naming
/// `mention`, and that nothing a user can see changed.
fn refused(f: &mut Fixture, client: &str, op: Op, mention: &str) -> Denial {
    let before = f.view();
    let seq = f.seq + 1;
    let precheck =
        f.state.precheck(&Request { client: name(client), seq, ack: seq, op: op.clone() });
    let response = f.send(client, op);
    let Response::Denied(denial) = response else {
        panic!("expected a refusal naming {mention:?}, got {response:?}");
    };
    // What the precheck refuses before proposing, apply refuses the same way.
    if let Err(early) = &precheck {
        assert_eq!(early, &denial, "the precheck and apply disagree");
    }
    // Malformed fields never need the log: the precheck catches them all, except a cost
    // that overflows, which depends on the feature's cost rule.
    if matches!(denial, Denial::BadInstall(_))
        || matches!(&denial, Denial::BadRequest { problem, .. } if !problem.contains("64 bits"))
    {
        assert!(precheck.is_err(), "the precheck let {denial} through");
    }
    assert!(denial.to_string().contains(mention), "{denial} does not mention {mention:?}");
    assert_eq!(f.view(), before, "the refusal {denial} changed the state");
    f.state.check_invariants().unwrap();
    denial
}

#[test]
fn bad_checkouts_are_refused_and_change_nothing() {
    let mut f = Fixture::new();
    let checkout = |feature: &str, demand| Op::Checkout(request(feature, demand));
    let smp = |cores| Demand::Cores { cores, mode: ParallelMode::Smp };
    refused(&mut f, "c", checkout("nosuch", Demand::Tokens(1)), "unknown feature nosuch");
    refused(&mut f, "c", checkout("lsdyna", Demand::Tokens(0)), "at least 1 token");
    refused(&mut f, "c", checkout("lsdyna", smp(0)), "at least 1 core");
    refused(&mut f, "c", checkout("lsdyna", Demand::Tokens(u64::MAX)), "the limit is");
    refused(&mut f, "c", checkout("lsdyna", smp(u64::MAX)), "the limit is");
    refused(&mut f, "c", checkout("lsdyna", Demand::Tokens(11)), "10 tokens in all");
    refused(&mut f, "c", checkout("huge", smp(1 << 20)), "does not fit in 64 bits");

    let mut no_items = request("lsdyna", Demand::Tokens(1));
    no_items.items.clear();
    refused(&mut f, "c", Op::Checkout(no_items), "at least one feature");

    let mut too_many = request("lsdyna", Demand::Tokens(1));
    too_many.items = (0..17)
        .map(|i| Item { feature: name(&format!("f{i}")), demand: Demand::Tokens(1), pool: None })
        .collect();
    refused(&mut f, "c", Op::Checkout(too_many), "17 features");

    let mut short_lease = request("lsdyna", Demand::Tokens(1));
    short_lease.lease_ttl_ms = 0;
    refused(&mut f, "c", Op::Checkout(short_lease), "lease_ttl_ms");

    let mut endless_lease = request("lsdyna", Demand::Tokens(1));
    endless_lease.lease_ttl_ms = u64::MAX;
    refused(&mut f, "c", Op::Checkout(endless_lease), "lease_ttl_ms");

    let mut past_borrow = request("lsdyna", Demand::Tokens(1));
    past_borrow.borrow_until_ms = Some(5);
    refused(&mut f, "c", Op::Checkout(past_borrow), "in the future");

    let mut far_borrow = request("lsdyna", Demand::Tokens(1));
    far_borrow.borrow_until_ms = Some(u64::MAX);
    refused(&mut f, "c", Op::Checkout(far_borrow), "borrowing");

    let mut bad_pool = request("lsdyna", Demand::Tokens(1));
    bad_pool.items[0].pool = Some(name("mpp"));
    refused(&mut f, "c", Op::Checkout(bad_pool), "no pool mpp");
}

#[test]
fn other_clients_cannot_touch_a_checkout() {
    let mut f = Fixture::new();
    let id = CheckoutId(1);
    refused(&mut f, "thief", Op::Release(id), "belongs to another client");
    refused(&mut f, "thief", Op::Heartbeat(id), "belongs to another client");
    refused(&mut f, "owner", Op::Release(CheckoutId(99)), "no checkout #99");
    refused(&mut f, "owner", Op::Heartbeat(CheckoutId(0)), "no checkout #0");
    let reason = "x".repeat(MAX_REASON_LEN + 1);
    refused(&mut f, "admin", Op::Revoke { id, reason }, "the limit is 256");
    // The owner still holds its tokens and can renew them.
    let out = f.send("owner", Op::Heartbeat(id));
    assert!(matches!(out, Response::Renewed(_)), "{out:?}");
}

#[test]
fn bad_license_configurations_are_refused_whole() {
    let mut f = Fixture::new();
    let base = |tokens_total| Entitlement {
        feature: name("lsdyna"),
        license: name("test"),
        tokens_total,
        starts_at_ms: 0,
        expires_at_ms: u64::MAX,
        cost: CostRule::default(),
        max_borrow_ms: 0,
    };
    let install =
        |entitlements: Vec<Entitlement>, policy| Op::Install(Install { entitlements, policy });

    refused(&mut f, "admin", install(vec![base(1), base(2)], Policy::default()), "listed twice");
    refused(&mut f, "admin", install(vec![base(u64::MAX)], Policy::default()), "tokens_total");
    let mut dates = base(5);
    dates.expires_at_ms = 0;
    refused(&mut f, "admin", install(vec![dates], Policy::default()), "expiry must be after");
    let mut free_cores = base(5);
    free_cores.cost = CostRule::PerCore { base_tokens: 0, tokens_per_core: 0, cores_included: 0 };
    refused(&mut f, "admin", install(vec![free_cores], Policy::default()), "tokens_per_core");

    let mut policy = Policy::default();
    let mut big = PoolSpec::open(name("big"));
    big.reserve = 11;
    policy.pools.insert(name("lsdyna"), vec![big]);
    refused(&mut f, "admin", install(vec![base(10)], policy), "reserves add up to 11");

    let mut policy = Policy::default();
    let mut keep = PoolSpec::open(name("p"));
    keep.keep_idle = 1;
    policy.pools.insert(name("lsdyna"), vec![keep]);
    refused(&mut f, "admin", install(vec![base(10)], policy), "keep_idle 1 is above");

    let mut policy = Policy::default();
    let routed = |n: &str| {
        let mut p = PoolSpec::open(name(n));
        p.modes = vec![ParallelMode::Mpp];
        p
    };
    policy.pools.insert(name("lsdyna"), vec![routed("a"), routed("b")]);
    refused(&mut f, "admin", install(vec![base(10)], policy), "already routes");

    let mut policy = Policy::default();
    policy.rules.push(Rule::Max {
        feature: name("lsdyna"),
        subject: Subject::Group(name("nobody")),
        tokens: 1,
    });
    refused(&mut f, "admin", install(vec![base(10)], policy), "not defined");
}

#[test]
fn malformed_names_are_refused_when_parsed() {
    let long = format!("\"{}\"", "a".repeat(65));
    let err = serde_json::from_str::<FeatureName>(&long).unwrap_err();
    assert!(err.to_string().contains("65 bytes"), "{err}");
    let json = r#"{"items":[{"feature":"ls dyna","demand":{"tokens":1}}],"user":"jane",
                   "host":"n1","lease_ttl_ms":30000}"#;
    let err = serde_json::from_str::<CheckoutRequest>(json).unwrap_err();
    assert!(err.to_string().contains("invalid feature name"), "{err}");
    let json = r#"{"items":[],"user":"jane;rm","host":"n1","lease_ttl_ms":30000}"#;
    let err = serde_json::from_str::<CheckoutRequest>(json).unwrap_err();
    assert!(err.to_string().contains("invalid user name"), "{err}");
}

#[test]
fn entries_out_of_order_are_an_error_not_a_panic() {
    let mut f = Fixture::new();
    let err = f.state.apply(Meta { index: 1, now_ms: 0 }, Command::Tick).unwrap_err();
    assert!(matches!(err, Error::OutOfOrder { got: 1, .. }), "{err}");
}

#[test]
fn corrupt_snapshots_are_refused() {
    let f = Fixture::new();
    let mut bytes = f.state.snapshot();
    assert!(State::restore(&bytes[..bytes.len() / 2]).is_err());
    bytes[0] = 99;
    let err = State::restore(&bytes).unwrap_err();
    assert!(matches!(err, Error::SnapshotVersion { found: 99, .. }), "{err}");
    assert!(State::restore(&[]).is_err());
}
