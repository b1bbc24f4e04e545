//! Client sessions: exactly-once answers for retried requests.
//!
//! Every request carries `(client, seq, ack)`. The session of `client` keeps the replies
//! to its requests numbered `ack` and above; a request whose number has a kept reply is
//! answered with that reply and changes nothing, so a retry after a lost reply returns the
//! original checkout instead of a second one (Raft dissertation, section 6.3).
//!
//! Eviction rule, all of it deterministic and driven by the replicated clock:
//! - replies below the client's `ack` are dropped;
//! - a session keeps at most `max_replies_per_session` replies; past that the oldest is
//!   dropped and the session's floor rises, so a retry of it answers `StaleRequest`;
//! - a session not seen for `session_idle_ttl_ms` is dropped;
//! - when `max_sessions` sessions exist, the least recently seen one (by log index) is
//!   dropped to make room.
//!
//! A client that retries within the idle TTL and is not crowded out by `max_sessions` newer
//! clients is therefore answered exactly once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::ClientId;
use crate::response::Response;

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// When the client was last heard from (replicated time).
    pub last_seen_ms: u64,
    /// The log index of the client's last request; orders sessions by recency.
    pub last_seen_index: u64,
    /// Requests below this number are no longer answered from the table.
    pub floor: u64,
    /// Kept replies by sequence number.
    pub replies: BTreeMap<u64, Response>,
}

/// The session table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    sessions: BTreeMap<ClientId, Session>,
    /// Index of `(last_seen_index, client)`, least recent first, for eviction; rebuilt on
    /// restore. Replicated time never decreases as the index grows, so this is also the
    /// order of `last_seen_ms`.
    #[serde(skip)]
    by_age: BTreeSet<(u64, ClientId)>,
}

/// What the table says about an incoming request.
pub enum Lookup {
    /// A kept reply: answer with it and apply nothing.
    Replay(Response),
    /// The request is older than the kept replies.
    Stale {
        /// The oldest number still answered.
        oldest_kept: u64,
    },
    /// A new request: apply it, then [`Sessions::record`] the reply.
    New,
}

impl Sessions {
    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// A session by client id.
    pub fn get(&self, client: &ClientId) -> Option<&Session> {
        self.sessions.get(client)
    }

    /// Rebuilds the age index after a restore.
    pub fn rebuild_index(&mut self) {
        self.by_age = self.sessions.iter().map(|(c, s)| (s.last_seen_index, c.clone())).collect();
    }

    /// Drops sessions idle for longer than `idle_ttl_ms` at time `now_ms`.
    pub fn expire(&mut self, now_ms: u64, idle_ttl_ms: u64) {
        while let Some((_, client)) = self.by_age.first() {
            if self.sessions[client].last_seen_ms.saturating_add(idle_ttl_ms) > now_ms {
                break;
            }
            let (_, client) = self.by_age.pop_first().expect("first exists");
            self.sessions.remove(&client);
        }
    }

    /// Looks up a request, touching (or creating) its session at log `index` and time
    /// `now_ms`. Creating a session when `max_sessions` are present evicts the least
    /// recently seen one.
    pub fn begin(
        &mut self,
        client: &ClientId,
        (seq, ack): (u64, u64),
        (index, now_ms): (u64, u64),
        max_sessions: u64,
    ) -> Lookup {
        if !self.sessions.contains_key(client) {
            while self.sessions.len() as u64 >= max_sessions.max(1) {
                let (_, oldest) = self.by_age.pop_first().expect("index matches table");
                self.sessions.remove(&oldest);
            }
            let session = Session {
                last_seen_ms: now_ms,
                last_seen_index: index,
                floor: 0,
                replies: BTreeMap::new(),
            };
            self.sessions.insert(client.clone(), session);
            self.by_age.insert((index, client.clone()));
        }
        let session = self.sessions.get_mut(client).expect("inserted above");
        session.last_seen_ms = now_ms;
        if session.last_seen_index != index {
            self.by_age.remove(&(session.last_seen_index, client.clone()));
            session.last_seen_index = index;
            self.by_age.insert((index, client.clone()));
        }
        if ack > session.floor {
            session.floor = ack;
            while session.replies.first_key_value().is_some_and(|(&s, _)| s < ack) {
                session.replies.pop_first();
            }
        }
        if let Some(reply) = session.replies.get(&seq) {
            return Lookup::Replay(reply.clone());
        }
        if seq < session.floor {
            return Lookup::Stale { oldest_kept: session.floor };
        }
        Lookup::New
    }

    /// Keeps the reply to a new request, dropping the oldest beyond `max_replies`.
    pub fn record(&mut self, client: &ClientId, seq: u64, reply: &Response, max_replies: u64) {
        let Some(session) = self.sessions.get_mut(client) else { return };
        session.replies.insert(seq, reply.clone());
        while session.replies.len() as u64 > max_replies.max(1) {
            let (oldest, _) = session.replies.pop_first().expect("non-empty");
            session.floor = session.floor.max(oldest + 1);
        }
    }

    /// Checks that the age index matches the table.
    pub fn check(&self) -> Result<(), String> {
        if self.by_age.len() != self.sessions.len()
            || self
                .sessions
                .iter()
                .any(|(c, s)| !self.by_age.contains(&(s.last_seen_index, c.clone())))
        {
            return Err("session age index does not match the session table".into());
        }
        Ok(())
    }
}
