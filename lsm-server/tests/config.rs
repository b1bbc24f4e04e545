//! Configuration: the example files, the layering of file, environment and flags, and
//! the errors of `Config::validate`, each naming its field.
//!
//! Tests that read the environment run inside `figment::Jail`, which serializes them and
//! restores the environment (and the working directory) afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Jail;
use lsm_server::{Config, LogFormat, Overrides, ServerError};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
}

/// The example node config with the example license at its absolute path.
fn example_overrides() -> Overrides {
    Overrides { license_file: Some(example("license.toml")), ..Overrides::default() }
}

// figment's `Jail` wants its own (large) error type; the tests speak `ServerError`.
#[allow(clippy::result_large_err)]
fn jail(test: impl FnOnce(&mut Jail) -> Result<(), ServerError>) {
    Jail::expect_with(|jail| test(jail).map_err(|e| e.to_string().into()));
}

#[test]
fn example_files_parse_and_validate() {
    jail(|_| {
        let config = Config::load(Some(&example("node.toml")), &example_overrides())?;
        config.validate()?;
        assert_eq!(config.node_id, 1);
        assert_eq!(config.peers.len(), 3);
        assert_eq!(config.advertise(), "127.0.0.1:7101");
        assert_eq!(config.raft.heartbeat_ms, 50);
        assert_eq!(config.limits.max_queue_len, 10_000);
        // Limits the file leaves out keep their defaults.
        assert_eq!(config.limits.max_sessions, lsm_core::Limits::default().max_sessions);
        let install = config.license()?.expect("a license");
        let features: Vec<_> = install.entitlements.iter().map(|e| e.feature.to_string()).collect();
        assert_eq!(features, ["lsdyna", "lsdyna-implicit", "fluent", "abaqus"]);
        assert_eq!(
            install.policy.pools[&"lsdyna".parse::<lsm_core::FeatureName>().unwrap()].len(),
            2
        );
        assert_eq!(install.policy.rules.len(), 3);
        Ok(())
    });
}

#[test]
fn the_environment_overrides_the_file() {
    jail(|jail| {
        jail.set_env("LSM_NODE_ID", 2);
        jail.set_env("LSM_RAFT__HEARTBEAT_MS", 40);
        jail.set_env("LSM_LIMITS__MAX_QUEUE_LEN", 7);
        jail.set_env("LSM_LOG_FORMAT", "json");
        jail.set_env("LSM_ADMIN_TOKEN", "12345");
        jail.set_env("LSM_PEERS__4", "127.0.0.1:7104");
        // The client's variables are not the server's business.
        jail.set_env("LSM_SERVERS", "127.0.0.1:7101");
        let config = Config::load(Some(&example("node.toml")), &example_overrides())?;
        config.validate()?;
        assert_eq!(config.node_id, 2);
        assert_eq!(config.advertise(), "127.0.0.1:7102");
        assert_eq!(config.raft.heartbeat_ms, 40);
        assert_eq!(config.raft.election_min_ms, 150);
        assert_eq!(config.limits.max_queue_len, 7);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.admin_token, "12345");
        assert_eq!(config.peers.len(), 4);
        Ok(())
    });
}

#[test]
fn flags_override_the_environment() {
    jail(|jail| {
        jail.set_env("LSM_NODE_ID", 2);
        jail.set_env("LSM_RAFT__HEARTBEAT_MS", 40);
        let overrides = Overrides {
            node_id: Some(3),
            listen: Some("127.0.0.1:9000".into()),
            data_dir: Some("elsewhere".into()),
            set: vec![
                "raft.heartbeat_ms=45".into(),
                "raft.election_max_ms = 900".into(),
                "limits.max_queue_len=5".into(),
                "lease_ttl_ms=15000".into(),
                "admin_token=777".into(),
                "cluster_id=prod".into(),
            ],
            ..example_overrides()
        };
        let config = Config::load(Some(&example("node.toml")), &overrides)?;
        config.validate()?;
        assert_eq!(config.node_id, 3);
        assert_eq!(config.listen, "127.0.0.1:9000");
        assert_eq!(config.advertise(), "127.0.0.1:7103");
        assert_eq!(config.data_dir, PathBuf::from("elsewhere"));
        assert_eq!(config.raft.heartbeat_ms, 45);
        assert_eq!(config.raft.election_max_ms, 900);
        assert_eq!(config.limits.max_queue_len, 5);
        assert_eq!(config.lease_ttl_ms, 15_000);
        assert_eq!(config.admin_token, "777");
        assert_eq!(config.cluster_id, "prod");
        Ok(())
    });
}

