//! # ringcast-core: the pure heart of ringcast
//!
//! Everything in this crate is deterministic: no sockets, no tasks, no clock, no OS
//! randomness. Time enters as [`Millis`] arguments and identities as values, so every
//! behaviour can be unit- and property-tested without a runtime (the sans-IO shape of
//! `quinn-proto`). The I/O crates (`ringcastd`, later the cluster crate) are thin drivers
//! that feed inputs in and act on what comes out.
//!
//! What lives here, top-down along the data path:
//! - [`name`]: validated names ([`ChannelName`], [`NamespaceName`], [`NodeId`], [`ConnId`]).
//! - [`slot`] and [`ring`]: channel -> slot -> owning node, via `hashring` with virtual
//!   nodes, precomputed per membership view.
//! - [`ownership`]: from a membership snapshot, where each slot's requests go, which
//!   vacant slots this node claims and which of its slots it hands off (throttled).
//! - [`namespace`]: per-namespace options (history, limits, policies) and their validation.
//! - [`log`]: one channel's stream: `(epoch, offset)` sequencing, the history window,
//!   idempotency dedup ([`dedup`]), recovery decisions and history pages.
//! - [`latest`]: keep-latest state, the newest message per key (scoreboards).
//! - [`mirror`]: exactly-once, in-order delivery at a subscriber node whatever order
//!   the owner's messages arrive in (gaps are buffered, then filled from history).
//! - [`send_queue`]: a connection's bounded send queue, backpressure policies and gap
//!   notices.
//! - [`pacing`]: how far apart a flusher starts its writes, from how busy it is.
//! - [`presence`]: who is in a channel (debounced join/leave per user), the typing
//!   rate limit and the last-seen table of the connection registry.
//! - [`occupancy`]: whether a channel has subscribers anywhere, debounced, for the
//!   `channel_occupied` / `channel_vacated` webhooks.
//! - [`webhook`]: a node's webhook outbox: bounded queue, one batch in flight, retries
//!   with backoff for a bounded time, then dead letters.
//! - [`caps`]: channel capability patterns carried in client tokens.
//! - [`pattern`]: subscription patterns (`scores:nba:*`, `scores:>`) and their matching.
//! - [`ratelimit`]: token buckets on an injected clock.
//! - [`backoff`]: full-jitter reconnect delays with injected randomness.
//!
//! What does not live here: encoding (see `ringcast-proto`), networking, configuration
//! files, and anything that awaits.

pub mod backoff;
pub mod caps;
pub mod conn_map;
pub mod dedup;
pub mod delta;
pub mod latest;
pub mod log;
pub mod mirror;
pub mod name;
pub mod namespace;
pub mod occupancy;
pub mod ownership;
pub mod pacing;
pub mod pattern;
pub mod position;
pub mod presence;
pub mod ratelimit;
pub mod ring;
pub mod send_queue;
pub mod slot;
pub mod time;
pub mod webhook;

pub use caps::{ChannelPattern, PatternError};
pub use log::{Appended, ChannelLog, HistoryPage, NotRecoveredReason, Recovery};
pub use name::{ChannelName, ConnId, NameError, NamespaceName, NodeId};
pub use namespace::{BackpressurePolicy, NamespaceError, NamespaceOptions, WebhookKind, WebhookSet};
pub use pattern::{Pattern, PatternSyntaxError};
pub use position::{Epoch, Offset, PositionError, StreamPosition};
pub use ratelimit::TokenBucket;
pub use ring::{Ring, RingError};
pub use slot::{Slot, SLOTS};
pub use time::Millis;
