//! A running lsm node: openraft, the stores, the clock, and the node API the server uses.
//!
//! Writes are stamped with the leader's clock and replicated; the answer is the state
//! machine's output once the entry is applied. On a follower a write answers
//! [`Error::NotLeader`] with the leader's address (the server turns that into forwarding).
//!
//! Time is the leader's job. Before a new leader proposes anything else it commits a
//! `LeaderChange`, which extends every live lease to a full TTL from its clock, so the
//! time an election took never expires a client; and a background timekeeper proposes a
//! `Tick` whenever the state's next expiry has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lsm_core::{Command, Limits, Output, State};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, RaftNetworkFactory, ServerState, SnapshotPolicy};
use tokio::sync::{Mutex, Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::clock::{Clock, Pace};
use crate::error::Error;
use crate::log_store::LogStore;
use crate::state_machine::StateMachineStore;
use crate::types::{NodeId, Proposal, Raft, TypeConfig};

/// Raft timing. The defaults give sub-second failover on a loaded two-core machine
/// without spurious elections; `docs/ARCHITECTURE.md` explains the choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The leader sends a heartbeat this often.
    pub heartbeat_ms: u64,
    /// A follower that hears no heartbeat for a random time in this range starts an
    /// election.
    pub election_min_ms: u64,
    /// See `election_min_ms`.
    pub election_max_ms: u64,
    /// A snapshot is built after this many log entries since the last one.
    pub snapshot_after_entries: u64,
    /// Log entries kept after a snapshot, so a briefly lagging follower catches up from
    /// the log instead of a snapshot.
    pub keep_after_snapshot: u64,
    /// The timekeeper checks for due expiries at least this often.
    pub tick_poll_ms: u64,
    /// Within a term, the leader's timestamps follow its wall clock but run at most this
    /// many parts per million faster or slower than its monotonic clock, so a jump of the
    /// wall clock reaches lease expiry only gradually (see [`crate::clock::Pace`]); 0
    /// stamps the wall clock as it reads.
    pub max_clock_drift_ppm: u64,
    /// A new term's first timestamp is at most this far past the replicated clock, so a
    /// node whose wall clock is far ahead moves cluster time by at most this much when it
    /// wins an election (see [`crate::clock::Pace`]); a clamped start is logged as a
    /// warning and counted in [`LsmNode::clock_status`].
    pub max_term_start_step_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 50,
            election_min_ms: 150,
            election_max_ms: 300,
            snapshot_after_entries: 20_000,
            keep_after_snapshot: 1_000,
            tick_poll_ms: 100,
            max_clock_drift_ppm: 50_000,
            max_term_start_step_ms: 60_000,
        }
    }
}

/// See [`LsmNode::clock_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockStatus {
    /// Terms this node led whose first stamp was held to the step past replicated time.
    pub clamped_term_starts: u64,
    /// The wall clock minus the last stamp this node made as leader, in ms (0 before it
    /// first leads).
    pub skew_ms: i64,
}

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// The cluster's id; peers with another id are refused.
    pub cluster_id: String,
    /// The address peers and clients reach this node at (`host:port`).
    pub addr: String,
    /// Raft timing.
    pub timing: Timing,
    /// Limits for a fresh state (a restored state keeps its own).
    pub limits: Limits,
}

/// One member of the cluster as the status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
    /// A voter (true) or a learner (false).
    pub voter: bool,
    /// On the leader: the last log index known to be replicated to it.
    pub matched_index: Option<u64>,
    /// On the leader: how many entries it is behind the leader's log.
    pub lag: Option<u64>,
}

/// The cluster as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's id.
    pub id: NodeId,
    /// Leader, Follower, Candidate or Learner.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// The leader's id, if known.
    pub leader: Option<NodeId>,
    /// The last index in this node's log.
    pub last_log_index: Option<u64>,
    /// The last index this node knows to be committed.
    pub commit_index: Option<u64>,
    /// The last index applied to this node's state.
    pub applied_index: Option<u64>,
    /// The members.
    pub members: Vec<Member>,
}

