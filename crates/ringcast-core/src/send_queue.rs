//! One connection's send queue: bounded, with per-channel backpressure policies and gap
//! notices.
//!
//! Producers push frames and never wait. Three kinds of frame share the queue, in order:
//! - **messages** of a channel's stream ([`QueuedMessage`]: a frame, a position and a
//!   channel, built once per message and shared by every subscriber's queue, so a
//!   fan-out writes a pointer per subscriber, not the message). They are bounded by
//!   the channel's namespace ([`MessagePolicy`]: a message count and bytes, at most the
//!   connection's own bounds); when a message does not fit, the namespace's
//!   [`BackpressurePolicy`] decides:
//!   - `drop_oldest`: the oldest queued messages *of the same channel* are dropped until
//!     it fits (a channel never drops another channel's messages); when none are left,
//!     the new message is dropped;
//!   - `drop_newest`: the new message is dropped;
//!   - `disconnect` (and, until it is implemented, `keep_latest`): the queue overflows
//!     and the caller closes the connection.
//! - **control** frames (replies to the client's own commands): bounded separately by
//!   the connection's bounds, except that one control frame always fits into an empty
//!   control budget (a large history page must get through); beyond the bounds the
//!   queue overflows.
//! - **exempt** frames (a `subscribed` reply and its replay): not counted, because they
//!   are bounded by the namespace's history and share their bytes with it.
//!
//! Every dropped message is remembered as part of a [`GapNotice`] per channel
//! (consecutive drops extend one notice). [`SendQueue::drain`] emits a channel's notice
//! just before the first later message of that channel, or at the end of the batch, so
//! a client always learns of a gap before it sees anything past it.
//!
//! **Deltas.** A message may carry an alternative frame ([`Alt`]): the same message as a
//! patch against the message at `base` (an earlier message of the channel with the same
//! key). Whether the client can apply it depends on what it was actually sent, which is
//! only known when the queue is drained (a drop, a conflation or a gap decides it), so
//! the choice is made in [`SendQueue::drain`]: for a channel marked with
//! [`SendQueue::mark_stream`], the queue tracks the range of offsets the client was sent
//! without a hole, and writes the alternative only when `base` lies in that range and
//! the message directly follows it. Anything else gets the full frame.
//!
//! Frames are opaque (`F`); their sizes are given at push time.
//!
//! **Entry size.** A fan-out writes one entry into each subscriber's queue, and at a
//! thousand subscribers those queues are cold: the write waits for its cache line, and
//! the next atomic instruction (the outbox's unlock) waits for the write. So an entry
//! is 16 bytes, four to a cache line: a message is a pointer to the shared
//! [`QueuedMessage`] and a flag, and everything else (replies, replays, ephemeral
//! pushes, stream marks) is behind a pointer of its own (docs/benchmarks.md, "Status
//! check, 2026-12-01 evening").

use crate::name::ChannelName;
use crate::namespace::BackpressurePolicy;
use crate::position::{Epoch, Offset, StreamPosition};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Bounds of a queue, or of one namespace's share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub messages: usize,
    pub bytes: usize,
}

/// How one channel's messages are queued: its namespace's policy and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagePolicy {
    pub policy: BackpressurePolicy,
    pub bounds: Bounds,
}

/// Why a client did not receive some messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapCause {
    /// This queue dropped them (`drop_oldest` / `drop_newest`).
    SlowConsumer,
    /// The node lost them on their way from the channel's owner, and the owner's history
    /// no longer holds them.
    Unavailable,
    /// `keep_latest`: a newer queued message for the same key replaced each of them.
    Conflated,
}

/// Messages a client did not receive: `from..=to` of `channel` in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapNotice {
    pub channel: ChannelName,
    pub epoch: Epoch,
    pub from: Offset,
    pub to: Offset,
    pub cause: GapCause,
}

impl GapNotice {
    /// Messages the notice covers.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.to.0.saturating_sub(self.from.0).saturating_add(1)
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `dropped` older messages of the channel made room (`drop_oldest`).
    Queued { dropped: usize },
    /// Not queued: the message and `dropped - 1` older ones were dropped.
    Dropped { dropped: usize },
    /// The bounds were exceeded under `disconnect` (or a control frame did not fit): the
    /// queue is cleared and takes nothing more.
    Overflow,
    /// The queue had overflowed or was closed before.
    Closed,
}

/// A message's alternative frame: the same message as a patch against the message of
/// the channel at `base`, which the client must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alt<F> {
    pub base: Offset,
    pub frame: F,
}

/// What a client of a marked channel was sent: every message of `epoch` in
/// `from..=last`, with nothing missing in between (and, when `from` is 1 after a
/// snapshot, the state as of the snapshot).
#[derive(Debug, Clone, Copy)]
struct Track {
    epoch: Epoch,
    from: Offset,
    last: Offset,
}

/// One message of a channel's stream as the subscribers' queues hold it: built once per
/// message and shared (an [`Arc`]) by every queue it is pushed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage<F> {
    pub frame: F,
    /// The size the bounds count: the full frame's.
    pub len: usize,
    pub channel: ChannelName,
    pub position: StreamPosition,
    /// Its keep-latest key: under `keep_latest`, a queue that is full replaces its
    /// queued message of the same channel and key.
    pub key: Option<Box<str>>,
    /// Its delta form, written instead of `frame` to a subscriber that takes deltas
    /// when the client holds its base.
    pub alt: Option<Alt<F>>,
}

