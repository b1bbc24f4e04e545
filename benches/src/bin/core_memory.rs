//! Memory use of `lsm_core::State` with many live checkouts.
//!
//! Builds a state with one feature and N live checkouts (1,000,000 unless `--checkouts N`
//! says otherwise), each made by its own client, so the session table also holds N
//! sessions, as it would on a server with that many launchers. It then prints the heap
//! bytes in use (counted by `stats_alloc`'s instrumented system allocator), the
//! bytes per checkout, the process's peak resident set size (`VmHWM` in
//! `/proc/self/status`), the time the build took, and the size of a snapshot of the state.
//!
//! ```text
//! cargo run --release -p lsm-benches --bin core_memory
//! cargo run --release -p lsm-benches --bin core_memory -- --checkouts 100000
//! ```
//!
//! The target is 1,000,000 live checkouts in under 1 GiB.

use std::alloc::System;
use std::process::ExitCode;
use std::time::Instant;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

use lsm_benches::{mix, name};
use lsm_core::{
    CheckoutRequest, ClientId, Command, CostRule, Demand, Entitlement, FeatureName, HostName,
    Install, Item, Limits, Meta, Op, Policy, Request, Response, State, UserName,
};

/// The system allocator, instrumented to count the bytes allocated and freed.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes in use now.
fn heap_in_use() -> usize {
    let stats = ALLOCATOR.stats();
    let net =
        stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated;
    net.max(0) as usize
}

/// Lease length of every checkout.
const LEASE_TTL_MS: u64 = 30_000;
/// Distinct users the checkouts are spread over.
const USERS: u64 = 1_000;
/// Distinct hosts the checkouts are spread over.
const HOSTS: u64 = 2_000;
/// The replicated clock starts here (1 January 2026, in ms since the Unix epoch) and
/// advances 1 µs per command, so no lease expires while the state is built.
const EPOCH_MS: u64 = 1_767_225_600_000;
/// One gibibyte.
const GIB: f64 = (1u64 << 30) as f64;

fn main() -> ExitCode {
    let checkouts = match parse_args() {
        Ok(n) => n,
        Err(message) => {
            eprintln!("core_memory: {message}");
            eprintln!("usage: core_memory [--checkouts N]   (default 1000000)");
            return ExitCode::from(2);
        }
    };
    let before = heap_in_use();
    let started = Instant::now();
    let state = build(checkouts);
    let elapsed = started.elapsed();
    let heap = heap_in_use() - before;
    let (hwm, rss) = (proc_status_kib("VmHWM"), proc_status_kib("VmRSS"));
    let summary = state.summary();
    assert_eq!(summary.checkouts, checkouts, "every checkout is live");

    println!("live checkouts:        {checkouts}");
    println!("client sessions:       {}", summary.sessions);
    println!("build time:            {:.2} s", elapsed.as_secs_f64());
    println!("build rate:            {:.0} checkouts/s", checkouts as f64 / elapsed.as_secs_f64());
    println!("heap in use:           {heap} bytes ({:.3} GiB)", heap as f64 / GIB);
    println!("heap per checkout:     {:.0} bytes", heap as f64 / checkouts.max(1) as f64);
    for (name, kib) in [("VmHWM (max RSS)", hwm), ("VmRSS", rss)] {
        match kib {
            Some(kib) => println!(
                "{:<22} {kib} KiB ({:.3} GiB)",
                format!("{name}:"),
                (kib * 1024) as f64 / GIB
            ),
            None => println!("{:<22} unknown (no /proc/self/status)", format!("{name}:")),
        }
    }
    let snapshot = state.snapshot().len();
    println!(
        "snapshot:              {snapshot} bytes ({:.0} per checkout)",
        snapshot as f64 / checkouts.max(1) as f64
    );
    let target = (1u64 << 30) as usize;
    let verdict = if heap < target && hwm.is_none_or(|kib| kib * 1024 < target as u64) {
        "met"
    } else {
        "NOT met"
    };
    println!("under 1 GiB (heap and max RSS): {verdict}");
    ExitCode::SUCCESS
}

/// Reads `--checkouts N` from the command line.
fn parse_args() -> Result<u64, String> {
    let mut checkouts = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--checkouts" => args.next().ok_or("--checkouts needs a number")?,
            _ => match arg.strip_prefix("--checkouts=") {
                Some(value) => value.to_string(),
                None => return Err(format!("unknown argument {arg:?}")),
            },
        };
        checkouts =
            value.replace('_', "").parse().map_err(|e| format!("--checkouts {value:?}: {e}"))?;
    }
    Ok(checkouts)
}

/// A state with one feature and `checkouts` live checkouts of 1 to 4 tokens, each by its
/// own client.
fn build(checkouts: u64) -> State {
    let defaults = Limits::default();
    let limits = Limits {
        max_checkouts: defaults.max_checkouts.max(checkouts),
        max_sessions: defaults.max_sessions.max(checkouts + 1),
        ..defaults
    };
    let tokens_total = (4 * checkouts).clamp(10_000_000, limits.max_tokens_per_feature);
    let mut state = State::new(limits);
    let feature: FeatureName = name("lsdyna");
    let users: Vec<UserName> = (0..USERS).map(|i| name(&format!("user{i:04}"))).collect();
    let hosts: Vec<HostName> = (0..HOSTS).map(|i| name(&format!("node-{i:04}.cluster"))).collect();
    let install = Install {
        entitlements: vec![Entitlement {
            feature: feature.clone(),
            license: name("site-2026"),
            tokens_total,
            starts_at_ms: 0,
            expires_at_ms: u64::MAX,
            cost: CostRule::default(),
            max_borrow_ms: 0,
        }],
        policy: Policy::default(),
    };
    let admin: ClientId = name("admin");
    let meta = Meta { index: 1, now_ms: EPOCH_MS };
    let out = state.apply(meta, request(admin, Op::Install(install))).expect("install applies");
    assert!(matches!(out.response, Response::Installed { features: 1 }), "{out:?}");
    for j in 0..checkouts {
        let h = mix(j);
        let checkout = CheckoutRequest {
            items: vec![Item {
                feature: feature.clone(),
                demand: Demand::Tokens(1 + h % 4),
                pool: None,
            }],
            user: users[((h >> 8) % USERS) as usize].clone(),
            host: hosts[((h >> 24) % HOSTS) as usize].clone(),
            job: None,
            lease_ttl_ms: LEASE_TTL_MS,
            borrow_until_ms: None,
            wait: None,
        };
        let client = name(&format!("launcher-{j:07}"));
        let meta = Meta { index: j + 2, now_ms: EPOCH_MS + (j + 1) / 1_000 };
        let out = state.apply(meta, request(client, Op::Checkout(checkout))).expect("applies");
        assert!(matches!(out.response, Response::Granted(_)), "{:?}", out.response);
    }
    state
}

/// A client's first request.
fn request(client: ClientId, op: Op) -> Command {
    Command::Request(Request { client, seq: 1, ack: 1, op })
}

/// A `kB` line of `/proc/self/status`, such as `VmHWM`, in KiB.
fn proc_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    line[key.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}
