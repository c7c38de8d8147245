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
//! once written, and the queue's own allocation after a small batch of replies
//! ([`ringcast_core::send_queue::FREE_UP_TO_ENTRIES`]), so an idle connection holds only
//! the empty outbox; a subscriber whose last small batch carried a message keeps room
//! for that many entries, instead of allocating it again for every message.
//!
//! # Direct writes
//!
//! With `limits.direct_writes` (the default), a connection's messages are written by a
//! [`Flusher`] task straight to its socket ([`Outbox::attach`], [`crate::socket`]), not by
//! the connection's session task. A message queued for a connection whose session holds
//! nothing marks the outbox dirty (once: a dirty outbox is already on the list) and adds
//! it to its flusher's list; the flusher's turn takes the whole list and writes each
//! connection's queue in one non-blocking `send`: small frames copied behind their
//! headers into one buffer, larger ones as a `sendmsg` of headers and the shared frame
//! bytes. So one publish to 15,000 idle subscribers costs one task wake-up, not 15,000,
//! and under load a connection's messages batch by construction: whatever was queued
//! before the flusher's turn goes in one write (like Redis's writes of pending clients
//! before its event loop sleeps), with no monitor deciding when batching pays.
//!
//! The order of the socket's bytes is kept by one rule: the flusher writes only what it
//! drains from the queue, under the outbox's lock, and only while the session holds
//! nothing (`writing`: frames it drained, or bytes it wrote through tungstenite without
//! flushing, say a reply or a pong) and nothing of an earlier direct write is left over
//! (`unsent`). Otherwise the session is woken and writes the queue itself. What the
//! socket does not take (the rest of a frame, and every later frame of the turn) goes to
//! `unsent`, which the session writes before anything else (it is woken for it), so the
//! stream only ever carries whole frames in order. The session then writes what is
//! queued the flusher's way (`Outbox::poll_write_queued`: pre-framed, one `send` for
//! many frames), waiting while the socket is full; tungstenite's buffer
//! carries only its own frames (pongs, pings, the close). A connection thus holds at
//! most its queue plus one drained batch, as on the session path. A direct write that
//! fails (the connection broke) drops its frames with the connection, stops direct
//! writes, and wakes the session, whose next write returns that error and ends it. The
//! queue's delta and `gap` handling applies as before: the flusher drains it like the
//! session does.
//!
//! There is one flusher per worker thread, each for a share of the connections, so with
//! several workers the writes still spread over the cores. Sessions that speak
//! MessagePack are not attached.
//!
//! # Coalesced writes
//!
//! A flusher may start its turns some time apart (`ringcast_core::pacing`): always
//! with `limits.min_write_interval`, and with `limits.busy_write_interval` (by default
//! 20 ms) only while it is busy, having had work at least three quarters of the time
//! over its last turns. Marks made while it waits join the next turn, and pushes to a
//! connection already marked join its write, so under a steady stream each connection
//! gets at most one write (one system call) per interval, whatever the publish rate. A
//! flusher that had no turn for the interval writes at once, so an isolated message is
//! not delayed, and one that is not busy never waits for the busy interval; when a turn
//! takes longer than the interval (a large fan-out), the next starts right after it,
//! and so does a turn for which a connection already holds `HURRY_AT` frames (near
//! saturation, waiting longer only grows the queues). The session's own writes
//! (replies, and the backlog of a socket that was full) do not wait.
//!
//! The busy interval exists because a flusher that writes as soon as it can is
//! work-conserving: near saturation every spare cycle goes to small writes, the core
//! stays saturated and the queues grow, where spacing the turns makes each write carry
//! more, which frees the core and shortens the queues (docs/benchmarks.md, "Status
//! check, 2026-12-01 afternoon: busy-write pacing").
//!
//! # Cold connections
//!
//! In a large fan-out every connection's state is cold, once for the push and again for
//! the write, and locking an outbox is an atomic instruction that waits for its cache
//! line: one miss after another, each in full, was most of a delivery's user-space time.
//! So both passes go through a batch of [`TOUCH_AHEAD`] connections at a time
//! ([`for_each_held`]): they load the batch's first lines before locking any, then lock
//! the free ones and load what the pushes or writes read before the first one starts.
//! The loads of a batch are independent, so their misses overlap. An outbox locked
//! elsewhere waits until the batch's locks are released, so no pass waits for a lock
//! while it holds another. The socket lives in the outbox (`Direct`) for the same
//! reason: a write then finds the descriptor in a line it already holds.

use ringcast_core::pacing::{Load, Pacing};
use ringcast_core::send_queue::{Bounds, Drained, GapCause, GapNotice, MessagePolicy, QueuedMessage, SendQueue};
use ringcast_core::{ChannelName, StreamPosition};
use ringcast_proto::client::{encode_gap, GapReason};
use ringcast_proto::CloseCode;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{ready, Context, Poll};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;

pub use ringcast_core::send_queue::Pushed;

#[derive(Debug)]
struct State {
    queue: SendQueue<Utf8Bytes>,
    close: Option<CloseCode>,
    /// The socket producers may write to directly (see the module docs). Inline, not
    /// boxed: the fan-out's push and the flusher's write both read it, and a box is one
    /// more cache miss for each (see [`Outbox`]).
    direct: Option<Direct>,
    /// The session took frames from the queue, or wrote through tungstenite, and has not
    /// flushed everything since: nothing may be written directly before those bytes.
    writing: bool,
    /// In the [`Flusher`]'s list: it will write what is queued.
    dirty: bool,
}

#[derive(Debug)]
struct Direct {
    /// The connection's socket, owned here and not behind an `Arc` of its own: a direct
    /// write reads its descriptor from the line it already holds, where a separate
    /// allocation was one more cache miss per write (2.5 % of the server's CPU at 10k
    /// subscribers, docs/benchmarks.md, "Status check, 2026-12-01"). The session reads
    /// and writes it through the outbox ([`crate::socket`]); detaching drops it, which
    /// closes the connection.
    tcp: TcpStream,
    /// Also where the writes are counted.
    flusher: Arc<Flusher>,
    /// The rest of a direct write the socket did not take, written before anything else:
    /// `unsent[unsent_from..]`. Emptied (and freed) once all of it is written; appended
    /// to only while empty.
    unsent: Vec<u8>,
    /// How much of `unsent` the socket has taken. An offset, not a cut off the front:
    /// past saturation `unsent` can hold megabytes that a full socket takes a few
    /// hundred kilobytes at a time, and moving the rest down after each write made
    /// every byte cost several copies, the more the further behind the connection was.
    unsent_from: usize,
    /// A direct write failed (the connection is broken): nothing more is written
    /// directly, and the session's next write returns this error and ends it.
    failed: Option<io::ErrorKind>,
}

