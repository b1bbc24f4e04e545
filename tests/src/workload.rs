//! A workload of many real clients, each recording what it asks, what it is told and what
//! it believes it holds, and an observer that snapshots the cluster.
//!
//! Every client of a [`Workload`] is a task with its own [`lsm_client::Client`] (its own
//! client id and connections) that reaches the cluster through its [`ClientGroup`]'s
//! proxies, with the servers in a random order. A client checks out a solver job (tokens,
//! or cores in a mode), holds it with a [`Lease`] that renews itself in the background,
//! for a random time or until the workload stops, and releases it; then pauses and goes
//! again. Everything lands in the shared [`History`]: the request, the answer, every
//! renewal, a lease loss, the release and its answer.
//!
//! The [`Observer`] reads every live checkout through a node in turn (a linearizable
//! read, straight to the node, around the proxies) and records it as a snapshot, which
//! the checkers compare with what the clients believe.
//!
//! The random choices come from a seeded generator per client, so a run's choices (not
//! its timing: the processes are real) replay from the seed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lsm_check::history::{Event, History, LiveCheckout, Outcome};
use lsm_client::api::{CheckoutBody, ItemBody, WaitBody};
use lsm_client::{CheckoutOptions, Client, ClientConfig, ClientError, Lease, LeaseLoss};
use lsm_core::ParallelMode;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::history;
use crate::net::ClientGroup;
use crate::{Http, api};

/// The license of the fault tests: LS-DYNA's four solver classes (explicit with SMP and
/// MPP pools, implicit, EM, thermal), Abaqus, and a `probe` feature only the liveness
/// probes use, so a probe is never refused for want of tokens.
pub const SOLVER_LICENSE: &str = r#"
[[entitlements]]
feature = "lsdyna"
license = "faults"
tokens_total = 48
expires_at_ms = 4102444800000
cost = { per_core = { tokens_per_core = 1 } }

[[entitlements]]
feature = "lsdyna-implicit"
license = "faults"
tokens_total = 12
expires_at_ms = 4102444800000
cost = { per_core = { base_tokens = 1, tokens_per_core = 1, cores_included = 4 } }

[[entitlements]]
feature = "lsdyna-em"
license = "faults"
tokens_total = 8
expires_at_ms = 4102444800000

[[entitlements]]
feature = "lsdyna-thermal"
license = "faults"
tokens_total = 8
expires_at_ms = 4102444800000

[[entitlements]]
feature = "abaqus"
license = "faults"
tokens_total = 16
expires_at_ms = 4102444800000

[[entitlements]]
feature = "probe"
license = "faults"
tokens_total = 64
expires_at_ms = 4102444800000

[[policy.pools.lsdyna]]
name = "smp"
reserve = 8
cap = 24
lend = true
keep_idle = 2
modes = ["smp"]

[[policy.pools.lsdyna]]
name = "mpp"
reserve = 24
lend = true
modes = ["mpp"]
"#;

/// One item a job asks for, with a range for the random draw.
#[derive(Clone, Debug)]
pub enum Ask {
    /// `min..=max` tokens of a feature.
    Tokens {
        /// The feature.
        feature: &'static str,
        /// Fewest.
        min: u64,
        /// Most.
        max: u64,
    },
    /// `min..=max` cores of a feature in a mode.
    Cores {
        /// The feature.
        feature: &'static str,
        /// SMP or MPP.
        mode: ParallelMode,
        /// Fewest.
        min: u64,
        /// Most.
        max: u64,
    },
}

/// A kind of job: a name and what it checks out (all items at once).
#[derive(Clone, Debug)]
pub struct Job {
    /// For the history.
    pub name: &'static str,
    /// The items.
    pub asks: Vec<Ask>,
}

impl Job {
    /// A job asking exactly for `asks`.
    pub fn new(name: &'static str, asks: Vec<Ask>) -> Job {
        Job { name, asks }
    }

    /// `tokens` tokens of `feature`.
    pub fn tokens(name: &'static str, feature: &'static str, tokens: u64) -> Job {
        Job::new(name, vec![Ask::Tokens { feature, min: tokens, max: tokens }])
    }

    /// `cores` cores of `feature` in `mode`.
    pub fn cores(name: &'static str, feature: &'static str, cores: u64, mode: ParallelMode) -> Job {
        Job::new(name, vec![Ask::Cores { feature, mode, min: cores, max: cores }])
    }

