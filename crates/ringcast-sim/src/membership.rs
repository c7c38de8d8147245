//! Scenario (b): membership changes at 100 nodes, through a simulated etcd and the real
//! planner.
//!
//! [`Etcd`] is a map of slot claims and member records with a revision counter:
//! compare-and-swap creates (a vacant slot) and swaps (a handoff, on the holder's epoch),
//! lease expiry that deletes a node's record and every claim on its lease in one
//! revision, and counters of writes and watch events (one event per changed key per
//! watching node). Nodes see each revision at the next tick (a watch), run the real
//! [`plan`] with the real throttle, and act as `ringcastd::cluster` does:
//! - a vacant slot it should claim: one CAS create, then a second write naming its
//!   replica once the replica is synced ([`REPLICA_SYNC_MS`]);
//! - a handoff: seal, snapshot, transfer and restore take [`handoff_ms`]; then the
//!   receiver claims by CAS on the holder's epoch and names its replica.
//!
//! `plan` returns the first `budget` slots to hand off in slot order, counting the ones
//! already in flight (their claims have not moved yet), so a node starts new handoffs only
//! as earlier ones finish: a **round** here is a wave of handoffs one node started at one
//! tick.
//!
//! Invariants checked at every tick ([`Violation`]): no two live nodes serve one slot at
//! once, no (slot, epoch) is ever held by two nodes; and after convergence every slot is
//! claimed, by its desired owner, and every node's plan is empty.

use crate::cost::{ETCD_COMMIT_MS, LEASE_TTL_MS, PEER_RTT_MS};
use crate::node_id;
use ringcast_core::ownership::{plan, plan_with_ring, Claim, ClusterView, MemberInfo, RouteTable, SlotEpoch};
use ringcast_core::{NodeId, Ring, Slot, SLOTS};
use serde::Serialize;
use std::collections::BTreeMap;

/// Virtual tick: how often nodes apply watch events and plan.
pub const TICK_MS: u64 = 10;
/// Time from a claim to its replica being synced and named (assumption: one snapshot
/// transfer plus a commit).
pub const REPLICA_SYNC_MS: u64 = 100;

/// A handoff's duration: two round trips (handoff, reply), the snapshot transfer of
/// `slot_state_bytes` at `gbit_per_s`, and the CAS commit.
#[must_use]
pub fn handoff_ms(slot_state_bytes: f64, gbit_per_s: f64) -> u64 {
    let transfer = slot_state_bytes * 8.0 / (gbit_per_s * 1e9) * 1000.0;
    2 * PEER_RTT_MS + ETCD_COMMIT_MS + transfer.ceil() as u64
}

/// The simulated etcd.
#[derive(Debug, Default)]
pub struct Etcd {
    pub revision: u64,
    members: BTreeMap<NodeId, MemberInfo>,
    claims: BTreeMap<Slot, Claim>,
    /// Writes committed (each a revision).
    pub writes: u64,
    /// Watch events delivered (changed keys x watching nodes).
    pub watch_events: u64,
    /// (time, writes, events) per committed write, for rates.
    pub log: Vec<(u64, u64, u64)>,
}

impl Etcd {
    fn commit(&mut self, now: u64, keys: u64) -> u64 {
        self.revision += 1;
        self.writes += 1;
        let watchers = self.members.len() as u64;
        self.watch_events += keys * watchers;
        self.log.push((now, 1, keys * watchers));
        self.revision
    }

    /// Registers or updates a member record.
    pub fn put_member(&mut self, now: u64, m: MemberInfo) {
        self.members.insert(m.id.clone(), m);
        self.commit(now, 1);
    }

    /// Claims a vacant slot; `None` when it is held.
    pub fn create_claim(&mut self, now: u64, slot: Slot, owner: &NodeId) -> Option<SlotEpoch> {
        if self.claims.contains_key(&slot) || !self.members.contains_key(owner) {
            return None;
        }
        let epoch = SlotEpoch(self.commit(now, 1));
        self.claims.insert(slot, Claim { owner: owner.clone(), epoch, replica: None });
        Some(epoch)
    }

