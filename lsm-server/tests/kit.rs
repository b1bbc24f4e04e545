//! `lsm_server::kit` with the real binary: a three-node cluster that the kit starts,
//! pauses, stops, restarts and kills one node of, finding the leader and waiting for the
//! restarted node to catch up; and a second start on the same directory, which finds the
//! cluster initialized.

use std::time::Duration;

use lsm_server::dev::DEMO_LICENSE;
use lsm_server::kit::{Cluster, Init, Spec};

fn spec(dir: &std::path::Path) -> Spec {
    Spec {
        cluster_id: "kit-test".into(),
        license: Some(DEMO_LICENSE.into()),
        ..Spec::new(env!("CARGO_BIN_EXE_lsm-server"), dir)
    }
}

/// The state letter of process `pid` (`T` when it is stopped), from `/proc`.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_is_paused_stopped_restarted_and_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(spec(dir.path())).await.unwrap();
    assert_eq!(cluster.live(), [1, 2, 3]);
    assert_eq!(cluster.pids().len(), 3);
    let settle = Duration::from_secs(20);
    let (leader, info) = cluster.leader().await.expect("a node says it leads");
    assert_eq!(info.members.len(), 3);
    assert_eq!(cluster.agreed_leader(&[1, 2, 3], settle).await, Some(leader));
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let third = 6 - leader - follower;

    // Paused, it does not answer; the two others still agree.
    cluster.pause(follower).unwrap();
    let pid = cluster.pid(follower).unwrap();
    let mut polls = 0;
    while state(pid) != Some('T') {
        polls += 1;
        assert!(polls <= 100, "node {follower} is not stopped: {:?}", state(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cluster.info(follower).await.is_none());
    assert_eq!(cluster.agreed_leader(&[leader, third], settle).await, Some(leader));
    // Stopped while paused, it gets SIGCONT with its SIGTERM and stops without SIGKILL.
    assert!(!cluster.stop(follower).await.unwrap());
    assert_eq!(cluster.live().len(), 2);
    assert!(cluster.pid(follower).is_none());
    assert!(cluster.kill(follower).is_err(), "a stopped node cannot be killed");

    cluster.restart(follower).await.unwrap();
    assert!(cluster.wait_caught_up(follower, 0, settle).await);
    // Its log holds both runs: the first ended on SIGTERM, in order.
    let log = std::fs::read_to_string(cluster.node(follower).log()).unwrap();
    let stopped = log.lines().filter(|l| l.contains("lsm_server::server: stopped")).count();
    let serving = log.lines().filter(|l| l.contains("lsm_server::server: serving")).count();
    assert_eq!((stopped, serving), (1, 2), "{log}");
    assert!(!cluster.log_tail(follower, 5).is_empty());

    cluster.kill(leader).unwrap();
    assert!(cluster.reap().is_empty(), "a killed node is reaped by the kill");
    let others = [follower, third];
    let new = cluster.agreed_leader(&others, settle).await.expect("the two elect a leader");
    assert_ne!(new, leader);
    assert_eq!(cluster.live().len(), 2);

    // A node that exits by itself is reported once.
    cluster.signal(third, nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut reaped = Vec::new();
    for _ in 0..100 {
        reaped = cluster.reap();
        if !reaped.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reaped.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(), [third]);
    assert!(cluster.reap().is_empty());
    assert_eq!(cluster.stop_all().await, Vec::<u64>::new());
    assert!(cluster.live().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_on_the_same_directory_finds_the_cluster_initialized() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Cluster::prepare(spec(dir.path())).unwrap();
    first.launch().unwrap();
    assert_eq!(first.bootstrap().await.unwrap(), Init::Done);
    let addrs = first.addrs();
    first.stop_all().await;
    drop(first);

    let mut again = Cluster::prepare(spec(dir.path())).unwrap();
    assert_eq!(again.addrs(), addrs, "the configurations written first are kept");
    again.launch().unwrap();
    assert_eq!(again.bootstrap().await.unwrap(), Init::Already);
    let features = again.info(1).await.expect("node 1 answers");
    assert_eq!(features.members.len(), 3);
}
