//! `lsm_bench`: the load tool. Drives a live lsm cluster (three `lsm-server` processes it
//! starts itself, or `--servers`) with concurrent checkout + release pairs and reports
//! throughput, latency, retries, failover gaps, and lost or duplicated grants. The work
//! is in `lsm_benches::load`; this file parses flags, runs, prints, and stops the nodes on
//! Ctrl-C.
//!
//! ```text
//! cargo build --release -p lsm-server
//! cargo run --release -p lsm-benches --bin lsm_bench -- --mode contended --clients 64 --seconds 15
//! cargo run --release -p lsm-benches --bin lsm_bench -- --mode failover --clients 64 --seconds 30 --kills 5
//! ```
//!
//! Exit codes: 0 verified (nothing lost, duplicated or left checked out), 1 verification
//! failed or the run failed, 2 bad flags.

use std::process::ExitCode;

use clap::Parser;
use lsm_benches::load::settings::Flags;
use lsm_benches::load::{self, Settings};

fn main() -> ExitCode {
    // clap prints help and usage errors itself (exit 0 and 2).
    let flags = Flags::parse();
    let settings = match Settings::from_flags(flags) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("lsm_bench: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lsm_bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let progress = |line: &str| eprintln!("lsm_bench: {line}");
    let outcome = runtime.block_on(async {
        // Dropping the run on a signal drops the cluster, which kills the nodes.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
        tokio::select! {
            result = load::run(&settings, &progress) => result,
            _ = tokio::signal::ctrl_c() => Err("interrupted; the nodes were stopped".into()),
            _ = terminate.recv() => Err("terminated; the nodes were stopped".into()),
        }
    });
    match outcome {
        Ok(summary) => {
            if settings.json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(json) => println!("{json}"),
                    Err(e) => eprintln!("lsm_bench: cannot write JSON: {e}"),
                }
            } else {
                print!("{}", summary.table());
            }
            if summary.verified() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(message) => {
            eprintln!("lsm_bench: {message}");
            ExitCode::FAILURE
        }
    }
}
