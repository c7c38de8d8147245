//! Cluster frames: what nodes say to each other over their QUIC links.
//!
//! The frame types, and in [`codec`] their encoding (length prefix, version byte,
//! bincode 2 with a size limit), the one place bincode is called. `ringcast-cluster`
//! reads and writes them on QUIC streams.
//! Strings and integers are plain here and validated by the receiver (a channel name
//! from a peer is parsed like one from a client), because a peer is input too.
//!
//! Ordering contract: each node sends everything for one peer on one ordered stream.
//! An owner's `Deliver` frames and its replies to a gateway therefore arrive in the
//! order the owner produced them; the gateway relies on that to attach a subscriber
//! at exactly the position the `Subscribed` reply names.
//!
//! Fencing: every frame about a slot carries the slot epoch the sender acts under.
//! Owners refuse requests routed with an epoch newer than their own claim (they are
//! stale); subscriber nodes drop `Deliver` frames whose slot epoch is older than the
//! newest they have seen for that slot (a zombie owner).

pub mod codec;

use bincode::{Decode, Encode};

/// Version of this frame catalogue, sent in `Hello`.
pub const FRAMES_VERSION: u16 = 7;

/// A message's delta form between nodes: a `message` frame carrying a merge patch
/// against the message at `base`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DeltaWire {
    pub base: u64,
    pub frame: String,
}

/// A resume position as sent between nodes (`epoch` absent when the client sent none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SinceWire {
    pub epoch: Option<u64>,
    pub offset: u64,
}

/// How a subscribe's `since` was answered.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum OutcomeWire {
    Fresh,
    Recovered,
    /// `reason` is the wire name (`epoch_changed`, `position_expired`, `position_ahead`).
    NotRecovered {
        reason: String,
        oldest: u64,
        newest: u64,
    },
}

/// One channel's state in a handoff.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ChannelSnapshotWire {
    pub channel: String,
    pub epoch: u64,
    pub top: u64,
    /// `(offset, age in ms, message frame)`, oldest first.
    pub history: Vec<(u64, u64, String)>,
    /// `(idempotency key, payload digest, offset, age in ms)`, oldest first.
    pub dedup: Vec<(String, u64, u64, u64)>,
    /// Nodes with subscribers on the channel, the old owner included if it has some.
    pub interest: Vec<String>,
    /// Keep-latest state: `(key, offset, age in ms, message frame)`.
    pub latest: Vec<(String, u64, u64, String)>,
    /// Whether the old owner told the backend the channel is occupied (occupancy
    /// webhooks); the new owner goes on from there, so nothing is reported twice.
    pub occupied: bool,
    /// Presence users whose `leave` was pending at the old owner: `(user, token info
    /// JSON, ms since their last client left)`; the new owner sends it when the rest of
    /// the grace has passed, unless they come back.
    pub leaving: Vec<(String, Option<String>, u64)>,
    /// Presence: the clients subscribed on every node; the new owner answers for them
    /// (and reports their leaves) until their nodes re-announce them.
    pub members: Vec<PresentWire>,
}

