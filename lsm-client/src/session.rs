//! The client's half of the exactly-once protocol: sequence numbers and acks.
//!
//! Every write is one operation with one sequence number, sent unchanged on every retry,
//! so the server's session table answers a retry instead of applying it twice. The ack
//! tells the server which replies it may forget: all replies numbered below the lowest
//! operation still waiting for its reply. Operations run concurrently (a lease's renewal
//! task shares the client with its owner), so the session tracks the set of numbers in
//! flight; a [`Ticket`] holds one and gives it back when dropped, whether the operation
//! got its reply or gave up.
//!
//! Numbers start at the wall clock in microseconds, not at 1. A client id reused by a
//! later process (a script that checks out with `lsm checkout` and releases with
//! `lsm release --client-id`) then continues above the numbers its predecessor used, and
//! its requests are neither answered from the old replies nor refused as stale. Two
//! processes must not use the same id at the same time. A deterministic simulation picks
//! the first number itself (`ClientConfig::first_seq`), since it must not read the wall
//! clock.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use lsm_core::ClientId;

/// Sequence numbers and the in-flight set of one client id.
#[derive(Debug)]
pub struct Session {
    client: ClientId,
    inner: Arc<Mutex<Numbers>>,
}

#[derive(Debug)]
struct Numbers {
    next: u64,
    in_flight: BTreeSet<u64>,
}

/// One operation's sequence number, in flight until dropped.
#[derive(Debug)]
pub struct Ticket {
    seq: u64,
    inner: Arc<Mutex<Numbers>>,
}

impl Session {
    /// A session numbering from the current wall clock in microseconds.
    pub fn new(client: ClientId) -> Session {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Session::starting_at(client, micros.max(1))
    }

    /// A session whose first operation gets `first`.
    pub fn starting_at(client: ClientId, first: u64) -> Session {
        let numbers = Numbers { next: first, in_flight: BTreeSet::new() };
        Session { client, inner: Arc::new(Mutex::new(numbers)) }
    }

    /// The client id.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// Starts an operation: the next number, in flight until the ticket is dropped.
    pub fn begin(&self) -> Ticket {
        let mut numbers = self.inner.lock().expect("session lock");
        let seq = numbers.next;
        numbers.next += 1;
        numbers.in_flight.insert(seq);
        Ticket { seq, inner: self.inner.clone() }
    }

    /// The ack to send now: the lowest number in flight, or the next one when none is.
    pub fn ack(&self) -> u64 {
        let numbers = self.inner.lock().expect("session lock");
        numbers.in_flight.first().copied().unwrap_or(numbers.next)
    }
}

impl Ticket {
    /// The operation's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut numbers) = self.inner.lock() {
            numbers.in_flight.remove(&self.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_is_the_lowest_number_still_waiting() {
        let session = Session::starting_at("c".parse().unwrap(), 10);
        assert_eq!(session.ack(), 10);
        let a = session.begin();
        let b = session.begin();
        assert_eq!((a.seq(), b.seq()), (10, 11));
        assert_eq!(session.ack(), 10);
        drop(a);
        assert_eq!(session.ack(), 11);
        let c = session.begin();
        drop(b);
        assert_eq!(session.ack(), c.seq());
        drop(c);
        assert_eq!(session.ack(), 13);
    }

    #[test]
    fn a_later_session_numbers_above_an_earlier_one() {
        let client: ClientId = "c".parse().unwrap();
        let first = Session::new(client.clone());
        let used = (0..1000).map(|_| first.begin().seq()).max().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = Session::new(client);
        assert!(later.begin().seq() > used);
    }
}
