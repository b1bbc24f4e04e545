//! The simulated site: three real lsm-server nodes and the client hosts, in one turmoil
//! simulation.
//!
//! Each node host runs `lsm_server::Server::start` (the production server, with its real
//! Raft node, HTTP API, forwarding and peer RPCs) on a crash-model `MemoryBackend`, with a
//! skewable [`NodeClock`], serving its router on simulated TCP. The backend outlives the
//! host: a crash keeps only what the backend had flushed ([`MemoryBackend::crash`]), and
//! a restart boots the same host software on what survived.
//!
//! A crash can happen between two simulation steps, or in the middle of one: a node armed
//! to crash at its `k`-th storage write takes the crash image at that write (everything
//! not yet flushed is lost, including that write), and from then on nothing it sends
//! reaches anyone ([`crate::net::Doom`]); the driver stops the host at the end of the
//! step and restarts it from the image later. That is a power cut in the middle of an
//! append, between the write and the fsync.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lsm_core::{Entitlement, Install, Limits, PoolSpec};
use lsm_raft::backend::{Backend, BackendResult, MemoryBackend, RawEntry};
use lsm_raft::network::http::HttpNetwork;
use lsm_raft::node::LsmNode;
use lsm_server::{Config, RaftTiming, Server};

use crate::clock::{NodeClock, SimTime};
use crate::net::{self, Doom, PeerOverTransport, SimListener};

/// The cluster's id.
pub const CLUSTER_ID: &str = "sim";

/// Node ids and host names.
pub const NODES: [(u64, &str); 3] = [(1, "n1"), (2, "n2"), (3, "n3")];

/// The `host:port` of every node.
pub fn servers() -> Vec<String> {
    NODES.iter().map(|(_, name)| format!("{name}:{}", net::PORT)).collect()
}

/// The license every run installs: `abaqus`, 8 plain tokens in pools `a` and `b` capped
/// at 5 each; `lsdyna`, 10 tokens at one per core, in pools `smp` (cap 6) and `mpp`
/// (cap 8) that serve their mode.
pub fn license() -> Install {
    let feature = |name: &str, total: u64| Entitlement {
        feature: name.parse().expect("feature name"),
        license: "sim".parse().expect("license id"),
        tokens_total: total,
        starts_at_ms: 0,
        expires_at_ms: 4_102_444_800_000,
        cost: lsm_core::CostRule::PerCore { base_tokens: 0, tokens_per_core: 1, cores_included: 0 },
        max_borrow_ms: 0,
    };
    let pool = |name: &str, cap: u64, modes: &[lsm_core::ParallelMode]| PoolSpec {
        name: name.parse().expect("pool name"),
        reserve: 0,
        cap: Some(cap),
        lend: false,
        keep_idle: 0,
        modes: modes.to_vec(),
    };
    let mut install = Install {
        entitlements: vec![feature("abaqus", 8), feature("lsdyna", 10)],
        ..Default::default()
    };
    install
        .policy
        .pools
        .insert("abaqus".parse().expect("feature"), vec![pool("a", 5, &[]), pool("b", 5, &[])]);
    install.policy.pools.insert(
        "lsdyna".parse().expect("feature"),
        vec![
            pool("smp", 6, &[lsm_core::ParallelMode::Smp]),
            pool("mpp", 8, &[lsm_core::ParallelMode::Mpp]),
        ],
    );
    install
}

/// Caps of the license above: (feature, pool) to cap, and feature to total.
pub fn caps() -> (BTreeMap<(String, String), u64>, BTreeMap<String, u64>) {
    let install = license();
    let totals =
        install.entitlements.iter().map(|e| (e.feature.to_string(), e.tokens_total)).collect();
    let caps = install
        .policy
        .pools
        .iter()
        .flat_map(|(feature, pools)| {
            pools.iter().map(move |p| {
                ((feature.to_string(), p.name.to_string()), p.cap.unwrap_or(u64::MAX))
            })
        })
        .collect();
    (caps, totals)
}