    /// The items of one checkout, drawn from the ranges, and a description.
    pub fn draw(&self, rng: &mut impl Rng) -> (Vec<ItemBody>, String) {
        let mut items = Vec::new();
        let mut words = vec![self.name.to_string()];
        for ask in &self.asks {
            match *ask {
                Ask::Tokens { feature, min, max } => {
                    let n = rng.random_range(min..=max);
                    items.push(ItemBody::tokens(feature.parse().expect("a feature name"), n));
                    words.push(format!("{feature}:{n}"));
                }
                Ask::Cores { feature, mode, min, max } => {
                    let n = rng.random_range(min..=max);
                    items.push(ItemBody::cores(feature.parse().expect("a feature name"), n, mode));
                    words.push(format!("{feature}:{n}{}", mode_name(mode)));
                }
            }
        }
        (items, words.join(" "))
    }
}

fn mode_name(mode: ParallelMode) -> &'static str {
    match mode {
        ParallelMode::Smp => "smp",
        ParallelMode::Mpp => "mpp",
    }
}

/// The solver jobs of [`SOLVER_LICENSE`]: explicit SMP and MPP runs, implicit, EM coupled
/// with explicit MPP, thermal, and Abaqus.
pub fn solver_jobs() -> Vec<Job> {
    use ParallelMode::{Mpp, Smp};
    vec![
        Job::new("explicit-smp", vec![Ask::Cores { feature: "lsdyna", mode: Smp, min: 2, max: 8 }]),
        Job::new(
            "explicit-mpp",
            vec![Ask::Cores { feature: "lsdyna", mode: Mpp, min: 4, max: 16 }],
        ),
        Job::new(
            "implicit",
            vec![Ask::Cores { feature: "lsdyna-implicit", mode: Smp, min: 4, max: 8 }],
        ),
        Job::new(
            "em",
            vec![
                Ask::Tokens { feature: "lsdyna-em", min: 1, max: 2 },
                Ask::Cores { feature: "lsdyna", mode: Mpp, min: 4, max: 8 },
            ],
        ),
        Job::new("thermal", vec![Ask::Tokens { feature: "lsdyna-thermal", min: 1, max: 2 }]),
        Job::new("abaqus", vec![Ask::Tokens { feature: "abaqus", min: 1, max: 4 }]),
    ]
}

/// How long a client holds a checkout.
#[derive(Clone, Copy, Debug)]
pub enum Hold {
    /// A random time in the range, then release, pause (a random time in `pause`) and go
    /// again.
    Cycle {
        /// Shortest and longest hold.
        hold: (Duration, Duration),
        /// Shortest and longest pause between jobs.
        pause: (Duration, Duration),
    },
    /// One checkout, held until the workload stops (or the lease is lost).
    UntilStopped,
}

/// What a [`Workload`] runs.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Clients per group.
    pub clients: usize,
    /// The jobs; a cycling client draws one at random each time, a holding client `i`
    /// takes job `i` (modulo their number).
    pub jobs: Vec<Job>,
    /// How long checkouts are held.
    pub hold: Hold,
    /// The lease TTL every checkout asks for.
    pub lease_ttl: Duration,
    /// Percent of checkouts that wait in the queue when the tokens are busy (for at most
    /// `queue_wait`).
    pub wait_percent: u32,
    /// How long a waiting checkout waits before it withdraws.
    pub queue_wait: Duration,
    /// How long one client operation keeps retrying.
    pub deadline: Duration,
    /// Seeds every client's choices.
    pub seed: u64,
}

impl WorkloadConfig {
    /// Cycling clients over [`solver_jobs`], holding 0.5-3 s with pauses of 0.1-1 s.
    pub fn cycling(clients: usize, lease_ttl: Duration, seed: u64) -> WorkloadConfig {
        WorkloadConfig {
            clients,
            jobs: solver_jobs(),
            hold: Hold::Cycle {
                hold: (Duration::from_millis(500), Duration::from_secs(3)),
                pause: (Duration::from_millis(100), Duration::from_secs(1)),
            },
            lease_ttl,
            wait_percent: 20,
            queue_wait: Duration::from_secs(3),
            deadline: Duration::from_secs(15),
            seed,
        }
    }

