//! Scenario (d): a giant channel (a 2M-viewer scoreboard). The owner sends one
//! `Deliver` per interested node (the interest model: a node registers interest once,
//! however many local subscribers it has), and each node pushes the shared frame to its
//! local viewers. Against it: the naive design where the owner writes one frame per
//! subscriber.
//!
//! Viewers are spread over the nodes by a seeded uniform draw, the channel's owner is the
//! real ring owner of its slot, and the interested nodes are the nodes with at least one
//! viewer. Costs come from [`crate::cost`]: the owner's outbound bytes against its link,
//! and its CPU (a batched delivery per `Deliver`; the naive design pays the same per
//! subscriber). The bottleneck node count is where the owner's link or one core of its
//! CPU runs out for a given publish rate.

use crate::cost::{CPU_PER_DELIVERY_BATCHED_US, LINK_GBIT_PER_S, PEER_FRAME_BYTES, WIRE_BYTES_PER_DELIVERY};
use crate::{node_ids, Rng};
use ringcast_core::{Ring, Slot};
use serde::Serialize;

/// One cluster size.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutRow {
    pub nodes: usize,
    pub viewers: u64,
    /// `Deliver` frames the owner sends per publish (interested nodes but itself).
    pub owner_frames_per_publish: u64,
    /// Frames per publish in the naive design (one per remote subscriber).
    pub naive_frames_per_publish: u64,
    /// Most viewers on one node (its local fan-out per publish).
    pub max_local_viewers: u64,
    /// Publishes/s before the owner's link is full, interest model.
    pub link_limit_publishes_per_s: f64,
    /// Publishes/s before one core of the owner is busy sending `Deliver`s.
    pub cpu_limit_publishes_per_s: f64,
    /// Publishes/s before the busiest node's core is busy pushing to its local viewers.
    pub local_cpu_limit_publishes_per_s: f64,
    /// Naive design: publishes/s before the owner's link is full.
    pub naive_link_limit_publishes_per_s: f64,
    /// Memory for the viewers' connections on the busiest node, GiB.
    pub max_node_memory_gib: f64,
}

/// Runs the sweep over `nodes`.
pub fn run(viewers: u64, nodes: &[usize], seed: u64) -> anyhow::Result<Vec<FanoutRow>> {
    let link_bytes = LINK_GBIT_PER_S * 1e9 / 8.0;
    let mut rows = Vec::new();
    for &n in nodes {
        let ids = node_ids(n);
        let ring = Ring::build(&ids, ringcast_core::ring::DEFAULT_VNODES)?;
        let owner = ring.owner(Slot::of_bytes(b"scores:final")).clone();
        let owner_index = ids.iter().position(|i| *i == owner).unwrap_or(0);
        let mut per_node = vec![0u64; n];
        let mut rng = Rng::new(seed);
        for _ in 0..viewers {
            per_node[rng.below(n as u64) as usize] += 1;
        }
        let interested = per_node.iter().enumerate().filter(|&(i, &v)| v > 0 && i != owner_index).count() as u64;
        let naive = viewers - per_node[owner_index];
        let max_local = per_node.iter().copied().max().unwrap_or(0);
        let per_publish_bytes = interested as f64 * PEER_FRAME_BYTES;
        rows.push(FanoutRow {
            nodes: n,
            viewers,
            owner_frames_per_publish: interested,
            naive_frames_per_publish: naive,
            max_local_viewers: max_local,
            link_limit_publishes_per_s: link_bytes / per_publish_bytes.max(1.0),
            cpu_limit_publishes_per_s: 1e6 / (interested as f64 * CPU_PER_DELIVERY_BATCHED_US).max(1e-9),
            local_cpu_limit_publishes_per_s: 1e6 / (max_local as f64 * CPU_PER_DELIVERY_BATCHED_US),
            naive_link_limit_publishes_per_s: link_bytes / (naive as f64 * WIRE_BYTES_PER_DELIVERY).max(1.0),
            max_node_memory_gib: max_local as f64 * crate::cost::MEMORY_PER_CONNECTION_KIB / (1024.0 * 1024.0),
        });
    }
    Ok(rows)
}

/// The smallest cluster whose owner link is full at `publishes_per_s` with the interest
/// model (one frame per node): `link / (rate x frame)`.
#[must_use]
pub fn link_bottleneck_nodes(publishes_per_s: f64) -> f64 {
    LINK_GBIT_PER_S * 1e9 / 8.0 / (publishes_per_s * PEER_FRAME_BYTES)
}

/// The smallest cluster whose owner core is busy with `Deliver`s at `publishes_per_s`.
#[must_use]
pub fn cpu_bottleneck_nodes(publishes_per_s: f64) -> f64 {
    1e6 / (publishes_per_s * CPU_PER_DELIVERY_BATCHED_US)
}
