//! One WebSocket session: the task that owns a client connection.
//!
//! The loop races, in priority order: node shutdown, queued frames to write (replies
//! and pushes from the [`Outbox`]), the next client frame, and one timer for the
//! heartbeat deadline, the ping tick, the `expiring` notice and the auth deadline
//! (connect timeout, then token expiry), handled in that order when several are due.
//! Reads and writes happen in this one task; producers elsewhere push into the outbox,
//! or, with `limits.direct_writes` and nothing queued or in flight for the connection,
//! write a message straight to its socket ([`crate::outbox`], "Direct writes";
//! [`run_tcp`]). With `limits.min_write_interval`, pushes queued less than the interval
//! after the session's last write wait for its end and go out together; replies and
//! closes never wait. With direct writes, the flushers start their turns that far apart
//! instead ([`crate::outbox`], "Coalesced writes"), and what is left for the session
//! (replies, the backlog of a socket that was full) does not wait.
//!
//! Most connections are idle most of the time, so what an idle session holds is kept
//! small (docs/benchmarks.md, "Idle memory"): its future holds the WebSocket once and one
//! timer, a command's or the close's future is boxed while it runs, the write batch is
//! freed once written, and the socket is read through [`LazyRead`].
//!
//! Every client frame is rate-limited, decoded into a command, checked against the
//! namespace and the session's capabilities, and answered with a reply or an `error`
//! with a stable code; only framing violations, failed `connect`, expiry, heartbeat
//! loss, a slow reader or persistent flooding end the session, each with its documented
//! close code. On exit the session removes all its subscriptions.

use crate::hooks::{Caller, Hook, Verdict};
use crate::hub::{Origin, PublishRequest};
use crate::lazy_read::LazyRead;
use crate::metrics::Source;
use crate::node::Node;
use crate::outbox::{Outbox, Pending, Pushed};
use crate::socket::Socket;
use bytes::Bytes;
use futures_util::stream::FusedStream;
use futures_util::{SinkExt, StreamExt};
use ringcast_auth::Identity;
use ringcast_core::{ChannelName, ConnId, NamespaceOptions, Pattern, TokenBucket};
use ringcast_proto::client::DecodeError;
use ringcast_proto::client::{
    decode_command, encode_ack, encode_connected, encode_error, encode_expiring, encode_history, encode_pong,
    encode_presence, encode_presence_stats, encode_psubscribed, encode_punsubscribed, encode_refreshed,
    encode_state_reply, encode_typing_sent, encode_unsubscribed, message_key, Ack, Command, Connected, HistoryReply,
    PresenceMember, PresenceReply, PresenceStatsReply, Since, MAX_PRESENCE_MEMBERS,
};
use ringcast_proto::msgpack::{json_to_msgpack, msgpack_to_json, Encoding};
use ringcast_proto::{CloseCode, ErrorCode};
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, debug_span, Instrument};

/// tungstenite's per-connection read buffer: allocated when the session starts,
/// resident for its life (tungstenite zero-fills it), and the most it reads at once.
/// Room for a typical command; larger frames are read from the socket in chunks by
/// [`LazyRead`], which holds nothing while a connection is idle (tungstenite's default
/// is 128 KiB).
pub const WS_READ_BUFFER_BYTES: usize = 256;
/// Bytes tungstenite buffers before writing; a batch of small frames goes out in writes
/// of about this size.
pub const WS_WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Consecutive rate-limited commands after which the session is closed with 4009.
pub const MAX_RATE_LIMIT_STRIKES: u32 = 50;
/// Channels of a `psubscribe`'s `since` resumed at once.
const PATTERN_RESUME_CONCURRENCY: usize = 32;
/// How long a closing session waits for the client's close frame.
const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(1);
/// Read size while discarding the input of a failed connection.
const DISCARD_CHUNK_BYTES: usize = 4096;
/// The bit of a 64-bit frame length that RFC 6455 §5.2 reserves (it must be 0).
const LENGTH_MSB: u64 = 1 << 63;

/// An error answer to one command.
struct Reject {
    code: ErrorCode,
    message: String,
}

fn reject(code: ErrorCode, message: impl Into<String>) -> Reject {
    Reject { code, message: message.into() }
}

struct Session {
    node: Arc<Node>,
    conn: ConnId,
    outbox: Arc<Outbox>,
    identity: Option<Identity>,
    subscriptions: HashSet<ChannelName>,
    /// Pattern subscriptions (`psubscribe`), in the order they were made.
    patterns: Vec<Pattern>,
    bucket: TokenBucket,
    strikes: u32,
    /// When the auth deadline fires: the connect timeout, then the token's expiry.
    auth_deadline: Option<Instant>,
    /// When to push `expiring`, and the token expiry (UNIX seconds) it announces.
    refresh_notice: Option<(Instant, u64)>,
    /// The frame encoding chosen at the upgrade.
    encoding: Encoding,
    /// A flusher writes the connection's messages to the socket too ([`run_tcp`]).
    direct: bool,
}

/// Runs a session to completion on an upgraded connection, `io`.
///
/// The WebSocket is built here, inside the one future that owns it: an async fn keeps
/// its arguments for its whole life, so a `WebSocketStream` (or its config) passed down
/// through nested futures would be held once per level by every connection.
pub fn run<S>(node: Arc<Node>, io: S, conn: ConnId, encoding: Encoding) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let outbox = new_outbox(&node);
    run_with(node, outbox, io, conn, encoding, false)
}

/// Whether a session of `encoding` lets producers write to its socket: with
/// `limits.direct_writes`, for JSON sessions (with `limits.min_write_interval`, the
/// flushers pace their turns by it: [`crate::outbox`], "Coalesced writes").
#[must_use]
pub fn direct_writes(node: &Node, encoding: Encoding) -> bool {
    node.config.limits.direct_writes && encoding == Encoding::Json
}