#[test]
fn the_dial_table_comes_from_the_file_and_the_environment() {
    jail(|jail| {
        jail.create_file(
            "dial.toml",
            "node_id = 1\ndata_dir = \"d\"\n\n[peers]\n1 = \"10.0.0.1:7101\"\n\
             2 = \"10.0.0.2:7101\"\n3 = \"10.0.0.3:7101\"\n\n[dial]\n2 = \"127.0.0.1:9012\"\n",
        )
        .unwrap();
        jail.set_env("LSM_DIAL__3", "127.0.0.1:9013");
        let config = Config::load(Some(Path::new("dial.toml")), &Overrides::default())?;
        config.validate()?;
        let expected =
            BTreeMap::from([(2, "127.0.0.1:9012".to_string()), (3, "127.0.0.1:9013".to_string())]);
        assert_eq!(config.dial, expected);
        // Dialing elsewhere changes nothing the node tells others.
        assert_eq!(config.advertise(), "10.0.0.1:7101");
        assert_eq!(config.peers[&2], "10.0.0.2:7101");

        let set = Overrides { set: vec!["dial.2=127.0.0.1:9022".into()], ..Overrides::default() };
        let config = Config::load(Some(Path::new("dial.toml")), &set)?;
        assert_eq!(config.dial[&2], "127.0.0.1:9022");

        jail.create_file("bad-dial.toml", "[dial]\nnode2 = \"127.0.0.1:1\"\n").unwrap();
        match Config::load(Some(Path::new("bad-dial.toml")), &Overrides::default()) {
            Err(e) => assert!(e.to_string().contains("[dial] are node ids"), "{e}"),
            Ok(c) => panic!("loaded {c:?}"),
        }
        Ok(())
    });
}

#[test]
fn loading_refuses_what_it_cannot_read() {
    jail(|jail| {
        let field = |result: Result<Config, ServerError>| match result {
            Err(e) => (e.field().map(str::to_string), e.to_string()),
            Ok(c) => panic!("loaded {c:?}"),
        };
        let set = |s: &str| Overrides { set: vec![s.into()], ..Overrides::default() };
        let (f, _) = field(Config::load(None, &set("raft.heartbeat_ms")));
        assert_eq!(f.as_deref(), Some("--set"));
        let (f, e) = field(Config::load(None, &set("nonsense=1")));
        assert_eq!(f.as_deref(), Some("--set"), "{e}");
        // The keys are `Config`'s fields, in the order the struct declares them.
        assert_eq!(
            e,
            "--set: \"nonsense\" is not a configuration key; the keys are node_id, cluster_id, \
             listen, advertise, data_dir, license_file, policy_file, lease_ttl_ms, \
             queue_poll_ttl_ms, request_timeout_ms, max_body_bytes, admin_token, log_format, \
             log_level, peers, dial, raft, limits"
        );
        let (f, _) = field(Config::load(Some(Path::new("missing.toml")), &Overrides::default()));
        assert_eq!(f.as_deref(), Some("--config"));

        jail.create_file("typo.toml", "node_id = 1\nlisen = \"127.0.0.1:1\"\n").unwrap();
        let (f, e) = field(Config::load(Some(Path::new("typo.toml")), &Overrides::default()));
        assert_eq!(f, None);
        assert!(e.contains("lisen"), "{e}");

        jail.create_file("limit.toml", "[limits]\nmax_queue_lenght = 3\n").unwrap();
        let (f, _) = field(Config::load(Some(Path::new("limit.toml")), &Overrides::default()));
        assert_eq!(f.as_deref(), Some("limits.max_queue_lenght"));

        jail.create_file("type.toml", "node_id = \"one\"\n").unwrap();
        let (_, e) = field(Config::load(Some(Path::new("type.toml")), &Overrides::default()));
        assert!(e.contains("node_id"), "{e}");

        jail.create_file("peers.toml", "[peers]\nx = \"127.0.0.1:1\"\n").unwrap();
        let (_, e) = field(Config::load(Some(Path::new("peers.toml")), &Overrides::default()));
        assert!(e.contains("not a node id"), "{e}");
        Ok(())
    });
}

/// A valid configuration with its license in `dir`.
fn valid(dir: &Path) -> Config {
    let license = dir.join("license.toml");
    std::fs::copy(example("license.toml"), &license).unwrap();
    Config {
        node_id: 2,
        cluster_id: "test".into(),
        listen: "0.0.0.0:7102".into(),
        data_dir: dir.join("node2"),
        license_file: Some(license),
        peers: BTreeMap::from([
            (1, "10.0.0.1:7101".to_string()),
            (2, "10.0.0.2:7102".to_string()),
            (3, "10.0.0.3:7103".to_string()),
        ]),
        ..Config::default()
    }
}