    /// Takes a slot over from the claim at `from`; `None` when the claim moved.
    pub fn swap_claim(&mut self, now: u64, slot: Slot, owner: &NodeId, from: SlotEpoch) -> Option<SlotEpoch> {
        if self.claims.get(&slot).map(|c| c.epoch) != Some(from) || !self.members.contains_key(owner) {
            return None;
        }
        let epoch = SlotEpoch(self.commit(now, 1));
        self.claims.insert(slot, Claim { owner: owner.clone(), epoch, replica: None });
        Some(epoch)
    }

    /// Names the replica of a claim still held at `epoch` (the claim key is rewritten;
    /// the fencing epoch stays the claim's).
    pub fn name_replica(&mut self, now: u64, slot: Slot, epoch: SlotEpoch, replica: NodeId) -> bool {
        if self.claims.get(&slot).map(|c| c.epoch) != Some(epoch) {
            return false;
        }
        self.commit(now, 1);
        if let Some(c) = self.claims.get_mut(&slot) {
            c.replica = Some(replica);
        }
        true
    }

    /// The lease of `node` expired: its record and claims vanish in one revision.
    /// Returns the replicas the lost claims named.
    pub fn expire_lease(&mut self, now: u64, node: &NodeId) -> BTreeMap<Slot, NodeId> {
        let lost: Vec<Slot> = self.claims.iter().filter(|(_, c)| &c.owner == node).map(|(s, _)| *s).collect();
        let mut vacated = BTreeMap::new();
        for s in &lost {
            if let Some(Claim { replica: Some(r), .. }) = self.claims.remove(s) {
                vacated.insert(*s, r);
            }
        }
        self.members.remove(node);
        self.commit(now, 1 + lost.len() as u64);
        vacated
    }

    /// The snapshot a watcher holds after this revision.
    #[must_use]
    pub fn view(&self, vacated: &BTreeMap<Slot, NodeId>) -> ClusterView {
        ClusterView {
            members: self.members.values().cloned().collect(),
            claims: self.claims.clone(),
            vacated: vacated
                .iter()
                .filter(|(s, _)| !self.claims.contains_key(s))
                .map(|(s, n)| (*s, n.clone()))
                .collect(),
        }
    }

    #[must_use]
    pub fn claims(&self) -> &BTreeMap<Slot, Claim> {
        &self.claims
    }
}

/// A broken invariant, with when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub at_ms: u64,
    pub what: String,
}

#[derive(Debug, Clone)]
struct InFlight {
    slot: Slot,
    to: NodeId,
    from: SlotEpoch,
    done_at: u64,
}

#[derive(Debug, Default)]
struct Node {
    alive: bool,
    /// Slots this node serves, with the epoch of its claim (sealed slots excluded).
    serving: BTreeMap<Slot, SlotEpoch>,
    in_flight: Vec<InFlight>,
    /// Ticks at which this node started at least one handoff.
    rounds: u64,
}

/// What happens to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Change {
    /// `count` new core nodes join.
    Join { count: usize },
    /// One node drains (graceful leave).
    Drain,
    /// One node crashes; its lease expires after the TTL.
    Crash,
}

/// One scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeSpec {
    pub nodes: usize,
    pub change: Change,
    pub throttle: usize,
    /// Durable state per slot moved by a handoff, bytes.
    pub slot_state_bytes: f64,
    pub gbit_per_s: f64,
    /// Give up after this much virtual time.
    pub limit_ms: u64,
}

