//! The per-connection send queue.
//!
//! Producers (the hub's fan-out, the session's own replies) never wait on a client: they
//! `push` a pre-encoded frame and return. The queue is bounded in frames and bytes
//! (`limits.send_queue_*`); a push that would exceed either bound marks the connection
//! for closing as a slow consumer (close 4008), frees what it held, and refuses further
//! frames, so one slow reader costs the node a bounded amount of memory and nothing else.
//! The client resumes with `since` and recovers from history.
//!
//! The session's writer drains everything queued in one go and writes it as one batch.

use ringcast_proto::CloseCode;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Result of a bounded push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The bound was hit: the connection is now closing with `slow_consumer`.
    Overflow,
    /// The connection was already closing; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    /// Bytes of the frames that count against the bounds (replay frames do not).
    bytes: usize,
    /// How many queued frames are exempt from the bounds (replay and its reply).
    exempt: usize,
    close: Option<CloseCode>,
}

/// A bounded queue of frames for one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Woken when the queue overflows, so a writer stuck on a full socket gives up.
    overflow: Notify,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbox {
    #[must_use]
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            overflow: Notify::new(),
            max_frames,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (every update
        // is a single push/clear), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a frame within the bounds.
    pub fn push(&self, frame: Utf8Bytes) -> Pushed {
        let mut s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        if s.frames.len() - s.exempt >= self.max_frames || s.bytes + frame.len() > self.max_bytes {
            s.frames.clear();
            s.bytes = 0;
            s.exempt = 0;
            s.close = Some(CloseCode::SlowConsumer);
            drop(s);
            self.notify.notify_one();
            self.overflow.notify_waiters();
            return Pushed::Overflow;
        }
        s.bytes += frame.len();
        s.frames.push_back(frame);
        drop(s);
        self.notify.notify_one();
        Pushed::Queued
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
        for f in frames {
            s.exempt += 1;
            s.frames.push_back(f);
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Asks the session to close with `code` after writing what is queued. The first
    /// close requested wins.
    pub fn close(&self, code: CloseCode) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(code);
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Moves every queued frame into `out`; returns the close requested, if any.
    pub fn drain(&self, out: &mut Vec<Utf8Bytes>) -> Option<CloseCode> {
        let mut s = self.lock();
        out.extend(s.frames.drain(..));
        s.bytes = 0;
        s.exempt = 0;
        s.close
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

    fn f(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
    }

    #[test]
    fn overflow_by_count_closes_and_frees() {
        let o = Outbox::new(2, 1000);
        assert_eq!(o.push(f("a")), Pushed::Queued);
        assert_eq!(o.push(f("b")), Pushed::Queued);
        assert_eq!(o.push(f("c")), Pushed::Overflow);
        assert_eq!(o.push(f("d")), Pushed::Closed);
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Some(CloseCode::SlowConsumer));
        assert!(out.is_empty(), "a slow consumer's backlog is freed, not written");
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
    fn overflow_by_bytes() {
        let o = Outbox::new(100, 5);
        assert_eq!(o.push(f("abc")), Pushed::Queued);
        assert_eq!(o.push(f("abc")), Pushed::Overflow);
    }

    #[test]
    fn a_large_replay_does_not_count_against_live_messages() {
        let o = Outbox::new(2, 10);
        o.push_unbounded((0..100).map(|_| f("replayed frame")));
        assert_eq!(o.push(f("live1")), Pushed::Queued);
        assert_eq!(o.push(f("live2")), Pushed::Queued);
        assert_eq!(o.push(f("live3")), Pushed::Overflow, "live frames still have their bound");
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
