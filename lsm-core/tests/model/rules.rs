//! The model's options-file rules, written from "Options-file rules" in
//! `docs/design/licensing-model.md`: include and exclude lists, and max rules on a user,
//! each user, a user group, a host or a host group, with holdings summed over the live
//! checkouts every time.

use lsm_core::{Denial, FeatureName, HostName, Rule, Subject, UserName};

use crate::model::{Model, Refusal};

impl Model {
    /// Every subject a rule may name that covers `user`@`host`: the user, each user,
    /// the host, and the groups that list them.
    fn subjects_of(&self, user: &UserName, host: &HostName) -> Vec<Subject> {
        let mut all =
            vec![Subject::User(user.clone()), Subject::EachUser, Subject::Host(host.clone())];
        for (group, members) in &self.policy.user_groups {
            if members.contains(user) {
                all.push(Subject::Group(group.clone()));
            }
        }
        for (group, members) in &self.policy.host_groups {
            if members.contains(host) {
                all.push(Subject::HostGroup(group.clone()));
            }
        }
        all
    }

    fn covers(&self, subject: &Subject, user: &UserName, host: &HostName) -> bool {
        self.subjects_of(user, host).contains(subject)
    }

    /// What a max rule on `subject` counts for a requester `who` (user, host): every
    /// live item of the feature whose holder the rule counts together with the
    /// requester. A user rule and `each_user` count the requester's own user, a host rule
    /// its host, a group rule all of the group's members.
    fn counted(
        &self,
        feature: &FeatureName,
        subject: &Subject,
        who: (&UserName, &HostName),
    ) -> u64 {
        let mut sum = 0;
        for c in &self.live {
            let together = match subject {
                Subject::User(_) | Subject::EachUser => &c.user == who.0,
                Subject::Host(_) => &c.host == who.1,
                Subject::Group(_) | Subject::HostGroup(_) => self.covers(subject, &c.user, &c.host),
            };
            if together {
                sum +=
                    c.items.iter().filter(|i| &i.feature == feature).map(|i| i.tokens).sum::<u64>();
            }
        }
        sum
    }

    /// The options-file rules on one feature.
    fn rules_of(&self, feature: &FeatureName) -> Vec<&Rule> {
        let on = |r: &&Rule| match r {
            Rule::Max { feature: f, .. }
            | Rule::Include { feature: f, .. }
            | Rule::Exclude { feature: f, .. } => f == feature,
        };
        self.policy.rules.iter().filter(on).collect()
    }

    /// The include and exclude rules: exclusion wins; with any include rule, only
    /// requesters it covers pass.
    pub fn access(
        &self,
        feature: &FeatureName,
        user: &UserName,
        host: &HostName,
    ) -> Result<(), Denial> {
        let rules: Vec<&Rule> = self.rules_of(feature);
        for rule in &rules {
            if let Rule::Exclude { subject, .. } = rule
                && self.covers(subject, user, host)
            {
                return Err(Denial::Excluded {
                    feature: feature.clone(),
                    subject: subject.clone(),
                });
            }
        }
        let includes: Vec<&Subject> = (rules.iter())
            .filter_map(|r| match r {
                Rule::Include { subject, .. } => Some(subject),
                _ => None,
            })
            .collect();
        if !includes.is_empty() && !includes.iter().any(|s| self.covers(s, user, host)) {
            let subject = Subject::User(user.clone());
            return Err(Denial::Excluded { feature: feature.clone(), subject });
        }
        Ok(())
    }

    /// The max rules: each covering rule must have room. A request larger than the max
    /// itself can never be granted, so that refusal is not transient.
    pub fn max_rules(
        &self,
        feature: &FeatureName,
        user: &UserName,
        host: &HostName,
        tokens: u64,
    ) -> Result<(), Refusal> {
        for rule in self.rules_of(feature) {
            let Rule::Max { subject, tokens: max, .. } = rule else { continue };
            if !self.covers(subject, user, host) {
                continue;
            }
            let held = self.counted(feature, subject, (user, host));
            if held + tokens > *max {
                let denial = Denial::OverLimit {
                    feature: feature.clone(),
                    subject: subject.clone(),
                    max: *max,
                    held,
                    requested: tokens,
                };
                return Err(Refusal { denial, transient: tokens <= *max });
            }
        }
        Ok(())
    }
}
