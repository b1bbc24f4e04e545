//! What the client hosts do: launchers checking out, holding and releasing tokens with the
//! real `lsm_client::Client` and `Lease`, and an operator host that bootstraps the cluster,
//! probes liveness after the faults heal, and reads the final state.
//!
//! Every client has its own id (`c1`, `c2`, ...), a server list in a seeded random order,
//! a seeded backoff jitter and a fixed first sequence number, so its requests replay
//! exactly. Each checkout carries its operation as the job id (`c1-op7`), which lets the
//! exactly-once check find the checkouts one operation produced on the servers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lsm_check::history::{Event, Tokens, describe};
use lsm_client::api::{CheckoutBody, CheckoutQuery, InitBody, ItemBody, LeaseReply, WaitBody};
use lsm_client::{CheckoutOptions, Client, ClientConfig, ClientError};
use lsm_core::{Checkout, FeatureStatus, ParallelMode};
use lsm_tests::history::{checkout_answer, loss, outcome};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::history::History;
use crate::net::{self, Doom};
use crate::world::{self, NODES};

/// What the driver and the hosts share.
pub struct Control {
    /// The record of the run.
    pub history: History,
    /// The operator host installed the license: clients may start.
    pub ready: AtomicBool,
    /// Clients start no new operation.
    pub stop: AtomicBool,
    /// When the faults healed (simulated ms; 0: not yet): the operator probes liveness.
    pub healed_at_ms: AtomicU64,
    /// The operator reads the final state now.
    pub final_go: AtomicBool,
    /// Checkouts still live at the end, as a linearizable read shows them.
    pub final_live: Mutex<Option<Result<Vec<Checkout>, String>>>,
}

impl Control {
    /// A fresh control block over `history`.
    pub fn new(history: History) -> Arc<Control> {
        Arc::new(Control {
            history,
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            healed_at_ms: AtomicU64::new(0),
            final_go: AtomicBool::new(false),
            final_live: Mutex::new(None),
        })
    }
}

/// What a client host does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Checkouts of every shape (tokens, cores and modes, waiting in the queue), held with
    /// a renewing lease for a random time, then released.
    Full,
    /// Small plain checkouts of `abaqus` and releases, and reads of the tokens in use, for
    /// the linearizability check: this many operations, leases long enough not to expire.
    Linearizable(u32),
}

/// One client host's plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Host name and client id.
    pub name: String,
    /// Seeds its choices and its backoff jitter.
    pub seed: u64,
    /// The lease TTL it asks for.
    pub lease_ttl_ms: u64,
    /// What it does.
    pub mix: Mix,
}

/// A client configuration that replays: explicit id, seeded jitter, first seq 1, and the
/// servers in a seeded order.
pub fn client_config(name: &str, seed: u64) -> ClientConfig {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5e7f);
    let mut servers = world::servers();
    for i in (1..servers.len()).rev() {
        servers.swap(i, rng.random_range(0..=i));
    }
    let mut config = ClientConfig::new(servers);
    config.client_id = Some(name.parse().expect("client id"));
    config.attempt_timeout = Duration::from_millis(1_000);
    config.deadline = Duration::from_secs(6);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(1_000);
    config.rng_seed = Some(seed);
    config.first_seq = Some(1);
    config
}

async fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client host.
pub async fn client_main(plan: Plan, control: Arc<Control>) -> turmoil::Result {
    let host = Doom::new();
    // Declared first, so dropped last: closes the host's streams once the client is gone.
    let _closer = net::Closer(host.clone());
    let client =
        Client::with_transport(client_config(&plan.name, plan.seed), net::transport(host))?;
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    wait_for(&control.ready).await;
    let history = &control.history;
    let mut op = 0u64;
    loop {
        if control.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Mix::Linearizable(ops) = plan.mix
            && op >= u64::from(ops)
        {
            return Ok(());
        }
        op += 1;
        let (items, want, wait) = match plan.mix {
            Mix::Full => full_items(&mut rng),
            Mix::Linearizable(_) => {
                if rng.random_bool(0.3) {
                    read_in_use(&client, &plan.name, op, history).await;
                    continue;
                }
                let pool = if rng.random_bool(0.5) { "a" } else { "b" };
                let tokens = rng.random_range(1..=3);
                let mut item = ItemBody::tokens("abaqus".parse().expect("feature"), tokens);
                item.pool = Some(pool.parse().expect("pool"));
                (vec![item], vec![Tokens::new("abaqus", pool, tokens)], false)
            }
        };
        let ttl = plan.lease_ttl_ms;
        let job = format!("{}-op{op}", plan.name);
        let body = CheckoutBody {
            client: None,
            seq: None,
            ack: None,
            items,
            user: "jane".parse().expect("user"),
            host: plan.name.parse().expect("host"),
            job: Some(job.parse().expect("job id")),
            lease_ttl_ms: Some(ttl),
            borrow_until_ms: None,
            wait: wait
                .then(|| WaitBody { priority: rng.random_range(0..3), poll_ttl_ms: Some(ttl) }),
        };
        let options = CheckoutOptions {
            on_queued: None,
            wait_timeout: wait.then(|| Duration::from_millis(rng.random_range(500..4_000))),
        };
        let (client_id, what) = (plan.name.clone(), describe(&want));
        history.record(Event::Invoke { client: client_id, op, job, what, want, wait });
        let answer = client.checkout_with(body, options).await;
        history.record(checkout_answer(&plan.name, op, &answer));
        if let Ok(mut lease) = answer {
            let id = lease.id().0;
            let hold = match plan.mix {
                Mix::Full => rng.random_range(50..(3 * ttl).max(100)),
                Mix::Linearizable(_) => rng.random_range(10..400),
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(hold)) => {}
                _ = wait_for(&control.stop) => {}
                lost = lease.lost() => {
                    history.record(Event::Lost {
                        client: plan.name.clone(), id, loss: loss(&lost),
                    });
                }
            }
            let believed = lease.loss().is_none();
            history.record(Event::Release { client: plan.name.clone(), id, believed });
            let outcome = outcome(&lease.release().await);
            history.record(Event::Released { client: plan.name.clone(), id, outcome });
        }
        let think = match plan.mix {
            Mix::Full => rng.random_range(0..300),
            Mix::Linearizable(_) => rng.random_range(0..100),
        };
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}

/// A random checkout for [`Mix::Full`]: its items, what it should hold, and whether it
/// may wait.
fn full_items(rng: &mut ChaCha8Rng) -> (Vec<ItemBody>, Vec<Tokens>, bool) {
    let mut items = Vec::new();
    let mut want = Vec::new();
    let shape = rng.random_range(0..10);
    if shape < 6 {
        let pool = if rng.random_bool(0.5) { "a" } else { "b" };
        let tokens = rng.random_range(1..=4);
        let mut item = ItemBody::tokens("abaqus".parse().expect("feature"), tokens);
        item.pool = Some(pool.parse().expect("pool"));
        items.push(item);
        want.push(Tokens::new("abaqus", pool, tokens));
    }
    if shape >= 4 {
        let (mode, pool) = if rng.random_bool(0.5) {
            (ParallelMode::Smp, "smp")
        } else {
            (ParallelMode::Mpp, "mpp")
        };
        let cores = rng.random_range(1..=4);
        items.push(ItemBody::cores("lsdyna".parse().expect("feature"), cores, mode));
        want.push(Tokens::new("lsdyna", pool, cores));
    }
    (items, want, rng.random_bool(0.25))
}

/// A linearizable read of the tokens in use per pool, recorded as an operation.
async fn read_in_use(client: &Client, name: &str, op: u64, history: &History) {
    history.record(Event::Read { client: name.to_string(), op });
    let read = client.features(Default::default()).await;
    let in_use = read.ok().map(|features| in_use_of(&features));
    history.record(Event::ReadDone { client: name.to_string(), op, in_use });
}