/// Every frame of the cluster protocol.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum PeerFrame {
    /// First frame on a stream: who is speaking. `node` must match the certificate.
    Hello { node: String, version: u16 },

    /// Gateway -> owner: sequence a message.
    /// `client`: a client's publish (held to the channel's `client_publish_rate` by the
    /// owner), not the server API's.
    Publish {
        req: u64,
        slot: u16,
        slot_epoch: u64,
        channel: String,
        data: String,
        idempotency_key: Option<String>,
        client: bool,
        /// The keep-latest key the message updates.
        key: Option<String>,
    },
    /// Gateway -> owner: answer a subscribe (recovery from `since`) and send this node
    /// every later message of the channel (registering a node already registered is a
    /// no-op). `snapshot`: also answer with the keep-latest state at the reply's
    /// position. `member`: the subscribing client joins the channel's presence under the
    /// same lock as the reply, so the owner answers for it as soon as it is subscribed.
    Subscribe {
        req: u64,
        slot: u16,
        slot_epoch: u64,
        channel: String,
        since: Option<SinceWire>,
        snapshot: bool,
        member: Option<MemberWire>,
    },
    /// Gateway -> owner: this node has no subscribers on the channel any more.
    Unsubscribe { slot: u16, slot_epoch: u64, channel: String },
    /// Gateway -> owner: a page of history.
    History { req: u64, slot: u16, slot_epoch: u64, channel: String, before: Option<u64>, limit: u32 },

    /// Owner -> gateway: a publish was sequenced (or was a duplicate of `offset`).
    Acked { req: u64, epoch: u64, offset: u64, duplicate: bool },
    /// Owner -> gateway: the channel's position when the subscribe was served, and the
    /// replay (message frames) when `since` was honoured.
    /// `snapshot`: the keep-latest state (message frames) when asked for.
    Subscribed {
        req: u64,
        epoch: u64,
        offset: u64,
        outcome: OutcomeWire,
        replay: Vec<String>,
        snapshot: Option<Vec<String>>,
    },
    /// Owner -> gateway: a history page (message frames, oldest first).
    HistoryPage {
        req: u64,
        epoch: Option<u64>,
        oldest: u64,
        newest: u64,
        next_before: Option<u64>,
        messages: Vec<String>,
    },
    /// Owner -> gateway: the request was not served. `code` is a client error code's
    /// wire name; `retry` says the gateway should re-route and try again (the slot moved
    /// or is being handed off), which is safe because nothing was sequenced.
    Refused { req: u64, code: String, message: String, retry: bool },

    /// Owner -> interested node: one sequenced message (its pre-encoded push frame).
    /// `delta` (`delta = true` namespaces): the same message as a merge patch against
    /// the message at `base` of the same key, for subscribers that hold it.
    Deliver {
        slot: u16,
        slot_epoch: u64,
        channel: String,
        epoch: u64,
        offset: u64,
        frame: String,
        delta: Option<DeltaWire>,
    },

    /// Old owner -> new owner: the sealed slot's channels. The new owner restores them,
    /// claims the slot by compare-and-swap on `from_epoch`, and answers `HandedOff` (or
    /// `Refused` when the claim failed: the old owner then keeps the slot).
    Handoff { req: u64, slot: u16, from_epoch: u64, channels: Vec<ChannelSnapshotWire> },
    /// New owner -> old owner: the slot is claimed at `epoch` and served from here on.
    HandedOff { req: u64, slot: u16, epoch: u64 },

    /// Owner -> replica: one message of a durable channel, sequenced at (`epoch`,
    /// `offset`) under the slot's fencing epoch, with its idempotency key and payload
    /// digest. The replica stores it and answers `Replicated`; only then does the owner
    /// ack and fan it out.
    Replicate {
        req: u64,
        slot: u16,
        slot_epoch: u64,
        channel: String,
        epoch: u64,
        offset: u64,
        frame: String,
        idempotency_key: Option<String>,
        digest: u64,
        key: Option<String>,
    },
    /// Replica -> owner: the message at `offset` (and everything before it) is held.
    Replicated { req: u64, offset: u64 },
    /// Owner -> new replica: the slot's durable channels (as in a handoff); the replica
    /// replaces what it held for the slot and answers `ReplicaSynced`.
    ReplicaSync { req: u64, slot: u16, slot_epoch: u64, channels: Vec<ChannelSnapshotWire> },
    /// Replica -> owner: the snapshot is installed.
    ReplicaSynced { req: u64, slot: u16 },

    /// Gateway -> owner: this node's clients that subscribed to (`joins`) or left
    /// (`leaves`, connection ids) a presence channel. With `sync`, `joins` is the
    /// node's complete list for the channel (a re-announcement; the owner replaces what
    /// it held for this node and announces no joins).
    Presence { slot: u16, slot_epoch: u64, channel: String, joins: Vec<MemberWire>, leaves: Vec<u64>, sync: bool },
    /// Gateway -> owner: a user is typing (the owner rate-limits and fans it out).
    Typing { slot: u16, slot_epoch: u64, channel: String, user: String, info: Option<String> },
    /// Owner -> interested node: a `join`, `leave` or `typing` push for the channel's
    /// local subscribers (`join_leave`: only those that receive joins and leaves).
    Ephemeral { slot: u16, slot_epoch: u64, channel: String, frame: String, join_leave: bool },
    /// Any node -> every other node: the patterns its clients subscribed to
    /// (`psubscribe`), as changes (`add`, `remove`) or, with `reset`, its complete set
    /// (sent first on every new link, so a restarted or re-linked node converges). An
    /// owner sends a node the `Deliver` of every channel one of its patterns matches.
    /// A non-zero `req` asks for `PatternsAck` once the change applies.
    Patterns { req: u64, reset: bool, add: Vec<String>, remove: Vec<String> },
    /// The `Patterns` change `req` applies to every message sequenced from now on.
    PatternsAck { req: u64 },
    /// Gateway -> owner: a presence query: counts and up to `limit` members, and with
    /// `registry` (a `#user:` channel) the user's last-seen time.
    PresenceQuery { req: u64, slot: u16, slot_epoch: u64, channel: String, limit: u32 },
    /// Owner -> gateway: the answer to `PresenceQuery`.
    PresenceReply { req: u64, clients: u64, users: u64, members: Vec<PresentWire>, last_seen: Option<u64> },
    /// Gateway -> owner: several server-API publishes for channels this owner holds,
    /// sequenced in order; answered by one `PublishedBatch` with a result per item.
    PublishBatch { req: u64, items: Vec<BatchItemWire> },
    /// Owner -> gateway: the results of a `PublishBatch`, in item order.
    PublishedBatch { req: u64, results: Vec<BatchResultWire> },
    /// Gateway -> owner: a keep-latest channel's state.
    State { req: u64, slot: u16, slot_epoch: u64, channel: String },
    /// Owner -> gateway: the state at (`epoch`, `offset`): message frames, newest per key
    /// (`epoch` is `None` for a channel with no stream).
    StateReply { req: u64, epoch: Option<u64>, offset: u64, entries: Vec<String> },
}

