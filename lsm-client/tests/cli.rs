//! The `lsm` CLI's pieces: flag parsing, request building and the tables it prints.

#![cfg(feature = "cli")]

use std::time::Duration;

use clap::Parser;
use lsm_client::api::{ClusterInfo, ItemBody, MemberInfo};
use lsm_client::cli::args::{AdminCommand, Cli, Command, ItemSpec, OnLeaseLoss, When};
use lsm_client::cli::commands::{checked_out, parse_license};
use lsm_client::cli::format;
use lsm_client::cli::request::{Defaults, build};
use lsm_core::{
    Checkout, CheckoutId, CheckoutStatus, Demand, Denial, FeatureStatus, Grant, GrantedItem, Item,
    ParallelMode, PoolStatus, WaiterInfo,
};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("lsm").chain(args.iter().copied()))
}

fn defaults() -> Defaults {
    Defaults {
        user: Some("jane".into()),
        host: Some("node-1".into()),
        job: Some("4711".into()),
        now_ms: 1_700_000_000_000,
    }
}

#[test]
fn global_flags_and_their_defaults() {
    // SAFETY of the assertion: the test environment does not set LSM_SERVERS.
    let cli = parse(&["status"]).unwrap();
    if std::env::var_os("LSM_SERVERS").is_none() {
        assert_eq!(cli.servers, ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]);
    }
    assert_eq!(cli.timeout, Duration::from_secs(30));
    assert!(!cli.json);
    let cli =
        parse(&["--servers", "a:1,b:2", "--json", "--timeout", "5m", "status", "--local"]).unwrap();
    assert_eq!(cli.servers, ["a:1", "b:2"]);
    assert!(cli.json);
    assert_eq!(cli.timeout, Duration::from_secs(300));
    assert!(matches!(cli.command, Command::Status { local: true }));
    // Global flags may come after the command too.
    let cli = parse(&["checkouts", "--feature", "lsdyna", "--json"]).unwrap();
    assert!(cli.json);
    assert!(parse(&["--timeout", "soon", "status"]).is_err());
}

#[test]
fn checkout_flags_build_a_request() {
    let cli = parse(&[
        "checkout",
        "--feature",
        "lsdyna",
        "--cores",
        "16",
        "--mode",
        "mpp",
        "--pool",
        "mpp",
        "--lease",
        "90s",
        "--wait",
        "10m",
        "--priority",
        "5",
        "--client-id",
        "script-1",
    ])
    .unwrap();
    let Command::Checkout(args) = cli.command else { panic!() };
    assert_eq!(args.client_id.unwrap().as_str(), "script-1");
    let request = build(&args.request, &defaults()).unwrap();
    let body = request.body;
    assert_eq!(body.items.len(), 1);
    assert_eq!(body.items[0].cores, Some(16));
    assert_eq!(body.items[0].mode, Some(ParallelMode::Mpp));
    assert_eq!(body.items[0].pool.as_ref().unwrap().as_str(), "mpp");
    assert_eq!(body.user.as_str(), "jane");
    assert_eq!(body.host.as_str(), "node-1");
    assert_eq!(body.job.unwrap().as_str(), "4711");
    assert_eq!(body.lease_ttl_ms, Some(90_000));
    assert_eq!(body.wait.unwrap().priority, 5);
    assert_eq!(request.wait, Some(Duration::from_secs(600)));
}

#[test]
fn several_features_with_inline_amounts() {
    let cli = parse(&[
        "checkout",
        "-f",
        "lsdyna:32:mpp@mpp",
        "-f",
        "abaqus:5",
        "-f",
        "fluent",
        "--tokens",
        "2",
        "--pool",
        "team",
        "--user",
        "bob",
        "--host",
        "n7",
        "--job",
        "j1",
    ])
    .unwrap();
    let Command::Checkout(args) = cli.command else { panic!() };
    let body = build(&args.request, &defaults()).unwrap().body;
    let mut lsdyna = ItemBody::cores("lsdyna".parse().unwrap(), 32, ParallelMode::Mpp);
    lsdyna.pool = Some("mpp".parse().unwrap());
    let mut abaqus = ItemBody::tokens("abaqus".parse().unwrap(), 5);
    abaqus.pool = Some("team".parse().unwrap());
    let mut fluent = ItemBody::tokens("fluent".parse().unwrap(), 2);
    fluent.pool = Some("team".parse().unwrap());
    assert_eq!(body.items, [lsdyna, abaqus, fluent]);
    assert_eq!((body.user.as_str(), body.host.as_str()), ("bob", "n7"));
    assert_eq!(body.job.unwrap().as_str(), "j1");
    assert_eq!(body.wait, None);
}

