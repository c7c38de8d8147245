//! The per-connection send queue, shared between producers and the session's writer.
//!
//! A thin, thread-safe shell around [`ringcast_core::send_queue::SendQueue`], which owns
//! the bounds, the per-namespace backpressure policies and the `gap` notices. Producers
//! (the hub's fan-out, the session's own replies) push pre-encoded frames and never wait.
//! When the queue overflows (a `disconnect` namespace, or replies the client never
//! reads) the connection is marked for closing as a slow consumer (close 4008), what it
//! held is freed, and nothing more is taken; under `drop_oldest` / `drop_newest` the
//! dropped range reaches the client as one `gap` push before anything later of that
//! channel.
//!
//! The session's writer drains everything queued in one go and writes it as one batch, so
//! a connection holds at most its queue plus the batch being written. The batch is freed
//! once written, and the queue's own allocation after a small batch
//! ([`ringcast_core::send_queue::FREE_UP_TO_ENTRIES`]), so an idle connection holds only
//! the empty outbox.

use ringcast_core::send_queue::{Alt, Bounds, Drained, GapCause, GapNotice, MessagePolicy, SendQueue};
use ringcast_core::BackpressurePolicy;
use ringcast_core::{ChannelName, StreamPosition};
use ringcast_proto::client::{encode_gap, message_key, GapReason};
use ringcast_proto::CloseCode;
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use ringcast_core::send_queue::Pushed;

#[derive(Debug)]
struct State {
    queue: SendQueue<Utf8Bytes>,
    close: Option<CloseCode>,
}

/// What an [`Outbox`] holds for the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Nothing,
    /// Messages and other pushes only.
    Pushes,
    /// A reply to the client's own command, which it waits for (pushes may be queued
    /// with it).
    Reply,
    /// A close was requested (frames may be queued before it).
    Close,
}

/// A bounded queue of frames for one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Woken when the queue overflows, so a writer stuck on a full socket gives up.
    overflow: Notify,
}