/// One publish of a `PublishBatch` (the fields of `Publish`; the server API's).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct BatchItemWire {
    pub slot: u16,
    pub slot_epoch: u64,
    pub channel: String,
    pub data: String,
    pub idempotency_key: Option<String>,
    pub key: Option<String>,
}

/// The result of one batch item: its position, or why it was refused (`retry` as in
/// `Refused`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum BatchResultWire {
    Acked { epoch: u64, offset: u64, duplicate: bool },
    Refused { code: String, message: String, retry: bool },
}

/// A client announced to a channel's owner.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct MemberWire {
    pub conn: u64,
    pub user: String,
    /// The token's `info` claim as JSON text.
    pub info: Option<String>,
}

/// A client in a presence answer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PresentWire {
    pub node: String,
    pub conn: u64,
    pub user: String,
    pub info: Option<String>,
}

/// Fixed overhead counted per frame by [`PeerFrame::size_hint`] (ids, numbers, lengths).
const FRAME_OVERHEAD: usize = 64;

impl PeerFrame {
    /// About how many bytes the frame takes queued and on the wire: its strings' lengths
    /// plus a fixed overhead. Cheap (no encoding), for bounding per-peer queues.
    #[must_use]
    pub fn size_hint(&self) -> usize {
        let strings: usize = match self {
            PeerFrame::Hello { node, .. } => node.len(),
            PeerFrame::Publish { channel, data, idempotency_key, key, .. } => {
                channel.len()
                    + data.len()
                    + idempotency_key.as_ref().map_or(0, String::len)
                    + key.as_ref().map_or(0, String::len)
            }
            PeerFrame::Subscribe { channel, member, .. } => {
                channel.len()
                    + member.as_ref().map_or(0, |m| m.user.len() + m.info.as_ref().map_or(0, String::len) + 16)
            }
            PeerFrame::Unsubscribe { channel, .. } | PeerFrame::History { channel, .. } => channel.len(),
            PeerFrame::Presence { channel, joins, leaves, .. } => {
                channel.len()
                    + joins.iter().map(|m| m.user.len() + m.info.as_ref().map_or(0, String::len) + 16).sum::<usize>()
                    + leaves.len() * 8
            }
            PeerFrame::Typing { channel, user, info, .. } => {
                channel.len() + user.len() + info.as_ref().map_or(0, String::len)
            }
            PeerFrame::Ephemeral { channel, frame, .. } => channel.len() + frame.len(),
            PeerFrame::Patterns { add, remove, .. } => add.iter().chain(remove).map(|p| p.len() + 8).sum(),
            PeerFrame::PresenceQuery { channel, .. } | PeerFrame::State { channel, .. } => channel.len(),
            PeerFrame::PublishBatch { items, .. } => items
                .iter()
                .map(|i| {
                    i.channel.len()
                        + i.data.len()
                        + i.idempotency_key.as_ref().map_or(0, String::len)
                        + i.key.as_ref().map_or(0, String::len)
                        + 24
                })
                .sum(),
            PeerFrame::PublishedBatch { results, .. } => results
                .iter()
                .map(|r| match r {
                    BatchResultWire::Acked { .. } => 24,
                    BatchResultWire::Refused { code, message, .. } => code.len() + message.len() + 8,
                })
                .sum(),
            PeerFrame::StateReply { entries, .. } => entries.iter().map(|m| m.len() + 8).sum(),
            PeerFrame::PresenceReply { members, .. } => {
                members.iter().map(|m| m.node.len() + m.user.len() + m.info.as_ref().map_or(0, String::len) + 16).sum()
            }
            PeerFrame::Acked { .. }
            | PeerFrame::HandedOff { .. }
            | PeerFrame::Replicated { .. }
            | PeerFrame::ReplicaSynced { .. }
            | PeerFrame::PatternsAck { .. } => 0,
            PeerFrame::Replicate { channel, frame, idempotency_key, key, .. } => {
                channel.len()
                    + frame.len()
                    + idempotency_key.as_ref().map_or(0, String::len)
                    + key.as_ref().map_or(0, String::len)
            }
            PeerFrame::Subscribed { replay, snapshot, .. } => {
                replay.iter().chain(snapshot.iter().flatten()).map(|m| m.len() + 8).sum()
            }
            PeerFrame::HistoryPage { messages, .. } => messages.iter().map(|m| m.len() + 8).sum(),
            PeerFrame::Refused { code, message, .. } => code.len() + message.len(),
            PeerFrame::Deliver { channel, frame, delta, .. } => {
                channel.len() + frame.len() + delta.as_ref().map_or(0, |d| d.frame.len() + 8)
            }
            PeerFrame::Handoff { channels, .. } | PeerFrame::ReplicaSync { channels, .. } => channels
                .iter()
                .map(|c| {
                    c.channel.len()
                        + c.history.iter().map(|(_, _, m)| m.len() + 24).sum::<usize>()
                        + c.dedup.iter().map(|(k, ..)| k.len() + 32).sum::<usize>()
                        + c.interest.iter().map(String::len).sum::<usize>()
                        + c.latest.iter().map(|(k, _, _, m)| k.len() + m.len() + 24).sum::<usize>()
                        + c.leaving
                            .iter()
                            .map(|(u, i, _)| u.len() + i.as_ref().map_or(0, String::len) + 16)
                            .sum::<usize>()
                        + c.members
                            .iter()
                            .map(|m| m.node.len() + m.user.len() + m.info.as_ref().map_or(0, String::len) + 16)
                            .sum::<usize>()
                })
                .sum(),
        };
        strings + FRAME_OVERHEAD
    }
}