    /// Clients that each check out one job of `jobs` and hold it until stopped.
    pub fn holding(clients: usize, jobs: Vec<Job>, lease_ttl: Duration) -> WorkloadConfig {
        WorkloadConfig {
            clients,
            jobs,
            hold: Hold::UntilStopped,
            lease_ttl,
            wait_percent: 0,
            queue_wait: Duration::from_secs(1),
            deadline: Duration::from_secs(20),
            seed: 0,
        }
    }
}

/// The client configuration of the tests: short exchanges (a hung node is left after a
/// second), quick backoff, and the given deadline per operation.
pub fn client_config(servers: Vec<String>, id: &str, deadline: Duration) -> ClientConfig {
    ClientConfig {
        client_id: Some(id.parse().expect("a valid client id")),
        attempt_timeout: Duration::from_secs(1),
        deadline,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..ClientConfig::new(servers)
    }
}

/// Running clients.
pub struct Workload {
    stop: watch::Sender<bool>,
    clients: Vec<(String, JoinHandle<()>)>,
}

impl Workload {
    /// Starts `config.clients` clients in each of `groups`, recording into `history`.
    pub fn start(
        groups: &[&ClientGroup],
        config: WorkloadConfig,
        history: Arc<History>,
    ) -> Workload {
        let (stop, stopped) = watch::channel(false);
        let config = Arc::new(config);
        let mut clients = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            for i in 0..config.clients {
                let name = format!("{}-{i}", group.name());
                let seed = config.seed ^ ((g as u64) << 32 | i as u64).wrapping_mul(0x9e37_79b9);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut servers = group.servers();
                servers.shuffle(&mut rng);
                let client = Client::with_transport(
                    client_config(servers, &name, config.deadline),
                    group.transport(),
                )
                .expect("a valid client configuration");
                let actor = Actor { client, name: name.clone(), history: history.clone(), ops: 0 };
                let task = tokio::spawn(run_client(actor, config.clone(), i, rng, stopped.clone()));
                clients.push((name, task));
            }
        }
        Workload { stop, clients }
    }

    /// How many clients run.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client runs.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Tells every client to stop: each finishes its request, releases what it holds, and
    /// ends. Fails the test if a client has not ended within `within`.
    pub async fn stop(self, within: Duration) {
        self.stop.send_replace(true);
        let deadline = Instant::now() + within;
        for (name, task) in self.clients {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("client {name} failed: {e}"),
                Err(_) => panic!("client {name} did not stop within {within:?}"),
            }
        }
    }
}

/// One client and its recording.
pub struct Actor {
    client: Client,
    name: String,
    history: Arc<History>,
    ops: u64,
}

