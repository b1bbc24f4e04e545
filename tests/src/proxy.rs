//! A TCP proxy the test controls, for network faults between real processes.
//!
//! A [`Proxy`] listens on an ephemeral loopback port and relays every connection to one
//! target address. The test switches its [`Mode`] at any time, and the switch applies to
//! the connections already open as well as to new ones:
//!
//! - [`Mode::Pass`]: bytes flow both ways;
//! - [`Mode::Cut`]: every open connection is reset (RST) and every new one is reset as
//!   soon as it is accepted, as when a link goes down or a firewall rejects;
//! - [`Mode::Hang`]: connections are accepted and held open, but the bytes of the
//!   directions that hang are not relayed, as on a link that silently drops packets: the
//!   caller sees nothing until its own timeout. `requests` hangs what the caller sends,
//!   `replies` what comes back, so `Hang { requests: false, replies: true }` delivers a
//!   request and loses its answer. Held bytes are relayed if the proxy passes again before
//!   either end gives up.
//!
//! The tests put one proxy on every directed link between nodes (node `i` reaches node `j`
//! through its own proxy, by its `[dial]` table), so a link can fail in one direction
//! only, and one proxy in front of every node per group of clients, so a group can lose
//! the leader while the others keep it. Everything stays on 127.0.0.1.
//!
//! Dropping the proxy stops it: it stops accepting and closes every connection.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a proxy does with the bytes it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Relay both ways.
    Pass,
    /// Reset every connection, open or new.
    Cut,
    /// Hold connections open without relaying the directions that hang.
    Hang {
        /// Hold what the caller sends.
        requests: bool,
        /// Hold what the target answers.
        replies: bool,
    },
}

impl Mode {
    /// A silent link: nothing goes through in either direction, and nothing fails fast.
    pub const HANG: Mode = Mode::Hang { requests: true, replies: true };
    /// Requests arrive, their answers are lost.
    pub const LOSE_REPLIES: Mode = Mode::Hang { requests: false, replies: true };

    /// What happens to the bytes flowing in `direction`.
    fn flow(self, direction: Direction) -> Flow {
        match (self, direction) {
            (Mode::Pass, _) => Flow::Relay,
            (Mode::Cut, _) => Flow::Reset,
            (Mode::Hang { requests, .. }, Direction::Requests) if requests => Flow::Hold,
            (Mode::Hang { replies, .. }, Direction::Replies) if replies => Flow::Hold,
            (Mode::Hang { .. }, _) => Flow::Relay,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Requests,
    Replies,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Relay,
    Hold,
    Reset,
}

/// How long the proxy waits to connect to its target before it resets the caller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of one proxy.
#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    relayed_bytes: AtomicU64,
}

/// A TCP proxy on loopback to one target (see the module docs).
#[derive(Debug)]
pub struct Proxy {
    addr: String,
    target: String,
    mode: watch::Sender<Mode>,
    stats: Arc<Stats>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` (`host:port`) on an ephemeral port of 127.0.0.1, passing.
    pub async fn start(target: impl Into<String>) -> io::Result<Proxy> {
        let target = target.into();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (mode, modes) = watch::channel(Mode::Pass);
        let stats = Arc::new(Stats::default());
        let accept = tokio::spawn(accept(listener, target.clone(), modes, stats.clone()));
        Ok(Proxy { addr, target, mode, stats, accept })
    }

    /// The address callers connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The address it relays to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Switches the mode; open connections follow at once.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// Bytes relayed so far, both directions together.
    pub fn relayed_bytes(&self) -> u64 {
        self.stats.relayed_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping the sender ends every connection's relays.
        self.accept.abort();
    }
}

async fn accept(
    listener: TcpListener,
    target: String,
    modes: watch::Receiver<Mode>,
    stats: Arc<Stats>,
) {
    loop {
        let caller = match listener.accept().await {
            Ok((caller, _)) => caller,
            Err(_) => {
                // Out of file descriptors or similar: try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if *modes.borrow() == Mode::Cut {
            reset(&caller);
            continue;
        }
        tokio::spawn(connection(caller, target.clone(), modes.clone(), stats.clone()));
    }
}

/// Relays one connection until both directions end or the proxy cuts it.
async fn connection(
    caller: TcpStream,
    target: String,
    modes: watch::Receiver<Mode>,
    stats: Arc<Stats>,
) {
    let _ = caller.set_nodelay(true);
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(server)) => server,
        // The target is down: the caller sees its connection reset.
        _ => {
            reset(&caller);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (caller_read, caller_write) = caller.into_split();
    let (server_read, server_write) = server.into_split();
    let requests =
        relay(caller_read, server_write, modes.clone(), Direction::Requests, stats.clone());
    let replies = relay(server_read, caller_write, modes, Direction::Replies, stats);
    tokio::join!(requests, replies);
}

/// Relays one direction of a connection, following the mode.
async fn relay(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut modes: watch::Receiver<Mode>,
    direction: Direction,
    stats: Arc<Stats>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Wait until this direction may flow.
        loop {
            match modes.borrow_and_update().flow(direction) {
                Flow::Relay => break,
                Flow::Reset => return reset_halves(&from, &to),
                Flow::Hold => {}
            }
            if modes.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    // The sender closed its side: pass the close on, and stop.
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            changed = modes.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // A write blocked by a receiver that does not read (a paused process) still ends
        // when the proxy cuts.
        let cut = async {
            loop {
                if modes.changed().await.is_err() || *modes.borrow() == Mode::Cut {
                    return;
                }
            }
        };
        tokio::select! {
            written = to.write_all(&buf[..n]) => {
                if written.is_err() {
                    return;
                }
                stats.relayed_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            () = cut => return reset_halves(&from, &to),
        }
    }
}

/// Closes with a reset instead of an orderly close once the socket is dropped.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

fn reset_halves(from: &OwnedReadHalf, to: &OwnedWriteHalf) {
    reset(from.as_ref());
    reset(to.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: answers every chunk it reads with the same bytes.
    async fn echo() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut buf = vec![0u8; text.len()];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut buf));
        match read.await {
            Ok(Ok(_)) => Ok(buf),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")),
        }
    }

    #[tokio::test]
    async fn passes_cuts_hangs_and_loses_replies() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open, b"one").await.unwrap(), b"one");

        // A hung link: the open connection stays open but nothing comes back; when it
        // passes again, the held bytes arrive.
        proxy.set(Mode::HANG);
        let err = round_trip(&mut open, b"two").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        proxy.set(Mode::Pass);
        let mut held = [0u8; 3];
        open.read_exact(&mut held).await.unwrap();
        assert_eq!(&held, b"two");

        // Cut: the open connection is reset, and so is a new one.
        proxy.set(Mode::Cut);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(round_trip(&mut open, b"three").await.is_err());
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut fresh, b"four").await.is_err());

        // Requests pass, replies are lost.
        proxy.set(Mode::LOSE_REPLIES);
        let mut lossy = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut lossy, b"five").await.is_err());
        proxy.set(Mode::Pass);
        let mut back = [0u8; 4];
        lossy.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"five", "the request had arrived; its answer was held");
        assert_eq!(proxy.accepted(), 3);
        assert!(proxy.relayed_bytes() > 0);
    }

    #[tokio::test]
    async fn a_dead_target_resets_the_caller() {
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let proxy = Proxy::start(dead).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut stream, b"x").await.is_err());
    }
}