/// The outcome of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeOutcome {
    pub spec: ChangeSpec,
    pub label: String,
    /// Slots whose holder differs before and after.
    pub slots_moved: usize,
    /// The minimum any placement must move (1024/N for a join of one, the leaver's slots).
    pub ideal_moved: f64,
    pub handoffs: u64,
    pub claims: u64,
    /// Most handoff waves any one node ran.
    pub rounds: u64,
    pub handoff_ms: u64,
    /// From the change to convergence (for a crash: including the lease TTL).
    pub converged_ms: Option<u64>,
    /// Slots without a claim, in ms x slots (a crash's unavailability).
    pub vacant_slot_ms: u64,
    pub etcd_writes: u64,
    pub peak_writes_per_s: u64,
    pub watch_events: u64,
    pub peak_watch_events_per_s: u64,
    /// (second, writes, watch events) after the change.
    pub timeline: Vec<(u64, u64, u64)>,
    /// (ms after the change, writes so far, watch events so far), one point per write.
    pub cumulative: Vec<(u64, u64, u64)>,
    pub violations: Vec<Violation>,
}

/// What a ring depends on: each member's id, core and draining flags.
type MembersKey = Vec<(NodeId, bool, bool)>;

/// The cluster under simulation.
#[derive(Debug)]
pub struct Cluster {
    pub etcd: Etcd,
    nodes: BTreeMap<NodeId, Node>,
    vacated: BTreeMap<Slot, NodeId>,
    /// (slot, epoch) -> the node that served it.
    epochs_seen: BTreeMap<(Slot, SlotEpoch), NodeId>,
    /// Pending replica namings: (due, slot, epoch, owner).
    replica_due: Vec<(u64, Slot, SlotEpoch, NodeId)>,
    pub now: u64,
    pub throttle: usize,
    handoff_ms: u64,
    pub handoffs: u64,
    pub claims: u64,
    pub violations: Vec<Violation>,
    last_planned: u64,
    /// The ring of the current members, kept across claim changes.
    ring: Option<(MembersKey, Ring)>,
}

impl Cluster {
    /// `n` core nodes registered at time 0, nothing claimed.
    #[must_use]
    pub fn new(n: usize, throttle: usize, handoff_ms: u64) -> Cluster {
        let mut c = Cluster {
            etcd: Etcd::default(),
            nodes: BTreeMap::new(),
            vacated: BTreeMap::new(),
            epochs_seen: BTreeMap::new(),
            replica_due: Vec::new(),
            now: 0,
            throttle,
            handoff_ms,
            handoffs: 0,
            claims: 0,
            violations: Vec::new(),
            last_planned: u64::MAX,
            ring: None,
        };
        for i in 0..n {
            c.add_node(node_id(i));
        }
        c
    }

    pub fn add_node(&mut self, id: NodeId) {
        self.nodes.insert(id.clone(), Node { alive: true, ..Node::default() });
        self.etcd.put_member(self.now, MemberInfo { id, core: true, draining: false });
    }

    pub fn drain(&mut self, id: &NodeId) {
        self.etcd.put_member(self.now, MemberInfo { id: id.clone(), core: true, draining: true });
    }