impl<F> QueuedMessage<F> {
    /// A message without a key or a delta form.
    pub fn new(frame: F, len: usize, channel: ChannelName, position: StreamPosition) -> QueuedMessage<F> {
        QueuedMessage { frame, len, channel, position, key: None, alt: None }
    }

    /// Its delta form's frame when `alt` (and it has one), else its full frame.
    pub fn frame_for(&self, alt: bool) -> &F {
        match &self.alt {
            Some(a) if alt => &a.frame,
            _ => &self.frame,
        }
    }
}

/// One frame out of [`SendQueue::drain`], in the order to write.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained<F> {
    /// A reply, a replayed frame or an ephemeral push.
    Frame(F),
    /// A message, shared with the other queues it went to: its delta form when `alt`,
    /// else its full frame ([`Drained::frame`]).
    Message {
        msg: Arc<QueuedMessage<F>>,
        alt: bool,
    },
    Gap(GapNotice),
}

impl<F> Drained<F> {
    /// The frame to write; `None` for a gap notice, which the writer encodes.
    pub fn frame(&self) -> Option<&F> {
        match self {
            Drained::Frame(f) => Some(f),
            Drained::Message { msg, alt } => Some(msg.frame_for(*alt)),
            Drained::Gap(_) => None,
        }
    }
}

impl<F: Clone> Drained<F> {
    /// The frame to write as a frame of its own (a message's shared frame cloned), or
    /// the gap notice.
    pub fn into_owned(self) -> Result<F, GapNotice> {
        match self {
            Drained::Frame(f) => Ok(f),
            Drained::Message { msg, alt } => Ok(msg.frame_for(alt).clone()),
            Drained::Gap(g) => Err(g),
        }
    }
}

/// A queue entry: 16 bytes (see the module docs, "Entry size").
#[derive(Debug)]
enum Entry<F> {
    Message {
        msg: Arc<QueuedMessage<F>>,
        /// The subscriber takes deltas: its delta form may be written instead.
        delta: bool,
    },
    Control(Box<F>),
    Exempt(Box<F>),
    /// A `join`, `leave` or `typing` push, shared like a message: counted with
    /// messages, dropped (never noticed) when they are at their bound.
    Ephemeral(Arc<F>),
    /// A channel's stream starts (or restarts) for this client at `position`
    /// ([`SendQueue::mark_stream`]); nothing is written for it.
    Mark(Box<Mark>),
}

/// See [`Entry::Mark`].
#[derive(Debug)]
struct Mark {
    channel: ChannelName,
    position: StreamPosition,
    holds_state: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    frames: usize,
    bytes: usize,
}

impl Usage {
    fn add(&mut self, len: usize) {
        self.frames += 1;
        self.bytes += len;
    }

    fn sub(&mut self, len: usize) {
        self.frames -= 1;
        self.bytes -= len;
    }
}

/// Batches of at most this many entries free the queue's allocation when drained unless
/// they carried a message; larger ones keep it for the next batch. Four is the least a
/// queue of entries this size allocates, so a small batch never grows its allocation.
pub const FREE_UP_TO_ENTRIES: usize = 4;

/// A connection's send queue (see the module docs).
#[derive(Debug)]
pub struct SendQueue<F> {
    entries: VecDeque<Entry<F>>,
    bounds: Bounds,
    messages: Usage,
    control: Usage,
    gaps: Vec<GapNotice>,
    closed: bool,
    /// A reply (control or exempt frame) is queued: the client is waiting for it.
    reply_queued: bool,
    /// Channels marked for deltas: what the client was sent of each, as of the last
    /// drain.
    tracks: HashMap<ChannelName, Track>,
}

impl<F: Clone> SendQueue<F> {
    /// An empty queue with the connection's bounds.
    #[must_use]
    pub fn new(bounds: Bounds) -> SendQueue<F> {
        SendQueue {
            entries: VecDeque::new(),
            bounds,
            messages: Usage::default(),
            control: Usage::default(),
            gaps: Vec::new(),
            closed: false,
            reply_queued: false,
            tracks: HashMap::new(),
        }
    }

    /// The connection's bounds.
    #[must_use]
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Whether the queue overflowed or was closed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Takes no more frames; what is queued can still be drained.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Whether a reply to the client's own command (a control or exempt frame) is
    /// queued: a writer that coalesces pushes writes it without waiting.
    #[must_use]
    pub fn holds_reply(&self) -> bool {
        self.reply_queued
    }

    /// Whether the queue tracks `channel` for deltas (what the client was sent of it
    /// decides which frame is written).
    #[must_use]
    pub fn tracks(&self, channel: &ChannelName) -> bool {
        !self.tracks.is_empty() && self.tracks.contains_key(channel)
    }

