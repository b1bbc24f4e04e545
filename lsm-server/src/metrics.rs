//! Prometheus metrics.
//!
//! Two kinds: counters and histograms updated as requests are served (request latency by
//! route template and status class; denials by error code, counted on the node that
//! answered the client), and gauges computed at scrape time from this node's local state
//! and Raft status (tokens per feature and pool, checkouts, queue, term, leader, log
//! indexes, the leader clock's skew and clamped term starts). Scrape-time gauges are cleared and refilled on every scrape, so a feature
//! that was removed from the license disappears from the output.

use std::sync::Mutex;
use std::time::Duration;

use lsm_client::api::ErrorCode;
use lsm_raft::node::LsmNode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the request histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: String,
}

/// Labels of the denial counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

/// Labels of per-feature gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabels {
    feature: String,
}

/// Labels of per-pool gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    feature: String,
    pool: String,
}

type Histograms = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    requests: Histograms,
    denials: Family<CodeLabels, Counter>,
    feature_total: Family<FeatureLabels, Gauge>,
    feature_used: Family<FeatureLabels, Gauge>,
    feature_free: Family<FeatureLabels, Gauge>,
    feature_queued: Family<FeatureLabels, Gauge>,
    pool_reserve: Family<PoolLabels, Gauge>,
    pool_cap: Family<PoolLabels, Gauge>,
    pool_used: Family<PoolLabels, Gauge>,
    pool_available: Family<PoolLabels, Gauge>,
    checkouts: Gauge,
    queued: Gauge,
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    clamped_term_starts: Gauge,
    clock_skew: Gauge,
    /// One scrape at a time: a scrape clears and refills the gauges.
    scrape: Mutex<()>,
}

fn request_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lsm");
        let requests: Histograms = Family::new_with_constructor(request_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP requests by route template and status class",
            requests.clone(),
        );
        let denials = Family::<CodeLabels, Counter>::default();
        registry.register(
            "denials",
            "Requests refused by the state machine, by error code, counted by the node that answered the client",
            denials.clone(),
        );
        let mut gauge_family = |name: &str, help: &str| {
            let family = Family::<FeatureLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let feature_total = gauge_family("feature_tokens_total", "Tokens licensed per feature");
        let feature_used = gauge_family("feature_tokens_used", "Tokens checked out per feature");
        let feature_free =
            gauge_family("feature_tokens_free", "Tokens not checked out per feature");
        let feature_queued = gauge_family("feature_queued", "Requests queued per feature");
        let mut pool_family = |name: &str, help: &str| {
            let family = Family::<PoolLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let pool_reserve = pool_family("pool_tokens_reserve", "Tokens reserved per pool");
        let pool_cap = pool_family("pool_tokens_cap", "Most tokens a pool may hold");
        let pool_used = pool_family("pool_tokens_used", "Tokens held per pool");
        let pool_available =
            pool_family("pool_tokens_available", "Tokens a pool could be granted now");
        let mut gauge = |name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let checkouts = gauge("checkouts", "Live checkouts");
        let queued = gauge("queued", "Queued requests");
        let term = gauge("raft_term", "The current Raft term");
        let leader = gauge("raft_leader_id", "The leader's node id; 0 when unknown");
        let is_leader = gauge("raft_is_leader", "1 on the leader, else 0");
        let commit_index = gauge("raft_commit_index", "The last log index known committed");
        let applied_index = gauge("raft_applied_index", "The last log index applied");
        let last_log_index = gauge("raft_last_log_index", "The last index in the log");
        let clamped_term_starts = gauge(
            "clock_clamped_term_starts",
            "Terms this node led, since it started, whose first timestamp was held to raft.max_term_start_step_ms past replicated time because its wall clock was further ahead",
        );
        let clock_skew = gauge(
            "clock_skew_ms",
            "This node's wall clock minus the last timestamp it stamped as leader, in ms; 0 before it first leads",
        );
        Metrics {
            registry,
            requests,
            denials,
            feature_total,
            feature_used,
            feature_free,
            feature_queued,
            pool_reserve,
            pool_cap,
            pool_used,
            pool_available,
            checkouts,
            queued,
            term,
            leader,
            is_leader,
            commit_index,
            applied_index,
            last_log_index,
            clamped_term_starts,
            clock_skew,
            scrape: Mutex::new(()),
        }
    }

    /// Records one answered request.
    pub fn observe_request(&self, route: &str, status: u16, took: Duration) {
        let labels =
            RouteLabels { route: route.to_string(), status: format!("{}xx", status / 100) };
        self.requests.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Counts one denial.
    pub fn count_denial(&self, code: ErrorCode) {
        self.denials.get_or_create(&CodeLabels { code: code.as_str().to_string() }).inc();
    }

    /// Refreshes the scrape-time gauges from `node` and encodes everything.
    pub fn render(&self, node: &LsmNode) -> Result<String, std::fmt::Error> {
        let _one_scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let (features, summary) = node.read_local(|s| (s.features_status(), s.summary()));
        for family in
            [&self.feature_total, &self.feature_used, &self.feature_free, &self.feature_queued]
        {
            family.clear();
        }
        for family in [&self.pool_reserve, &self.pool_cap, &self.pool_used, &self.pool_available] {
            family.clear();
        }
        for f in &features {
            let labels = FeatureLabels { feature: f.feature.to_string() };
            self.feature_total.get_or_create(&labels).set(int(f.tokens_total));
            self.feature_used.get_or_create(&labels).set(int(f.in_use));
            self.feature_free.get_or_create(&labels).set(int(f.free));
            self.feature_queued.get_or_create(&labels).set(int(f.queued));
            for p in &f.pools {
                let labels =
                    PoolLabels { feature: f.feature.to_string(), pool: p.pool.to_string() };
                self.pool_reserve.get_or_create(&labels).set(int(p.reserve));
                self.pool_cap.get_or_create(&labels).set(int(p.cap));
                self.pool_used.get_or_create(&labels).set(int(p.in_use));
                self.pool_available.get_or_create(&labels).set(int(p.available));
            }
        }
        self.checkouts.set(int(summary.checkouts));
        self.queued.set(int(summary.queued));
        let status = node.status();
        self.term.set(int(status.term));
        self.leader.set(int(status.leader.unwrap_or(0)));
        self.is_leader.set(i64::from(status.leader == Some(status.id)));
        self.commit_index.set(int(status.commit_index.unwrap_or(0)));
        self.applied_index.set(int(status.applied_index.unwrap_or(0)));
        self.last_log_index.set(int(status.last_log_index.unwrap_or(0)));
        let clock = node.clock_status();
        self.clamped_term_starts.set(int(clock.clamped_term_starts));
        self.clock_skew.set(clock.skew_ms);
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A gauge value.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
