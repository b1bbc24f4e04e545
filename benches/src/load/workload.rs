//! The clients: each repeats checkout (1 to 4 tokens) then release, one request at a time,
//! until the run ends, and records what happened.
//!
//! Every client is its own `lsm_client::Client` with its own client id, so every client
//! has its own exactly-once session and leader cache; all share one connection pool. The
//! pool is wrapped in [`Counting`], which counts every HTTP exchange: the client library
//! retries inside one call and does not say how often, so retries are exchanges minus
//! operations.
//!
//! A client publishes what it believes it holds in a [`ViewCell`], so the audit can
//! compare it with what the cluster says (see `audit.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use lsm_client::api::{CheckoutBody, ErrorCode, ItemBody, LeaseReply};
use lsm_client::transport::{BoxFuture, Transport, TransportError};
use lsm_client::{Client, ClientError};
use lsm_core::FeatureName;
use serde::Serialize;
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

/// What a client believes it holds, for the audit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// The checkout it holds: granted, and its release not yet answered.
    pub held: Option<u64>,
    /// The release of `held` has been sent.
    pub releasing: bool,
    /// The highest checkout id whose release the cluster acknowledged.
    pub last_released: u64,
    /// A checkout request is waiting for its answer.
    pub checkout_in_flight: bool,
    /// Checkouts whose release got no answer, or was refused for a reason other than
    /// the checkout being gone: they may still be live.
    pub unsure: Vec<u64>,
    /// Checkout requests that failed without an answer: the cluster may have granted them.
    pub abandoned: u64,
}

/// A client's [`View`], shared with the audit.
#[derive(Debug, Default)]
pub struct ViewCell(Mutex<View>);

impl ViewCell {
    /// A copy of the view now.
    pub fn get(&self) -> View {
        self.lock().clone()
    }

    fn update(&self, change: impl FnOnce(&mut View)) {
        change(&mut self.lock());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A grant the cluster acknowledged and later did not have while the client still held
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostGrant {
    /// The client.
    pub client: String,
    /// The checkout.
    pub id: u64,
    /// What the cluster said.
    pub answer: String,
}

/// One client of the run.
pub struct Worker {
    /// Its index, 0-based.
    pub index: usize,
    /// Its client (own id, shared pool).
    pub client: Client,
    /// The feature it checks out.
    pub feature: FeatureName,
    /// What it holds, for the audit.
    pub view: Arc<ViewCell>,
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
    /// Releases that found the checkout gone.
    pub lost: Vec<LostGrant>,
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
            lost: Vec::new(),
            completions: Vec::new(),
        };
        let since_origin = |at: Instant| at.saturating_duration_since(origin).as_micros() as u64;
        let mut n = 0u64;
        while Instant::now() < until {
            n += 1;
            let draw = crate::mix(self.seed ^ ((self.index as u64) << 32) ^ n);
            let tokens = 1 + draw % MAX_TOKENS_PER_CHECKOUT;
            self.view.update(|v| v.checkout_in_flight = true);
            let sent = Instant::now();
            let measured = sent >= origin;
            result.operations += 1;
            let answer = self.client.checkout_once(self.body(tokens)).await;
            let done = Instant::now();
            let grant = match answer {
                Ok(LeaseReply::Granted(grant)) => {
                    self.view.update(|v| {
                        v.checkout_in_flight = false;
                        v.held = Some(grant.id.0);
                        v.releasing = false;
                    });
                    result.grants += u64::from(measured);
                    grant
                }
                Ok(other) => {
                    self.view.update(|v| v.checkout_in_flight = false);
                    result.error(format!("unexpected answer {other:?}"), "unexpected_answer");
                    continue;
                }
                Err(ClientError::Api { detail, .. }) => {
                    self.view.update(|v| v.checkout_in_flight = false);
                    if measured {
                        let micros = (done - sent).as_micros() as u64;
                        stats::record(&mut result.checkout_latency, micros);
                        result.completions.push(since_origin(done));
                        *result.denials.entry(detail.code.as_str().to_string()).or_default() += 1;
                    }
                    continue;
                }
                Err(error) => {
                    self.view.update(|v| {
                        v.checkout_in_flight = false;
                        v.abandoned += 1;
                    });
                    result.error(format!("checkout: {error}"), kind(&error));
                    continue;
                }
            };
            if measured {
                stats::record(&mut result.checkout_latency, (done - sent).as_micros() as u64);
                result.completions.push(since_origin(done));
            }

            self.view.update(|v| v.releasing = true);
            result.operations += 1;
            let sent = Instant::now();
            let answer = self.client.release(grant.id).await;
            let done = Instant::now();
            match answer {
                Ok(_) => {
                    self.view.update(|v| {
                        v.held = None;
                        v.releasing = false;
                        v.last_released = v.last_released.max(grant.id.0);
                    });
                    if measured {
                        let micros = (done - sent).as_micros() as u64;
                        stats::record(&mut result.release_latency, micros);
                        result.completions.push(since_origin(done));
                        result.pairs += 1;
                    }
                }
                Err(ClientError::Api { detail, .. }) => {
                    self.view.update(|v| {
                        v.held = None;
                        v.releasing = false;
                    });
                    if measured {
                        result.completions.push(since_origin(done));
                    }
                    let lost = matches!(
                        detail.code,
                        ErrorCode::Gone | ErrorCode::UnknownCheckout | ErrorCode::NotOwner
                    );
                    if lost {
                        result.lost.push(LostGrant {
                            client: self.client.id().to_string(),
                            id: grant.id.0,
                            answer: format!("release: {} ({})", detail.message, detail.code),
                        });
                    } else {
                        // Refused for another reason: it may still be live.
                        self.view.update(|v| v.unsure.push(grant.id.0));
                        result
                            .error(format!("release #{}: {}", grant.id, detail.message), "refused");
                    }
                }
                Err(error) => {
                    self.view.update(|v| {
                        v.held = None;
                        v.releasing = false;
                        v.unsure.push(grant.id.0);
                    });
                    result.error(format!("release #{}: {error}", grant.id), kind(&error));
                }
            }
        }
        result
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
