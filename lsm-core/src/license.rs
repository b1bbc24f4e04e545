//! Entitlements (what the license grants) and policy (how the site shares it).
//!
//! An [`Install`] carries both and is applied as one command, so the state never holds
//! pools that do not fit the token totals they divide. Entitlements say how many tokens of
//! each feature exist, when, and how cores convert to tokens; the policy splits each
//! feature into pools and adds options-file style limits. Everything is validated by
//! [`Install::validate`] before any of it touches the state; the error names the field.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{FeatureName, GroupName, HostName, LicenseId, PoolName, UserName};
use crate::limits::Limits;

/// The complete license configuration: entitlements plus site policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    /// One entry per feature.
    pub entitlements: Vec<Entitlement>,
    /// Pools, groups and rules.
    #[serde(default)]
    pub policy: Policy,
}

/// What a license grants for one feature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    /// The feature.
    pub feature: FeatureName,
    /// The license this entitlement came from.
    pub license: LicenseId,
    /// Tokens the site owns.
    pub tokens_total: u64,
    /// No checkout before this time (ms since the Unix epoch).
    #[serde(default)]
    pub starts_at_ms: u64,
    /// No new checkout at or after this time (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// How a request for cores converts to tokens.
    #[serde(default)]
    pub cost: CostRule,
    /// Longest offline borrow allowed; 0 disables borrowing for this feature.
    #[serde(default)]
    pub max_borrow_ms: u64,
}

/// A parallel mode: threads on one host (SMP) or MPI ranks across hosts (MPP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParallelMode {
    /// Shared-memory parallel: threads on one host.
    Smp,
    /// Massively parallel: MPI ranks across hosts.
    Mpp,
}

/// What one item of a checkout asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Demand {
    /// A number of tokens, taken as is.
    Tokens(u64),
    /// A number of cores in a parallel mode, converted by the feature's [`CostRule`].
    Cores {
        /// Cores the job runs on.
        cores: u64,
        /// SMP or MPP; it also picks the pool when the request names none.
        mode: ParallelMode,
    },
}

/// How cores convert to tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostRule {
    /// `base_tokens + tokens_per_core * max(0, cores - cores_included)`.
    PerCore {
        /// Tokens every job pays, whatever its size.
        #[serde(default)]
        base_tokens: u64,
        /// Tokens per core beyond the included ones.
        tokens_per_core: u64,
        /// Cores that cost nothing beyond the base.
        #[serde(default)]
        cores_included: u64,
    },
    /// HPC packs: `base_tokens + n` where `n` is the fewest packs with
    /// `2 * 4^n >= cores - cores_included` (one pack covers 8 extra cores, two 32, three
    /// 128, four 512, five 2048), and no pack when no extra core is asked for.
    HpcPacks {
        /// Tokens every job pays, whatever its size.
        #[serde(default)]
        base_tokens: u64,
        /// Cores that need no pack.
        #[serde(default)]
        cores_included: u64,
    },
}

impl Default for CostRule {
    /// One token per core.
    fn default() -> Self {
        CostRule::PerCore { base_tokens: 0, tokens_per_core: 1, cores_included: 0 }
    }
}

impl CostRule {
    /// Tokens for `cores` cores, or `None` if the number does not fit in a `u64`.
    pub fn tokens_for_cores(&self, cores: u64) -> Option<u64> {
        match *self {
            CostRule::PerCore { base_tokens, tokens_per_core, cores_included } => {
                let extra = cores.saturating_sub(cores_included);
                base_tokens.checked_add(tokens_per_core.checked_mul(extra)?)
            }
            CostRule::HpcPacks { base_tokens, cores_included } => {
                let extra = cores.saturating_sub(cores_included);
                base_tokens.checked_add(hpc_packs_for(extra)?)
            }
        }
    }

    /// Tokens for a demand: direct token demands are taken as they are.
    pub fn tokens_for(&self, demand: Demand) -> Option<u64> {
        match demand {
            Demand::Tokens(tokens) => Some(tokens),
            Demand::Cores { cores, .. } => self.tokens_for_cores(cores),
        }
    }
}

/// The fewest HPC packs covering `extra_cores` cores beyond the included ones.
pub fn hpc_packs_for(extra_cores: u64) -> Option<u64> {
    if extra_cores == 0 {
        return Some(0);
    }
    let mut packs = 1u32;
    loop {
        let covered = 4u64.checked_pow(packs).and_then(|p| p.checked_mul(2))?;
        if covered >= extra_cores {
            return Some(u64::from(packs));
        }
        packs += 1;
    }
}

