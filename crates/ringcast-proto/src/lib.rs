//! # ringcast-proto: what crosses the wire
//!
//! - [`client`]: the WebSocket client protocol (JSON text frames): decoding commands
//!   with precise, client-visible errors, and encoding replies and pushes.
//! - [`cluster`]: the frames nodes exchange over QUIC, and their codec
//!   ([`cluster::codec`]: length prefix, version byte, bounded bincode); the transport
//!   in `ringcast-cluster` drives it over quinn streams.
//! - [`webhook`]: the batches sent to the application's backend and their HMAC
//!   signature.
//! - [`codes`]: the stable [`ErrorCode`]s and WebSocket [`CloseCode`]s, whose tables in
//!   `proto/client.md` are kept in sync by a test.
//!
//! The normative description lives in `proto/client.md`; golden frames under
//! `proto/golden/` are read by the tests in both directions. This crate does no I/O.

pub mod client;
pub mod cluster;
pub mod codes;
pub mod msgpack;
pub mod webhook;

pub use codes::{CloseCode, ErrorCode};
