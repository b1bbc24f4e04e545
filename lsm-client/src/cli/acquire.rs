//! Checking out from the command line: queue positions on stderr, and a signal while
//! waiting withdraws the queued request before `lsm` exits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lsm_core::{CheckoutId, Queued};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::checkout::CheckoutOptions;
use crate::cli::CliError;
use crate::cli::request::Request;
use crate::client::Client;
use crate::lease::Lease;

/// How an acquisition ended.
#[derive(Debug)]
pub enum Acquired {
    /// Granted.
    Lease(Lease),
    /// A signal arrived first; any queued request was withdrawn.
    Interrupted(Signal),
}

/// SIGINT and SIGTERM, caught instead of ending the process.
#[derive(Debug)]
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Catches SIGINT and SIGTERM from now on.
    pub fn catch() -> Result<Signals, CliError> {
        let catch =
            |kind| signal(kind).map_err(|e| CliError::Usage(format!("cannot catch signals: {e}")));
        Ok(Signals {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
        })
    }

    /// The next signal caught.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
        }
    }
}

/// Checks out, printing queue positions to stderr as they change; a signal withdraws a
/// queued request and returns [`Acquired::Interrupted`].
pub async fn acquire(
    client: &Client,
    request: Request,
    signals: &mut Signals,
) -> Result<Acquired, CliError> {
    let queued: Arc<Mutex<Option<CheckoutId>>> = Arc::default();
    let seen = queued.clone();
    let mut last_position = None;
    let on_queued = move |q: &Queued| {
        if last_position != Some(q.position) {
            eprintln!("lsm: waiting in the queue as #{}: position {}", q.id, q.position);
            last_position = Some(q.position);
        }
        *seen.lock().expect("queued id lock") = Some(q.id);
    };
    let options =
        CheckoutOptions { on_queued: Some(Box::new(on_queued)), wait_timeout: request.wait };
    tokio::select! {
        lease = client.checkout_with(request.body, options) => Ok(Acquired::Lease(lease?)),
        caught = signals.next() => {
            let id = *queued.lock().expect("queued id lock");
            if let Some(id) = id {
                eprintln!("lsm: {caught}: withdrawing queued request #{id}");
                let _ = tokio::time::timeout(Duration::from_secs(5), client.release(id)).await;
            }
            Ok(Acquired::Interrupted(caught))
        }
    }
}