    /// The process dies now: it stops serving and its handoffs die with it.
    pub fn crash(&mut self, id: &NodeId) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.alive = false;
            n.serving.clear();
            n.in_flight.clear();
        }
    }

    /// Its lease expires: every node remembers the replicas the lost claims named.
    pub fn expire(&mut self, id: &NodeId) {
        let vacated = self.etcd.expire_lease(self.now, id);
        self.vacated.extend(vacated);
        self.nodes.remove(id);
    }

    /// Test hook: `node` serves `slot` at `epoch` without a claim, as a driver that
    /// forgot to seal or to check the CAS would. The next tick must report a violation.
    #[doc(hidden)]
    pub fn inject_serving(&mut self, node: &NodeId, slot: Slot, epoch: SlotEpoch) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.serving.insert(slot, epoch);
        }
    }

    /// Handoffs and claims still to happen, or replicas still to name.
    #[must_use]
    pub fn busy(&self) -> bool {
        !self.replica_due.is_empty() || self.nodes.values().any(|n| !n.in_flight.is_empty())
    }

    /// One tick: finish due handoffs, name due replicas, then every live node that saw a
    /// new revision plans.
    pub fn tick(&mut self) {
        self.now += TICK_MS;
        let now = self.now;
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        for id in &ids {
            let done: Vec<InFlight> = match self.nodes.get_mut(id) {
                Some(n) => {
                    let (done, rest) = n.in_flight.drain(..).partition(|h| h.done_at <= now);
                    n.in_flight = rest;
                    done
                }
                None => continue,
            };
            for h in done {
                let receiver_alive = self.nodes.get(&h.to).is_some_and(|n| n.alive);
                let won = if receiver_alive { self.etcd.swap_claim(now, h.slot, &h.to, h.from) } else { None };
                match won {
                    Some(epoch) => {
                        self.handoffs += 1;
                        self.serve(&h.to.clone(), h.slot, epoch);
                    }
                    None => {
                        // The receiver discarded the snapshot: the holder unseals.
                        if let Some(n) = self.nodes.get_mut(id) {
                            if n.alive {
                                n.serving.insert(h.slot, h.from);
                            }
                        }
                    }
                }
            }
        }
        let due: Vec<(u64, Slot, SlotEpoch, NodeId)> = {
            let (due, rest) = self.replica_due.drain(..).partition(|r| r.0 <= now);
            self.replica_due = rest;
            due
        };
        if !due.is_empty() {
            let table = RouteTable::new(&self.etcd.view(&self.vacated));
            for (_, slot, epoch, owner) in due {
                if let Some(r) = table.replica_for(slot, &owner).cloned() {
                    self.etcd.name_replica(now, slot, epoch, r);
                }
            }
        }
        if self.etcd.revision != self.last_planned || self.nodes.values().any(|n| !n.in_flight.is_empty()) {
            self.last_planned = self.etcd.revision;
            self.plan_round();
        }
        self.check();
    }

    fn serve(&mut self, id: &NodeId, slot: Slot, epoch: SlotEpoch) {
        // The new claim is visible at the next watch; everyone else stops serving it
        // (a former holder that did not seal, or a stale one, would be a violation).
        if let Some(n) = self.nodes.get_mut(id) {
            n.serving.insert(slot, epoch);
        }
        self.replica_due.push((self.now + REPLICA_SYNC_MS, slot, epoch, id.clone()));
        self.vacated.remove(&slot);
    }

    /// The view's ring, rebuilt only when the members changed (claims change far more
    /// often; see [`plan_with_ring`]).
    fn ring(&mut self, view: &ClusterView) -> Option<Ring> {
        let key: MembersKey = view.members.iter().map(|m| (m.id.clone(), m.core, m.draining)).collect();
        if self.ring.as_ref().is_none_or(|(k, _)| *k != key) {
            self.ring = view.ring().map(|r| (key, r));
        }
        self.ring.as_ref().map(|(_, r)| r.clone())
    }

    fn plan_round(&mut self) {
        let view = self.etcd.view(&self.vacated);
        let Some(ring) = self.ring(&view) else { return };
        let ids: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| n.alive).map(|(id, _)| id.clone()).collect();
        for me in ids {
            let in_flight = self.nodes.get(&me).map_or(0, |n| n.in_flight.len());
            let p = plan_with_ring(&view, &ring, &me, in_flight, self.throttle);
            for slot in p.claim {
                if let Some(epoch) = self.etcd.create_claim(self.now, slot, &me) {
                    self.claims += 1;
                    self.serve(&me, slot, epoch);
                }
            }
            let now = self.now;
            let done_at = now + self.handoff_ms;
            if let Some(n) = self.nodes.get_mut(&me) {
                let mut started = false;
                for h in p.hand_off {
                    if n.in_flight.iter().any(|f| f.slot == h.slot) {
                        continue;
                    }
                    // Seal: stop serving the slot while its snapshot travels.
                    n.serving.remove(&h.slot);
                    n.in_flight.push(InFlight { slot: h.slot, to: h.to, from: h.from_epoch, done_at });
                    started = true;
                }
                n.rounds += u64::from(started);
            }
        }
    }

    fn check(&mut self) {
        let mut holders: BTreeMap<Slot, Vec<(NodeId, SlotEpoch)>> = BTreeMap::new();
        for (id, n) in &self.nodes {
            if !n.alive {
                continue;
            }
            for (slot, epoch) in &n.serving {
                holders.entry(*slot).or_default().push((id.clone(), *epoch));
            }
        }
        for (slot, hs) in holders {
            if hs.len() > 1 {
                self.violations.push(Violation { at_ms: self.now, what: format!("slot {slot} served by {hs:?}") });
            }
            for (id, epoch) in hs {
                if let Some(prev) = self.epochs_seen.insert((slot, epoch), id.clone()) {
                    if prev != id {
                        self.violations.push(Violation {
                            at_ms: self.now,
                            what: format!("slot {slot} epoch {} held by {prev} and {id}", epoch.0),
                        });
                    }
                }
            }
        }
    }

    /// Converged: every slot claimed by its desired owner, nothing in flight, and every
    /// live node's plan empty.
    #[must_use]
    pub fn converged(&self) -> bool {
        if self.busy() {
            return false;
        }
        let view = self.etcd.view(&self.vacated);
        let Some(ring) = view.ring() else { return false };
        if self.etcd.claims.len() != usize::from(SLOTS) {
            return false;
        }
        if self.etcd.claims.iter().any(|(s, c)| &c.owner != ring.owner(*s)) {
            return false;
        }
        self.nodes.iter().filter(|(_, n)| n.alive).all(|(id, _)| {
            let p = plan_with_ring(&view, &ring, id, 0, self.throttle);
            p.claim.is_empty() && p.hand_off.is_empty()
        })
    }

    /// Ticks until converged or `limit_ms` passes; the time taken, if converged.
    pub fn run_until_converged(&mut self, limit_ms: u64) -> Option<u64> {
        let start = self.now;
        while self.now - start < limit_ms {
            self.tick();
            if self.converged() {
                return Some(self.now - start);
            }
        }
        None
    }

    /// Every slot's holder.
    #[must_use]
    pub fn holders(&self) -> BTreeMap<Slot, NodeId> {
        self.etcd.claims.iter().map(|(s, c)| (*s, c.owner.clone())).collect()
    }

    fn max_rounds(&self) -> u64 {
        self.nodes.values().map(|n| n.rounds).max().unwrap_or(0)
    }

    fn reset_rounds(&mut self) {
        for n in self.nodes.values_mut() {
            n.rounds = 0;
        }
    }
}