/// A running node.
pub struct LsmNode {
    id: NodeId,
    addr: String,
    raft: Raft,
    sm: StateMachineStore,
    log: LogStore,
    clock: Arc<dyn Clock>,
    pace: Pace,
    /// The last term in which this node, as leader, committed its `LeaderChange`.
    announced_term: AtomicU64,
    announcing: Mutex<()>,
    batches: mpsc::Sender<Pending>,
    stop: Arc<Notify>,
    timekeeper: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl LsmNode {
    /// Starts a node on `backend`, talking to peers through `network`.
    pub async fn start<N>(
        config: NodeConfig,
        backend: Arc<dyn Backend>,
        network: N,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<LsmNode>, Error>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let t = &config.timing;
        let raft_config = Config {
            cluster_name: config.cluster_id.clone(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_after_entries),
            max_in_snapshot_log_to_keep: t.keep_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config(e.to_string()))?;
        let log = LogStore::new(backend.clone());
        let sm = StateMachineStore::open(backend, config.limits.clone())
            .map_err(|e| Error::Storage(e.to_string()))?;
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log.clone(), sm.clone())
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        let (batches, queued) = mpsc::channel(MAX_QUEUED_WRITES);
        let node = Arc::new(LsmNode {
            id: config.id,
            addr: config.addr,
            raft,
            sm,
            log,
            clock,
            pace: Pace::new(
                config.timing.max_clock_drift_ppm,
                config.timing.max_term_start_step_ms,
            ),
            announced_term: AtomicU64::new(0),
            announcing: Mutex::new(()),
            batches,
            stop: Arc::new(Notify::new()),
            timekeeper: std::sync::Mutex::new(None),
        });
        let poll = Duration::from_millis(config.timing.tick_poll_ms.max(1));
        let handle = tokio::spawn(timekeeper(Arc::downgrade(&node), node.stop.clone(), poll));
        tokio::spawn(batcher(Arc::downgrade(&node), queued));
        *node.timekeeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The openraft handle (for mounting the peer RPC endpoints).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Proposes `command` stamped with this node's clock, and returns the state
    /// machine's output once it is applied. On a follower: [`Error::NotLeader`].
    ///
    /// Concurrent writes are batched: they wait in a queue while earlier batches are in
    /// flight, and the batcher proposes everything queued as one log entry, so one flush
    /// and one replication round carry them all.
    pub async fn write(&self, command: Command) -> Result<Output, Error> {
        let (reply, answer) = oneshot::channel();
        self.batches
            .send(Pending { command, reply })
            .await
            .map_err(|_| Error::Stopped("the node is shutting down".into()))?;
        answer.await.map_err(|_| Error::Stopped("the node is shutting down".into()))?
    }

    /// The time to stamp a proposal with now: the wall clock, paced within the term.
    ///
    /// Until this node's `LeaderChange` for the current term is committed, anything else
    /// it proposes keeps the replicated clock where it is: the new leader's clock may be
    /// ahead of the old one's, and must not expire a lease before the `LeaderChange` has
    /// extended it. (openraft can accept a write a moment before this node's metrics say
    /// it leads, so such a write can reach the log ahead of the `LeaderChange`.)
    fn stamp_ms(&self, announcing: bool) -> u64 {
        let term = self.raft.metrics().borrow().current_term;
        let replicated = self.read_local(|s| s.now_ms());
        if !announcing && self.announced_term.load(Ordering::SeqCst) < term {
            return replicated;
        }
        let (stamp, clamped) = self.pace.stamp_checked(term, self.clock.now_ms(), replicated);
        if let Some(c) = clamped {
            tracing::warn!(
                node = self.id,
                term,
                wall_ms = c.wall_ms,
                replicated_ms = c.replicated_ms,
                skew_ms = c.wall_ms - c.replicated_ms,
                stamp_ms = c.stamp_ms,
                "this leader's wall clock is far ahead of replicated time; the term starts at most raft.max_term_start_step_ms ahead of it"
            );
        }
        stamp
    }

    /// This node's clock as its leader stamps with it: how many of its terms started
    /// clamped to `max_term_start_step_ms`, and its wall clock's skew on its last stamp.
    pub fn clock_status(&self) -> ClockStatus {
        ClockStatus {
            clamped_term_starts: self.pace.clamped_starts(),
            skew_ms: self.pace.skew_ms(),
        }
    }

    /// Proposes one batch as one log entry; one output per command.
    async fn propose(&self, commands: Vec<Command>) -> Result<Vec<Output>, Error> {
        let count = commands.len();
        let announcing = matches!(commands.as_slice(), [Command::LeaderChange { .. }]);
        let proposal = Proposal { now_ms: self.stamp_ms(announcing), commands };
        match self.raft.client_write(proposal).await {
            Ok(response) if response.data.outputs.len() == count => Ok(response.data.outputs),
            Ok(response) => Err(Error::Stopped(format!(
                "{count} commands were applied with {} outputs",
                response.data.outputs.len()
            ))),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(Error::NotLeader {
                    leader_id: forward.leader_id,
                    leader_addr: forward.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(e)) => Err(Error::Refused(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Error::Stopped(e.to_string())),
        }
    }

    /// As a newly elected leader, commits a `LeaderChange` before anything else.
    async fn announce_leadership(&self) -> Result<(), Error> {
        let (leader, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        if !leader || self.announced_term.load(Ordering::SeqCst) >= term {
            return Ok(());
        }
        let _one_at_a_time = self.announcing.lock().await;
        if self.announced_term.load(Ordering::SeqCst) >= term {
            return Ok(());
        }
        self.propose(vec![Command::LeaderChange { leader: self.id }]).await?;
        self.announced_term.fetch_max(term, Ordering::SeqCst);
        tracing::info!(node = self.id, term, "leader change committed; leases extended");
        Ok(())
    }

    /// A linearizable read: confirms leadership with a quorum, waits until the state has
    /// applied everything committed before the read, then runs `read` on it.
    pub async fn read<T>(&self, read: impl FnOnce(&State) -> T) -> Result<T, Error> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(read(&self.sm.read().state)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(Error::NotLeader {
                    leader_id: forward.leader_id,
                    leader_addr: forward.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(e)) => Err(Error::NoQuorum(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Error::Stopped(e.to_string())),
        }
    }

    /// A fast local read of this node's state, possibly stale (for status pages).
    pub fn read_local<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.sm.read().state)
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|log_id| log_id.map_or(0, |l| l.index));
                Member {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag: matched.zip(last).map(|(matched, last)| last.saturating_sub(matched)),
                }
            })
            .collect();
        ClusterStatus {
            id: self.id,
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: last,
            commit_index: self.log.committed_index(),
            applied_index: m.last_applied.map(|l| l.index),
            members,
        }
    }

