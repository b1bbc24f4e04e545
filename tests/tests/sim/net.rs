//! The real HTTP stack over turmoil's simulated TCP.
//!
//! lsm opens sockets in exactly three places, each behind a seam (`docs/ARCHITECTURE.md`,
//! "the transport seams"): the server's listener (whoever serves `Server::router`), the
//! client's and the forwarding server's `lsm_client::transport::Transport`, and the peer
//! RPCs' `lsm_raft::network::http::PeerTransport`. This module fills all three with
//! turmoil: [`SimListener`] is an `axum::serve::Listener`, [`SimConnector`] a hyper-util
//! connector for `HyperTransport`, and [`PeerOverTransport`] sends peer RPCs through that
//! same transport. axum, hyper and the server's handlers run unchanged.
//!
//! A node that a crash fault has *doomed* (see `world.rs`) keeps running until the end of
//! the simulation step, but nothing it writes reaches the network any more, and it opens
//! no connections: it has, as far as anyone else can tell, already crashed. Every stream
//! a node's host opens or accepts carries that host's [`Doom`] flag.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use lsm_client::transport::{HyperTransport, Transport, TransportError};
use lsm_raft::network::MAX_MESSAGE_BYTES;
use lsm_raft::network::http::{PeerAnswer, PeerFailure, PeerTransport};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    /// With `LSM_SIM_TRACE` set: every network write of the simulation running on this
    /// thread, for finding where two runs of one seed part (see `a_seed_replays_exactly`).
    static TRACE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// True when `LSM_SIM_TRACE` is set.
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LSM_SIM_TRACE").is_some())
}

/// Appends to this thread's trace when `LSM_SIM_TRACE` is set and a simulation step is
/// running, stamped with the simulated time.
pub fn trace(what: impl FnOnce() -> String) {
    if tracing() {
        // Outside a step (the teardown after the run) nothing reaches the run's history.
        let Some(at) = turmoil::in_simulation().then(turmoil::sim_elapsed).flatten() else {
            return;
        };
        let line = format!("{:>13} {}", at.as_nanos(), what());
        TRACE.with(|t| t.borrow_mut().push(line));
    }
}

/// This thread's trace so far, emptying it.
pub fn take_trace() -> Vec<String> {
    TRACE.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

/// The port every node serves on.
pub const PORT: u16 = 7101;

/// One incarnation of a host on the network: its doom flag and its open streams.
///
/// Once the incarnation is doomed its output goes nowhere, and its connections are not
/// closed when its tasks are dropped: a crashed machine sends no FIN. They are kept,
/// silent, until the host's next incarnation boots and closes them ([`Doom::close_all`]),
/// as a rebooted machine resets the connections it no longer knows. A client host closes
/// its streams the same way when its work is done ([`Closer`]).
///
/// Besides being the realistic model, this keeps a run a function of its seed alone.
/// tokio drops a runtime's tasks in an order that depends on process-wide task ids, so
/// closes sent from those drops (when a host crashes or a client host finishes) would
/// reach turmoil, which draws each message's latency from the seeded random source, in
/// an order that other simulations in the same process could change. Here every close
/// happens in the order the streams were opened.
#[derive(Clone, Debug, Default)]
pub struct Doom(Arc<DoomState>);

#[derive(Debug, Default)]
struct DoomState {
    set: AtomicBool,
    /// Streams opened or accepted so far; numbers them.
    opened: AtomicU64,
    /// The open streams, by the order they were opened in.
    streams: Mutex<BTreeMap<u64, Shared>>,
}

/// A stream, shared by its [`SimStream`] and its incarnation's table; `None` once closed.
type Shared = Arc<Mutex<Option<turmoil::net::TcpStream>>>;

impl Doom {
    /// A fresh, live incarnation.
    pub fn new() -> Doom {
        Doom::default()
    }

    /// Marks the incarnation as crashed.
    pub fn set(&self) {
        self.0.set.store(true, Ordering::SeqCst);
    }

    /// True once crashed.
    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::SeqCst)
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Shared>> {
        self.0.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wraps and registers a stream of this incarnation.
    fn stream(&self, inner: turmoil::net::TcpStream) -> SimStream {
        let number = self.0.opened.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::new(Mutex::new(Some(inner)));
        self.streams().insert(number, shared.clone());
        SimStream { inner: shared, number, doom: self.clone() }
    }

    /// Closes every stream still open, oldest first. Must run on the incarnation's own
    /// host, which turmoil sends the closes from.
    pub fn close_all(&self) {
        let streams = std::mem::take(&mut *self.streams());
        for shared in streams.into_values() {
            let closed = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(closed);
        }
    }
}

/// Closes its incarnation's streams when dropped: a client host's last act.
pub struct Closer(pub Doom);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close_all();
    }
}

