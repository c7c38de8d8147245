//! The channel hub: this node's channels, as their owner, and its local subscribers.
//!
//! Each channel is a [`ringcast_core::ChannelLog`] plus the outboxes of the local
//! connections subscribed to it, behind one mutex. Everything that must be ordered
//! relative to a channel's stream happens under that lock:
//! - a publish is sequenced, stored in history and pushed to every subscriber's outbox
//!   (one shared, pre-encoded frame; `try`-style pushes that never wait);
//! - a subscribe computes its recovery, queues the `subscribed` reply and the replay, and
//!   joins the subscriber set, so nothing is missed or doubled between replay and live.
//!
//! Channels are spread over shards (by slot) so unrelated channels never contend. A
//! periodic [`Hub::sweep`] expires history and forgets channels that have no subscribers
//! and nothing left to remember; a forgotten channel that is used again starts a new
//! epoch, so resuming readers are told rather than misled.
//!
//! A channel's state has up to two roles besides its local subscribers:
//! - **owner** (`log` is set): this node sequences the channel. Besides local
//!   subscribers, every message goes once to each node in `interest`, as a `Deliver`
//!   frame queued (never awaited) on that node's ordered peer stream, under the lock.
//! - **gateway for a remote owner** (`mirror` is set): messages arrive as `Deliver`
//!   frames and the mirror (`ringcast_core::mirror`) turns them into exactly-once,
//!   in-order pushes to local subscribers.
//!
//! Standalone, this node owns every slot; the router decides which role applies.
//!
//! Pattern subscriptions (the `patterns` submodule) ride on the same machinery: a
//! connection's pattern is attached, as a subscriber, to every channel here it matches
//! (and to each matching channel that appears later), and an owner sends `Deliver`
//! frames to the nodes whose patterns match as well as to the nodes in `interest`.

use crate::metrics::Metrics;
use crate::outbox::{self, Outbox, Pushed};
use crate::webhooks::Webhooks;
use ringcast_core::conn_map::ConnMap;
use ringcast_core::dedup::payload_digest;
use ringcast_core::log::AppendError;
use ringcast_core::mirror::{Mirror, Offer, DEFAULT_MAX_PENDING};
use ringcast_core::occupancy::{Occupancy, OccupancyEvent};
use ringcast_core::ownership::SlotEpoch;
use ringcast_core::presence::{
    ChannelPresence, LastSeen, LeavingUser, Member, PresenceEvent, PresenceStats, TypingGate, TYPING_INTERVAL,
};
use ringcast_core::send_queue::{Alt, Bounds, GapCause, GapNotice, MessagePolicy, QueuedMessage};
use ringcast_core::BackpressurePolicy;
use ringcast_core::NodeId;
use ringcast_core::TokenBucket;
use ringcast_core::WebhookSet;
use ringcast_core::{
    Appended, ChannelLog, ChannelName, ConnId, Epoch, HistoryPage, Millis, NamespaceOptions, NotRecoveredReason,
    Offset, Recovery, Slot, StreamPosition,
};
use ringcast_proto::client::SubscribeOutcome;
use ringcast_proto::client::{
    encode_delta_message, encode_ephemeral, encode_keyed_message, encode_resubscribed, encode_snapshot,
    encode_subscribed, message_data, message_key, EphemeralKind, Since,
};
use ringcast_proto::cluster::{DeltaWire, OutcomeWire, PeerFrame};
use ringcast_proto::webhook::{Event as WebhookEvent, EventType};
use ringcast_proto::ErrorCode;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, info, warn};

mod patterns;
pub use patterns::{PatternRemoved, PatternSubscriber};

/// Number of channel-map shards.
const SHARDS: usize = 64;

/// Hands out epochs for channels whose state starts here: a random 64-bit base chosen
/// at process start plus a counter, so a restarted node never reuses an epoch.
#[derive(Debug)]
pub struct EpochSource {
    base: u64,
    counter: AtomicU64,
}

impl EpochSource {
    #[must_use]
    pub fn new(seed: u64) -> EpochSource {
        EpochSource { base: seed, counter: AtomicU64::new(0) }
    }

    pub fn next(&self) -> Epoch {
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = Epoch::new(self.base.wrapping_add(n)) {
                return e;
            }
        }
    }
}

/// Queues frames on peers' ordered streams. Never waits: `false` means the frame was
/// not queued (no link, or its bounded queue is full) and the caller must degrade.
pub trait PeerSink: Send + Sync + 'static {
    fn send(&self, node: &NodeId, frame: PeerFrame) -> bool;
    /// The slot epoch this node, as the slot's owner, stamps its frames with.
    fn slot_epoch(&self, slot: Slot) -> SlotEpoch;
}

/// What is noted per sealed slot at most: releases count one each, presence updates
/// their members (a take-over lasts a moment).
const MAX_NOTED_WHILE_SEALED: usize = 100_000;

/// A peer's presence update of one channel (see [`Hub::presence_update`]).
struct PresenceUpdate {
    channel: ChannelName,
    ns: NamespaceOptions,
    node: NodeId,
    joins: Vec<(ConnId, Arc<str>, Option<Arc<str>>)>,
    leaves: Vec<ConnId>,
    sync: bool,
    at: Millis,
}

/// What a peer told this node about a channel of a sealed slot (see the
/// `noted_while_sealed` field).
enum SealedNote {
    /// An `Unsubscribe`: `peer` has no subscribers on the channel any more.
    Release {
        channel: ChannelName,
        peer: NodeId,
        at: Millis,
    },
    Presence(Box<PresenceUpdate>),
}

impl SealedNote {
    fn channel(&self) -> &ChannelName {
        match self {
            SealedNote::Release { channel, .. } => channel,
            SealedNote::Presence(u) => &u.channel,
        }
    }

    /// Its share of [`MAX_NOTED_WHILE_SEALED`].
    fn weight(&self) -> usize {
        match self {
            SealedNote::Release { .. } => 1,
            SealedNote::Presence(u) => (u.joins.len() + u.leaves.len()).max(1),
        }
    }
}

/// The notes of one sealed slot, in arrival order, bounded by [`MAX_NOTED_WHILE_SEALED`].
#[derive(Default)]
struct SealedNotes {
    notes: Vec<SealedNote>,
    weight: usize,
}

impl SealedNotes {
    /// Notes `n`; false (and not noted) when the bound is reached.
    fn push(&mut self, n: SealedNote) -> bool {
        let weight = n.weight();
        if self.weight + weight > MAX_NOTED_WHILE_SEALED {
            return false;
        }
        self.weight += weight;
        self.notes.push(n);
        true
    }
}

/// Takes the notes of `channel`, in order.
fn take_noted(noted: &mut HashMap<Slot, SealedNotes>, channel: &ChannelName) -> Vec<SealedNote> {
    let slot = Slot::of(channel);
    let Some(n) = noted.get_mut(&slot) else { return Vec::new() };
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut n.notes).into_iter().partition(|u| u.channel() == channel);
    n.weight = rest.iter().map(SealedNote::weight).sum();
    n.notes = rest;
    if n.notes.is_empty() {
        noted.remove(&slot);
    }
    mine
}

/// Keeps `note` for the last unseal of its channel's slot (`noted` is the notes' lock,
/// held); past the bound the note is dropped with a warning.
fn keep_noted(noted: &mut HashMap<Slot, SealedNotes>, note: SealedNote) {
    let (channel, what, node) = match &note {
        SealedNote::Release { channel, peer, .. } => (channel.clone(), "a release", peer.clone()),
        SealedNote::Presence(u) => (u.channel.clone(), "a presence update", u.node.clone()),
    };
    if !noted.entry(Slot::of(&channel)).or_default().push(note) {
        warn!(%channel, %node, "too many notes while the slot changes owner; {what} dropped");
    }
}

/// Users one node remembers the last-seen time of (the registry channels it owns).
pub const LAST_SEEN_CAPACITY: usize = 100_000;
/// Users a channel's typing gate tracks at once (those who typed in the last second).
const TYPING_GATE_CAPACITY: usize = 10_000;

struct ChannelState {
    /// Owner role: the stream. `None` when another node owns the channel.
    log: Option<ChannelLog<Utf8Bytes>>,
    /// Owner role: nodes with subscribers on this channel.
    interest: BTreeSet<NodeId>,
    /// Gateway role: delivery position of the remote owner's stream.
    mirror: Option<Mirror<Msg>>,
    /// Gateway role: this node asked the remote owner for the channel's messages.
    remote_interest: bool,
    /// Gateway role: subscribes sent to the remote owner and not yet answered. While
    /// one is in flight the interest it registers must not be released: its subscriber
    /// is not in `subscribers` yet.
    subscribing: u16,
    /// In connection order, so a fan-out walks them the way their memory was allocated
    /// (`ringcast_core::conn_map`).
    subscribers: ConnMap<Subscriber>,
    /// Owner role, durable channels: messages sequenced but not yet held by the replica,
    /// in offset order; fanned out when committed.
    uncommitted: VecDeque<(StreamPosition, Msg)>,
    /// Replica role: this node's copy of a durable channel owned elsewhere.
    replica: Option<ChannelLog<Utf8Bytes>>,
    /// Owner role: the channel's budget for client publishes (namespace
    /// `client_publish_rate`); `None` until a client first publishes.
    client_publishes: Option<TokenBucket>,
    /// Owner role, presence namespaces: every client subscribed anywhere.
    presence: Option<ChannelPresence>,
    /// Owner role: the typing rate limit; `None` until someone types.
    typing: Option<TypingGate>,
    /// Owner role: whether presence changes are pushed as `join`/`leave` (namespace
    /// `join_leave`, noted when the presence was created).
    join_leave: bool,
    /// Owner role: the nodes whose pattern subscriptions match the channel, as of a
    /// generation of the peers' pattern table (`patterns`).
    pattern_nodes: Option<(u64, Vec<NodeId>)>,
    /// Owner role: the webhook events the namespace selected (noted whenever the
    /// owner's log is used).
    webhooks: WebhookSet,
    /// Owner role, namespaces with occupancy webhooks: what the backend was told.
    occupancy: Occupancy,
    /// Set by the sweeper when it drops the channel from its shard; a caller holding a
    /// stale handle retries with a fresh one.
    removed: bool,
}

impl ChannelState {
    /// The channel's presence, created under the namespace's options.
    fn presence_mut(&mut self, ns: &NamespaceOptions) -> &mut ChannelPresence {
        self.join_leave = ns.join_leave;
        let p = self.presence.get_or_insert_with(|| ChannelPresence::new(ns.presence_grace));
        p.set_grace(ns.presence_grace);
        p
    }

    /// Gateway: when no local subscriber is left, forgets the mirror; and when no
    /// subscribe is in flight either, the remote interest. Returns whether that interest
    /// was held (the owner must be told).
    fn release_if_unfollowed(&mut self) -> bool {
        if !self.subscribers.is_empty() || self.log.is_some() {
            return false;
        }
        self.mirror = None;
        self.subscribing == 0 && std::mem::take(&mut self.remote_interest)
    }

    /// Local subscribers that are presence members, as `(connection, user, info)`.
    fn local_members(&self) -> Vec<(ConnId, Arc<str>, Option<Arc<str>>)> {
        self.subscribers
            .iter()
            .filter_map(|(conn, s)| s.member().map(|m| (*conn, m.user.clone(), m.info.clone())))
            .collect()
    }
}

struct Channel {
    state: Mutex<ChannelState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its state consistent at each step, so a panic
    // elsewhere does not make the data unusable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A local connection subscribing to a channel: who it is, where its frames go and how
/// (its namespace's backpressure policy), the position it resumes after, and the command
/// id its `subscribed` reply echoes.
#[derive(Debug, Clone)]
pub struct LocalSubscriber {
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
    pub policy: MessagePolicy,
    pub since: Option<Since>,
    /// The command its `subscribed` reply echoes; `None` for the server's own
    /// subscription of a connection to its registry channel (a push).
    pub reply_id: Option<u64>,
    /// Presence namespaces: who the subscriber is, for the channel's presence.
    pub member: Option<MemberTag>,
    /// Whether it receives `join` and `leave` pushes.
    pub join_leave: bool,
    /// Keep-latest channels: send the state (`snapshot`) after the reply and replay.
    pub snapshot: bool,
    /// `delta` namespaces: the client applies merge patches ([`Msg::alt`]).
    pub delta: bool,
    /// A channel resumed for a pattern subscription (`psubscribe` with `since`): the
    /// subscriber is attached as the pattern's, not as a subscription of its own.
    pub pattern: bool,
}

/// A local client as presence shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberTag {
    /// The token's `sub`; empty for anonymous clients.
    pub user: Arc<str>,
    /// The token's `info` claim (JSON text).
    pub info: Option<Arc<str>>,
}

/// A subscriber in a channel's fan-out: one per connection and channel. A channel's map
/// of them is most of the memory of every subscription beyond a connection's first, so
/// an entry is 40 bytes with its key: the bounds in 32 bits ([`PackedPolicy`]) and what
/// few subscribers carry in one box ([`Rare`]). What a delivery reads (the outbox, the
/// policy and the flags) is in the entry itself: no box is loaded for a message.
#[derive(Debug)]
struct Subscriber {
    outbox: Arc<Outbox>,
    policy: PackedPolicy,
    join_leave: bool,
    delta: bool,
    /// Subscribed to the channel itself; false when attached for a pattern subscription
    /// (which gets messages only: no presence, ephemeral pushes or deltas).
    direct: bool,
    /// `rare` holds a `caught_up_to`: the fan-out reads the box only then.
    catching_up: bool,
    rare: Option<Box<Rare>>,
}

/// The parts of a [`Subscriber`] that few have.
#[derive(Debug)]
struct Rare {
    /// Presence namespaces only.
    member: Option<MemberTag>,
    /// Gateway: the position the subscriber was attached at while the mirror was still
    /// behind it (waiting on a gap). What the mirror releases up to there, the
    /// subscriber already has from its replay; cleared once the stream passes it.
    caught_up_to: Option<StreamPosition>,
}

/// A [`MessagePolicy`] in 12 bytes instead of 24. The configuration caps a connection's
/// bounds, and with them every namespace's share, at `u32::MAX`
/// ([`crate::config::MAX_SEND_QUEUE`]), so nothing is lost; a larger bound (only
/// possible in a test) is kept as `u32::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedPolicy {
    messages: u32,
    bytes: u32,
    policy: BackpressurePolicy,
}

impl PackedPolicy {
    fn of(p: MessagePolicy) -> PackedPolicy {
        let bound = |b: usize| u32::try_from(b).unwrap_or(u32::MAX);
        PackedPolicy { messages: bound(p.bounds.messages), bytes: bound(p.bounds.bytes), policy: p.policy }
    }

    fn get(self) -> MessagePolicy {
        MessagePolicy {
            policy: self.policy,
            bounds: Bounds { messages: self.messages as usize, bytes: self.bytes as usize },
        }
    }
}

impl Subscriber {
    /// `caught_up_to`: see [`Rare::caught_up_to`].
    fn of(sub: &LocalSubscriber, caught_up_to: Option<StreamPosition>) -> Subscriber {
        let member = sub.member.clone();
        Subscriber {
            outbox: sub.outbox.clone(),
            policy: PackedPolicy::of(sub.policy),
            join_leave: sub.join_leave,
            delta: sub.delta,
            direct: !sub.pattern,
            catching_up: caught_up_to.is_some(),
            rare: (member.is_some() || caught_up_to.is_some()).then(|| Box::new(Rare { member, caught_up_to })),
        }
    }

    /// A connection attached to a channel for one of its pattern subscriptions.
    fn for_pattern(outbox: Arc<Outbox>, policy: MessagePolicy) -> Subscriber {
        Subscriber {
            outbox,
            policy: PackedPolicy::of(policy),
            join_leave: false,
            delta: false,
            direct: false,
            catching_up: false,
            rare: None,
        }
    }

    fn member(&self) -> Option<&MemberTag> {
        self.rare.as_ref()?.member.as_ref()
    }
}

/// The fan-out's check of [`Rare::caught_up_to`]: whether the subscriber already has the
/// message at `position` from its replay. Once the stream passes that position it is
/// forgotten (and the box with it when it holds nothing else).
fn already_replayed(catching_up: &mut bool, rare: &mut Option<Box<Rare>>, position: StreamPosition) -> bool {
    if !*catching_up {
        return false;
    }
    let at = rare.as_ref().and_then(|r| r.caught_up_to);
    if at.is_some_and(|at| position.epoch == at.epoch && position.offset <= at.offset) {
        return true;
    }
    *catching_up = false;
    match rare {
        Some(r) if r.member.is_some() => r.caught_up_to = None,
        _ => *rare = None,
    }
    false
}

/// A channel's presence as its owner holds it.
#[derive(Debug, Clone)]
pub struct PresenceView {
    pub stats: PresenceStats,
    pub members: Vec<Member>,
}

/// One publish, as every layer (session or HTTP, router, cluster, hub) passes it on.
#[derive(Debug, Clone, Copy)]
pub struct PublishRequest<'a> {
    pub channel: &'a ChannelName,
    pub ns: &'a NamespaceOptions,
    pub data: &'a RawValue,
    pub idempotency_key: Option<&'a str>,
    pub origin: Origin,
    /// The keep-latest key the message updates.
    pub key: Option<&'a str>,
}

impl PublishRequest<'_> {
    /// The key the log records: the given one, or in a keep-latest namespace the empty
    /// key (the channel's single latest message).
    fn state_key(&self) -> Option<&str> {
        self.key.or(self.ns.keep_latest.then_some(""))
    }
}

/// A sequenced message on its way to subscribers: the `message` frame and, in `delta`
/// namespaces, the same message as a merge patch against the previous message of its
/// key (written to subscribers that asked for deltas and hold that base).
#[derive(Debug, Clone)]
pub struct Msg {
    pub frame: Utf8Bytes,
    pub alt: Option<Alt<Utf8Bytes>>,
}

impl From<Utf8Bytes> for Msg {
    fn from(frame: Utf8Bytes) -> Msg {
        Msg { frame, alt: None }
    }
}

/// The delta form of the message at `position` (data `data`, keep-latest `key`) against
/// `prev`, the key's previous message: `None` when there is none, either version is not
/// a JSON object, or the patch would not be smaller ([`ringcast_core::delta::diff`]).
fn delta_of(
    channel: &ChannelName,
    position: StreamPosition,
    key: &str,
    prev: Option<(Offset, Utf8Bytes)>,
    data: &RawValue,
) -> Option<Alt<Utf8Bytes>> {
    let (base, prev) = prev?;
    let old: serde_json::Value = serde_json::from_str(message_data(prev.as_str())?).ok()?;
    let new: serde_json::Value = serde_json::from_str(data.get()).ok()?;
    let patch = ringcast_core::delta::diff(&old, &new)?;
    Some(Alt { base, frame: Utf8Bytes::from(encode_delta_message(channel, position, key, base, &patch)) })
}

/// Who asked for a publish: clients are held to the channel's `client_publish_rate`,
/// the server API is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Api,
}

/// A publish that was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub position: StreamPosition,
    /// True when the idempotency window answered with an earlier position.
    pub duplicate: bool,
}

/// What a durable publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurableAppend {
    /// Already committed (a retry answered from the idempotency window).
    Committed(Published),
    /// Sequenced at `position`, not yet committed. `duplicate`: a retry of a message
    /// still in flight (nothing was sent); `sent`: the `Replicate` was queued.
    Pending { position: StreamPosition, duplicate: bool, sent: bool },
    /// Nothing was done: the slot's replica is being rebuilt; try again shortly.
    Paused,
}

/// What [`Hub::unsubscribe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unsubscribed {
    /// The connection was subscribed.
    pub removed: bool,
    /// It was this node's last subscriber of a remote channel: tell the owner.
    pub release: bool,
    /// It was a presence member of a channel owned elsewhere: tell the owner it left.
    pub member_elsewhere: bool,
}

/// Summary of one channel, for operators.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub top: Option<StreamPosition>,
    pub history_len: usize,
    pub local_subscribers: usize,
}

