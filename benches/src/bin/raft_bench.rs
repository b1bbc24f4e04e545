//! Throughput, latency and failover of a three-node in-process lsm cluster.
//!
//! Three `LsmNode`s in one process, each on its own redb database in a temporary
//! directory with fsync on (every acknowledged write has been flushed on a majority),
//! joined by the in-memory network. For each number of concurrent proposers, every
//! proposer repeats checkout (1 to 4 tokens) then release against one feature through the
//! leader for the given duration; the tool reports pairs per second and checkout latency.
//! Then it kills the leader several times under load and reports the time from the kill to
//! the first successful write on the new leader.
//!
//! ```text
//! cargo run --release -p lsm-benches --bin raft_bench
//! cargo run --release -p lsm-benches --bin raft_bench -- --seconds 10 --proposers 1,64,256 --kills 5
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsm_core::{
    CheckoutRequest, ClientId, Command, Demand, Entitlement, Install, Item, Op, Request, Response,
};
use lsm_raft::cluster::{Cluster, Storage};
use lsm_raft::node::LsmNode;

struct Args {
    seconds: u64,
    proposers: Vec<usize>,
    kills: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { seconds: 5, proposers: vec![1, 64, 256], kills: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--kills" => args.kills = value.parse().map_err(|e| format!("--kills: {e}"))?,
            "--proposers" => {
                args.proposers = (value.split(','))
                    .map(|p| p.parse().map_err(|e| format!("--proposers: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn request(client: &ClientId, seq: u64, op: Op) -> Command {
    Command::Request(Request { client: client.clone(), seq, ack: seq, op })
}

fn checkout(tokens: u64) -> Op {
    Op::Checkout(CheckoutRequest {
        items: vec![Item {
            feature: "lsdyna".parse().expect("valid"),
            demand: Demand::Tokens(tokens),
            pool: None,
        }],
        user: "bench".parse().expect("valid"),
        host: "bench-host".parse().expect("valid"),
        job: None,
        lease_ttl_ms: 600_000,
        borrow_until_ms: None,
        wait: None,
    })
}

/// One proposer: checkout then release until `until`; returns pairs and checkout
/// latencies in microseconds.
async fn proposer(node: Arc<LsmNode>, name: String, until: Instant) -> (u64, Vec<u32>) {
    let client: ClientId = name.parse().expect("valid client id");
    let (mut seq, mut pairs, mut latencies) = (0u64, 0u64, Vec::new());
    while Instant::now() < until {
        seq += 1;
        let started = Instant::now();
        let out = node.write(request(&client, seq, checkout(1 + seq % 4))).await;
        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        let Ok(out) = out else { break };
        let Response::Granted(grant) = out.response else { break };
        seq += 1;
        if node.write(request(&client, seq, Op::Release(grant.id))).await.is_err() {
            break;
        }
        pairs += 1;
    }
    (pairs, latencies)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[at]) / 1_000.0
}

async fn run(args: Args) -> Result<(), String> {
    let mut cluster = Cluster::start(3, Storage::Redb, 1).await.map_err(|e| e.to_string())?;
    let admin: ClientId = "admin".parse().expect("valid");
    let install = Op::Install(Install {
        entitlements: vec![Entitlement {
            feature: "lsdyna".parse().expect("valid"),
            license: "bench".parse().expect("valid"),
            tokens_total: 10_000_000,
            starts_at_ms: 0,
            expires_at_ms: u64::MAX,
            cost: Default::default(),
            max_borrow_ms: 0,
        }],
        policy: Default::default(),
    });
    let timeout = Duration::from_secs(10);
    cluster.write(1, request(&admin, 1, install), timeout).await.map_err(|e| e.to_string())?;

    println!("three nodes in one process, redb with fdatasync, in-memory network");
    println!("proposers  pairs/s  checkout p50 ms  p99 ms  max ms");
    for (round, &count) in args.proposers.iter().enumerate() {
        let leader = cluster.wait_for_leader(timeout).await.map_err(|e| e.to_string())?;
        let node = cluster.node(leader).clone();
        let until = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let tasks: Vec<_> = (0..count)
            .map(|i| tokio::spawn(proposer(node.clone(), format!("r{round}-p{i}"), until)))
            .collect();
        let (mut pairs, mut latencies) = (0u64, Vec::new());
        for task in tasks {
            let (p, l) = task.await.map_err(|e| e.to_string())?;
            pairs += p;
            latencies.extend(l);
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        println!(
            "{count:>9}  {:>7.0}  {:>15.2}  {:>6.2}  {:>6.2}",
            pairs as f64 / elapsed,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
    }

    println!(
        "\nfailover under load (16 proposers): leader killed -> first write on the new leader"
    );
    let mut gaps = Vec::new();
    for kill in 0..args.kills {
        let leader = cluster.wait_for_leader(timeout).await.map_err(|e| e.to_string())?;
        let node = cluster.node(leader).clone();
        let until = Instant::now() + Duration::from_millis(500);
        let load: Vec<_> = (0..16)
            .map(|i| tokio::spawn(proposer(node.clone(), format!("k{kill}-p{i}"), until)))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = Instant::now();
        cluster.crash(leader).await;
        let crashed_in = killed.elapsed();
        drop(node);
        let survivor = cluster.running().into_iter().next().ok_or("no node left")?;
        let probe: ClientId = format!("probe{kill}").parse().expect("valid");
        cluster
            .write(survivor, request(&probe, 1, Op::Heartbeat(lsm_core::CheckoutId(1))), timeout)
            .await
            .map_err(|e| e.to_string())?;
        let gap = killed.elapsed();
        eprintln!(
            "    (stopping the old leader took {:.0} ms)",
            crashed_in.as_secs_f64() * 1_000.0
        );
        for task in load {
            let _ = task.await;
        }
        println!("  kill {}: node {leader}, {:.0} ms", kill + 1, gap.as_secs_f64() * 1_000.0);
        gaps.push(gap);
        cluster.restart(leader).await.map_err(|e| e.to_string())?;
        cluster.wait_for_leader(timeout).await.map_err(|e| e.to_string())?;
    }
    gaps.sort();
    if let (Some(median), Some(max)) = (gaps.get(gaps.len() / 2), gaps.last()) {
        println!(
            "failover: median {:.0} ms, max {:.0} ms over {} kills",
            median.as_secs_f64() * 1_000.0,
            max.as_secs_f64() * 1_000.0,
            gaps.len()
        );
    }
    cluster.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("raft_bench: {message}");
            eprintln!("usage: raft_bench [--seconds N] [--proposers 1,64,256] [--kills N]");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("raft_bench: {message}");
            ExitCode::FAILURE
        }
    }
}