/// A turmoil TCP stream that swallows its writes once its host is doomed.
#[derive(Debug)]
pub struct SimStream {
    inner: Shared,
    /// Its place in the order its incarnation opened streams.
    number: u64,
    doom: Doom,
}

impl SimStream {
    /// Runs `f` on the open stream, or fails as a closed socket does.
    fn with<T>(
        &self,
        f: impl FnOnce(Pin<&mut turmoil::net::TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.inner.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(inner) => f(Pin::new(inner)),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn addrs(&self) -> (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = inner.as_ref();
        (inner.and_then(|i| i.local_addr().ok()), inner.and_then(|i| i.peer_addr().ok()))
    }
}

impl Drop for SimStream {
    /// A live incarnation closes the stream now; a doomed one keeps it for its next
    /// incarnation to close.
    fn drop(&mut self) {
        if !self.doom.is_set() {
            self.doom.streams().remove(&self.number);
            let closed = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(closed) = closed {
                trace(|| format!("close {:?} -> {:?}", closed.local_addr(), closed.peer_addr()));
            }
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|inner| inner.poll_read(cx, buf))
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.doom.is_set() {
            return Poll::Ready(Ok(buf.len()));
        }
        trace(|| {
            let (from, to) = self.addrs();
            let head = String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned();
            format!("write {from:?} -> {to:?}: {} bytes {head:?}", buf.len())
        });
        self.with(|inner| inner.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.doom.is_set() {
            return Poll::Ready(Ok(()));
        }
        self.with(|inner| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.doom.is_set() {
            return Poll::Ready(Ok(()));
        }
        self.with(|inner| inner.poll_shutdown(cx))
    }
}

impl Connection for SimStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// A turmoil listener serving axum.
pub struct SimListener {
    inner: turmoil::net::TcpListener,
    doom: Doom,
}

impl SimListener {
    /// Listens on [`PORT`] of the current host.
    pub async fn bind(doom: Doom) -> io::Result<SimListener> {
        let inner = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
        Ok(SimListener { inner, doom })
    }
}

impl axum::serve::Listener for SimListener {
    type Io = SimStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (SimStream, std::net::SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((inner, addr)) => return (self.doom.stream(inner), addr),
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// A hyper-util connector that dials turmoil hosts by name (`n1:7101`).
#[derive(Clone, Debug)]
pub struct SimConnector {
    doom: Doom,
}

impl tower_service::Service<http::Uri> for SimConnector {
    type Response = TokioIo<SimStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<SimStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let doom = self.doom.clone();
        Box::pin(async move {
            if doom.is_set() {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "this host has crashed"));
            }
            let host = uri.host().ok_or_else(|| io::Error::other("no host in the URI"))?;
            let port = uri.port_u16().unwrap_or(80);
            let inner = turmoil::net::TcpStream::connect(format!("{host}:{port}")).await;
            trace(|| {
                format!("connect {host}:{port}: {:?}", inner.as_ref().map(|s| s.local_addr().ok()))
            });
            let inner = inner?;
            Ok(TokioIo::new(doom.stream(inner)))
        })
    }
}

/// The real `HyperTransport` over simulated TCP, for clients and for forwarding.
pub fn transport(doom: Doom) -> Arc<dyn Transport> {
    Arc::new(HyperTransport::with_connector(SimConnector { doom }))
}

/// Peer RPCs as plain HTTP exchanges through a [`Transport`]: `POST {path}`,
/// `application/octet-stream`, the status and body back.
pub struct PeerOverTransport(pub Arc<dyn Transport>);

impl PeerTransport for PeerOverTransport {
    fn post(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<PeerAnswer, PeerFailure>> + Send + 'static>> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(Bytes::from(body));
        let sent = request.map(|request| self.0.send(addr, request, timeout));
        let what = format!("peer {addr}{path} timeout {timeout:?}");
        Box::pin(async move {
            let sent = sent.map_err(|e| PeerFailure::Failed(e.to_string()))?;
            let sent = sent.await;
            trace(|| format!("{what}: {:?}", sent.as_ref().map(|a| a.status())));
            match sent {
                Ok(answer) => {
                    let status = answer.status().as_u16();
                    let body = answer.into_body();
                    let body = (body.len() <= MAX_MESSAGE_BYTES).then_some(body);
                    Ok(PeerAnswer { status, body })
                }
                Err(
                    TransportError::Connect { reason, .. } | TransportError::Invalid { reason, .. },
                ) => Err(PeerFailure::Unreachable(reason)),
                Err(TransportError::Timeout { .. }) => Err(PeerFailure::Timeout),
                Err(TransportError::Io { reason, .. }) => Err(PeerFailure::Failed(reason)),
            }
        })
    }
}
