//! Every `lsm` command but `run`: call the client, print the answer.
//!
//! With `--json` the API's JSON goes to stdout as the server sent it (decoded and
//! re-encoded); otherwise [`crate::cli::format`] renders it for people. Errors go to
//! stderr through [`crate::cli::dispatch`].

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use lsm_core::Install;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::api::{
    AddNodeBody, CheckoutQuery, ClusterInfo, Consistency, InitBody, LeaseReply, QueueQuery,
    ReleaseReply,
};
use crate::cli::acquire::{Acquired, Signals, acquire};
use crate::cli::args::{AdminCommand, CheckoutArgs, CheckoutsArgs, Command};
use crate::cli::request::{Defaults, build};
use crate::cli::{CliError, Context, format};
use crate::error::ClientError;

/// Runs one command (not `run`).
pub async fn run(ctx: &Context, command: Command) -> Result<(), CliError> {
    match command {
        Command::Status { local } => status(ctx, local).await,
        Command::Checkouts(args) => checkouts(ctx, args).await,
        Command::Queue { feature } => {
            let list = ctx.client(None)?.queue(QueueQuery { feature, consistency: None }).await?;
            print(ctx, &list, || format::queue(&list, now_ms()))
        }
        Command::Cluster => cluster(ctx).await,
        Command::Show { id } => {
            let status = ctx.client(None)?.checkout_status(id).await?;
            print(ctx, &status, || format::show(&status, now_ms()))
        }
        Command::Checkout(args) => checkout(ctx, args).await,
        Command::Heartbeat { id, owner } => {
            let reply = ctx.client(owner.client_id)?.heartbeat(id).await?;
            print(ctx, &reply, || match &reply {
                LeaseReply::Granted(g) | LeaseReply::Renewed(g) => format!(
                    "renewed #{}; the lease ends {} ({})\n",
                    g.id,
                    format::time(g.lease_expires_at_ms),
                    format::expires_in(g.lease_expires_at_ms, now_ms())
                ),
                LeaseReply::Queued(q) => {
                    format!("#{} is waiting in the queue at position {}\n", q.id, q.position)
                }
            })
        }
        Command::Release { id, owner } => {
            let reply = ctx.client(owner.client_id)?.release(id).await?;
            print(ctx, &reply, || match &reply {
                ReleaseReply::Released { id } => format!("released #{id}\n"),
                ReleaseReply::Cancelled { id } => format!("withdrew queued request #{id}\n"),
            })
        }
        Command::Admin(admin) => self::admin(ctx, admin).await,
        Command::Run(_) => unreachable!("`lsm run` has its own module"),
    }
}

async fn status(ctx: &Context, local: bool) -> Result<(), CliError> {
    let consistency = if local { Consistency::Local } else { Consistency::Linearizable };
    let features = ctx.client(None)?.features(consistency).await?;
    print(ctx, &features, || format::status(&features, now_ms()))
}

async fn checkouts(ctx: &Context, args: CheckoutsArgs) -> Result<(), CliError> {
    let query = CheckoutQuery {
        feature: args.feature,
        pool: args.pool,
        user: args.user,
        host: args.host,
        client: args.client,
        ..CheckoutQuery::default()
    };
    let list = ctx.client(None)?.checkouts(query).await?;
    print(ctx, &list, || format::checkouts(&list, now_ms()))
}