impl State {
    /// Reads what a push or a direct write reads (see [`SendQueue::touch`]) and returns
    /// something made of it, for `std::hint::black_box` ([`for_each_held`]).
    fn touch(&self) -> usize {
        let direct = self.direct.as_ref().map_or(0, |d| {
            use std::os::fd::AsRawFd as _;
            d.unsent.len() + usize::from(d.failed.is_some()) + d.tcp.as_raw_fd().unsigned_abs() as usize
        });
        self.queue.touch() + direct + usize::from(self.writing) + usize::from(self.dirty)
    }

    /// Something of an earlier direct write is the session's to write first: the rest
    /// the socket did not take, or the write's failure.
    fn direct_held(&self) -> bool {
        self.direct.as_ref().is_some_and(|d| !d.unsent.is_empty() || d.failed.is_some())
    }

    /// A direct write of everything queued (drained into `scratch`, left empty), as the
    /// flusher and a direct-write session both write it. Returns whether the session
    /// must act: the socket left some of it over in `unsent`, or the write failed;
    /// without a socket it writes nothing.
    fn write_queued(&mut self, scratch: &mut WriteScratch) -> bool {
        let Some(d) = self.direct.as_mut() else { return false };
        self.queue.drain(&mut scratch.frames);
        let rest = write_frames(d, &mut scratch.frames, &mut scratch.bytes);
        scratch.frames.clear();
        rest
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

/// A `gap` notice as its frame.
fn gap_frame(g: &GapNotice) -> Utf8Bytes {
    let reason = match g.cause {
        GapCause::SlowConsumer => GapReason::SlowConsumer,
        GapCause::Unavailable => GapReason::Unavailable,
        GapCause::Conflated => GapReason::Conflated,
    };
    Utf8Bytes::from(encode_gap(&g.channel, g.epoch, g.from, g.to, reason))
}

/// The error of a session's I/O after [`Outbox::detach`] (the session no longer does any).
fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection's socket was closed")
}

/// What a direct write works with: the frames drained from the queue, and the buffer
/// they are copied into for one `send(2)`. The flusher keeps one from write to write
/// (both are left empty, with their capacity); a session's write makes its own
/// ([`Outbox::poll_write_queued`]).
#[derive(Debug, Default)]
struct WriteScratch {
    frames: Vec<Drained<Utf8Bytes>>,
    bytes: Vec<u8>,
}

/// The most bytes of frames [`write_copied`] puts in one `send(2)`.
const SEND_BLOCK: usize = 64 << 10;

/// The largest frame body a direct write copies. A write with a larger frame sends the
/// frames' shared bytes instead ([`write_chunks`]): what the copy saves is per slice,
/// what it costs grows with the bytes (measured with frames of 100 bytes and 1 KiB,
/// docs/benchmarks.md, "Status check, 2026-12-01 morning").
const COPY_UP_TO: usize = 4 << 10;

/// Frames per `sendmsg` of [`write_chunks`] (two slices each, far below `IOV_MAX`).
const FRAMES_PER_WRITE: usize = 32;

/// Writes `frames` (drained from the queue, in order) to `d`'s socket without waiting;
/// what the socket does not take goes to `d.unsent`. Returns whether anything did, or
/// the write failed (`d.failed`; the frames are dropped with the broken connection).
/// `buf` is [`WriteScratch::bytes`], left empty.
fn write_frames(d: &mut Direct, frames: &mut [Drained<Utf8Bytes>], buf: &mut Vec<u8>) -> bool {
    for f in frames.iter_mut() {
        if let Drained::Gap(g) = f {
            *f = Drained::Frame(gap_frame(g));
        }
    }
    match frames {
        _ if frames.iter().all(|f| body(f).len() <= COPY_UP_TO) => write_copied(d, frames, buf),
        // One large frame: a header and a body, not the 1.6 KiB of arrays a write of
        // many frames sets up first.
        [_] => write_chunks::<1>(d, frames),
        _ => write_chunks::<FRAMES_PER_WRITE>(d, frames),
    }
}

/// A drained frame's bytes (a `gap` notice is encoded by [`write_frames`] first).
fn body(f: &Drained<Utf8Bytes>) -> &[u8] {
    f.frame().map_or(&[], |f| f.as_bytes())
}

/// Appends `body`'s frame, header and bytes, to `out`.
fn put_frame(out: &mut Vec<u8>, body: &[u8]) {
    let mut header = [0u8; 10];
    let h = text_frame_header(body.len(), &mut header);
    out.extend_from_slice(&header[..h]);
    out.extend_from_slice(body);
}

/// What a direct write's send took (0: the socket is full), counted. `None` when it
/// failed: the connection is broken, so nothing more is written directly, and the
/// session, woken for it, ends on the error at its next write.
fn sent(d: &mut Direct, result: io::Result<usize>) -> Option<usize> {
    match result {
        Ok(n) => {
            if n > 0 {
                d.flusher.metrics.client_writes.fetch_add(1, Ordering::Relaxed);
                d.flusher.metrics.client_direct_writes.fetch_add(1, Ordering::Relaxed);
            }
            Some(n)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(0),
        Err(e) => {
            d.failed = Some(e.kind());
            None
        }
    }
}

/// Small frames, as nearly every write of a fan-out carries (one message to an idle
/// subscriber, or the few queued since the last turn to a busy one): copied behind
/// their headers into `buf` and written with one `send(2)` per [`SEND_BLOCK`]. The kernel
/// then copies one flat buffer, where a `sendmsg` of a header and a body per frame makes
/// it import and walk the slices one by one: in a loopback micro-benchmark a send of 32
/// frames of 100 bytes cost 7.0 µs copied against 9.3 µs as 64 slices, and at 1k
/// subscribers x 2k publishes/s the copy held the offered rate where the slices fell
/// behind (docs/benchmarks.md, "Status check, 2026-12-01 morning"). Returns as
/// [`write_frames`] does; `buf` is left empty.
fn write_copied(d: &mut Direct, frames: &[Drained<Utf8Bytes>], buf: &mut Vec<u8>) -> bool {
    let mut frames = frames.iter().map(body).peekable();
    let mut rest = false;
    while frames.peek().is_some() {
        buf.clear();
        while let Some(f) = frames.next_if(|f| buf.is_empty() || buf.len() + 10 + f.len() <= SEND_BLOCK) {
            put_frame(buf, f);
        }
        let result = socket2::SockRef::from(&d.tcp).send(buf);
        let Some(written) = sent(d, result) else {
            rest = true;
            break;
        };
        if written < buf.len() {
            // The socket is full: keep the rest of this block and every later frame.
            d.unsent.extend_from_slice(&buf[written..]);
            for f in frames {
                put_frame(&mut d.unsent, f);
            }
            rest = true;
            break;
        }
    }
    buf.clear();
    rest
}

/// A write with a frame larger than [`COPY_UP_TO`]: the frames' shared bytes, a header
/// and a body each, `N` frames per `sendmsg`. Returns as [`write_frames`] does.
fn write_chunks<const N: usize>(d: &mut Direct, frames: &[Drained<Utf8Bytes>]) -> bool {
    let mut headers = [[0u8; 10]; N];
    let mut header_lens = [0usize; N];
    for (at, chunk) in frames.chunks(N).enumerate() {
        let mut total = 0;
        for (k, f) in chunk.iter().enumerate() {
            header_lens[k] = text_frame_header(body(f).len(), &mut headers[k]);
            total += header_lens[k] + body(f).len();
        }
        // A header and a body per frame.
        let mut slices = [[IoSlice::new(&[]); 2]; N];
        for (k, f) in chunk.iter().enumerate() {
            slices[k] = [IoSlice::new(&headers[k][..header_lens[k]]), IoSlice::new(body(f))];
        }
        let slices = &slices.as_flattened()[..2 * chunk.len()];
        // sendmsg(2), not writev(2): a socket's write skips the file layer's checks.
        let result = socket2::SockRef::from(&d.tcp).send_vectored(slices);
        let Some(written) = sent(d, result) else { return true };
        if written == total {
            continue;
        }
        // The socket is full: keep the rest of this chunk and every later frame.
        let mut skip = written;
        for slice in slices {
            if skip >= slice.len() {
                skip -= slice.len();
            } else {
                d.unsent.extend_from_slice(&slice[skip..]);
                skip = 0;
            }
        }
        for f in frames.iter().skip((at + 1) * N) {
            put_frame(&mut d.unsent, body(f));
        }
        return true;
    }
    false
}

/// Writes the queued messages of direct-write connections ([`Outbox::attach`]) in
/// batches, on a task of its own (module docs, "Direct writes").
#[derive(Debug)]
pub struct Flusher {
    /// Outboxes with messages queued since the flusher's last turn, each once.
    dirty: Mutex<Dirty>,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// `limits.min_write_interval` and `limits.busy_write_interval` (module docs,
    /// "Coalesced writes").
    pacing: Pacing,
    /// A connection holds [`HURRY_AT`] frames: the next turn starts now.
    hurry: Notify,
}

#[derive(Debug, Default)]
struct Dirty {
    outboxes: Vec<Arc<Outbox>>,
    /// When the first of `outboxes` was marked, if the flusher tracks its load.
    since: Option<TokioInstant>,
}

impl Flusher {
    /// A flusher that counts its writes in `metrics` and spaces its turns by `pacing`.
    #[must_use]
    pub fn new(metrics: Arc<Metrics>, pacing: Pacing) -> Flusher {
        Flusher { dirty: Mutex::default(), wake: Notify::new(), metrics, pacing, hurry: Notify::new() }
    }

    /// A marked connection filled up while the flusher waits for its interval: no
    /// longer. (Taken by the next wait if none is on.)
    fn hurry(&self) {
        if !self.pacing.is_off() {
            self.hurry.notify_one();
        }
    }

    fn mark(&self, outbox: Arc<Outbox>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        dirty.outboxes.push(outbox);
        if dirty.outboxes.len() == 1 {
            if !self.pacing.busy.is_zero() {
                dirty.since = Some(TokioInstant::now());
            }
            drop(dirty);
            self.wake.notify_one();
        }
    }

    /// Writes what is marked, a turn at a time, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut turn = Vec::new();
        let mut batch = Vec::with_capacity(TOUCH_AHEAD);
        let mut scratch = WriteScratch::default();
        // The start and the end of the last turn, and how busy the flusher is.
        let mut last: Option<(TokioInstant, TokioInstant)> = None;
        let mut load = Load::default();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
            }
            let interval = self.pacing.interval(&load);
            if let Some(at) = last.map(|(start, _)| start + interval).filter(|at| *at > TokioInstant::now()) {
                // What is marked meanwhile joins this turn, and what is pushed to a
                // marked outbox joins its write.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(at) => {}
                    () = self.hurry.notified() => {}
                }
                if interval > self.pacing.min {
                    self.metrics.flusher_busy_waits.fetch_add(1, Ordering::Relaxed);
                }
            }
            let start = TokioInstant::now();
            let since = {
                let mut dirty = self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                std::mem::swap(&mut dirty.outboxes, &mut turn);
                dirty.since.take()
            };
            let mut outboxes = turn.drain(..);
            let mut written = 0;
            loop {
                batch.extend(outboxes.by_ref().take(TOUCH_AHEAD));
                if batch.is_empty() {
                    break;
                }
                for_each_held(batch.iter().map(|o| (o, ())), |held, ()| held.flush(&mut scratch));
                // Dropped while their lines are still in cache.
                batch.clear();
                written += TOUCH_AHEAD;
                if written >= YIELD_EVERY {
                    written = 0;
                    // A large fan-out's turn lets other tasks (readers, replies) in.
                    tokio::task::yield_now().await;
                }
            }
            drop(outboxes);
            let end = TokioInstant::now();
            if let (Some(since), Some((_, last_end))) = (since, last) {
                // Marked during the last turn's yields, or before it ended: no wait.
                load.record(end - start, since.saturating_duration_since(last_end));
            }
            last = Some((start, end));
        }
    }

    /// One turn, at once (tests).
    #[cfg(test)]
    fn turn(&self) {
        let turn = std::mem::take(&mut self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner).outboxes);
        let mut scratch = WriteScratch::default();
        for_each_held(turn.iter().map(|o| (o, ())), |held, ()| held.flush(&mut scratch));
    }
}