#[test]
fn item_specs_parse_and_explain_mistakes() {
    let spec: ItemSpec = "lsdyna:8".parse().unwrap();
    assert_eq!((spec.count, spec.mode, spec.pool), (Some(8), None, None));
    let spec: ItemSpec = "lsdyna:64:smp@smp-pool".parse().unwrap();
    assert_eq!((spec.count, spec.mode), (Some(64), Some(ParallelMode::Smp)));
    assert_eq!(spec.pool.unwrap().as_str(), "smp-pool");
    assert!("lsdyna:0".parse::<ItemSpec>().unwrap_err().contains("positive"));
    assert!("lsdyna:8:gpu".parse::<ItemSpec>().unwrap_err().contains("smp nor mpp"));
    assert!("lsdyna:8:smp:x".parse::<ItemSpec>().unwrap_err().contains("too many"));
    assert!("ls dyna".parse::<ItemSpec>().unwrap_err().contains("feature name"));
}

#[test]
fn checkout_flag_mistakes_are_usage_errors() {
    let build_of = |args: &[&str]| {
        let cli = parse(args).unwrap();
        let Command::Checkout(args) = cli.command else { panic!() };
        build(&args.request, &defaults())
    };
    assert!(build_of(&["checkout", "-f", "x"]).unwrap_err().contains("needs an amount"));
    assert!(
        build_of(&["checkout", "-f", "x:1", "--tokens", "2"])
            .unwrap_err()
            .contains("drop the flag")
    );
    assert!(build_of(&["checkout", "-f", "x:1", "-f", "x:2"]).unwrap_err().contains("twice"));
    assert!(
        build_of(&["checkout", "-f", "x", "--tokens", "0"]).unwrap_err().contains("at least 1")
    );
    let no_user = Defaults { user: None, ..defaults() };
    let cli = parse(&["checkout", "-f", "x:1"]).unwrap();
    let Command::Checkout(args) = cli.command else { panic!() };
    assert!(build(&args.request, &no_user).unwrap_err().contains("--user"));
    // clap refuses these before they reach the builder.
    assert!(
        parse(&["checkout", "-f", "x", "--tokens", "1", "--cores", "2", "--mode", "smp"]).is_err()
    );
    assert!(parse(&["checkout", "-f", "x", "--cores", "2"]).is_err(), "--cores needs --mode");
    assert!(
        parse(&["checkout", "-f", "x:1", "--priority", "3"]).is_err(),
        "--priority needs --wait"
    );
    assert!(parse(&["checkout", "--tokens", "1"]).is_err(), "--feature is required");
}

#[test]
fn borrow_until_takes_a_date_or_a_duration() {
    let now = defaults().now_ms;
    let cli = parse(&["checkout", "-f", "x:1", "--borrow-until", "2d"]).unwrap();
    let Command::Checkout(args) = cli.command else { panic!() };
    assert_eq!(args.request.borrow_until, Some(When::In(Duration::from_secs(2 * 86_400))));
    assert_eq!(
        build(&args.request, &defaults()).unwrap().body.borrow_until_ms,
        Some(now + 172_800_000)
    );
    let cli = parse(&["checkout", "-f", "x:1", "--borrow-until", "2030-01-31T18:00:00Z"]).unwrap();
    let Command::Checkout(args) = cli.command else { panic!() };
    assert_eq!(args.request.borrow_until, Some(When::At(1_896_112_800_000)));
    let cli = parse(&["checkout", "-f", "x:1", "--borrow-until", "2001-01-01T00:00:00Z"]).unwrap();
    let Command::Checkout(args) = cli.command else { panic!() };
    assert!(build(&args.request, &defaults()).unwrap_err().contains("past"));
    assert!(parse(&["checkout", "-f", "x:1", "--borrow-until", "someday"]).is_err());
}

