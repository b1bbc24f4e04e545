//! The snapshot format is stable: a fixed history gives the same snapshot bytes (and so
//! the same state hash) as the release that wrote the constant below. Nodes keep
//! snapshots on disk and send them to each other, so a change of layout that changes
//! the bytes must be deliberate: a new format version and a migration, not an accident
//! of a refactor.

use lsm_core::*;

fn name<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

/// The state hash of [`history`], as the current format writes it.
const EXPECTED_HASH: &str = "5825fa025d65ce52fa1267dd2c6717ab05074bdbdd8f2e65c4580f7bae0255f4";

/// Installs a license, then has 40 clients check out, renew, release and hold, with
/// replies kept in their sessions (some clients acknowledge late, so they keep two), a
/// revocation and an expired lease, so every table of the state has rows.
fn history() -> State {
    let mut state = State::default();
    let mut index = 0;
    let mut apply = |state: &mut State, now_ms: u64, command: Command| {
        index += 1;
        state.apply(Meta { index, now_ms }, command).expect("applies")
    };
    let entitlement = |feature: &str, tokens_total| Entitlement {
        feature: name(feature),
        license: name("site"),
        tokens_total,
        starts_at_ms: 0,
        expires_at_ms: u64::MAX,
        cost: CostRule::default(),
        max_borrow_ms: 0,
    };
    let install = Install {
        entitlements: vec![entitlement("lsdyna", 500), entitlement("abaqus", 50)],
        policy: Policy::default(),
    };
    let request = |client: String, seq: u64, ack: u64, op: Op| {
        Command::Request(Request { client: name(&client), seq, ack, op })
    };
    apply(&mut state, 1_000, request("admin".into(), 1, 1, Op::Install(install)));
    let mut ids = Vec::new();
    for i in 0..40u64 {
        let feature = if i % 3 == 0 { "abaqus" } else { "lsdyna" };
        let checkout = CheckoutRequest {
            items: vec![Item {
                feature: name(feature),
                demand: Demand::Tokens(1 + i % 4),
                pool: None,
            }],
            user: name(&format!("user{}", i % 7)),
            host: name(&format!("node{}", i % 5)),
            job: Some(name(&format!("job{i}"))),
            lease_ttl_ms: if i == 39 { 1_000 } else { 30_000 },
            borrow_until_ms: None,
            wait: None,
        };
        let out =
            apply(&mut state, 2_000 + i, request(format!("c{i}"), 1, 1, Op::Checkout(checkout)));
        let Response::Granted(grant) = out.response else { panic!("{:?}", out.response) };
        ids.push(grant.id);
    }
    for (i, id) in ids.iter().enumerate().take(30) {
        let client = format!("c{i}");
        // Clients below 10 acknowledge late and keep two replies.
        let ack = if i < 10 { 1 } else { 2 };
        apply(&mut state, 3_000, request(client.clone(), 2, ack, Op::Heartbeat(*id)));
        if i % 2 == 0 {
            apply(&mut state, 3_500, request(client, 3, 3, Op::Release(*id)));
        }
    }
    let revoke = Op::Revoke { id: ids[31], reason: "maintenance".into() };
    apply(&mut state, 4_000, request("admin".into(), 2, 2, revoke));
    // The short lease of the last checkout runs out.
    apply(&mut state, 5_000, Command::Tick);
    state
}

#[test]
fn a_fixed_history_gives_the_same_snapshot_bytes() {
    let state = history();
    assert_eq!(state.state_hash_hex(), EXPECTED_HASH);
    let restored = State::restore(&state.snapshot()).expect("restores");
    assert_eq!(restored, state);
}
