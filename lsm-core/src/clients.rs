//! The client table: every client's session (exactly-once answers for retried
//! requests) and its load (its live checkouts and queued requests), in one entry per
//! client.
//!
//! Every request carries `(client, seq, ack)`. The [`Session`] of `client` keeps the
//! replies to its requests numbered `ack` and above; a request whose number has a kept
//! reply is answered with that reply and changes nothing, so a retry after a lost reply
//! returns the original checkout instead of a second one (Raft dissertation, section 6.3).
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
//!
//! A request finds its session and its load in one entry. Entries lie in a vector of
//! slots, found by client id through a hash map; the table remembers the slot of the
//! client whose request it began last, so the other lookups of that request (its load,
//! the change to it, the reply kept) compare one id instead of hashing and probing again.
//! An entry lives while the client has a session or a load; an evicted session leaves the
//! client's load in place. A snapshot writes sessions and loads as two tables sorted by
//! client id, so the bytes do not depend on the slots or the hash map.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use crate::ids::ClientId;
use crate::response::Response;
use crate::state::ClientLoad;

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

impl Session {
    /// Drops the replies below `ack`, then answers a request numbered `seq`.
    fn lookup(&mut self, seq: u64, ack: u64) -> Lookup {
        if ack > self.floor {
            self.floor = ack;
            self.replies.retain(|(s, _)| *s >= ack);
        }
        if let Ok(at) = self.replies.binary_search_by_key(&seq, |(s, _)| *s) {
            return Lookup::Replay(self.replies[at].1.clone());
        }
        if seq < self.floor {
            return Lookup::Stale { oldest_kept: self.floor };
        }
        Lookup::New
    }
}

/// One client's entry: its session, if it has one, and its load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    session: Option<Session>,
    load: ClientLoad,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.session.is_none() && self.load == ClientLoad::default()
    }
}

/// A client's entry, in its slot.
#[derive(Clone, Debug)]
struct Slot {
    client: ClientId,
    entry: Entry,
}

/// The client table: each client's session and load, in one entry per client.
#[derive(Clone, Debug, Default)]
pub struct Clients {
    /// The slot of every client with an entry.
    index: FxHashMap<ClientId, u32>,
    /// Entries; `None` for a slot on the free list.
    slots: Vec<Option<Slot>>,
    /// Vacant slots, reused last freed first.
    free: Vec<u32>,
    /// The slot `begin` last found or made; checked against the client id before use.
    recent: u32,
    /// Entries with a session.
    sessions: usize,
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
    by_age: BTreeMap<(u64, ClientId), u64>,
}

impl PartialEq for Clients {
    /// The table alone; the age index depends on history, not on the table.
    fn eq(&self, other: &Self) -> bool {
        self.index.len() == other.index.len()
            && self.entries().all(|(id, entry)| other.entry(id) == Some(entry))
    }
}

impl Eq for Clients {}

impl Serialize for Clients {
    /// Two tables sorted by client id: the sessions, then the non-zero loads.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<(&ClientId, &Entry)> = self.entries().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let sessions: Vec<(&ClientId, &Session)> =
            (entries.iter()).filter_map(|(c, e)| Some((*c, e.session.as_ref()?))).collect();
        let loads: Vec<(&ClientId, &ClientLoad)> = (entries.iter())
            .filter(|(_, e)| e.load != ClientLoad::default())
            .map(|(c, e)| (*c, &e.load))
            .collect();
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&sessions)?;
        tuple.serialize_element(&loads)?;
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Clients {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        type Tables = (Vec<(ClientId, Session)>, Vec<(ClientId, ClientLoad)>);
        let (sessions, loads) = Tables::deserialize(deserializer)?;
        let mut table = Clients::default();
        for (client, session) in sessions {
            table.entry_or_insert(&client).session = Some(session);
        }
        for (client, load) in loads {
            table.entry_or_insert(&client).load = load;
        }
        table.sessions = table.entries().filter(|(_, c)| c.session.is_some()).count();
        Ok(table)
    }
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
    /// A new request: apply it, then [`Clients::record`] the reply.
    New,
}

impl Clients {
    /// The slot of a client's entry: the recent one if it is this client's, else by hash.
    fn find(&self, client: &ClientId) -> Option<usize> {
        let recent = self.recent as usize;
        if let Some(Some(slot)) = self.slots.get(recent)
            && slot.client == *client
        {
            return Some(recent);
        }
        self.index.get(client).map(|&at| at as usize)
    }

    /// A client's entry.
    fn entry(&self, client: &ClientId) -> Option<&Entry> {
        let at = self.find(client)?;
        self.slots[at].as_ref().map(|slot| &slot.entry)
    }

