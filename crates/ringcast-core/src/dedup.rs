//! The idempotency window of one channel.
//!
//! A publish may carry an idempotency key. Inside the window (by time and by count) a
//! publish with a key already seen returns the original position instead of sequencing a
//! second copy; the same key with a different payload is a conflict. Entries expire in
//! insertion order, so the window is a queue plus an index.

use crate::position::StreamPosition;
use crate::time::Millis;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// How long and how many keys a channel remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupPolicy {
    pub window: Duration,
    pub max_keys: usize,
}

impl Default for DedupPolicy {
    fn default() -> Self {
        DedupPolicy { window: Duration::from_secs(120), max_keys: 10_000 }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    position: StreamPosition,
    digest: u64,
    at: Millis,
}

/// One remembered idempotency key, as carried in a handoff snapshot. Ages, not
/// timestamps, because monotonic clocks are per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupEntry {
    pub key: String,
    pub digest: u64,
    pub position: StreamPosition,
    pub age: Duration,
}

/// What the window says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupCheck {
    /// Not seen inside the window.
    New,
    /// Seen with the same payload: the original position.
    Duplicate(StreamPosition),
    /// Seen with a different payload.
    Conflict(StreamPosition),
}

/// Recent idempotency keys of one channel. Bounded by `policy.max_keys`.
#[derive(Debug, Default)]
pub struct DedupWindow {
    index: HashMap<Arc<str>, Seen>,
    order: VecDeque<Arc<str>>,
}

impl DedupWindow {
    pub fn check(&mut self, key: &str, digest: u64, policy: &DedupPolicy, now: Millis) -> DedupCheck {
        self.expire(policy, now);
        match self.index.get(key) {
            None => DedupCheck::New,
            Some(seen) if seen.digest == digest => DedupCheck::Duplicate(seen.position),
            Some(seen) => DedupCheck::Conflict(seen.position),
        }
    }

    /// Whether `key` is inside the window (whatever its payload).
    pub fn contains(&mut self, key: &str, policy: &DedupPolicy, now: Millis) -> bool {
        self.expire(policy, now);
        self.index.contains_key(key)
    }

    /// Records a key just sequenced. Call only after `check` returned `New`.
    pub fn record(&mut self, key: &str, digest: u64, position: StreamPosition, policy: &DedupPolicy, now: Millis) {
        let key: Arc<str> = key.into();
        self.index.insert(key.clone(), Seen { position, digest, at: now });
        self.order.push_back(key);
        while self.order.len() > policy.max_keys {
            if let Some(old) = self.order.pop_front() {
                self.index.remove(&old);
            }
        }
    }

    /// Forgets keys older than the window.
    pub fn expire(&mut self, policy: &DedupPolicy, now: Millis) {
        while let Some(front) = self.order.front() {
            let expired = self.index.get(front).is_none_or(|s| s.at.saturating_add(policy.window) <= now);
            if !expired {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.index.remove(&old);
            }
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Every key inside the window, oldest first, with its age (for handoff snapshots).
    #[must_use]
    pub fn export(&self, now: Millis) -> Vec<DedupEntry> {
        self.order
            .iter()
            .filter_map(|k| {
                self.index.get(k).map(|s| DedupEntry {
                    key: k.to_string(),
                    digest: s.digest,
                    position: s.position,
                    age: now.since(s.at),
                })
            })
            .collect()
    }

    /// Rebuilds a window from exported entries (oldest first), as of `now`.
    pub fn import(entries: Vec<DedupEntry>, policy: &DedupPolicy, now: Millis) -> DedupWindow {
        let mut w = DedupWindow::default();
        for e in entries {
            let at = Millis(now.0.saturating_sub(u64::try_from(e.age.as_millis()).unwrap_or(u64::MAX)));
            w.record(&e.key, e.digest, e.position, policy, at);
        }
        w.expire(policy, now);
        w
    }

    /// When the oldest key expires, if any.
    #[must_use]
    pub fn next_expiry(&self, policy: &DedupPolicy) -> Option<Millis> {
        let front = self.order.front()?;
        self.index.get(front).map(|s| s.at.saturating_add(policy.window))
    }
}

/// The digest used to tell a retry (same payload) from a conflicting reuse of a key.
#[must_use]
pub fn payload_digest(payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::{Epoch, Offset};

    fn pos(o: u64) -> StreamPosition {
        StreamPosition { epoch: Epoch::new(1).unwrap_or_else(|| unreachable!()), offset: Offset(o) }
    }

    #[test]
    fn duplicate_conflict_and_expiry() {
        let p = DedupPolicy { window: Duration::from_secs(10), max_keys: 100 };
        let mut w = DedupWindow::default();
        assert_eq!(w.check("k", 1, &p, Millis(0)), DedupCheck::New);
        w.record("k", 1, pos(1), &p, Millis(0));
        assert_eq!(w.check("k", 1, &p, Millis(9_999)), DedupCheck::Duplicate(pos(1)));
        assert_eq!(w.check("k", 2, &p, Millis(9_999)), DedupCheck::Conflict(pos(1)));
        assert_eq!(w.check("k", 1, &p, Millis(10_000)), DedupCheck::New);
        assert!(w.is_empty());
    }

    #[test]
    fn bounded_by_count() {
        let p = DedupPolicy { window: Duration::from_secs(10), max_keys: 3 };
        let mut w = DedupWindow::default();
        for i in 0..10u64 {
            w.record(&format!("k{i}"), i, pos(i + 1), &p, Millis(0));
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.check("k0", 0, &p, Millis(0)), DedupCheck::New);
        assert_eq!(w.check("k9", 9, &p, Millis(0)), DedupCheck::Duplicate(pos(10)));
    }
}
