//! The consistent-hash ring: which node owns each slot.
//!
//! Each core member is placed on a `hashring` ring as `vnodes` virtual nodes. The owner
//! of a slot is the first virtual node clockwise of the slot's hash. Lookups are
//! precomputed into a table of [`SLOTS`] entries when a membership view is built, so the
//! hot path is an array index (`hashring::get_with_replicas` clones the whole ring per
//! call and must stay off it).
//!
//! Balance: with 1024 hashed slots and 128 vnodes per member, random placement alone
//! leaves the busiest member up to ~1.3x the mean. The table therefore uses consistent
//! hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2018): each member takes
//! at most `ceil(LOAD_FACTOR * SLOTS / members)` slots; a slot whose ring owner is full
//! goes to the next member clockwise with room. Placement stays deterministic (slots are
//! assigned in slot order) and a join or leave still moves close to 1/N of the slots.
//!
//! [`Ring::replicas`] gives each slot's copy holders: the owner, then the next distinct
//! members clockwise (precomputed with the table; the failover issue's replica is the
//! second entry).
//!
//! Hash input is explicit bytes (the node id's UTF-8 bytes and the little-endian vnode
//! index; the slot number little-endian), fed to `hashring`'s SipHash, so placement does
//! not depend on std `Hash` implementations. A standalone node is a one-member ring that
//! takes the same path.

use crate::name::NodeId;
use crate::slot::{Slot, SLOTS};
use hashring::HashRing;
use std::hash::{Hash, Hasher};

/// Default virtual nodes per member.
pub const DEFAULT_VNODES: u32 = 128;
/// Most slots a member may own, as a multiple of the mean.
pub const LOAD_FACTOR: f64 = 1.2;

#[derive(Debug, Clone, PartialEq)]
struct VNode {
    node: NodeId,
    index: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.node.as_str().as_bytes());
        state.write(&[0xff]);
        state.write(&self.index.to_le_bytes());
    }
}

struct SlotKey(u16);

/// The ring position of a key, as `hashring` computes it (SipHash of its explicit
/// bytes with `hashring`'s default hasher).
fn sip<T: Hash>(t: &T) -> u64 {
    use std::hash::BuildHasher;
    hashring::DefaultHashBuilder.hash_one(t)
}

impl Hash for SlotKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(b"slot");
        state.write(&self.0.to_le_bytes());
    }
}

/// Why a ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("a ring needs at least one member")]
    NoMembers,
    #[error("vnodes must be between 1 and 4096")]
    BadVnodes,
}

/// An immutable ownership view: members plus the precomputed slot table.
#[derive(Debug, Clone)]
pub struct Ring {
    members: Vec<NodeId>,
    /// `owners[slot]` indexes `members`.
    owners: Vec<u16>,
    /// `order[slot]`: every member once, in ring order clockwise from the slot's hash
    /// (the owner first when it had room; the replica is the first other member).
    order: Vec<Vec<u16>>,
}

impl Ring {
    /// Builds the view for `members` (order and duplicates do not matter).
    pub fn build(members: &[NodeId], vnodes: u32) -> Result<Ring, RingError> {
        if !(1..=4096).contains(&vnodes) {
            return Err(RingError::BadVnodes);
        }
        let mut members: Vec<NodeId> = members.to_vec();
        members.sort();
        members.dedup();
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        let mut ring: HashRing<VNode> = HashRing::new();
        ring.batch_add(
            members.iter().flat_map(|n| (0..vnodes).map(move |index| VNode { node: n.clone(), index })).collect(),
        );
        let n = members.len();
        let cap = (LOAD_FACTOR * f64::from(SLOTS) / n as f64).ceil() as usize;
        let index_of = |node: &NodeId| members.iter().position(|m| m == node);
        // The ring as (hash, member) sorted by hash, to walk clockwise without cloning
        // the ring per lookup (`get_with_replicas` does): one `get` finds the start.
        let points: Vec<(u64, u16)> = {
            let mut p: Vec<(u64, u16)> = members
                .iter()
                .enumerate()
                .flat_map(|(i, m)| (0..vnodes).map(move |index| (sip(&VNode { node: m.clone(), index }), i as u16)))
                .collect();
            p.sort_unstable();
            p
        };
        let mut counts = vec![0usize; n];
        let mut owners = Vec::with_capacity(usize::from(SLOTS));
        let mut order = Vec::with_capacity(usize::from(SLOTS));
        for s in 0..SLOTS {
            let key = SlotKey(s);
            // Invariant: the ring is non-empty and only holds members.
            let first = ring.get(&key).and_then(|v| index_of(&v.node)).unwrap_or(0);
            // Distinct members clockwise from the slot's point, `first` leading.
            let start = points.partition_point(|(h, _)| *h < sip(&key));
            let mut walk: Vec<u16> = Vec::with_capacity(n);
            for (_, m) in points[start..].iter().chain(points[..start].iter()) {
                if !walk.contains(m) {
                    walk.push(*m);
                    if walk.len() == n {
                        break;
                    }
                }
            }
            // A full ring owner passes the slot to the next member clockwise with room;
            // the members' total capacity is at least SLOTS, so one has room.
            let owner = walk.iter().map(|&i| usize::from(i)).find(|&i| counts[i] < cap).unwrap_or(first);
            counts[owner] += 1;
            owners.push(owner as u16);
            walk.retain(|&i| usize::from(i) != owner);
            walk.insert(0, owner as u16);
            order.push(walk);
        }
        Ok(Ring { members, owners, order })
    }