#[test]
fn run_takes_the_command_after_a_double_dash() {
    let cli = parse(&[
        "run",
        "--feature",
        "abaqus",
        "--tokens",
        "2",
        "--lease",
        "3s",
        "--on-lease-loss",
        "warn",
        "--",
        "sh",
        "-c",
        "exit 7",
    ])
    .unwrap();
    let Command::Run(args) = cli.command else { panic!() };
    assert_eq!(args.command, ["sh", "-c", "exit 7"]);
    assert_eq!(args.on_lease_loss, OnLeaseLoss::Warn);
    assert_eq!(args.kill_grace, Duration::from_secs(10));
    assert_eq!(args.request.lease, Some(Duration::from_secs(3)));
    let cli = parse(&["run", "-f", "abaqus:1", "--", "solver", "--tokens", "5"]).unwrap();
    let Command::Run(args) = cli.command else { panic!() };
    assert_eq!(args.command, ["solver", "--tokens", "5"], "flags after -- belong to the command");
    assert_eq!(args.on_lease_loss, OnLeaseLoss::Kill);
    assert!(parse(&["run", "-f", "abaqus:1"]).is_err(), "a command is required");
}

#[test]
fn ids_and_admin_commands_parse() {
    let cli = parse(&["release", "#42", "--client-id", "c-1"]).unwrap();
    let Command::Release { id, owner } = cli.command else { panic!() };
    assert_eq!((id, owner.client_id.unwrap().as_str()), (CheckoutId(42), "c-1"));
    assert!(parse(&["show", "forty-two"]).is_err());
    let cli = parse(&["admin", "revoke", "7", "--reason", "maintenance"]).unwrap();
    let Command::Admin(AdminCommand::Revoke { id, reason }) = cli.command else { panic!() };
    assert_eq!((id, reason.as_str()), (CheckoutId(7), "maintenance"));
    let cli =
        parse(&["admin", "add-node", "--id", "4", "--addr", "10.0.0.4:7101", "--learner"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Admin(AdminCommand::AddNode { id: 4, learner: true, .. })
    ));
    let cli = parse(&["admin", "init", "--member", "1=a:1", "--member", "2=b:2", "--no-license"])
        .unwrap();
    let Command::Admin(AdminCommand::Init { members, no_license }) = cli.command else { panic!() };
    assert_eq!(members, [(1, "a:1".to_string()), (2, "b:2".to_string())]);
    assert!(no_license);
    assert!(parse(&["admin", "init", "--member", "one=a:1"]).is_err());
}

#[test]
fn license_files_parse_as_toml_or_json() {
    let toml = r#"
        [[entitlements]]
        feature = "lsdyna"
        license = "site-2026"
        tokens_total = 10
        expires_at_ms = 4102444800000
        cost = { per_core = { base_tokens = 0, tokens_per_core = 1, cores_included = 0 } }

        [[policy.pools.lsdyna]]
        name = "smp"
        modes = ["smp"]
    "#;
    let install = parse_license(toml, false).unwrap();
    assert_eq!(install.entitlements[0].tokens_total, 10);
    assert_eq!(install.policy.pools.len(), 1);
    let json = serde_json::to_string(&install).unwrap();
    assert_eq!(parse_license(&json, true).unwrap(), install);
    assert!(parse_license("[[entitlements]]\nfeature = 1", false).is_err());
}

fn feature(
    name: &str,
    total: u64,
    used: u64,
    queued: u64,
    pools: Vec<PoolStatus>,
) -> FeatureStatus {
    FeatureStatus {
        feature: name.parse().unwrap(),
        license: "site-2026".parse().unwrap(),
        tokens_total: total,
        in_use: used,
        free: total - used,
        queued,
        starts_at_ms: 0,
        expires_at_ms: 4_102_444_800_000,
        expired: false,
        retired: false,
        pools,
    }
}