impl Outbox {
    #[must_use]
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                queue: SendQueue::new(Bounds { messages: max_frames, bytes: max_bytes }),
                close: None,
            }),
            notify: Notify::new(),
            overflow: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (every update
        // is a single queue operation), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection's bounds (a namespace's bounds are capped by them).
    pub fn bounds(&self) -> Bounds {
        self.lock().queue.bounds()
    }

    fn after_push(&self, mut s: std::sync::MutexGuard<'_, State>, pushed: Pushed) -> Pushed {
        if pushed == Pushed::Overflow {
            s.close = Some(CloseCode::SlowConsumer);
        }
        drop(s);
        match pushed {
            Pushed::Queued { .. } | Pushed::Dropped { .. } => self.notify.notify_one(),
            Pushed::Overflow => {
                self.notify.notify_one();
                self.overflow.notify_waiters();
            }
            Pushed::Closed => {}
        }
        pushed
    }

    /// Queues a reply to the client's own command (bounded; an overflow closes 4008).
    pub fn push(&self, frame: Utf8Bytes) -> Pushed {
        let mut s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        let len = frame.len();
        let pushed = s.queue.push_control(frame, len);
        self.after_push(s, pushed)
    }

    /// Queues a message of `channel` under its namespace's policy.
    pub fn push_message(
        &self,
        frame: Utf8Bytes,
        channel: &ChannelName,
        position: StreamPosition,
        policy: MessagePolicy,
    ) -> Pushed {
        let key = match policy.policy {
            BackpressurePolicy::KeepLatest => message_key(frame.as_str()).map(str::to_owned),
            _ => None,
        };
        self.push_message_alt(frame, channel, position, policy, key.as_deref(), None)
    }

    /// [`Outbox::push_message`] with the message's keep-latest `key` read by the caller
    /// (once per message, not per subscriber; used under `keep_latest` only) and its
    /// delta form, written instead when the client holds its base
    /// (`ringcast_core::send_queue`, "Deltas").
    pub fn push_message_alt(
        &self,
        frame: Utf8Bytes,
        channel: &ChannelName,
        position: StreamPosition,
        policy: MessagePolicy,
        key: Option<&str>,
        alt: Option<Alt<Utf8Bytes>>,
    ) -> Pushed {
        let mut s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        let len = frame.len();
        let pushed = s.queue.push_message_with_alt(frame, len, channel, position, policy, key, alt);
        self.after_push(s, pushed)
    }

    /// Marks where `channel`'s stream starts for this connection (after the frames queued
    /// so far), so deltas can be written from there on; `holds_state`: a snapshot at
    /// `position` went before.
    pub fn mark_stream(&self, channel: &ChannelName, position: StreamPosition, holds_state: bool) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.queue.mark_stream(channel, position, holds_state);
        }
    }

    /// Queues a `join`, `leave` or `typing` push: best effort, dropped silently when the
    /// connection's message bound is full.
    pub fn push_ephemeral(&self, frame: Utf8Bytes) -> Pushed {
        let mut s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        let len = frame.len();
        let pushed = s.queue.push_ephemeral(frame, len);
        self.after_push(s, pushed)
    }

    /// Queues frames outside the bounds, and without counting them against the bounds
    /// for later pushes. Only for a `subscribed` reply and its replay, which are bounded
    /// by the namespace's `history_size` and share their bytes with history, so they
    /// cost the queue slots and not copies.
    pub fn push_unbounded(&self, frames: impl IntoIterator<Item = Utf8Bytes>) {
        let mut s = self.lock();
        if s.close.is_some() {
            return;
        }
        s.queue.push_exempt(frames);
        drop(s);
        self.notify.notify_one();
    }

    /// Tells the client about messages that will not arrive for a reason other than
    /// this queue's own drops (the node lost them on their way from the owner).
    pub fn push_gap(&self, notice: GapNotice) {
        let mut s = self.lock();
        if s.close.is_some() {
            return;
        }
        s.queue.push_gap(notice);
        drop(s);
        self.notify.notify_one();
    }

    /// Forgets pending `gap` notices of a channel the client unsubscribed from.
    pub fn forget(&self, channel: &ChannelName) {
        self.lock().queue.forget(channel);
    }

    /// Asks the session to close with `code` after writing what is queued. The first
    /// close requested wins.
    pub fn close(&self, code: CloseCode) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(code);
        }
        s.queue.close();
        drop(s);
        self.notify.notify_one();
    }

    /// Moves every queued frame into `out`, `gap` notices encoded in their places;
    /// returns the close requested, if any. An empty `out` takes over the batch's one
    /// allocation.
    pub fn drain(&self, out: &mut Vec<Utf8Bytes>) -> Option<CloseCode> {
        let mut drained = Vec::new();
        let close = {
            let mut s = self.lock();
            s.queue.drain(&mut drained);
            s.close
        };
        // Encoding happens outside the lock; gaps are rare. Collected in place, into
        // `drained`'s allocation.
        let frames: Vec<Utf8Bytes> = drained
            .into_iter()
            .map(|d| match d {
                Drained::Frame(f) => f,
                Drained::Gap(g) => {
                    let reason = match g.cause {
                        GapCause::SlowConsumer => GapReason::SlowConsumer,
                        GapCause::Unavailable => GapReason::Unavailable,
                        GapCause::Conflated => GapReason::Conflated,
                    };
                    Utf8Bytes::from(encode_gap(&g.channel, g.epoch, g.from, g.to, reason))
                }
            })
            .collect();
        if out.is_empty() {
            *out = frames;
        } else {
            out.extend(frames);
        }
        close
    }

    /// What a write would do now.
    pub fn pending(&self) -> Pending {
        let s = self.lock();
        if s.close.is_some() {
            Pending::Close
        } else if s.queue.holds_reply() {
            Pending::Reply
        } else if s.queue.is_empty() {
            Pending::Nothing
        } else {
            Pending::Pushes
        }
    }

    /// Resolves when something was pushed or a close was requested since the last call.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Resolves once the queue has overflowed (the connection is a slow consumer).
    pub async fn overflowed(&self) {
        loop {
            // Created before the check, so an overflow between the two is not missed.
            let woken = self.overflow.notified();
            if self.lock().close == Some(CloseCode::SlowConsumer) {
                return;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_core::{BackpressurePolicy, Epoch, Offset};

    fn f(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
    }

    fn ch() -> ChannelName {
        ChannelName::new("chat:a").unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(o: u64) -> StreamPosition {
        StreamPosition { epoch: Epoch::new(3).unwrap_or_else(|| unreachable!()), offset: Offset(o) }
    }

    fn policy(p: BackpressurePolicy) -> MessagePolicy {
        MessagePolicy { policy: p, bounds: Bounds { messages: 2, bytes: 1000 } }
    }

    #[test]
    fn overflow_closes_and_frees() {
        let o = Outbox::new(2, 1000);
        let p = policy(BackpressurePolicy::Disconnect);
        assert_eq!(o.push_message(f("a"), &ch(), at(1), p), Pushed::Queued { dropped: 0 });
        assert_eq!(o.push_message(f("b"), &ch(), at(2), p), Pushed::Queued { dropped: 0 });
        assert_eq!(o.push_message(f("c"), &ch(), at(3), p), Pushed::Overflow);
        assert_eq!(o.push(f("d")), Pushed::Closed);
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Some(CloseCode::SlowConsumer));
        assert!(out.is_empty(), "a slow consumer's backlog is freed, not written");
    }

    #[test]
    fn drops_become_an_encoded_gap_push() {
        let o = Outbox::new(100, 1000);
        let p = policy(BackpressurePolicy::DropOldest);
        for i in 1..=4 {
            o.push_message(f(&format!("m{i}")), &ch(), at(i), p);
        }
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), None);
        let text: Vec<&str> = out.iter().map(Utf8Bytes::as_str).collect();
        assert_eq!(
            text,
            vec![
                r#"{"type":"gap","channel":"chat:a","epoch":"3","from":1,"to":2,"reason":"slow_consumer"}"#,
                "m3",
                "m4"
            ]
        );
    }

    #[tokio::test]
    async fn overflowed_resolves_on_overflow_only() {
        let o = std::sync::Arc::new(Outbox::new(1, 1000));
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.overflowed().await }
        });
        o.close(CloseCode::GoingAway);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a graceful close is not an overflow");
        let o2 = Outbox::new(1, 1000);
        o2.push(f("a"));
        o2.push(f("b"));
        tokio::time::timeout(std::time::Duration::from_secs(1), o2.overflowed())
            .await
            .unwrap_or_else(|_| panic!("overflow not seen"));
        waiter.abort();
    }

    #[test]
    fn unbounded_replay_and_graceful_close_keep_frames() {
        let o = Outbox::new(1, 1);
        o.push_unbounded([f("reply"), f("m1"), f("m2")]);
        o.close(CloseCode::GoingAway);
        o.close(CloseCode::SlowConsumer);
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Some(CloseCode::GoingAway));
        assert_eq!(out.len(), 3);
    }
}
