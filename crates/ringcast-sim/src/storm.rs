//! Scenario (c): a reconnect storm. Every connection of the cluster drops at once (an
//! edge outage: the load balancers in front of the nodes fail for `outage_ms`), then
//! comes back.
//!
//! Two layers, both on the core's real pieces:
//!
//! 1. **Admission** (counts of connections): every client retries with the real
//!    [`Backoff`] (full jitter, or its windows without jitter for the "no jitter" runs)
//!    and every node admits upgrades through the real [`TokenBucket`] at
//!    `handshakes_per_second` (a refused client gets 429 and backs off again). Nodes are
//!    symmetric behind a uniform balancer, so the model runs one node's share of
//!    connections exactly (mean field) and multiplies its rates by the node count.
//! 2. **Presence** (a sample of channels, exactly): rooms with sizes drawn log-uniformly,
//!    each owned by the real [`Ring`]'s owner of its slot, with one real
//!    [`ChannelPresence`] per room at its owner. Members leave when the outage starts
//!    (their node tells the owner) and join again at a reconnect time drawn from layer 1,
//!    on a random node. The owner's join/leave events, the interest registrations (a node
//!    whose first local member of a room arrives subscribes at the owner; its last one
//!    leaving drops its interest) and the presence messages (one per member join or
//!    leave from a node that is not the owner) are counted per second, then scaled by
//!    total memberships / sampled memberships.
//!
//! Every connection is also subscribed to its user's registry channel (`#user:{id}`, no
//! grace): one interest registration and one presence message per reconnect unless the
//! registry's owner is the node itself (1/N of the time); these are counted from the
//! admission curve.

use crate::cost::HANDSHAKES_PER_SECOND;
use crate::{node_ids, Rng};
use ringcast_core::backoff::Backoff;
use ringcast_core::presence::ChannelPresence;
use ringcast_core::{ConnId, Millis, NodeId, Ring, Slot, TokenBucket};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormSpec {
    pub nodes: usize,
    pub connections: u64,
    /// Room memberships per connection (presence channels).
    pub rooms_per_connection: u64,
    pub outage_ms: u64,
    pub handshakes_per_second: u32,
    /// `presence_grace`; zero is "no debounce".
    pub grace_ms: u64,
    /// Full jitter on every attempt; without it clients wait the backoff window exactly.
    pub jitter: bool,
    /// Memberships simulated exactly in the presence layer.
    pub sample_memberships: usize,
    pub max_room: u64,
    pub seed: u64,
    pub limit_ms: u64,
}

impl StormSpec {
    /// The storm: 10M connections on 100 nodes.
    #[must_use]
    pub fn full(grace_ms: u64, jitter: bool) -> StormSpec {
        StormSpec {
            nodes: 100,
            connections: 10_000_000,
            rooms_per_connection: 1,
            outage_ms: 10_000,
            handshakes_per_second: HANDSHAKES_PER_SECOND,
            grace_ms,
            jitter,
            sample_memberships: 200_000,
            max_room: 5_000,
            seed: 12,
            limit_ms: 600_000,
        }
    }
}

/// Per-second rates, cluster-wide (scaled).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub t: u64,
    pub reconnects: f64,
    pub refused: f64,
    pub interest_registrations: f64,
    /// Presence messages nodes send owners (joins and leaves, one per membership).
    pub presence_messages: f64,
    /// Of which joins (the leaves all come at the outage's start).
    pub presence_joins: f64,
    pub presence_events: f64,
    pub pushes: f64,
    /// Presence events as node-to-node frames: one per interested node but the owner.
    pub peer_frames: f64,
}

/// The outcome of one storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormOutcome {
    pub spec: StormSpec,
    pub label: String,
    /// Time from the outage's start until 50 %, 99 % and all connections were back.
    pub back_50_ms: Option<u64>,
    pub back_99_ms: Option<u64>,
    pub back_all_ms: Option<u64>,
    pub refused_total: f64,
    pub peak_reconnects_per_s: f64,
    pub peak_interest_per_s: f64,
    pub peak_presence_messages_per_s: f64,
    /// Peak of join messages (the reconnect phase).
    pub peak_presence_joins_per_s: f64,
    pub presence_events_total: f64,
    pub peak_presence_events_per_s: f64,
    pub pushes_total: f64,
    pub peak_pushes_per_s: f64,
    pub peer_frames_total: f64,
    /// Users who got a `leave` although they came back (grace shorter than recovery).
    pub spurious_leaves_fraction: f64,
    pub sampled_rooms: usize,
    pub scale: f64,
    pub timeline: Vec<Second>,
}