fn pool(name: &str, reserve: u64, cap: u64, used: u64, available: u64) -> PoolStatus {
    PoolStatus {
        pool: name.parse().unwrap(),
        reserve,
        cap,
        in_use: used,
        available,
        lent: 0,
        borrowed: 0,
        retired: false,
    }
}

#[test]
fn status_shows_features_then_pools() {
    let mut abaqus = feature("abaqus", 10, 3, 0, vec![pool("default", 0, 10, 3, 7)]);
    abaqus.expired = true;
    let mut smp = pool("smp", 4, 10, 8, 0);
    smp.borrowed = 4;
    let mut mpp = pool("mpp", 6, 6, 0, 2);
    mpp.lent = 4;
    let lsdyna = feature("lsdyna", 16, 8, 2, vec![smp, mpp]);
    let text = format::status(&[abaqus, lsdyna], 0);
    let expected = "\
FEATURE  TOTAL  USED  FREE  QUEUED  EXPIRES               NOTE
abaqus      10     3     7       0  2100-01-01T00:00:00Z  expired
lsdyna      16     8     8       2  2100-01-01T00:00:00Z

FEATURE  POOL     RESERVE  CAP  USED  AVAILABLE  LENT  BORROWED  NOTE
abaqus   default        0   10     3          7     0         0
lsdyna   smp            4   10     8          0     0         4
lsdyna   mpp            6    6     0          2     4         0
";
    assert_eq!(text, expected, "\n{text}");
    assert!(format::status(&[], 0).contains("no features"));
}

fn checkout(id: u64, borrowed: bool) -> Checkout {
    Checkout {
        id: CheckoutId(id),
        fence: id,
        client: "node-1-77-0000abcd".parse().unwrap(),
        user: "jane".parse().unwrap(),
        host: "node-1".parse().unwrap(),
        job: if borrowed { None } else { Some("4711".parse().unwrap()) },
        items: vec![
            GrantedItem {
                feature: "lsdyna".parse().unwrap(),
                pool: "mpp".parse().unwrap(),
                tokens: 16,
            },
            GrantedItem {
                feature: "abaqus".parse().unwrap(),
                pool: "default".parse().unwrap(),
                tokens: 1,
            },
        ]
        .into(),
        granted_at_ms: 1_000_000,
        lease_ttl_ms: if borrowed { 0 } else { 30_000 },
        lease_expires_at_ms: if borrowed { 4_102_444_800_000 } else { 1_025_000 },
        borrowed,
    }
}

#[test]
fn checkouts_table() {
    let text = format::checkouts(&[checkout(7, false), checkout(12, true)], 1_000_000);
    let expected = "\
ID  USER  HOST    JOB   HOLDS                                CLIENT              LEASE
 7  jane  node-1  4711  lsdyna 16 (mpp), abaqus 1 (default)  node-1-77-0000abcd  in 25s
12  jane  node-1  -     lsdyna 16 (mpp), abaqus 1 (default)  node-1-77-0000abcd  borrowed until 2100-01-01T00:00:00Z
";
    assert_eq!(text, expected, "\n{text}");
    assert_eq!(format::checkouts(&[], 0), "no checkouts\n");
    assert_eq!(format::expires_in(1_000, 4_500), "overdue 3s");
}

