//! The clients: each repeats checkout (1 to 4 tokens) then release, one request at a time,
//! until the run ends, and records what happened.
//!
//! Every client is its own `lsm_client::Client` with its own client id, so every client
//! has its own exactly-once session and leader cache; all share one connection pool. The
//! pool is wrapped in [`Counting`], which counts every HTTP exchange: the client library
//! retries inside one call and does not say how often, so retries are exchanges minus
//! operations.
//!
//! Every client records what it asks and what it is told into one shared
//! [`History`](lsm_check::History), so the audit can compare what the clients believe
//! they hold with what the cluster says (see `audit.rs`). A checkout counts as definitely
//! refused only when the state machine refused it; any other failure may hide a grant.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use lsm_check::history::{Event, History, Outcome, Tokens, definite_refusal};
use lsm_client::api::{CheckoutBody, ItemBody, LeaseReply};
use lsm_client::transport::{BoxFuture, Transport, TransportError};
use lsm_client::{Client, ClientError};
use lsm_core::FeatureName;
use tokio::time::Instant;

use crate::load::settings::MAX_TOKENS_PER_CHECKOUT;
use crate::load::stats;

/// A transport that counts exchanges and their failures.
pub struct Counting {
    inner: Arc<dyn Transport>,
    counts: Arc<Exchanges>,
}

/// Exchange counters, shared by every client.
#[derive(Debug, Default)]
pub struct Exchanges {
    /// Exchanges started.
    pub sent: AtomicU64,
    /// Exchanges that got no answer (connection refused or reset, timeout).
    pub failed: AtomicU64,
    /// Answers 502, 503 or 504: no leader, no quorum, forwarding failed, timeout.
    pub unavailable: AtomicU64,
}

impl Counting {
    /// Counts every exchange through `inner` in `counts`.
    pub fn new(inner: Arc<dyn Transport>, counts: Arc<Exchanges>) -> Counting {
        Counting { inner, counts }
    }
}

impl Transport for Counting {
    fn send(
        &self,
        addr: &str,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, TransportError>> {
        let counts = self.counts.clone();
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let exchange = self.inner.send(addr, request, timeout);
        Box::pin(async move {
            let result = exchange.await;
            match &result {
                Err(_) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response) if (502..=504).contains(&response.status().as_u16()) => {
                    counts.unavailable.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
            }
            result
        })
    }
}

/// One client of the run.
pub struct Worker {
    /// Its index, 0-based.
    pub index: usize,
    /// Its client (own id, shared pool).
    pub client: Client,
    /// The feature it checks out.
    pub feature: FeatureName,
    /// Where it records what it asks and is told, for the audit.
    pub history: Arc<History>,
    /// Lease of each checkout.
    pub lease_ttl_ms: u64,
    /// Seed of its token counts.
    pub seed: u64,
}

/// What one client did.
pub struct WorkerResult {
    /// Latency of every answered checkout (granted or refused), µs.
    pub checkout_latency: Histogram<u64>,
    /// Latency of every answered release, µs.
    pub release_latency: Histogram<u64>,
    /// Checkout + release pairs completed.
    pub pairs: u64,
    /// Operations started, warm-up included (checkouts and releases; one client call each).
    pub operations: u64,
    /// Checkouts granted.
    pub grants: u64,
    /// Refused checkouts by error code.
    pub denials: BTreeMap<String, u64>,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// When each operation the cluster answered completed, µs since the start, sorted.
    pub completions: Vec<u64>,
}

/// Error messages kept per client.
const ERROR_SAMPLES: usize = 3;

impl Worker {
    /// Checkout then release until `until`. Only pairs whose checkout is sent at or after
    /// `origin` are measured (what comes before is warm-up); times count from `origin`.
    pub async fn run(self, origin: Instant, until: Instant) -> WorkerResult {
        let mut result = WorkerResult {
            checkout_latency: stats::latency_histogram(),
            release_latency: stats::latency_histogram(),
            pairs: 0,
            operations: 0,
            grants: 0,
            denials: BTreeMap::new(),
            errors: BTreeMap::new(),
            error_samples: Vec::new(),
            completions: Vec::new(),
        };
        let since_origin = |at: Instant| at.saturating_duration_since(origin).as_micros() as u64;
        let mut n = 0u64;
        while Instant::now() < until {
            n += 1;
            let draw = crate::mix(self.seed ^ ((self.index as u64) << 32) ^ n);
            let tokens = 1 + draw % MAX_TOKENS_PER_CHECKOUT;
            let (client, op) = (self.name(), n);
            let what = format!("{}:{tokens}", self.feature);
            let (job, want) = (String::new(), Vec::new());
            self.history.record(Event::Invoke { client, op, job, what, want, wait: false });
            let sent = Instant::now();
            let measured = sent >= origin;
            result.operations += 1;
            let answer = self.client.checkout_once(self.body(tokens)).await;
            let done = Instant::now();
            self.history.record(checkout_event(self.name(), op, &answer));
            let grant = match answer {
                Ok(LeaseReply::Granted(grant)) => {
                    result.grants += u64::from(measured);
                    grant
                }
                Ok(other) => {
                    result.error(format!("unexpected answer {other:?}"), "unexpected_answer");
                    continue;
                }
                Err(ClientError::Api { detail, .. }) => {
                    if measured {
                        let micros = (done - sent).as_micros() as u64;
                        stats::record(&mut result.checkout_latency, micros);
                        result.completions.push(since_origin(done));
                        *result.denials.entry(detail.code.as_str().to_string()).or_default() += 1;
                    }
                    continue;
                }
                Err(error) => {
                    result.error(format!("checkout: {error}"), kind(&error));
                    continue;
                }
            };
            if measured {
                stats::record(&mut result.checkout_latency, (done - sent).as_micros() as u64);
                result.completions.push(since_origin(done));
            }

            let (client, id) = (self.name(), grant.id.0);
            self.history.record(Event::Release { client, id, believed: true });
            result.operations += 1;
            let sent = Instant::now();
            let answer = self.client.release(grant.id).await;
            let done = Instant::now();
            let outcome = match &answer {
                Ok(_) => Outcome::Released,
                Err(ClientError::Api { detail, .. }) => Outcome::Refused(detail.code.to_string()),
                Err(error) => Outcome::Unknown(error.to_string()),
            };
            self.history.record(Event::Released { client: self.name(), id, outcome });
            match answer {
                Ok(_) => {
                    if measured {
                        let micros = (done - sent).as_micros() as u64;
                        stats::record(&mut result.release_latency, micros);
                        result.completions.push(since_origin(done));
                        result.pairs += 1;
                    }
                }
                Err(ClientError::Api { detail, .. }) => {
                    if measured {
                        result.completions.push(since_origin(done));
                    }
                    // The audit reports the grant lost (the cluster did not find it live).
                    result.error(format!("release #{}: {}", grant.id, detail.message), "refused");
                }
                Err(error) => {
                    result.error(format!("release #{}: {error}", grant.id), kind(&error));
                }
            }
        }
        result
    }

