//! A deterministic simulation of replication and crash failover, driven by the core's
//! real pieces: `ChannelLog` (pending/commit on the owner, `append_replicated` on the
//! replica, snapshot/restore for syncs and promotion) and `ownership` (who claims a
//! vacated slot, where the replica goes). Time is a step counter; the network is FIFO
//! queues between nodes, delivered in a seeded random interleaving; crashes drop a node's
//! memory and the frames in flight to and from it.
//!
//! The protocol modelled is the one `ringcastd::cluster::replication` runs (see
//! `docs/cluster.md`, "Durable channels" and "Crashes"):
//! - the owner sequences (`append_pending`), sends `Replicate` to the replica its claim
//!   names, and commits and acks when `Replicated` comes back;
//! - the replica fences frames older than the newest slot epoch it has seen and stores
//!   messages at the owner's positions;
//! - on a crash, the replica named by the last claim claims the vacant slot (new epoch),
//!   promotes its copy in the same stream epoch, syncs a new replica and names it.
//!
//! Invariants, checked after every step: no acknowledged message is lost while at most
//! one node is down before re-replication; one payload per (stream epoch, offset); the
//! stream epoch never changes when a replica survived.

use ringcast_core::dedup::DedupPolicy;
use ringcast_core::log::HistoryPolicy;
use ringcast_core::ownership::{Claim, ClusterView, MemberInfo, RouteTable, SlotEpoch};
use ringcast_core::{Appended, ChannelLog, Epoch, Millis, NodeId, Offset, Slot, StreamPosition};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone)]
enum Frame {
    Replicate { slot_epoch: u64, position: StreamPosition, payload: u64 },
    Replicated { slot_epoch: u64, offset: Offset },
}

#[derive(Default)]
struct Node {
    alive: bool,
    owner_log: Option<ChannelLog<u64>>,
    replica_log: Option<ChannelLog<u64>>,
    fence: u64,
}

fn policy() -> (HistoryPolicy, DedupPolicy) {
    (HistoryPolicy { size: 100_000, ttl: Duration::from_secs(3600) }, DedupPolicy::default())
}

fn id(i: usize) -> NodeId {
    NodeId::new(&format!("n{i}")).unwrap_or_else(|e| panic!("{e}"))
}

struct Sim {
    rng: Rng,
    nodes: Vec<Node>,
    /// (from, to) -> frames in flight, in order.
    net: BTreeMap<(usize, usize), VecDeque<Frame>>,
    view: ClusterView,
    slot: Slot,
    revision: u64,
    next_payload: u64,
    /// Acked messages: payload -> position.
    acked: BTreeMap<u64, StreamPosition>,
    /// Every (epoch, offset) -> payload ever acknowledged.
    positions: BTreeMap<(u64, u64), u64>,
    /// Whether the slot's state survived every crash so far (a replica held it).
    continuous: bool,
    stream_epoch: Option<Epoch>,
    /// The newest position acknowledged (acks are made in offset order).
    acked_upto: Option<StreamPosition>,
}

impl Sim {
    fn new(seed: u64, n: usize) -> Sim {
        let members = (0..n).map(|i| MemberInfo { id: id(i), core: true, draining: false }).collect();
        let mut sim = Sim {
            rng: Rng(seed | 1),
            nodes: (0..n).map(|_| Node { alive: true, ..Node::default() }).collect(),
            net: BTreeMap::new(),
            view: ClusterView { members, ..ClusterView::default() },
            slot: Slot::new(7).unwrap_or_else(|| unreachable!()),
            revision: 1,
            next_payload: 1,
            acked: BTreeMap::new(),
            positions: BTreeMap::new(),
            continuous: true,
            stream_epoch: None,
            acked_upto: None,
        };
        // The desired owner claims the slot and starts the stream.
        let ring = sim.view.ring().unwrap_or_else(|| unreachable!());
        let owner = index(ring.owner(sim.slot));
        sim.claim(owner, None);
        let (h, d) = policy();
        let epoch = Epoch::new(1000 + seed % 1000 + 1).unwrap_or_else(|| unreachable!());
        sim.nodes[owner].owner_log = Some(ChannelLog::new(epoch, h, d));
        sim.stream_epoch = Some(epoch);
        sim.sync_replica(owner);
        sim
    }

