//! Keep-latest state: the newest message of each key of a channel (scoreboards).
//!
//! A publish in a `keep_latest` namespace may name a `key` (a game id, a stat name);
//! the channel keeps, per key, the newest *committed* message, so a viewer who joins
//! late starts from the current state (a `snapshot`) instead of waiting for the next
//! update. A publish without a key uses the empty key: a channel without keys keeps its
//! single latest message.
//!
//! [`LatestState`] lives inside [`crate::ChannelLog`] so it follows the stream
//! everywhere the log goes: handoff and replica snapshots carry it, a replica keeps it
//! up to date, and it starts empty with a new epoch. Durable channels sequence before
//! they commit: a keyed message waits in `pending` until [`LatestState::commit_to`]
//! reaches its offset, so a snapshot never shows what readers cannot see yet.
//!
//! Bounds: at most `max_keys` keys (a new key beyond it evicts the key updated longest
//! ago) and entries older than `ttl` are dropped.

use crate::position::Offset;
use crate::time::Millis;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// How much latest state a channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestPolicy {
    pub max_keys: usize,
    pub ttl: Duration,
}

impl Default for LatestPolicy {
    /// 1000 keys for 24 hours (the namespace defaults).
    fn default() -> Self {
        LatestPolicy { max_keys: 1000, ttl: Duration::from_secs(24 * 3600) }
    }
}

