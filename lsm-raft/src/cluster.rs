//! An in-process cluster for tests and benchmarks.
//!
//! Several [`LsmNode`]s in one process, joined by a [`MemoryNetwork`] that can partition,
//! cut one way, drop and delay messages, with storage on redb in temporary directories or
//! on crash-model [`MemoryBackend`]s. Nodes can be crashed and restarted from what their
//! storage kept. Leases run on one shared [`ManualClock`] that the test moves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsm_core::{Command, Limits, Output, Request};

use crate::backend::{Backend, MemoryBackend, RedbBackend};
use crate::clock::ManualClock;
use crate::error::Error;
use crate::network::memory::MemoryNetwork;
use crate::node::{LsmNode, NodeConfig, Timing};
use crate::types::NodeId;

/// Where a test cluster keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// redb in a temporary directory per node, every flush synced.
    Redb,
    /// In memory, with the crash model.
    Memory,
}

enum Disk {
    Redb(tempfile::TempDir),
    Memory(Arc<MemoryBackend>),
}

/// A cluster in one process.
pub struct Cluster {
    /// The network between the nodes.
    pub network: MemoryNetwork,
    /// The clock every node stamps commands with.
    pub clock: ManualClock,
    /// Raft timing of every node.
    pub timing: Timing,
    cluster_id: String,
    storage: Storage,
    disks: BTreeMap<NodeId, Disk>,
    nodes: BTreeMap<NodeId, Arc<LsmNode>>,
}

/// A cluster's address for node `id` (only a label: the memory network routes by id).
fn addr(id: NodeId) -> String {
    format!("node-{id}.local:7000")
}

impl Cluster {
    /// Starts `size` nodes (ids 1..=size), bootstraps them as voters and waits for a
    /// leader.
    pub async fn start(size: u64, storage: Storage, seed: u64) -> Result<Cluster, Error> {
        Cluster::start_with(size, storage, seed, Timing::default()).await
    }

