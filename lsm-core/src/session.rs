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

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

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
    /// Kept replies, ordered by sequence number. A client usually has one, kept inline
    /// (no allocation, no second cache line to fetch); a sorted vector is smaller and
    /// faster than a map.
    pub replies: SmallVec<[(u64, Response); 1]>,
}

/// The session table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sessions {
    #[serde(with = "crate::sorted")]
    sessions: FxHashMap<ClientId, Session>,
    /// One entry per session, `(index, client) -> ms` as of some earlier request of that
    /// client (never later than its last), least recent first; rebuilt on restore.
    ///
    /// The index is updated lazily: a request only touches its session, and eviction or
    /// expiry, on finding an entry older than its session, moves it to the session's real
    /// age and looks again. Since an entry is never younger than its session, the entry
    /// found this way is the truly least recent session, exactly as with an index kept
    /// up to date on every request, which would cost a tree removal and insertion per
    /// request. Replicated time never decreases as the index grows, so this is also the
    /// order of `last_seen_ms`.
    #[serde(skip)]
    by_age: BTreeMap<(u64, ClientId), u64>,
}

impl PartialEq for Sessions {
    /// The table alone; the age index depends on history, not on the table.
    fn eq(&self, other: &Self) -> bool {
        self.sessions == other.sessions
    }
}

impl Eq for Sessions {}

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
        self.by_age = (self.sessions.iter())
            .map(|(c, s)| ((s.last_seen_index, c.clone()), s.last_seen_ms))
            .collect();
    }

    /// Drops sessions idle for longer than `idle_ttl_ms` at time `now_ms`.
    pub fn expire(&mut self, now_ms: u64, idle_ttl_ms: u64) {
        while let Some((_, &seen)) = self.by_age.first_key_value() {
            if seen.saturating_add(idle_ttl_ms) > now_ms {
                break;
            }
            let ((_, client), _) = self.by_age.pop_first().expect("first exists");
            let session = &self.sessions[&client];
            if session.last_seen_ms.saturating_add(idle_ttl_ms) > now_ms {
                let age = (session.last_seen_index, client);
                self.by_age.insert(age, session.last_seen_ms);
            } else {
                self.sessions.remove(&client);
            }
        }
    }

    /// Drops the least recently seen session.
    fn evict_oldest(&mut self) {
        while let Some(((index, client), _)) = self.by_age.pop_first() {
            let session = &self.sessions[&client];
            if session.last_seen_index == index {
                self.sessions.remove(&client);
                return;
            }
            let age = (session.last_seen_index, client);
            self.by_age.insert(age, session.last_seen_ms);
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
        let session = match self.sessions.get_mut(client) {
            Some(session) => {
                session.last_seen_index = index;
                session.last_seen_ms = now_ms;
                session
            }
            None => {
                while self.sessions.len() as u64 >= max_sessions.max(1) {
                    self.evict_oldest();
                }
                self.by_age.insert((index, client.clone()), now_ms);
                let session = Session {
                    last_seen_ms: now_ms,
                    last_seen_index: index,
                    floor: 0,
                    replies: SmallVec::new(),
                };
                self.sessions.entry(client.clone()).or_insert(session)
            }
        };
        if ack > session.floor {
            session.floor = ack;
            session.replies.retain(|(s, _)| *s >= ack);
        }
        if let Ok(at) = session.replies.binary_search_by_key(&seq, |(s, _)| *s) {
            return Lookup::Replay(session.replies[at].1.clone());
        }
        if seq < session.floor {
            return Lookup::Stale { oldest_kept: session.floor };
        }
        Lookup::New
    }

    /// Keeps the reply to a new request, dropping the oldest beyond `max_replies`.
    pub fn record(&mut self, client: &ClientId, seq: u64, reply: &Response, max_replies: u64) {
        let Some(session) = self.sessions.get_mut(client) else { return };
        let at = session.replies.partition_point(|(s, _)| *s < seq);
        session.replies.insert(at, (seq, reply.clone()));
        let excess = session.replies.len().saturating_sub(max_replies.max(1) as usize);
        if excess > 0 {
            let oldest_kept = session.replies[excess].0;
            session.replies.drain(..excess);
            session.floor = session.floor.max(oldest_kept);
        }
    }

    /// Checks that the age index matches the table.
    pub fn check(&self) -> Result<(), String> {
        let entry_not_younger = |((index, client), ms): (&(u64, ClientId), &u64)| {
            self.sessions
                .get(client)
                .is_some_and(|s| *index <= s.last_seen_index && *ms <= s.last_seen_ms)
        };
        let clients: std::collections::BTreeSet<&ClientId> =
            self.by_age.keys().map(|(_, c)| c).collect();
        let sorted = |s: &Session| s.replies.windows(2).all(|w| w[0].0 < w[1].0);
        if self.by_age.len() != self.sessions.len()
            || clients.len() != self.sessions.len()
            || !self.by_age.iter().all(entry_not_younger)
            || !self.sessions.values().all(sorted)
        {
            return Err("session age index or replies do not match the session table".into());
        }
        Ok(())
    }
}