/// Checks a publish's `key`: 1..=128 bytes of printable ASCII other than `"` and `\`
/// (so it never needs escaping in a frame).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("key must be 1..={MAX_KEY_BYTES} bytes"));
    }
    if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic() || *c == '"' || *c == '\\') {
        return Err(format!("key: character {c:?} is not allowed (printable ASCII but '\"' and '\\')"));
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Entry<P> {
    offset: Offset,
    at: Millis,
    payload: P,
}

/// One entry of a snapshot: `(key, offset, age, payload)`.
pub type LatestEntry<P> = (String, Offset, Duration, P);

/// The newest committed message per key (see the module docs).
#[derive(Debug, Clone)]
pub struct LatestState<P> {
    committed: BTreeMap<Arc<str>, Entry<P>>,
    /// Sequenced but not yet committed keyed messages, in offset order.
    pending: VecDeque<(Arc<str>, Entry<P>)>,
    policy: LatestPolicy,
}

impl<P: Clone> LatestState<P> {
    #[must_use]
    pub fn new(policy: LatestPolicy) -> LatestState<P> {
        LatestState { committed: BTreeMap::new(), pending: VecDeque::new(), policy }
    }

    pub fn set_policy(&mut self, policy: LatestPolicy) {
        self.policy = policy;
        self.bound();
    }

    /// Records the message at `offset` for `key`; visible once `committed` (or once
    /// [`LatestState::commit_to`] reaches it).
    pub fn note(&mut self, key: &str, offset: Offset, now: Millis, payload: P, committed: bool) {
        let entry = Entry { offset, at: now, payload };
        if committed {
            self.install(Arc::from(key), entry);
        } else {
            self.pending.push_back((Arc::from(key), entry));
        }
    }

    fn install(&mut self, key: Arc<str>, entry: Entry<P>) {
        match self.committed.get(&key) {
            Some(old) if old.offset >= entry.offset => {}
            _ => {
                self.committed.insert(key, entry);
                self.bound();
            }
        }
    }

    /// Evicts the keys updated longest ago beyond `max_keys`.
    fn bound(&mut self) {
        while self.committed.len() > self.policy.max_keys {
            let oldest = self.committed.iter().min_by_key(|(_, e)| e.offset).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.committed.remove(&k),
                None => break,
            };
        }
    }

    /// Makes pending messages up to `offset` part of the state.
    pub fn commit_to(&mut self, offset: Offset) {
        while self.pending.front().is_some_and(|(_, e)| e.offset <= offset) {
            if let Some((key, entry)) = self.pending.pop_front() {
                self.install(key, entry);
            }
        }
    }

    /// The newest message sequenced for `key` before now, pending or committed (a
    /// committed one only while within the ttl): the base a delta of the key's next
    /// message is taken against. A pending one is committed before anything after it, so
    /// readers see them in this order.
    #[must_use]
    pub fn newest(&self, key: &str, now: Millis) -> Option<(Offset, &P)> {
        if let Some((_, e)) = self.pending.iter().rev().find(|(k, _)| &**k == key) {
            return Some((e.offset, &e.payload));
        }
        let ttl = self.policy.ttl;
        self.committed.get(key).filter(|e| e.at.saturating_add(ttl) > now).map(|e| (e.offset, &e.payload))
    }

    /// Drops entries older than the ttl.
    pub fn prune(&mut self, now: Millis) {
        let ttl = self.policy.ttl;
        self.committed.retain(|_, e| e.at.saturating_add(ttl) > now);
    }

    /// The committed state as `(key, offset, payload)`, in offset order (the order the
    /// updates happened).
    pub fn entries(&mut self, now: Millis) -> Vec<(Arc<str>, Offset, P)> {
        self.prune(now);
        let mut out: Vec<(Arc<str>, Offset, P)> =
            self.committed.iter().map(|(k, e)| (k.clone(), e.offset, e.payload.clone())).collect();
        out.sort_by_key(|(_, o, _)| *o);
        out
    }

    /// Everything, pending included (a snapshot's receiver treats all of it as
    /// committed), with ages instead of timestamps.
    pub fn export(&mut self, now: Millis) -> Vec<LatestEntry<P>> {
        self.prune(now);
        let mut all: BTreeMap<Arc<str>, Entry<P>> = self.committed.clone();
        for (k, e) in &self.pending {
            if all.get(k).is_none_or(|old| old.offset < e.offset) {
                all.insert(k.clone(), e.clone());
            }
        }
        all.into_iter().map(|(k, e)| (k.to_string(), e.offset, now.since(e.at), e.payload)).collect()
    }

    /// Restores exported entries, keeping only those at or below `top` (what the stream
    /// holds) with valid keys.
    #[must_use]
    pub fn import(entries: Vec<LatestEntry<P>>, top: Offset, policy: LatestPolicy, now: Millis) -> LatestState<P> {
        let mut s = LatestState::new(policy);
        for (key, offset, age, payload) in entries {
            if offset == Offset::ZERO || offset > top || (!key.is_empty() && check_key(&key).is_err()) {
                continue;
            }
            let at = Millis(now.0.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
            s.install(Arc::from(key.as_str()), Entry { offset, at, payload });
        }
        s.prune(now);
        s
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.committed.is_empty() && self.pending.is_empty()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.committed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LatestPolicy = LatestPolicy { max_keys: 3, ttl: Duration::from_secs(60) };

    fn keys(s: &mut LatestState<&'static str>, now: u64) -> Vec<(String, u64, &'static str)> {
        s.entries(Millis(now)).into_iter().map(|(k, o, p)| (k.to_string(), o.0, p)).collect()
    }

    #[test]
    fn keeps_the_newest_committed_message_per_key() {
        let mut s = LatestState::new(POLICY);
        s.note("g1", Offset(1), Millis(0), "g1-a", true);
        s.note("g2", Offset(2), Millis(0), "g2-a", true);
        s.note("g1", Offset(3), Millis(0), "g1-b", true);
        assert_eq!(keys(&mut s, 0), vec![("g2".into(), 2, "g2-a"), ("g1".into(), 3, "g1-b")]);
    }

    #[test]
    fn pending_messages_show_only_once_committed() {
        let mut s = LatestState::new(POLICY);
        s.note("g1", Offset(1), Millis(0), "a", true);
        s.note("g1", Offset(2), Millis(0), "b", false);
        assert_eq!(keys(&mut s, 0), vec![("g1".into(), 1, "a")], "b is not visible yet");
        assert_eq!(s.export(Millis(0)).len(), 1);
        assert_eq!(s.export(Millis(0))[0].1, Offset(2), "a snapshot carries the pending one");
        s.commit_to(Offset(2));
        assert_eq!(keys(&mut s, 0), vec![("g1".into(), 2, "b")]);
    }

    #[test]
    fn bounded_in_keys_and_time() {
        let mut s = LatestState::new(POLICY);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            s.note(k, Offset(i as u64 + 1), Millis(i as u64 * 1000), "x", true);
        }
        let held: Vec<String> = keys(&mut s, 3000).into_iter().map(|(k, ..)| k).collect();
        assert_eq!(held, ["b", "c", "d"], "the key updated longest ago was evicted");
        assert_eq!(keys(&mut s, 61_500).len(), 2, "b expired after the ttl");
        assert!(keys(&mut s, 200_000).is_empty());
    }

    #[test]
    fn import_keeps_only_what_the_stream_holds() {
        let entries = vec![
            ("g1".to_owned(), Offset(4), Duration::from_secs(1), "ok"),
            ("g2".to_owned(), Offset(9), Duration::from_secs(1), "beyond top"),
            ("bad key".to_owned(), Offset(2), Duration::from_secs(1), "bad"),
            ("g3".to_owned(), Offset::ZERO, Duration::from_secs(1), "zero"),
        ];
        let mut s = LatestState::import(entries, Offset(5), POLICY, Millis(10_000));
        assert_eq!(keys(&mut s, 10_000), vec![("g1".into(), 4, "ok")]);
        assert!(check_key("game-1").is_ok() && check_key("").is_err() && check_key("a b").is_err());
        assert!(check_key("a\"b").is_err() && check_key("a\\b").is_err(), "keys never need escaping");
    }
}