/// Frames queued for one connection at which a flusher waiting for its write interval
/// starts its turn at once (module docs, "Coalesced writes"). Batching has paid off by
/// then (a loopback `send`'s cost per frame stops falling at 8 to 16 frames of 100 B,
/// docs/benchmarks.md), and a longer wait only grows the queues: near saturation the
/// fan-out's pushes into long, cold queues cost more than the writes save (finding 13).
const HURRY_AT: usize = 32;

/// Connections the flusher writes before it lets other tasks run.
const YIELD_EVERY: usize = 1024;

/// Outboxes [`for_each_held`] takes at a time.
pub const TOUCH_AHEAD: usize = 16;

/// Runs `work` on each of `items` with its outbox held, [`TOUCH_AHEAD`] at a time (module
/// docs, "Cold connections"): the fan-out's pushes and the flusher's writes. For each
/// batch, the outboxes' first lines (the reference count, next to the lock; see
/// [`Outbox`]) are loaded with plain loads, then the free locks taken and what a push or
/// a write reads loaded, then `work` runs. The loads are independent,
/// so their cache misses overlap, where locking cold outboxes one by one waits for each
/// miss in full. An outbox locked elsewhere is worked on after the batch's locks are
/// released, so this never waits for a lock while it holds another.
pub fn for_each_held<'a, T>(items: impl IntoIterator<Item = (&'a Arc<Outbox>, T)>, mut work: impl FnMut(Held<'a>, T)) {
    let mut items = items.into_iter();
    loop {
        let batch: [Option<(&'a Arc<Outbox>, T)>; TOUCH_AHEAD] = std::array::from_fn(|_| items.next());
        if batch[0].is_none() {
            return;
        }
        let outbox = |i: usize| -> Option<&'a Arc<Outbox>> { batch[i].as_ref().map(|item| item.0) };
        for i in 0..TOUCH_AHEAD {
            std::hint::black_box(outbox(i).map(Arc::strong_count));
        }
        let held: [Option<Held<'a>>; TOUCH_AHEAD] = std::array::from_fn(|i| outbox(i).and_then(Outbox::try_hold));
        std::hint::black_box(held.iter().flatten().map(|h| h.state.touch()).sum::<usize>());
        let mut busy = Vec::new();
        for (item, held) in batch.into_iter().zip(held) {
            let Some((outbox, t)) = item else { continue };
            match held {
                Some(held) => work(held, t),
                None => busy.push((outbox, t)),
            }
        }
        for (outbox, t) in busy {
            work(outbox.hold(), t);
        }
    }
}

/// An [`Outbox`] locked for a push or the flusher's write ([`Outbox::hold`],
/// [`for_each_held`]).
#[derive(Debug)]
pub struct Held<'a> {
    outbox: &'a Arc<Outbox>,
    state: MutexGuard<'a, State>,
}

impl Held<'_> {
    /// The [`Flusher`]'s turn: writes everything queued to the socket if the session
    /// holds nothing, else wakes the session to write it. `scratch` is the flusher's.
    fn flush(mut self, scratch: &mut WriteScratch) {
        let s = &mut *self.state;
        s.dirty = false;
        if s.queue.is_empty() {
            return;
        }
        let wake = s.close.is_some() || s.writing || s.direct_held() || s.write_queued(scratch);
        drop(self.state);
        if wake {
            self.outbox.notify.notify_one();
        }
    }

    /// Queues a message (built once and shared by every subscriber's queue) under its
    /// channel's namespace policy. `delta`: the subscriber takes deltas, so the message's
    /// delta form is written instead when the client holds its base
    /// (`ringcast_core::send_queue`, "Deltas").
    pub fn push_message(mut self, msg: &Arc<QueuedMessage<Utf8Bytes>>, delta: bool, policy: MessagePolicy) -> Pushed {
        let s = &mut *self.state;
        if s.close.is_some() || s.queue.is_closed() {
            return Pushed::Closed;
        }
        let pushed = s.queue.push_message(msg, delta, policy);
        if matches!(pushed, Pushed::Queued { .. } | Pushed::Dropped { .. }) && !s.writing && !s.direct_held() {
            // Direct writes: the flusher writes it, with whatever else comes before its turn.
            if let Some(d) = &s.direct {
                if !s.dirty {
                    d.flusher.mark(self.outbox.clone());
                    s.dirty = true;
                } else if s.queue.len() == HURRY_AT {
                    d.flusher.hurry();
                }
                return pushed;
            }
        }
        self.outbox.after_push(self.state, pushed)
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
///
/// `repr(C)`, the state first: its lock then shares a cache line with the reference
/// count that the flusher's list takes and drops, and the notifiers, which a direct write
/// does not touch, come last. At 10,000 subscribers every outbox a delivery touches is
/// cold, once for the fan-out's push and again for the flusher's write, so each line
/// spared counts (docs/benchmarks.md, "Status check, 2026-11-30 evening").
#[derive(Debug)]
#[repr(C)]
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
                dirty: false,
            }),
            notify: Notify::new(),
            overflow: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (every update
        // is a single queue operation), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the session's socket, `tcp`, and lets `flusher` write queued messages
    /// straight to it while the session holds nothing. The session then reads and writes
    /// through the outbox ([`crate::socket::Socket`]).
    pub fn attach(&self, tcp: TcpStream, flusher: Arc<Flusher>) {
        self.lock().direct = Some(Direct { tcp, flusher, unsent: Vec::new(), unsent_from: 0, failed: None });
    }

    /// The session is over: no more direct writes, and the socket is closed. Pushes are
    /// still taken (and never written) until the session's unsubscribes reach the hub,
    /// which then records the leaves as usual.
    pub fn detach(&self) {
        let direct = self.lock().direct.take();
        // Closed (and deregistered) outside the lock.
        drop(direct);
    }

    /// The session's read of the attached socket; `NotConnected` once detached.
    pub(crate) fn poll_read(&self, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        let s = self.lock();
        let Some(d) = s.direct.as_ref() else { return Poll::Ready(Err(detached())) };
        loop {
            ready!(d.tcp.poll_read_ready(cx))?;
            match d.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The session's shutdown of the attached socket's sending side, after what a
    /// direct write left over.
    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.lock();
        ready!(Self::poll_unsent(&mut s, cx))?;
        match s.direct.as_ref() {
            Some(d) => Poll::Ready(socket2::SockRef::from(&d.tcp).shutdown(std::net::Shutdown::Write)),
            None => Poll::Ready(Err(detached())),
        }
    }

    /// The lock if it is free (a poisoned one is usable, see [`Outbox::lock`]).
    fn try_lock(&self) -> Option<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(s) => Some(s),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The session's write of `buf` (through tungstenite) to the attached socket: what a
    /// direct write left over goes first, and no direct write follows until
    /// [`Outbox::written`].
    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut s = self.lock();
        s.writing = true;
        ready!(Self::poll_unsent(&mut s, cx))?;
        let Some(d) = s.direct.as_ref() else { return Poll::Ready(Err(detached())) };
        loop {
            match d.tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(d.tcp.poll_write_ready(cx))?,
                r => return Poll::Ready(r),
            }
        }
    }

    /// The session's flush: writes what a direct write left over.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Self::poll_unsent(&mut self.lock(), cx)
    }

    /// A direct-write session's write, when the flusher could not write (the socket was
    /// full, or the session held bytes): what a direct write left over, then everything
    /// queued, pre-framed as the flusher writes it, waiting while the socket is full.
    /// Returns the close requested, if any. tungstenite's own frames (a pong, a ping) go
    /// before: the session flushes them first. Each write's frame list and send buffer
    /// are its own, freed before the next wait, so a session stuck on a full socket
    /// holds neither (only the flusher keeps its own).
    pub(crate) fn poll_write_queued(&self, cx: &mut Context<'_>) -> Poll<io::Result<Option<CloseCode>>> {
        let mut s = self.lock();
        loop {
            ready!(Self::poll_unsent(&mut s, cx))?;
            if s.direct.is_none() || s.queue.is_empty() {
                return Poll::Ready(Ok(s.close));
            }
            s.write_queued(&mut WriteScratch::default());
        }
    }

    /// Writes what a direct write left over to the attached socket (the session's own),
    /// waiting while it is full; nothing to do without one. A failed direct write is
    /// this write's error.
    fn poll_unsent(s: &mut State, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(d) = s.direct.as_mut() else { return Poll::Ready(Ok(())) };
        if let Some(kind) = d.failed {
            return Poll::Ready(Err(io::Error::new(kind, "a direct write to the connection failed")));
        }
        while let Some(rest) = d.unsent.get(d.unsent_from..).filter(|rest| !rest.is_empty()) {
            match d.tcp.try_write(rest) {
                Ok(n) => d.unsent_from += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(d.tcp.poll_write_ready(cx))?,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        d.unsent_from = 0;
        if d.unsent.capacity() > 0 {
            d.unsent = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// The session flushed everything it took and wrote: direct writes may resume.
    pub fn written(&self) {
        let mut s = self.lock();
        if !s.direct_held() {
            s.writing = false;
        }
    }

    /// The connection's bounds (a namespace's bounds are capped by them).
    pub fn bounds(&self) -> Bounds {
        self.lock().queue.bounds()
    }

    fn after_push(&self, mut s: MutexGuard<'_, State>, pushed: Pushed) -> Pushed {
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

    /// The outbox, locked for a push.
    pub fn hold(self: &Arc<Self>) -> Held<'_> {
        Held { outbox: self, state: self.lock() }
    }

    /// The outbox locked if its lock is free: for [`for_each_held`], which must not wait
    /// for one lock while it holds others.
    fn try_hold(self: &Arc<Self>) -> Option<Held<'_>> {
        self.try_lock().map(|state| Held { outbox: self, state })
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
    /// connection's message bound is full. The frame is shared by every subscriber's
    /// queue, like a message's.
    pub fn push_ephemeral(&self, frame: &Arc<Utf8Bytes>) -> Pushed {
        let mut s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        let pushed = s.queue.push_ephemeral(frame, frame.len());
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
        let frames: Vec<Utf8Bytes> =
            drained.into_iter().map(|d| d.into_owned().unwrap_or_else(|g| gap_frame(&g))).collect();
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
        } else if s.queue.is_empty() && !s.direct_held() {
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
    use std::time::Duration;

    fn f(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
    }

    fn ch() -> ChannelName {
        ChannelName::new("chat:a").unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(o: u64) -> StreamPosition {
        StreamPosition { epoch: Epoch::new(3).unwrap_or_else(|| unreachable!()), offset: Offset(o) }
    }

    /// Queues a message of `ch()` at `position`, as the hub's fan-out does.
    fn push(o: &Arc<Outbox>, frame: Utf8Bytes, position: StreamPosition, policy: MessagePolicy) -> Pushed {
        let len = frame.len();
        o.hold().push_message(&Arc::new(QueuedMessage::new(frame, len, ch(), position)), false, policy)
    }

    fn policy(p: BackpressurePolicy) -> MessagePolicy {
        MessagePolicy { policy: p, bounds: Bounds { messages: 2, bytes: 1000 } }
    }

    #[test]
    fn overflow_closes_and_frees() {
        let o = Arc::new(Outbox::new(2, 1000));
        let p = policy(BackpressurePolicy::Disconnect);
        assert_eq!(push(&o, f("a"), at(1), p), Pushed::Queued { dropped: 0 });
        assert_eq!(push(&o, f("b"), at(2), p), Pushed::Queued { dropped: 0 });
        assert_eq!(push(&o, f("c"), at(3), p), Pushed::Overflow);
        assert_eq!(o.push(f("d")), Pushed::Closed);
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Some(CloseCode::SlowConsumer));
        assert!(out.is_empty(), "a slow consumer's backlog is freed, not written");
    }

    #[test]
    fn drops_become_an_encoded_gap_push() {
        let o = Arc::new(Outbox::new(100, 1000));
        let p = policy(BackpressurePolicy::DropOldest);
        for i in 1..=4 {
            push(&o, f(&format!("m{i}")), at(i), p);
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
        let o2 = Arc::new(Outbox::new(1, 1000));
        o2.push(f("a"));
        o2.push(f("b"));
        tokio::time::timeout(std::time::Duration::from_secs(1), o2.overflowed())
            .await
            .unwrap_or_else(|_| panic!("overflow not seen"));
        waiter.abort();
    }

    #[test]
    fn unbounded_replay_and_graceful_close_keep_frames() {
        let o = Arc::new(Outbox::new(1, 1));
        o.push_unbounded([f("reply"), f("m1"), f("m2")]);
        o.close(CloseCode::GoingAway);
        o.close(CloseCode::SlowConsumer);
        let mut out = Vec::new();
        assert_eq!(o.drain(&mut out), Some(CloseCode::GoingAway));
        assert_eq!(out.len(), 3);
    }

    /// A connected loopback pair: the server's socket and the client's.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let client = client.unwrap_or_else(|e| panic!("connect: {e}"));
        (server.unwrap_or_else(|e| panic!("accept: {e}")).0, client)
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

    /// The connection was closed with nothing more sent: the next read is the end.
    async fn closed_with_nothing_more(c: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt as _;
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut [0u8; 64])).await;
        matches!(read, Ok(Ok(0)))
    }

    #[test]
    fn text_frame_headers_use_the_shortest_length_form() {
        let mut h = [0u8; 10];
        assert_eq!((text_frame_header(125, &mut h), &h[..2]), (2, &[0x81, 125][..]));
        assert_eq!((text_frame_header(126, &mut h), &h[..4]), (4, &[0x81, 126, 0, 126][..]));
        assert_eq!((text_frame_header(65_535, &mut h), &h[..4]), (4, &[0x81, 126, 255, 255][..]));
        assert_eq!((text_frame_header(65_536, &mut h), &h[..10]), (10, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0][..]));
    }

    fn attached(tcp: TcpStream) -> (Arc<Outbox>, Arc<Flusher>, Arc<Metrics>) {
        attached_with(tcp, Bounds { messages: 10, bytes: 10_000 })
    }

    fn attached_with(tcp: TcpStream, bounds: Bounds) -> (Arc<Outbox>, Arc<Flusher>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let flusher = Arc::new(Flusher::new(metrics.clone(), Pacing::default()));
        let o = Arc::new(Outbox::new(bounds.messages, bounds.bytes));
        o.attach(tcp, flusher.clone());
        (o, flusher, metrics)
    }

    /// Bounds far above what the tests that fill a socket queue.
    const ROOMY: Bounds = Bounds { messages: 100, bytes: 100_000_000 };
    const ROOMY_POLICY: MessagePolicy = MessagePolicy { policy: BackpressurePolicy::Disconnect, bounds: ROOMY };

    /// Queues 60 messages of 3,000 bytes on `o` and returns them: each is copied
    /// ([`COPY_UP_TO`]), and together they are more than two send blocks
    /// ([`SEND_BLOCK`]).
    fn queue_copied_texts(o: &Arc<Outbox>) -> Vec<String> {
        let texts: Vec<String> = (0..60).map(|i| format!("{i:04}").repeat(750)).collect();
        assert!(texts.iter().all(|t| t.len() <= COPY_UP_TO));
        assert!(texts.iter().map(|t| t.len() + 4).sum::<usize>() > 2 * SEND_BLOCK);
        for (i, t) in texts.iter().enumerate() {
            push(o, f(t), at(i as u64 + 1), ROOMY_POLICY);
        }
        texts
    }

    #[tokio::test]
    async fn small_frames_of_one_turn_go_in_one_send_per_block() {
        let (tcp, client) = pair().await;
        let (o, flusher, metrics) = attached_with(tcp, ROOMY);
        let texts = queue_copied_texts(&o);
        flusher.turn();
        // Three blocks at most (fewer sends when the socket filled, the rest then the
        // session's), not one per frame.
        let writes = metrics.client_direct_writes.load(Ordering::Relaxed);
        assert!((1..=3).contains(&writes), "{writes} sends for {} frames", texts.len());
        the_session_flushes_the_rest(&o, client, &texts).await;
    }

    #[tokio::test]
    async fn small_frames_of_one_turn_into_a_full_socket_arrive_whole_and_in_order() {
        let (tcp, client) = pair().await;
        socket2::SockRef::from(&tcp).set_send_buffer_size(4096).unwrap_or_else(|e| panic!("{e}"));
        let (o, flusher, _) = attached_with(tcp, ROOMY);
        let texts = queue_copied_texts(&o);
        flusher.turn();
        assert_eq!(o.pending(), Pending::Pushes, "the session must write the rest");
        the_session_flushes_the_rest(&o, client, &texts).await;
    }

    /// A connection attached to a running flusher paced by `pacing`, with roomy bounds,
    /// and its client's end.
    struct Paced {
        o: Arc<Outbox>,
        metrics: Arc<Metrics>,
        client: TcpStream,
        shutdown: tokio_util::sync::CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Paced {
        async fn new(pacing: Pacing) -> Paced {
            let (tcp, client) = pair().await;
            let metrics = Arc::new(Metrics::default());
            let flusher = Arc::new(Flusher::new(metrics.clone(), pacing));
            let o = Arc::new(Outbox::new(ROOMY.messages, ROOMY.bytes));
            o.attach(tcp, flusher.clone());
            let shutdown = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(flusher.run(shutdown.clone()));
            Paced { o, metrics, client, shutdown, task }
        }

        fn push(&self, text: &str, offset: u64) {
            push(&self.o, f(text), at(offset), ROOMY_POLICY);
        }

        fn writes(&self) -> u64 {
            self.metrics.client_direct_writes.load(Ordering::Relaxed)
        }

        /// Lets the flusher run without moving the (paused) clock until it wrote `n`
        /// times.
        async fn until_written(&self, n: u64) {
            for _ in 0..1000 {
                if self.writes() >= n {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("{} writes, {n} expected", self.writes());
        }

        /// Pushes `text` (offset `offset`) and checks that it is written at once, as the
        /// flusher's `n`th write, without the clock moving.
        async fn written_at_once(&mut self, text: &str, offset: u64, n: u64) {
            let start = TokioInstant::now();
            self.push(text, offset);
            self.until_written(n).await;
            assert_eq!(start.elapsed(), Duration::ZERO, "{text} waited");
            assert_eq!(read_n(&mut self.client, frame(text).len(), 1).await, frame(text));
        }

        /// Pushes `texts` (offsets from `offset`) right after the flusher's last turn, the
        /// `written`th write, and checks that they wait until `interval` after it and then
        /// go in one write.
        async fn together_after(&mut self, interval: Duration, texts: [&str; 2], offset: u64, written: u64) {
            self.push(texts[0], offset);
            self.push(texts[1], offset + 1);
            tokio::time::sleep(interval / 2).await;
            assert_eq!(self.writes(), written, "written before the interval ended");
            assert!(nothing_to_read(&self.client));
            tokio::time::sleep(interval).await;
            assert_eq!(self.writes(), written + 1, "{texts:?} not in one write at the interval's end");
            let want = [frame(texts[0]), frame(texts[1])].concat();
            assert_eq!(read_n(&mut self.client, want.len(), 1).await, want);
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// `limits.min_write_interval` on the direct path (module docs, "Coalesced writes"):
    /// a flusher without a turn for the interval writes at once; what is pushed within
    /// the interval after a turn waits for its end and goes in one write. On a paused
    /// clock, so the times are the runtime's, not the host's.
    #[tokio::test(start_paused = true)]
    async fn a_paced_flusher_writes_at_once_when_idle_and_once_per_interval_when_busy() {
        const INTERVAL: Duration = Duration::from_millis(20);
        let mut c = Paced::new(Pacing { min: INTERVAL, busy: Duration::ZERO }).await;
        // Idle: at once.
        c.written_at_once("m1", 1, 1).await;

        // Within the interval: both wait for its end, then go in one write.
        c.together_after(INTERVAL, ["m2", "m3"], 2, 1).await;

        // Idle for longer than the interval: at once again.
        tokio::time::sleep(2 * INTERVAL).await;
        c.written_at_once("m4", 4, 3).await;
        c.stop().await;
    }

    /// `limits.busy_write_interval` (module docs, "Coalesced writes"): a flusher writes at
    /// once until it is busy, then spaces its turns by the interval, and writes at once
    /// again when it had to wait for work. On a paused clock the turns take no time, so
    /// "busy" is a flusher that never waited: marks made as soon as a turn ended.
    #[tokio::test(start_paused = true)]
    async fn a_busy_flusher_spaces_its_turns_and_an_idle_one_writes_at_once() {
        const INTERVAL: Duration = Duration::from_millis(20);
        let mut c = Paced::new(Pacing { min: Duration::ZERO, busy: INTERVAL }).await;
        // No load yet: at once, twice, although the second comes right after the first.
        c.written_at_once("m1", 1, 1).await;
        c.written_at_once("m2", 2, 2).await;
        assert_eq!(c.metrics.flusher_busy_waits.load(Ordering::Relaxed), 0);

        // It never waited for work: busy. The next two wait for the interval, together.
        c.together_after(INTERVAL, ["m3", "m4"], 3, 2).await;
        assert_eq!(c.metrics.flusher_busy_waits.load(Ordering::Relaxed), 1);

        // Idle for a second: the first write is past the interval, at once; after it the
        // flusher has waited for work most of the time and writes at once again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.written_at_once("m5", 5, 4).await;
        c.written_at_once("m6", 6, 5).await;
        assert_eq!(c.metrics.flusher_busy_waits.load(Ordering::Relaxed), 1);
        c.stop().await;
    }

    /// A paced flusher does not wait out its interval for a connection that already
    /// holds [`HURRY_AT`] frames: it writes them at once, in one write.
    #[tokio::test(start_paused = true)]
    async fn a_paced_flusher_does_not_wait_for_a_connection_that_filled_up() {
        let mut c = Paced::new(Pacing { min: Duration::from_secs(1), busy: Duration::ZERO }).await;
        c.written_at_once("first", 1, 1).await;
        let start = TokioInstant::now();
        // One frame short, the flusher waits for the interval; the last one ends the wait.
        let texts: Vec<String> = (0..HURRY_AT).map(|i| format!("m{i:03}")).collect();
        for (i, t) in texts.iter().enumerate() {
            if i + 1 == HURRY_AT {
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                }
                assert_eq!(c.writes(), 1, "written before the connection filled up");
            }
            c.push(t, i as u64 + 2);
        }
        c.until_written(2).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "the full connection waited for the interval");
        let want: Vec<u8> = texts.iter().flat_map(|t| frame(t)).collect();
        assert_eq!(read_n(&mut c.client, want.len(), 1).await, want);
        c.stop().await;
    }

    #[tokio::test]
    async fn the_flusher_writes_what_an_idle_connection_was_sent_in_one_write() {
        let (tcp, mut client) = pair().await;
        let (o, flusher, metrics) = attached(tcp);
        let p = policy(BackpressurePolicy::Disconnect);
        assert_eq!(push(&o, f("m1"), at(1), p), Pushed::Queued { dropped: 0 });
        assert_eq!(push(&o, f("m2"), at(2), p), Pushed::Queued { dropped: 0 });
        flusher.turn();
        assert_eq!(o.pending(), Pending::Nothing, "nothing left for the session");
        assert_eq!(read_n(&mut client, 8, 1).await, [frame("m1"), frame("m2")].concat());
        assert_eq!(metrics.client_writes.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.client_direct_writes.load(Ordering::Relaxed), 1);
        // Detached (the session ended): the socket is closed, and nothing more is written.
        o.detach();
        assert_eq!(push(&o, f("m3"), at(3), p), Pushed::Queued { dropped: 0 });
        flusher.turn();
        assert_eq!(o.pending(), Pending::Pushes);
        assert!(closed_with_nothing_more(&mut client).await);
        // The session's own I/O fails from then on.
        let e = std::future::poll_fn(|cx| o.poll_write(cx, b"late")).await.err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::NotConnected));
    }

    #[tokio::test]
    async fn an_outbox_locked_elsewhere_is_written_after_its_batch() {
        let (tcp1, mut client1) = pair().await;
        let (tcp2, mut client2) = pair().await;
        let (o1, flusher, _) = attached(tcp1);
        let o2 = Arc::new(Outbox::new(10, 10_000));
        o2.attach(tcp2, flusher.clone());
        let p = policy(BackpressurePolicy::Disconnect);
        push(&o1, f("m1"), at(1), p);
        push(&o2, f("m2"), at(1), p);
        // Another thread holds o1's lock while the flusher's turn starts: the batch
        // cannot take it, writes o2, then waits for o1 with no other lock held.
        let (locked, is_locked) = std::sync::mpsc::channel();
        let holder = std::thread::spawn({
            let o1 = o1.clone();
            move || {
                let s = o1.lock();
                locked.send(()).unwrap_or_else(|e| panic!("{e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
                drop(s);
            }
        });
        is_locked.recv().unwrap_or_else(|e| panic!("{e}"));
        flusher.turn();
        holder.join().unwrap_or_else(|_| panic!("the holder panicked"));
        assert_eq!(read_n(&mut client2, 4, 1).await, frame("m2"));
        assert_eq!(read_n(&mut client1, 4, 1).await, frame("m1"));
        assert_eq!((o1.pending(), o2.pending()), (Pending::Nothing, Pending::Nothing));
    }

    #[tokio::test]
    async fn a_failed_direct_write_ends_the_session_at_its_next_write() {
        let (tcp, _client) = pair().await;
        // Our side can no longer send: the flusher's `send` fails (EPIPE).
        socket2::SockRef::from(&tcp).shutdown(std::net::Shutdown::Write).unwrap_or_else(|e| panic!("{e}"));
        let (o, flusher, metrics) = attached(tcp);
        let p = policy(BackpressurePolicy::Disconnect);
        push(&o, f("m1"), at(1), p);
        flusher.turn();
        assert_eq!(metrics.client_direct_writes.load(Ordering::Relaxed), 0);
        // The session is woken, and is left something to do even with the queue empty.
        tokio::time::timeout(std::time::Duration::from_secs(5), o.ready())
            .await
            .unwrap_or_else(|_| panic!("the session was not woken"));
        assert_eq!(o.pending(), Pending::Pushes);
        // Later messages wait for the session instead of another direct write.
        push(&o, f("m2"), at(2), p);
        flusher.turn();
        assert_eq!(metrics.client_direct_writes.load(Ordering::Relaxed), 0);
        let e = std::future::poll_fn(|cx| o.poll_write_queued(cx))
            .await
            .err()
            .unwrap_or_else(|| panic!("the session's write succeeded on a broken connection"));
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        // The failure stays: every later write of the session fails too.
        let e = std::future::poll_fn(|cx| o.poll_flush(cx)).await.err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
    }

    #[tokio::test]
    async fn frames_the_session_holds_go_before_any_direct_write() {
        let (tcp, mut client) = pair().await;
        let (o, flusher, _) = attached(tcp);
        let p = policy(BackpressurePolicy::Disconnect);
        o.push(f("reply"));
        push(&o, f("m1"), at(1), p);
        let mut batch = Vec::new();
        o.drain(&mut batch);
        assert_eq!(batch, [f("reply"), f("m1")]);
        // The session holds the batch: m2 is queued for the session, not the flusher.
        push(&o, f("m2"), at(2), p);
        flusher.turn();
        assert_eq!(o.pending(), Pending::Pushes);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(nothing_to_read(&client), "m2 was written before the session's batch");
        o.written();
        // m2 waits, so m3 follows it, and the flusher writes both.
        push(&o, f("m3"), at(3), p);
        flusher.turn();
        assert_eq!(o.pending(), Pending::Nothing);
        assert_eq!(read_n(&mut client, 8, 1).await, [frame("m2"), frame("m3")].concat());
    }

    #[tokio::test]
    async fn a_direct_write_tells_of_dropped_messages_before_the_next() {
        let (tcp, mut client) = pair().await;
        let (o, flusher, _) = attached(tcp);
        let p = policy(BackpressurePolicy::DropOldest);
        for i in 1..=4 {
            push(&o, f(&format!("m{i}")), at(i), p);
        }
        flusher.turn();
        let gap = r#"{"type":"gap","channel":"chat:a","epoch":"3","from":1,"to":2,"reason":"slow_consumer"}"#;
        let want = [frame(gap), frame("m3"), frame("m4")].concat();
        assert_eq!(String::from_utf8_lossy(&read_n(&mut client, want.len(), 1).await), String::from_utf8_lossy(&want));
    }

    /// The session flushes what direct writes left over through its socket, and the
    /// client receives `texts` as whole frames, in order.
    async fn the_session_flushes_the_rest(o: &Arc<Outbox>, mut client: TcpStream, texts: &[String]) {
        use tokio::io::AsyncWriteExt as _;
        let want: Vec<u8> = texts.iter().flat_map(|t| frame(t)).collect();
        let len = want.len();
        let reader = tokio::spawn(async move { read_n(&mut client, len, 10).await });
        let mut session = crate::socket::Socket::new(&[], o.clone());
        session.flush().await.unwrap_or_else(|e| panic!("{e}"));
        o.written();
        let got = reader.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(got == want, "the frames did not arrive whole and in order");
        assert_eq!(o.pending(), Pending::Nothing);
    }

    #[tokio::test]
    async fn many_frames_the_socket_cannot_take_at_once_arrive_whole_and_in_order() {
        let (tcp, client) = pair().await;
        socket2::SockRef::from(&tcp).set_send_buffer_size(4096).unwrap_or_else(|e| panic!("{e}"));
        let (o, flusher, _) = attached_with(tcp, ROOMY);
        // More frames than one write carries, more bytes than the socket takes.
        let texts: Vec<String> = (0..70).map(|i| format!("{i:03}").repeat(30_000 + i)).collect();
        for (i, t) in texts.iter().enumerate() {
            push(&o, f(t), at(i as u64 + 1), ROOMY_POLICY);
        }
        flusher.turn();
        assert_eq!(o.pending(), Pending::Pushes, "the session must write the rest");
        the_session_flushes_the_rest(&o, client, &texts).await;
    }

    #[tokio::test]
    async fn small_frames_written_one_by_one_into_a_full_socket_arrive_whole_and_in_order() {
        let (tcp, client) = pair().await;
        socket2::SockRef::from(&tcp).set_send_buffer_size(4096).unwrap_or_else(|e| panic!("{e}"));
        let (o, flusher, _) = attached(tcp);
        let p =
            MessagePolicy { policy: BackpressurePolicy::Disconnect, bounds: Bounds { messages: 10, bytes: 10_000 } };
        // One small frame per turn (each a single `send`) until the socket leaves part
        // of one over; the client reads nothing meanwhile.
        let mut texts = Vec::new();
        while o.pending() == Pending::Nothing {
            assert!(texts.len() < 100_000, "the socket never filled");
            let t = format!("{:05}", texts.len()).repeat(100);
            push(&o, f(&t), at(texts.len() as u64 + 1), p);
            flusher.turn();
            texts.push(t);
        }
        the_session_flushes_the_rest(&o, client, &texts).await;
    }

    #[tokio::test]
    async fn a_direct_session_writes_the_rest_then_the_queue_the_flushers_way() {
        let (tcp, mut client) = pair().await;
        socket2::SockRef::from(&tcp).set_send_buffer_size(4096).unwrap_or_else(|e| panic!("{e}"));
        let (o, flusher, metrics) = attached_with(tcp, ROOMY);
        let p = ROOMY_POLICY;
        let big = "x".repeat(4 << 20);
        push(&o, f(&big), at(1), p);
        flusher.turn();
        assert_eq!(o.pending(), Pending::Pushes, "the socket took part of the big frame");
        // Behind the rest, so queued for the session: more than one write carries.
        let texts: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        for (i, t) in texts.iter().enumerate() {
            push(&o, f(t), at(i as u64 + 2), p);
        }
        assert_eq!(o.push(f("reply")), Pushed::Queued { dropped: 0 });
        let want: Vec<u8> = std::iter::once(frame(&big))
            .chain(texts.iter().map(|t| frame(t)))
            .chain(std::iter::once(frame("reply")))
            .flatten()
            .collect();
        let len = want.len();
        let reader = tokio::spawn(async move { read_n(&mut client, len, 10).await });
        let writes_before = metrics.client_direct_writes.load(Ordering::Relaxed);
        let close = std::future::poll_fn(|cx| o.poll_write_queued(cx)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(close, None);
        o.written();
        let got = reader.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(got == want, "the frames did not arrive whole and in order");
        assert_eq!(o.pending(), Pending::Nothing);
        // The 41 small frames went in a few writes, not one each.
        let writes = metrics.client_direct_writes.load(Ordering::Relaxed) - writes_before;
        assert!((1..=10).contains(&writes), "{writes} writes");
    }

    #[tokio::test]
    async fn the_rest_of_a_short_direct_write_goes_out_first_through_the_session() {
        use tokio::io::AsyncWriteExt as _;
        let (tcp, mut client) = pair().await;
        socket2::SockRef::from(&tcp).set_send_buffer_size(4096).unwrap_or_else(|e| panic!("{e}"));
        let o = Arc::new(Outbox::new(10, 10_000_000));
        let flusher = Arc::new(Flusher::new(Arc::new(Metrics::default()), Pacing::default()));
        o.attach(tcp, flusher.clone());
        let p = MessagePolicy {
            policy: BackpressurePolicy::Disconnect,
            bounds: Bounds { messages: 10, bytes: 10_000_000 },
        };
        // Far more than the socket takes at once: part is written, the rest kept.
        let big = "x".repeat(4 << 20);
        assert_eq!(push(&o, f(&big), at(1), p), Pushed::Queued { dropped: 0 });
        flusher.turn();
        assert_eq!(o.pending(), Pending::Pushes, "the session must write the rest");
        // Behind the rest, so queued.
        push(&o, f("m2"), at(2), p);
        let reader = tokio::spawn(async move {
            let want = frame(&"x".repeat(4 << 20)).len() + 4;
            read_n(&mut client, want, 10).await
        });
        // The session: drain, write through its socket (what is unsent first), flush.
        let mut session = crate::socket::Socket::new(&[], o.clone());
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