    /// The member that owns `slot`.
    #[must_use]
    pub fn owner(&self, slot: Slot) -> &NodeId {
        &self.members[usize::from(self.owners[usize::from(slot.get())])]
    }

    /// The members that should hold copies of `slot`, owner first, then the next
    /// distinct members clockwise: at most `copies` of them (fewer in a smaller ring).
    #[must_use]
    pub fn replicas(&self, slot: Slot, copies: usize) -> Vec<&NodeId> {
        self.order[usize::from(slot.get())].iter().take(copies).map(|&i| &self.members[usize::from(i)]).collect()
    }

    /// Members, sorted.
    #[must_use]
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Number of slots each member owns, in `members()` order.
    #[must_use]
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.members.len()];
        for &o in &self.owners {
            counts[usize::from(o)] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId::new(&format!("node-{i}")).unwrap_or_else(|e| panic!("{e}"))).collect()
    }

    #[test]
    fn one_member_owns_everything() {
        let r = Ring::build(&nodes(1), DEFAULT_VNODES).unwrap_or_else(|e| panic!("{e}"));
        assert!(Slot::all().all(|s| r.owner(s).as_str() == "node-0"));
        assert_eq!(Ring::build(&[], 128).err(), Some(RingError::NoMembers));
        assert_eq!(Ring::build(&nodes(1), 0).err(), Some(RingError::BadVnodes));
    }

    #[test]
    fn placement_is_order_independent() {
        let mut ns = nodes(5);
        let a = Ring::build(&ns, 64).unwrap_or_else(|e| panic!("{e}"));
        ns.reverse();
        ns.push(ns[0].clone());
        let b = Ring::build(&ns, 64).unwrap_or_else(|e| panic!("{e}"));
        assert!(Slot::all().all(|s| a.owner(s) == b.owner(s)));
    }

    #[test]
    fn replica_order_is_distinct_owner_first_and_deterministic() {
        let ns = nodes(5);
        let a = Ring::build(&ns, DEFAULT_VNODES).unwrap_or_else(|e| panic!("{e}"));
        let b = Ring::build(&ns.iter().rev().cloned().collect::<Vec<_>>(), DEFAULT_VNODES)
            .unwrap_or_else(|e| panic!("{e}"));
        for s in Slot::all() {
            let r = a.replicas(s, 3);
            assert_eq!(r.len(), 3);
            assert_eq!(r[0], a.owner(s), "the owner leads");
            assert!(r[0] != r[1] && r[1] != r[2] && r[0] != r[2], "distinct physical nodes");
            assert_eq!(r, b.replicas(s, 3), "the same from any member's view");
            assert_eq!(a.replicas(s, 9).len(), 5, "never more than the members");
        }
        let solo = Ring::build(&nodes(1), DEFAULT_VNODES).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(solo.replicas(Slot::all().next().unwrap_or_else(|| unreachable!()), 2).len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn balanced_at_128_vnodes(n in 2usize..12) {
            let r = Ring::build(&nodes(n), DEFAULT_VNODES).unwrap_or_else(|e| panic!("{e}"));
            let counts = r.slot_counts();
            let mean = f64::from(SLOTS) / n as f64;
            let max = counts.iter().copied().max().unwrap_or(0) as f64;
            prop_assert!(max / mean <= 1.25, "max/mean {} with {n} nodes: {counts:?}", max / mean);
        }

        #[test]
        fn a_join_moves_close_to_one_nth(n in 2usize..10) {
            let before = Ring::build(&nodes(n), DEFAULT_VNODES).unwrap_or_else(|e| panic!("{e}"));
            let after = Ring::build(&nodes(n + 1), DEFAULT_VNODES).unwrap_or_else(|e| panic!("{e}"));
            let moved = Slot::all().filter(|&s| before.owner(s) != after.owner(s)).count();
            let ideal = f64::from(SLOTS) / (n + 1) as f64;
            prop_assert!((moved as f64) <= ideal * 1.5, "moved {moved}, ideal {ideal}");
        }
    }
}