impl Actor {
    /// A client named `name` (its client id) with `config`, over `transport`.
    pub fn new(
        name: &str,
        config: ClientConfig,
        transport: Arc<dyn lsm_client::transport::Transport>,
        history: Arc<History>,
    ) -> Actor {
        let client = Client::with_transport(config, transport).expect("a valid client config");
        Actor { client, name: name.to_string(), history, ops: 0 }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Checks out `items` (described as `what`), recording the request and its answer;
    /// the lease when granted.
    pub async fn checkout(
        &mut self,
        items: Vec<ItemBody>,
        what: String,
        lease_ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<Lease, ClientError> {
        self.ops += 1;
        let op = self.ops;
        let job = format!("{}-op{op}", self.name);
        let body = CheckoutBody {
            client: None,
            seq: None,
            ack: None,
            items,
            user: format!("user-{}", op % 5).parse().expect("a user name"),
            host: format!("host-{}", self.name).parse().expect("a host name"),
            job: Some(job.parse().expect("a job id")),
            lease_ttl_ms: Some(lease_ttl.as_millis() as u64),
            borrow_until_ms: None,
            wait: wait.map(|_| WaitBody { priority: 0, poll_ttl_ms: Some(5_000) }),
        };
        let (client, wait_too) = (self.name.clone(), wait.is_some());
        let invoke = Event::Invoke { client, op, job, what, want: Vec::new(), wait: wait_too };
        self.history.record(invoke);
        let options = CheckoutOptions { on_queued: None, wait_timeout: wait };
        let result = self.client.checkout_with(body, options).await;
        self.history.record(history::checkout_answer(&self.name, op, &result));
        result
    }

    /// Holds `lease` until `until` or until `stop` turns true, recording every renewal;
    /// the loss, if the lease is lost meanwhile (recorded too).
    pub async fn hold(
        &self,
        lease: &Lease,
        until: Option<Instant>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<LeaseLoss> {
        let mut status = lease.watch();
        let mut renewals = status.borrow().renewals;
        let forever = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let until = until.unwrap_or(forever);
        let loss = loop {
            let now = status.borrow_and_update().clone();
            if now.lost.is_some() {
                break now.lost;
            }
            if now.renewals > renewals {
                renewals = now.renewals;
                self.history.record(Event::Renewed {
                    client: self.name.clone(),
                    id: lease.id().0,
                    renewals,
                });
            }
            if stopped(stop) {
                break None;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => break None,
                _ = stop.changed() => {}
                changed = status.changed() => {
                    if changed.is_err() {
                        // The renewal task ended: with a loss, or stopped.
                        break status.borrow().lost.clone();
                    }
                }
            }
        };
        if let Some(loss) = &loss {
            let (client, id, loss) = (self.name.clone(), lease.id().0, history::loss(loss));
            self.history.record(Event::Lost { client, id, loss });
        }
        loss
    }

    /// Releases `lease`, recording it; the answer.
    pub async fn release(&self, lease: Lease) -> Outcome {
        let id = lease.id().0;
        let client = self.name.clone();
        let believed = lease.loss().is_none();
        self.history.record(Event::Release { client: client.clone(), id, believed });
        let outcome = history::outcome(&lease.release().await);
        self.history.record(Event::Released { client, id, outcome: outcome.clone() });
        outcome
    }
}

/// One client's loop (see the module docs).
async fn run_client(
    mut actor: Actor,
    config: Arc<WorkloadConfig>,
    index: usize,
    mut rng: ChaCha8Rng,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if stopped(&stop) {
            return;
        }
        let job = match config.hold {
            Hold::Cycle { .. } => &config.jobs[rng.random_range(0..config.jobs.len())],
            Hold::UntilStopped => &config.jobs[index % config.jobs.len()],
        };
        let (items, description) = job.draw(&mut rng);
        let wait = rng.random_ratio(config.wait_percent, 100).then_some(config.queue_wait);
        let result = actor.checkout(items, description, config.lease_ttl, wait).await;
        let until = match config.hold {
            Hold::Cycle { hold: (min, max), .. } => {
                Some(Instant::now() + between(&mut rng, min, max))
            }
            Hold::UntilStopped => None,
        };
        if let Ok(lease) = result {
            match actor.hold(&lease, until, &mut stop).await {
                None | Some(LeaseLoss::Unreachable) => {
                    actor.release(lease).await;
                }
                // Ended on the server: nothing to give back.
                Some(_) => drop(lease),
            }
        }
        match config.hold {
            Hold::Cycle { pause: (min, max), .. } => {
                let pause = between(&mut rng, min, max);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
            Hold::UntilStopped => {
                // One job only: wait for the stop.
                let _ = stop.wait_for(|stopped| *stopped).await;
                return;
            }
        }
    }
}

/// True once the workload is told to stop, or is gone.
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// A random duration from `min` to `max`, by the millisecond.
pub fn between(rng: &mut impl Rng, min: Duration, max: Duration) -> Duration {
    let (min, max) = (min.as_millis() as u64, max.as_millis() as u64);
    Duration::from_millis(rng.random_range(min..=max.max(min)))
}

/// Snapshots the cluster's live checkouts through each node in turn.
pub struct Observer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Observer {
    /// Starts reading every `every` through the `nodes` (id to address) in turn.
    pub fn start(nodes: BTreeMap<u64, String>, history: Arc<History>, every: Duration) -> Observer {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let http = Http::new();
            for (node, addr) in nodes.iter().cycle() {
                if *stopped.borrow() {
                    return;
                }
                snapshot(&http, *node, addr, &history).await;
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        Observer { stop, task }
    }

    /// Stops observing.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Records a snapshot of the live checkouts through `node`, if it answers in time.
pub async fn snapshot(http: &Http, node: u64, addr: &str, history: &History) -> bool {
    let invoked = history.now();
    let read = http.call(addr, "GET", api::path::CHECKOUTS, None);
    let Ok(Ok((200, body))) = tokio::time::timeout(Duration::from_secs(2), read).await else {
        return false;
    };
    let Ok(listed) = serde_json::from_value::<Vec<lsm_core::Checkout>>(body) else {
        return false;
    };
    let checkouts = listed.iter().map(LiveCheckout::of).collect();
    history.record(Event::Snapshot { node, invoked, linearizable: true, checkouts });
    true
}