/// This node's channels.
pub struct Hub {
    me: NodeId,
    shards: Vec<Mutex<HashMap<ChannelName, Arc<Channel>>>>,
    /// When users were last online, for the registry channels this node owns.
    last_seen: Mutex<LastSeen>,
    epochs: EpochSource,
    metrics: Arc<Metrics>,
    peers: OnceLock<Arc<dyn PeerSink>>,
    /// Slots changing owner (being handed off, or claimed or taken over and not yet
    /// installed here): publishes and subscribes on their channels are refused
    /// (`unavailable`, retried by the caller after re-routing). Checked under each
    /// channel's lock, so the snapshot, which takes the same locks after sealing, holds
    /// every message sequenced before the seal and none after. Counted: the tasks that
    /// seal a slot (a handoff out, a take-over, a claim) can overlap, and the slot stays
    /// sealed until each has released its seal.
    sealed: Vec<std::sync::atomic::AtomicU32>,
    /// `Unsubscribe`s and presence updates received for channels of sealed slots, per
    /// slot, in order. A node that sees a take-over's claim before the new owner has
    /// installed the slot sends them there, and nothing repeats them: dropped, the
    /// interest and presence the handoff carries would bring back that node's interest
    /// and its members that left, for good. A handoff that fails leaves the old owner
    /// with the slot, and the senders never see a move. So they are applied, in order
    /// and under each channel's lock, when the slot's last seal is released (or before
    /// a peer's subscribe or presence update that reaches the channel first, see
    /// `Hub::apply_earlier_notes`), to the channels this node then sequences; for the
    /// others (the slot was handed off) they are dropped, as their nodes repeat them to
    /// the new owner when they see the move.
    noted_while_sealed: Mutex<HashMap<Slot, SealedNotes>>,
    /// Slots whose replica is being (re)built: durable publishes wait. Checked under
    /// each channel's lock, so the replica's snapshot (taken after setting it) holds
    /// every message sequenced before and none after.
    replica_paused: Vec<std::sync::atomic::AtomicBool>,
    /// Pattern subscriptions: this node's, and its peers' (`patterns`).
    patterns: patterns::Patterns,
    /// The webhook sender, when `[webhooks]` has a URL.
    webhooks: OnceLock<Arc<Webhooks>>,
}

/// One channel of a slot being handed off.
#[derive(Debug)]
pub struct ChannelHandoff {
    pub channel: ChannelName,
    pub log: ringcast_core::log::LogSnapshot<Utf8Bytes>,
    pub interest: Vec<NodeId>,
    /// Whether the backend was told the channel is occupied (occupancy webhooks); `None`
    /// when taken from a replica after a crash, where nobody knows.
    pub occupied: Option<bool>,
    /// Presence users whose `leave` is pending (the rest of their grace goes with them).
    pub leaving: Vec<LeavingUser>,
    /// Presence: the clients subscribed on every node, so the new owner answers for them
    /// (and reports their leaves) before their nodes re-announce them.
    pub members: Vec<Member>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("epochs", &self.epochs).finish_non_exhaustive()
    }
}

impl Hub {
    #[must_use]
    pub fn new(me: NodeId, epochs: EpochSource, metrics: Arc<Metrics>) -> Hub {
        Hub {
            me,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            last_seen: Mutex::new(LastSeen::new(LAST_SEEN_CAPACITY)),
            epochs,
            metrics,
            peers: OnceLock::new(),
            sealed: Slot::all().map(|_| std::sync::atomic::AtomicU32::new(0)).collect(),
            noted_while_sealed: Mutex::new(HashMap::new()),
            replica_paused: Slot::all().map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
            patterns: patterns::Patterns::default(),
            webhooks: OnceLock::new(),
        }
    }

    /// Connects the hub to the node's webhook sender (once, at start-up).
    pub fn set_webhooks(&self, webhooks: Arc<Webhooks>) {
        let _ = self.webhooks.set(webhooks);
    }

    fn is_sealed(&self, channel: &ChannelName) -> bool {
        self.slot_sealed(Slot::of(channel))
    }

    /// Whether `slot` is sealed (see the `sealed` field).
    pub fn slot_sealed(&self, slot: Slot) -> bool {
        self.sealed[usize::from(slot.get())].load(Ordering::SeqCst) > 0
    }

    /// Seals a slot (see the `sealed` field). Every seal is released once, with
    /// [`Hub::unseal`].
    pub fn seal(&self, slot: Slot) {
        self.sealed[usize::from(slot.get())].fetch_add(1, Ordering::SeqCst);
    }