    /// Frames queued (every kind).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.gaps.is_empty()
    }

    /// Reads what a [`SendQueue::drain`] reads first (the queue's counters and its first
    /// entry) and returns something made of it, which the caller passes to
    /// `std::hint::black_box` so that the reads happen. A writer of many cold queues
    /// touches a batch of them first: independent loads, whose cache misses overlap,
    /// where the drains one after another would wait for each miss in turn.
    #[must_use]
    pub fn touch(&self) -> usize {
        let first = match self.entries.front() {
            Some(Entry::Message { msg, .. }) => msg.len,
            Some(_) => 1,
            None => 0,
        };
        first + self.messages.frames + self.gaps.len() + usize::from(self.tracks.is_empty())
    }

    /// Bytes of the counted (message and control) frames queued.
    #[must_use]
    pub fn counted_bytes(&self) -> usize {
        self.messages.bytes + self.control.bytes
    }

    fn overflow(&mut self) -> Pushed {
        self.entries.clear();
        self.gaps.clear();
        self.messages = Usage::default();
        self.control = Usage::default();
        self.reply_queued = false;
        self.closed = true;
        Pushed::Overflow
    }

    /// Queues a reply to the client's own command.
    pub fn push_control(&mut self, frame: F, len: usize) -> Pushed {
        if self.closed {
            return Pushed::Closed;
        }
        let fits = self.control.frames == 0
            || (self.control.frames < self.bounds.messages && self.control.bytes + len <= self.bounds.bytes);
        if !fits {
            return self.overflow();
        }
        self.control.add(len);
        self.reply_queued = true;
        self.entries.push_back(Entry::Control(Box::new(frame)));
        Pushed::Queued { dropped: 0 }
    }

    /// Queues frames outside every bound (a `subscribed` reply and its replay).
    pub fn push_exempt(&mut self, frames: impl IntoIterator<Item = F>) {
        if self.closed {
            return;
        }
        let before = self.entries.len();
        self.entries.extend(frames.into_iter().map(|f| Entry::Exempt(Box::new(f))));
        self.reply_queued |= self.entries.len() > before;
    }

    /// Queues `msg` under its channel's policy. `delta`: the subscriber takes deltas, so
    /// the message's delta form is written instead when the client holds its base (see
    /// the module docs); the bounds count the full frame's size. Under `keep_latest` a
    /// full queue makes room by dropping the queued message of the same channel and key
    /// (noticed as `Conflated`), then, if that is not enough (or there is none), the
    /// channel's oldest, like `drop_oldest`.
    pub fn push_message(&mut self, msg: &Arc<QueuedMessage<F>>, delta: bool, policy: MessagePolicy) -> Pushed {
        if self.closed {
            return Pushed::Closed;
        }
        let limit = Bounds {
            messages: policy.bounds.messages.min(self.bounds.messages),
            bytes: policy.bounds.bytes.min(self.bounds.bytes),
        };
        let len = msg.len;
        let fits = |u: &Usage| u.frames < limit.messages && u.bytes + len <= limit.bytes;
        let mut dropped = 0;
        if !fits(&self.messages) {
            if policy.policy == BackpressurePolicy::KeepLatest && msg.key.is_some() {
                let same = self.entries.iter().position(
                    |e| matches!(e, Entry::Message { msg: m, .. } if m.channel == msg.channel && m.key == msg.key),
                );
                if let Some(Entry::Message { msg: m, .. }) = same.and_then(|i| self.entries.remove(i)) {
                    self.messages.sub(m.len);
                    self.note_missed(&m, GapCause::Conflated);
                    dropped += 1;
                }
            }
            match policy.policy {
                BackpressurePolicy::Disconnect => return self.overflow(),
                BackpressurePolicy::DropNewest => {}
                BackpressurePolicy::DropOldest | BackpressurePolicy::KeepLatest => {
                    while !fits(&self.messages) {
                        let Some(i) = self.oldest_of(&msg.channel) else { break };
                        if let Some(Entry::Message { msg: m, .. }) = self.entries.remove(i) {
                            self.messages.sub(m.len);
                            self.note_missed(&m, GapCause::SlowConsumer);
                            dropped += 1;
                        }
                    }
                }
            }
            if !fits(&self.messages) {
                self.note_missed(msg, GapCause::SlowConsumer);
                return Pushed::Dropped { dropped: dropped + 1 };
            }
        }
        self.messages.add(len);
        self.entries.push_back(Entry::Message { msg: Arc::clone(msg), delta });
        Pushed::Queued { dropped }
    }

    /// Marks that `channel`'s stream starts for this client after `position`, once
    /// everything queued so far is written (a `subscribed` reply, its replay and any
    /// snapshot): from then on the queue tracks what the client was sent of it and
    /// writes deltas ([`Alt`]) where the client holds their base. `holds_state`: a
    /// snapshot at `position` went before, so the client holds every key's newest
    /// message as of it.
    pub fn mark_stream(&mut self, channel: &ChannelName, position: StreamPosition, holds_state: bool) {
        if self.closed {
            return;
        }
        self.entries.push_back(Entry::Mark(Box::new(Mark { channel: channel.clone(), position, holds_state })));
    }

    /// Queues an ephemeral push (best effort: no position, so nothing to recover). It
    /// shares the connection's message bound; when that is full the push is dropped
    /// without a notice and without disturbing anything queued. Like a message, the frame
    /// is shared by every queue it goes to.
    pub fn push_ephemeral(&mut self, frame: &Arc<F>, len: usize) -> Pushed {
        if self.closed {
            return Pushed::Closed;
        }
        if self.messages.frames >= self.bounds.messages || self.messages.bytes + len > self.bounds.bytes {
            return Pushed::Dropped { dropped: 1 };
        }
        self.messages.add(len);
        self.entries.push_back(Entry::Ephemeral(Arc::clone(frame)));
        Pushed::Queued { dropped: 0 }
    }

    /// Index of the oldest queued message of `channel`.
    fn oldest_of(&self, channel: &ChannelName) -> Option<usize> {
        self.entries.iter().position(|e| matches!(e, Entry::Message { msg, .. } if &msg.channel == channel))
    }

    /// Tells the client that `from..=to` of `channel` will not arrive for `cause`; sent
    /// like the queue's own notices (before the channel's next later message).
    pub fn push_gap(&mut self, notice: GapNotice) {
        if self.closed || notice.to < notice.from {
            return;
        }
        self.note_gap(&notice.channel, notice.epoch, notice.from, notice.to, notice.cause);
    }

    /// Records that the client will not get `msg`, for `cause`.
    fn note_missed(&mut self, msg: &QueuedMessage<F>, cause: GapCause) {
        let at = msg.position;
        self.note_gap(&msg.channel, at.epoch, at.offset, at.offset, cause);
    }

    /// Records missing messages, extending the channel's latest notice when they follow
    /// it in the same epoch for the same cause.
    fn note_gap(&mut self, channel: &ChannelName, epoch: Epoch, from: Offset, to: Offset, cause: GapCause) {
        let last = self.gaps.iter_mut().rev().find(|g| &g.channel == channel);
        if let Some(g) = last {
            if g.epoch == epoch && g.cause == cause && g.to.next() == from {
                g.to = to;
                return;
            }
        }
        self.gaps.push(GapNotice { channel: channel.clone(), epoch, from, to, cause });
    }

    /// Forgets a channel's pending notices and what the client was sent of it (the
    /// client unsubscribed from it).
    pub fn forget(&mut self, channel: &ChannelName) {
        self.gaps.retain(|g| &g.channel != channel);
        self.tracks.remove(channel);
    }

    /// Whether to write the delta form (against `base`) of a message of a marked
    /// channel, updating its track.
    fn choose(&mut self, channel: &ChannelName, position: StreamPosition, base: Option<Offset>) -> bool {
        let Some(t) = self.tracks.get_mut(channel) else { return false };
        let follows = t.epoch == position.epoch && position.offset == t.last.next();
        if !follows {
            *t = Track { epoch: position.epoch, from: position.offset, last: position.offset };
            return false;
        }
        t.last = position.offset;
        base.is_some_and(|base| base >= t.from && base < position.offset)
    }

    /// Moves everything queued to `out` in write order, each gap notice just before the
    /// first later message of its channel, and the rest at the end. After a batch of at
    /// most [`FREE_UP_TO_ENTRIES`] entries the queue keeps no allocation for them, unless
    /// the batch carried a message: then it keeps room for [`FREE_UP_TO_ENTRIES`].
    pub fn drain(&mut self, out: &mut Vec<Drained<F>>) {
        self.messages = Usage::default();
        self.control = Usage::default();
        self.reply_queued = false;
        let mut entries = std::mem::take(&mut self.entries);
        let drained_entries = entries.len();
        let mut carried_message = false;
        for e in entries.drain(..) {
            let frame = match e {
                Entry::Control(frame) | Entry::Exempt(frame) => *frame,
                Entry::Ephemeral(frame) => Arc::unwrap_or_clone(frame),
                Entry::Mark(mark) => {
                    let Mark { channel, position, holds_state } = *mark;
                    self.start_track(channel, position, holds_state);
                    continue;
                }
                Entry::Message { msg, delta } => {
                    carried_message = true;
                    let (channel, position) = (&msg.channel, msg.position);
                    let base = msg.alt.as_ref().filter(|_| delta).map(|a| a.base);
                    let alt = !self.tracks.is_empty() && self.choose(channel, position, base);
                    let mut i = 0;
                    while i < self.gaps.len() {
                        let g = &self.gaps[i];
                        if &g.channel == channel && (g.epoch != position.epoch || g.to < position.offset) {
                            out.push(Drained::Gap(self.gaps.remove(i)));
                        } else {
                            i += 1;
                        }
                    }
                    out.push(Drained::Message { msg, alt });
                    continue;
                }
            };
            out.push(Drained::Frame(frame));
        }
        // A larger batch keeps its allocation, as a busy connection would only grow it
        // again entry by entry. A small one of replies gives it back: an idle connection,
        // whose last batch was a reply or two, then holds none. A small one that carried
        // a message keeps room for FREE_UP_TO_ENTRIES (64 bytes): a subscriber that gets one message per write would otherwise pay an
        // allocation and a free per message (2.5 % of the server's CPU at 10k
        // subscribers x 10 publishes/s, docs/benchmarks.md).
        if drained_entries > FREE_UP_TO_ENTRIES {
            self.entries = entries;
        } else if carried_message {
            entries.shrink_to(FREE_UP_TO_ENTRIES);
            self.entries = entries;
        }
        out.extend(self.gaps.drain(..).map(Drained::Gap));
    }

    fn start_track(&mut self, channel: ChannelName, position: StreamPosition, holds_state: bool) {
        let from = if holds_state { Offset(1) } else { position.offset.next() };
        self.tracks.insert(channel, Track { epoch: position.epoch, from, last: position.offset });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A queue entry is written into a cold queue once per subscriber of every message,
    /// so its size is a fan-out cost (module docs, "Entry size"): 16 bytes, four to a
    /// cache line, whatever the frame type (ringcastd's, a `Bytes`, is 32 bytes; the
    /// entry was 88 bytes while it held the message's frame, channel and position). A
    /// bound, not a timing.
    #[test]
    fn a_queued_message_stays_small() {
        assert_eq!(std::mem::size_of::<bytes::Bytes>(), 32);
        let size = std::mem::size_of::<Entry<bytes::Bytes>>();
        assert!(size <= 16, "a queue entry is {size} bytes");
    }

    /// A message of `channel` at `position`, as the hub builds it once for every queue.
    fn m<F>(frame: F, len: usize, channel: &ChannelName, position: StreamPosition) -> Arc<QueuedMessage<F>> {
        Arc::new(QueuedMessage::new(frame, len, channel.clone(), position))
    }

    /// A fan-out builds a message once: every queue holds the same allocation, and a
    /// drain hands that allocation to the writer, so no subscriber copies it.
    #[test]
    fn a_message_is_shared_by_every_queue_it_goes_to() {
        let msg = m(String::from("chat:a#1"), 8, &ch("chat:a"), at(1));
        let p = policy(BackpressurePolicy::DropOldest, 10);
        let mut queues: Vec<SendQueue<String>> = (0..3).map(|_| q(10)).collect();
        for q in &mut queues {
            assert_eq!(q.push_message(&msg, false, p), Pushed::Queued { dropped: 0 });
        }
        assert_eq!(Arc::strong_count(&msg), 4);
        let mut out = Vec::new();
        queues[0].drain(&mut out);
        assert!(matches!(&out[..], [Drained::Message { msg: d, alt: false }] if Arc::ptr_eq(d, &msg)));
        assert_eq!(out[0].frame().map(String::as_str), Some("chat:a#1"));
        drop(out);
        drop(queues);
        assert_eq!(Arc::strong_count(&msg), 1, "written and dropped, nothing holds it");
    }

    /// Drained output with each message's frame cloned out of it.
    fn owned<F: Clone>(out: Vec<Drained<F>>) -> Vec<Result<F, GapNotice>> {
        out.into_iter().map(Drained::into_owned).collect()
    }

    #[test]
    fn only_a_queue_that_carried_messages_keeps_a_small_allocation() {
        let mut q: SendQueue<u64> = SendQueue::new(Bounds { messages: 100, bytes: 1 << 20 });
        let policy = MessagePolicy { policy: BackpressurePolicy::DropOldest, bounds: q.bounds() };
        let mut out = Vec::new();
        q.push_control(1, 1);
        q.drain(&mut out);
        assert_eq!(q.entries.capacity(), 0, "replies alone leave no allocation");
        q.push_message(&m(2, 1, &ch("chat:a"), at(1)), false, policy);
        q.drain(&mut out);
        let kept = q.entries.capacity();
        assert!((1..=FREE_UP_TO_ENTRIES).contains(&kept), "a message keeps a small one: {kept}");
        for o in 2..40 {
            q.push_message(&m(o, 1, &ch("chat:a"), at(o)), false, policy);
        }
        q.drain(&mut out);
        assert!(q.entries.capacity() >= 38, "a large batch keeps its allocation");
        q.push_message(&m(40, 1, &ch("chat:a"), at(40)), false, policy);
        q.drain(&mut out);
        assert!(q.entries.capacity() <= FREE_UP_TO_ENTRIES, "a small batch shrinks it again");
        q.push_control(41, 1);
        q.drain(&mut out);
        assert_eq!(q.entries.capacity(), 0, "and a batch of replies frees it");
    }

    #[test]
    fn a_queued_reply_is_noted_until_drained() {
        let mut q: SendQueue<u64> = SendQueue::new(Bounds { messages: 100, bytes: 1 << 20 });
        let policy = MessagePolicy { policy: BackpressurePolicy::DropOldest, bounds: q.bounds() };
        q.push_message(&m(1, 1, &ch("chat:a"), at(1)), false, policy);
        q.push_ephemeral(&Arc::new(2), 1);
        assert!(!q.holds_reply(), "pushes alone are not replies");
        q.push_control(3, 1);
        assert!(q.holds_reply());
        q.drain(&mut Vec::new());
        assert!(!q.holds_reply());
        q.push_exempt([]);
        assert!(!q.holds_reply(), "an empty replay is nothing to write");
        q.push_exempt([4, 5]);
        assert!(q.holds_reply());
        q.drain(&mut Vec::new());
        assert!(!q.holds_reply());
    }

    #[test]
    fn keep_latest_replaces_the_queued_message_of_the_same_key() {
        let mut q: SendQueue<u64> = SendQueue::new(Bounds { messages: 100, bytes: 1 << 20 });
        let c = ch("scores:nba");
        let policy =
            MessagePolicy { policy: BackpressurePolicy::KeepLatest, bounds: Bounds { messages: 3, bytes: 1 << 20 } };
        for (o, key) in [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b"), (6, "z")] {
            let msg = QueuedMessage { key: Some(key.into()), ..QueuedMessage::new(o, 1, c.clone(), at(o)) };
            q.push_message(&Arc::new(msg), false, policy);
        }
        let mut out = Vec::new();
        q.drain(&mut out);
        let gap = |from, to| {
            Err(GapNotice {
                channel: c.clone(),
                epoch: at(1).epoch,
                from: Offset(from),
                to: Offset(to),
                cause: GapCause::Conflated,
            })
        };
        let slow = |from, to| {
            Err(GapNotice {
                channel: c.clone(),
                epoch: at(1).epoch,
                from: Offset(from),
                to: Offset(to),
                cause: GapCause::SlowConsumer,
            })
        };
        // 4 replaces 1 (same key a), 5 replaces 2 (b), 6 has no queued twin: the oldest
        // (3) goes as a plain drop.
        assert_eq!(owned(out), vec![gap(1, 2), slow(3, 3), Ok(4), Ok(5), Ok(6)]);
    }

    #[test]
    fn ephemeral_pushes_share_the_bound_and_drop_silently() {
        let mut q: SendQueue<&str> = SendQueue::new(Bounds { messages: 2, bytes: 1 << 20 });
        assert_eq!(q.push_ephemeral(&Arc::new("typing-1"), 8), Pushed::Queued { dropped: 0 });
        assert_eq!(q.push_ephemeral(&Arc::new("typing-2"), 8), Pushed::Queued { dropped: 0 });
        assert_eq!(q.push_ephemeral(&Arc::new("typing-3"), 8), Pushed::Dropped { dropped: 1 });
        assert!(!q.is_closed(), "a dropped ephemeral push never closes the connection");
        let mut out = Vec::new();
        q.drain(&mut out);
        assert_eq!(owned(out), vec![Ok("typing-1"), Ok("typing-2")]);
        assert_eq!(
            q.push_ephemeral(&Arc::new("typing-4"), 8),
            Pushed::Queued { dropped: 0 },
            "draining frees the bound"
        );
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(o: u64) -> StreamPosition {
        StreamPosition { epoch: Epoch::new(7).unwrap_or_else(|| unreachable!()), offset: Offset(o) }
    }

    fn policy(p: BackpressurePolicy, messages: usize) -> MessagePolicy {
        MessagePolicy { policy: p, bounds: Bounds { messages, bytes: 1 << 20 } }
    }

    fn q(messages: usize) -> SendQueue<String> {
        SendQueue::new(Bounds { messages, bytes: 1 << 20 })
    }

    /// Drained output as short strings: frames as-is, gaps as `gap:channel:from-to`.
    fn drained(q: &mut SendQueue<String>) -> Vec<String> {
        let mut out = Vec::new();
        q.drain(&mut out);
        owned(out)
            .into_iter()
            .map(|d| d.unwrap_or_else(|g| format!("gap:{}:{}-{}", g.channel, g.from.0, g.to.0)))
            .collect()
    }

    fn push(q: &mut SendQueue<String>, c: &ChannelName, o: u64, p: MessagePolicy) -> Pushed {
        q.push_message(&m(format!("{c}#{o}"), 10, c, at(o)), false, p)
    }

    #[test]
    fn drop_oldest_keeps_the_latest_and_announces_the_gap_first() {
        let a = ch("chat:a");
        let p = policy(BackpressurePolicy::DropOldest, 3);
        let mut q = q(100);
        for o in 1..=3 {
            assert_eq!(push(&mut q, &a, o, p), Pushed::Queued { dropped: 0 });
        }
        assert_eq!(push(&mut q, &a, 4, p), Pushed::Queued { dropped: 1 });
        assert_eq!(push(&mut q, &a, 5, p), Pushed::Queued { dropped: 1 });
        assert_eq!(drained(&mut q), vec!["gap:chat:a:1-2", "chat:a#3", "chat:a#4", "chat:a#5"]);
        assert!(q.is_empty());
    }

    #[test]
    fn drop_newest_keeps_the_oldest_and_announces_before_the_next_message() {
        let a = ch("chat:a");
        let p = policy(BackpressurePolicy::DropNewest, 2);
        let mut q = q(100);
        push(&mut q, &a, 1, p);
        push(&mut q, &a, 2, p);
        assert_eq!(push(&mut q, &a, 3, p), Pushed::Dropped { dropped: 1 });
        assert_eq!(push(&mut q, &a, 4, p), Pushed::Dropped { dropped: 1 });
        assert_eq!(drained(&mut q), vec!["chat:a#1", "chat:a#2", "gap:chat:a:3-4"]);
        push(&mut q, &a, 5, p);
        assert_eq!(drained(&mut q), vec!["chat:a#5"], "a notice is sent once");
    }

    #[test]
    fn one_channel_never_drops_another_channels_messages() {
        let (a, b) = (ch("chat:a"), ch("chat:b"));
        let p = policy(BackpressurePolicy::DropOldest, 2);
        let mut q = q(100);
        push(&mut q, &b, 1, p);
        push(&mut q, &b, 2, p);
        assert_eq!(push(&mut q, &a, 9, p), Pushed::Dropped { dropped: 1 }, "a has nothing queued to drop");
        assert_eq!(drained(&mut q), vec!["chat:b#1", "chat:b#2", "gap:chat:a:9-9"]);
    }

    #[test]
    fn disconnect_overflows_and_frees_everything() {
        let a = ch("chat:a");
        let p = policy(BackpressurePolicy::Disconnect, 1);
        let mut q = q(100);
        q.push_control("reply".into(), 5);
        push(&mut q, &a, 1, p);
        assert_eq!(push(&mut q, &a, 2, p), Pushed::Overflow);
        assert!(q.is_closed());
        assert_eq!(push(&mut q, &a, 3, p), Pushed::Closed);
        assert!(drained(&mut q).is_empty());
    }

    #[test]
    fn the_connection_bound_caps_every_namespace() {
        let a = ch("chat:a");
        let mut q = q(2);
        let p = policy(BackpressurePolicy::DropNewest, 1000);
        push(&mut q, &a, 1, p);
        push(&mut q, &a, 2, p);
        assert_eq!(push(&mut q, &a, 3, p), Pushed::Dropped { dropped: 1 });
    }

    #[test]
    fn bytes_bound_drops_as_many_as_needed() {
        let a = ch("chat:a");
        let p = MessagePolicy { policy: BackpressurePolicy::DropOldest, bounds: Bounds { messages: 100, bytes: 30 } };
        let mut q = q(100);
        for o in 1..=3 {
            push(&mut q, &a, o, p);
        }
        assert_eq!(q.push_message(&m("big".into(), 25, &a, at(4)), false, p), Pushed::Queued { dropped: 3 });
        assert_eq!(drained(&mut q), vec!["gap:chat:a:1-3", "big"]);
    }

    #[test]
    fn control_frames_have_their_own_bound_but_one_always_fits() {
        let mut q: SendQueue<String> = SendQueue::new(Bounds { messages: 2, bytes: 10 });
        assert_eq!(q.push_control("huge page".into(), 1000), Pushed::Queued { dropped: 0 });
        assert_eq!(q.push_control("x".into(), 1), Pushed::Overflow);
        let mut q: SendQueue<String> = SendQueue::new(Bounds { messages: 2, bytes: 10 });
        q.push_control("a".into(), 1);
        q.push_control("b".into(), 1);
        assert_eq!(q.push_control("c".into(), 1), Pushed::Overflow, "a client that never reads is cut off");
    }

    #[test]
    fn exempt_frames_do_not_count_and_gaps_follow_them() {
        let a = ch("chat:a");
        let p = policy(BackpressurePolicy::DropOldest, 1);
        let mut q = q(100);
        q.push_exempt(["subscribed".to_owned(), "chat:a#1".to_owned()]);
        push(&mut q, &a, 2, p);
        push(&mut q, &a, 3, p);
        assert_eq!(drained(&mut q), vec!["subscribed", "chat:a#1", "gap:chat:a:2-2", "chat:a#3"]);
    }

    #[test]
    fn external_gaps_are_ordered_with_the_queues_own() {
        let a = ch("chat:a");
        let p = policy(BackpressurePolicy::DropNewest, 1);
        let mut q = q(100);
        push(&mut q, &a, 4, p);
        push(&mut q, &a, 5, p);
        let epoch = at(0).epoch;
        q.push_gap(GapNotice {
            channel: a.clone(),
            epoch,
            from: Offset(6),
            to: Offset(9),
            cause: GapCause::Unavailable,
        });
        let mut out = Vec::new();
        q.drain(&mut out);
        let causes: Vec<_> = out
            .iter()
            .filter_map(|d| match d {
                Drained::Gap(g) => Some((g.from.0, g.to.0, g.cause)),
                Drained::Frame(_) | Drained::Message { .. } => None,
            })
            .collect();
        assert_eq!(causes, vec![(5, 5, GapCause::SlowConsumer), (6, 9, GapCause::Unavailable)]);
    }

    #[test]
    fn forget_discards_a_channels_notices() {
        let a = ch("chat:a");
        let p = policy(BackpressurePolicy::DropNewest, 0);
        let mut q = q(100);
        push(&mut q, &a, 1, p);
        q.forget(&a);
        assert!(q.is_empty());
    }

    /// A model client: reads a drained batch, returns what it learned per channel.
    fn read(out: Vec<Drained<(String, u64)>>, seen: &mut BTreeMap<String, Vec<(u64, bool)>>) {
        for d in owned(out) {
            match d {
                Ok((c, o)) => seen.entry(c).or_default().push((o, false)),
                Err(g) => {
                    let v = seen.entry(g.channel.to_string()).or_default();
                    for o in g.from.0..=g.to.0 {
                        v.push((o, true));
                    }
                }
            }
        }
    }

    proptest! {
        /// Whatever the policies, bounds and interleaving of pushes and drains, each
        /// channel's client sees every offset exactly once, in order, either as a
        /// message or inside a gap notice that comes before anything later; and the
        /// bounds are never exceeded.
        #[test]
        fn every_offset_arrives_once_in_order_as_message_or_gap(
            ops in proptest::collection::vec((0usize..3, any::<bool>()), 1..300),
            limit in 1usize..6,
            oldest in any::<bool>(),
        ) {
            let names = [ch("chat:a"), ch("chat:b"), ch("chat:c")];
            let p = policy(if oldest { BackpressurePolicy::DropOldest } else { BackpressurePolicy::DropNewest }, limit);
            let mut q: SendQueue<(String, u64)> = SendQueue::new(Bounds { messages: 4, bytes: 1 << 20 });
            let mut next = [1u64; 3];
            let mut seen = BTreeMap::new();
            for (c, drain) in ops {
                if drain {
                    let mut out = Vec::new();
                    q.drain(&mut out);
                    read(out, &mut seen);
                }
                let o = next[c];
                next[c] += 1;
                q.push_message(&m((names[c].to_string(), o), 1, &names[c], at(o)), false, p);
                prop_assert!(q.messages.frames <= limit.min(4));
            }
            let mut out = Vec::new();
            q.drain(&mut out);
            read(out, &mut seen);
            for (c, name) in names.iter().enumerate() {
                let got: Vec<u64> = seen.get(name.as_str()).map(|v| v.iter().map(|(o, _)| *o).collect()).unwrap_or_default();
                prop_assert_eq!(got, (1..next[c]).collect::<Vec<u64>>());
            }
        }
    }

    /// A frame as the delta tests see it: a full version of a key, or a patch of a key
    /// against the client's version at `base`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ver {
        Full { key: u8, offset: u64 },
        Patch { key: u8, offset: u64, base: u64 },
    }

    fn push_ver(q: &mut SendQueue<Ver>, c: &ChannelName, p: MessagePolicy, key: u8, offset: u64, base: Option<u64>) {
        let alt = base.map(|b| Alt { base: Offset(b), frame: Ver::Patch { key, offset, base: b } });
        let msg = QueuedMessage {
            key: Some(key.to_string().into()),
            alt,
            ..QueuedMessage::new(Ver::Full { key, offset }, 1, c.clone(), at(offset))
        };
        q.push_message(&Arc::new(msg), true, p);
    }

    fn frames(q: &mut SendQueue<Ver>) -> Vec<Ver> {
        let mut out = Vec::new();
        q.drain(&mut out);
        owned(out).into_iter().filter_map(Result::ok).collect()
    }

    #[test]
    fn deltas_go_out_only_where_the_client_holds_the_base() {
        let c = ch("scores:nba");
        let p = policy(BackpressurePolicy::KeepLatest, 2);
        let mut q: SendQueue<Ver> = SendQueue::new(Bounds { messages: 100, bytes: 1 << 20 });
        // Unmarked: always the full frame.
        push_ver(&mut q, &c, p, 1, 1, None);
        push_ver(&mut q, &c, p, 1, 2, Some(1));
        assert_eq!(frames(&mut q), vec![Ver::Full { key: 1, offset: 1 }, Ver::Full { key: 1, offset: 2 }]);
        // Marked after a snapshot at 2: the client holds key 1 at 2.
        q.mark_stream(&c, at(2), true);
        push_ver(&mut q, &c, p, 1, 3, Some(2));
        push_ver(&mut q, &c, p, 2, 4, None);
        assert_eq!(frames(&mut q), vec![Ver::Patch { key: 1, offset: 3, base: 2 }, Ver::Full { key: 2, offset: 4 }]);
        // The queue (2 messages) conflates: 5 (key 1) is replaced by 7 (key 1). After
        // the hole at 5 the client is known to hold only what follows it, so 6 and 7
        // go out whole (6's base, 4, came before the hole).
        push_ver(&mut q, &c, p, 1, 5, Some(3));
        push_ver(&mut q, &c, p, 2, 6, Some(4));
        push_ver(&mut q, &c, p, 1, 7, Some(5));
        assert_eq!(frames(&mut q), vec![Ver::Full { key: 2, offset: 6 }, Ver::Full { key: 1, offset: 7 }]);
        // From there on, bases at or after 6 are held.
        push_ver(&mut q, &c, p, 1, 8, Some(7));
        push_ver(&mut q, &c, p, 2, 9, Some(6));
        assert_eq!(
            frames(&mut q),
            vec![Ver::Patch { key: 1, offset: 8, base: 7 }, Ver::Patch { key: 2, offset: 9, base: 6 }]
        );
        // Marked without state: bases at or below the mark are unknown to the client.
        q.forget(&c);
        q.mark_stream(&c, at(9), false);
        push_ver(&mut q, &c, p, 1, 10, Some(8));
        push_ver(&mut q, &c, p, 1, 11, Some(10));
        assert_eq!(frames(&mut q), vec![Ver::Full { key: 1, offset: 10 }, Ver::Patch { key: 1, offset: 11, base: 10 }]);
    }

    proptest! {
        /// A client that applies what it is sent never gets a patch against a version it
        /// does not hold, whatever the queue drops or conflates; and it ends with every
        /// key's newest version once the queue is drained.
        #[test]
        fn a_patch_always_finds_its_base(
            ops in proptest::collection::vec((0u8..4, 0u8..10), 1..300),
            limit in 1usize..6,
            keep_latest in any::<bool>(),
        ) {
            let c = ch("scores:nba");
            let policy_kind = if keep_latest { BackpressurePolicy::KeepLatest } else { BackpressurePolicy::DropOldest };
            let p = policy(policy_kind, limit);
            let mut q: SendQueue<Ver> = SendQueue::new(Bounds { messages: 64, bytes: 1 << 20 });
            // The owner's view: newest offset per key. The client's: what it applied.
            let mut newest: BTreeMap<u8, u64> = BTreeMap::new();
            let mut held: BTreeMap<u8, u64> = BTreeMap::new();
            q.mark_stream(&c, at(0), true);
            let mut offset = 0;
            let apply = |out: Vec<Ver>, held: &mut BTreeMap<u8, u64>| -> Result<(), TestCaseError> {
                for f in out {
                    match f {
                        Ver::Full { key, offset } => { held.insert(key, offset); }
                        Ver::Patch { key, offset, base } => {
                            prop_assert_eq!(held.get(&key).copied(), Some(base), "patch {} of key {} against a version the client lacks", offset, key);
                            held.insert(key, offset);
                        }
                    }
                }
                Ok(())
            };
            for (key, drain) in ops {
                offset += 1;
                let base = newest.insert(key, offset);
                push_ver(&mut q, &c, p, key, offset, base);
                if drain < 3 {
                    let out = frames(&mut q);
                    apply(out, &mut held)?;
                }
            }
            let out = frames(&mut q);
            apply(out, &mut held)?;
            if keep_latest {
                // Conflation keeps every key's newest message (the queue bound is at
                // least 1, and the newest of a key is never replaced).
                let last_key = newest.iter().max_by_key(|(_, o)| **o).map(|(k, _)| *k);
                if let Some(k) = last_key {
                    prop_assert_eq!(held.get(&k), newest.get(&k));
                }
            }
        }
    }
}
