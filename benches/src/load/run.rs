//! One run: get a cluster, start the clients, kill leaders if asked, audit, and sum up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lsm_client::api::Consistency;
use lsm_client::transport::{HyperTransport, Transport};
use lsm_client::{Client, ClientConfig};
use lsm_core::Install;
use tokio::time::Instant;

use crate::load::audit::{self, Clients};
use crate::load::cluster::LocalCluster;
use crate::load::cpu::CpuSample;
use crate::load::report::{Failover, FinalCheck, Kill, Machine, Summary};
use crate::load::settings::{Mode, Settings, Target};
use crate::load::stats::{self, Percentiles};
use crate::load::workload::{Counting, Exchanges, Worker, WorkerResult};

/// How far behind the leader (in log entries) a restarted node may be and count as
/// caught up.
const CAUGHT_UP_LAG: u64 = 100;
/// How long a restarted node gets to catch up.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a kill waits for a new leader.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the benchmark `settings` describe; `progress` is told what happens.
pub async fn run(settings: &Settings, progress: &dyn Fn(&str)) -> Result<Summary, String> {
    let mut machine = Machine::now();
    let (mut cluster, servers, description) = cluster(settings, progress).await?;
    let admin = admin_client(settings, &servers)?;
    let features = settings.features();
    let (tokens_per_feature, in_use_before) = prepare(settings, &admin, progress).await?;
    let exchanges = Arc::new(Exchanges::default());
    let (workers, clients) = clients(settings, &servers, &exchanges)?;
    let backoff_max_ms =
        workers.first().map_or(0, |w| w.client.config().backoff_max.as_millis() as u64);

    progress(&format!(
        "{} clients: {} s warm-up, then {} s measured",
        settings.clients,
        settings.warmup.as_secs(),
        settings.duration.as_secs()
    ));
    let origin = Instant::now() + settings.warmup;
    let until = origin + settings.duration;
    let handles: Vec<_> = workers.into_iter().map(|w| tokio::spawn(w.run(origin, until))).collect();
    let node_pids = |c: &Option<LocalCluster>| {
        c.as_ref().map_or_else(Vec::new, |c| c.pids().into_iter().map(|(_, p)| p).collect())
    };
    let pids = node_pids(&cluster);
    let cpu_at_origin = async {
        tokio::time::sleep_until(origin).await;
        CpuSample::now(&pids)
    };
    let collect = async {
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await.map_err(|e| format!("a client task failed: {e}"))?);
        }
        Ok::<_, String>(results)
    };
    let (results, kills, cpu_start) = match (settings.mode, cluster.as_mut()) {
        (Mode::Failover, Some(cluster)) => {
            let kill = kill_leaders(cluster, &admin, &clients, settings, origin, progress);
            let (results, kills, cpu) = tokio::join!(collect, kill, cpu_at_origin);
            (results?, kills, cpu)
        }
        _ => {
            let (results, cpu) = tokio::join!(collect, cpu_at_origin);
            (results?, Vec::new(), cpu)
        }
    };
    let ended = Instant::now();
    let killed = cluster.as_ref().map_or(&[][..], |c| c.killed_ticks());
    let cpu_end = CpuSample::now(&node_pids(&cluster)).with_exited(killed);
    machine.cpu = cpu_start.until(&cpu_end, machine.cpus);
    machine.load_after = crate::load::report::load_average();

    // Every node back before the final check.
    if let Some(cluster) = cluster.as_ref() {
        for id in 1..=crate::load::cluster::NODES {
            if !cluster.wait_caught_up(id, CAUGHT_UP_LAG, REJOIN_TIMEOUT).await {
                progress(&format!("node {id} did not catch up before the final check"));
            }
        }
    }
    let mut summary = summarize(settings, &results, &exchanges, origin, ended, kills);
    summary.cluster = description;
    summary.servers = servers;
    if let Target::Start { server_set, .. } = &settings.target {
        summary.server_set = server_set.clone();
    }
    summary.backoff_max_ms = backoff_max_ms;
    summary.tokens_per_feature = tokens_per_feature;
    summary.machine = machine;
    final_check(&mut summary, &admin, &clients, &features, in_use_before).await;
    drop(cluster);
    Ok(summary)
}