/// Asks every listed server for its own view, at the same time.
async fn cluster(ctx: &Context) -> Result<(), CliError> {
    let client = ctx.client(None)?;
    let mut asks = JoinSet::new();
    for (i, addr) in ctx.servers.iter().enumerate() {
        let (client, addr) = (client.clone(), addr.clone());
        asks.spawn(async move { (i, client.cluster_of(&addr).await) });
    }
    let mut views: Vec<(usize, Result<_, ClientError>)> = asks.join_all().await;
    views.sort_by_key(|(i, _)| *i);
    let views: Vec<format::ClusterView> = views
        .into_iter()
        .map(|(i, view)| (ctx.servers[i].clone(), view.map_err(|e| short_reason(&e))))
        .collect();
    if ctx.json {
        let json: Vec<serde_json::Value> = views
            .iter()
            .map(|(addr, view)| match view {
                Ok(info) => serde_json::json!({ "server": addr, "view": info }),
                Err(reason) => serde_json::json!({ "server": addr, "error": reason }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json).expect("JSON values serialize"));
    } else {
        print!("{}", format::cluster(&views));
    }
    if views.iter().all(|(_, v)| v.is_err()) {
        return Err(ClientError::Unavailable {
            attempts: views.len() as u32,
            last: "no listed server answered".into(),
        }
        .into());
    }
    Ok(())
}

/// `lsm checkout`: the grant is kept (no release at exit) for later heartbeats.
async fn checkout(ctx: &Context, args: CheckoutArgs) -> Result<(), CliError> {
    let request = build(&args.request, &Defaults::from_env()).map_err(CliError::Usage)?;
    let client = ctx.client(args.client_id)?;
    let mut signals = Signals::catch()?;
    let grant = match acquire(&client, request, &mut signals).await? {
        Acquired::Lease(lease) => lease.detach(),
        Acquired::Interrupted(signal) => {
            return Err(CliError::Usage(format!("interrupted by {signal} while waiting")));
        }
    };
    if ctx.json {
        let mut json = serde_json::to_value(LeaseReply::Granted(grant)).expect("replies serialize");
        json["client"] = serde_json::Value::String(client.id().to_string());
        println!("{}", serde_json::to_string_pretty(&json).expect("JSON values serialize"));
    } else {
        print!("{}", checked_out(&grant, client.id().as_str()));
    }
    Ok(())
}

/// What `lsm checkout` prints: the id, what it holds, and the client id to use later.
pub fn checked_out(grant: &lsm_core::Grant, client: &str) -> String {
    let until = if grant.borrowed { "borrowed until" } else { "lease ends" };
    format!(
        "checked out #{}: {}; {until} {}\n\
         client id: {client} (heartbeat and release with --client-id {client} or LSM_CLIENT_ID={client})\n",
        grant.id,
        format::granted(grant),
        format::time(grant.lease_expires_at_ms),
    )
}

async fn admin(ctx: &Context, command: AdminCommand) -> Result<(), CliError> {
    let client = ctx.client(None)?;
    match command {
        AdminCommand::Revoke { id, reason } => {
            let reply = client.revoke(id, reason).await?;
            print(ctx, &reply, || format!("revoked #{}\n", reply.revoked))
        }
        AdminCommand::InstallLicense { file } => {
            let install = read_license(&file)?;
            let reply = client.install(install).await?;
            print(ctx, &reply, || {
                let plural = if reply.features == 1 { "" } else { "s" };
                format!("installed {}: {} feature{plural}\n", file.display(), reply.features)
            })
        }
        AdminCommand::AddNode { id, addr, learner } => {
            let reply =
                client.add_node(AddNodeBody { id, addr: addr.clone(), voter: !learner }).await?;
            let role = if learner { "learner" } else { "voter" };
            print(ctx, &reply, || {
                format!("added node {id} at {addr} as a {role}\n{}", member_lines(&reply))
            })
        }
        AdminCommand::RemoveNode { id } => {
            let reply = client.remove_node(id).await?;
            print(ctx, &reply, || format!("removed node {id}\n{}", member_lines(&reply)))
        }
        AdminCommand::Snapshot => {
            let reply = client.snapshot().await?;
            print(ctx, &reply, || match reply.snapshot_index {
                Some(index) => format!("node {} has a snapshot at log index {index}\n", reply.node),
                None => format!("node {} has nothing to snapshot yet\n", reply.node),
            })
        }
        AdminCommand::Init { members, no_license } => {
            let members = (!members.is_empty()).then(|| members.into_iter().collect());
            let reply = client.init(InitBody { members, install_license: !no_license }).await?;
            print(ctx, &reply, || format!("cluster initialized\n{}", member_lines(&reply)))
        }
    }
}

/// A license file: TOML, or JSON when the name ends in `.json`.
pub fn read_license(path: &Path) -> Result<Install, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    parse_license(&text, path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")))
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// Parses a license configuration.
pub fn parse_license(text: &str, json: bool) -> Result<Install, String> {
    if json {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// The members of a cluster view, one per line.
fn member_lines(info: &ClusterInfo) -> String {
    let mut out = String::new();
    for m in &info.members {
        let role = if m.voter { "voter" } else { "learner" };
        let leader = if info.leader == Some(m.id) { ", leader" } else { "" };
        out.push_str(&format!("  node {} at {} ({role}{leader})\n", m.id, m.addr));
    }
    out
}

/// Prints `value` as JSON with `--json`, else the text `human` renders.
fn print<T: Serialize>(
    ctx: &Context,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(value).expect("API types serialize"));
    } else {
        print!("{}", human());
    }
    Ok(())
}

/// An error without the retry summary, for a table cell.
fn short_reason(error: &ClientError) -> String {
    match error {
        ClientError::Unavailable { last, .. } => last.clone(),
        other => other.to_string(),
    }
}

/// The local wall clock in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
