//! # ringcast-cluster: the I/O that turns nodes into a cluster
//!
//! - [`membership`]: etcd registration on a lease, the watched membership view, slot
//!   claims by compare-and-swap (the claim's revision is the slot's fencing epoch).
//! - [`tls`] and [`transport`]: the cluster CA, node certificates, and QUIC links with
//!   mutual TLS whose peer identity is the certificate's node id.
//!
//! Decisions (who owns what, when to hand off) live in `ringcast-core`; this crate only
//! performs the I/O they call for.

pub mod membership;
pub mod tls;
pub mod transport;