/// Layer 1: one node's share of connections through backoff and the handshake bucket.
/// Returns each connection's reconnect time (ms after the outage began) and the refusals
/// per second.
#[must_use]
pub fn admission(spec: &StormSpec) -> (Vec<u64>, Vec<u64>) {
    let per_node = (spec.connections / spec.nodes.max(1) as u64) as usize;
    let backoff = Backoff::default();
    let mut rng = Rng::new(spec.seed);
    let delay = |attempt: u32, rng: &mut Rng| -> u64 {
        if spec.jitter {
            u64::try_from(backoff.delay(attempt, rng.next_u64()).as_millis()).unwrap_or(u64::MAX)
        } else {
            u64::try_from(backoff.window(attempt).as_millis()).unwrap_or(u64::MAX)
        }
    };
    // Calendar queue at 1 ms: attempts due at each ms.
    let horizon = spec.limit_ms as usize + 1;
    let mut due: Vec<Vec<u32>> = vec![Vec::new(); horizon];
    let mut attempts = vec![0u32; per_node];
    let mut back = vec![u64::MAX; per_node];
    for c in 0..per_node {
        let t = delay(0, &mut rng) as usize;
        if t < horizon {
            due[t].push(c as u32);
        }
    }
    let mut bucket = TokenBucket::new(spec.handshakes_per_second, spec.handshakes_per_second, Millis(0));
    let mut refused = vec![0u64; horizon / 1000 + 1];
    for t in 0..horizon {
        let batch = std::mem::take(&mut due[t]);
        for c in batch {
            let ci = c as usize;
            let open = t as u64 >= spec.outage_ms;
            if open && bucket.try_take(Millis(t as u64)) {
                back[ci] = t as u64;
                continue;
            }
            if open {
                refused[t / 1000] += 1;
            }
            attempts[ci] += 1;
            let next = t + (delay(attempts[ci], &mut rng) as usize).max(1);
            if next < horizon {
                due[next].push(c);
            }
        }
    }
    (back, refused)
}

#[derive(Debug)]
struct Room {
    owner: usize,
    presence: ChannelPresence,
    /// (user index, node before, node after, back at)
    members: Vec<(usize, usize, usize, u64)>,
    /// Local members per node right now.
    local: Vec<u32>,
}

fn interested_peers(local: &[u32], owner: usize) -> usize {
    local.iter().enumerate().filter(|&(i, &c)| c > 0 && i != owner).count()
}

