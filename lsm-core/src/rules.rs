//! Options-file rules: pool routing, include/exclude lists and max limits.
//!
//! Rules are checked per feature in a fixed order: exclude (any matching exclude refuses),
//! include (once a feature has an include rule, only matching subjects may use it), then
//! every max rule that matches the requester. For features with max rules, usage is kept
//! per feature and user and per feature and host (a derived index, rebuilt when the policy
//! changes); group limits add up their members.

use crate::command::Item;
use crate::ids::{FeatureName, HostName, UserName};
use crate::license::{Demand, Rule, Subject};
use crate::pool::FeatureState;
use crate::response::Denial;
use crate::state::State;

impl State {
    /// The pool an item draws on: the named one, else the pool serving the demand's
    /// mode, else the feature's first pool.
    pub(crate) fn resolve_pool(
        &self,
        feature: &FeatureState,
        item: &Item,
    ) -> Result<usize, Denial> {
        if let Some(name) = &item.pool {
            return feature.pool_index(name).ok_or_else(|| Denial::UnknownPool {
                feature: item.feature.clone(),
                pool: name.clone(),
            });
        }
        if let Demand::Cores { mode, .. } = item.demand
            && let Some(p) =
                feature.pools.iter().position(|p| !p.retired && p.spec.modes.contains(&mode))
        {
            return Ok(p);
        }
        match feature.pools.iter().position(|p| !p.retired) {
            Some(p) => Ok(p),
            None => Err(Denial::UnknownFeature { feature: item.feature.clone() }),
        }
    }

    fn rules_for<'a>(&'a self, feature: &'a FeatureName) -> impl Iterator<Item = &'a Rule> + 'a {
        self.policy.rules.iter().filter(move |r| r.feature() == feature)
    }

    fn matches(&self, subject: &Subject, user: &UserName, host: &HostName) -> bool {
        match subject {
            Subject::User(u) => u == user,
            Subject::EachUser => true,
            Subject::Group(g) => self.policy.user_groups.get(g).is_some_and(|m| m.contains(user)),
            Subject::Host(h) => h == host,
            Subject::HostGroup(g) => {
                self.policy.host_groups.get(g).is_some_and(|m| m.contains(host))
            }
        }
    }

    /// Include and exclude lists.
    pub(crate) fn check_access(
        &self,
        feature: &FeatureName,
        user: &UserName,
        host: &HostName,
    ) -> Result<(), Denial> {
        if self.policy.rules.is_empty() {
            return Ok(());
        }
        let mut has_include = false;
        let mut included = false;
        for rule in self.rules_for(feature) {
            match rule {
                Rule::Exclude { subject, .. } if self.matches(subject, user, host) => {
                    return Err(Denial::Excluded {
                        feature: feature.clone(),
                        subject: subject.clone(),
                    });
                }
                Rule::Include { subject, .. } => {
                    has_include = true;
                    included |= self.matches(subject, user, host);
                }
                _ => {}
            }
        }
        if has_include && !included {
            return Err(Denial::Excluded {
                feature: feature.clone(),
                subject: Subject::User(user.clone()),
            });
        }
        Ok(())
    }

    /// Max rules: the requester's holdings plus `tokens` must stay within every matching
    /// rule.
    pub(crate) fn check_max(
        &self,
        feature: &FeatureName,
        user: &UserName,
        host: &HostName,
        tokens: u64,
    ) -> Result<(), Denial> {
        if self.policy.rules.is_empty() {
            return Ok(());
        }
        for rule in self.rules_for(feature) {
            let Rule::Max { subject, tokens: max, .. } = rule else { continue };
            if !self.matches(subject, user, host) {
                continue;
            }
            let held = self.held_by(feature, subject, user, host);
            if held + tokens > *max {
                return Err(Denial::OverLimit {
                    feature: feature.clone(),
                    subject: subject.clone(),
                    max: *max,
                    held,
                    requested: tokens,
                });
            }
        }
        Ok(())
    }

    /// Tokens of `feature` held by `subject`, as seen from a requester `user`@`host`.
    fn held_by(
        &self,
        feature: &FeatureName,
        subject: &Subject,
        user: &UserName,
        host: &HostName,
    ) -> u64 {
        let by_user = |u: &UserName| {
            self.index.held_by_user.get(&(feature.clone(), u.clone())).copied().unwrap_or(0)
        };
        let by_host = |h: &HostName| {
            self.index.held_by_host.get(&(feature.clone(), h.clone())).copied().unwrap_or(0)
        };
        match subject {
            Subject::User(_) | Subject::EachUser => by_user(user),
            Subject::Host(_) => by_host(host),
            Subject::Group(g) => {
                self.policy.user_groups.get(g).map_or(0, |m| m.iter().map(by_user).sum())
            }
            Subject::HostGroup(g) => {
                self.policy.host_groups.get(g).map_or(0, |m| m.iter().map(by_host).sum())
            }
        }
    }

    /// Counts tokens granted to `user`@`host`, for features with max rules.
    pub(crate) fn add_held(
        &mut self,
        feature: &FeatureName,
        user: &UserName,
        host: &HostName,
        tokens: u64,
    ) {
        if tokens == 0 || !self.index.limited.contains(feature) {
            return;
        }
        *self.index.held_by_user.entry((feature.clone(), user.clone())).or_default() += tokens;
        *self.index.held_by_host.entry((feature.clone(), host.clone())).or_default() += tokens;
    }

    /// Uncounts tokens returned by `user`@`host`, for features with max rules.
    pub(crate) fn sub_held(
        &mut self,
        feature: &FeatureName,
        user: &UserName,
        host: &HostName,
        tokens: u64,
    ) {
        if tokens == 0 || !self.index.limited.contains(feature) {
            return;
        }
        let key = (feature.clone(), user.clone());
        if let Some(n) = self.index.held_by_user.get_mut(&key) {
            *n -= tokens;
            if *n == 0 {
                self.index.held_by_user.remove(&key);
            }
        }
        let key = (feature.clone(), host.clone());
        if let Some(n) = self.index.held_by_host.get_mut(&key) {
            *n -= tokens;
            if *n == 0 {
                self.index.held_by_host.remove(&key);
            }
        }
    }
}