#[test]
fn validation_names_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    valid(&d).validate().unwrap();
    assert_eq!(valid(&d).advertise(), "10.0.0.2:7102");
    let write = |name: &str, text: &str| {
        let path = d.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let not_toml = write("broken.toml", "[[entitlements]\nfeature = ");
    let expired = write(
        "expired.toml",
        "[[entitlements]]\nfeature = \"f\"\nlicense = \"l\"\ntokens_total = 1\nstarts_at_ms = 10\nexpires_at_ms = 5\n",
    );
    let bad_policy = write("policy.toml", "pools = 3\n");

    type Change = Box<dyn Fn(&mut Config)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        ("node_id", Box::new(|c| c.node_id = 0), "0 is not a node id"),
        ("peers", Box::new(|c| c.node_id = 4), "does not list this node (node_id = 4); add 4 = \""),
        ("cluster_id", Box::new(|c| c.cluster_id = " ".into()), "is empty"),
        ("listen", Box::new(|c| c.listen = "localhost".into()), "not a socket address"),
        ("advertise", Box::new(|c| c.advertise = Some("nohost".into())), "not host:port"),
        (
            "advertise",
            Box::new(|c| c.advertise = Some("10.9.9.9:7102".into())),
            "make them the same",
        ),
        ("data_dir", Box::new(|c| c.data_dir = PathBuf::new()), "is empty"),
        ("peers", Box::new(|c| c.peers.clear()), "is empty"),
        (
            "peers.3",
            Box::new(|c| {
                c.peers.insert(3, "10.0.0.3".into());
            }),
            "not host:port",
        ),
        (
            "peers.0",
            Box::new(|c| {
                c.peers.insert(0, "10.0.0.9:1".into());
            }),
            "not a node id",
        ),
        (
            "dial.0",
            Box::new(|c| {
                c.dial.insert(0, "10.0.0.9:1".into());
            }),
            "not a node id",
        ),
        (
            "dial.2",
            Box::new(|c| {
                c.dial.insert(2, "10.0.0.9:1".into());
            }),
            "never dials itself; remove the entry",
        ),
        (
            "dial.3",
            Box::new(|c| {
                c.dial.insert(3, "proxy-3".into());
            }),
            "not host:port",
        ),
        ("raft.heartbeat_ms", Box::new(|c| c.raft.heartbeat_ms = 0), "at least 1"),
        (
            "raft.election_min_ms",
            Box::new(|c| c.raft.election_min_ms = 100),
            "100 must be at least 3 x raft.heartbeat_ms (50)",
        ),
        ("raft.election_max_ms", Box::new(|c| c.raft.election_max_ms = 150), "must be above"),
        (
            "raft.snapshot_after_entries",
            Box::new(|c| c.raft.snapshot_after_entries = 0),
            "at least 1",
        ),
        ("raft.tick_poll_ms", Box::new(|c| c.raft.tick_poll_ms = 0), "at least 1"),
        (
            "raft.max_clock_drift_ppm",
            Box::new(|c| c.raft.max_clock_drift_ppm = 200_000),
            "200000 is above 90000: leases would run out",
        ),
        (
            "raft.max_term_start_step_ms",
            Box::new(|c| c.raft.max_term_start_step_ms = 0),
            "0 must be at least 1",
        ),
        ("lease_ttl_ms", Box::new(|c| c.lease_ttl_ms = 10), "outside limits.min_lease_ttl_ms"),
        (
            "queue_poll_ttl_ms",
            Box::new(|c| c.queue_poll_ttl_ms = u64::MAX),
            "outside limits.min_queue_ttl_ms",
        ),
        ("limits.min_lease_ttl_ms", Box::new(|c| c.limits.min_lease_ttl_ms = u64::MAX), "above"),
        ("limits.min_queue_ttl_ms", Box::new(|c| c.limits.min_queue_ttl_ms = u64::MAX), "above"),
        ("request_timeout_ms", Box::new(|c| c.request_timeout_ms = 0), "outside"),
        ("max_body_bytes", Box::new(|c| c.max_body_bytes = 10), "outside"),
        ("admin_token", Box::new(|c| c.admin_token = "a b".into()), "whitespace"),
        ("log_level", Box::new(|c| c.log_level = "lsm=[[".into()), "not a log filter"),
        (
            "license_file",
            Box::new(|c| c.license_file = Some("/nonexistent/l.toml".into())),
            "cannot read",
        ),
        (
            "license_file",
            Box::new(move |c| c.license_file = Some(not_toml.clone())),
            "is not valid",
        ),
        (
            "license_file",
            Box::new(move |c| c.license_file = Some(expired.clone())),
            "expires_at_ms",
        ),
        (
            "policy_file",
            Box::new(move |c| c.policy_file = Some(bad_policy.clone())),
            "is not valid",
        ),
        (
            "policy_file",
            Box::new(|c| {
                c.license_file = None;
                c.policy_file = Some("p.toml".into());
            }),
            "without a license_file",
        ),
    ];
    for (field, change, problem) in cases {
        let mut config = valid(&d);
        change(&mut config);
        match config.validate() {
            Err(ServerError::Config { field: f, problem: p }) => {
                assert_eq!(f, field, "{p}");
                assert!(p.contains(problem), "{field}: {p:?} does not say {problem:?}");
            }
            other => panic!("{field}: expected an error, got {other:?}"),
        }
    }
}