    /// Bootstraps a new cluster with these voters. Refused if this node's log already
    /// holds a cluster.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, String>) -> Result<(), Error> {
        let nodes: BTreeMap<NodeId, BasicNode> =
            members.into_iter().map(|(id, addr)| (id, BasicNode::new(addr))).collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(Error::AlreadyInitialized)
            }
            Err(RaftError::APIError(e)) => Err(Error::Refused(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Error::Stopped(e.to_string())),
        }
    }

    /// Adds a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), Error> {
        let result = self.raft.add_learner(id, BasicNode::new(addr), true).await;
        self.membership_result(result)
    }

    /// Makes `voters` the set of voters (joint consensus underneath). Nodes that are
    /// dropped leave the cluster; new voters must have been added as learners first.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), Error> {
        let result = self.raft.change_membership(voters, false).await;
        self.membership_result(result)
    }

    /// Removes a learner (a voter leaves through [`LsmNode::change_membership`]).
    pub async fn remove_learner(&self, id: NodeId) -> Result<(), Error> {
        let change = openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]));
        let result = self.raft.change_membership(change, false).await;
        self.membership_result(result)
    }

    /// The leader's address, if this node knows the leader.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|node| node.addr.clone())
    }

    /// The last log index covered by this node's latest snapshot.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.raft.metrics().borrow().snapshot.map(|log_id| log_id.index)
    }

    fn membership_result<T>(
        &self,
        result: Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    ) -> Result<(), Error> {
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(Error::NotLeader {
                    leader_id: forward.leader_id,
                    leader_addr: forward.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(e)) => Err(Error::Refused(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Error::Stopped(e.to_string())),
        }
    }

    /// Builds a snapshot now.
    pub async fn trigger_snapshot(&self) -> Result<(), Error> {
        self.raft.trigger().snapshot().await.map_err(|e| Error::Stopped(e.to_string()))
    }

    /// Stops the timekeeper and Raft.
    pub async fn shutdown(&self) {
        self.stop.notify_waiters();
        let handle = self.timekeeper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            handle.abort();
        }
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, node = self.id, "raft did not shut down cleanly");
        }
    }
}

/// A write waiting for its batch.
struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Output, Error>>,
}

/// Writes queued before the batcher stops taking more (callers then wait to enqueue).
const MAX_QUEUED_WRITES: usize = 65_536;
/// Most commands in one log entry.
const MAX_BATCH: usize = 1_024;
/// Batches proposed and not yet applied. openraft appends one entry at a time, so two in
/// flight keep the disk busy while the previous batch replicates, and everything that
/// arrives meanwhile joins the next batch.
const MAX_IN_FLIGHT: usize = 2;

/// Takes queued writes in batches and proposes each batch as one entry.
async fn batcher(node: std::sync::Weak<LsmNode>, mut queued: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = queued.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            let (commands, replies): (Vec<Command>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let result = match node.announce_leadership().await {
                Ok(()) => node.propose(commands).await,
                Err(error) => Err(error),
            };
            match result {
                Ok(outputs) => {
                    for (reply, output) in replies.into_iter().zip(outputs) {
                        let _ = reply.send(Ok(output));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Proposes `LeaderChange` after an election and `Tick` when an expiry is due, while this
/// node leads.
async fn timekeeper(node: std::sync::Weak<LsmNode>, stop: Arc<Notify>, poll: Duration) {
    loop {
        let wait = {
            let Some(node) = node.upgrade() else { return };
            let leading = node.raft.metrics().borrow().state == ServerState::Leader;
            if leading {
                let due = node.read_local(|s| s.next_expiry());
                let now = node.stamp_ms(true);
                let result = match due {
                    Some(at) if at <= now => node.write(Command::Tick).await.map(|_| ()),
                    _ => node.announce_leadership().await,
                };
                if let Err(error) = result {
                    tracing::debug!(%error, node = node.id, "timekeeper could not propose");
                }
            }
            poll
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.notified() => return,
        }
    }
}