    /// Its client id, as the history names it.
    fn name(&self) -> String {
        self.client.id().to_string()
    }

    fn body(&self, tokens: u64) -> CheckoutBody {
        CheckoutBody {
            client: None,
            seq: None,
            ack: None,
            items: vec![ItemBody::tokens(self.feature.clone(), tokens)],
            user: "bench".parse().expect("valid user"),
            host: format!("bench-host-{}", self.index).parse().expect("valid host"),
            job: None,
            lease_ttl_ms: Some(self.lease_ttl_ms),
            borrow_until_ms: None,
            wait: None,
        }
    }
}

impl WorkerResult {
    fn error(&mut self, message: String, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
        if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples.push(message);
        }
    }
}

/// A short name for a failure that is not a refusal.
fn kind(error: &ClientError) -> &'static str {
    match error {
        ClientError::Api { .. } => "refused",
        ClientError::Unavailable { .. } => "unavailable",
        ClientError::Decode { .. } => "decode",
        ClientError::Config { .. } => "config",
        ClientError::WaitTimedOut { .. } => "wait_timed_out",
    }
}

/// The history's entry for the answer to a checkout: definite only for a grant or a
/// refusal the state machine committed (`docs/testing.md`, "Properties").
fn checkout_event(client: String, op: u64, answer: &Result<LeaseReply, ClientError>) -> Event {
    match answer {
        Ok(LeaseReply::Granted(grant)) => {
            let (id, fence, items) = (grant.id.0, grant.fence, Tokens::of(&grant.items));
            Event::Granted { client, op, id, fence, items }
        }
        Err(ClientError::Api { detail, .. })
            if definite_refusal(detail.denial.is_some(), detail.code.as_str()) =>
        {
            Event::Refused { client, op, code: detail.code.to_string() }
        }
        Err(ClientError::Api { detail, .. }) => {
            let (code, error) = (Some(detail.code.to_string()), detail.message.clone());
            Event::Unknown { client, op, id: None, code, error }
        }
        Ok(other) => {
            Event::Unknown { client, op, id: None, code: None, error: format!("{other:?}") }
        }
        Err(error) => Event::Unknown { client, op, id: None, code: None, error: error.to_string() },
    }
}
