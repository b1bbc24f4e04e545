//! `lsm_bench`, the load tool: drives a live cluster with concurrent clients and reports
//! what they saw.
//!
//! W clients, each an `lsm_client::Client` with its own client id, repeat checkout (1 to
//! 4 tokens) then release for D seconds against one shared feature (contended), a feature
//! each (uncontended), or one shared feature while the leader is killed and restarted
//! several times (failover). The tool reports pairs per second, checkout and release
//! latency percentiles, denials by code, the client library's retries, the longest gap
//! between successful operations (per kill in failover mode), and lost and duplicated
//! grants; at the end it checks, with linearizable reads, that nothing is left checked
//! out. It starts three `lsm-server` processes itself unless given `--servers`.
//!
//! - [`settings`]: flags, then validated settings;
//! - [`cluster`]: the three child processes (an `lsm_server::kit::Cluster`), their kills
//!   and restarts;
//! - [`workload`]: the clients and the exchange counter;
//! - [`audit`]: lost and duplicated grants against linearizable reads;
//! - [`cpu`]: how much CPU the run, and everything else on the machine, took;
//! - [`stats`]: percentiles, gaps and medians;
//! - [`report`]: the summary, as a table or JSON, with the targets;
//! - [`run`](mod@run): one run from start to summary.
//!
//! `docs/benchmarks.md` ("The load tool") has the commands and the figures.

pub mod audit;
pub mod cluster;
pub mod cpu;
pub mod report;
pub mod run;
pub mod settings;
pub mod stats;
pub mod workload;

pub use report::Summary;
pub use run::run;
pub use settings::Settings;
