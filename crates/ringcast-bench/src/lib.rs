//! `ringcast-bench`: one load generator for ringcast, Redis pub/sub and NATS core.
//!
//! What it is for: the side-by-side benchmark of issue 7 (`scripts/bench`,
//! `docs/benchmarks.md`). Three protocol drivers over raw `TcpStream`s ([`proto`]) so
//! the client side costs the same for every server; identical payloads carrying their
//! scheduled send time and sequence number ([`payload`]); an open-loop publisher and
//! latency from the scheduled time into HDR histograms ([`load`]); who subscribes
//! to which channels and where each publish goes ([`layout`]); server CPU and memory
//! from `/proc` ([`procfs`]); the Markdown/JSON report and the PNG chart ([`report`]);
//! and [`floor`], a null fan-out server that does one send per delivery and nothing
//! else: the floor under all three wherever each delivery needs a send of its own.
//! Two scenarios of their own: [`storm`], the presence storm (a network blip that drops
//! and reconnects every user of many presence channels) counted against the naive cost,
//! and [`scoreboard`], live scores to many viewers with a few slow ones: deliveries,
//! wire bytes with and without deltas, and how stale the slow viewers' scores get
//! (`ringcast_core::delta::apply` rebuilds states from deltas). CI's regression guard
//! is the `ringcast-guard` crate.
//!
//! What it deliberately does not do: start or pin servers (the script does, with
//! `taskset`), or use any client library. It is not a correctness test of ringcast,
//! although every run checks for loss (sequence gaps) and disconnects and is marked
//! invalid when it sees any.

pub mod floor;
pub mod layout;
pub mod load;
pub mod payload;
pub mod procfs;
pub mod proto;
pub mod report;
pub mod scoreboard;
pub mod storm;