    /// A client's entry, to change.
    fn entry_mut(&mut self, client: &ClientId) -> Option<&mut Entry> {
        let at = self.find(client)?;
        self.slots[at].as_mut().map(|slot| &mut slot.entry)
    }

    /// A client's entry, made empty if it has none; its slot becomes the recent one.
    fn entry_or_insert(&mut self, client: &ClientId) -> &mut Entry {
        let at = match self.find(client) {
            Some(at) => at,
            None => {
                let slot = Some(Slot { client: client.clone(), entry: Entry::default() });
                let at = match self.free.pop() {
                    Some(at) => {
                        self.slots[at as usize] = slot;
                        at
                    }
                    None => {
                        self.slots.push(slot);
                        u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 clients")
                    }
                };
                self.index.insert(client.clone(), at);
                at as usize
            }
        };
        self.recent = at as u32;
        &mut self.slots[at].as_mut().expect("an indexed slot is occupied").entry
    }

    /// Drops a client's entry if it has neither session nor load.
    fn remove_if_empty(&mut self, client: &ClientId) {
        let Some(at) = self.find(client) else { return };
        if self.slots[at].as_ref().is_some_and(|slot| slot.entry.is_empty()) {
            self.slots[at] = None;
            self.index.remove(client);
            self.free.push(at as u32);
        }
    }

    /// Every client's entry, in no particular order.
    fn entries(&self) -> impl Iterator<Item = (&ClientId, &Entry)> {
        self.slots.iter().flatten().map(|slot| (&slot.client, &slot.entry))
    }

    /// Number of sessions (entries with a load alone are not counted).
    pub fn session_count(&self) -> usize {
        self.sessions
    }

    /// A session by client id.
    pub fn session(&self, client: &ClientId) -> Option<&Session> {
        self.entry(client)?.session.as_ref()
    }

    /// A client's live checkouts and queued requests.
    pub fn load(&self, client: &ClientId) -> ClientLoad {
        self.entry(client).map(|c| c.load).unwrap_or_default()
    }

    /// Every client with a non-zero load.
    pub fn loads(&self) -> impl Iterator<Item = (&ClientId, ClientLoad)> {
        (self.entries())
            .filter(|(_, c)| c.load != ClientLoad::default())
            .map(|(id, c)| (id, c.load))
    }

    /// Changes a client's load, dropping its entry once it has neither load nor session.
    pub fn adjust_load(&mut self, client: &ClientId, change: impl FnOnce(&mut ClientLoad)) {
        match self.entry_mut(client) {
            Some(entry) => {
                change(&mut entry.load);
                if entry.is_empty() {
                    self.remove_if_empty(client);
                }
            }
            None => {
                let mut load = ClientLoad::default();
                change(&mut load);
                if load != ClientLoad::default() {
                    self.entry_or_insert(client).load = load;
                }
            }
        }
    }

    /// Rebuilds the age index after a restore.
    pub fn rebuild_index(&mut self) {
        self.by_age = (self.entries())
            .filter_map(|(c, e)| Some((c, e.session.as_ref()?)))
            .map(|(c, s)| ((s.last_seen_index, c.clone()), s.last_seen_ms))
            .collect();
    }

    /// Ends a client's session, keeping its entry while it has a load.
    fn drop_session(&mut self, client: &ClientId) {
        if let Some(entry) = self.entry_mut(client)
            && entry.session.take().is_some()
        {
            self.sessions -= 1;
            self.remove_if_empty(client);
        }
    }

    /// The session of a client the age index names.
    fn indexed(&self, client: &ClientId) -> &Session {
        let entry = self.entry(client).and_then(|c| c.session.as_ref());
        entry.expect("the age index names only clients with a session")
    }

    /// Drops sessions idle for longer than `idle_ttl_ms` at time `now_ms`.
    pub fn expire(&mut self, now_ms: u64, idle_ttl_ms: u64) {
        while let Some((_, &seen)) = self.by_age.first_key_value() {
            if seen.saturating_add(idle_ttl_ms) > now_ms {
                break;
            }
            let ((_, client), _) = self.by_age.pop_first().expect("first exists");
            let session = self.indexed(&client);
            if session.last_seen_ms.saturating_add(idle_ttl_ms) > now_ms {
                let (index, ms) = (session.last_seen_index, session.last_seen_ms);
                self.by_age.insert((index, client), ms);
            } else {
                self.drop_session(&client);
            }
        }
    }