    fn claim(&mut self, owner: usize, replica: Option<usize>) -> u64 {
        self.revision += 1;
        let epoch = SlotEpoch(self.revision);
        self.view.claims.insert(self.slot, Claim { owner: id(owner), epoch, replica: replica.map(id) });
        self.view.vacated.remove(&self.slot);
        for n in &mut self.nodes {
            // Every live node sees the new claim (the view) and fences older epochs.
            if n.alive {
                n.fence = n.fence.max(epoch.0);
            }
        }
        epoch.0
    }

    fn owner(&self) -> Option<(usize, u64, Option<usize>)> {
        self.view.claims.get(&self.slot).map(|c| (index(&c.owner), c.epoch.0, c.replica.as_ref().map(index)))
    }

    /// The owner snapshots its log to the ring's replica choice and names it (instant:
    /// the pause of durable publishes while it runs is modelled by doing it in one step).
    fn sync_replica(&mut self, owner: usize) {
        let table = RouteTable::new(&self.view);
        let Some(r) = table.replica_for(self.slot, &id(owner)).map(index) else { return };
        if !self.nodes[r].alive {
            return;
        }
        let Some(log) = self.nodes[owner].owner_log.as_mut() else { return };
        let snap = log.snapshot(Millis(0));
        let (h, d) = policy();
        self.nodes[r].replica_log = Some(ChannelLog::restore(snap, h, d, Millis(0)));
        let epoch = self.claim(owner, Some(r));
        // Everything sequenced is now held twice: commit it (ack what was pending).
        if let Some(log) = self.nodes[owner].owner_log.as_mut() {
            let top = log.sequenced().offset;
            log.commit_to(top);
        }
        self.ack_committed(owner);
        self.net.retain(|(from, to), _| *from != owner || *to != r);
        self.nodes[r].fence = self.nodes[r].fence.max(epoch);
    }

    /// Acknowledges what the owner committed since the last ack.
    fn ack_committed(&mut self, owner: usize) {
        let Some(log) = self.nodes[owner].owner_log.as_mut() else { return };
        let top = log.top();
        let from = match self.acked_upto {
            Some(p) if p.epoch == top.epoch => p.offset.0,
            _ => 0,
        };
        if top.offset.0 <= from {
            return;
        }
        let fresh = usize::try_from(top.offset.0 - from).unwrap_or(usize::MAX);
        let page = log.page(Millis(0), None, fresh);
        self.acked_upto = Some(top);
        let first = top.offset.0 + 1 - page.entries.len() as u64;
        for (i, payload) in page.entries.iter().enumerate() {
            let offset = first + i as u64;
            {
                let pos = StreamPosition { epoch: top.epoch, offset: Offset(offset) };
                self.acked.entry(*payload).or_insert(pos);
                let prev = self.positions.insert((top.epoch.get(), offset), *payload);
                assert!(prev.is_none_or(|p| p == *payload), "fork at {pos:?}: {prev:?} vs {payload}");
            }
        }
    }

    fn publish(&mut self) {
        let Some((owner, slot_epoch, Some(replica))) = self.owner() else { return };
        if !self.nodes[owner].alive {
            return;
        }
        let payload = self.next_payload;
        self.next_payload += 1;
        let Some(log) = self.nodes[owner].owner_log.as_mut() else { return };
        if let Ok(Appended::Fresh { position, .. }) = log.append_pending(Millis(0), None, payload, |_| payload) {
            self.net.entry((owner, replica)).or_default().push_back(Frame::Replicate { slot_epoch, position, payload });
        }
    }

    fn deliver(&mut self) {
        let busy: Vec<(usize, usize)> = self.net.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect();
        if busy.is_empty() {
            return;
        }
        let (from, to) = busy[self.rng.below(busy.len() as u64) as usize];
        let Some(frame) = self.net.get_mut(&(from, to)).and_then(VecDeque::pop_front) else { return };
        if !self.nodes[to].alive {
            return;
        }
        match frame {
            Frame::Replicate { slot_epoch, position, payload } => {
                let node = &mut self.nodes[to];
                if slot_epoch < node.fence {
                    return; // fenced: a stale owner gets no ack
                }
                let Some(r) = node.replica_log.as_mut() else { return };
                if r.append_replicated(position, Millis(0), None, payload, payload).is_ok() {
                    self.net
                        .entry((to, from))
                        .or_default()
                        .push_back(Frame::Replicated { slot_epoch, offset: position.offset });
                }
            }
            Frame::Replicated { slot_epoch, offset } => {
                // Only the current owner at the current claim commits.
                if self.owner().is_some_and(|(o, e, _)| o == to && e == slot_epoch) {
                    if let Some(log) = self.nodes[to].owner_log.as_mut() {
                        log.commit_to(offset);
                    }
                    self.ack_committed(to);
                }
            }
        }
    }

