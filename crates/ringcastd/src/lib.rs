//! # ringcastd: the ringcast node
//!
//! A node serves clients on one TCP port (HTTP API and WebSocket at `/ws`) and owns
//! channels: it sequences their publishes, keeps their history and fans messages out to
//! local subscribers. Standalone (no membership) the node is a one-member ring and owns
//! every slot; the cluster layer adds membership and forwarding in front of the same
//! calls.
//!
//! Layout, along the data path:
//! - [`config`]: the typed configuration tree and its layering.
//! - [`server`]: the accept loop and per-connection HTTP/1.1 with limits.
//! - [`http`]: the HTTP API, health, metrics and the WebSocket upgrade.
//! - [`session`]: one task per WebSocket client, over [`lazy_read`] (the socket read
//!   without a resident buffer).
//! - [`router`]: runs each channel operation on the local hub or forwards it to the
//!   slot's owner through [`cluster`] (membership, peer links, forwarding).
//! - [`hub`] and [`outbox`]: channels, their logs and local fan-out into bounded
//!   per-connection queues.
//! - [`metrics`]: Prometheus counters. Tokens and capabilities are `ringcast-auth`'s.
//! - [`node`]: shared state and the serve/drain lifecycle.
//! - [`web`]: `ringcast.js`, the scoreboard demo and the dashboard, compiled in.
//!
//! Pure logic lives in `ringcast-core`; this crate is the I/O around it.

pub mod cluster;
pub mod config;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod lazy_read;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod router;
pub mod server;
pub mod session;
pub mod socket;
pub mod web;
pub mod webhooks;