    /// Drops the least recently seen session.
    fn evict_oldest(&mut self) {
        while let Some(((index, client), _)) = self.by_age.pop_first() {
            let session = self.indexed(&client);
            if session.last_seen_index == index {
                self.drop_session(&client);
                return;
            }
            let (index, ms) = (session.last_seen_index, session.last_seen_ms);
            self.by_age.insert((index, client), ms);
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
        let found = self.index.get(client).copied();
        if let Some(at) = found {
            self.recent = at;
        }
        let slot = found.and_then(|at| self.slots[at as usize].as_mut());
        if let Some(session) = slot.and_then(|slot| slot.entry.session.as_mut()) {
            session.last_seen_index = index;
            session.last_seen_ms = now_ms;
            return session.lookup(seq, ack);
        }
        while self.sessions as u64 >= max_sessions.max(1) {
            self.evict_oldest();
        }
        self.by_age.insert((index, client.clone()), now_ms);
        self.sessions += 1;
        let session = Session {
            last_seen_ms: now_ms,
            last_seen_index: index,
            floor: 0,
            replies: SmallVec::new(),
        };
        let session = self.entry_or_insert(client).session.insert(session);
        session.lookup(seq, ack)
    }

    /// Keeps the reply to a new request, dropping the oldest beyond `max_replies`.
    pub fn record(&mut self, client: &ClientId, seq: u64, reply: &Response, max_replies: u64) {
        let Some(session) = self.entry_mut(client).and_then(|c| c.session.as_mut()) else {
            return;
        };
        let at = session.replies.partition_point(|(s, _)| *s < seq);
        session.replies.insert(at, (seq, reply.clone()));
        let excess = session.replies.len().saturating_sub(max_replies.max(1) as usize);
        if excess > 0 {
            let oldest_kept = session.replies[excess].0;
            session.replies.drain(..excess);
            session.floor = session.floor.max(oldest_kept);
        }
    }

    /// Checks that the age index matches the table, and that no entry is empty.
    pub fn check(&self) -> Result<(), String> {
        let sessions = || self.entries().filter_map(|(c, e)| Some((c, e.session.as_ref()?)));
        let entry_not_younger = |((index, client), ms): (&(u64, ClientId), &u64)| {
            self.session(client)
                .is_some_and(|s| *index <= s.last_seen_index && *ms <= s.last_seen_ms)
        };
        let clients: std::collections::BTreeSet<&ClientId> =
            self.by_age.keys().map(|(_, c)| c).collect();
        let sorted = |(_, s): (&ClientId, &Session)| s.replies.windows(2).all(|w| w[0].0 < w[1].0);
        if sessions().count() != self.sessions
            || self.by_age.len() != self.sessions
            || clients.len() != self.sessions
            || !self.by_age.iter().all(entry_not_younger)
            || !sessions().all(sorted)
        {
            return Err("session age index or replies do not match the session table".into());
        }
        if self.entries().any(|(_, c)| c.is_empty()) {
            return Err("the client table keeps an entry with neither session nor load".into());
        }
        let indexed = |(c, _): (&ClientId, &Entry)| {
            self.index.get(c).is_some_and(|&at| {
                self.slots[at as usize].as_ref().is_some_and(|slot| slot.client == *c)
            })
        };
        let occupied = self.slots.iter().flatten().count();
        if occupied != self.index.len()
            || occupied + self.free.len() != self.slots.len()
            || !self.entries().all(indexed)
        {
            return Err("the client index, slots and free list do not agree".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ClientId {
        name.parse().expect("a valid client id")
    }

    #[test]
    fn an_evicted_session_keeps_the_clients_load() {
        let (a, b) = (id("a"), id("b"));
        let mut table = Clients::default();
        assert!(matches!(table.begin(&a, (1, 0), (1, 10), 1), Lookup::New));
        table.adjust_load(&a, |l| l.checkouts += 1);
        // With room for one session, b's session evicts a's; a's checkout still counts.
        assert!(matches!(table.begin(&b, (1, 0), (2, 20), 1), Lookup::New));
        assert_eq!(table.session_count(), 1);
        assert!(table.session(&a).is_none() && table.session(&b).is_some());
        assert_eq!(table.load(&a).checkouts, 1);
        table.check().expect("consistent");

        // Sessions and loads are written as two tables and read back whole.
        let bytes = postcard::to_allocvec(&table).expect("encodes");
        let mut back: Clients = postcard::from_bytes(&bytes).expect("decodes");
        back.rebuild_index();
        assert_eq!(back, table);
        assert_eq!((back.session_count(), back.load(&a).checkouts), (1, 1));
        back.check().expect("consistent after a round trip");

        // Once a's checkout ends, nothing of a is kept.
        table.adjust_load(&a, |l| l.checkouts -= 1);
        assert_eq!(table.loads().count(), 0);
        assert_eq!(table.index.len(), 1);
        table.check().expect("consistent");
    }
}
