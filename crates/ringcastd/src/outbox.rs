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
//!
//! # Direct writes
//!
//! With `limits.direct_writes` (off by default), a message for a connection that has
//! nothing queued and nothing in flight is written by its producer straight to the
//! socket ([`Outbox::attach`], [`crate::socket`]): one
//! non-blocking `writev` of the frame's header and its shared bytes, and no wake-up of
//! the session, which is most of what a delivery costs the node in user space. Anything
//! else takes the queue as before: a socket that would block, a connection whose session
//! holds frames it took from the queue or has written through tungstenite without
//! flushing yet (`writing`), a channel the queue tracks for deltas, a close, and a
//! saturated node whose sessions batch ([`crate::saturation`]: there their batching is
//! the cheaper path). What a short
//! direct write leaves over (`unsent`) is written by the session before anything else, so
//! the socket only ever carries whole frames in order. Sessions that speak MessagePack or
//! coalesce their writes (`limits.min_write_interval`) are not attached.

use ringcast_core::send_queue::{Alt, Bounds, Drained, GapCause, GapNotice, MessagePolicy, SendQueue};
use ringcast_core::BackpressurePolicy;
use ringcast_core::{ChannelName, StreamPosition};
use ringcast_proto::client::{encode_gap, message_key, GapReason};
use ringcast_proto::CloseCode;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;

pub use ringcast_core::send_queue::Pushed;

#[derive(Debug)]
struct State {
    queue: SendQueue<Utf8Bytes>,
    close: Option<CloseCode>,
    /// The socket producers may write to directly (see the module docs); boxed, so an
    /// outbox without it costs one pointer.
    direct: Option<Box<Direct>>,
    /// The session took frames from the queue, or wrote through tungstenite, and has not
    /// flushed everything since: nothing may be written directly before those bytes.
    writing: bool,
}

#[derive(Debug)]
struct Direct {
    tcp: Arc<TcpStream>,
    metrics: Arc<Metrics>,
    /// The rest of a short direct write, written before anything else.
    unsent: Vec<u8>,
}

impl State {
    fn has_unsent(&self) -> bool {
        self.direct.as_ref().is_some_and(|d| !d.unsent.is_empty())
    }
}