/// Site policy: pools, groups, and per-subject rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Pools per feature. A feature without an entry has a single pool `default` that may
    /// use all of its tokens.
    #[serde(default)]
    pub pools: BTreeMap<FeatureName, Vec<PoolSpec>>,
    /// Named groups of users.
    #[serde(default)]
    pub user_groups: BTreeMap<GroupName, Vec<UserName>>,
    /// Named groups of hosts.
    #[serde(default)]
    pub host_groups: BTreeMap<GroupName, Vec<HostName>>,
    /// Limits and include/exclude lists, like a FlexNet options file.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A named share of a feature's tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// The pool's name, unique within its feature.
    pub name: PoolName,
    /// Tokens guaranteed to this pool; other pools may only borrow them if `lend` is set.
    #[serde(default)]
    pub reserve: u64,
    /// Most tokens the pool may hold at once; `None` means the feature total.
    #[serde(default)]
    pub cap: Option<u64>,
    /// Whether idle reserved tokens may be lent to other pools of the feature.
    #[serde(default)]
    pub lend: bool,
    /// Low-water mark: lending never leaves fewer than this many of the pool's reserved
    /// tokens idle.
    #[serde(default)]
    pub keep_idle: u64,
    /// Core requests in these modes go to this pool when the request names no pool.
    #[serde(default)]
    pub modes: Vec<ParallelMode>,
}

impl PoolSpec {
    /// A pool with no reserve, no cap and no modes: a plain name on a share of the
    /// remainder.
    pub fn open(name: PoolName) -> Self {
        PoolSpec { name, reserve: 0, cap: None, lend: false, keep_idle: 0, modes: Vec::new() }
    }
}

/// Who a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// One user.
    User(UserName),
    /// Every user, each counted on their own (a per-user default).
    EachUser,
    /// The members of a user group, counted together.
    Group(GroupName),
    /// One host.
    Host(HostName),
    /// The members of a host group, counted together.
    HostGroup(GroupName),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::User(u) => write!(f, "user {u}"),
            Subject::EachUser => write!(f, "each user"),
            Subject::Group(g) => write!(f, "group {g}"),
            Subject::Host(h) => write!(f, "host {h}"),
            Subject::HostGroup(g) => write!(f, "host group {g}"),
        }
    }
}

/// One options-file rule for one feature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The subject may hold at most `tokens` tokens of the feature at once.
    Max {
        /// The feature.
        feature: FeatureName,
        /// Who is limited.
        subject: Subject,
        /// Most tokens held at once.
        tokens: u64,
    },
    /// Once a feature has any include rule, only included subjects may use it.
    Include {
        /// The feature.
        feature: FeatureName,
        /// Who may use it.
        subject: Subject,
    },
    /// The subject may not use the feature. Exclusion wins over inclusion.
    Exclude {
        /// The feature.
        feature: FeatureName,
        /// Who may not use it.
        subject: Subject,
    },
}

impl Rule {
    /// The feature the rule is about.
    pub fn feature(&self) -> &FeatureName {
        match self {
            Rule::Max { feature, .. }
            | Rule::Include { feature, .. }
            | Rule::Exclude { feature, .. } => feature,
        }
    }

    /// The subject the rule is about.
    pub fn subject(&self) -> &Subject {
        match self {
            Rule::Max { subject, .. }
            | Rule::Include { subject, .. }
            | Rule::Exclude { subject, .. } => subject,
        }
    }
}