/// The cluster: started (three nodes with the bench license) or given. Returns it when
/// started, the nodes' addresses, and a description.
async fn cluster(
    settings: &Settings,
    progress: &dyn Fn(&str),
) -> Result<(Option<LocalCluster>, Vec<String>, String), String> {
    match &settings.target {
        Target::Start { server_bin, keep_dir, server_set } => {
            let exe = match server_bin {
                Some(exe) => exe.clone(),
                None => LocalCluster::default_server_bin()?,
            };
            progress(&format!("starting three nodes from {}", exe.display()));
            let license = settings.license_toml();
            let cluster = LocalCluster::start(&exe, server_set, &license, *keep_dir).await?;
            progress(&format!(
                "cluster up at {} (directory {})",
                cluster.addrs().join(","),
                cluster.path().display()
            ));
            let addrs = cluster.addrs();
            let description = "3 lsm-server processes started on loopback, redb with fdatasync";
            Ok((Some(cluster), addrs, description.to_string()))
        }
        Target::Servers { addrs, .. } => Ok((None, addrs.clone(), "given servers".to_string())),
    }
}

/// The client that installs, checks and audits (with the admin token, if any).
fn admin_client(settings: &Settings, servers: &[String]) -> Result<Client, String> {
    let mut config = ClientConfig::new(servers.iter().cloned());
    if let Target::Servers { admin_token, .. } = &settings.target {
        config.admin_token = admin_token.clone();
    }
    let id = format!("lsm-bench-{}-admin", std::process::id());
    config.client_id = Some(id.parse().map_err(|e| format!("client id: {e}"))?);
    Client::new(config).map_err(|e| e.to_string())
}

/// Installs the bench license if asked, and checks that every bench feature exists.
/// Returns the features' (smallest) token total and their tokens in use now.
async fn prepare(
    settings: &Settings,
    admin: &Client,
    progress: &dyn Fn(&str),
) -> Result<(u64, u64), String> {
    if let Target::Servers { install: true, .. } = settings.target {
        let install: Install =
            toml::from_str(&settings.license_toml()).map_err(|e| format!("bench license: {e}"))?;
        admin.install(install).await.map_err(|e| format!("cannot install the license: {e}"))?;
        progress("installed the bench license");
    }
    let features = settings.features();
    let status = admin
        .features(Consistency::Linearizable)
        .await
        .map_err(|e| format!("cannot read the features: {e}"))?;
    for feature in &features {
        if !status.iter().any(|f| &f.feature == feature) {
            return Err(format!(
                "the cluster has no feature {feature}; --install installs the bench license \
                 (replacing the cluster's), or --feature names another"
            ));
        }
    }
    // On a given cluster the features may have other totals than the bench license's.
    let mine = || status.iter().filter(|f| features.contains(&f.feature));
    let tokens = mine().map(|f| f.tokens_total).min().unwrap_or(settings.tokens_total);
    Ok((tokens, mine().map(|f| f.in_use).sum()))
}

/// The clients: own ids, one shared connection pool, every exchange counted in
/// `exchanges`; and the same clients as the audit sees them.
fn clients(
    settings: &Settings,
    servers: &[String],
    exchanges: &Arc<Exchanges>,
) -> Result<(Vec<Worker>, Clients), String> {
    let pool: Arc<dyn Transport> = Arc::new(HyperTransport::tcp(Duration::from_secs(5)));
    let history = Arc::new(lsm_check::History::new());
    let (mut ids, mut workers) = (Vec::new(), Vec::new());
    for index in 0..settings.clients {
        let id = format!("lsm-bench-{}-{index}", std::process::id());
        let mut config = ClientConfig::new(servers.iter().cloned());
        config.client_id = Some(id.parse().map_err(|e| format!("client id: {e}"))?);
        if let Some(backoff_max) = settings.backoff_max {
            config.backoff_max = backoff_max.max(config.backoff_min);
        }
        let transport = Arc::new(Counting::new(pool.clone(), exchanges.clone()));
        let client = Client::with_transport(config, transport).map_err(|e| e.to_string())?;
        ids.push(id);
        workers.push(Worker {
            index,
            client,
            feature: settings.feature_of(index),
            history: history.clone(),
            lease_ttl_ms: settings.lease_ttl_ms,
            seed: settings.seed,
        });
    }
    Ok((workers, Clients::new(ids, history)))
}