/// Runs one storm.
pub fn run(spec: &StormSpec) -> anyhow::Result<StormOutcome> {
    let (back, refused) = admission(spec);
    let n = spec.nodes;
    let scale_nodes = n as f64;
    let horizon_s = (spec.limit_ms / 1000 + 1) as usize;
    let mut secs: Vec<Second> = (0..horizon_s).map(|t| Second { t: t as u64, ..Second::default() }).collect();
    let mut back_sorted: Vec<u64> = back.clone();
    back_sorted.sort_unstable();
    for &b in &back_sorted {
        if b != u64::MAX {
            let s = &mut secs[(b / 1000) as usize];
            s.reconnects += scale_nodes;
            // The registry channel: an interest registration and a join message unless
            // its owner is the node itself.
            let remote = 1.0 - 1.0 / scale_nodes;
            s.interest_registrations += scale_nodes * remote;
            s.presence_messages += scale_nodes * remote;
            s.presence_joins += scale_nodes * remote;
        }
    }
    for (i, r) in refused.iter().enumerate() {
        if i < secs.len() {
            secs[i].refused = *r as f64 * scale_nodes;
        }
    }
    let pct = |p: f64| -> u64 {
        let k = ((back_sorted.len() as f64 * p).ceil() as usize).clamp(1, back_sorted.len().max(1)) - 1;
        back_sorted.get(k).copied().unwrap_or(u64::MAX)
    };
    let back_all = back_sorted.last().copied().filter(|&b| b != u64::MAX);

    // Layer 2: sampled rooms.
    let ids: Vec<NodeId> = node_ids(n);
    let ring = Ring::build(&ids, ringcast_core::ring::DEFAULT_VNODES)?;
    let index: BTreeMap<&NodeId, usize> = ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let mut rng = Rng::new(spec.seed ^ 0x5eed);
    let grace = Duration::from_millis(spec.grace_ms);
    let mut rooms = Vec::new();
    let mut sampled = 0usize;
    let mut user = 0usize;
    let ln_max = (spec.max_room as f64).ln();
    while sampled < spec.sample_memberships {
        let size = ((rng.unit() * (ln_max - 2f64.ln()) + 2f64.ln()).exp().round() as usize).max(2);
        let name = format!("room:{}", rooms.len());
        let owner = index[ring.owner(Slot::of_bytes(name.as_bytes()))];
        let members: Vec<(usize, usize, usize, u64)> = (0..size)
            .map(|_| {
                user += 1;
                let before = rng.below(n as u64) as usize;
                let after = rng.below(n as u64) as usize;
                let at = back[rng.below(back.len() as u64) as usize];
                (user, before, after, at)
            })
            .collect();
        sampled += size;
        rooms.push(Room { owner, presence: ChannelPresence::new(grace), members, local: vec![0; n] });
    }
    let scale = (spec.connections * spec.rooms_per_connection) as f64 / sampled as f64;
    let names: Vec<NodeId> = ids.clone();
    let mut spurious = 0u64;
    let mut came_back = 0u64;
    for room in &mut rooms {
        // Steady state before the outage: everyone present (a sync, not joins).
        for &(u, before, _, _) in &room.members {
            room.local[before] += 1;
            let who: Arc<str> = Arc::from(format!("u{u}"));
            room.presence.join(&names[before], ConnId(u as u64), &who, None, Millis(0));
        }
        // Events: leaves at the outage start, joins at reconnect, ticks every second.
        let mut timeline: Vec<(u64, bool, usize)> = Vec::new();
        for (k, &(_, _, _, at)) in room.members.iter().enumerate() {
            timeline.push((0, false, k));
            if at != u64::MAX {
                timeline.push((at, true, k));
            }
        }
        timeline.sort_unstable();
        let mut next_tick = 1000u64;
        let mut leaves_of: BTreeMap<usize, u64> = BTreeMap::new();
        let emit = |t: u64, events: usize, present: usize, interested: usize, secs: &mut Vec<Second>| {
            if events == 0 {
                return;
            }
            let s = &mut secs[((t / 1000) as usize).min(horizon_s - 1)];
            s.presence_events += events as f64 * scale;
            s.pushes += (events * present) as f64 * scale;
            s.peer_frames += (events * interested) as f64 * scale;
        };
        let mut i = 0;
        while i < timeline.len() || (next_tick <= spec.limit_ms && room.presence.leaving() > 0) {
            let t_event = timeline.get(i).map_or(u64::MAX, |e| e.0);
            if next_tick <= t_event && next_tick <= spec.limit_ms {
                let events = room.presence.tick(Millis(next_tick));
                for e in &events {
                    if let ringcast_core::presence::PresenceEvent::Leave { user, .. } = e {
                        let u: usize = user[1..].parse().unwrap_or(0);
                        *leaves_of.entry(u).or_default() += 1;
                    }
                }
                let present = room.presence.stats().clients;
                let interested = interested_peers(&room.local, room.owner);
                emit(next_tick, events.len(), present, interested, &mut secs);
                next_tick += 1000;
                continue;
            }
            let (t, join, k) = timeline[i];
            i += 1;
            let (u, before, after, _) = room.members[k];
            let s = ((t / 1000) as usize).min(horizon_s - 1);
            let node = if join { after } else { before };
            let remote = node != room.owner;
            if remote {
                secs[s].presence_messages += scale;
                if join {
                    secs[s].presence_joins += scale;
                }
            }
            let ev = if join {
                room.local[node] += 1;
                if room.local[node] == 1 && remote {
                    secs[s].interest_registrations += scale;
                }
                let who: Arc<str> = Arc::from(format!("u{u}"));
                // A new connection id on the new node.
                room.presence.join(&names[node], ConnId(u as u64 + (1 << 40)), &who, None, Millis(t))
            } else {
                room.local[node] -= 1;
                room.presence.leave(&names[node], ConnId(u as u64), Millis(t))
            };
            if let Some(ringcast_core::presence::PresenceEvent::Leave { user, .. }) = &ev {
                let u: usize = user[1..].parse().unwrap_or(0);
                *leaves_of.entry(u).or_default() += 1;
            }
            let present = room.presence.stats().clients;
            let interested = interested_peers(&room.local, room.owner);
            emit(t, usize::from(ev.is_some()), present, interested, &mut secs);
        }
        for &(u, _, _, at) in &room.members {
            if at != u64::MAX {
                came_back += 1;
                if leaves_of.contains_key(&u) {
                    spurious += 1;
                }
            }
        }
    }
    let last = secs.iter().rposition(|s| s.reconnects > 0.0 || s.presence_events > 0.0 || s.refused > 0.0);
    secs.truncate(last.map_or(1, |l| l + 2));
    let peak = |f: fn(&Second) -> f64| secs.iter().map(f).fold(0.0, f64::max);
    let label = format!(
        "{}, {}",
        if spec.grace_ms > 0 { format!("grace {} s", spec.grace_ms / 1000) } else { "no debounce".into() },
        if spec.jitter { "jittered backoff" } else { "no jitter" }
    );
    Ok(StormOutcome {
        label,
        back_50_ms: Some(pct(0.5)).filter(|&b| b != u64::MAX),
        back_99_ms: Some(pct(0.99)).filter(|&b| b != u64::MAX),
        back_all_ms: back_all,
        refused_total: secs.iter().map(|s| s.refused).sum(),
        peak_reconnects_per_s: peak(|s| s.reconnects),
        peak_interest_per_s: peak(|s| s.interest_registrations),
        peak_presence_messages_per_s: peak(|s| s.presence_messages),
        peak_presence_joins_per_s: peak(|s| s.presence_joins),
        presence_events_total: secs.iter().map(|s| s.presence_events).sum(),
        peak_presence_events_per_s: peak(|s| s.presence_events),
        pushes_total: secs.iter().map(|s| s.pushes).sum(),
        peak_pushes_per_s: peak(|s| s.pushes),
        peer_frames_total: secs.iter().map(|s| s.peer_frames).sum(),
        spurious_leaves_fraction: if came_back == 0 { 0.0 } else { spurious as f64 / came_back as f64 },
        sampled_rooms: rooms.len(),
        scale,
        timeline: secs,
        spec: spec.clone(),
    })
}
