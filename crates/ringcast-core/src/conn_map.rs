//! Maps keyed by connection id that iterate in the order the connections were made.
//!
//! A channel's fan-out walks its subscribers, and what each delivery touches (the
//! connection's queue, its socket, and the kernel's socket on both ends of a loopback
//! connection) was allocated when the connection was accepted, so in id order. Walking
//! the subscribers in that order instead of a random hash order keeps consecutive
//! deliveries near each other in memory, which the page walks and the caches reward:
//! 1 to 3 % less CPU per delivery at 10k subscribers, most of it in user space
//! (docs/benchmarks.md, "Status check, 2026-12-02, a fresh host: subscribers in
//! connection order").
//!
//! [`ConnIdOrder`] hashes an id to itself in the low bits, so the table's buckets, and
//! with them the standard map's iteration, follow the ids: ids that fit in the table's
//! capacity come out in ascending order, and in general in ascending order of the id
//! modulo the capacity. The top seven bits, which the table compares before any key, are
//! mixed from the whole id so that they still tell neighbours apart. Ids are handed out by
//! the node ([`ConnId`]), never chosen by a client, so no one can aim ids at one bucket;
//! consecutive ids never collide at all.

use crate::ConnId;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// A map from connection ids that iterates in connection order (see the module docs).
pub type ConnMap<V> = HashMap<ConnId, V, ConnIdOrder>;

/// The [`BuildHasher`] of [`ConnMap`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnIdOrder;

impl BuildHasher for ConnIdOrder {
    type Hasher = ConnIdHasher;

    fn build_hasher(&self) -> ConnIdHasher {
        ConnIdHasher(0)
    }
}

/// Keeps a `u64` key as its own hash, with the top seven bits mixed from all of it.
#[derive(Debug, Clone, Copy)]
pub struct ConnIdHasher(u64);

/// Bits the standard table compares before the key (its control byte's seven bits).
const TAG_BITS: u32 = 7;

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        let tag = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) & !(u64::MAX >> TAG_BITS);
        self.0 ^ tag
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }

    /// Not used by [`ConnId`], which hashes as one `u64`; any other key still gets a
    /// deterministic hash (FNV-1a over its bytes).
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xCBF2_9CE4_8422_2325;
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
        self.0 = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(m: &ConnMap<u32>) -> Vec<u64> {
        m.keys().map(|c| c.0).collect()
    }

    #[test]
    fn connections_made_together_iterate_in_the_order_they_were_made() {
        // Inserted out of order, with the table growing several times on the way.
        let mut m = ConnMap::default();
        for i in (0..10_000u64).rev() {
            m.insert(ConnId(1_000 + i), 0u32);
        }
        assert_eq!(ids(&m), (1_000..11_000).collect::<Vec<_>>());

        // Leaving and rejoining keeps the order.
        for i in (1_000..11_000).step_by(3) {
            m.remove(&ConnId(i));
        }
        for i in (1_000..11_000).step_by(6) {
            m.insert(ConnId(i), 1);
        }
        let got = ids(&m);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "ascending");
        assert_eq!(got.len(), 10_000 - 3_334 + 1_667);
    }

    #[test]
    fn neighbouring_ids_differ_in_the_bits_the_table_compares_first() {
        let tag = |id: u64| {
            let mut h = ConnIdOrder.build_hasher();
            h.write_u64(id);
            let hash = h.finish();
            assert_eq!(hash & (u64::MAX >> TAG_BITS), id & (u64::MAX >> TAG_BITS), "low bits are the id");
            hash >> (64 - TAG_BITS)
        };
        let tags: std::collections::HashSet<u64> = (0..128).map(tag).collect();
        assert!(tags.len() > 64, "only {} distinct tags among 128 neighbours", tags.len());
    }

    proptest! {
        /// Whatever the ids, it is a map: every key inserted and not removed is found.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec((any::<u64>(), any::<bool>()), 0..400)) {
            let mut m = ConnMap::default();
            let mut model = std::collections::BTreeMap::new();
            for (id, insert) in ops {
                let id = id % 512 * 7_919 + (id >> 60);
                if insert {
                    prop_assert_eq!(m.insert(ConnId(id), id), model.insert(id, id));
                } else {
                    prop_assert_eq!(m.remove(&ConnId(id)), model.remove(&id));
                }
            }
            prop_assert_eq!(m.len(), model.len());
            for (id, v) in &model {
                prop_assert_eq!(m.get(&ConnId(*id)), Some(v));
            }
        }
    }
}