/// The check after the run, with every client stopped: an exact audit and the features'
/// tokens in use, into `summary`.
async fn final_check(
    summary: &mut Summary,
    admin: &Client,
    clients: &Clients,
    features: &[lsm_core::FeatureName],
    in_use_before: u64,
) {
    let found = audit::audit(admin, clients).await;
    let in_use = audit::tokens_in_use(admin, features).await;
    let unsure = clients.unsure_releases();
    let abandoned = clients.abandoned_checkouts();
    summary.final_check = match (found, in_use) {
        (Ok(found), Ok(in_use)) => {
            summary.lost_grants.extend(found.lost);
            summary.duplicated_grants.extend(found.duplicated);
            summary.other_violations.extend(found.other);
            FinalCheck {
                live_checkouts: found.live,
                tokens_in_use: in_use,
                tokens_in_use_before: in_use_before,
                unsure_releases: unsure,
                abandoned_checkouts: abandoned,
                nothing_left: found.live == 0 && in_use == in_use_before,
                error: None,
            }
        }
        (Err(e), _) | (_, Err(e)) => FinalCheck {
            unsure_releases: unsure,
            abandoned_checkouts: abandoned,
            tokens_in_use_before: in_use_before,
            error: Some(e),
            ..FinalCheck::default()
        },
    };
}

