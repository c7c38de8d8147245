//! # ringcast-sim: a scale model driven by the real core
//!
//! ringcast runs on small machines here, but its users run fleets. This crate answers
//! "how does the design behave at 100 nodes and 10 million connections, and where does
//! it break first?" by running `ringcast-core`'s real state machines on a virtual clock,
//! with connections, subscriptions and publishes modelled as counts, never sockets:
//!
//! - [`balance`] (a): [`ringcast_core::Ring`] placement for 10 to 1,000 nodes and 16 to
//!   512 virtual nodes: slots and load per node, max/mean.
//! - [`membership`] (b): a simulated etcd (claims with compare-and-swap and revisions,
//!   lease expiry, counted writes and watch events) and nodes running the real
//!   [`ringcast_core::ownership::plan`] rounds with the real handoff throttle, through a
//!   join, a drain and a crash.
//! - [`storm`] (c): 10M connections reconnecting after an edge outage, through the real
//!   [`ringcast_core::backoff::Backoff`] and the node's handshake
//!   [`ringcast_core::TokenBucket`], with the owners' join/leave decisions made by the real
//!   [`ringcast_core::presence::ChannelPresence`] on a sample of channels.
//! - [`fanout`] (d): a 2M-viewer channel, one `Deliver` per interested node against one
//!   frame per subscriber, priced with the [`cost`] model.
//! - [`hot`] (e): how many publishes one owner can sequence, measured on the real
//!   [`ringcast_core::ChannelLog`].
//!
//! [`cost`] holds the cost model and where each figure comes from; [`chart`] draws the
//! PNGs; [`report`] writes the Markdown tables that `docs/scale.md` quotes.
//!
//! What this is not: a network simulator. Links have a bandwidth and a fixed latency, CPU
//! is a per-operation price measured on the project's 2-core VM, and nodes are symmetric
//! unless a scenario says otherwise. Every scenario is deterministic for a seed, except
//! the wall-clock measurements of (e) and the ring build times of (a), which are labelled.

pub mod balance;
pub mod chart;
pub mod cost;
pub mod fanout;
pub mod hot;
pub mod membership;
pub mod report;
pub mod storm;

use ringcast_core::NodeId;

/// A small deterministic generator (xorshift64*), as in the core's failover simulator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The id of simulated node `i` (`node-0007`).
#[must_use]
pub fn node_id(i: usize) -> NodeId {
    // Invariant: the name is ASCII letters, digits and '-', always a valid node id.
    NodeId::new(&format!("node-{i:04}")).unwrap_or_else(|e| unreachable!("{e}"))
}

/// `n` node ids.
#[must_use]
pub fn node_ids(n: usize) -> Vec<NodeId> {
    (0..n).map(node_id).collect()
}