/// [`run`] on a client's TCP socket (as hyper upgraded it, with the bytes it read past
/// the request), letting producers write messages straight to the socket while nothing
/// else is queued or in flight ([`direct_writes`] decides whether to call it). The
/// socket costs a connection a little more memory than hyper's upgraded stream, so
/// sessions without direct writes use [`run`].
pub fn run_tcp(
    node: Arc<Node>,
    tcp: TcpStream,
    early: Bytes,
    conn: ConnId,
    encoding: Encoding,
) -> impl Future<Output = ()> {
    let outbox = new_outbox(&node);
    let flusher = &node.flushers[usize::try_from(conn.0).unwrap_or(0) % node.flushers.len()];
    outbox.attach(tcp, flusher.clone());
    let socket = Socket::new(&early, outbox.clone());
    drop(early);
    run_with(node, outbox, socket, conn, encoding, true)
}

fn new_outbox(node: &Node) -> Arc<Outbox> {
    Arc::new(Outbox::new(node.config.limits.send_queue_messages, node.config.limits.send_queue_bytes))
}

fn run_with<S>(
    node: Arc<Node>,
    outbox: Arc<Outbox>,
    io: S,
    conn: ConnId,
    encoding: Encoding,
    direct: bool,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A debug span: every event it labels is debug-level, and an enabled span costs each
    // connection about 340 bytes in the subscriber's registry.
    let span = debug_span!("session", conn = conn.0);
    async move {
        let mut ws = WebSocketStream::from_raw_socket(LazyRead::new(io), Role::Server, Some(ws_config(&node))).await;
        node.metrics.connections.fetch_add(1, Ordering::Relaxed);
        node.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        let limits = &node.config.limits;
        let mut s = Session {
            outbox,
            bucket: TokenBucket::new(limits.commands_per_second, limits.command_burst, node.now()),
            identity: None,
            subscriptions: HashSet::new(),
            patterns: Vec::new(),
            strikes: 0,
            auth_deadline: Some(Instant::now() + limits.connect_timeout),
            refresh_notice: None,
            encoding,
            direct,
            node: node.clone(),
            conn,
        };
        // By reference: an async fn keeps a by-value argument twice (the argument and its
        // local binding), which was 368 bytes of every connection's task.
        let code = s.run(&mut ws).await;
        drop(ws);
        // Producers that still hold the outbox write nothing more to the socket; a
        // direct-write session's socket, held by the outbox, is closed here.
        s.outbox.detach();
        debug!(close = code.map(|c| c.code()), "session ended");
        // Patterns first, so leaving a channel does not fall back to a pattern's copy.
        for pattern in std::mem::take(&mut s.patterns) {
            node.router.punsubscribe(&pattern, conn);
        }
        let now = node.now();
        for channel in s.subscriptions.drain() {
            node.router.unsubscribe(&channel, conn, now);
        }
        node.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
    .instrument(span)
}

/// tungstenite's settings for a session: small buffers (see the constants) and the
/// frame limit of `limits.max_frame_bytes`.
fn ws_config(node: &Node) -> WebSocketConfig {
    let max = node.config.limits.max_frame_bytes;
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// A write's outcome: the close the outbox asked for, if any.
type WriteResult = Result<Option<CloseCode>, WsError>;

/// What woke the session loop.
enum Wake {
    Shutdown,
    Outbox,
    Frame(Option<Result<Message, WsError>>),
    Timer,
}

impl Session {
    /// The session loop. Returns the close code the server sent, if any.
    async fn run<S>(&mut self, ws: &mut WebSocketStream<S>) -> Option<CloseCode>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let node = self.node.clone();
        let (hb, write_timeout) = (&node.config.heartbeat, node.config.limits.write_timeout);
        let silence_limit = hb.ping_interval + hb.pong_timeout;
        let mut last_seen = Instant::now();
        let mut dead_at = TokioInstant::from_std(last_seen + silence_limit);
        let mut ping_at = TokioInstant::now() + hb.ping_interval;
        let far_future = TokioInstant::now() + Duration::from_secs(86_400 * 365);
        let shutdown = self.node.shutdown.clone();
        // `limits.min_write_interval`: the earliest time of the next write, and a write
        // waiting for it (frames queued, the outbox's wake-up taken). With direct
        // writes the flushers pace the pushes; what is left for the session then (a
        // reply, or the backlog of a socket that was full) goes as soon as it can.
        let min_write_interval = if self.direct { Duration::ZERO } else { node.config.limits.min_write_interval };
        let mut next_write_at: Option<TokioInstant> = None;
        let mut write_due: Option<TokioInstant> = None;

        loop {
            // A command's reply, or a close (an overflow, the server's request), goes
            // out without waiting for the pushes' interval: the outbox's wake-up, not
            // awaited while the write waited, is still pending.
            if write_due.is_some() && matches!(self.outbox.pending(), Pending::Reply | Pending::Close) {
                write_due = None;
            }
            let auth_at = self.auth_deadline.map_or(far_future, TokioInstant::from_std);
            let notice_at = self.refresh_notice.map_or(far_future, |(at, _)| TokioInstant::from_std(at));
            // One timer for the five deadlines (a timer is a good share of an idle
            // session's future); when several are due, `Wake::Timer` handles them one at
            // a time, in its order, after a write waiting for its interval.
            let wake_at = dead_at.min(ping_at).min(notice_at).min(auth_at).min(write_due.unwrap_or(far_future));
            let wake = tokio::select! {
                biased;
                () = shutdown.cancelled() => Wake::Shutdown,
                () = self.outbox.ready(), if write_due.is_none() => Wake::Outbox,
                frame = ws.next() => Wake::Frame(frame),
                () = sleep_until(wake_at) => Wake::Timer,
            };
            let wake = match wake {
                Wake::Timer if write_due.is_some_and(|at| at <= TokioInstant::now()) => {
                    write_due = None;
                    Wake::Outbox
                }
                // Pushes within the interval since the last write wait for its end; a
                // reply the client waits for, or a close, goes at once (with what is
                // queued before it). Nothing queued: a wake-up left from the frames the
                // last write took.
                Wake::Outbox if next_write_at.is_some_and(|at| at > TokioInstant::now()) => {
                    match self.outbox.pending() {
                        Pending::Nothing => continue,
                        Pending::Pushes => {
                            write_due = next_write_at;
                            continue;
                        }
                        Pending::Reply | Pending::Close => Wake::Outbox,
                    }
                }
                wake => wake,
            };
            match wake {
                Wake::Shutdown => {
                    // Write what is queued, then tell the client to go elsewhere.
                    let _ = self.write_within(ws, write_timeout).await;
                    return Some(self.close(ws, CloseCode::GoingAway).await);
                }
                Wake::Outbox => {
                    let written = tokio::select! {
                        r = self.write_within(ws, write_timeout) => r.ok(),
                        // The queue overflowed while this write waited on a full socket:
                        // give up now rather than at the write timeout.
                        () = self.outbox.overflowed() => None,
                    };
                    match written {
                        Some(Ok(None)) => {
                            if !min_write_interval.is_zero() {
                                next_write_at = Some(TokioInstant::now() + min_write_interval);
                            }
                        }
                        Some(Ok(Some(code))) => return Some(self.close(ws, code).await),
                        Some(Err(e)) => {
                            debug!(error = %e, "write failed");
                            return None;
                        }
                        None => {
                            // The socket is not draining, so a close frame would not
                            // get through either: drop the connection.
                            debug!("slow consumer: dropping a connection whose socket is full");
                            self.node.metrics.close(CloseCode::SlowConsumer);
                            return Some(CloseCode::SlowConsumer);
                        }
                    }
                }
                Wake::Frame(frame) => {
                    last_seen = Instant::now();
                    match frame {
                        None => return None,
                        Some(Ok(Message::Text(text))) if self.encoding == Encoding::Json => {
                            if let Some(code) = self.on_command(Ok(text.as_str())).await {
                                let _ = self.write_within(ws, write_timeout).await;
                                return Some(self.close(ws, code).await);
                            }
                        }
                        Some(Ok(Message::Binary(bytes))) if self.encoding == Encoding::MsgPack => {
                            let text = msgpack_to_json(&bytes);
                            if let Some(code) = self.on_command(text.as_deref().map_err(Clone::clone)).await {
                                let _ = self.write_within(ws, write_timeout).await;
                                return Some(self.close(ws, code).await);
                            }
                        }
                        // The other encoding's frames: the session speaks one.
                        Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                            return Some(self.close(ws, CloseCode::UnsupportedData).await);
                        }
                        Some(Ok(Message::Close(_))) => {
                            // tungstenite answers the close; drive it out and stop.
                            let _ = tokio::time::timeout(CLOSE_HANDSHAKE_WAIT, ws.flush()).await;
                            return None;
                        }
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
                        Some(Err(e)) => {
                            let code = close_code_for(&e);
                            debug!(error = %e, close = code.map(|c| c.code()), "read failed");
                            return match code {
                                Some(code) => Some(self.close(ws, code).await),
                                None => None,
                            };
                        }
                    }
                }
                Wake::Timer => {
                    let now = TokioInstant::now();
                    if dead_at <= now {
                        let deadline = last_seen + silence_limit;
                        if deadline <= Instant::now() {
                            return Some(self.close(ws, CloseCode::HeartbeatTimeout).await);
                        }
                        dead_at = TokioInstant::from_std(deadline);
                    } else if ping_at <= now {
                        // The next ping a full interval after this one, however late it is.
                        ping_at = now + hb.ping_interval;
                        let sent =
                            tokio::time::timeout(write_timeout, ws.send(Message::Ping(Default::default()))).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            return None;
                        }
                    } else if notice_at <= now {
                        if let Some((_, expires_at)) = self.refresh_notice.take() {
                            let left = Duration::from_secs(expires_at).saturating_sub(unix_now());
                            let in_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                            self.reply(encode_expiring(expires_at, in_ms));
                        }
                    } else if auth_at <= now {
                        let code =
                            if self.identity.is_some() { CloseCode::TokenExpired } else { CloseCode::ConnectTimeout };
                        return Some(self.close(ws, code).await);
                    }
                }
            }
        }
    }

    /// [`Session::write_batch`] within `limit`, boxed: inline, its state (the writes'
    /// futures and a timer, 344 bytes) would be part of every idle session's future,
    /// and a write is rare next to the time a connection spends waiting.
    fn write_within<'a, S>(
        &'a self,
        ws: &'a mut WebSocketStream<S>,
        limit: Duration,
    ) -> Pin<Box<tokio::time::Timeout<impl Future<Output = WriteResult> + 'a>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Box::pin(tokio::time::timeout(limit, self.write_batch(ws)))
    }

    /// Writes everything queued as one batch: a direct-write session the flusher's way
    /// (pre-framed, [`Outbox::poll_write_queued`]), any other through
    /// tungstenite. Returns a close the outbox asked for. The batch is freed once
    /// written: an idle session holds no frame list.
    async fn write_batch<S>(&self, ws: &mut WebSocketStream<S>) -> WriteResult
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.direct {
            // tungstenite's own frames (a pong, a ping) first, then what the socket did not
            // take from the flusher and the queue, written the flusher's way.
            ws.flush().await?;
            let close = std::future::poll_fn(|cx| self.outbox.poll_write_queued(cx)).await?;
            self.outbox.written();
            return Ok(close);
        }
        let mut batch = Vec::new();
        let close = self.outbox.drain(&mut batch);
        if !batch.is_empty() {
            for frame in batch.drain(..) {
                let message = match self.encoding {
                    Encoding::Json => Message::Text(frame),
                    Encoding::MsgPack => match json_to_msgpack(frame.as_str()) {
                        Ok(bytes) => Message::Binary(bytes.into()),
                        Err(e) => {
                            // Invariant: the server's frames are JSON; never reached.
                            tracing::error!(error = %e, "a frame could not be encoded as MessagePack; skipped");
                            continue;
                        }
                    },
                };
                ws.feed(message).await?;
            }
            ws.flush().await?;
            self.node.metrics.client_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(close)
    }

    /// Sends a close frame and waits briefly for the client's answer.
    ///
    /// After a read error the connection has failed (RFC 6455 §7.1.7): no further frame
    /// may be processed, and tungstenite's stream has ended. Dropping the socket at once
    /// would make the kernel answer any unread input (say, the rest of an oversized
    /// frame) with a reset, which can destroy the close frame before the client reads
    /// it; so the server half-closes after the close frame and discards input until the
    /// client closes too, within the same wait.
    async fn close<S>(&self, ws: &mut WebSocketStream<S>, code: CloseCode) -> CloseCode
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.node.metrics.close(code);
        let frame = CloseFrame { code: WsCloseCode::from(code.code()), reason: Utf8Bytes::from_static(code.reason()) };
        // Boxed, like `dispatch`: it runs once per session, and inline its state (a
        // timer and the close and discard futures) would be part of every idle session.
        let _ = Box::pin(tokio::time::timeout(CLOSE_HANDSHAKE_WAIT, async {
            if ws.close(Some(frame)).await.is_err() {
                return;
            }
            if ws.is_terminated() {
                discard_until_eof(ws.get_mut()).await;
            } else {
                while let Some(Ok(_)) = ws.next().await {}
            }
        }))
        .await;
        code
    }

    fn subscriber(
        &self,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        since: Option<ringcast_proto::client::Since>,
        reply_id: Option<u64>,
    ) -> crate::hub::LocalSubscriber {
        let identity = self.identity.as_ref();
        crate::hub::LocalSubscriber {
            conn: self.conn,
            outbox: self.outbox.clone(),
            policy: ns.message_policy(self.outbox.bounds()),
            since,
            reply_id,
            member: ns.presence.then(|| crate::hub::MemberTag {
                user: Arc::from(identity.and_then(|i| i.user.as_deref()).unwrap_or_default()),
                info: identity.and_then(|i| i.info.clone()),
            }),
            join_leave: ns.join_leave && self.may_see_presence(channel, ns),
            snapshot: false,
            delta: false,
            pattern: false,
        }
    }

    fn may_see_presence(&self, channel: &ChannelName, ns: &NamespaceOptions) -> bool {
        ns.anonymous || self.identity.as_ref().is_some_and(|i| i.may_see_presence(channel))
    }

    /// The registry channel of a connection with a token, when the registry is on and
    /// the user id fits a channel name.
    fn registry_channel(&self) -> Option<ChannelName> {
        let user = self.identity.as_ref()?.user.as_deref()?;
        if !self.node.config.registry.enabled {
            return None;
        }
        ChannelName::user(user).ok()
    }

    /// Subscribes a connection with a token to its user's registry channel (direct
    /// messages; the registry counts it online). A `subscribed` push, or an `error`
    /// push naming the channel, follows the `connected` reply.
    async fn join_registry(&mut self, since: Option<ringcast_proto::client::Since>) {
        let Some(channel) = self.registry_channel() else { return };
        let Some(ns) = self.node.namespace(&channel).cloned() else { return };
        let now = self.node.now();
        match self.node.router.subscribe(&channel, &ns, &self.subscriber(&channel, &ns, since, None), now).await {
            Ok(()) => {
                self.subscriptions.insert(channel);
            }
            Err(r) => {
                debug!(code = %r.code, "registry subscription failed");
                self.reply_error(None, r.code, &format!("{channel}: {}", r.message));
            }
        }
    }

    /// Checks a presence query: the namespace has presence and the token may see it.
    fn check_presence(&self, channel: &ChannelName) -> Result<NamespaceOptions, Reject> {
        let ns = self.namespace(channel)?;
        if !ns.presence {
            return Err(reject(
                ErrorCode::NotEnabled,
                format!("presence is not enabled in namespace {:?}", channel.namespace()),
            ));
        }
        if !self.may_see_presence(channel, &ns) {
            return Err(reject(ErrorCode::PermissionDenied, format!("no presence capability for {channel}")));
        }
        Ok(ns)
    }

    fn reply(&self, frame: String) {
        // An overflow here marks the session as a slow consumer; the writer closes it.
        if self.outbox.push(Utf8Bytes::from(frame)) == Pushed::Overflow {
            debug!("reply overflowed the send queue");
        }
    }

    fn reply_error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        self.node.metrics.error(code);
        self.reply(encode_error(id, code, message));
    }

    /// Handles one command frame: its JSON text, or (MessagePack) why it has none.
    /// Returns a close code when the session must end.
    async fn on_command(&mut self, text: Result<&str, String>) -> Option<CloseCode> {
        if !self.bucket.try_take(self.node.now()) {
            self.strikes += 1;
            if self.strikes >= MAX_RATE_LIMIT_STRIKES {
                self.node.metrics.error(ErrorCode::RateLimited);
                return Some(CloseCode::RateLimited);
            }
            let id = text.ok().and_then(|t| decode_command(t).ok()).map(|r| r.id);
            self.reply_error(id, ErrorCode::RateLimited, "too many commands; slow down");
            return None;
        }
        self.strikes = 0;
        let decoded = match text {
            Ok(text) => decode_command(text),
            Err(e) => {
                Err(DecodeError { id: None, code: ErrorCode::BadRequest, message: format!("malformed command: {e}") })
            }
        };
        let request = match decoded {
            Ok(r) => r,
            Err(e) => {
                self.reply_error(e.id, e.code, &e.message);
                return None;
            }
        };
        let id = request.id;
        // Boxed: a command's future (a hook's HTTP request, a forwarded publish, a
        // pattern's resumes) is kilobytes, and the session's own future is sized for its
        // largest await. Boxed, it costs one allocation per command instead of being
        // held by every idle connection.
        match Box::pin(self.dispatch(id, request.command)).await {
            Ok(None) => None,
            Ok(Some(code)) => Some(code),
            Err(r) => {
                self.reply_error(Some(id), r.code, &r.message);
                match r.code {
                    // A failed connect ends the session.
                    ErrorCode::Unauthorized if self.identity.is_none() => Some(CloseCode::Unauthorized),
                    ErrorCode::TokenExpired if self.identity.is_none() => Some(CloseCode::TokenExpired),
                    _ => None,
                }
            }
        }
    }

    async fn dispatch(&mut self, id: u64, command: Command) -> Result<Option<CloseCode>, Reject> {
        if let Command::Ping = command {
            self.reply(encode_pong(id));
            return Ok(None);
        }
        if let Command::Connect { token, since } = command {
            self.connect(id, token).await?;
            self.join_registry(since).await;
            return Ok(None);
        }
        if self.identity.is_none() {
            return Err(reject(ErrorCode::NotConnected, "send `connect` first"));
        }
        match command {
            Command::Refresh { token } => self.refresh(id, &token).await?,
            Command::Subscribe { channel, since, snapshot, delta } => {
                let ns = self.check_subscribe(&channel)?;
                if delta && !ns.delta {
                    return Err(reject(
                        ErrorCode::NotEnabled,
                        format!("deltas are not enabled in namespace {:?}", channel.namespace()),
                    ));
                }
                if self.subscriptions.contains(&channel) {
                    return Err(reject(ErrorCode::AlreadySubscribed, format!("already subscribed to {channel}")));
                }
                let max = self.node.config.limits.max_channels_per_connection;
                if self.subscriptions.len() >= max {
                    return Err(reject(
                        ErrorCode::TooManyChannels,
                        format!("at most {max} subscriptions per connection"),
                    ));
                }
                let mut sub = crate::hub::LocalSubscriber {
                    // The state first, unless resuming (the replay continues the
                    // client's own) or declined.
                    snapshot: ns.keep_latest && snapshot.unwrap_or(since.is_none()),
                    delta,
                    ..self.subscriber(&channel, &ns, since, Some(id))
                };
                if ns.subscribe_hook {
                    #[derive(serde::Serialize)]
                    struct Body<'a> {
                        channel: &'a str,
                    }
                    let info = self.ask(Hook::Subscribe, &Body { channel: channel.as_str() }).await?.1;
                    if let (Some(info), Some(member)) = (info, sub.member.as_mut()) {
                        member.info = Some(Arc::from(info.get()));
                    }
                }
                let now = self.node.now();
                self.node.router.subscribe(&channel, &ns, &sub, now).await.map_err(|r| reject(r.code, r.message))?;
                self.subscriptions.insert(channel);
            }
            Command::Unsubscribe { channel } => {
                if !self.subscriptions.remove(&channel) {
                    return Err(reject(ErrorCode::NotSubscribed, format!("not subscribed to {channel}")));
                }
                self.node.router.unsubscribe(&channel, self.conn, self.node.now());
                self.reply(encode_unsubscribed(id, &channel));
            }
            Command::PSubscribe { pattern, since } => self.psubscribe(id, pattern, since).await?,
            Command::PUnsubscribe { pattern } => {
                let Some(at) = self.patterns.iter().position(|p| *p == pattern) else {
                    return Err(reject(ErrorCode::NotSubscribed, format!("not subscribed to pattern {pattern}")));
                };
                self.patterns.remove(at);
                self.node.router.punsubscribe(&pattern, self.conn);
                self.reply(encode_punsubscribed(id, &pattern));
            }
            Command::Publish { channel, data, idempotency_key, key } => {
                let started = Instant::now();
                let ns = self.check_publish(&channel)?;
                let too_large = |data: &RawValue, whose: &str| {
                    reject(
                        ErrorCode::MessageTooLarge,
                        format!("{whose} is {} bytes; namespace limit is {}", data.get().len(), ns.max_message_bytes),
                    )
                };
                if data.get().len() > ns.max_message_bytes {
                    return Err(too_large(&data, "data"));
                }
                let mut data = data;
                if ns.publish_hook {
                    #[derive(serde::Serialize)]
                    struct Body<'a> {
                        channel: &'a str,
                        data: &'a RawValue,
                        #[serde(skip_serializing_if = "Option::is_none")]
                        key: Option<&'a str>,
                    }
                    let body = Body { channel: channel.as_str(), data: &data, key: key.as_deref() };
                    if let Some(rewritten) = self.ask(Hook::Publish, &body).await?.0 {
                        if rewritten.get().len() > ns.max_message_bytes {
                            return Err(too_large(&rewritten, "the data the backend returned"));
                        }
                        data = rewritten;
                    }
                }
                let now = self.node.now();
                let p = self
                    .node
                    .router
                    .publish(
                        &PublishRequest {
                            channel: &channel,
                            ns: &ns,
                            data: &data,
                            idempotency_key: idempotency_key.as_deref(),
                            origin: Origin::Client,
                            key: key.as_deref(),
                        },
                        now,
                    )
                    .await
                    .map_err(|r| reject(r.code, r.message))?;
                self.node.metrics.publish(Source::WebSocket);
                self.node.metrics.publish_latency(started.elapsed());
                let ack = Ack {
                    channel: channel.as_str(),
                    epoch: p.position.epoch,
                    offset: p.position.offset,
                    duplicate: p.duplicate,
                };
                self.reply(encode_ack(id, &ack));
            }
            Command::History { channel, before, limit } => {
                self.check_subscribe(&channel)?;
                let now = self.node.now();
                let page = self
                    .node
                    .router
                    .history(&channel, before, limit, now)
                    .await
                    .map_err(|r| reject(r.code, r.message))?;
                self.reply(encode_history(Some(id), &history_reply(&channel, &page)));
            }
            Command::State { channel, key } => {
                let ns = self.check_subscribe(&channel)?;
                if !ns.keep_latest {
                    return Err(reject(
                        ErrorCode::NotEnabled,
                        format!("keep_latest is not enabled in namespace {:?}", channel.namespace()),
                    ));
                }
                let state =
                    self.node.router.state(&channel, self.node.now()).await.map_err(|r| reject(r.code, r.message))?;
                let entries: Vec<&Utf8Bytes> = state
                    .entries
                    .iter()
                    .filter(|f| key.as_deref().is_none_or(|k| message_key(f.as_str()).unwrap_or("") == k))
                    .collect();
                self.reply(encode_state_reply(id, &channel, state.top, &entries));
            }
            Command::Presence { channel } => {
                self.check_presence(&channel)?;
                let p = self
                    .node
                    .router
                    .presence(&channel, MAX_PRESENCE_MEMBERS)
                    .await
                    .map_err(|r| reject(r.code, r.message))?;
                self.reply(encode_presence(Some(id), &presence_reply(&channel, &p)));
            }
            Command::PresenceStats { channel } => {
                self.check_presence(&channel)?;
                let p = self.node.router.presence(&channel, 0).await.map_err(|r| reject(r.code, r.message))?;
                let stats = PresenceStatsReply {
                    channel: channel.as_str(),
                    clients: p.stats.clients as u64,
                    users: p.stats.users as u64,
                };
                self.reply(encode_presence_stats(id, &stats));
            }
            Command::Typing { channel } => {
                self.check_publish(&channel)?;
                if !self.subscriptions.contains(&channel) {
                    return Err(reject(
                        ErrorCode::NotSubscribed,
                        format!("subscribe to {channel} before typing in it"),
                    ));
                }
                let identity = self.identity.as_ref();
                let Some(user) = identity.and_then(|i| i.user.as_deref()) else {
                    return Err(reject(ErrorCode::PermissionDenied, "anonymous clients cannot send typing notices"));
                };
                let info = identity.and_then(|i| i.info.clone());
                self.node
                    .router
                    .typing(&channel, &Arc::from(user), info.as_deref(), self.node.now())
                    .map_err(|r| reject(r.code, r.message))?;
                self.reply(encode_typing_sent(id, &channel));
            }
            Command::Ping | Command::Connect { .. } => {}
        }
        Ok(None)
    }

    async fn connect(&mut self, id: u64, token: Option<String>) -> Result<(), Reject> {
        if self.identity.is_some() {
            return Err(reject(ErrorCode::AlreadyConnected, "already connected; use `refresh` to replace the token"));
        }
        let identity = match token {
            Some(t) => self.node.verifier.verify(&t).map_err(|e| {
                debug!(reason = %e.log_reason, "connect refused");
                reject(e.code, "invalid token")
            })?,
            None if self.node.any_anonymous_namespace() => Identity::anonymous(),
            None => return Err(reject(ErrorCode::Unauthorized, "a token is required")),
        };
        let mut identity = identity;
        if self.node.hooks.enabled(Hook::Connect) {
            #[derive(serde::Serialize)]
            struct Body {}
            let caller = caller(self.conn, &self.node, &identity);
            match self.node.hooks.call(Hook::Connect, &caller, &Body {}).await {
                Verdict::Allow { info, .. } => {
                    if let Some(info) = info {
                        identity.info = Some(Arc::from(info.get()));
                    }
                }
                // Unavailable: the client may retry `connect`; any other refusal ends
                // the session like a bad token.
                Verdict::Deny { code: ErrorCode::Unavailable, message } => {
                    return Err(reject(ErrorCode::Unavailable, message))
                }
                Verdict::Deny { message, .. } => return Err(reject(ErrorCode::Unauthorized, message)),
            }
        }
        self.set_expiry(identity.expires_at);
        self.identity = Some(identity);
        let user_channel = self.registry_channel();
        let Some(identity) = self.identity.as_ref() else { return Ok(()) };
        self.reply(encode_connected(
            id,
            &Connected {
                client: self.conn.to_string(),
                node: self.node.node_id.as_str(),
                user: identity.user.as_deref(),
                expires_at: identity.expires_at,
                user_channel: user_channel.as_ref().map(ChannelName::as_str),
                ping_interval_ms: u64::try_from(self.node.config.heartbeat.ping_interval.as_millis())
                    .unwrap_or(u64::MAX),
                version: env!("CARGO_PKG_VERSION"),
            },
        ));
        Ok(())
    }

    async fn refresh(&mut self, id: u64, token: &str) -> Result<(), Reject> {
        let current = self.identity.as_ref().and_then(|i| i.user.clone());
        let Some(user) = current else {
            return Err(reject(ErrorCode::Unauthorized, "anonymous sessions cannot refresh; reconnect with a token"));
        };
        let fresh = self.node.verifier.verify(token).map_err(|e| reject(e.code, "invalid token"))?;
        if fresh.user.as_deref() != Some(user.as_str()) {
            return Err(reject(ErrorCode::Unauthorized, "the new token is for a different user"));
        }
        if self.node.hooks.enabled(Hook::Refresh) {
            #[derive(serde::Serialize)]
            struct Body {
                #[serde(skip_serializing_if = "Option::is_none")]
                expires_at: Option<u64>,
            }
            self.ask(Hook::Refresh, &Body { expires_at: fresh.expires_at }).await?;
        }
        self.set_expiry(fresh.expires_at);
        self.reply(encode_refreshed(id, fresh.expires_at));
        self.identity = Some(fresh);
        Ok(())
    }

    /// Asks the backend hook about this session's command; a denial becomes the
    /// command's error. Returns the data and info an allowing answer carries.
    async fn ask<T: serde::Serialize>(
        &self,
        hook: Hook,
        body: &T,
    ) -> Result<(Option<Box<RawValue>>, Option<Box<RawValue>>), Reject> {
        let Some(identity) = self.identity.as_ref() else {
            return Err(reject(ErrorCode::NotConnected, "send `connect` first"));
        };
        match self.node.hooks.call(hook, &caller(self.conn, &self.node, identity), body).await {
            Verdict::Allow { data, info } => Ok((data, info)),
            Verdict::Deny { code, message } => Err(reject(code, message)),
        }
    }

    /// Arms the session's expiry (close 4002 after `exp` plus the leeway) and the
    /// `expiring` push: `auth.refresh_notice` before `exp`, or half-way through the
    /// token's remaining life when that is shorter (never a push per refresh in a loop).
    fn set_expiry(&mut self, expires_at: Option<u64>) {
        let auth = &self.node.config.auth;
        self.auth_deadline = expiry_instant(expires_at, auth.leeway_secs());
        self.refresh_notice = expires_at.filter(|_| !auth.refresh_notice.is_zero()).and_then(|exp| {
            let left = Duration::from_secs(exp).saturating_sub(unix_now());
            let lead = auth.refresh_notice.min(left / 2);
            Some((Instant::now().checked_add(left - lead)?, exp))
        });
    }

    fn namespace(&self, channel: &ChannelName) -> Result<NamespaceOptions, Reject> {
        self.node.namespace(channel).cloned().ok_or_else(|| {
            reject(ErrorCode::UnknownNamespace, format!("namespace {:?} is not configured", channel.namespace()))
        })
    }

    fn check_subscribe(&self, channel: &ChannelName) -> Result<NamespaceOptions, Reject> {
        let ns = self.namespace(channel)?;
        let allowed = ns.anonymous || self.identity.as_ref().is_some_and(|i| i.may_subscribe(channel));
        if !allowed {
            return Err(reject(ErrorCode::PermissionDenied, format!("no subscribe capability for {channel}")));
        }
        Ok(ns)
    }

    /// A pattern subscription: checked like a subscribe to every channel it matches,
    /// plus the namespace's `patterns` switch and the per-connection bound. The channels
    /// of `since` are resumed first (each reported by a `subscribed` or `error` push),
    /// then the pattern goes live on every node for every other matching channel, and
    /// then the `psubscribed` reply goes out.
    async fn psubscribe(&mut self, id: u64, pattern: Pattern, since: Vec<(ChannelName, Since)>) -> Result<(), Reject> {
        let ns = self.node.pattern_namespace(&pattern).cloned().ok_or_else(|| {
            reject(ErrorCode::UnknownNamespace, format!("namespace {:?} is not configured", pattern.namespace()))
        })?;
        if !ns.patterns {
            return Err(reject(
                ErrorCode::NotEnabled,
                format!("pattern subscriptions are not enabled in namespace {:?}", pattern.namespace()),
            ));
        }
        let allowed = ns.anonymous || self.identity.as_ref().is_some_and(|i| i.may_subscribe_pattern(&pattern));
        if !allowed {
            return Err(reject(
                ErrorCode::PermissionDenied,
                format!("no subscribe capability covers every channel of {pattern}"),
            ));
        }
        if self.patterns.contains(&pattern) {
            return Err(reject(ErrorCode::AlreadySubscribed, format!("already subscribed to pattern {pattern}")));
        }
        let max = self.node.config.limits.max_patterns_per_connection;
        if self.patterns.len() >= max {
            return Err(reject(
                ErrorCode::TooManyChannels,
                format!("at most {max} pattern subscriptions per connection"),
            ));
        }
        if ns.subscribe_hook {
            #[derive(serde::Serialize)]
            struct Body<'a> {
                pattern: &'a str,
            }
            self.ask(Hook::Subscribe, &Body { pattern: pattern.as_str() }).await?;
        }
        let resuming = since.len();
        let now = self.node.now();
        let (router, ns_ref) = (&self.node.router, &ns);
        let resumes = since.into_iter().map(|(channel, since)| {
            let sub = crate::hub::LocalSubscriber {
                pattern: true,
                member: None,
                join_leave: false,
                ..self.subscriber(&channel, ns_ref, Some(since), None)
            };
            async move {
                let r = router.subscribe(&channel, ns_ref, &sub, now).await;
                (channel, r)
            }
        });
        let results: Vec<_> =
            futures_util::stream::iter(resumes).buffer_unordered(PATTERN_RESUME_CONCURRENCY).collect().await;
        for (channel, r) in results {
            if let Err(r) = r {
                debug!(%channel, code = %r.code, "pattern resume failed");
                self.reply_error(None, r.code, &format!("{channel}: {}", r.message));
            }
        }
        let sub = crate::hub::PatternSubscriber {
            conn: self.conn,
            outbox: self.outbox.clone(),
            policy: ns.message_policy(self.outbox.bounds()),
        };
        self.node.router.psubscribe(&pattern, sub).await;
        self.reply(encode_psubscribed(id, &pattern, resuming));
        self.patterns.push(pattern);
        Ok(())
    }

    fn check_publish(&self, channel: &ChannelName) -> Result<NamespaceOptions, Reject> {
        let ns = self.namespace(channel)?;
        if !ns.client_publish {
            return Err(reject(
                ErrorCode::PermissionDenied,
                format!("clients may not publish in namespace {:?}; use the HTTP API", channel.namespace()),
            ));
        }
        let allowed = ns.anonymous || self.identity.as_ref().is_some_and(|i| i.may_publish(channel));
        if !allowed {
            return Err(reject(ErrorCode::PermissionDenied, format!("no publish capability for {channel}")));
        }
        Ok(ns)
    }
}