/// Kills the leader `settings.kills` times at even intervals of the measured time; after
/// each kill, waits for a new leader, restarts the killed node from its data directory,
/// waits for it to catch up, and audits.
async fn kill_leaders(
    cluster: &mut LocalCluster,
    reader: &Client,
    clients: &Clients,
    settings: &Settings,
    origin: Instant,
    progress: &dyn Fn(&str),
) -> Vec<KillAt> {
    let mut kills = Vec::new();
    let every = settings.duration / (settings.kills as u32 + 1);
    for k in 1..=settings.kills {
        tokio::time::sleep_until(origin + every * k as u32).await;
        let mut problems = Vec::new();
        let Some((leader, _)) = cluster.leader().await else {
            progress(&format!("kill {k}: no node says it leads; skipped"));
            continue;
        };
        let killed_at = Instant::now();
        if let Err(e) = cluster.kill(leader) {
            progress(&format!("kill {k}: {e}"));
            continue;
        }
        let at_us = killed_at.saturating_duration_since(origin).as_micros() as u64;
        let mut new_leader = None;
        let mut elected_after_ms = None;
        while killed_at.elapsed() < ELECTION_TIMEOUT {
            if let Some((id, _)) = cluster.leader().await {
                new_leader = Some(id);
                elected_after_ms = Some(killed_at.elapsed().as_secs_f64() * 1_000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if new_leader.is_none() {
            problems.push(format!("no new leader within {ELECTION_TIMEOUT:?}"));
        }
        if let Err(e) = cluster.restart(leader) {
            problems.push(e);
        }
        let rejoined = cluster.wait_caught_up(leader, CAUGHT_UP_LAG, REJOIN_TIMEOUT).await;
        let found = match audit::audit(reader, clients).await {
            Ok(found) => found,
            Err(e) => {
                problems.push(format!("audit: {e}"));
                Default::default()
            }
        };
        progress(&format!(
            "kill {k}: node {leader}; node {} leads after {}; {}; audit: {} live, {} lost, {} duplicated",
            new_leader.map_or("-".into(), |n| n.to_string()),
            elected_after_ms.map_or("-".into(), |ms| format!("{ms:.0} ms")),
            if rejoined { "restarted and caught up" } else { "restarted, NOT caught up" },
            found.live,
            found.lost.len(),
            found.duplicated.len()
        ));
        let kill = Kill {
            node: leader,
            at_s: at_us as f64 / 1e6,
            new_leader,
            elected_after_ms,
            served_again_after_ms: None,
            gap_ms: 0.0,
            rejoined,
            audit_live: found.live,
            audit_lost: found.lost.len(),
            audit_duplicated: found.duplicated.len(),
            problems,
        };
        kills.push(KillAt { kill, at_us, found });
    }
    kills
}

/// A kill, when it happened (µs after the warm-up), and what its audit found.
struct KillAt {
    kill: Kill,
    at_us: u64,
    found: audit::Audit,
}

/// The numbers of a run from the clients' results.
fn summarize(
    settings: &Settings,
    results: &[WorkerResult],
    exchanges: &Exchanges,
    origin: Instant,
    ended: Instant,
    kills: Vec<KillAt>,
) -> Summary {
    let mut checkout = stats::latency_histogram();
    let mut release = stats::latency_histogram();
    let mut denials: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_samples = Vec::new();
    let mut lost_grants: Vec<lsm_check::Violation> = Vec::new();
    let (mut pairs, mut grants, mut operations) = (0, 0, 0);
    for r in results {
        checkout.add(&r.checkout_latency).expect("same bounds");
        release.add(&r.release_latency).expect("same bounds");
        for (k, v) in &r.denials {
            *denials.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        for sample in &r.error_samples {
            if error_samples.len() < 5 {
                error_samples.push(sample.clone());
            }
        }
        pairs += r.pairs;
        grants += r.grants;
        operations += r.operations;
    }
    let completions = stats::merge_sorted(results.iter().map(|r| r.completions.clone()).collect());
    let end_us = ended.saturating_duration_since(origin).as_micros() as u64;
    let elapsed_s = end_us as f64 / 1e6;
    let ms = |us: u64| us as f64 / 1_000.0;
    let longest_gap_ms = ms(stats::longest_gap(&completions, 0, u64::MAX, end_us).len_us());

    let (mut duplicated_grants, mut other_violations) = (Vec::new(), Vec::new());
    let failover = (settings.mode == Mode::Failover).then(|| {
        let times: Vec<u64> = kills.iter().map(|k| k.at_us).collect();
        let mut out = Vec::new();
        for (i, KillAt { mut kill, at_us: at, found }) in kills.into_iter().enumerate() {
            lost_grants.extend(found.lost);
            duplicated_grants.extend(found.duplicated);
            other_violations.extend(found.other);
            let to = times.get(i + 1).copied().unwrap_or(u64::MAX);
            let gap = stats::longest_gap(&completions, at, to, end_us);
            kill.gap_ms = ms(gap.len_us());
            kill.served_again_after_ms = gap.to_us.checked_sub(at).map(ms);
            out.push(kill);
        }
        let gaps: Vec<f64> = out.iter().map(|k| k.gap_ms).collect();
        Failover {
            median_gap_ms: stats::median(&gaps).unwrap_or(0.0),
            max_gap_ms: gaps.iter().copied().fold(0.0, f64::max),
            kills: out,
        }
    });
    let sent = exchanges.sent.load(Ordering::Relaxed);
    Summary {
        mode: settings.mode,
        clients: settings.clients,
        seconds: settings.duration.as_secs(),
        elapsed_s,
        warmup_s: settings.warmup.as_secs(),
        cluster: String::new(),
        servers: Vec::new(),
        server_set: Vec::new(),
        backoff_max_ms: 0,
        features: settings.features().len(),
        tokens_per_feature: settings.tokens_total,
        pairs,
        pairs_per_s: if elapsed_s > 0.0 { pairs as f64 / elapsed_s } else { 0.0 },
        grants,
        denials,
        errors,
        error_samples,
        operations,
        exchanges: sent,
        retries: sent.saturating_sub(operations),
        failed_exchanges: exchanges.failed.load(Ordering::Relaxed),
        unavailable_answers: exchanges.unavailable.load(Ordering::Relaxed),
        checkout_ms: Percentiles::of(&checkout),
        release_ms: Percentiles::of(&release),
        longest_gap_ms,
        failover,
        lost_grants,
        duplicated_grants,
        other_violations,
        final_check: FinalCheck::default(),
        machine: Machine::default(),
    }
}