    /// [`Cluster::start`] with other Raft timing.
    pub async fn start_with(
        size: u64,
        storage: Storage,
        seed: u64,
        timing: Timing,
    ) -> Result<Cluster, Error> {
        let cluster_id = format!("test-{seed}");
        let mut cluster = Cluster {
            network: MemoryNetwork::new(&cluster_id, seed),
            clock: ManualClock::new(1_750_000_000_000),
            timing,
            cluster_id,
            storage,
            disks: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for id in 1..=size {
            cluster.boot(id).await?;
        }
        let members = (1..=size).map(|id| (id, addr(id))).collect();
        cluster.node(1).bootstrap(members).await?;
        cluster.wait_for_leader(Duration::from_secs(10)).await?;
        Ok(cluster)
    }

    /// Starts node `id` on its disk (a new, empty one if it has none yet).
    pub async fn boot(&mut self, id: NodeId) -> Result<(), Error> {
        let backend: Arc<dyn Backend> = match self.disks.get(&id) {
            Some(Disk::Memory(disk)) => disk.clone(),
            Some(Disk::Redb(dir)) => Arc::new(open_redb(dir.path()).await?),
            None => match self.storage {
                Storage::Memory => {
                    let disk = Arc::new(MemoryBackend::new());
                    self.disks.insert(id, Disk::Memory(disk.clone()));
                    disk
                }
                Storage::Redb => {
                    let dir = tempfile::tempdir().map_err(|e| Error::Storage(e.to_string()))?;
                    let backend = Arc::new(open_redb(dir.path()).await?);
                    self.disks.insert(id, Disk::Redb(dir));
                    backend
                }
            },
        };
        let config = NodeConfig {
            id,
            cluster_id: self.cluster_id.clone(),
            addr: addr(id),
            timing: self.timing.clone(),
            limits: Limits::default(),
        };
        let clock = Arc::new(self.clock.clone());
        let node = LsmNode::start(config, backend, self.network.factory(id), clock).await?;
        self.network.register(id, node.raft().clone());
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Stops node `id` abruptly. With memory storage, whatever it had not flushed is lost.
    pub async fn crash(&mut self, id: NodeId) {
        self.network.unregister(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
        if let Some(Disk::Memory(disk)) = self.disks.get(&id) {
            let survived = Arc::new(disk.crash());
            self.disks.insert(id, Disk::Memory(survived));
        }
    }

    /// Restarts a crashed node from its disk.
    pub async fn restart(&mut self, id: NodeId) -> Result<(), Error> {
        self.boot(id).await
    }

    /// The running node `id`. Panics if it is not running: a test bug.
    pub fn node(&self, id: NodeId) -> &Arc<LsmNode> {
        self.nodes.get(&id).unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> BTreeSet<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The memory backend of node `id`, if the cluster runs on memory storage.
    pub fn memory_disk(&self, id: NodeId) -> Option<Arc<MemoryBackend>> {
        match self.disks.get(&id) {
            Some(Disk::Memory(disk)) => Some(disk.clone()),
            _ => None,
        }
    }

    /// Waits until a running node considers itself leader, and the running nodes that
    /// can reach it agree. Returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, Error> {
        self.wait_for_leader_among(&self.running(), timeout).await
    }

    /// Waits until one of `among` leads and every node in `among` knows it.
    pub async fn wait_for_leader_among(
        &self,
        among: &BTreeSet<NodeId>,
        timeout: Duration,
    ) -> Result<NodeId, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: BTreeSet<Option<NodeId>> =
                among.iter().map(|id| self.node(*id).status().leader).collect();
            if let [Some(leader)] = leaders.iter().copied().collect::<Vec<_>>()[..]
                && among.contains(&leader)
                && self.node(leader).status().role == "Leader"
            {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                return Err(Error::NoQuorum(format!("no agreed leader among {among:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a command to node `via`, following leader hints and retrying through
    /// elections until `timeout`, as a client would. A request keeps its `(client, seq)`
    /// across retries, so a retry never applies twice.
    pub async fn write(
        &self,
        via: NodeId,
        command: Command,
        timeout: Duration,
    ) -> Result<Output, Error> {
        let deadline = Instant::now() + timeout;
        let mut target = via;
        loop {
            let result = match self.nodes.get(&target) {
                Some(node) => node.write(command.clone()).await,
                None => Err(Error::Stopped(format!("node {target} is down"))),
            };
            match result {
                Ok(output) => return Ok(output),
                Err(error) if Instant::now() > deadline => return Err(error),
                Err(Error::NotLeader { leader_id: Some(leader), .. })
                    if self.nodes.contains_key(&leader) =>
                {
                    target = leader;
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    let running: Vec<NodeId> = self.nodes.keys().copied().collect();
                    let at = running.iter().position(|id| *id == target).map_or(0, |i| i + 1);
                    target = running[at % running.len().max(1)];
                }
            }
        }
    }

    /// Sends a client request through any node (see [`Cluster::write`]).
    pub async fn request(&self, via: NodeId, request: Request) -> Result<Output, Error> {
        self.write(via, Command::Request(request), Duration::from_secs(10)).await
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        while self.nodes.values().any(|n| n.status().applied_index.unwrap_or(0) < index) {
            if Instant::now() > deadline {
                return Err(Error::NoQuorum(format!("not every node applied {index}")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Shuts every node down.
    pub async fn shutdown(&mut self) {
        for id in self.running() {
            self.crash(id).await;
        }
    }
}

/// Opens redb, retrying briefly while a just-stopped node still holds the file.
async fn open_redb(dir: &std::path::Path) -> Result<RedbBackend, Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match RedbBackend::open(dir) {
            Ok(backend) => return Ok(backend),
            Err(error) if Instant::now() > deadline => {
                return Err(Error::Storage(error.to_string()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