/// The header of an unmasked, final WebSocket text frame of `len` bytes (RFC 6455 §5.2,
/// as the server sends them); returns the header's length.
fn text_frame_header(len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x81;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
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
                direct: None,
                writing: false,
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

    /// Lets producers write message frames straight to `tcp` (the session's socket) while
    /// nothing else is queued or in flight; counts those writes in `metrics`.
    pub fn attach(&self, tcp: Arc<TcpStream>, metrics: Arc<Metrics>) {
        self.lock().direct = Some(Box::new(Direct { tcp, metrics, unsent: Vec::new() }));
    }

    /// The session is over: no more direct writes. Pushes are still taken (and never
    /// written) until the session's unsubscribes reach the hub, which then records the
    /// leaves as usual.
    pub fn detach(&self) {
        self.lock().direct = None;
    }

    /// Writes `frame` to the socket now if the connection has nothing queued or in flight
    /// (see the module docs). `None`: it must be queued. `Some(true)`: written, but the
    /// socket took part of it, so the session must be woken to write the rest.
    fn write_direct(s: &mut State, frame: &Utf8Bytes, channel: &ChannelName) -> Option<bool> {
        if s.direct.is_none() || s.writing || s.has_unsent() || !s.queue.is_empty() || s.queue.tracks(channel) {
            return None;
        }
        let d = s.direct.as_mut()?;
        if d.metrics.saturated.load(Ordering::Relaxed) {
            return None;
        }
        let mut header = [0u8; 10];
        let h = text_frame_header(frame.len(), &mut header);
        let body = frame.as_bytes();
        let n = match d.tcp.try_write_vectored(&[IoSlice::new(&header[..h]), IoSlice::new(body)]) {
            // Would block, or failed (the session meets the error on its own write).
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        d.metrics.client_writes.fetch_add(1, Ordering::Relaxed);
        d.metrics.client_direct_writes.fetch_add(1, Ordering::Relaxed);
        if n == h + body.len() {
            return Some(false);
        }
        if n < h {
            d.unsent.extend_from_slice(&header[n..h]);
        }
        d.unsent.extend_from_slice(&body[n.saturating_sub(h)..]);
        Some(true)
    }

    /// The session's write of `buf` (through tungstenite): what a direct write left over
    /// goes first, and no direct write follows until [`Outbox::written`].
    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, tcp: &TcpStream, buf: &[u8]) -> Poll<io::Result<usize>> {
        {
            let mut s = self.lock();
            s.writing = true;
            ready!(Self::poll_unsent(&mut s, cx, tcp))?;
        }
        loop {
            match tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(tcp.poll_write_ready(cx))?,
                r => return Poll::Ready(r),
            }
        }
    }

    /// The session's flush: writes what a direct write left over.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>, tcp: &TcpStream) -> Poll<io::Result<()>> {
        Self::poll_unsent(&mut self.lock(), cx, tcp)
    }

    fn poll_unsent(s: &mut State, cx: &mut Context<'_>, tcp: &TcpStream) -> Poll<io::Result<()>> {
        let Some(d) = s.direct.as_mut() else { return Poll::Ready(Ok(())) };
        while !d.unsent.is_empty() {
            match tcp.try_write(&d.unsent) {
                Ok(n) => {
                    d.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(tcp.poll_write_ready(cx))?,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if d.unsent.capacity() > 0 {
            d.unsent = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// The session flushed everything it took and wrote: direct writes may resume.
    pub fn written(&self) {
        let mut s = self.lock();
        if !s.has_unsent() {
            s.writing = false;
        }
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
        if s.close.is_some() || s.queue.is_closed() {
            return Pushed::Closed;
        }
        if let Some(rest) = Self::write_direct(&mut s, &frame, channel) {
            drop(s);
            if rest {
                self.notify.notify_one();
            }
            return Pushed::Queued { dropped: 0 };
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
    /// allocation. Until [`Outbox::written`], nothing is written directly: the session
    /// holds frames that go first.
    pub fn drain(&self, out: &mut Vec<Utf8Bytes>) -> Option<CloseCode> {
        let mut drained = Vec::new();
        let close = {
            let mut s = self.lock();
            s.queue.drain(&mut drained);
            s.writing |= !drained.is_empty();
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
        } else if s.queue.is_empty() && !s.has_unsent() {
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

    /// A connected loopback pair: the server's socket (shared, as a session holds it) and
    /// the client's.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let client = client.unwrap_or_else(|e| panic!("connect: {e}"));
        (Arc::new(server.unwrap_or_else(|e| panic!("accept: {e}")).0), client)
    }

    fn frame(text: &str) -> Vec<u8> {
        let mut h = [0u8; 10];
        let n = text_frame_header(text.len(), &mut h);
        [&h[..n], text.as_bytes()].concat()
    }

    /// Reads exactly `n` bytes from the client's side, within `secs` seconds.
    async fn read_n(c: &mut TcpStream, n: usize, secs: u64) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0; n];
        tokio::time::timeout(std::time::Duration::from_secs(secs), c.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{n} bytes did not arrive"))
            .unwrap_or_else(|e| panic!("read: {e}"));
        buf
    }

    fn nothing_to_read(c: &TcpStream) -> bool {
        matches!(c.try_read(&mut [0u8; 64]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn text_frame_headers_use_the_shortest_length_form() {
        let mut h = [0u8; 10];
        assert_eq!((text_frame_header(125, &mut h), &h[..2]), (2, &[0x81, 125][..]));
        assert_eq!((text_frame_header(126, &mut h), &h[..4]), (4, &[0x81, 126, 0, 126][..]));
        assert_eq!((text_frame_header(65_535, &mut h), &h[..4]), (4, &[0x81, 126, 255, 255][..]));
        assert_eq!((text_frame_header(65_536, &mut h), &h[..10]), (10, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0][..]));
    }

    #[tokio::test]
    async fn an_idle_connection_gets_a_message_written_straight_to_its_socket() {
        let (tcp, mut client) = pair().await;
        let metrics = Arc::new(Metrics::default());
        let o = Outbox::new(10, 10_000);
        // The test keeps `tcp` (as the session's socket would), so the connection stays open.
        o.attach(tcp.clone(), metrics.clone());
        let p = policy(BackpressurePolicy::Disconnect);
        assert_eq!(o.push_message_alt(f("m1"), &ch(), at(1), p, None, None), Pushed::Queued { dropped: 0 });
        assert_eq!(o.pending(), Pending::Nothing, "nothing queued for the session");
        assert_eq!(read_n(&mut client, 4, 1).await, frame("m1"));
        assert_eq!(metrics.client_writes.load(Ordering::Relaxed), 1);
        // Detached (the session ended): nothing more is written to the socket.
        o.detach();
        assert_eq!(o.push_message_alt(f("m2"), &ch(), at(2), p, None, None), Pushed::Queued { dropped: 0 });
        assert_eq!(o.pending(), Pending::Pushes);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(nothing_to_read(&client));
    }

    #[tokio::test]
    async fn frames_queued_or_taken_by_the_session_go_before_any_direct_write() {
        let (tcp, mut client) = pair().await;
        let o = Outbox::new(10, 10_000);
        o.attach(tcp, Arc::new(Metrics::default()));
        let p = policy(BackpressurePolicy::Disconnect);
        o.push(f("reply"));
        // Queued behind the reply.
        o.push_message_alt(f("m1"), &ch(), at(1), p, None, None);
        let mut batch = Vec::new();
        o.drain(&mut batch);
        assert_eq!(batch, [f("reply"), f("m1")]);
        // The session holds the batch: m2 waits in the queue, though the queue was empty.
        o.push_message_alt(f("m2"), &ch(), at(2), p, None, None);
        assert_eq!(o.pending(), Pending::Pushes);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(nothing_to_read(&client), "m2 was written before the session's batch");
        o.written();
        // m2 is still queued, so m3 queues behind it.
        o.push_message_alt(f("m3"), &ch(), at(3), p, None, None);
        o.drain(&mut batch);
        assert_eq!(batch[2..], [f("m2"), f("m3")]);
        o.written();
        // Only now, with nothing queued or held, does a message go out directly.
        o.push_message_alt(f("m4"), &ch(), at(4), p, None, None);
        assert_eq!(o.pending(), Pending::Nothing);
        assert_eq!(read_n(&mut client, 4, 1).await, frame("m4"));
    }

    #[tokio::test]
    async fn the_rest_of_a_short_direct_write_goes_out_first_through_the_session() {
        use tokio::io::AsyncWriteExt as _;
        let (tcp, mut client) = pair().await;
        socket2::SockRef::from(&*tcp).set_send_buffer_size(4096).unwrap_or_else(|e| panic!("{e}"));
        let o = Arc::new(Outbox::new(10, 10_000_000));
        o.attach(tcp.clone(), Arc::new(Metrics::default()));
        let p = MessagePolicy {
            policy: BackpressurePolicy::Disconnect,
            bounds: Bounds { messages: 10, bytes: 10_000_000 },
        };
        // Far more than the socket takes at once: part is written, the rest kept.
        let big = "x".repeat(4 << 20);
        assert_eq!(o.push_message_alt(f(&big), &ch(), at(1), p, None, None), Pushed::Queued { dropped: 0 });
        assert_eq!(o.pending(), Pending::Pushes, "the session must write the rest");
        // Behind the rest, so queued.
        o.push_message_alt(f("m2"), &ch(), at(2), p, None, None);
        let reader = tokio::spawn(async move {
            let want = frame(&"x".repeat(4 << 20)).len() + 4;
            read_n(&mut client, want, 10).await
        });
        // The session: drain, write through its socket (what is unsent first), flush.
        let mut session = crate::socket::Socket::new(tcp, &[], o.clone());
        let mut batch = Vec::new();
        o.drain(&mut batch);
        assert_eq!(batch, [f("m2")]);
        session.write_all(&frame("m2")).await.unwrap_or_else(|e| panic!("{e}"));
        session.flush().await.unwrap_or_else(|e| panic!("{e}"));
        o.written();
        let got = reader.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(got == [frame(&big), frame("m2")].concat(), "the stream is not the big frame then m2");
        assert_eq!(o.pending(), Pending::Nothing);
    }
}