/// The wire form of a history page.
pub(crate) fn history_reply<'a>(
    channel: &'a ChannelName,
    page: &'a crate::router::History,
) -> HistoryReply<'a, Utf8Bytes> {
    HistoryReply {
        channel: channel.as_str(),
        epoch: page.epoch,
        oldest: page.oldest,
        newest: page.newest,
        next_before: page.next_before,
        messages: &page.messages,
    }
}

/// The wire form of a channel's presence.
pub(crate) fn presence_reply<'a>(channel: &'a ChannelName, p: &'a crate::router::Presence) -> PresenceReply<'a> {
    let members: Vec<PresenceMember<'a>> = p
        .members
        .iter()
        .map(|m| PresenceMember {
            client: m.conn.to_string(),
            node: m.node.as_str(),
            user: &m.user,
            info: m.info.as_deref().and_then(|i| serde_json::from_str(i).ok()),
        })
        .collect();
    PresenceReply {
        channel: channel.as_str(),
        clients: p.stats.clients as u64,
        users: p.stats.users as u64,
        truncated: members.len() < p.stats.clients,
        members,
    }
}

/// The instant a token expires (with leeway), or `None` when it never does.
fn expiry_instant(expires_at: Option<u64>, leeway: Duration) -> Option<Instant> {
    let left = Duration::from_secs(expires_at?).saturating_sub(unix_now()) + leeway;
    Instant::now().checked_add(left)
}