    fn crash(&mut self) {
        // At most one node down at a time (the slot is re-replicated at once).
        if self.nodes.iter().filter(|n| n.alive).count() < 3 {
            return;
        }
        let victim = self.rng.below(self.nodes.len() as u64) as usize;
        self.nodes[victim] = Node { alive: false, ..Node::default() };
        self.net.retain(|(from, to), _| *from != victim && *to != victim);
        self.view.members.retain(|m| m.id != id(victim));
        if let Some((owner, _, replica)) = self.owner() {
            if owner == victim {
                // The claim vanishes with the lease; every node remembers its replica.
                self.view.claims.remove(&self.slot);
                if let Some(r) = replica {
                    self.view.vacated.insert(self.slot, id(r));
                }
                self.failover();
            } else if replica == Some(victim) {
                self.sync_replica(owner);
            }
        }
    }

    fn failover(&mut self) {
        let Some(ring) = self.view.ring() else { return };
        let claimant = index(self.view.claimant(self.slot, &ring));
        self.claim(claimant, None);
        let node = &mut self.nodes[claimant];
        match node.replica_log.take() {
            Some(mut r) => {
                let (h, d) = policy();
                node.owner_log = Some(ChannelLog::restore(r.snapshot(Millis(0)), h, d, Millis(0)));
            }
            None => {
                // No copy survived: a new stream epoch (signalled to clients).
                self.continuous = false;
                let (h, d) = policy();
                let epoch = Epoch::new(self.revision + 5000).unwrap_or_else(|| unreachable!());
                node.owner_log = Some(ChannelLog::new(epoch, h, d));
            }
        }
        if self.continuous {
            let epoch = self.nodes[claimant].owner_log.as_ref().map(ChannelLog::epoch);
            assert_eq!(epoch, self.stream_epoch, "a surviving replica continues the same stream epoch");
        }
        self.sync_replica(claimant);
    }

    fn restart(&mut self) {
        if let Some(i) = self.nodes.iter().position(|n| !n.alive) {
            self.nodes[i] = Node { alive: true, ..Node::default() };
            self.view.members.push(MemberInfo { id: id(i), core: true, draining: false });
        }
    }

    fn check(&mut self) {
        if !self.continuous {
            return;
        }
        let Some((owner, _, _)) = self.owner() else { return };
        let Some(log) = self.nodes[owner].owner_log.as_mut() else { return };
        let page = log.page(Millis(0), None, 100_000);
        for (payload, pos) in &self.acked {
            let i = pos.offset.0.checked_sub(page.oldest.0).and_then(|i| usize::try_from(i).ok());
            let held = i.and_then(|i| page.entries.get(i));
            assert_eq!(held, Some(payload), "acknowledged message {payload} at {pos:?} is held by the owner");
            assert_eq!(Some(pos.epoch), self.stream_epoch);
        }
    }
}

fn index(n: &NodeId) -> usize {
    n.as_str().trim_start_matches('n').parse().unwrap_or(usize::MAX)
}

#[test]
fn three_hundred_seeded_schedules_of_publishes_deliveries_and_crashes_lose_no_ack_and_never_fork() {
    let mut failovers = 0;
    for seed in 1..=300u64 {
        let mut sim = Sim::new(seed, 3);
        for step in 0..300 {
            match sim.rng.below(100) {
                0..=39 => sim.publish(),
                40..=93 => sim.deliver(),
                94..=96 => {
                    let before = sim.owner().map(|o| o.0);
                    sim.crash();
                    if sim.owner().map(|o| o.0) != before {
                        failovers += 1;
                    }
                }
                _ => sim.restart(),
            }
            if step % 25 == 0 {
                sim.check();
            }
        }
        sim.check();
        assert!(sim.continuous, "seed {seed}: one node down at a time never loses the stream");
        assert!(!sim.acked.is_empty(), "seed {seed}: publishes were acknowledged");
    }
    assert!(failovers > 30, "the schedules exercised failovers: {failovers}");
}
