//! Step two of parsing: the checkout flags become a validated [`CheckoutBody`].
//!
//! Each `--feature` is an [`ItemSpec`](crate::cli::args::ItemSpec); one without a count takes its amount from
//! `--tokens` or `--cores`/`--mode`, and one without `@POOL` takes `--pool`. The user, host
//! and job default from the environment. Everything the environment supplies is passed in
//! ([`Defaults`]), so the rules are tested without touching the process's environment.

use std::collections::BTreeSet;
use std::time::Duration;

use lsm_core::{HostName, JobId, UserName};

use crate::api::{CheckoutBody, ItemBody, WaitBody};
use crate::cli::args::RequestArgs;

/// What the environment supplies to a checkout.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    /// `$USER`, else `$LOGNAME`, else the account name of this process's user.
    pub user: Option<String>,
    /// This host's name.
    pub host: Option<String>,
    /// A batch job id from the environment.
    pub job: Option<String>,
    /// Now, in ms since the Unix epoch.
    pub now_ms: u64,
}

impl Defaults {
    /// From this process's environment and clocks.
    pub fn from_env() -> Defaults {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok());
        let job = ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID"].into_iter().find_map(var);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let account = || {
            let uid = nix::unistd::getuid();
            nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name)
        };
        let user = var("USER").or_else(|| var("LOGNAME")).or_else(account);
        Defaults { user, host, job, now_ms }
    }
}

/// A validated checkout: the body and how long to wait in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The request body (the client fills in the envelope).
    pub body: CheckoutBody,
    /// Wait in the queue up to this long; `None` for no waiting.
    pub wait: Option<Duration>,
}

/// Builds the request, or says which flag is wrong.
pub fn build(args: &RequestArgs, defaults: &Defaults) -> Result<Request, String> {
    let mut items = Vec::with_capacity(args.features.len());
    let mut seen = BTreeSet::new();
    let mut flags_used = false;
    for spec in &args.features {
        if !seen.insert(spec.feature.clone()) {
            return Err(format!(
                "--feature {} is given twice; ask for each feature once",
                spec.feature
            ));
        }
        let mut item = match (spec.count, spec.mode) {
            (Some(cores), Some(mode)) => ItemBody::cores(spec.feature.clone(), cores, mode),
            (Some(tokens), None) => ItemBody::tokens(spec.feature.clone(), tokens),
            (None, _) => {
                flags_used = true;
                match (args.tokens, args.cores, args.mode) {
                    (Some(tokens), _, _) => ItemBody::tokens(spec.feature.clone(), tokens),
                    (None, Some(cores), Some(mode)) => {
                        ItemBody::cores(spec.feature.clone(), cores, mode.into())
                    }
                    _ => {
                        return Err(format!(
                            "--feature {} needs an amount: add --tokens N, or --cores N --mode smp|mpp, \
                             or write {}:N",
                            spec.feature, spec.feature
                        ));
                    }
                }
            }
        };
        item.pool = spec.pool.clone().or_else(|| args.pool.clone());
        items.push(item);
    }
    if !flags_used && (args.tokens.is_some() || args.cores.is_some()) {
        return Err("--tokens/--cores apply to features given without a count, and every \
                    --feature has one; drop the flag or the counts"
            .into());
    }
    if args.tokens == Some(0) || args.cores == Some(0) {
        return Err("--tokens and --cores must be at least 1".into());
    }
    let user = match &args.user {
        Some(user) => user.clone(),
        None => {
            let user =
                defaults.user.as_deref().ok_or("cannot tell the user: set $USER or pass --user")?;
            user.parse::<UserName>().map_err(|e| format!("$USER: {e}; pass --user"))?
        }
    };
    let host = match &args.host {
        Some(host) => host.clone(),
        None => {
            let host =
                defaults.host.as_deref().ok_or("cannot tell this host's name: pass --host")?;
            host.parse::<HostName>().map_err(|e| format!("host name: {e}; pass --host"))?
        }
    };
    // A job id from the environment that is not a valid name is simply left out.
    let job =
        args.job.clone().or_else(|| defaults.job.as_deref().and_then(|j| j.parse::<JobId>().ok()));
    let borrow_until_ms = args.borrow_until.map(|when| when.resolve(defaults.now_ms));
    if borrow_until_ms.is_some_and(|ms| ms <= defaults.now_ms) {
        return Err("--borrow-until is in the past".into());
    }
    let wait = args.wait.filter(|w| !w.is_zero());
    let body = CheckoutBody {
        client: None,
        seq: None,
        ack: None,
        items,
        user,
        host,
        job,
        lease_ttl_ms: args.lease.map(|d| d.as_millis() as u64),
        borrow_until_ms,
        wait: wait.map(|_| WaitBody { priority: args.priority.unwrap_or(0), poll_ttl_ms: None }),
    };
    Ok(Request { body, wait })
}