    /// Releases one seal of a slot; the last release unseals it (a release without a
    /// seal changes nothing).
    pub fn unseal(&self, slot: Slot) {
        let count = &self.sealed[usize::from(slot.get())];
        if count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) == Ok(1) {
            self.apply_noted(slot);
        }
    }

    /// Pauses or resumes `slot`'s durable publishes (see the `replica_paused` field).
    pub fn set_replica_paused(&self, slot: Slot, paused: bool) {
        self.replica_paused[usize::from(slot.get())].store(paused, Ordering::SeqCst);
    }

    /// Every channel with state here (the shards are locked one at a time).
    fn all_cells(&self) -> Vec<(ChannelName, Arc<Channel>)> {
        self.cells_where(|_| true)
    }

    /// The channels with state here whose names pass `select`.
    fn cells_where(&self, select: impl Fn(&ChannelName) -> bool) -> Vec<(ChannelName, Arc<Channel>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(lock(shard).iter().filter(|(name, _)| select(name)).map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    /// The channels of `slot` that have state here.
    fn slot_cells(&self, slot: Slot) -> Vec<(ChannelName, Arc<Channel>)> {
        lock(&self.shards[usize::from(slot.get()) % SHARDS])
            .iter()
            .filter(|(name, _)| Slot::of(name) == slot)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Old owner: everything needed to continue `slot`'s channels elsewhere. Call after
    /// sealing the slot. `me` joins a channel's interest when it has local subscribers.
    pub fn snapshot_slot(&self, slot: Slot, me: &NodeId, now: Millis) -> Vec<ChannelHandoff> {
        let mut out = Vec::new();
        for (channel, cell) in self.slot_cells(slot) {
            let mut st = lock(&cell.state);
            let local = !st.subscribers.is_empty();
            if st.log.is_none() {
                continue;
            }
            let mut interest: Vec<NodeId> = st.interest.iter().cloned().collect();
            if local {
                interest.push(me.clone());
            }
            // A pending vacancy is reported now; the new owner inherits the rest.
            if let Some(event) = st.occupancy.flush() {
                self.emit_occupancy(&channel, event);
            }
            let occupied = Some(!st.occupancy.is_vacant());
            let leaving = st.presence.as_ref().map(|p| p.pending_leaves(now)).unwrap_or_default();
            let members = st.presence.as_ref().map(|p| p.members(usize::MAX)).unwrap_or_default();
            if let Some(log) = st.log.as_mut() {
                out.push(ChannelHandoff { channel, log: log.snapshot(now), interest, occupied, leaving, members });
            }
        }
        out
    }

    /// New owner: installs handed-off channels. Local subscribers that were following a
    /// mirror, or a stale log of the channel this node still held, first get what they
    /// had not yet received, from the snapshot's history (a `gap` for what it no longer holds).
    pub fn install(
        &self,
        channels: Vec<ChannelHandoff>,
        me: &NodeId,
        ns_of: impl Fn(&ChannelName) -> Option<NamespaceOptions>,
        now: Millis,
    ) {
        for h in channels {
            let Some(ns) = ns_of(&h.channel) else { continue };
            self.with_channel(&h.channel, |st| {
                let top = StreamPosition { epoch: h.log.epoch, offset: h.log.top };
                let mut interest: BTreeSet<NodeId> = h.interest.into_iter().filter(|n| n != me).collect();
                let replaced = st.log.take();
                if let Some(old) = &replaced {
                    // A stale log (this node lost the slot without a handoff and has not
                    // seen the view that says so yet), or one started while the slot was
                    // unsealed. The nodes that follow it keep getting the channel.
                    info!(channel = %h.channel, replaced = ?old.top(), installed = ?top, "replacing a stale log of the channel with the installed one");
                    interest.append(&mut st.interest);
                }
                // Local subscribers followed a mirror, or the replaced log up to its top.
                let followed = st.mirror.take().or_else(|| {
                    let local = !st.subscribers.is_empty();
                    replaced.as_ref().filter(|_| local).map(|l| Mirror::new(l.top(), DEFAULT_MAX_PENDING))
                });
                match followed {
                    // They followed another stream: it did not survive.
                    Some(mirror) if mirror.position().epoch != top.epoch => self.announce_restart(&h.channel, st, top),
                    Some(mirror) => {
                        st.mirror = Some(mirror);
                        let oldest = h.log.history.first().map_or(top.offset.next(), |(o, _, _)| *o);
                        let history = h.log.history.iter().map(|(offset, _, frame)| {
                            (StreamPosition { epoch: top.epoch, offset: *offset }, Msg::from(frame.clone()))
                        });
                        self.catch_up_mirror(&h.channel, st, Some(oldest), history, now);
                        st.mirror = None;
                    }
                    None => {}
                }
                st.log = Some(restored_log(h.log, &ns, now));
                st.uncommitted.clear();
                st.interest = interest;
                st.remote_interest = false;
                st.webhooks = ns.webhook_set();
                st.occupancy = match h.occupied {
                    _ if !st.webhooks.occupancy => Occupancy::Vacant,
                    Some(occupied) => Occupancy::inherited(occupied),
                    None => Occupancy::after_failover(now),
                };
                self.observe_occupancy(&h.channel, st, now);
                // Presence goes on from the old owner's: the leaves it had pending and
                // the other nodes' clients (which those nodes re-announce when they see
                // the slot move), then our own clients as they are now.
                if ns.presence {
                    let p = st.presence_mut(&ns);
                    p.adopt_leaves(h.leaving, now);
                    let mut by_node: BTreeMap<NodeId, Vec<_>> = BTreeMap::new();
                    for m in h.members.into_iter().filter(|m| m.node != *me) {
                        by_node.entry(m.node).or_default().push((m.conn, m.user, m.info));
                    }
                    for (node, clients) in by_node {
                        // Adding to a fresh presence announces nothing.
                        let _ = p.sync_node(&node, clients, now);
                    }
                }
                self.sync_own_presence(&h.channel, st, &ns, now);
            });
        }
    }

    /// Old owner after a completed handoff: channels of `slot` become mirrors at their
    /// tops (the new owner has this node in their interest sets when it has local
    /// subscribers). The slot stays sealed: the caller unseals it once its route table
    /// names the new owner, so no request can recreate the channel here meanwhile.
    pub fn demote_slot(&self, slot: Slot) {
        for (channel, cell) in self.slot_cells(slot) {
            let mut st = lock(&cell.state);
            if let Some(log) = st.log.take() {
                debug!(%channel, top = ?log.top(), "no longer sequenced here");
                st.interest.clear();
                st.presence = None;
                st.typing = None;
                st.occupancy = Occupancy::Vacant;
                // Messages not committed here went with the snapshot; the new owner
                // delivers them (to this node's subscribers too, through the mirror).
                st.uncommitted.clear();
                // A mirror already following the new owner (subscribers that attached
                // there while this node still held the old log: the handoff's outcome
                // came late) knows exactly what they were given. Replacing it with one at
                // the old log's top would replay what they have, or skip what they lack.
                if st.mirror.is_none() {
                    let local = !st.subscribers.is_empty();
                    st.mirror = local.then(|| Mirror::new(log.top(), DEFAULT_MAX_PENDING));
                    st.remote_interest = local;
                }
            }
        }
    }

    /// Connects the hub to the cluster's peer links (once, at start-up).
    pub fn set_peers(&self, peers: Arc<dyn PeerSink>) {
        let _ = self.peers.set(peers);
    }

    fn send_peer(&self, node: &NodeId, frame: PeerFrame) -> bool {
        self.peers.get().is_some_and(|p| p.send(node, frame))
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, Arc<Channel>>> {
        &self.shards[usize::from(Slot::of(channel).get()) % SHARDS]
    }

    /// Runs `f` on the channel's state, creating the channel if needed.
    fn with_channel<R>(&self, channel: &ChannelName, f: impl FnOnce(&mut ChannelState) -> R) -> R {
        let mut f = Some(f);
        loop {
            let mut created = false;
            let cell = {
                let mut shard = lock(self.shard(channel));
                shard
                    .entry(channel.clone())
                    .or_insert_with(|| {
                        created = true;
                        self.metrics.channels.fetch_add(1, Ordering::Relaxed);
                        Arc::new(Channel {
                            state: Mutex::new(ChannelState {
                                log: None,
                                interest: BTreeSet::new(),
                                mirror: None,
                                remote_interest: false,
                                subscribing: 0,
                                subscribers: ConnMap::default(),
                                uncommitted: VecDeque::new(),
                                replica: None,
                                client_publishes: None,
                                presence: None,
                                typing: None,
                                join_leave: false,
                                pattern_nodes: None,
                                webhooks: WebhookSet::default(),
                                occupancy: Occupancy::Vacant,
                                removed: false,
                            }),
                        })
                    })
                    .clone()
            };
            let mut st = lock(&cell.state);
            if st.removed {
                continue;
            }
            if created {
                self.attach_patterns(channel, &mut st);
            }
            // Invariant: `f` is taken exactly once, on the iteration that returns.
            if let Some(f) = f.take() {
                return f(&mut st);
            }
        }
    }

    /// Runs `f` on the channel's state if the channel exists.
    fn with_existing<R>(&self, channel: &ChannelName, f: impl FnOnce(&mut ChannelState) -> R) -> Option<R> {
        let cell = lock(self.shard(channel)).get(channel).cloned()?;
        let mut st = lock(&cell.state);
        (!st.removed).then(|| f(&mut st))
    }

    /// The channel's log, created in a fresh epoch if this node did not own it yet.
    fn owned_log<'a>(
        &self,
        channel: &ChannelName,
        st: &'a mut ChannelState,
        ns: &NamespaceOptions,
    ) -> &'a mut ChannelLog<Utf8Bytes> {
        if st.log.is_none() {
            // Noted once per stream, not per publish (`install` notes it for a restored one).
            st.webhooks = ns.webhook_set();
        }
        st.log.get_or_insert_with(|| {
            let epoch = self.epochs.next();
            debug!(%channel, epoch = epoch.get(), "the channel's stream starts here in a new epoch");
            new_log(epoch, ns)
        })
    }

    /// Owner: sequences a publish and fans it out to local subscribers and to every
    /// interested node (under `slot_epoch`). A client publish beyond the channel's
    /// `client_publish_rate` is refused with `rate_limited` (a retry with the same
    /// idempotency key is answered from the window first, free).
    pub fn publish(&self, p: &PublishRequest<'_>, now: Millis, slot_epoch: SlotEpoch) -> Result<Published, ErrorCode> {
        let PublishRequest { channel, ns, data, idempotency_key, origin, key } = *p;
        let digest = payload_digest(data.get().as_bytes());
        self.with_channel(channel, |st| {
            if self.is_sealed(channel) {
                return Err(ErrorCode::Unavailable);
            }
            self.check_client_rate(st, ns, idempotency_key, origin, now)?;
            let log = self.owned_log(channel, st, ns);
            let prev = self.delta_base(log, ns, p.state_key(), now);
            let appended = log
                .append_keyed(now, idempotency_key, digest, p.state_key(), |pos| {
                    Utf8Bytes::from(encode_keyed_message(channel, pos, key, data))
                })
                .map_err(append_error)?;
            match appended {
                Appended::Duplicate { position } => {
                    self.metrics.publish_duplicates.fetch_add(1, Ordering::Relaxed);
                    Ok(Published { position, duplicate: true })
                }
                Appended::Fresh { position, payload } => {
                    let msg = self.with_delta(channel, position, p.state_key(), prev, data, payload);
                    self.fan_out_owned(channel, st, position, &msg, (slot_epoch, now));
                    Ok(Published { position, duplicate: false })
                }
            }
        })
    }

    /// Owner, durable channel: sequences a publish without committing it and queues its
    /// `Replicate` (request `req`) to `replica` under the channel lock, so replicas
    /// receive a channel's messages in offset order. Readers and subscribers see it
    /// only after [`Hub::commit`].
    pub fn publish_durable(
        &self,
        p: &PublishRequest<'_>,
        now: Millis,
        (replica, replica_epoch): (&NodeId, SlotEpoch),
        req: u64,
    ) -> Result<DurableAppend, ErrorCode> {
        let PublishRequest { channel, ns, data, idempotency_key, origin, key } = *p;
        let digest = payload_digest(data.get().as_bytes());
        self.with_channel(channel, |st| {
            if self.is_sealed(channel) {
                return Err(ErrorCode::Unavailable);
            }
            if self.replica_paused[usize::from(Slot::of(channel).get())].load(Ordering::SeqCst) {
                return Ok(DurableAppend::Paused);
            }
            self.check_client_rate(st, ns, idempotency_key, origin, now)?;
            let log = self.owned_log(channel, st, ns);
            let committed = log.top().offset;
            let prev = self.delta_base(log, ns, p.state_key(), now);
            let appended = log
                .append_pending_keyed(now, idempotency_key, digest, p.state_key(), |pos| {
                    Utf8Bytes::from(encode_keyed_message(channel, pos, key, data))
                })
                .map_err(append_error)?;
            match appended {
                Appended::Duplicate { position } if position.offset <= committed => {
                    self.metrics.publish_duplicates.fetch_add(1, Ordering::Relaxed);
                    Ok(DurableAppend::Committed(Published { position, duplicate: true }))
                }
                Appended::Duplicate { position } => {
                    self.metrics.publish_duplicates.fetch_add(1, Ordering::Relaxed);
                    Ok(DurableAppend::Pending { position, duplicate: true, sent: false })
                }
                Appended::Fresh { position, payload } => {
                    let sent = self.send_peer(
                        replica,
                        PeerFrame::Replicate {
                            req,
                            slot: Slot::of(channel).get(),
                            slot_epoch: replica_epoch.0,
                            channel: channel.as_str().to_owned(),
                            epoch: position.epoch.get(),
                            offset: position.offset.0,
                            frame: payload.as_str().to_owned(),
                            idempotency_key: idempotency_key.map(str::to_owned),
                            digest,
                            key: p.state_key().map(str::to_owned),
                        },
                    );
                    let msg = self.with_delta(channel, position, p.state_key(), prev, data, payload);
                    st.uncommitted.push_back((position, msg));
                    Ok(DurableAppend::Pending { position, duplicate: false, sent })
                }
            }
        })
    }

    /// Owner, durable channel: the replica holds everything up to `offset`: commit it and
    /// fan out what became visible, in order (under `slot_epoch`). Returns the committed
    /// position.
    pub fn commit(
        &self,
        channel: &ChannelName,
        offset: Offset,
        slot_epoch: SlotEpoch,
        now: Millis,
    ) -> Option<StreamPosition> {
        self.with_existing(channel, |st| self.commit_locked(channel, st, offset, (slot_epoch, now))).flatten()
    }

    fn commit_locked(
        &self,
        channel: &ChannelName,
        st: &mut ChannelState,
        offset: Offset,
        (slot_epoch, now): (SlotEpoch, Millis),
    ) -> Option<StreamPosition> {
        let log = st.log.as_mut()?;
        let before = log.top();
        log.commit_to(offset);
        let top = log.top();
        while st.uncommitted.front().is_some_and(|(p, _)| p.epoch != top.epoch || p.offset <= top.offset) {
            if let Some((position, msg)) = st.uncommitted.pop_front() {
                // Only what this commit made visible: never a message fanned out before.
                if position.epoch == top.epoch && position.epoch == before.epoch && position.offset > before.offset {
                    self.fan_out_owned(channel, st, position, &msg, (slot_epoch, now));
                }
            }
        }
        Some(top)
    }

    /// Owner: commits everything sequenced in `slot`'s channels (a new replica was
    /// given all of it in its snapshot).
    pub fn commit_slot(&self, slot: Slot, slot_epoch: SlotEpoch, now: Millis) {
        for (channel, cell) in self.slot_cells(slot) {
            let mut st = lock(&cell.state);
            if let Some(top) = st.log.as_ref().map(|l| l.sequenced().offset) {
                self.commit_locked(&channel, &mut st, top, (slot_epoch, now));
            }
        }
    }

    /// Owner: the committed position of a channel this node sequences.
    pub fn committed(&self, channel: &ChannelName) -> Option<StreamPosition> {
        self.with_existing(channel, |st| st.log.as_ref().map(ChannelLog::top)).flatten()
    }

    /// Owner: the slot's channels that `durable` selects, as snapshots for a new
    /// replica (everything sequenced, committed or not).
    pub fn snapshot_durable(
        &self,
        slot: Slot,
        durable: impl Fn(&ChannelName) -> bool,
        now: Millis,
    ) -> Vec<ChannelHandoff> {
        let mut out = Vec::new();
        for (channel, cell) in self.slot_cells(slot) {
            if !durable(&channel) {
                continue;
            }
            let mut st = lock(&cell.state);
            if let Some(log) = st.log.as_mut() {
                out.push(ChannelHandoff {
                    channel,
                    log: log.snapshot(now),
                    interest: Vec::new(),
                    occupied: None,
                    leaving: Vec::new(),
                    members: Vec::new(),
                });
            }
        }
        out
    }

    /// Whether this node sequences any channel of `slot` that `durable` selects.
    pub fn has_durable(&self, slot: Slot, durable: impl Fn(&ChannelName) -> bool) -> bool {
        self.slot_cells(slot).iter().any(|(c, cell)| durable(c) && lock(&cell.state).log.is_some())
    }

    /// Replica: stores one replicated message.
    #[allow(clippy::too_many_arguments)]
    pub fn replicate(
        &self,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        position: StreamPosition,
        (idempotency_key, digest): (Option<&str>, u64),
        key: Option<&str>,
        frame: Utf8Bytes,
        now: Millis,
    ) -> Result<(), ringcast_core::log::OutOfStep> {
        self.with_channel(channel, |st| {
            if st.replica.is_none() && position.offset == Offset(1) {
                st.replica = Some(new_log(position.epoch, ns));
            }
            match st.replica.as_mut() {
                Some(r) => r.append_replicated_keyed(position, now, idempotency_key, digest, key, frame),
                None => Err(ringcast_core::log::OutOfStep {
                    held: StreamPosition { epoch: position.epoch, offset: Offset::ZERO },
                }),
            }
        })
    }

    /// Replica: replaces what this node holds of `slot` with the owner's snapshot.
    pub fn install_replica(
        &self,
        slot: Slot,
        channels: Vec<ChannelHandoff>,
        ns_of: impl Fn(&ChannelName) -> Option<NamespaceOptions>,
        now: Millis,
    ) {
        self.drop_replicas(slot);
        for h in channels {
            let Some(ns) = ns_of(&h.channel) else { continue };
            self.with_channel(&h.channel, |st| {
                st.replica = Some(restored_log(h.log, &ns, now));
            });
        }
    }

    /// Replica: forgets the copies this node holds of `slot`.
    pub fn drop_replicas(&self, slot: Slot) {
        for (_, cell) in self.slot_cells(slot) {
            lock(&cell.state).replica = None;
        }
    }

    /// Whether this node sequences (owns the log of) any channel of `slot`.
    pub fn sequences_any(&self, slot: Slot) -> bool {
        self.slot_cells(slot).iter().any(|(_, cell)| lock(&cell.state).log.is_some())
    }

    /// Whether this node holds replica copies of any channel of `slot`.
    pub fn holds_replicas(&self, slot: Slot) -> bool {
        self.slot_cells(slot).iter().any(|(_, cell)| lock(&cell.state).replica.is_some())
    }

    /// New owner after a crash: this node's replica copies of `slot` become the owner's
    /// logs, in the same epochs, continuing at the next offset. Returns how many.
    pub fn promote_slot(
        &self,
        slot: Slot,
        me: &NodeId,
        ns_of: impl Fn(&ChannelName) -> Option<NamespaceOptions>,
        now: Millis,
    ) -> usize {
        let mut promoted = Vec::new();
        for (channel, cell) in self.slot_cells(slot) {
            let mut st = lock(&cell.state);
            if let Some(mut r) = st.replica.take() {
                promoted.push(ChannelHandoff {
                    channel,
                    log: r.snapshot(now),
                    interest: Vec::new(),
                    occupied: None,
                    leaving: Vec::new(),
                    members: Vec::new(),
                });
            }
        }
        let n = promoted.len();
        self.install(promoted, me, ns_of, now);
        n
    }

    /// `delta` namespaces: the previous message of the publish's key, taken before it is
    /// appended (the base its delta is computed against).
    fn delta_base(
        &self,
        log: &ChannelLog<Utf8Bytes>,
        ns: &NamespaceOptions,
        key: Option<&str>,
        now: Millis,
    ) -> Option<(Offset, Utf8Bytes)> {
        let key = key.filter(|_| ns.delta)?;
        log.latest_for(key, now).map(|(o, f)| (o, f.clone()))
    }

    /// The message to fan out: `payload`, with its delta form when it has a base.
    fn with_delta(
        &self,
        channel: &ChannelName,
        position: StreamPosition,
        key: Option<&str>,
        prev: Option<(Offset, Utf8Bytes)>,
        data: &RawValue,
        payload: Utf8Bytes,
    ) -> Msg {
        let alt = key.and_then(|k| delta_of(channel, position, k, prev, data));
        if alt.is_some() {
            self.metrics.deltas.fetch_add(1, Ordering::Relaxed);
        }
        Msg { frame: payload, alt }
    }

    /// Checks a client publish against the channel's `client_publish_rate`.
    fn check_client_rate(
        &self,
        st: &mut ChannelState,
        ns: &NamespaceOptions,
        idempotency_key: Option<&str>,
        origin: Origin,
        now: Millis,
    ) -> Result<(), ErrorCode> {
        if origin != Origin::Client || ns.client_publish_rate == 0 {
            return Ok(());
        }
        let known = idempotency_key.is_some_and(|k| st.log.as_mut().is_some_and(|l| l.remembers(k, now)));
        let bucket = st
            .client_publishes
            .get_or_insert_with(|| TokenBucket::new(ns.client_publish_rate, ns.client_publish_burst, now));
        if !known && !bucket.try_take(now) {
            self.metrics.channel_rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(ErrorCode::RateLimited);
        }
        Ok(())
    }

    /// Pushes one message to every local subscriber under its policy.
    ///
    /// A subscriber whose queue overflowed (closed 4008) or closed stays in the channel
    /// and takes nothing more: its session unsubscribes everything it held when it ends,
    /// and that is where its presence leave and the channel's occupancy are recorded.
    fn fan_out(&self, channel: &ChannelName, st: &mut ChannelState, position: StreamPosition, msg: &Msg) {
        if st.subscribers.is_empty() {
            return;
        }
        let mut delivered = 0u64;
        // Built once and shared by every subscriber's queue, which holds a pointer to it
        // (ringcast_core::send_queue, "Entry size"). The keep-latest key is read out of
        // the frame here, once, for any subscriber under `keep_latest`.
        let shared = Arc::new(QueuedMessage {
            frame: msg.frame.clone(),
            len: msg.frame.len(),
            channel: channel.clone(),
            position,
            key: message_key(msg.frame.as_str()).map(Box::from),
            alt: msg.alt.clone(),
        });
        // A batch of subscribers at a time, their outboxes' memory loaded together (outbox,
        // "Cold connections").
        let subscribers =
            st.subscribers.values_mut().map(|Subscriber { outbox, policy, delta, catching_up, rare, .. }| {
                (&*outbox, (catching_up, rare, policy.get(), *delta))
            });
        outbox::for_each_held(subscribers, |held, (catching_up, rare, policy, delta)| {
            if already_replayed(catching_up, rare, position) {
                return;
            }
            match held.push_message(&shared, delta, policy) {
                Pushed::Queued { dropped } => {
                    delivered += 1;
                    self.metrics.dropped(policy.policy, dropped);
                }
                Pushed::Dropped { dropped } => self.metrics.dropped(policy.policy, dropped),
                Pushed::Overflow => {
                    self.metrics.slow_consumer_drops.fetch_add(1, Ordering::Relaxed);
                }
                Pushed::Closed => {}
            }
        });
        self.metrics.deliveries.fetch_add(delivered, Ordering::Relaxed);
    }

    /// Fans out what a mirror made deliverable (offsets of `epoch`, in order).
    fn fan_out_ready(&self, channel: &ChannelName, st: &mut ChannelState, epoch: Epoch, ready: Vec<(Offset, Msg)>) {
        for (offset, msg) in ready {
            self.fan_out(channel, st, StreamPosition { epoch, offset }, &msg);
        }
    }

    /// Tells every local subscriber that the channel's stream restarted at `top` in a new
    /// epoch (`resubscribed`, `recovered: false`): what they had is not continued.
    fn announce_restart(&self, channel: &ChannelName, st: &ChannelState, top: StreamPosition) {
        if st.subscribers.is_empty() {
            return;
        }
        self.metrics.restarts.fetch_add(1, Ordering::Relaxed);
        let frame = Utf8Bytes::from(encode_resubscribed(channel, top, top.offset.next(), top.offset));
        for sub in st.subscribers.values() {
            // Notices about the old epoch are moot now.
            sub.outbox.forget(channel);
            sub.outbox.push_unbounded(std::iter::once(frame.clone()));
        }
    }

    /// New owner of `slot` (claimed while vacant): channels this node followed from the
    /// lost owner and holds no copy of start over here in a new epoch, and their local
    /// subscribers are told. Returns how many.
    pub fn adopt_mirrors(
        &self,
        slot: Slot,
        ns_of: impl Fn(&ChannelName) -> Option<NamespaceOptions>,
        now: Millis,
    ) -> usize {
        let mut n = 0;
        for (channel, cell) in self.slot_cells(slot) {
            let mut st = lock(&cell.state);
            if st.log.is_some() || st.mirror.is_none() {
                continue;
            }
            let Some(ns) = ns_of(&channel) else { continue };
            st.mirror = None;
            st.remote_interest = false;
            let top = self.owned_log(&channel, &mut st, &ns).top();
            self.announce_restart(&channel, &st, top);
            self.sync_own_presence(&channel, &mut st, &ns, now);
            n += 1;
        }
        n
    }

    /// Tells every local subscriber that `from..=to` will not arrive (the node lost the
    /// messages and the owner's history no longer holds them).
    fn announce_lost(&self, channel: &ChannelName, st: &ChannelState, epoch: Epoch, (from, to): (Offset, Offset)) {
        self.metrics.lost_messages.fetch_add(to.0.saturating_sub(from.0) + 1, Ordering::Relaxed);
        for sub in st.subscribers.values() {
            sub.outbox.push_gap(GapNotice { channel: channel.clone(), epoch, from, to, cause: GapCause::Unavailable });
        }
    }

    /// Owner: a message just became visible: to local subscribers, to every interested
    /// node, and to the backend (`messages` webhooks). Local subscribers dropped as too
    /// slow may leave the channel vacant.
    fn fan_out_owned(
        &self,
        channel: &ChannelName,
        st: &mut ChannelState,
        position: StreamPosition,
        msg: &Msg,
        (slot_epoch, now): (SlotEpoch, Millis),
    ) {
        let before = (st.subscribers.len(), st.interest.len());
        self.fan_out(channel, st, position, msg);
        self.fan_out_remote(channel, st, position, msg, slot_epoch);
        if st.webhooks.messages {
            self.emit_message(channel, position, msg);
        }
        // Only a fan-out that dropped someone can have changed the occupancy.
        if (st.subscribers.len(), st.interest.len()) != before {
            self.observe_occupancy(channel, st, now);
        }
    }

    /// One `Deliver` per interested node: those in `interest`, and those whose pattern
    /// subscriptions match the channel. A node in `interest` whose link cannot take it
    /// loses its interest: when its link comes back it re-subscribes from its position
    /// and the gap is replayed from history. A pattern's node keeps its patterns; its
    /// mirror of the channel fills the gap from history when the next message arrives.
    fn fan_out_remote(
        &self,
        channel: &ChannelName,
        st: &mut ChannelState,
        position: StreamPosition,
        msg: &Msg,
        slot_epoch: SlotEpoch,
    ) {
        self.refresh_pattern_nodes(channel, st);
        let pattern_nodes = st.pattern_nodes.as_ref().map_or(&[][..], |(_, nodes)| &nodes[..]);
        if st.interest.is_empty() && pattern_nodes.is_empty() {
            return;
        }
        let slot = Slot::of(channel).get();
        let delta = msg.alt.as_ref().map(|a| DeltaWire { base: a.base.0, frame: a.frame.as_str().to_owned() });
        let send = |node: &NodeId| {
            let sent = self.send_peer(
                node,
                PeerFrame::Deliver {
                    slot,
                    slot_epoch: slot_epoch.0,
                    channel: channel.as_str().to_owned(),
                    epoch: position.epoch.get(),
                    offset: position.offset.0,
                    frame: msg.frame.as_str().to_owned(),
                    delta: delta.clone(),
                },
            );
            if !sent {
                self.metrics.peer_drops.fetch_add(1, Ordering::Relaxed);
            }
            sent
        };
        for node in pattern_nodes.iter().filter(|n| !st.interest.contains(*n)) {
            send(node);
        }
        st.interest.retain(|node| send(node));
    }

    /// Owner: subscribes a local connection: queues the `subscribed` reply (and, with
    /// `since`, the replay) into its outbox, then adds it to the live fan-out, all under
    /// the channel lock.
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        sub: &LocalSubscriber,
        now: Millis,
    ) -> Result<(), ErrorCode> {
        self.with_channel(channel, |st| {
            check_not_subscribed(st, sub)?;
            if self.is_sealed(channel) {
                return Err(ErrorCode::Unavailable);
            }
            let log = self.owned_log(channel, st, ns);
            let top = log.top();
            let (outcome, replay) = recover(log, sub.since, now);
            let reply = Utf8Bytes::from(encode_subscribed(sub.reply_id, channel, top, outcome));
            let snapshot = sub.snapshot.then(|| {
                let entries: Vec<Utf8Bytes> = log.latest(now).into_iter().map(|(_, _, f)| f).collect();
                Utf8Bytes::from(encode_snapshot(channel, top, &entries, false))
            });
            let holds_state = snapshot.is_some();
            sub.outbox.push_unbounded(std::iter::once(reply).chain(replay).chain(snapshot));
            if sub.delta {
                sub.outbox.mark_stream(channel, top, holds_state);
            }
            if st.subscribers.insert(sub.conn, Subscriber::of(sub, None)).is_none() {
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            self.observe_occupancy(channel, st, now);
            if let Some(m) = &sub.member {
                let events = st.presence_mut(ns).join(&self.me, sub.conn, &m.user, m.info.clone(), now);
                self.emit_presence(channel, st, events.into_iter().collect(), now);
            }
            Ok(())
        })
    }

    /// Owner: serves a peer's subscribe and registers the peer's interest. The
    /// `Subscribed` reply is queued on the peer's stream under the channel lock, before
    /// any later `Deliver`, so the peer can attach its subscriber exactly at the reply's
    /// position. A presence `member` joins under the same lock, so from the reply on the
    /// owner answers for it; its `join` push follows the reply.
    #[allow(clippy::too_many_arguments)]
    pub fn serve_peer_subscribe(
        &self,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        peer: &NodeId,
        req: u64,
        (since, snapshot): (Option<Since>, bool),
        member: Option<(ConnId, Arc<str>, Option<Arc<str>>)>,
        now: Millis,
    ) -> bool {
        self.with_channel(channel, |st| {
            if self.is_sealed(channel) {
                let refusal = PeerFrame::Refused {
                    req,
                    code: ErrorCode::Unavailable.as_str().to_owned(),
                    message: "the slot is changing owner".to_owned(),
                    retry: true,
                };
                return self.send_peer(peer, refusal);
            }
            // A release noted while sealed must not undo the interest registered below.
            self.apply_earlier_notes(channel, st, |_| {});
            let log = self.owned_log(channel, st, ns);
            let top = log.top();
            let (outcome, replay) = recover(log, since, now);
            let outcome = match outcome {
                SubscribeOutcome::Fresh => OutcomeWire::Fresh,
                SubscribeOutcome::Recovered { .. } => OutcomeWire::Recovered,
                SubscribeOutcome::NotRecovered { reason, oldest, newest } => {
                    OutcomeWire::NotRecovered { reason: reason.as_str().to_owned(), oldest: oldest.0, newest: newest.0 }
                }
            };
            let snapshot =
                snapshot.then(|| log.latest(now).into_iter().map(|(_, _, f)| f.as_str().to_owned()).collect());
            let reply = PeerFrame::Subscribed {
                req,
                epoch: top.epoch.get(),
                offset: top.offset.0,
                outcome,
                replay: replay.iter().map(|f| f.as_str().to_owned()).collect(),
                snapshot,
            };
            let sent = self.send_peer(peer, reply);
            if sent {
                st.interest.insert(peer.clone());
                self.observe_occupancy(channel, st, now);
                if let Some((conn, user, info)) = member.filter(|_| ns.presence) {
                    let events = st.presence_mut(ns).join(peer, conn, &user, info, now);
                    self.emit_presence(channel, st, events.into_iter().collect(), now);
                }
            }
            sent
        })
    }

    /// Owner: `peer` has no subscribers on the channel any more.
    pub fn drop_interest(&self, channel: &ChannelName, peer: &NodeId, now: Millis) {
        {
            // Checked under the notes' lock (see `Hub::apply_earlier_notes`).
            let mut noted = lock(&self.noted_while_sealed);
            if self.is_sealed(channel) {
                keep_noted(&mut noted, SealedNote::Release { channel: channel.clone(), peer: peer.clone(), at: now });
            }
        }
        self.with_existing(channel, |st| {
            st.interest.remove(peer);
            self.observe_occupancy(channel, st, now);
        });
    }

    /// Owner: `peer`'s link is gone; it re-subscribes from its positions when it returns.
    pub fn drop_peer(&self, peer: &NodeId, now: Millis) {
        if let Some(total) = self.patterns.drop_peer(peer) {
            self.metrics.peer_patterns.store(i64::try_from(total).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
        for (channel, cell) in self.all_cells() {
            let mut st = lock(&cell.state);
            st.interest.remove(peer);
            self.observe_occupancy(&channel, &mut st, now);
        }
    }

    /// Gateway: sends a `Subscribe` to the remote owner (which registers this node's
    /// interest), under the channel lock, so it is ordered with this node's
    /// `Unsubscribe`s of the channel on the owner's stream. The subscribe counts as in
    /// flight until [`Hub::attach_remote`] or [`Hub::subscribe_abandoned`]. Returns
    /// whether it was sent.
    pub fn send_subscribe(&self, channel: &ChannelName, owner: &NodeId, frame: PeerFrame) -> bool {
        self.with_channel(channel, |st| {
            st.subscribing = st.subscribing.saturating_add(1);
            let sent = self.send_peer(owner, frame);
            st.remote_interest |= sent;
            sent
        })
    }

    /// Gateway: a subscribe sent with [`Hub::send_subscribe`] got no `Subscribed` reply
    /// (refused, unanswered, or never sent). Returns whether this node now follows the
    /// channel for nobody, so the owner must be told (a subscriber that left while the
    /// subscribe was in flight kept the interest for it).
    #[must_use]
    pub fn subscribe_abandoned(&self, channel: &ChannelName) -> bool {
        self.with_existing(channel, |st| {
            st.subscribing = st.subscribing.saturating_sub(1);
            st.subscribers.is_empty() && st.subscribing == 0 && std::mem::take(&mut st.remote_interest)
        })
        .unwrap_or(false)
    }

    /// Gateway: mirrors whose gap has stayed open for `patience`, with the range to
    /// fetch from the owner's history.
    pub fn due_fills(
        &self,
        now: Millis,
        patience: std::time::Duration,
    ) -> Vec<(ChannelName, ringcast_core::mirror::Fill)> {
        let mut out = Vec::new();
        for (name, cell) in self.all_cells() {
            let mut st = lock(&cell.state);
            if let Some(fill) = st.mirror.as_mut().and_then(|m| m.fill_due(now, patience)) {
                out.push((name, fill));
            }
        }
        out
    }

    /// Catches the channel's mirror up on a page of its owner's stream (a fill, a
    /// resync's replay, a handed-off log's history): offsets below `oldest`, which the
    /// owner no longer holds, are announced to local subscribers as a `gap`; `messages`
    /// are offered; what became deliverable is fanned out in order.
    fn catch_up_mirror(
        &self,
        channel: &ChannelName,
        st: &mut ChannelState,
        oldest: Option<Offset>,
        messages: impl IntoIterator<Item = (StreamPosition, Msg)>,
        now: Millis,
    ) {
        let Some(mirror) = st.mirror.as_mut() else { return };
        let epoch = mirror.position().epoch;
        let mut ready = Vec::new();
        if let Some(range) = oldest.and_then(|o| mirror.skip_to(Offset(o.0.saturating_sub(1)), now, &mut ready)) {
            self.announce_lost(channel, st, epoch, range);
        }
        if let Some(mirror) = st.mirror.as_mut() {
            for (pos, msg) in messages {
                mirror.offer(pos.epoch, pos.offset, msg, now, &mut ready);
            }
        }
        self.fan_out_ready(channel, st, epoch, ready);
    }

    /// Gateway: a page of the owner's history fetched to fill a mirror's gap: its
    /// stream `epoch`, the oldest offset it still holds, and its messages as
    /// `(position, frame)`. What the owner no longer holds is given up and announced to
    /// local subscribers as a `gap`.
    pub fn offer_fill(
        &self,
        channel: &ChannelName,
        epoch: Option<Epoch>,
        oldest: Offset,
        messages: Vec<(StreamPosition, Utf8Bytes)>,
        now: Millis,
    ) {
        self.with_existing(channel, |st| {
            if st.mirror.as_ref().map(|m| m.position().epoch) != epoch {
                // The owner's stream restarted; the next Deliver re-bases the mirror.
                return;
            }
            let messages = messages.into_iter().map(|(pos, frame)| (pos, Msg::from(frame)));
            self.catch_up_mirror(channel, st, Some(oldest), messages, now);
        });
    }

    /// Gateway: whether this node has asked the channel's remote owner for its messages
    /// (and not released that interest since).
    pub fn follows_remote(&self, channel: &ChannelName) -> bool {
        self.with_existing(channel, |st| st.remote_interest).unwrap_or(false)
    }

    /// Gateway: channels this node follows from a remote owner for local subscribers,
    /// with the position delivered up to.
    pub fn mirrored_channels(&self) -> Vec<(ChannelName, StreamPosition)> {
        let mut out = Vec::new();
        for (name, cell) in self.all_cells() {
            let st = lock(&cell.state);
            if let (Some(m), false) = (st.mirror.as_ref(), st.subscribers.is_empty()) {
                out.push((name, m.position()));
            }
        }
        out
    }

    /// Gateway: the owner answered a resync (a re-subscription from the mirror's
    /// position, after its stream to this node ended). `top` is its stream's position;
    /// `lost_before` the oldest offset it still holds when the position had expired;
    /// `replay` what followed the position. Offsets the owner no longer holds are
    /// announced to local subscribers as a `gap`; the rest is delivered or fetched.
    /// Returns whether nobody here follows the channel any more, so the interest the
    /// reply registered must be released.
    #[must_use]
    pub fn resynced(
        &self,
        channel: &ChannelName,
        top: StreamPosition,
        lost_before: Option<Offset>,
        replay: Vec<(StreamPosition, Utf8Bytes)>,
        now: Millis,
    ) -> bool {
        self.with_existing(channel, |st| {
            if st.subscribers.is_empty() {
                // The last subscriber left while the resync was on its way, and the
                // owner registered this node's interest with its reply: release it
                // (unless a new subscribe, in flight, needs it).
                st.remote_interest |= st.log.is_none();
                return st.release_if_unfollowed();
            }
            st.remote_interest = true;
            let Some(mirror) = st.mirror.as_mut() else { return false };
            if mirror.position().epoch != top.epoch {
                // The owner's stream restarted (state was lost): follow the new epoch
                // and tell the subscribers.
                mirror.rebase(top);
                self.announce_restart(channel, st, top);
                return false;
            }
            mirror.expect(top.epoch, top.offset, now);
            let replay = replay.into_iter().map(|(pos, frame)| (pos, Msg::from(frame)));
            self.catch_up_mirror(channel, st, lost_before, replay, now);
            false
        })
        // Forgotten meanwhile: nobody here follows it.
        .unwrap_or(true)
    }

    /// Gateway: the owner's stream for `channel` reaches `top` (a re-subscription's
    /// reply): anything this node has not delivered up to there is fetched as a gap.
    pub fn expect_remote(&self, channel: &ChannelName, top: StreamPosition, now: Millis) {
        self.with_existing(channel, |st| {
            if let Some(m) = st.mirror.as_mut() {
                m.expect(top.epoch, top.offset, now);
            }
        });
    }

    /// Gateway: attaches a local connection at the position the owner's `Subscribed`
    /// reply names, after queueing the client's reply and the replay. Called by the task
    /// reading the owner's stream, so no `Deliver` slips between.
    pub fn attach_remote(
        &self,
        channel: &ChannelName,
        sub: &LocalSubscriber,
        top: StreamPosition,
        outcome: SubscribeOutcome,
        replay: Vec<Utf8Bytes>,
        snapshot: Option<Vec<String>>,
    ) -> Result<(), ErrorCode> {
        self.with_channel(channel, |st| {
            st.subscribing = st.subscribing.saturating_sub(1);
            // The owner registered this node's interest with its reply (unless this node
            // has taken the channel over since).
            st.remote_interest |= st.log.is_none();
            check_not_subscribed(st, sub)?;
            let mut caught_up_to = None;
            match &mut st.mirror {
                Some(m) if m.position().epoch != top.epoch => {
                    m.rebase(top);
                    // Existing subscribers were following the old stream.
                    self.announce_restart(channel, st, top);
                }
                // The mirror is still waiting for messages the owner's reply already
                // counts (a gap being filled): the replay gives them to this subscriber,
                // so it must not get them again when the mirror releases them.
                Some(m) if m.position().offset < top.offset => caught_up_to = Some(top),
                Some(_) => {}
                None => st.mirror = Some(Mirror::new(top, DEFAULT_MAX_PENDING)),
            }
            let reply = Utf8Bytes::from(encode_subscribed(sub.reply_id, channel, top, outcome));
            let snapshot =
                snapshot.filter(|_| sub.snapshot).map(|e| Utf8Bytes::from(encode_snapshot(channel, top, &e, false)));
            let holds_state = snapshot.is_some();
            sub.outbox.push_unbounded(std::iter::once(reply).chain(replay).chain(snapshot));
            if sub.delta {
                sub.outbox.mark_stream(channel, top, holds_state);
            }
            if st.subscribers.insert(sub.conn, Subscriber::of(sub, caught_up_to)).is_none() {
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    }

    /// Owner: a keep-latest channel's state (message frames, newest per key, in offset
    /// order) at its committed top; `None` when the channel has no stream here.
    pub fn state(&self, channel: &ChannelName, now: Millis) -> Option<(StreamPosition, Vec<Utf8Bytes>)> {
        self.with_existing(channel, |st| {
            st.log.as_mut().map(|l| (l.top(), l.latest(now).into_iter().map(|(_, _, f)| f).collect()))
        })
        .flatten()
    }

    /// Gateway: a message from the remote owner. Returns false when nobody here wants
    /// the channel any more (the caller then tells the owner).
    /// A channel this node has no state for is taken up when one of its pattern
    /// subscriptions matches it: its mirror starts at this message.
    pub fn deliver_remote(&self, channel: &ChannelName, position: StreamPosition, frame: Msg, now: Millis) -> bool {
        let deliver = |st: &mut ChannelState| {
            if st.subscribers.is_empty() {
                st.mirror = None;
                if st.subscribing > 0 {
                    // A subscribe is in flight: its reply, behind this frame on the same
                    // stream, covers this message, and the interest stays.
                    return true;
                }
                st.remote_interest = false;
                return false;
            }
            if st.mirror.is_none() {
                if st.log.is_some() {
                    // A stale owner's frame: this node sequences the channel now.
                    return true;
                }
                // Only pattern subscribers get here (a subscription attaches its
                // mirror): they follow the channel from the first message that arrives.
                let before =
                    StreamPosition { epoch: position.epoch, offset: Offset(position.offset.0.saturating_sub(1)) };
                st.mirror = Some(Mirror::new(before, DEFAULT_MAX_PENDING));
            }
            let Some(mirror) = st.mirror.as_mut() else { return true };
            let mut ready = Vec::new();
            let mut restarted = None;
            if mirror.offer(position.epoch, position.offset, frame.clone(), now, &mut ready) == Offer::EpochChanged {
                // The owner's stream restarted (state was lost): follow the new epoch
                // and tell the subscribers.
                let restart =
                    StreamPosition { epoch: position.epoch, offset: Offset(position.offset.0.saturating_sub(1)) };
                mirror.rebase(restart);
                mirror.offer(position.epoch, position.offset, frame.clone(), now, &mut ready);
                restarted = Some(restart);
            }
            let epoch = mirror.position().epoch;
            if let Some(restart) = restarted {
                self.announce_restart(channel, st, restart);
            }
            self.fan_out_ready(channel, st, epoch, ready);
            true
        };
        match self.with_existing(channel, deliver) {
            Some(wanted) => wanted,
            None if self.patterns.local_match(channel) => self.with_channel(channel, deliver),
            None => false,
        }
    }

    /// Removes `conn` from the channel's subscribers. Returns whether it was subscribed
    /// and whether the remote owner must now be told this node lost interest.
    pub fn unsubscribe(&self, channel: &ChannelName, conn: ConnId, now: Millis) -> Unsubscribed {
        let out = self
            .with_existing(channel, |st| {
                let Some(sub) = st.subscribers.remove(&conn) else { return Unsubscribed::default() };
                sub.outbox.forget(channel);
                if sub.direct {
                    if let Some(policy) = self.patterns.local_policy(conn, channel) {
                        // Still wanted by one of the connection's patterns.
                        st.subscribers.insert(conn, Subscriber::for_pattern(sub.outbox.clone(), policy));
                    }
                }
                let mut member_elsewhere = false;
                if sub.member().is_some() {
                    if st.log.is_some() {
                        // Owner: the leave is ours to record (debounced by the grace).
                        let events = st.presence.as_mut().and_then(|p| p.leave(&self.me, conn, now));
                        self.emit_presence(channel, st, events.into_iter().collect(), now);
                    } else {
                        member_elsewhere = true;
                    }
                }
                self.observe_occupancy(channel, st, now);
                let release = st.release_if_unfollowed();
                if !st.subscribers.contains_key(&conn) {
                    self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
                }
                Unsubscribed { removed: true, release, member_elsewhere }
            })
            .unwrap_or_default();
        out
    }

    /// Owner: a page of history (oldest first) of pre-encoded `message` frames; `None`
    /// when the channel has no stream here. Reading never creates channel state.
    pub fn history(
        &self,
        channel: &ChannelName,
        before: Option<Offset>,
        limit: usize,
        now: Millis,
    ) -> Option<HistoryPage<Utf8Bytes>> {
        self.with_existing(channel, |st| st.log.as_mut().map(|l| l.page(now, before, limit))).flatten()
    }

    /// What this node holds for a channel (no state is created).
    pub fn info(&self, channel: &ChannelName) -> ChannelInfo {
        self.with_existing(channel, |st| ChannelInfo {
            top: st.log.as_ref().map(ChannelLog::top).or_else(|| st.mirror.as_ref().map(Mirror::position)),
            history_len: st.log.as_ref().map_or(0, ChannelLog::history_len),
            local_subscribers: st.subscribers.len(),
        })
        .unwrap_or(ChannelInfo { top: None, history_len: 0, local_subscribers: 0 })
    }

    // ---------------------------------------------------------------------------------
    // Webhooks (`crate::webhooks`): only a channel's owner reports, so each event is
    // sent once cluster-wide.

    /// Owner, occupancy webhooks: records whether anyone subscribes to the channel now
    /// (a direct local subscriber, or a node in `interest`) and reports the change.
    fn observe_occupancy(&self, channel: &ChannelName, st: &mut ChannelState, now: Millis) {
        if !st.webhooks.occupancy || st.log.is_none() {
            return;
        }
        let occupied = !st.interest.is_empty() || st.subscribers.values().any(|s| s.direct);
        if let Some(event) = st.occupancy.observe(occupied, now) {
            self.emit_occupancy(channel, event);
        }
    }

    fn emit_occupancy(&self, channel: &ChannelName, event: OccupancyEvent) {
        let Some(w) = self.webhooks.get() else { return };
        let kind = match event {
            OccupancyEvent::Occupied => EventType::ChannelOccupied,
            OccupancyEvent::Vacated => EventType::ChannelVacated,
        };
        w.emit(WebhookEvent::new("", kind, channel.as_str(), unix_ms()));
    }

    /// `member_joined` or `member_left` (`kind`) of `user`, which happened at `at_ms` (UNIX).
    fn emit_member(&self, channel: &ChannelName, kind: EventType, user: &str, info: Option<&RawValue>, at_ms: u64) {
        let Some(w) = self.webhooks.get() else { return };
        w.emit(WebhookEvent {
            user: Some(Cow::Borrowed(user)),
            info,
            ..WebhookEvent::new("", kind, channel.as_str(), at_ms)
        });
    }

    fn emit_message(&self, channel: &ChannelName, position: StreamPosition, msg: &Msg) {
        let Some(w) = self.webhooks.get() else { return };
        let frame = msg.frame.as_str();
        w.emit(WebhookEvent {
            epoch: Some(Cow::Owned(position.epoch.get().to_string())),
            offset: Some(position.offset.0),
            key: message_key(frame).map(Cow::Borrowed),
            data: message_data(frame).and_then(|d| serde_json::from_str::<&RawValue>(d).ok()),
            ..WebhookEvent::new("", EventType::Message, channel.as_str(), unix_ms())
        });
    }

    // ---------------------------------------------------------------------------------
    // Presence, typing and the registry.

    /// Owner: pushes presence events to the channel: `join`/`leave` to local subscribers
    /// that receive them and once to each interested node (namespace `join_leave`),
    /// and, for a registry channel, notes when its user went offline.
    fn emit_presence(&self, channel: &ChannelName, st: &mut ChannelState, events: Vec<PresenceEvent>, now: Millis) {
        for event in events {
            let (kind, hook, user, info, at_ms) = match &event {
                PresenceEvent::Join { user, info } => {
                    (EphemeralKind::Join, EventType::MemberJoined, user, info, unix_ms())
                }
                PresenceEvent::Leave { user, info, left_at } => {
                    let at_ms = unix_ms().saturating_sub(now.0.saturating_sub(left_at.0));
                    if channel.registry_user() == Some(&**user) {
                        lock(&self.last_seen).record(user, at_ms);
                    }
                    (EphemeralKind::Leave, EventType::MemberLeft, user, info, at_ms)
                }
            };
            if !st.join_leave && !st.webhooks.presence {
                continue;
            }
            // The token's info, parsed once for the push and the webhook.
            let info = info.as_deref().and_then(|i| serde_json::from_str::<&RawValue>(i).ok());
            if st.webhooks.presence {
                self.emit_member(channel, hook, user, info, at_ms);
            }
            if st.join_leave {
                self.metrics.presence_events.fetch_add(1, Ordering::Relaxed);
                let frame = Utf8Bytes::from(encode_ephemeral(kind, channel, user, info));
                self.fan_out_ephemeral(channel, st, &frame, true);
            }
        }
    }

    /// Owner: an ephemeral push to local subscribers (all of them, or with `join_leave`
    /// only those that receive joins and leaves) and once to each interested node.
    fn fan_out_ephemeral(&self, channel: &ChannelName, st: &mut ChannelState, frame: &Utf8Bytes, join_leave: bool) {
        self.push_ephemeral_local(st, frame, join_leave);
        if st.interest.is_empty() {
            return;
        }
        let slot = Slot::of(channel);
        let slot_epoch = self.peers.get().map_or(0, |p| p.slot_epoch(slot).0);
        for node in &st.interest {
            let sent = self.send_peer(
                node,
                PeerFrame::Ephemeral {
                    slot: slot.get(),
                    slot_epoch,
                    channel: channel.as_str().to_owned(),
                    frame: frame.as_str().to_owned(),
                    join_leave,
                },
            );
            if !sent {
                self.metrics.peer_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn push_ephemeral_local(&self, st: &ChannelState, frame: &Utf8Bytes, join_leave: bool) {
        if st.subscribers.is_empty() {
            return;
        }
        // Shared by every subscriber's queue, like a message.
        let frame = Arc::new(frame.clone());
        for sub in st.subscribers.values().filter(|s| s.direct && (!join_leave || s.join_leave)) {
            if let Pushed::Dropped { .. } = sub.outbox.push_ephemeral(&frame) {
                self.metrics.ephemeral_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Gateway: an ephemeral push from the channel's owner, for local subscribers.
    pub fn deliver_ephemeral(&self, channel: &ChannelName, frame: Utf8Bytes, join_leave: bool) {
        self.with_existing(channel, |st| self.push_ephemeral_local(st, &frame, join_leave));
    }

    /// Owner: this node's own subscribers become the whole of its part of the channel's
    /// presence (after it took the channel over).
    fn sync_own_presence(&self, channel: &ChannelName, st: &mut ChannelState, ns: &NamespaceOptions, now: Millis) {
        if !ns.presence {
            return;
        }
        let mine = st.local_members();
        let events = st.presence_mut(ns).sync_node(&self.me, mine, now);
        self.emit_presence(channel, st, events, now);
    }

    /// Owner: a node's announcement of its clients in a presence channel: `joins` and
    /// `leaves`, or with `sync` its complete list. Ignored unless this node sequences
    /// the channel (the caller checked the slot) and the namespace has presence. While
    /// the slot is sealed it is noted, and applied when the slot is unsealed (see the
    /// `noted_while_sealed` field).
    #[allow(clippy::too_many_arguments)]
    pub fn presence_update(
        &self,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        node: &NodeId,
        joins: Vec<(ConnId, Arc<str>, Option<Arc<str>>)>,
        leaves: &[ConnId],
        sync: bool,
        now: Millis,
    ) {
        if !ns.presence {
            return;
        }
        let update = PresenceUpdate {
            channel: channel.clone(),
            ns: ns.clone(),
            node: node.clone(),
            joins,
            leaves: leaves.to_vec(),
            sync,
            at: now,
        };
        self.with_channel(channel, |st| {
            // While the slot is sealed the update is noted for the last unseal; otherwise
            // what was noted earlier goes first: it arrived first.
            let mut update = Some(update);
            let unsealed = self.apply_earlier_notes(channel, st, |noted| {
                if let Some(u) = update.take() {
                    keep_noted(noted, SealedNote::Presence(Box::new(u)));
                }
            });
            if let Some(update) = update.filter(|_| unsealed) {
                self.owned_log(channel, st, ns);
                self.apply_presence(st, update);
            }
        });
    }

    /// Applies a peer's note to a channel this node sequences.
    fn apply_note(&self, st: &mut ChannelState, note: SealedNote) {
        if st.log.is_none() {
            // Handed off while it was noted: the node repeats it to the new owner.
            return;
        }
        match note {
            SealedNote::Release { channel, peer, at } => {
                st.interest.remove(&peer);
                self.observe_occupancy(&channel, st, at);
            }
            SealedNote::Presence(u) => self.apply_presence(st, *u),
        }
    }

    /// Applies a peer's presence update to a channel this node sequences.
    fn apply_presence(&self, st: &mut ChannelState, u: PresenceUpdate) {
        let p = st.presence_mut(&u.ns);
        let mut events = Vec::new();
        if u.sync {
            events = p.sync_node(&u.node, u.joins, u.at);
        } else {
            for conn in &u.leaves {
                events.extend(p.leave(&u.node, *conn, u.at));
            }
            for (conn, user, info) in u.joins {
                events.extend(p.join(&u.node, conn, &user, info, u.at));
            }
        }
        self.emit_presence(&u.channel, st, events, u.at);
    }

    /// Applies, under `channel`'s lock, what was noted for it while its slot was sealed
    /// and the last unseal has not applied yet, and returns true. An owner's change to
    /// the channel's interest or presence calls it first: what arrived earlier goes
    /// first, so a noted release cannot undo a later subscribe. While the slot is sealed
    /// it applies nothing (the next unseal does), runs `if_sealed` under the notes' lock
    /// (where a presence update notes itself), and returns false. That lock orders a
    /// caller against the last unseal, which takes it before applying the notes: the
    /// caller either notes before that or finds the slot unsealed.
    fn apply_earlier_notes(
        &self,
        channel: &ChannelName,
        st: &mut ChannelState,
        if_sealed: impl FnOnce(&mut HashMap<Slot, SealedNotes>),
    ) -> bool {
        let notes = {
            let mut noted = lock(&self.noted_while_sealed);
            if self.is_sealed(channel) {
                if_sealed(&mut noted);
                return false;
            }
            take_noted(&mut noted, channel)
        };
        for note in notes {
            self.apply_note(st, note);
        }
        true
    }

    /// The slot's last seal was released: applies what was noted while it was sealed,
    /// channel by channel under its lock (see the `noted_while_sealed` field).
    fn apply_noted(&self, slot: Slot) {
        let channels: BTreeSet<ChannelName> = match lock(&self.noted_while_sealed).get(&slot) {
            Some(noted) => noted.notes.iter().map(|n| n.channel().clone()).collect(),
            None => return,
        };
        for channel in channels {
            let applied = self.with_existing(&channel, |st| self.apply_earlier_notes(&channel, st, |_| {}));
            if applied.is_none() {
                // Forgotten meanwhile: nothing here to apply them to.
                let mut noted = lock(&self.noted_while_sealed);
                if !self.slot_sealed(slot) {
                    take_noted(&mut noted, &channel);
                }
            }
        }
    }

    /// Owner: `node` is gone (left the cluster or restarted): its clients leave every
    /// presence channel here, after the grace.
    pub fn presence_node_gone(&self, node: &NodeId, now: Millis) {
        for (name, cell) in self.all_cells() {
            let mut st = lock(&cell.state);
            if let Some(p) = st.presence.as_mut() {
                let events = p.drop_node(node, now);
                self.emit_presence(&name, &mut st, events, now);
            }
        }
    }

    /// Gateway: hands this node's presence members of `channel` (empty when it has
    /// none) to `announce`, which sends them to the owner, under the channel's lock.
    /// Joins go out with subscribes under the same lock, and leaves once the member is
    /// gone, so the owner gets the announcement in order with them: a member leaving
    /// meanwhile is either in it, and its leave follows, or not in it.
    pub fn announce_members(
        &self,
        channel: &ChannelName,
        announce: impl FnOnce(Vec<(ConnId, Arc<str>, Option<Arc<str>>)>),
    ) {
        self.with_channel(channel, |st| announce(st.local_members()));
    }

    /// Owner: a channel's presence: counts and up to `limit` members. `None` when this
    /// node holds no presence for it (nobody is in it).
    pub fn presence(&self, channel: &ChannelName, limit: usize) -> Option<PresenceView> {
        self.with_existing(channel, |st| {
            st.presence.as_ref().map(|p| PresenceView { stats: p.stats(), members: p.members(limit) })
        })
        .flatten()
    }

    /// Owner of `#user:{user}`: when the user was last online (UNIX ms), if remembered.
    pub fn last_seen(&self, user: &str) -> Option<u64> {
        lock(&self.last_seen).get(user)
    }

    /// Owner: a typing notice. Dropped (false) when the user typed in this channel less
    /// than a second ago; otherwise fanned out to every subscriber, never stored.
    pub fn typing(&self, channel: &ChannelName, user: &Arc<str>, info: Option<&str>, now: Millis) -> bool {
        self.with_channel(channel, |st| {
            if self.is_sealed(channel) {
                return false;
            }
            let gate = st.typing.get_or_insert_with(|| TypingGate::new(TYPING_INTERVAL, TYPING_GATE_CAPACITY));
            if !gate.allow(user, now) {
                self.metrics.typing_limited.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let info = info.and_then(|i| serde_json::from_str::<&RawValue>(i).ok());
            let frame = Utf8Bytes::from(encode_ephemeral(EphemeralKind::Typing, channel, user, info));
            self.fan_out_ephemeral(channel, st, &frame, false);
            true
        })
    }

    /// Sends the leaves and vacancies whose grace has passed and prunes typing gates.
    /// Runs with the sweep.
    fn owner_tick(&self, now: Millis) {
        let grace = self.webhooks.get().map(|w| w.vacated_grace());
        for (name, cell) in self.all_cells() {
            let mut st = lock(&cell.state);
            if let Some(g) = st.typing.as_mut() {
                g.prune(now);
            }
            if let Some(p) = st.presence.as_mut() {
                let events = p.tick(now);
                if p.is_empty() {
                    st.presence = None;
                }
                self.emit_presence(&name, &mut st, events, now);
            }
            if let Some(event) = grace.and_then(|g| st.occupancy.tick(now, g)) {
                self.emit_occupancy(&name, event);
            }
        }
    }

    /// Expires history and forgets idle channels. Returns how many were forgotten.
    pub fn sweep(&self, now: Millis) -> usize {
        self.owner_tick(now);
        let mut forgotten = 0;
        for shard in &self.shards {
            let mut map = lock(shard);
            map.retain(|_, cell| {
                let mut st = lock(&cell.state);
                let log_idle = st.log.as_mut().is_none_or(|l| l.is_idle(now));
                let replica_idle = st.replica.as_mut().is_none_or(|l| l.is_idle(now));
                if st.subscribers.is_empty()
                    && st.interest.is_empty()
                    && !st.remote_interest
                    && st.subscribing == 0
                    && log_idle
                    && replica_idle
                    && st.uncommitted.is_empty()
                    && st.presence.as_ref().is_none_or(ChannelPresence::is_empty)
                    && st.typing.as_ref().is_none_or(TypingGate::is_empty)
                    && st.occupancy.is_vacant()
                {
                    st.removed = true;
                    forgotten += 1;
                    false
                } else {
                    true
                }
            });
        }
        self.metrics.channels.fetch_sub(forgotten as i64, Ordering::Relaxed);
        forgotten
    }
}

/// A subscribe finds the connection already subscribed (`already_subscribed`) unless
/// it was only attached for a pattern and now subscribes to the channel itself: its
/// entry is then replaced (it keeps getting each message once).
fn check_not_subscribed(st: &ChannelState, sub: &LocalSubscriber) -> Result<(), ErrorCode> {
    match st.subscribers.get(&sub.conn) {
        Some(s) if s.direct || sub.pattern => Err(ErrorCode::AlreadySubscribed),
        _ => Ok(()),
    }
}

/// An empty stream in `epoch` under the namespace's policies.
fn new_log(epoch: Epoch, ns: &NamespaceOptions) -> ChannelLog<Utf8Bytes> {
    let mut log = ChannelLog::new(epoch, ns.history_policy(), ns.dedup_policy());
    log.set_latest(ns.latest_policy());
    log
}

/// A stream continued from a snapshot under the namespace's policies.
fn restored_log(
    snap: ringcast_core::log::LogSnapshot<Utf8Bytes>,
    ns: &NamespaceOptions,
    now: Millis,
) -> ChannelLog<Utf8Bytes> {
    let mut log = ChannelLog::restore(snap, ns.history_policy(), ns.dedup_policy(), now);
    log.set_latest(ns.latest_policy());
    log
}

/// Wall-clock time in UNIX milliseconds (for last-seen answers only).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The client error for a refused append.
fn append_error(e: AppendError) -> ErrorCode {
    match e {
        AppendError::Conflict { .. } => ErrorCode::Conflict,
        AppendError::OffsetsExhausted => ErrorCode::Unavailable,
    }
}

/// Recovery for a subscribe: the outcome and the frames to replay.
fn recover(log: &mut ChannelLog<Utf8Bytes>, since: Option<Since>, now: Millis) -> (SubscribeOutcome, Vec<Utf8Bytes>) {
    let Some(Since { epoch, offset }) = since else {
        return (SubscribeOutcome::Fresh, Vec::new());
    };
    // No epoch given: continuity cannot be proved, treat as a mismatch.
    let recovery = match epoch {
        Some(epoch) => log.recover(StreamPosition { epoch, offset }, now),
        None => {
            let page = log.page(now, None, 0);
            Recovery::NotRecovered {
                reason: NotRecoveredReason::EpochChanged,
                oldest: page.oldest,
                newest: page.newest,
            }
        }
    };
    match recovery {
        Recovery::Recovered { replay } => (SubscribeOutcome::Recovered { replayed: replay.len() }, replay),
        Recovery::NotRecovered { reason, oldest, newest } => {
            (SubscribeOutcome::NotRecovered { reason, oldest, newest }, Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_core::dedup::DedupPolicy;
    use ringcast_core::BackpressurePolicy;
    use std::time::Duration;

    fn sub(conn: u64, outbox: &Arc<Outbox>, since: Option<Since>, reply_id: u64) -> LocalSubscriber {
        let reply_id = Some(reply_id);
        let policy = NamespaceOptions::default().message_policy(outbox.bounds());
        LocalSubscriber {
            conn: ConnId(conn),
            outbox: outbox.clone(),
            policy,
            since,
            reply_id,
            member: None,
            join_leave: false,
            snapshot: false,
            delta: false,
            pattern: false,
        }
    }

    /// `Hub::publish` with the request spelled out.
    #[allow(clippy::too_many_arguments)]
    fn publish(
        h: &Hub,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        data: &RawValue,
        idempotency_key: Option<&str>,
        origin: Origin,
        now: Millis,
        epoch: SlotEpoch,
    ) -> Result<Published, ErrorCode> {
        h.publish(&PublishRequest { channel, ns, data, idempotency_key, origin, key: None }, now, epoch)
    }

    fn hub() -> Hub {
        hub_as("me")
    }

    fn hub_as(me: &str) -> Hub {
        Hub::new(node(me), EpochSource::new(1000), Arc::new(Metrics::default()))
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn frames(o: &Outbox) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        o.drain(&mut out);
        out.iter().map(|f| serde_json::from_str(f.as_str()).unwrap_or_default()).collect()
    }

    #[test]
    fn replay_then_live_without_gap_or_duplicate() {
        let h = hub();
        let ns = NamespaceOptions::default();
        let c = ch("chat:a");
        for i in 1..=5 {
            publish(&h, &c, &ns, &raw(&i.to_string()), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        }
        let epoch = h.info(&c).top.map(|t| t.epoch);
        let o = Arc::new(Outbox::new(100, 1 << 20));
        let since = Since { epoch, offset: Offset(2) };
        assert_eq!(h.subscribe(&c, &ns, &sub(1, &o, Some(since), 9), Millis(0)), Ok(()));
        publish(&h, &c, &ns, &raw("6"), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        let got = frames(&o);
        assert_eq!(got[0]["type"], "subscribed");
        assert_eq!(got[0]["recovered"], true);
        assert_eq!(got[0]["replayed"], 3);
        let offsets: Vec<_> = got[1..].iter().map(|m| m["offset"].as_u64().unwrap_or(0)).collect();
        assert_eq!(offsets, vec![3, 4, 5, 6]);
        assert_eq!(h.subscribe(&c, &ns, &sub(1, &o, None, 10), Millis(0)), Err(ErrorCode::AlreadySubscribed));
    }

    #[test]
    fn idle_channels_are_forgotten_and_restart_in_a_new_epoch() {
        let h = hub();
        let ns = NamespaceOptions {
            history_ttl: Duration::from_secs(1),
            dedup_window: Duration::from_secs(1),
            ..Default::default()
        };
        let c = ch("chat:b");
        let first =
            publish(&h, &c, &ns, &raw("1"), Some("k"), Origin::Api, Millis(0), SlotEpoch(1)).map(|p| p.position);
        assert_eq!(h.sweep(Millis(500)), 0);
        assert_eq!(h.sweep(Millis(1_000)), 1);
        let second =
            publish(&h, &c, &ns, &raw("1"), Some("k"), Origin::Api, Millis(1_000), SlotEpoch(1)).map(|p| p.position);
        assert_ne!(first.map(|p| p.epoch), second.map(|p| p.epoch));
        assert_eq!(second.map(|p| p.offset), Ok(Offset(1)));
        let _ = DedupPolicy::default();
    }

    fn sub_in(ns: &NamespaceOptions, conn: u64, outbox: &Arc<Outbox>) -> LocalSubscriber {
        LocalSubscriber { policy: ns.message_policy(outbox.bounds()), ..sub(conn, outbox, None, 1) }
    }

    #[test]
    fn a_fan_out_reaches_every_subscriber_once_across_its_batches() {
        // More subscribers than two of the fan-out's batches (outbox::TOUCH_AHEAD), the
        // last one partial; every other one caught up past the first message by replay.
        let h = hub();
        let ns = NamespaceOptions::default();
        let c = ch("chat:many");
        publish(&h, &c, &ns, &raw("1"), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        let epoch = h.info(&c).top.map(|t| t.epoch);
        let n = 2 * outbox::TOUCH_AHEAD + 3;
        let outboxes: Vec<Arc<Outbox>> = (0..n).map(|_| Arc::new(Outbox::new(100, 1 << 20))).collect();
        for (i, o) in outboxes.iter().enumerate() {
            let since = (i % 2 == 1).then_some(Since { epoch, offset: Offset(0) });
            assert_eq!(h.subscribe(&c, &ns, &sub(i as u64, o, since, 1), Millis(0)), Ok(()));
        }
        for i in 2..=3 {
            publish(&h, &c, &ns, &raw(&i.to_string()), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        }
        for (i, o) in outboxes.iter().enumerate() {
            let got = frames(o);
            let offsets: Vec<_> = got[1..].iter().map(|m| m["offset"].as_u64().unwrap_or(0)).collect();
            let want = if i % 2 == 1 { vec![1, 2, 3] } else { vec![2, 3] };
            assert_eq!(offsets, want, "subscriber {i}");
        }
    }

    #[test]
    fn slow_subscriber_is_dropped_without_touching_others() {
        let h = hub();
        let ns = NamespaceOptions { backpressure: BackpressurePolicy::Disconnect, ..Default::default() };
        let c = ch("chat:c");
        let slow = Arc::new(Outbox::new(3, 1 << 20));
        let fast = Arc::new(Outbox::new(1000, 1 << 20));
        h.subscribe(&c, &ns, &sub_in(&ns, 1, &slow), Millis(0)).ok();
        h.subscribe(&c, &ns, &sub_in(&ns, 2, &fast), Millis(0)).ok();
        for i in 0..10 {
            publish(&h, &c, &ns, &raw(&i.to_string()), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        }
        let mut out = Vec::new();
        assert_eq!(slow.drain(&mut out), Some(ringcast_proto::CloseCode::SlowConsumer));
        assert_eq!(frames(&fast).len(), 11);
        assert_eq!(h.info(&c).local_subscribers, 2, "until its session ends");
        assert!(h.unsubscribe(&c, ConnId(1), Millis(0)).removed);
        assert_eq!(h.info(&c).local_subscribers, 1);
    }

    #[test]
    fn a_member_dropped_as_a_slow_consumer_leaves_when_its_session_ends() {
        let h = hub();
        let ns = NamespaceOptions {
            backpressure: BackpressurePolicy::Disconnect,
            presence: true,
            join_leave: true,
            presence_grace: Duration::from_secs(1),
            ..Default::default()
        };
        let c = ch("chat:slow-member");
        let watcher = Arc::new(Outbox::new(1000, 1 << 20));
        let slow = Arc::new(Outbox::new(3, 1 << 20));
        h.subscribe(
            &c,
            &ns,
            &LocalSubscriber { policy: ns.message_policy(watcher.bounds()), ..member(1, &watcher, "w", true) },
            Millis(0),
        )
        .ok();
        h.subscribe(
            &c,
            &ns,
            &LocalSubscriber { policy: ns.message_policy(slow.bounds()), ..member(2, &slow, "s", false) },
            Millis(0),
        )
        .ok();
        for i in 0..10 {
            publish(&h, &c, &ns, &raw(&i.to_string()), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        }
        let mut out = Vec::new();
        assert_eq!(slow.drain(&mut out), Some(ringcast_proto::CloseCode::SlowConsumer));
        frames(&watcher);
        // The session closes 4008 and unsubscribes what it held, as every session does.
        assert!(h.unsubscribe(&c, ConnId(2), Millis(10)).removed);
        h.sweep(Millis(2_000));
        let left: Vec<_> = frames(&watcher).into_iter().filter(|f| f["type"] == "leave").collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0]["user"], "s");
        let p = h.presence(&c, 10).map(|v| v.stats);
        assert_eq!(p, Some(PresenceStats { clients: 1, users: 1 }));
        assert_eq!(h.info(&c).local_subscribers, 1);
    }

    #[test]
    fn a_drop_oldest_reader_keeps_the_latest_with_a_gap_and_stays_subscribed() {
        let h = hub();
        let ns = NamespaceOptions { send_queue_messages: Some(3), ..Default::default() };
        let c = ch("chat:d");
        let slow = Arc::new(Outbox::new(1000, 1 << 20));
        h.subscribe(&c, &ns, &sub_in(&ns, 1, &slow), Millis(0)).ok();
        for i in 1..=10 {
            publish(&h, &c, &ns, &raw(&i.to_string()), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        }
        let got = frames(&slow);
        let kinds: Vec<String> = got
            .iter()
            .map(|f| match f["type"].as_str() {
                Some("gap") => format!("gap {}-{}", f["from"], f["to"]),
                Some("message") => format!("m{}", f["offset"]),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds[1..], ["gap 1-7", "m8", "m9", "m10"]);
        assert_eq!(h.info(&c).local_subscribers, 1, "still subscribed");
    }

    #[test]
    fn client_publishes_are_limited_per_channel_and_retries_are_free() {
        let h = hub();
        let ns = NamespaceOptions { client_publish_rate: 10, client_publish_burst: 2, ..Default::default() };
        let (a, b) = (ch("chat:rate-a"), ch("chat:rate-b"));
        let publish = |c: &ChannelName, key: Option<&str>, origin, at: u64| {
            h.publish(
                &PublishRequest { channel: c, ns: &ns, data: &raw("1"), idempotency_key: key, origin, key: None },
                Millis(at),
                SlotEpoch(1),
            )
            .map(|p| p.duplicate)
        };
        assert_eq!(publish(&a, Some("k"), Origin::Client, 0), Ok(false));
        assert_eq!(publish(&a, None, Origin::Client, 0), Ok(false));
        assert_eq!(publish(&a, None, Origin::Client, 0), Err(ErrorCode::RateLimited));
        assert_eq!(publish(&a, Some("k"), Origin::Client, 0), Ok(true), "a retry is answered from the window");
        assert_eq!(publish(&a, None, Origin::Api, 0), Ok(false), "the server API is not limited");
        assert_eq!(publish(&b, None, Origin::Client, 0), Ok(false), "each channel has its own budget");
        assert_eq!(publish(&a, None, Origin::Client, 100), Ok(false), "refilled at 10/s");
    }

    #[test]
    fn a_durable_message_is_delivered_once_when_committed_even_across_a_demotion() {
        let h = hub();
        let rec = Arc::new(Recorder::default());
        h.set_peers(rec.clone());
        let ns = NamespaceOptions { durable: true, ..Default::default() };
        let c = ch("orders:once");
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.subscribe(&c, &ns, &sub_in(&ns, 1, &o), Millis(0)).ok();
        let replica = (&node("r"), SlotEpoch(2));
        for d in ["1", "2"] {
            let data = raw(d);
            let p = PublishRequest {
                channel: &c,
                ns: &ns,
                data: &data,
                idempotency_key: None,
                origin: Origin::Api,
                key: None,
            };
            let out = h.publish_durable(&p, Millis(0), replica, 9);
            assert!(matches!(out, Ok(DurableAppend::Pending { sent: true, .. })), "{out:?}");
        }
        assert_eq!(frames(&o).len(), 1, "only the subscribed reply: nothing is visible before the replica holds it");
        h.commit(&c, Offset(1), SlotEpoch(2), Millis(0));
        let got = frames(&o);
        assert_eq!(got.iter().filter_map(|m| m["offset"].as_u64()).collect::<Vec<_>>(), vec![1]);
        // Handed off with offset 2 still pending, then owned again (a snapshot back):
        // offset 2 is not fanned out a second time by a stale pending entry.
        let slot = Slot::of(&c);
        let snap = h.snapshot_slot(slot, &node("me"), Millis(0));
        h.demote_slot(slot);
        h.install(snap, &node("me"), |_| Some(ns.clone()), Millis(0));
        let got = frames(&o);
        assert_eq!(
            got.iter().filter_map(|m| m["offset"].as_u64()).collect::<Vec<_>>(),
            vec![2],
            "once, from the snapshot"
        );
        h.commit(&c, Offset(2), SlotEpoch(3), Millis(0));
        assert!(frames(&o).is_empty(), "nothing delivered twice");
    }

    #[test]
    fn a_fill_the_owner_can_no_longer_serve_becomes_a_gap() {
        let h = hub();
        let c = ch("chat:lost");
        let epoch = Epoch::new(9).unwrap_or_else(|| unreachable!());
        let at = |o: u64| StreamPosition { epoch, offset: Offset(o) };
        let frame = |o: u64| Utf8Bytes::from(ringcast_proto::client::encode_message(&c, at(o), &raw(&o.to_string())));
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.attach_remote(&c, &sub(1, &o, None, 3), at(10), SubscribeOutcome::Fresh, vec![], None).ok();
        h.deliver_remote(&c, at(40), frame(40).into(), Millis(0));
        // The owner's history now starts at 30: 11..=29 are gone, 30..=39 come with the page.
        h.offer_fill(&c, Some(epoch), Offset(30), (30..40).map(|o| (at(o), frame(o))).collect(), Millis(600));
        let got = frames(&o);
        assert_eq!(got[1]["type"], "gap");
        assert_eq!((got[1]["from"].as_u64(), got[1]["to"].as_u64()), (Some(11), Some(29)));
        assert_eq!(got[1]["reason"], "unavailable");
        let offsets: Vec<u64> = got[2..].iter().filter_map(|m| m["offset"].as_u64()).collect();
        assert_eq!(offsets, (30..=40).collect::<Vec<_>>());
    }

    /// Records frames per peer, in queue order (stands in for the peer links).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(NodeId, PeerFrame)>>);

    impl PeerSink for Recorder {
        fn send(&self, node: &NodeId, frame: PeerFrame) -> bool {
            lock(&self.0).push((node.clone(), frame));
            true
        }

        fn slot_epoch(&self, _: Slot) -> SlotEpoch {
            SlotEpoch(5)
        }
    }

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A hub with a webhook sender (never run: tests read its queue) and 5 s grace.
    fn hub_with_webhooks() -> (Hub, Arc<Webhooks>) {
        hub_with_webhooks_as("me")
    }

    fn hub_with_webhooks_as(me: &str) -> (Hub, Arc<Webhooks>) {
        let h = hub_as(me);
        let config = crate::webhooks::WebhooksConfig {
            url: Some("http://127.0.0.1:9/hooks".into()),
            secret: Some("0123456789abcdef".into()),
            ..Default::default()
        };
        let w = Webhooks::new(&config, &node("me"), 1, Arc::new(Metrics::default()))
            .unwrap_or_else(|| unreachable!("configured"));
        h.set_webhooks(w.clone());
        (h, w)
    }

    /// A presence namespace with a 2 s grace whose presence events go to webhooks.
    fn presence_webhooks_ns() -> NamespaceOptions {
        NamespaceOptions {
            presence: true,
            presence_grace: Duration::from_secs(2),
            webhooks: vec![ringcast_core::WebhookKind::Presence],
            ..Default::default()
        }
    }

    fn kinds(events: &[serde_json::Value]) -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{} {}", e["type"].as_str().unwrap_or("?"), e["channel"].as_str().unwrap_or("?")))
            .collect()
    }

    #[test]
    fn occupancy_is_reported_once_per_change_by_the_owner() {
        let (h, w) = hub_with_webhooks();
        let rec = Arc::new(Recorder::default());
        h.set_peers(rec.clone());
        let ns = NamespaceOptions { webhooks: vec![ringcast_core::WebhookKind::Occupancy], ..Default::default() };
        let c = ch("chat:occ");
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.subscribe(&c, &ns, &sub(1, &o, None, 1), Millis(0)).ok();
        h.subscribe(&c, &ns, &sub(2, &o, None, 2), Millis(0)).ok();
        let g = node("gw");
        assert!(h.serve_peer_subscribe(&c, &ns, &g, 7, (None, false), None, Millis(0)));
        assert_eq!(kinds(&w.take_queued()), ["channel_occupied chat:occ"], "the first subscriber only");
        h.unsubscribe(&c, ConnId(1), Millis(10));
        h.unsubscribe(&c, ConnId(2), Millis(10));
        h.sweep(Millis(60_000));
        assert!(w.take_queued().is_empty(), "a node still has subscribers");
        h.drop_interest(&c, &g, Millis(100));
        h.sweep(Millis(5_099));
        assert!(w.take_queued().is_empty(), "within the grace");
        h.subscribe(&c, &ns, &sub(3, &o, None, 3), Millis(5_000)).ok();
        h.sweep(Millis(20_000));
        assert!(w.take_queued().is_empty(), "back within the grace: nothing to report");
        h.unsubscribe(&c, ConnId(3), Millis(20_000));
        h.sweep(Millis(25_000));
        h.sweep(Millis(30_000));
        assert_eq!(kinds(&w.take_queued()), ["channel_vacated chat:occ"]);
        h.sweep(Millis(40_000));
        assert_eq!(h.info(&c).local_subscribers, 0);
        // Namespaces that did not select occupancy report nothing.
        let plain = NamespaceOptions::default();
        h.subscribe(&ch("chat:plain"), &plain, &sub(4, &o, None, 4), Millis(0)).ok();
        assert!(w.take_queued().is_empty());
    }

    #[test]
    fn messages_are_reported_once_with_their_position_and_data() {
        let (h, w) = hub_with_webhooks();
        let ns = NamespaceOptions { webhooks: vec![ringcast_core::WebhookKind::Messages], ..Default::default() };
        let c = ch("chat:msg");
        let p1 = publish(&h, &c, &ns, &raw(r#"{"t":"hi"}"#), Some("k1"), Origin::Client, Millis(0), SlotEpoch(1));
        let dup = publish(&h, &c, &ns, &raw(r#"{"t":"hi"}"#), Some("k1"), Origin::Client, Millis(1), SlotEpoch(1));
        assert!(dup.is_ok_and(|d| d.duplicate));
        publish(&h, &c, &ns, &raw("2"), None, Origin::Api, Millis(2), SlotEpoch(1)).ok();
        let events = w.take_queued();
        assert_eq!(kinds(&events), ["message chat:msg", "message chat:msg"], "the duplicate is not a new message");
        let Ok(p1) = p1 else { panic!("published") };
        assert_eq!(events[0]["epoch"], p1.position.epoch.get().to_string());
        assert_eq!((events[0]["offset"].as_u64(), events[1]["offset"].as_u64()), (Some(1), Some(2)));
        assert_eq!(events[0]["data"], serde_json::json!({"t": "hi"}));
        assert_ne!(events[0]["id"], events[1]["id"]);
    }

    #[test]
    fn presence_members_are_reported_after_the_grace() {
        let (h, w) = hub_with_webhooks();
        let ns = presence_webhooks_ns();
        let c = ch("chat:room");
        let o = Arc::new(Outbox::new(100, 1 << 20));
        let member = |conn| LocalSubscriber {
            member: Some(MemberTag { user: Arc::from("alice"), info: Some(Arc::from(r#"{"n":"A"}"#)) }),
            ..sub(conn, &o, None, conn)
        };
        h.subscribe(&c, &ns, &member(1), Millis(0)).ok();
        h.subscribe(&c, &ns, &member(2), Millis(0)).ok();
        let joined = w.take_queued();
        assert_eq!(kinds(&joined), ["member_joined chat:room"], "one per user");
        assert_eq!((joined[0]["user"].as_str(), &joined[0]["info"]), (Some("alice"), &serde_json::json!({"n": "A"})));
        h.unsubscribe(&c, ConnId(1), Millis(10));
        h.unsubscribe(&c, ConnId(2), Millis(10));
        h.subscribe(&c, &ns, &member(3), Millis(1_000)).ok();
        h.unsubscribe(&c, ConnId(3), Millis(1_500));
        h.sweep(Millis(3_000));
        assert!(w.take_queued().is_empty(), "a flap within the grace");
        h.sweep(Millis(3_600));
        assert_eq!(kinds(&w.take_queued()), ["member_left chat:room"]);
    }

    #[test]
    fn a_handoff_flushes_a_pending_vacancy_and_the_new_owner_inherits_the_rest() {
        let (old, w_old) = hub_with_webhooks();
        let (new, w_new) = hub_with_webhooks();
        let ns = NamespaceOptions { webhooks: vec![ringcast_core::WebhookKind::Occupancy], ..Default::default() };
        let busy = ch("chat:busy");
        let idle = ch("chat:idle");
        let o = Arc::new(Outbox::new(100, 1 << 20));
        // Two channels of one slot would be luckier than needed: hand each slot off.
        old.subscribe(&busy, &ns, &sub(1, &o, None, 1), Millis(0)).ok();
        old.subscribe(&idle, &ns, &sub(2, &o, None, 2), Millis(0)).ok();
        old.unsubscribe(&idle, ConnId(2), Millis(10));
        assert_eq!(w_old.take_queued().len(), 2);
        let mut handed = Vec::new();
        for c in [&busy, &idle] {
            handed.extend(old.snapshot_slot(Slot::of(c), &node("me"), Millis(20)));
        }
        assert_eq!(kinds(&w_old.take_queued()), ["channel_vacated chat:idle"], "the pending vacancy, at once");
        let occupied: Vec<_> = handed.iter().map(|h| (h.channel.to_string(), h.occupied)).collect();
        assert!(
            occupied.contains(&("chat:busy".into(), Some(true)))
                && occupied.contains(&("chat:idle".into(), Some(false)))
        );
        new.install(handed, &node("new"), |_| Some(ns.clone()), Millis(30));
        assert!(w_new.take_queued().is_empty(), "the backend already knows both");
        new.subscribe(&idle, &ns, &sub(5, &o, None, 5), Millis(40)).ok();
        assert_eq!(kinds(&w_new.take_queued()), ["channel_occupied chat:idle"]);
    }

    #[test]
    fn a_pending_leave_moves_with_the_handoff_and_is_sent_once_by_the_new_owner() {
        let (old, w_old) = hub_with_webhooks();
        let (new, w_new) = hub_with_webhooks();
        let ns = presence_webhooks_ns();
        let c = ch("chat:moving");
        let o = Arc::new(Outbox::new(100, 1 << 20));
        let member = |conn, user: &str| LocalSubscriber {
            member: Some(MemberTag { user: Arc::from(user), info: None }),
            ..sub(conn, &o, None, conn)
        };
        old.subscribe(&c, &ns, &member(1, "alice"), Millis(0)).ok();
        old.subscribe(&c, &ns, &member(2, "bob"), Millis(0)).ok();
        old.unsubscribe(&c, ConnId(1), Millis(1_000));
        old.unsubscribe(&c, ConnId(2), Millis(1_000));
        assert_eq!(w_old.take_queued().len(), 2, "two joins");
        let handed = old.snapshot_slot(Slot::of(&c), &node("me"), Millis(1_500));
        let leaving: Vec<_> = handed.iter().flat_map(|h| h.leaving.iter().map(|l| l.ago.as_millis())).collect();
        assert_eq!(leaving, [500, 500]);
        old.demote_slot(Slot::of(&c));
        // The new owner's clock reads differently; bob comes back through it.
        new.install(handed, &node("new"), |_| Some(ns.clone()), Millis(50_000));
        new.subscribe(&c, &ns, &member(5, "bob"), Millis(50_100)).ok();
        new.sweep(Millis(51_499));
        old.sweep(Millis(10_000));
        assert!(w_new.take_queued().is_empty() && w_old.take_queued().is_empty(), "within the grace");
        new.sweep(Millis(51_500));
        let events = w_new.take_queued();
        assert_eq!(kinds(&events), ["member_left chat:moving"]);
        assert_eq!(events[0]["user"], "alice", "bob came back in time");
        new.sweep(Millis(60_000));
        assert!(w_new.take_queued().is_empty(), "once");
    }

    #[test]
    fn the_members_move_with_the_handoff_and_leave_through_the_new_owner() {
        let (old, _w_old) = hub_with_webhooks();
        let (new, w_new) = hub_with_webhooks_as("new");
        let rec = Arc::new(Recorder::default());
        old.set_peers(rec.clone());
        let ns = presence_webhooks_ns();
        let c = ch("chat:members");
        let o = Arc::new(Outbox::new(100, 1 << 20));
        let ann =
            LocalSubscriber { member: Some(MemberTag { user: Arc::from("ann"), info: None }), ..sub(1, &o, None, 1) };
        old.subscribe(&c, &ns, &ann, Millis(0)).ok();
        let bob = Some((ConnId(7), Arc::<str>::from("bob"), Some(Arc::<str>::from(r#"{"n":2}"#))));
        assert!(old.serve_peer_subscribe(&c, &ns, &node("gw"), 1, (None, false), bob, Millis(0)));
        let handed = old.snapshot_slot(Slot::of(&c), &node("me"), Millis(100));
        old.demote_slot(Slot::of(&c));
        new.install(handed, &node("new"), |_| Some(ns.clone()), Millis(1_000));
        let view = new.presence(&c, 10).unwrap_or_else(|| unreachable!("installed"));
        let mut present: Vec<(String, String)> =
            view.members.iter().map(|m| (m.node.to_string(), m.user.to_string())).collect();
        present.sort();
        assert_eq!(present, [("gw".to_owned(), "bob".to_owned()), ("me".to_owned(), "ann".to_owned())]);
        assert!(w_new.take_queued().is_empty(), "inherited members are not joins");
        // Bob's node tells the new owner he left, before it re-announces anything.
        new.presence_update(&c, &ns, &node("gw"), Vec::new(), &[ConnId(7)], false, Millis(1_100));
        new.sweep(Millis(3_100));
        let events = w_new.take_queued();
        assert_eq!(kinds(&events), ["member_left chat:members"]);
        assert_eq!((events[0]["user"].as_str(), events[0]["info"]["n"].as_u64()), (Some("bob"), Some(2)));
    }

    /// Old owner `old` with ann (its own) and bob (of node `gw`) in a presence channel,
    /// sealed for a handoff and snapshotted; the new owner `new` sealed for the take-over.
    fn presence_handoff_in_flight() -> (Hub, Hub, Arc<Webhooks>, NamespaceOptions, ChannelName, Vec<ChannelHandoff>) {
        let (old, _w_old) = hub_with_webhooks();
        let (new, w_new) = hub_with_webhooks_as("new");
        old.set_peers(Arc::new(Recorder::default()));
        let ns = presence_webhooks_ns();
        let c = ch("chat:sealed");
        let o = Arc::new(Outbox::new(100, 1 << 20));
        let ann =
            LocalSubscriber { member: Some(MemberTag { user: Arc::from("ann"), info: None }), ..sub(1, &o, None, 1) };
        old.subscribe(&c, &ns, &ann, Millis(0)).ok();
        let bob = Some((ConnId(7), Arc::<str>::from("bob"), None));
        assert!(old.serve_peer_subscribe(&c, &ns, &node("gw"), 1, (None, false), bob, Millis(0)));
        old.seal(Slot::of(&c));
        let handed = old.snapshot_slot(Slot::of(&c), &node("me"), Millis(100));
        new.seal(Slot::of(&c));
        (old, new, w_new, ns, c, handed)
    }

    /// The users of the channel's present members (one per client) at `h`, its owner.
    fn member_users(h: &Hub, c: &ChannelName) -> Vec<String> {
        let view = h.presence(c, 10).unwrap_or_else(|| panic!("{c} has no presence here"));
        view.members.iter().map(|m| m.user.to_string()).collect()
    }

    #[test]
    fn a_leave_that_reaches_the_new_owner_before_its_install_is_applied_after_it() {
        let (_old, new, w_new, ns, c, handed) = presence_handoff_in_flight();
        // gw saw the claim first: bob's leave arrives while the take-over is sealed.
        new.presence_update(&c, &ns, &node("gw"), Vec::new(), &[ConnId(7)], false, Millis(1_000));
        assert!(new.presence(&c, 10).is_none(), "noted, not applied to nothing");
        new.install(handed, &node("new"), |_| Some(ns.clone()), Millis(1_010));
        assert_eq!(member_users(&new, &c).len(), 2, "still sealed: bob is inherited, not yet gone");
        new.unseal(Slot::of(&c));
        assert_eq!(member_users(&new, &c), ["ann"]);
        new.sweep(Millis(2_999));
        assert!(w_new.take_queued().is_empty(), "within the grace from when he left");
        new.sweep(Millis(3_000));
        let events = w_new.take_queued();
        assert_eq!(kinds(&events), ["member_left chat:sealed"]);
        assert_eq!(events[0]["user"], "bob");
        assert!(lock(&new.noted_while_sealed).is_empty());
    }

    #[test]
    fn presence_noted_while_sealed_goes_first_and_in_order() {
        let (_old, new, w_new, ns, c, handed) = presence_handoff_in_flight();
        let carl = || vec![(ConnId(8), Arc::<str>::from("carl"), None)];
        // gw announces carl, then bob leaves; after the unseal carl leaves too.
        new.presence_update(&c, &ns, &node("gw"), carl(), &[], false, Millis(1_000));
        new.presence_update(&c, &ns, &node("gw"), Vec::new(), &[ConnId(7)], false, Millis(1_001));
        new.install(handed, &node("new"), |_| Some(ns.clone()), Millis(1_010));
        new.unseal(Slot::of(&c));
        new.presence_update(&c, &ns, &node("gw"), Vec::new(), &[ConnId(8)], false, Millis(1_100));
        new.sweep(Millis(10_000));
        let mut events: Vec<String> = w_new
            .take_queued()
            .iter()
            .map(|e| format!("{} {}", e["type"].as_str().unwrap_or("?"), e["user"].as_str().unwrap_or("?")))
            .collect();
        assert_eq!(events.remove(0), "member_joined carl");
        events.sort();
        assert_eq!(events, ["member_left bob", "member_left carl"]);
        assert_eq!(member_users(&new, &c), ["ann"]);
    }

    #[test]
    fn presence_noted_at_an_old_owner_applies_if_the_handoff_failed_and_drops_if_it_went() {
        // Failed: the old owner keeps the slot and bob's leave.
        let (old, _new, _w, ns, c, _handed) = presence_handoff_in_flight();
        old.presence_update(&c, &ns, &node("gw"), Vec::new(), &[ConnId(7)], false, Millis(1_000));
        assert_eq!(member_users(&old, &c).len(), 2, "noted while sealed");
        old.unseal(Slot::of(&c));
        assert_eq!(member_users(&old, &c), ["ann"]);
        assert!(lock(&old.noted_while_sealed).is_empty());
        // Went: the demoted old owner starts nothing; gw re-announces to the new owner.
        let (old, _new, _w, ns, c, _handed) = presence_handoff_in_flight();
        old.demote_slot(Slot::of(&c));
        old.presence_update(&c, &ns, &node("gw"), Vec::new(), &[ConnId(7)], false, Millis(1_000));
        old.unseal(Slot::of(&c));
        assert!(old.presence(&c, 10).is_none() && old.committed(&c).is_none(), "no log, no presence");
        assert!(lock(&old.noted_while_sealed).is_empty());
    }

    /// An owner with `chat:failover` at offsets 1..=3, and a replica (another epoch
    /// source) holding its copy, recording what it sends to peers.
    fn owner_and_replica() -> (Hub, Hub, Arc<Recorder>, ChannelName, StreamPosition) {
        let (owner, replica) = (hub(), Hub::new(node("r"), EpochSource::new(5000), Arc::new(Metrics::default())));
        owner.set_peers(Arc::new(Recorder::default()));
        let sent = Arc::new(Recorder::default());
        replica.set_peers(sent.clone());
        let ns = NamespaceOptions::default();
        let c = ch("chat:failover");
        for d in ["1", "2", "3"] {
            publish(&owner, &c, &ns, &raw(d), None, Origin::Api, Millis(0), SlotEpoch(1))
                .unwrap_or_else(|e| panic!("{e:?}"));
        }
        let top = owner.committed(&c).unwrap_or_else(|| unreachable!("published"));
        let slot = Slot::of(&c);
        replica.install_replica(
            slot,
            owner.snapshot_slot(slot, &node("me"), Millis(0)),
            |_| Some(ns.clone()),
            Millis(0),
        );
        (owner, replica, sent, c, top)
    }

    /// `gw` subscribes to the channel at `at` from offset 2 of `top`'s epoch.
    fn peer_subscribe(at: &Hub, c: &ChannelName, top: StreamPosition, req: u64) {
        let since = Some(Since { epoch: Some(top.epoch), offset: Offset(2) });
        assert!(at.serve_peer_subscribe(
            c,
            &NamespaceOptions::default(),
            &node("gw"),
            req,
            (since, false),
            None,
            Millis(1)
        ));
    }

    #[test]
    fn a_subscribe_between_a_claim_and_its_promotion_is_refused_and_its_retry_continues_the_epoch() {
        let (_owner, replica, sent, c, top) = owner_and_replica();
        let slot = Slot::of(&c);
        // The replica claimed the lost owner's slot; its route table may name it before
        // the promotion runs, so the slot is sealed from before until after.
        replica.seal(slot);
        peer_subscribe(&replica, &c, top, 1);
        assert!(
            matches!(lock(&sent.0).pop(), Some((_, PeerFrame::Refused { req: 1, retry: true, .. }))),
            "refused, to be retried"
        );
        assert_eq!(replica.committed(&c), None, "no stream was started from nothing");
        assert_eq!(replica.promote_slot(slot, &node("r"), |_| Some(NamespaceOptions::default()), Millis(2)), 1);
        replica.unseal(slot);
        peer_subscribe(&replica, &c, top, 2);
        match lock(&sent.0).pop() {
            Some((_, PeerFrame::Subscribed { epoch, offset, replay, .. })) => {
                assert_eq!((epoch, offset), (top.epoch.get(), 3), "the lost owner's epoch goes on");
                assert_eq!(replay.len(), 1, "offset 3 is replayed");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(interest_of(&replica, &c), Some(vec!["gw".to_owned()]));
    }

    #[test]
    fn an_install_over_a_log_started_meanwhile_keeps_its_followers_and_tells_its_subscribers() {
        let (_owner, replica, sent, c, top) = owner_and_replica();
        let slot = Slot::of(&c);
        // Unsealed (what sealing prevents): a peer's and a local subscribe start a stream
        // in a new epoch.
        peer_subscribe(&replica, &c, top, 1);
        assert!(
            matches!(lock(&sent.0).pop(), Some((_, PeerFrame::Subscribed { epoch, .. })) if epoch != top.epoch.get())
        );
        let o = Arc::new(Outbox::new(100, 1 << 20));
        replica.subscribe(&c, &NamespaceOptions::default(), &sub(1, &o, None, 1), Millis(1)).ok();
        assert_eq!(frames(&o)[0]["type"], "subscribed");
        assert_eq!(replica.promote_slot(slot, &node("r"), |_| Some(NamespaceOptions::default()), Millis(2)), 1);
        assert_eq!(replica.committed(&c), Some(top), "the replica's copy replaced it");
        // gw still gets the channel: its next message tells it the epoch changed.
        assert_eq!(interest_of(&replica, &c), Some(vec!["gw".to_owned()]));
        // The local subscriber is told its stream restarted, at the installed top.
        let got = frames(&o);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0]["type"].as_str(), got[0]["recovered"].as_bool()), (Some("resubscribed"), Some(false)));
        let epoch = top.epoch.get().to_string();
        assert_eq!((got[0]["epoch"].as_str(), got[0]["offset"].as_u64()), (Some(epoch.as_str()), Some(3)));
    }

    #[test]
    fn a_take_over_of_a_slot_whose_stale_log_is_still_here_gives_its_subscribers_what_they_missed() {
        // `stale` owned the channel up to offset 2 and lost the slot while paused; `next`
        // continued it to offset 4 and hands it back before `stale` has seen the view.
        let (stale, next) = (hub(), hub_as("next"));
        let ns = NamespaceOptions::default();
        let c = ch("chat:stale");
        let slot = Slot::of(&c);
        let o = Arc::new(Outbox::new(100, 1 << 20));
        stale.subscribe(&c, &ns, &sub_in(&ns, 1, &o), Millis(0)).ok();
        for d in ["1", "2"] {
            publish(&stale, &c, &ns, &raw(d), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        }
        next.install(stale.snapshot_slot(slot, &node("me"), Millis(0)), &node("next"), |_| Some(ns.clone()), Millis(0));
        for d in ["3", "4"] {
            publish(&next, &c, &ns, &raw(d), None, Origin::Api, Millis(1), SlotEpoch(2)).ok();
        }
        let offsets = |o: &Outbox| frames(o).iter().filter_map(|m| m["offset"].as_u64()).collect::<Vec<_>>();
        assert_eq!(offsets(&o), [0, 1, 2], "the reply, then 1 and 2");
        stale.install(next.snapshot_slot(slot, &node("next"), Millis(2)), &node("me"), |_| Some(ns.clone()), Millis(2));
        assert_eq!(offsets(&o), [3, 4], "what the stale log never had, from the history");
        // Beyond the history: a gap, then what it still holds.
        let short = NamespaceOptions { history_size: 1, ..NamespaceOptions::default() };
        let c = ch("chat:short");
        let slot = Slot::of(&c);
        let o2 = Arc::new(Outbox::new(100, 1 << 20));
        stale.subscribe(&c, &short, &sub_in(&short, 2, &o2), Millis(3)).ok();
        publish(&stale, &c, &short, &raw("1"), None, Origin::Api, Millis(3), SlotEpoch(1)).ok();
        next.install(
            stale.snapshot_slot(slot, &node("me"), Millis(3)),
            &node("next"),
            |_| Some(short.clone()),
            Millis(3),
        );
        for d in ["2", "3", "4"] {
            publish(&next, &c, &short, &raw(d), None, Origin::Api, Millis(4), SlotEpoch(2)).ok();
        }
        assert_eq!(offsets(&o2), [0, 1]);
        stale.install(
            next.snapshot_slot(slot, &node("next"), Millis(5)),
            &node("me"),
            |_| Some(short.clone()),
            Millis(5),
        );
        let got = frames(&o2);
        let kinds: Vec<_> = got.iter().map(|m| m["type"].as_str().unwrap_or("?")).collect();
        assert_eq!(kinds, ["gap", "message"], "{got:?}");
        assert_eq!(
            (got[0]["from"].as_u64(), got[0]["to"].as_u64(), got[1]["offset"].as_u64()),
            (Some(2), Some(3), Some(4))
        );
    }

    #[test]
    fn a_slot_sealed_by_two_tasks_stays_sealed_until_both_release_it() {
        let h = hub();
        let ns = NamespaceOptions::default();
        let c = ch("chat:sealed");
        let slot = Slot::of(&c);
        let o = Arc::new(Outbox::new(100, 1 << 20));
        // A handoff out and a claim overlap; the claim finishes first.
        h.seal(slot);
        h.seal(slot);
        h.unseal(slot);
        assert_eq!(h.subscribe(&c, &ns, &sub_in(&ns, 1, &o), Millis(0)), Err(ErrorCode::Unavailable));
        h.unseal(slot);
        assert_eq!(h.subscribe(&c, &ns, &sub_in(&ns, 1, &o), Millis(0)), Ok(()));
        // A release without a seal changes nothing.
        h.unseal(slot);
        h.seal(slot);
        assert!(h.slot_sealed(slot));
    }

    /// A handoff of `c` in which `gw`'s release reaches the new owner between its claim
    /// and its install: the old owner served subscribes from `gw` and `others`, the new
    /// owner seals the slot, notes the release and installs the old owner's snapshot.
    /// Returns the new owner (still sealed) and the slot.
    fn installed_with_a_noted_release(c: &ChannelName, ns: &NamespaceOptions, others: &[&str]) -> (Hub, Slot) {
        let (old, new) = (hub(), hub_as("new"));
        old.set_peers(Arc::new(Recorder::default()));
        new.set_peers(Arc::new(Recorder::default()));
        for (req, peer) in (1..).zip(std::iter::once(&"gw").chain(others)) {
            assert!(old.serve_peer_subscribe(c, ns, &node(peer), req, (None, false), None, Millis(0)));
        }
        let slot = Slot::of(c);
        let handed = old.snapshot_slot(slot, &node("me"), Millis(0));
        new.seal(slot);
        new.drop_interest(c, &node("gw"), Millis(1));
        new.install(handed, &node("new"), |_| Some(ns.clone()), Millis(2));
        (new, slot)
    }

    fn interest_of(h: &Hub, c: &ChannelName) -> Option<Vec<String>> {
        h.with_existing(c, |st| st.interest.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_release_that_reaches_the_new_owner_before_its_install_is_kept() {
        let (ns, c) = (NamespaceOptions::default(), ch("chat:early"));
        let (new, slot) = installed_with_a_noted_release(&c, &ns, &["gw2"]);
        new.unseal(slot);
        assert_eq!(interest_of(&new, &c), Some(vec!["gw2".to_owned()]));
        // Unsealing forgets the notes: a later handoff in starts clean.
        assert!(lock(&new.noted_while_sealed).is_empty());
    }

    #[test]
    fn a_noted_release_does_not_undo_a_subscribe_served_before_the_unseal_applied_it() {
        let (ns, c) = (NamespaceOptions::default(), ch("chat:again"));
        // gw's last subscriber leaves while the new owner installs; a new one comes.
        let (new, slot) = installed_with_a_noted_release(&c, &ns, &[]);
        // The last seal is released, and gw's retried subscribe is served before the
        // unseal reaches the channel to apply the release.
        new.sealed[usize::from(slot.get())].store(0, Ordering::SeqCst);
        assert!(new.serve_peer_subscribe(&c, &ns, &node("gw"), 2, (None, false), None, Millis(3)));
        new.apply_noted(slot);
        assert_eq!(interest_of(&new, &c), Some(vec!["gw".to_owned()]), "the subscribe came after the release");
        assert!(lock(&new.noted_while_sealed).is_empty());
    }

    #[test]
    fn a_resync_answered_after_the_last_subscriber_left_releases_the_interest() {
        let h = hub();
        let c = ch("chat:resync");
        let epoch = Epoch::new(3).unwrap_or_else(|| unreachable!());
        let at = |o: u64| StreamPosition { epoch, offset: Offset(o) };
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.attach_remote(&c, &sub(1, &o, None, 1), at(5), SubscribeOutcome::Fresh, vec![], None).ok();
        assert!(!h.resynced(&c, at(6), None, vec![], Millis(0)), "a subscriber follows it");
        assert!(h.unsubscribe(&c, ConnId(1), Millis(0)).release);
        assert!(h.resynced(&c, at(7), None, vec![], Millis(0)), "the reply registered the interest again");
        assert!(!h.follows_remote(&c));
        h.sweep(Millis(600_000));
        assert!(h.resynced(&c, at(8), None, vec![], Millis(0)), "and a forgotten channel is followed by nobody");
    }

    #[test]
    fn owner_replies_before_delivering_and_fans_out_once_per_node() {
        let h = hub();
        let rec = Arc::new(Recorder::default());
        h.set_peers(rec.clone());
        let ns = NamespaceOptions::default();
        let c = ch("chat:remote");
        publish(&h, &c, &ns, &raw("1"), None, Origin::Api, Millis(0), SlotEpoch(5)).ok();
        let g = node("gw");
        assert!(h.serve_peer_subscribe(&c, &ns, &g, 7, (None, false), None, Millis(0)));
        assert!(h.serve_peer_subscribe(&c, &ns, &g, 8, (None, false), None, Millis(0)));
        publish(&h, &c, &ns, &raw("2"), None, Origin::Api, Millis(0), SlotEpoch(5)).ok();
        let frames = lock(&rec.0).clone();
        assert!(matches!(&frames[0].1, PeerFrame::Subscribed { req: 7, offset: 1, .. }), "{frames:?}");
        assert!(matches!(&frames[1].1, PeerFrame::Subscribed { req: 8, offset: 1, .. }));
        assert!(matches!(&frames[2].1, PeerFrame::Deliver { offset: 2, slot_epoch: 5, .. }));
        assert_eq!(frames.len(), 3, "one Deliver per node, however many subscribers it has");
        h.drop_interest(&c, &g, Millis(0));
        publish(&h, &c, &ns, &raw("3"), None, Origin::Api, Millis(0), SlotEpoch(5)).ok();
        assert_eq!(lock(&rec.0).len(), 3);
    }

    #[test]
    fn gateway_delivers_in_order_exactly_once_and_fills_gaps() {
        let h = hub();
        let ns = NamespaceOptions::default();
        let c = ch("chat:mirror");
        let epoch = Epoch::new(9).unwrap_or_else(|| unreachable!());
        let at = |o: u64| StreamPosition { epoch, offset: Offset(o) };
        let frame = |o: u64| Utf8Bytes::from(ringcast_proto::client::encode_message(&c, at(o), &raw(&o.to_string())));
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.attach_remote(&c, &sub(1, &o, None, 3), at(10), SubscribeOutcome::Fresh, vec![], None).ok();
        assert!(h.deliver_remote(&c, at(11), frame(11).into(), Millis(0)));
        assert!(h.deliver_remote(&c, at(11), frame(11).into(), Millis(0)), "a duplicate is dropped");
        assert!(h.deliver_remote(&c, at(13), frame(13).into(), Millis(0)), "a gap is buffered");
        assert!(h.due_fills(Millis(100), std::time::Duration::from_millis(500)).is_empty());
        let fills = h.due_fills(Millis(600), std::time::Duration::from_millis(500));
        assert_eq!(fills.len(), 1);
        assert_eq!((fills[0].1.after, fills[0].1.before), (Offset(11), Offset(13)));
        h.offer_fill(&c, Some(epoch), Offset(1), vec![(at(12), frame(12))], Millis(700));
        let got = frames(&o);
        let offsets: Vec<u64> = got.iter().filter_map(|m| m["offset"].as_u64()).collect();
        assert_eq!(offsets, vec![10, 11, 12, 13], "the subscribed reply (at 10), then 11..=13 once each");
        // The last local subscriber leaving releases the remote interest.
        let out = h.unsubscribe(&c, ConnId(1), Millis(0));
        assert_eq!((out.removed, out.release), (true, true), "the owner registered it with its reply");
        let _ = ns;
    }

    #[test]
    fn a_subscriber_entry_stays_at_forty_bytes() {
        // A channel's map holds one per subscriber: growing it grows every subscription
        // (docs/benchmarks.md, idle memory with ten subscriptions per connection).
        assert_eq!(std::mem::size_of::<(ConnId, Subscriber)>(), 40);
    }

    #[test]
    fn a_packed_policy_keeps_every_bound_the_configuration_allows() {
        for policy in [
            BackpressurePolicy::DropOldest,
            BackpressurePolicy::DropNewest,
            BackpressurePolicy::Disconnect,
            BackpressurePolicy::KeepLatest,
        ] {
            for (messages, bytes) in
                [(1, 1024), (1000, 1 << 20), (crate::config::MAX_SEND_QUEUE, crate::config::MAX_SEND_QUEUE)]
            {
                let p = MessagePolicy { policy, bounds: Bounds { messages, bytes } };
                assert_eq!(PackedPolicy::of(p).get(), p);
            }
        }
        let beyond = MessagePolicy {
            policy: BackpressurePolicy::Disconnect,
            bounds: Bounds { messages: usize::MAX, bytes: crate::config::MAX_SEND_QUEUE + 1 },
        };
        let kept = PackedPolicy::of(beyond).get().bounds;
        assert_eq!((kept.messages, kept.bytes), (crate::config::MAX_SEND_QUEUE, crate::config::MAX_SEND_QUEUE));
    }

    #[test]
    fn a_subscriber_attached_while_the_mirror_fills_a_gap_gets_nothing_twice() {
        let h = hub();
        let c = ch("chat:mirror");
        let epoch = Epoch::new(9).unwrap_or_else(|| unreachable!());
        let at = |o: u64| StreamPosition { epoch, offset: Offset(o) };
        let frame = |o: u64| Utf8Bytes::from(ringcast_proto::client::encode_message(&c, at(o), &raw(&o.to_string())));
        let first = Arc::new(Outbox::new(100, 1 << 20));
        h.attach_remote(&c, &sub(1, &first, None, 1), at(10), SubscribeOutcome::Fresh, vec![], None).ok();
        // 11 is lost on the way, 12 and 13 wait in the mirror for it.
        h.deliver_remote(&c, at(12), frame(12).into(), Millis(0));
        h.deliver_remote(&c, at(13), frame(13).into(), Millis(0));
        // A second subscriber resumes from 10: the owner replies at 13 with the replay.
        let second = Arc::new(Outbox::new(100, 1 << 20));
        let since = Since { epoch: Some(epoch), offset: Offset(10) };
        let outcome = SubscribeOutcome::Recovered { replayed: 3 };
        h.attach_remote(&c, &sub(2, &second, Some(since), 2), at(13), outcome, (11..=13).map(frame).collect(), None)
            .ok();
        // The gap is filled: the mirror releases 11..=13, then 14 arrives live.
        h.offer_fill(&c, Some(epoch), Offset(1), vec![(at(11), frame(11))], Millis(700));
        h.deliver_remote(&c, at(14), frame(14).into(), Millis(800));
        let offsets = |o: &Outbox| -> Vec<u64> { frames(o).iter().filter_map(|m| m["offset"].as_u64()).collect() };
        assert_eq!(offsets(&first), vec![10, 11, 12, 13, 14]);
        assert_eq!(offsets(&second), vec![13, 11, 12, 13, 14], "the reply at 13, the replay, then only 14");
    }

    /// A handoff whose answer never came: a subscriber attached at the new owner (the
    /// view already named it) while this node still held the old log, and follows the
    /// new owner through a mirror. When the handoff is finally resolved and the old log
    /// demoted, the mirror must stay where the subscriber is, not go back to the log's
    /// top (which replayed 31..=66 in a chaos run), nor jump ahead of it.
    #[test]
    fn demoting_a_stale_log_keeps_the_mirror_that_follows_the_new_owner() {
        let h = hub();
        let ns = NamespaceOptions::default();
        let c = ch("chat:late");
        for i in 1..=3 {
            publish(&h, &c, &ns, &raw(&i.to_string()), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        }
        let epoch = h.committed(&c).unwrap_or_else(|| panic!("log")).epoch;
        let at = |o: u64| StreamPosition { epoch, offset: Offset(o) };
        let frame = |o: u64| Utf8Bytes::from(ringcast_proto::client::encode_message(&c, at(o), &raw(&o.to_string())));
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.attach_remote(&c, &sub(1, &o, None, 1), at(3), SubscribeOutcome::Fresh, vec![], None).ok();
        for i in 4..=6 {
            h.deliver_remote(&c, at(i), frame(i).into(), Millis(0));
        }
        h.demote_slot(Slot::of(&c));
        h.deliver_remote(&c, at(7), frame(7).into(), Millis(0));
        let offsets: Vec<u64> = frames(&o).iter().filter_map(|m| m["offset"].as_u64()).collect();
        assert_eq!(offsets, vec![3, 4, 5, 6, 7]);
        assert!(h.due_fills(Millis(60_000), Duration::from_millis(1)).is_empty(), "no gap to fill");
    }

    #[test]
    fn an_interest_is_not_released_while_a_subscribe_is_in_flight() {
        let h = hub();
        let rec = Arc::new(Recorder::default());
        h.set_peers(rec.clone());
        let c = ch("chat:inflight");
        let owner = node("owner");
        let frame = || PeerFrame::Unsubscribe { slot: 0, slot_epoch: 0, channel: String::new() };
        let o = Arc::new(Outbox::new(100, 1 << 20));
        let epoch = Epoch::new(1).unwrap_or_else(|| unreachable!());
        let at = |o: u64| StreamPosition { epoch, offset: Offset(o) };
        let msg = |o: u64| Msg::from(Utf8Bytes::from(ringcast_proto::client::encode_message(&c, at(o), &raw("1"))));
        assert!(h.send_subscribe(&c, &owner, frame()));
        h.attach_remote(&c, &sub(1, &o, None, 1), at(0), SubscribeOutcome::Fresh, vec![], None).ok();

        // Connection 2 subscribes; connection 1 leaves before the owner's reply.
        assert!(h.send_subscribe(&c, &owner, frame()));
        let out = h.unsubscribe(&c, ConnId(1), Millis(0));
        assert_eq!((out.removed, out.release), (true, false), "the subscribe in flight needs the interest");
        assert!(h.deliver_remote(&c, at(1), msg(1), Millis(0)), "a Deliver ahead of the reply releases nothing");
        assert_eq!(h.sweep(Millis(600_000)), 0, "nor does the sweeper forget the channel");
        let o2 = Arc::new(Outbox::new(100, 1 << 20));
        h.attach_remote(&c, &sub(2, &o2, None, 2), at(1), SubscribeOutcome::Fresh, vec![], None).ok();
        assert!(h.follows_remote(&c));
        assert!(h.deliver_remote(&c, at(2), msg(2), Millis(0)));
        let got: Vec<(String, u64)> = frames(&o2)
            .iter()
            .map(|m| (m["type"].as_str().unwrap_or_default().to_owned(), m["offset"].as_u64().unwrap_or(0)))
            .collect();
        assert_eq!(got, [("subscribed".to_owned(), 1), ("message".to_owned(), 2)], "from its reply on");

        // Connection 3's subscribe fails after connection 2 left: the release is due then.
        assert!(h.send_subscribe(&c, &owner, frame()));
        assert!(!h.unsubscribe(&c, ConnId(2), Millis(0)).release);
        assert!(h.subscribe_abandoned(&c), "nobody follows the channel any more");
        assert!(!h.follows_remote(&c));
        assert!(!h.subscribe_abandoned(&c), "released once");

        // A failed subscribe beside a subscriber keeps the interest that one relies on.
        assert!(h.send_subscribe(&c, &owner, frame()));
        h.attach_remote(&c, &sub(4, &o, None, 4), at(2), SubscribeOutcome::Fresh, vec![], None).ok();
        assert!(h.send_subscribe(&c, &owner, frame()));
        assert!(!h.subscribe_abandoned(&c));
        assert!(h.follows_remote(&c));
        assert!(h.unsubscribe(&c, ConnId(4), Millis(0)).release, "the last subscriber releases it");
    }

    #[test]
    fn a_member_subscribing_through_a_peer_is_present_with_the_reply() {
        let h = hub();
        let rec = Arc::new(Recorder::default());
        h.set_peers(rec.clone());
        let ns = NamespaceOptions { presence: true, join_leave: true, ..Default::default() };
        let c = ch("chat:room");
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.subscribe(&c, &ns, &member(1, &o, "ann", true), Millis(0)).ok();
        let g = node("gw");
        let bob = Some((ConnId(7), Arc::<str>::from("bob"), None));
        assert!(h.serve_peer_subscribe(&c, &ns, &g, 9, (None, false), bob, Millis(10)));
        let view = h.presence(&c, 10).unwrap_or_else(|| unreachable!("owned"));
        let users: BTreeSet<&str> = view.members.iter().map(|m| m.user.as_ref()).collect();
        assert_eq!(users, BTreeSet::from(["ann", "bob"]), "bob is present as soon as he is subscribed");
        let frames = lock(&rec.0).clone();
        assert!(matches!(&frames[0].1, PeerFrame::Subscribed { req: 9, .. }), "{frames:?}");
        assert!(matches!(&frames[1].1, PeerFrame::Ephemeral { .. }), "bob's join follows the reply: {frames:?}");
    }

    fn member(conn: u64, outbox: &Arc<Outbox>, user: &str, join_leave: bool) -> LocalSubscriber {
        LocalSubscriber {
            member: Some(MemberTag { user: Arc::from(user), info: Some(Arc::from(r#"{"n":1}"#)) }),
            join_leave,
            ..sub(conn, outbox, None, conn)
        }
    }

    fn types(o: &Outbox) -> Vec<String> {
        frames(o).iter().map(|f| f["type"].as_str().unwrap_or_default().to_owned()).collect()
    }

    #[test]
    fn joins_and_leaves_go_once_to_the_channel_debounced() {
        let h = hub();
        let rec = Arc::new(Recorder::default());
        h.set_peers(rec.clone());
        let ns = NamespaceOptions { presence: true, join_leave: true, ..NamespaceOptions::default() };
        let c = ch("chat:room");
        let watcher = Arc::new(Outbox::new(100, 1 << 20));
        h.subscribe(&c, &ns, &member(1, &watcher, "w", true), Millis(0)).ok();
        // A peer with subscribers: events go to it once, as one frame.
        h.serve_peer_subscribe(&c, &ns, &node("b"), 1, (None, false), None, Millis(0));
        let quiet = Arc::new(Outbox::new(100, 1 << 20));
        h.subscribe(&c, &ns, &member(2, &quiet, "q", false), Millis(0)).ok();
        // alice joins on node b twice (two tabs), flaps, and comes back within the grace.
        let alice = || vec![(ConnId(7), Arc::<str>::from("alice"), None)];
        h.presence_update(&c, &ns, &node("b"), alice(), &[], false, Millis(10));
        h.presence_update(&c, &ns, &node("b"), vec![(ConnId(8), Arc::from("alice"), None)], &[], false, Millis(11));
        h.presence_update(&c, &ns, &node("b"), vec![], &[ConnId(7), ConnId(8)], false, Millis(20));
        h.sweep(Millis(20_000));
        h.presence_update(&c, &ns, &node("b"), alice(), &[], false, Millis(25_000));
        h.sweep(Millis(100_000));
        assert_eq!(types(&watcher), ["subscribed", "join", "join", "join"], "w, q and alice joined once each");
        assert!(types(&quiet).iter().all(|t| t != "join"), "no join/leave for a subscriber without them");
        let p = h.presence(&c, 10).map(|v| v.stats);
        assert_eq!(p, Some(PresenceStats { clients: 3, users: 3 }));
        // Node b dies: alice leaves once, after the grace.
        h.presence_node_gone(&node("b"), Millis(200_000));
        h.sweep(Millis(229_999));
        assert!(types(&watcher).is_empty());
        h.sweep(Millis(230_000));
        let pushed = frames(&watcher);
        assert_eq!(pushed.len(), 1);
        assert_eq!((pushed[0]["type"].as_str(), pushed[0]["user"].as_str()), (Some("leave"), Some("alice")));
        h.sweep(Millis(300_000));
        assert!(types(&watcher).is_empty(), "a leave is sent once");
        let ephemeral: Vec<String> = lock(&rec.0)
            .iter()
            .filter_map(|(_, f)| match f {
                PeerFrame::Ephemeral { frame, join_leave: true, .. } => Some(frame.clone()),
                _ => None,
            })
            .collect();
        // w joined before node b registered interest; q, alice and alice's leave reach b.
        assert_eq!(ephemeral.len(), 3, "each event once to node b: {ephemeral:?}");
    }

    #[test]
    fn typing_is_ephemeral_and_limited_per_user() {
        let h = hub();
        let ns = NamespaceOptions::default();
        let c = ch("chat:room");
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.subscribe(&c, &ns, &sub(1, &o, None, 1), Millis(0)).ok();
        let alice: Arc<str> = Arc::from("alice");
        assert!(h.typing(&c, &alice, None, Millis(10)));
        assert!(!h.typing(&c, &alice, None, Millis(500)), "one per second");
        assert!(h.typing(&c, &Arc::from("bob"), None, Millis(600)));
        assert!(h.typing(&c, &alice, None, Millis(1010)));
        assert_eq!(types(&o), ["subscribed", "typing", "typing", "typing"]);
        let page = h.history(&c, None, 100, Millis(2000));
        assert_eq!(page.map(|p| p.entries.len()), Some(0), "typing is never stored");
    }

    #[test]
    fn presence_state_stays_bounded_over_many_cycles() {
        let h = hub();
        let ns = NamespaceOptions {
            presence: true,
            join_leave: true,
            presence_grace: Duration::from_secs(1),
            ..NamespaceOptions::default()
        };
        let c = ch("chat:busy");
        for i in 0..2000u64 {
            let o = Arc::new(Outbox::new(100, 1 << 20));
            let now = Millis(i * 10);
            h.subscribe(&c, &ns, &member(i, &o, &format!("user-{i}"), true), now).ok();
            h.unsubscribe(&c, ConnId(i), now);
            h.sweep(now);
        }
        assert!(h.presence(&c, 10).is_some(), "the last users are still inside their grace");
        let forgotten = h.sweep(Millis(21_000)) + h.sweep(Millis(1_000_000));
        assert!(h.presence(&c, 10).is_none(), "every user left and nothing is held");
        assert_eq!(forgotten, 1, "the channel itself is forgotten once idle");
    }

    #[test]
    fn a_keep_latest_subscriber_gets_the_state_at_its_position_then_the_stream() {
        let h = hub();
        let ns = NamespaceOptions { keep_latest: true, history_size: 2, ..NamespaceOptions::default() };
        let c = ch("scores:nba");
        for (i, game) in ["g1", "g2", "g1", "g3", "g2"].iter().enumerate() {
            let p = PublishRequest {
                channel: &c,
                ns: &ns,
                data: &raw(&i.to_string()),
                idempotency_key: None,
                origin: Origin::Api,
                key: Some(game),
            };
            h.publish(&p, Millis(0), SlotEpoch(1)).ok();
        }
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.subscribe(&c, &ns, &LocalSubscriber { snapshot: true, ..sub(1, &o, None, 1) }, Millis(0)).ok();
        let p = PublishRequest {
            channel: &c,
            ns: &ns,
            data: &raw("9"),
            idempotency_key: None,
            origin: Origin::Api,
            key: Some("g9"),
        };
        h.publish(&p, Millis(0), SlotEpoch(1)).ok();
        let f = frames(&o);
        assert_eq!(f[0]["offset"], 5, "subscribed at the top");
        assert_eq!((f[1]["type"].as_str(), f[1]["offset"].as_u64()), (Some("snapshot"), Some(5)));
        let entries: Vec<(String, u64)> = f[1]["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e["key"].as_str().unwrap_or_default().to_owned(), e["offset"].as_u64().unwrap_or(0)))
            .collect();
        assert_eq!(entries, [("g1".to_owned(), 3), ("g3".to_owned(), 4), ("g2".to_owned(), 5)]);
        assert_eq!((f[2]["offset"].as_u64(), f[2]["key"].as_str()), (Some(6), Some("g9")), "then live, no gap");
        let (top, state) = h.state(&c, Millis(0)).unwrap_or_else(|| panic!("state"));
        assert_eq!((top.offset, state.len()), (Offset(6), 4));
    }

    /// A viewer that asked for deltas rebuilds every version from the snapshot and the
    /// patches; one that did not gets full frames; a remote node gets both forms.
    #[test]
    fn delta_subscribers_get_merge_patches_against_what_they_hold() {
        let h = hub();
        let ns = NamespaceOptions { keep_latest: true, delta: true, ..NamespaceOptions::default() };
        let c = ch("scores:nba");
        let state = |home: u32, clock: &str| {
            format!(
                r#"{{"home":{{"name":"Lakers","score":{home}}}, "away":{{"name":"Celtics","score":99}},"clock":"{clock}","period":4}}"#
            )
        };
        let publish = |data: &str, key: &str| {
            let p = PublishRequest {
                channel: &c,
                ns: &ns,
                data: &raw(data),
                idempotency_key: None,
                origin: Origin::Api,
                key: Some(key),
            };
            h.publish(&p, Millis(0), SlotEpoch(1)).unwrap_or_else(|e| panic!("{e:?}"));
        };
        publish(&state(100, "5:00"), "g1");
        let viewer = Arc::new(Outbox::new(100, 1 << 20));
        let plain = Arc::new(Outbox::new(100, 1 << 20));
        h.subscribe(&c, &ns, &LocalSubscriber { snapshot: true, delta: true, ..sub(1, &viewer, None, 1) }, Millis(0))
            .ok();
        h.subscribe(&c, &ns, &LocalSubscriber { snapshot: true, ..sub(2, &plain, None, 2) }, Millis(0)).ok();
        let versions = [state(102, "4:41"), state(102, "4:20"), state(105, "3:58")];
        for v in &versions {
            publish(v, "g1");
        }
        publish(r#"{"other":"game"}"#, "g2");
        let f = frames(&viewer);
        assert_eq!(f[1]["type"], "snapshot");
        let mut held: serde_json::Value = f[1]["entries"][0]["data"].clone();
        for (frame, want) in f[2..5].iter().zip(&versions) {
            assert_eq!(frame["base"].as_u64(), frame["offset"].as_u64().map(|o| o - 1), "{frame}");
            assert!(frame.get("data").is_none(), "a delta carries no data: {frame}");
            ringcast_core::delta::apply(&mut held, &frame["patch"]);
            let want: serde_json::Value = serde_json::from_str(want).unwrap_or_default();
            assert_eq!(held, want);
        }
        assert_eq!(f[2]["patch"], serde_json::json!({"home": {"score": 102}, "clock": "4:41"}));
        assert!(f[5].get("data").is_some(), "a key's first message goes whole: {}", f[5]);
        let p = frames(&plain);
        assert!(p[2..].iter().all(|m| m.get("data").is_some() && m.get("patch").is_none()), "{p:?}");
        assert_eq!(h.metrics.deltas.load(Ordering::Relaxed), 3);
    }

    // ---------------------------------------------------------------------------------
    // Pattern subscriptions.

    fn pat(s: &str) -> ringcast_core::Pattern {
        ringcast_core::Pattern::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn psub(conn: u64, outbox: &Arc<Outbox>) -> PatternSubscriber {
        PatternSubscriber {
            conn: ConnId(conn),
            outbox: outbox.clone(),
            policy: NamespaceOptions::default().message_policy(outbox.bounds()),
        }
    }

    /// `(channel, offset)` of the `message` frames among `frames`.
    fn messages(frames: &[serde_json::Value]) -> Vec<(String, u64)> {
        frames
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| (f["channel"].as_str().unwrap_or_default().to_owned(), f["offset"].as_u64().unwrap_or(0)))
            .collect()
    }

    #[test]
    fn a_pattern_gets_every_matching_channel_once_in_order_and_nothing_else() {
        let h = hub();
        let ns = NamespaceOptions::default();
        let (old, new, other, deeper) =
            (ch("scores:nba:a"), ch("scores:nba:b"), ch("scores:nfl:c"), ch("scores:nba:a:x"));
        let pub_ = |c: &ChannelName| publish(&h, c, &ns, &raw("1"), None, Origin::Api, Millis(0), SlotEpoch(1)).ok();
        pub_(&old);
        let o = Arc::new(Outbox::new(100, 1 << 20));
        assert!(h.add_pattern(&pat("scores:nba:*"), psub(1, &o)), "the node's first of the pattern");
        assert!(!h.add_pattern(&pat("scores:nba:*"), psub(2, &Arc::new(Outbox::new(100, 1 << 20)))));
        for c in [&old, &new, &other, &deeper, &new, &old] {
            pub_(c);
        }
        let got = messages(&frames(&o));
        let want = [("scores:nba:a", 2), ("scores:nba:b", 1), ("scores:nba:b", 2), ("scores:nba:a", 3)];
        assert_eq!(got, want.map(|(c, o)| (c.to_owned(), o)), "existing and new channels, from now on, in order");

        // Subscribing to a matched channel itself: the reply, then each message once.
        assert_eq!(h.subscribe(&old, &ns, &sub(1, &o, None, 7), Millis(0)), Ok(()));
        pub_(&old);
        let f = frames(&o);
        assert_eq!((f[0]["type"].as_str(), f[0]["id"].as_u64()), (Some("subscribed"), Some(7)));
        assert_eq!(messages(&f[1..]), vec![("scores:nba:a".to_owned(), 4)]);
        // Leaving it falls back to the pattern; the pattern's end stops everything.
        assert!(h.unsubscribe(&old, ConnId(1), Millis(0)).removed);
        pub_(&old);
        assert_eq!(messages(&frames(&o)), vec![("scores:nba:a".to_owned(), 5)]);
        let removed = h.remove_pattern(ConnId(1), &pat("scores:nba:*"));
        assert!(!removed.last, "connection 2 still has it");
        pub_(&old);
        pub_(&new);
        assert!(messages(&frames(&o)).is_empty());
        assert!(h.remove_pattern(ConnId(2), &pat("scores:nba:*")).last);
        assert_eq!(h.info(&old).local_subscribers, 0);
        assert_eq!(h.metrics.subscriptions.load(Ordering::Relaxed), 0, "every attachment was counted back");
    }

    #[test]
    fn owner_sends_each_matching_channel_once_to_each_pattern_node() {
        let h = hub();
        let rec = Arc::new(Recorder::default());
        h.set_peers(rec.clone());
        let ns = NamespaceOptions::default();
        let (a, b) = (node("a"), node("b"));
        h.peer_patterns(&a, true, vec![pat("scores:>")], &[]);
        h.peer_patterns(&b, false, vec![pat("scores:nba:*"), pat("scores:nfl:*")], &[]);
        let nba = ch("scores:nba:x");
        // `a` also subscribed to the channel itself: still one Deliver per message.
        assert!(h.serve_peer_subscribe(&nba, &ns, &a, 1, (None, false), None, Millis(0)));
        let pub_ = |c: &ChannelName| publish(&h, c, &ns, &raw("1"), None, Origin::Api, Millis(0), SlotEpoch(5)).ok();
        pub_(&nba);
        pub_(&ch("scores:mlb:y"));
        pub_(&ch("chat:z"));
        let delivered = |rec: &Recorder| -> Vec<(String, String)> {
            std::mem::take(&mut *lock(&rec.0))
                .into_iter()
                .filter_map(|(n, f)| match f {
                    PeerFrame::Deliver { channel, .. } => Some((n.as_str().to_owned(), channel)),
                    _ => None,
                })
                .collect()
        };
        let mut got = delivered(&rec);
        got.sort();
        let want = [("a", "scores:mlb:y"), ("a", "scores:nba:x"), ("b", "scores:nba:x")];
        assert_eq!(got, want.map(|(n, c)| (n.to_owned(), c.to_owned())));
        // Changes and resets apply; a peer that left takes its patterns with it.
        h.peer_patterns(&b, false, Vec::new(), &[pat("scores:nba:*")]);
        h.peer_patterns(&a, true, vec![pat("scores:mlb:*")], &[]);
        pub_(&nba);
        assert_eq!(delivered(&rec), vec![("a".to_owned(), "scores:nba:x".to_owned())], "a's own subscription only");
        h.drop_peer(&a, Millis(0));
        pub_(&ch("scores:mlb:y"));
        assert!(delivered(&rec).is_empty());
    }

    #[test]
    fn a_gateway_follows_a_matched_channel_from_its_first_deliver_and_fills_gaps() {
        let h = hub();
        let o = Arc::new(Outbox::new(100, 1 << 20));
        h.add_pattern(&pat("scores:>"), psub(1, &o));
        let c = ch("scores:nba:x");
        let e = Epoch::new(77).unwrap_or_else(|| panic!("epoch"));
        let msg = |offset: u64| {
            let pos = StreamPosition { epoch: e, offset: Offset(offset) };
            (pos, Msg::from(Utf8Bytes::from(ringcast_proto::client::encode_message(&c, pos, &raw("1")))))
        };
        for offset in [5, 7, 6] {
            let (pos, m) = msg(offset);
            assert!(h.deliver_remote(&c, pos, m, Millis(0)), "wanted");
        }
        let got: Vec<u64> = messages(&frames(&o)).into_iter().map(|(_, o)| o).collect();
        assert_eq!(got, vec![5, 6, 7], "from the first message seen, in order once the gap closed");
        // Nobody here wants other channels; after the pattern ends, not this one either.
        let (pos, m) = msg(1);
        assert!(!h.deliver_remote(&ch("chat:x"), pos, m, Millis(0)));
        h.remove_pattern(ConnId(1), &pat("scores:>"));
        let (pos, m) = msg(8);
        assert!(!h.deliver_remote(&c, pos, m, Millis(0)));
        assert!(frames(&o).is_empty());
    }
}