/// One node's configuration, built in code as an operator would write it.
pub fn node_config(
    id: u64,
    snapshot_after_entries: u64,
    lease_ttl_ms: u64,
    max_clock_drift_ppm: u64,
    max_term_start_step_ms: u64,
) -> Config {
    let peers = NODES.iter().map(|(id, name)| (*id, format!("{name}:{}", net::PORT))).collect();
    Config {
        node_id: id,
        cluster_id: CLUSTER_ID.into(),
        listen: format!("0.0.0.0:{}", net::PORT),
        data_dir: format!("/sim/n{id}").into(),
        lease_ttl_ms,
        peers,
        raft: RaftTiming {
            snapshot_after_entries,
            keep_after_snapshot: 20,
            max_clock_drift_ppm,
            max_term_start_step_ms,
            ..RaftTiming::default()
        },
        limits: Limits::default(),
        log_level: "warn".into(),
        ..Config::default()
    }
}

/// A node as the driver controls it: its disk, its clock, its running Raft node.
pub struct NodeCtl {
    /// The node id.
    pub id: u64,
    /// The turmoil host name.
    pub name: &'static str,
    /// Its wall clock.
    pub clock: NodeClock,
    /// What the next boot starts from.
    disk: Mutex<Arc<MemoryBackend>>,
    /// The running incarnation's Raft node, once started.
    node: Mutex<Option<Arc<LsmNode>>>,
    /// A pending mid-step crash.
    crash: Mutex<CrashState>,
    /// Boots so far.
    pub boots: AtomicU64,
}

#[derive(Default)]
struct CrashState {
    /// Crash at the storage write this many writes from now (1: the next).
    armed: Option<u32>,
    /// The running incarnation's doom flag.
    doom: Doom,
    /// The crash image, once taken, and how many unflushed writes it lost.
    image: Option<(MemoryBackend, usize)>,
}

impl NodeCtl {
    /// A node that has never run, with clock skew `skew_ms`.
    pub fn new(id: u64, name: &'static str, time: SimTime, skew_ms: i64) -> Arc<NodeCtl> {
        Arc::new(NodeCtl {
            id,
            name,
            clock: NodeClock::new(time, skew_ms),
            disk: Mutex::new(Arc::new(MemoryBackend::new())),
            node: Mutex::new(None),
            crash: Mutex::new(CrashState::default()),
            boots: AtomicU64::new(0),
        })
    }

