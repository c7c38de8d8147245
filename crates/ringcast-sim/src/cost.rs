//! The cost model: a handful of per-operation prices, each measured on this machine by
//! `scripts/bench` (see `docs/benchmarks.md`) or taken from the project's reference
//! measurements, plus the few assumptions no measurement here can give (link bandwidth,
//! etcd commit latency), marked as such. `docs/scale.md` prints this table.

use serde::Serialize;

/// One figure of the model.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub source: &'static str,
}

/// Server CPU per delivery when every delivery is its own `write` (ringcast, 1k
/// subscribers x 100 publishes/s: 4.13 CPU-s per 1M deliveries, in the shared-machine
/// sweep of `docs/benchmarks.json` at commit 695daa4; the quiet machine measured 7.60,
/// as a server that is never starved batches less, `docs/benchmarks.md` finding 1).
pub const CPU_PER_DELIVERY_UNBATCHED_US: f64 = 4.13;
/// Server CPU per delivery when writes batch (ringcast, 1k x 1000/s: 0.51 CPU-s per 1M,
/// the same sweep; on the quiet machine every server saturates there, at 1.00).
pub const CPU_PER_DELIVERY_BATCHED_US: f64 = 0.51;
/// Server RSS per idle subscribed connection (ringcast, 15,000 connections, 1 subscription).
pub const MEMORY_PER_CONNECTION_KIB: f64 = 3.93;
/// The same with 10 subscriptions per connection.
pub const MEMORY_PER_CONNECTION_10_SUBS_KIB: f64 = 5.55;
/// Wire bytes of one 100 B message pushed to a client (JSON envelope included).
pub const WIRE_BYTES_PER_DELIVERY: f64 = 196.0;
/// Bytes of one node-to-node `Deliver` of a 100 B message (assumed equal to the client
/// push: the pre-encoded frame plus a small header).
pub const PEER_FRAME_BYTES: f64 = 220.0;
/// Loopback floor of one small message when 16 are batched per `write` (reference §4.2).
pub const FLOOR_PER_MESSAGE_BATCHED_US: f64 = 0.36;
/// A node's outbound link (assumption: a common cloud NIC; not measured here).
pub const LINK_GBIT_PER_S: f64 = 10.0;
/// New WebSocket upgrades per second per node (`handshakes_per_second` default).
pub const HANDSHAKES_PER_SECOND: u32 = 1000;
/// etcd lease TTL of a node (`ringcast-cluster` membership default).
pub const LEASE_TTL_MS: u64 = 6000;
/// One etcd write committed (assumption: a 3-member etcd in one zone on SSDs; etcd's
/// own guidance puts a commit at a few to tens of milliseconds).
pub const ETCD_COMMIT_MS: u64 = 10;
/// Node-to-node round trip inside one zone (assumption).
pub const PEER_RTT_MS: u64 = 1;

/// Every figure, for the report.
#[must_use]
pub fn figures() -> Vec<Figure> {
    let bench = "docs/benchmarks.md (scripts/bench, this 2-core VM)";
    vec![
        Figure {
            name: "CPU per delivery, unbatched", value: CPU_PER_DELIVERY_UNBATCHED_US, unit: "µs", source: bench
        },
        Figure { name: "CPU per delivery, batched", value: CPU_PER_DELIVERY_BATCHED_US, unit: "µs", source: bench },
        Figure { name: "memory per connection", value: MEMORY_PER_CONNECTION_KIB, unit: "KiB", source: bench },
        Figure {
            name: "memory per connection, 10 subscriptions",
            value: MEMORY_PER_CONNECTION_10_SUBS_KIB,
            unit: "KiB",
            source: bench,
        },
        Figure { name: "wire bytes per 100 B delivery", value: WIRE_BYTES_PER_DELIVERY, unit: "B", source: bench },
        Figure {
            name: "peer Deliver frame, 100 B message",
            value: PEER_FRAME_BYTES,
            unit: "B",
            source: "assumption: client push + header",
        },
        Figure {
            name: "loopback floor per batched message",
            value: FLOOR_PER_MESSAGE_BATCHED_US,
            unit: "µs",
            source: "project reference measurements, §4.2",
        },
        Figure {
            name: "outbound link per node",
            value: LINK_GBIT_PER_S,
            unit: "Gbit/s",
            source: "assumption (not measurable here)",
        },
        Figure {
            name: "handshakes per second per node",
            value: f64::from(HANDSHAKES_PER_SECOND),
            unit: "/s",
            source: "ringcastd default (docs/configuration.md)",
        },
        Figure {
            name: "etcd lease TTL",
            value: LEASE_TTL_MS as f64,
            unit: "ms",
            source: "ringcast-cluster membership default",
        },
        Figure {
            name: "etcd commit",
            value: ETCD_COMMIT_MS as f64,
            unit: "ms",
            source: "assumption (3-member etcd, one zone)",
        },
        Figure { name: "peer round trip", value: PEER_RTT_MS as f64, unit: "ms", source: "assumption (one zone)" },
    ]
}