#[test]
fn queue_table_and_show() {
    let waiter = WaiterInfo {
        id: CheckoutId(31),
        position: 1,
        client: "c".parse().unwrap(),
        user: "bob".parse().unwrap(),
        host: "n2".parse().unwrap(),
        job: None,
        items: vec![Item {
            feature: "lsdyna".parse().unwrap(),
            demand: Demand::Cores { cores: 64, mode: ParallelMode::Mpp },
            pool: None,
        }],
        priority: 3,
        bypassed: 2,
        blocking: true,
        queued_at_ms: 1_000_000,
        wait_expires_at_ms: 1_060_000,
    };
    let text = format::queue(std::slice::from_ref(&waiter), 1_125_000);
    let expected = "\
POS  ID  USER  HOST  WANTS                PRIORITY  WAITING  NOTE
  1  31  bob   n2    lsdyna 64 cores mpp         3  2m 5s    blocking, bypassed 2x
";
    assert_eq!(text, expected, "\n{text}");

    let live = format::show(&CheckoutStatus::Live(checkout(7, false)), 1_000_000);
    assert!(
        live.starts_with("checkout #7: live\n  holds    lsdyna 16 (mpp), abaqus 1 (default)\n"),
        "{live}"
    );
    assert!(
        live.contains(
            "  lease    1970-01-01T00:17:05Z (in 25s), renewed to 30s by each heartbeat\n"
        ),
        "{live}"
    );
    let queued = format::show(&CheckoutStatus::Queued(waiter), 1_125_000);
    assert!(queued.starts_with("checkout #31: queued at position 1\n"), "{queued}");
    let gone = format::show(&CheckoutStatus::Gone(Denial::LeaseExpired { id: CheckoutId(5) }), 0);
    assert_eq!(gone, "not live: checkout #5 expired\n");
}

#[test]
fn cluster_table_shows_every_server_and_the_unreachable() {
    let member = |id, lag| MemberInfo {
        id,
        addr: format!("10.0.0.{id}:7101"),
        voter: true,
        matched_index: Some(120 - lag),
        lag: Some(lag),
    };
    let leader = ClusterInfo {
        node: 1,
        role: "Leader".into(),
        term: 3,
        leader: Some(1),
        leader_addr: Some("10.0.0.1:7101".into()),
        last_log_index: Some(120),
        commit_index: Some(120),
        applied_index: Some(120),
        members: vec![member(1, 0), member(2, 4), member(3, 0)],
    };
    let follower = ClusterInfo {
        node: 2,
        role: "Follower".into(),
        last_log_index: Some(116),
        commit_index: Some(116),
        applied_index: Some(115),
        ..leader.clone()
    };
    let views = vec![
        ("10.0.0.1:7101".to_string(), Ok(leader)),
        ("10.0.0.2:7101".to_string(), Ok(follower)),
        ("10.0.0.3:7101".to_string(), Err("cannot connect to 10.0.0.3:7101".to_string())),
    ];
    let text = format::cluster(&views);
    let expected = "\
SERVER         NODE  ROLE      TERM  LEADER  LAST-LOG  COMMIT  APPLIED  LAG  NOTE
10.0.0.1:7101     1  Leader       3       1       120     120      120    0
10.0.0.2:7101     2  Follower     3       1       116     116      115    4
10.0.0.3:7101     -  -            -       -         -       -        -    -  unreachable: cannot connect to 10.0.0.3:7101

leader: node 1 at 10.0.0.1:7101, term 3
";
    assert_eq!(text, expected, "\n{text}");
}

#[test]
fn checkout_prints_the_id_and_the_client_id_to_reuse() {
    let grant = Grant {
        id: CheckoutId(42),
        fence: 42,
        items: vec![GrantedItem {
            feature: "abaqus".parse().unwrap(),
            pool: "default".parse().unwrap(),
            tokens: 3,
        }]
        .into(),
        lease_expires_at_ms: 1_700_000_030_000,
        borrowed: false,
    };
    assert_eq!(
        checked_out(&grant, "script-1"),
        "checked out #42: abaqus 3 tokens, pool default; lease ends 2023-11-14T22:13:50Z\n\
         client id: script-1 (heartbeat and release with --client-id script-1 or LSM_CLIENT_ID=script-1)\n"
    );
    assert_eq!(
        format::granted(&Grant {
            items: vec![GrantedItem {
                feature: "x".parse().unwrap(),
                pool: "p".parse().unwrap(),
                tokens: 1
            }]
            .into(),
            ..grant
        }),
        "x 1 token, pool p"
    );
}