    /// The running Raft node, if the host is up and has started it.
    pub fn node(&self) -> Option<Arc<LsmNode>> {
        self.node.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Arms a crash at the `writes`-th storage write from now.
    pub fn arm_crash(&self, writes: u32) {
        self.crash.lock().unwrap_or_else(|e| e.into_inner()).armed = Some(writes.max(1));
    }

    /// True when an armed crash has taken its image: stop the host now.
    pub fn crash_taken(&self) -> bool {
        self.crash.lock().unwrap_or_else(|e| e.into_inner()).image.is_some()
    }

    /// Dooms the running incarnation, before the host is stopped: see [`Doom`].
    pub fn doom(&self) {
        self.crash.lock().unwrap_or_else(|e| e.into_inner()).doom.set();
    }

    /// After the host was [doomed](Self::doom) and stopped: the disk becomes what the
    /// crash left (the image taken mid-step, or else what was flushed by now). Returns
    /// the unflushed writes lost.
    pub fn after_crash(&self) -> usize {
        *self.node.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut crash = self.crash.lock().unwrap_or_else(|e| e.into_inner());
        crash.armed = None;
        let mut disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        let (survived, lost) =
            crash.image.take().unwrap_or_else(|| (disk.crash(), disk.pending_writes()));
        *disk = Arc::new(survived);
        lost
    }

    /// Starts an incarnation: its doom flag and its disk.
    fn boot(self: &Arc<Self>) -> (Doom, Arc<dyn Backend>) {
        self.boots.fetch_add(1, Ordering::SeqCst);
        let doom = Doom::new();
        let mut crash = self.crash.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::mem::replace(
            &mut *crash,
            CrashState { doom: doom.clone(), ..CrashState::default() },
        );
        // The previous incarnation's connections are reset now, from this host.
        before.doom.close_all();
        let live = self.disk.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let disk = SimDisk { live, ctl: self.clone(), doom: doom.clone() };
        (doom, Arc::new(disk))
    }

    /// A storage write is about to happen on the live disk: take the crash image if an
    /// armed crash is due.
    fn before_write(&self, live: &MemoryBackend, doom: &Doom) {
        let mut crash = self.crash.lock().unwrap_or_else(|e| e.into_inner());
        if doom.is_set() || crash.image.is_some() {
            return;
        }
        match crash.armed {
            Some(1) => {
                crash.armed = None;
                // This write is lost too: the power went before it reached the disk.
                crash.image = Some((live.crash(), live.pending_writes() + 1));
                doom.set();
            }
            Some(n) => crash.armed = Some(n - 1),
            None => {}
        }
    }
}

/// The disk a node runs on: the crash-model backend, watched for armed crashes.
struct SimDisk {
    live: Arc<MemoryBackend>,
    ctl: Arc<NodeCtl>,
    doom: Doom,
}

impl Backend for SimDisk {
    fn get_meta(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        self.live.get_meta(key)
    }
    fn put_meta(&self, key: &str, value: &[u8]) -> BackendResult<()> {
        self.ctl.before_write(&self.live, &self.doom);
        self.live.put_meta(key, value)
    }
    fn put_meta_durable(&self, key: &str, value: &[u8]) -> BackendResult<()> {
        self.live.put_meta_durable(key, value)
    }
    fn append(&self, entries: &[RawEntry]) -> BackendResult<()> {
        self.ctl.before_write(&self.live, &self.doom);
        self.live.append(entries)
    }
    fn flush(&self) -> BackendResult<()> {
        self.live.flush()
    }
    fn entries(&self, from: u64, to: u64) -> BackendResult<Vec<RawEntry>> {
        self.live.entries(from, to)
    }
    fn last_entry(&self) -> BackendResult<Option<RawEntry>> {
        self.live.last_entry()
    }
    fn truncate_from(&self, from: u64) -> BackendResult<()> {
        self.live.truncate_from(from)
    }
    fn purge_upto(&self, upto: u64) -> BackendResult<()> {
        self.ctl.before_write(&self.live, &self.doom);
        self.live.purge_upto(upto)
    }
    fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> BackendResult<()> {
        self.live.save_snapshot(meta, data)
    }
    fn load_snapshot(&self) -> BackendResult<Option<(Vec<u8>, Vec<u8>)>> {
        self.live.load_snapshot()
    }
    fn blocks(&self) -> bool {
        // Every call returns at once: the node calls it inline, on the simulation
        // thread, so task order never depends on a blocking thread's speed.
        false
    }
}

/// The software of a node host: the real server on the node's disk, serving its router
/// on simulated TCP until the host is crashed.
pub async fn node_main(ctl: Arc<NodeCtl>, config: Config) -> turmoil::Result {
    let (doom, disk) = ctl.boot();
    let transport = net::transport(doom.clone());
    let peers = Arc::new(PeerOverTransport(transport.clone()));
    let network = HttpNetwork::with_transport(CLUSTER_ID, ctl.id, peers);
    let clock = Arc::new(ctl.clock.clone());
    let server = Server::start(config, disk, network, clock, transport).await?;
    *ctl.node.lock().unwrap_or_else(|e| e.into_inner()) = Some(server.node().clone());
    let listener = SimListener::bind(doom).await?;
    axum::serve(listener, server.router()).await?;
    Ok(())
}