/// Runs one membership change on a converged cluster of `spec.nodes`.
pub fn run(spec: &ChangeSpec) -> ChangeOutcome {
    let hms = handoff_ms(spec.slot_state_bytes, spec.gbit_per_s);
    let mut c = Cluster::new(spec.nodes, spec.throttle, hms);
    c.run_until_converged(spec.limit_ms);
    let before = c.holders();
    let (w0, e0, start) = (c.etcd.writes, c.etcd.watch_events, c.now);
    let log_from = c.etcd.log.len();
    c.reset_rounds();
    let (handoffs0, claims0) = (c.handoffs, c.claims);
    let n = spec.nodes as f64;
    let victim = node_id(spec.nodes / 2);
    let mut vacant_slot_ms = 0;
    let (ideal, label) = match spec.change {
        Change::Join { count } => {
            for i in 0..count {
                c.add_node(node_id(spec.nodes + i));
            }
            (f64::from(SLOTS) * count as f64 / (n + count as f64), format!("{count} join(s) at {}", spec.nodes))
        }
        Change::Drain => {
            let owned = before.values().filter(|o| **o == victim).count();
            c.drain(&victim);
            (owned as f64, format!("drain at {}", spec.nodes))
        }
        Change::Crash => {
            let owned = before.values().filter(|o| **o == victim).count();
            c.crash(&victim);
            // The lease runs out TTL after the last keepalive (on average half an
            // interval before the crash; the model takes the full TTL).
            while c.now - start < LEASE_TTL_MS {
                c.tick();
            }
            c.expire(&victim);
            (owned as f64, format!("crash at {}", spec.nodes))
        }
    };
    let mut converged_ms = None;
    while c.now - start < spec.limit_ms {
        c.tick();
        vacant_slot_ms += (usize::from(SLOTS) - c.etcd.claims.len()) as u64 * TICK_MS;
        if c.converged() {
            converged_ms = Some(c.now - start);
            break;
        }
    }
    if spec.change == Change::Crash {
        // The crashed node's slots were unserved from the crash to the lease expiry too.
        vacant_slot_ms += ideal as u64 * LEASE_TTL_MS;
    }
    let after = c.holders();
    let slots_moved = Slot::all().filter(|s| before.get(s) != after.get(s)).count();
    let mut per_second: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for &(t, w, e) in &c.etcd.log[log_from..] {
        let sec = (t - start) / 1000;
        let slot = per_second.entry(sec).or_default();
        slot.0 += w;
        slot.1 += e;
    }
    let timeline: Vec<(u64, u64, u64)> = per_second.iter().map(|(s, (w, e))| (*s, *w, *e)).collect();
    let cumulative: Vec<(u64, u64, u64)> = c.etcd.log[log_from..]
        .iter()
        .scan((0, 0), |acc, &(t, w, e)| {
            acc.0 += w;
            acc.1 += e;
            Some((t - start, acc.0, acc.1))
        })
        .collect();
    if converged_ms.is_none() {
        c.violations.push(Violation { at_ms: c.now, what: "did not converge".into() });
    }
    ChangeOutcome {
        spec: spec.clone(),
        label,
        slots_moved,
        ideal_moved: ideal,
        handoffs: c.handoffs - handoffs0,
        claims: c.claims - claims0,
        rounds: c.max_rounds(),
        handoff_ms: hms,
        converged_ms,
        vacant_slot_ms,
        etcd_writes: c.etcd.writes - w0,
        peak_writes_per_s: timeline.iter().map(|t| t.1).max().unwrap_or(0),
        watch_events: c.etcd.watch_events - e0,
        peak_watch_events_per_s: timeline.iter().map(|t| t.2).max().unwrap_or(0),
        timeline,
        cumulative,
        violations: c.violations,
    }
}

/// The cost of one node's planning step on a converged view of `nodes` members, wall
/// clock: `plan` (builds the ring) against `plan_with_ring` (a kept ring), in ms per call,
/// best of `reps`.
pub fn plan_cost(nodes: usize, reps: usize) -> anyhow::Result<(f64, f64)> {
    let mut c = Cluster::new(nodes, ringcast_core::ownership::DEFAULT_HANDOFFS_IN_FLIGHT, 20);
    c.run_until_converged(60_000).ok_or_else(|| anyhow::anyhow!("{nodes} nodes did not converge"))?;
    let view = c.etcd.view(&c.vacated);
    let ring = view.ring().ok_or_else(|| anyhow::anyhow!("no ring"))?;
    let me = node_id(0);
    let (mut fresh, mut kept) = (f64::MAX, f64::MAX);
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let a = plan(&view, &me, 0, 32);
        fresh = fresh.min(t.elapsed().as_secs_f64() * 1000.0);
        let t = std::time::Instant::now();
        let b = plan_with_ring(&view, &ring, &me, 0, 32);
        kept = kept.min(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(a == b, "plans differ");
    }
    Ok((fresh, kept))
}