/// Why an [`Install`] was refused. The message names the field and what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{field}: {problem}")]
pub struct InstallError {
    /// The path of the offending field, such as `policy.pools.lsdyna[1].reserve`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

fn refuse<T>(field: impl Into<String>, problem: impl Into<String>) -> Result<T, InstallError> {
    Err(InstallError { field: field.into(), problem: problem.into() })
}

impl Install {
    /// Checks the whole configuration against itself and the limits.
    pub fn validate(&self, limits: &Limits) -> Result<(), InstallError> {
        let count = self.entitlements.len() as u64;
        if count > limits.max_features {
            return refuse(
                "entitlements",
                format!("{count} features; the limit is {}", limits.max_features),
            );
        }
        let mut totals = BTreeMap::new();
        for (i, e) in self.entitlements.iter().enumerate() {
            let field = |name: &str| format!("entitlements[{i}] ({}).{name}", e.feature);
            if totals.insert(e.feature.clone(), e.tokens_total).is_some() {
                return refuse(field("feature"), "the feature is listed twice; merge the entries");
            }
            if e.tokens_total > limits.max_tokens_per_feature {
                return refuse(
                    field("tokens_total"),
                    format!(
                        "{} is over the limit of {}",
                        e.tokens_total, limits.max_tokens_per_feature
                    ),
                );
            }
            if e.expires_at_ms <= e.starts_at_ms {
                return refuse(field("expires_at_ms"), "the expiry must be after the start");
            }
            if e.max_borrow_ms > limits.max_borrow_ms {
                return refuse(
                    field("max_borrow_ms"),
                    format!("{} is over the limit of {}", e.max_borrow_ms, limits.max_borrow_ms),
                );
            }
            if let CostRule::PerCore { tokens_per_core: 0, .. } = e.cost {
                return refuse(field("cost.tokens_per_core"), "must be at least 1");
            }
        }
        self.policy.validate(&totals, limits)
    }
}

impl Policy {
    fn validate(
        &self,
        totals: &BTreeMap<FeatureName, u64>,
        limits: &Limits,
    ) -> Result<(), InstallError> {
        let entries = self.rules.len()
            + self.user_groups.values().map(|m| m.len() + 1).sum::<usize>()
            + self.host_groups.values().map(|m| m.len() + 1).sum::<usize>();
        if entries as u64 > limits.max_policy_entries {
            return refuse(
                "policy",
                format!(
                    "{entries} rules, groups and members; the limit is {}",
                    limits.max_policy_entries
                ),
            );
        }
        for (feature, pools) in &self.pools {
            let field = format!("policy.pools.{feature}");
            let Some(&total) = totals.get(feature) else {
                return refuse(field, "no entitlement names this feature");
            };
            validate_pools(&field, pools, total, limits)?;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let field = format!("policy.rules[{i}]");
            if !totals.contains_key(rule.feature()) {
                return refuse(
                    format!("{field}.feature"),
                    format!("no entitlement names feature {}", rule.feature()),
                );
            }
            match rule.subject() {
                Subject::Group(g) if !self.user_groups.contains_key(g) => {
                    return refuse(
                        format!("{field}.subject"),
                        format!("user group {g} is not defined in policy.user_groups"),
                    );
                }
                Subject::HostGroup(g) if !self.host_groups.contains_key(g) => {
                    return refuse(
                        format!("{field}.subject"),
                        format!("host group {g} is not defined in policy.host_groups"),
                    );
                }
                _ => {}
            }
            if let Rule::Max { tokens: 0, .. } = rule {
                return refuse(
                    format!("{field}.tokens"),
                    "a maximum of 0 tokens; use an exclude rule instead",
                );
            }
        }
        Ok(())
    }
}

fn validate_pools(
    field: &str,
    pools: &[PoolSpec],
    total: u64,
    limits: &Limits,
) -> Result<(), InstallError> {
    if pools.is_empty() {
        return refuse(field, "list at least one pool, or leave the feature out of policy.pools");
    }
    if pools.len() as u64 > limits.max_pools_per_feature {
        return refuse(
            field,
            format!("{} pools; the limit is {}", pools.len(), limits.max_pools_per_feature),
        );
    }
    let mut names = BTreeSet::new();
    let mut modes = BTreeSet::new();
    let mut reserved = 0u64;
    for (i, pool) in pools.iter().enumerate() {
        let field = |name: &str| format!("{field}[{i}] ({}).{name}", pool.name);
        if !names.insert(&pool.name) {
            return refuse(field("name"), "the pool is listed twice");
        }
        if let Some(cap) = pool.cap {
            if cap < pool.reserve {
                return refuse(
                    field("cap"),
                    format!("cap {cap} is below the reserve {}; raise the cap", pool.reserve),
                );
            }
            if cap > total {
                return refuse(
                    field("cap"),
                    format!("cap {cap} is above the feature total {total}; leave it out"),
                );
            }
        }
        if pool.keep_idle > pool.reserve {
            return refuse(
                field("keep_idle"),
                format!("keep_idle {} is above the reserve {}", pool.keep_idle, pool.reserve),
            );
        }
        for mode in &pool.modes {
            if !modes.insert(*mode) {
                return refuse(
                    field("modes"),
                    format!("mode {mode:?} already routes to an earlier pool"),
                );
            }
        }
        reserved = reserved.saturating_add(pool.reserve);
    }
    if reserved > total {
        return refuse(
            field,
            format!("the reserves add up to {reserved}, more than the feature total {total}"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpc_packs_cover_two_times_four_to_the_n() {
        let packs: Vec<_> = [0, 1, 8, 9, 32, 33, 128, 512, 2048, 2049]
            .iter()
            .map(|&c| hpc_packs_for(c).unwrap())
            .collect();
        assert_eq!(packs, [0, 1, 1, 2, 2, 3, 3, 4, 5, 6]);
        assert_eq!(hpc_packs_for(u64::MAX), None);
    }

    #[test]
    fn per_core_rule_includes_the_first_cores() {
        let rule = CostRule::PerCore { base_tokens: 1, tokens_per_core: 2, cores_included: 4 };
        assert_eq!(rule.tokens_for_cores(4), Some(1));
        assert_eq!(rule.tokens_for_cores(10), Some(13));
        assert_eq!(rule.tokens_for_cores(0), Some(1));
        let huge =
            CostRule::PerCore { base_tokens: 0, tokens_per_core: 1 << 40, cores_included: 0 };
        assert_eq!(huge.tokens_for_cores(1 << 30), None);
    }
}