/// Tokens in use per feature and pool.
pub fn in_use_of(features: &[FeatureStatus]) -> Vec<Tokens> {
    (features.iter())
        .flat_map(|f| {
            f.pools.iter().map(move |p| Tokens::new(f.feature.as_str(), p.pool.as_str(), p.in_use))
        })
        .collect()
}

/// How long after the heal the cluster must answer a fresh request.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(10);

/// The operator host: bootstraps the cluster through the admin API, installs the license,
/// then (after the heal) measures how long until a fresh checkout is answered, and at the
/// end reads which checkouts are still live.
pub async fn operator_main(seed: u64, control: Arc<Control>) -> turmoil::Result {
    let host = Doom::new();
    // Declared first, so dropped last: closes the host's streams once the clients are gone.
    let _closer = net::Closer(host.clone());
    let history = &control.history;
    let mut config = client_config("operator", seed);
    config.servers = vec![world::servers()[0].clone()];
    let first = Client::with_transport(config, net::transport(host.clone()))?;
    let members = NODES.iter().map(|(id, name)| (*id, format!("{name}:{}", net::PORT))).collect();
    let init = InitBody { members: Some(members), install_license: false };
    loop {
        match first.init(init.clone()).await {
            Ok(_) => break,
            Err(ClientError::Api { detail, .. })
                if detail.code.as_str() == "already_initialized" =>
            {
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let client = Client::with_transport(client_config("operator", seed), net::transport(host))?;
    loop {
        match client.install(world::license()).await {
            Ok(_) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    history.record(Event::Note { what: "license installed; clients start".into() });
    control.ready.store(true, Ordering::SeqCst);

    while control.healed_at_ms.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = tokio::time::Instant::now();
    let mut job = 0;
    let outcome = loop {
        if started.elapsed() > LIVENESS_BOUND {
            break Err(format!("no checkout was answered within {LIVENESS_BOUND:?} of the heal"));
        }
        job += 1;
        // One core of lsdyna: the linearizability runs model abaqus alone, and a probe
        // holding an abaqus token unseen by the clients' history would make a correct
        // refusal look wrong.
        let item = ItemBody::cores("lsdyna".parse().expect("feature"), 1, ParallelMode::Mpp);
        let body = CheckoutBody {
            client: None,
            seq: None,
            ack: None,
            items: vec![item],
            user: "operator".parse().expect("user"),
            host: "operator".parse().expect("host"),
            job: Some(format!("probe-{job}").parse().expect("job")),
            lease_ttl_ms: Some(5_000),
            borrow_until_ms: None,
            wait: None,
        };
        match client.checkout_once(body).await {
            Ok(LeaseReply::Granted(grant) | LeaseReply::Renewed(grant)) => {
                match client.release(grant.id).await {
                    Ok(_) => break Ok(started.elapsed().as_millis() as u64),
                    Err(e) => history.record(note(format!("probe release failed: {e}"))),
                }
            }
            Ok(LeaseReply::Queued(_)) => break Err("an unwaited probe was queued".into()),
            // A refusal for want of tokens is an answer too: the cluster serves.
            Err(ClientError::Api { detail, .. }) if detail.denial.is_some() => {
                break Ok(started.elapsed().as_millis() as u64);
            }
            Err(e) => history.record(note(format!("probe failed: {e}"))),
        }
    };
    history.record(match outcome {
        Ok(ms) => Event::Probe { ok: true, detail: format!("served {ms} ms after the heal") },
        Err(why) => Event::Probe { ok: false, detail: why },
    });

    wait_for(&control.final_go).await;
    let live = client.checkouts(CheckoutQuery::default()).await.map_err(|e| e.to_string());
    *control.final_live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live);
    Ok(())
}

/// A note for the reader of the history.
fn note(what: String) -> Event {
    Event::Note { what }
}
