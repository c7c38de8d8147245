//! Scenario (a): ring balance. For each cluster size and virtual-node count, builds the
//! real [`Ring`] and reports slots per node and load per node as max/mean.
//!
//! Load is a sample of channels with Zipf(1) popularity (rank `r` weighs `1/r`), each
//! placed by the real `Slot::of_bytes` of its name, so a node's load is the summed weight
//! of the channels in the slots it owns. Ring build time is wall clock (the one
//! non-deterministic figure here).

use crate::node_ids;
use ringcast_core::{Ring, Slot, SLOTS};
use serde::Serialize;
use std::time::Instant;

/// What to sweep.
#[derive(Debug, Clone, Serialize)]
pub struct BalanceSpec {
    pub nodes: Vec<usize>,
    pub vnodes: Vec<u32>,
    /// Channels in the load sample.
    pub channels: usize,
}

impl BalanceSpec {
    #[must_use]
    pub fn full() -> BalanceSpec {
        BalanceSpec {
            nodes: vec![10, 30, 100, 300, 1000],
            vnodes: vec![16, 32, 64, 128, 256, 512],
            channels: 1_000_000,
        }
    }

    #[must_use]
    pub fn quick() -> BalanceSpec {
        BalanceSpec { nodes: vec![10, 30, 100, 300], vnodes: vec![16, 64, 128, 512], channels: 100_000 }
    }
}

/// One (nodes, vnodes) point.
#[derive(Debug, Clone, Serialize)]
pub struct BalanceRow {
    pub nodes: usize,
    pub vnodes: u32,
    pub slots_mean: f64,
    pub slots_min: usize,
    pub slots_max: usize,
    pub slots_max_over_mean: f64,
    /// Busiest node's load over the mean, channels of equal weight.
    pub load_max_over_mean: f64,
    /// The same with Zipf(1) channel popularity (the hottest channel alone is ~7 % of
    /// all load with 1M channels, so this measures hot channels more than the ring).
    pub zipf_load_max_over_mean: f64,
    /// Nodes that own no slot at all.
    pub idle_nodes: usize,
    pub build_ms: f64,
}

/// Per-slot load of `channels` channels: Zipf(1) weights, and equal weights.
#[must_use]
pub fn slot_loads(channels: usize) -> (Vec<f64>, Vec<f64>) {
    let mut zipf = vec![0.0; usize::from(SLOTS)];
    let mut uniform = vec![0.0; usize::from(SLOTS)];
    for rank in 1..=channels {
        let slot = usize::from(Slot::of_bytes(format!("room:{rank}").as_bytes()).get());
        zipf[slot] += 1.0 / rank as f64;
        uniform[slot] += 1.0;
    }
    (zipf, uniform)
}

/// Runs the sweep.
pub fn run(spec: &BalanceSpec) -> anyhow::Result<Vec<BalanceRow>> {
    let (zipf, uniform) = slot_loads(spec.channels);
    let (zipf_total, uniform_total): (f64, f64) = (zipf.iter().sum(), uniform.iter().sum());
    let mut rows = Vec::new();
    for &n in &spec.nodes {
        let ids = node_ids(n);
        for &v in &spec.vnodes {
            let t = Instant::now();
            let ring = Ring::build(&ids, v)?;
            let build_ms = t.elapsed().as_secs_f64() * 1000.0;
            let counts = ring.slot_counts();
            let mut node_load = vec![0.0; n];
            let mut node_zipf = vec![0.0; n];
            let index: std::collections::HashMap<_, _> =
                ring.members().iter().enumerate().map(|(i, m)| (m.clone(), i)).collect();
            for s in Slot::all() {
                let i = index[ring.owner(s)];
                node_load[i] += uniform[usize::from(s.get())];
                node_zipf[i] += zipf[usize::from(s.get())];
            }
            let mean = f64::from(SLOTS) / n as f64;
            let max = counts.iter().copied().max().unwrap_or(0);
            rows.push(BalanceRow {
                nodes: n,
                vnodes: v,
                slots_mean: mean,
                slots_min: counts.iter().copied().min().unwrap_or(0),
                slots_max: max,
                slots_max_over_mean: max as f64 / mean,
                load_max_over_mean: node_load.iter().copied().fold(0.0, f64::max) / (uniform_total / n as f64),
                zipf_load_max_over_mean: node_zipf.iter().copied().fold(0.0, f64::max) / (zipf_total / n as f64),
                idle_nodes: counts.iter().filter(|&&c| c == 0).count(),
                build_ms,
            });
        }
    }
    Ok(rows)
}