/// Who a hook call is about.
fn caller<'a>(conn: ConnId, node: &'a Node, identity: &'a Identity) -> Caller<'a> {
    Caller {
        client: conn.to_string(),
        node: node.node_id.as_str(),
        user: identity.user.as_deref(),
        info: identity.info.as_deref().and_then(|i| serde_json::from_str::<&RawValue>(i).ok()),
    }
}

/// Wall-clock time since the UNIX epoch (token times are UNIX seconds).
fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Half-closes a failed connection and reads (without parsing) until the client closes.
async fn discard_until_eof<S>(stream: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if stream.shutdown().await.is_err() {
        return;
    }
    // On the heap: a stack array would be part of every session's future, also idle ones.
    let mut sink = vec![0u8; DISCARD_CHUNK_BYTES];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// The close code for a read error, when the connection is still able to carry one.
fn close_code_for(e: &WsError) -> Option<CloseCode> {
    match e {
        // RFC 6455 §5.2: the most significant bit of a 64-bit payload length MUST be 0.
        // tungstenite does not check it, but such a length is above any frame limit, so
        // it arrives here as an oversized frame whose declared size only a set MSB gives.
        WsError::Capacity(CapacityError::MessageTooLong { size, .. })
            if u64::try_from(*size).is_ok_and(|s| s & LENGTH_MSB != 0) =>
        {
            Some(CloseCode::ProtocolError)
        }
        WsError::Capacity(CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders) => {
            Some(CloseCode::MessageTooBig)
        }
        WsError::Utf8(_) => Some(CloseCode::InvalidPayload),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake | ProtocolError::SendAfterClosing) => None,
        WsError::Protocol(_) => Some(CloseCode::ProtocolError),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn too_long(size: usize) -> WsError {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size: 131_072 })
    }

    /// What an idle connection holds is mostly this future (inside its task): what a
    /// command, a write or the close needs is boxed, and the WebSocket is held once
    /// (docs/benchmarks.md, finding 4). A bound, not a timing: it moves only with the
    /// code, the compiler or tokio/tungstenite.
    #[tokio::test]
    async fn an_idle_session_future_stays_small() {
        let node = crate::node::Node::start(
            crate::config::Config::default(),
            1,
            tokio_util::sync::CancellationToken::new(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let (io, _client) = tokio::io::duplex(64);
        let future = run(node.clone(), io, ConnId(1), Encoding::Json);
        let size = std::mem::size_of_val(&future);
        // 1,544 bytes with rustc 1.95, tokio 1.54 and tungstenite 0.30 (2,016 while the
        // session loop took the WebSocket by value and kept its writes inline); the
        // whole task of a session was 4,352 bytes (heaptrack) while a command's future
        // was inline and the WebSocket was passed down by value.
        assert!(size <= MAX_IDLE_SESSION_FUTURE_BYTES, "the session future is {size} bytes");

        // The default kind, on a shared socket: the same bound.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        let (tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let future = run_tcp(node, tcp, Bytes::new(), ConnId(2), Encoding::Json);
        let size = std::mem::size_of_val(&future);
        assert!(size <= MAX_IDLE_SESSION_FUTURE_BYTES, "the direct-write session future is {size} bytes");
    }

    /// Room above today's size for compiler and dependency updates, not for another
    /// few hundred bytes per connection.
    const MAX_IDLE_SESSION_FUTURE_BYTES: usize = 1_664;

    #[test]
    fn read_errors_map_to_rfc_close_codes() {
        assert_eq!(close_code_for(&too_long(131_073)), Some(CloseCode::MessageTooBig));
        assert_eq!(close_code_for(&too_long(usize::MAX >> 1)), Some(CloseCode::MessageTooBig));
        assert_eq!(close_code_for(&too_long(1 << 63)), Some(CloseCode::ProtocolError));
        assert_eq!(close_code_for(&too_long(usize::MAX)), Some(CloseCode::ProtocolError));
        assert_eq!(close_code_for(&WsError::Utf8("bad".into())), Some(CloseCode::InvalidPayload));
        assert_eq!(
            close_code_for(&WsError::Protocol(ProtocolError::InvalidCloseSequence)),
            Some(CloseCode::ProtocolError)
        );
        assert_eq!(close_code_for(&WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)), None);
    }
}
