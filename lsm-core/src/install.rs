//! Installing a new license configuration.
//!
//! The new configuration replaces the old one whole. Running checkouts always continue:
//! a feature or pool that disappears, or whose total or cap shrinks below what is in use,
//! keeps counting its holders (as retired or over-cap) and refuses new grants until usage
//! has fallen below the new bounds. Queued requests are re-examined and dropped if they can
//! no longer be granted under the new configuration.

use std::collections::BTreeMap;

use crate::license::{Install, PoolSpec};
use crate::pool::FeatureState;
use crate::response::{Denial, Event, Response};
use crate::state::{Effects, State};

impl State {
    /// Validates and installs a license configuration.
    pub(crate) fn install(&mut self, install: Install, fx: &mut Effects) -> Response {
        if let Err(err) = install.validate(&self.limits) {
            return Response::Denied(Denial::BadInstall(err));
        }
        let Install { entitlements, mut policy } = install;
        let mut pools = std::mem::take(&mut policy.pools);
        let mut features = BTreeMap::new();
        for entitlement in entitlements {
            let name = entitlement.feature.clone();
            let specs = pools
                .remove(&name)
                .unwrap_or_else(|| vec![PoolSpec::open("default".parse().expect("valid name"))]);
            let state = match self.features.remove(&name) {
                Some(mut state) => {
                    state.reconfigure(entitlement, specs);
                    state.prune();
                    state
                }
                None => FeatureState::new(entitlement, specs),
            };
            features.insert(name, state);
        }
        for (name, mut old) in std::mem::take(&mut self.features) {
            if old.in_use() > 0 {
                let mut entitlement = old.entitlement.clone();
                entitlement.tokens_total = 0;
                old.reconfigure(entitlement, Vec::new());
                old.retired = true;
                features.insert(name, old);
            }
        }
        fx.touched.extend(features.keys().cloned());
        fx.freed_all = true;
        let licensed: Vec<_> =
            features.iter().filter(|(_, f)| !f.retired).map(|(n, _)| n.clone()).collect();
        let count = licensed.len() as u64;
        self.features = features;
        self.policy = policy;
        self.rebuild_index();
        fx.events.push(Event::Installed { features: licensed });
        Response::Installed { features: count }
    }
}
