//! The viewers: one raw WebSocket connection each (the framing of [`crate::proto`]),
//! subscribed to one game with `"snapshot": true` (and `"delta": true` when deltas are
//! measured), rebuilding the game's state from what arrives ([`super::state`]).
//!
//! Fast viewers read whatever the socket has as soon as it has it. Slow viewers have a
//! small receive buffer and take one WebSocket frame off their socket per
//! `slow_interval` (a `gap` counts as a frame, as it costs a real client a read too), so
//! the kernel's buffers and then the server's send queue fill and the namespace's
//! `keep_latest` policy conflates their updates. Once publishing stops they read at full
//! speed, so the run can check that they end with the publisher's last state.
//!
//! A viewer whose connection ends (the server drops slow consumers whose socket stays
//! full for `limits.write_timeout`) joins again after [`RECONNECT_DELAY`] with a fresh
//! snapshot, like a real client; meanwhile it still shows the state it held.

use super::frame::{self, Body, Message, Push};
use super::state::{Cache, Held};
use super::stats::ViewerRec;
use crate::proto;
use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Read buffer reserved per fast viewer (grows when a burst needs it).
const READ_CHUNK_BYTES: usize = 4096;
/// Longest a viewer may take to connect and subscribe.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before a viewer whose connection ended joins again.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The state every viewer task shares (one thread, so `Rc<RefCell<_>>`).
#[derive(Debug)]
pub struct Viewers {
    pub recs: Vec<ViewerRec>,
    pub held: Vec<Option<Held>>,
    /// The key of each game.
    pub keys: Vec<String>,
    pub cache: Cache,
    pub snapshots: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub ready: usize,
    pub connect_failures: usize,
    /// Publishing stopped: slow viewers read at full speed.
    pub draining: bool,
}

impl Viewers {
    #[must_use]
    pub fn new(viewers: usize, games: usize, slow_every: usize) -> Viewers {
        Viewers {
            recs: (0..viewers).map(|i| ViewerRec { slow: is_slow(i, slow_every), ..ViewerRec::default() }).collect(),
            held: vec![None; viewers],
            keys: (0..games).map(super::game::key).collect(),
            cache: Cache::new(games),
            snapshots: 0,
            errors: 0,
            first_error: None,
            ready: 0,
            connect_failures: 0,
            draining: false,
        }
    }

    pub fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn game(&self, i: usize) -> usize {
        i % self.keys.len()
    }

    /// Handles one server frame of viewer `i`; true when the server closed.
    fn on_frame(&mut self, i: usize, op: u8, body: &[u8], pongs: &mut Vec<u8>) -> bool {
        match op {
            proto::WS_TEXT => match std::str::from_utf8(body).map_err(|e| e.to_string()).and_then(frame::classify) {
                Ok(push) => self.on_push(i, push),
                Err(e) => self.error(format!("viewer {i}: {e}")),
            },
            proto::WS_CLOSE => return true,
            proto::WS_PING => proto::ws_pong(pongs, body),
            _ => {}
        }
        false
    }

    fn on_push(&mut self, i: usize, push: Push<'_>) {
        match push {
            Push::Message(m) => self.on_message(i, &m, true),
            Push::Snapshot(entries) => {
                self.snapshots += 1;
                for m in &entries {
                    self.on_message(i, m, false);
                }
            }
            Push::Gap { from, to, conflated: true, .. } => {
                let r = &mut self.recs[i];
                r.conflated_gaps += 1;
                r.conflated_offsets += to.saturating_sub(from) + 1;
            }
            Push::Gap { .. } => self.recs[i].other_gaps += 1,
            Push::Reply { id, result: Err(e) } => self.error(format!("viewer {i}: command {id} refused: {e}")),
            Push::Error(e) => self.error(format!("viewer {i}: error push: {e}")),
            Push::Reply { .. } | Push::Other => {}
        }
    }

    fn on_message(&mut self, i: usize, m: &Message<'_>, counted: bool) {
        let game = self.game(i);
        if m.key != self.keys[game] {
            return self.error(format!("viewer {i}: a message for key {:?} on game {game}", m.key));
        }
        match self.cache.apply(game, self.held[i].as_ref(), m) {
            Ok(h) => {
                if let Some(old) = &self.held[i] {
                    if h.applied.seq < old.applied.seq {
                        self.error(format!(
                            "viewer {i}: state went back from seq {} to {}",
                            old.applied.seq, h.applied.seq
                        ));
                    }
                }
                let r = &mut self.recs[i];
                r.held_ts_us = h.applied.ts_us;
                r.held_seq = h.applied.seq;
                if counted {
                    r.messages += 1;
                    match m.body {
                        Body::Full(_) => r.full_frames += 1,
                        Body::Delta { .. } => r.delta_frames += 1,
                    }
                }
                self.held[i] = Some(h);
            }
            Err(e) => self.error(format!("viewer {i}: {e}")),
        }
    }
}

/// Whether viewer `i` is slow: one in each block of `every` consecutive viewers, at a
/// position that moves with the block, so slow viewers spread over the games however
/// `every` and the number of games relate. `usize::MAX`: none.
#[must_use]
pub fn is_slow(i: usize, every: usize) -> bool {
    every != usize::MAX && every > 0 && i % every == (i / every) % every
}

/// Bytes still missing before `buf` holds one complete WebSocket frame (at least 1).
#[must_use]
pub fn missing(buf: &[u8]) -> usize {
    if buf.len() < 2 {
        return 2 - buf.len();
    }
    let (len, head): (usize, usize) = match buf[1] & 0x7f {
        126 if buf.len() < 4 => return 4 - buf.len(),
        127 if buf.len() < 10 => return 10 - buf.len(),
        126 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX), 10)
        }
        n => (usize::from(n), 2),
    };
    head.saturating_add(len).saturating_sub(buf.len()).max(1)
}

/// Why a viewer could not join.
#[derive(Debug)]
pub enum JoinError {
    /// The server answered `connect` or `subscribe` with an error.
    Refused(String),
    Io(String),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Refused(e) | JoinError::Io(e) => f.write_str(e),
        }
    }
}

impl From<std::io::Error> for JoinError {
    fn from(e: std::io::Error) -> JoinError {
        JoinError::Io(e.to_string())
    }
}

/// Connects a viewer and subscribes it to `channel`; returns once both replies are in,
/// with what was read after them (the snapshot may already be there).
pub async fn join(
    addr: SocketAddr,
    channel: &str,
    delta: bool,
    rcvbuf: Option<u32>,
) -> Result<(TcpStream, Vec<u8>), JoinError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, try_join(addr, channel, delta, rcvbuf)).await {
        Ok(r) => r,
        Err(_) => Err(JoinError::Io(format!("no subscribed reply within {CONNECT_TIMEOUT:?}"))),
    }
}

async fn try_join(
    addr: SocketAddr,
    channel: &str,
    delta: bool,
    rcvbuf: Option<u32>,
) -> Result<(TcpStream, Vec<u8>), JoinError> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes)?;
    }
    let mut s = socket.connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&proto::ws_upgrade(&addr.to_string())).await?;
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Err(JoinError::Io("closed during the WebSocket handshake".into()));
        }
        if let Some((end, ok)) = proto::ws_upgrade_reply(&buf) {
            if !ok {
                let status = String::from_utf8_lossy(&buf[..end]).lines().next().unwrap_or("").to_owned();
                return Err(JoinError::Refused(format!("upgrade refused: {status}")));
            }
            buf.drain(..end);
            break;
        }
    }
    let mut hello = Vec::new();
    proto::ws_text(&mut hello, br#"{"id":1,"type":"connect"}"#);
    let delta = if delta { r#","delta":true"# } else { "" };
    let subscribe = format!(r#"{{"id":2,"type":"subscribe","channel":"{channel}","snapshot":true{delta}}}"#);
    proto::ws_text(&mut hello, subscribe.as_bytes());
    s.write_all(&hello).await?;
    let mut replies = 0;
    loop {
        let mut pos = 0;
        while replies < 2 {
            let Some((n, op, body)) = proto::ws_frame(&buf[pos..]).map_err(|e| JoinError::Io(e.to_string()))? else {
                break;
            };
            pos += n;
            if op == proto::WS_CLOSE {
                return Err(JoinError::Io("closed while subscribing".into()));
            }
            if op != proto::WS_TEXT {
                continue;
            }
            let text = std::str::from_utf8(body).map_err(|e| JoinError::Io(e.to_string()))?;
            match frame::classify(text).map_err(JoinError::Io)? {
                Push::Reply { id: 1, result: Err(e) } => return Err(JoinError::Refused(format!("connect: {e}"))),
                Push::Reply { id: 2, result: Err(e) } => {
                    return Err(JoinError::Refused(format!("subscribe to {channel}: {e}")))
                }
                Push::Reply { .. } => replies += 1,
                _ => {}
            }
        }
        buf.drain(..pos);
        if replies == 2 {
            return Ok((s, buf));
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err(JoinError::Io("closed while subscribing".into()));
        }
    }
}

/// Feeds every complete frame of `buf` to viewer `i`: (bytes consumed, server closed).
fn process(v: &RefCell<Viewers>, i: usize, buf: &[u8], pongs: &mut Vec<u8>) -> (usize, bool) {
    let mut v = v.borrow_mut();
    let mut pos = 0;
    loop {
        match proto::ws_frame(&buf[pos..]) {
            Ok(Some((n, op, body))) => {
                pos += n;
                if v.on_frame(i, op, body, pongs) {
                    return (pos, true);
                }
            }
            Ok(None) => return (pos, false),
            Err(e) => {
                v.error(format!("viewer {i}: {e}"));
                return (pos, true);
            }
        }
    }
}

/// How a viewer connects, and how fast it reads.
#[derive(Debug, Clone)]
pub struct Conn {
    pub addr: SocketAddr,
    pub channel: String,
    pub delta: bool,
    /// `SO_RCVBUF` (slow viewers).
    pub rcvbuf: Option<u32>,
    /// One frame per interval (slow viewers); `None` reads at full speed.
    pub slow_interval: Option<Duration>,
}

/// Runs viewer `i` on its first connection, and after every disconnect joins again
/// (after [`RECONNECT_DELAY`], with a fresh snapshot) as a real client would, until the
/// run ends. A viewer that cannot rejoin keeps showing what it held, and is counted.
pub async fn watch(v: Rc<RefCell<Viewers>>, i: usize, conn: Conn, mut s: TcpStream, mut buf: Vec<u8>) {
    loop {
        match conn.slow_interval {
            Some(interval) => read_slow(&v, i, &mut s, &mut buf, interval).await,
            None => read_fast(&v, i, &mut s, &mut buf).await,
        }
        v.borrow_mut().recs[i].disconnects += 1;
        loop {
            tokio::time::sleep(RECONNECT_DELAY).await;
            match join(conn.addr, &conn.channel, conn.delta, conn.rcvbuf).await {
                Ok((s2, buf2)) => {
                    (s, buf) = (s2, buf2);
                    v.borrow_mut().recs[i].reconnects += 1;
                    break;
                }
                Err(e) => v.borrow_mut().error(format!("viewer {i}: reconnect: {e}")),
            }
        }
    }
}

/// Reads and applies everything as soon as it arrives, until the connection ends.
async fn read_fast(v: &RefCell<Viewers>, i: usize, s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut pongs = Vec::new();
    loop {
        let (used, closed) = process(v, i, buf, &mut pongs);
        buf.drain(..used);
        if closed {
            return;
        }
        if !pongs.is_empty() {
            if s.write_all(&pongs).await.is_err() {
                return;
            }
            pongs.clear();
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 2 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        match s.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => v.borrow_mut().recs[i].wire_bytes += n as u64,
        }
    }
}

/// One frame per `interval`, reading from the socket only the bytes that frame still
/// lacks; at full speed once the run drains. Returns when the connection ends.
async fn read_slow(v: &RefCell<Viewers>, i: usize, s: &mut TcpStream, buf: &mut Vec<u8>, interval: Duration) {
    let mut pongs = Vec::new();
    let mut next = tokio::time::Instant::now();
    while !v.borrow().draining {
        next += interval;
        tokio::time::sleep_until(next).await;
        loop {
            match proto::ws_frame(buf) {
                Ok(Some((n, op, body))) => {
                    let closed = v.borrow_mut().on_frame(i, op, body, &mut pongs);
                    buf.drain(..n);
                    if closed {
                        return;
                    }
                    break;
                }
                Ok(None) => {}
                Err(e) => return v.borrow_mut().error(format!("viewer {i}: {e}")),
            }
            let want = missing(buf) as u64;
            match (&mut *s).take(want).read_buf(buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => v.borrow_mut().recs[i].wire_bytes += n as u64,
            }
        }
        if !pongs.is_empty() {
            if s.write_all(&pongs).await.is_err() {
                return;
            }
            pongs.clear();
        }
    }
    read_fast(v, i, s, buf).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_percent_slow_viewers_spread_over_every_game() {
        let (viewers, games) = (15_000, 50);
        let slow: Vec<usize> = (0..viewers).filter(|&i| is_slow(i, 100)).collect();
        assert_eq!(slow.len(), 150);
        let mut per_game = vec![0; games];
        for i in &slow {
            per_game[i % games] += 1;
        }
        assert!(per_game.iter().all(|&n| n == 3), "{per_game:?}");
        assert!(!(0..1000).any(|i| is_slow(i, usize::MAX)));
        assert_eq!((0..1000).filter(|&i| is_slow(i, 1)).count(), 1000);
    }

    #[test]
    fn missing_counts_the_bytes_one_frame_still_needs() {
        assert_eq!(missing(&[]), 2);
        assert_eq!(missing(&[0x81]), 1);
        assert_eq!(missing(&[0x81, 5, b'a']), 4);
        assert_eq!(missing(&[0x81, 126, 1]), 1);
        assert_eq!(missing(&[0x81, 126, 1, 44]), 300);
        assert_eq!(missing(&[0x81, 127, 0, 0]), 6);
        let mut whole = vec![0x81, 2, b'o', b'k'];
        assert_eq!(missing(&whole), 1);
        whole.push(0x81);
        assert_eq!(missing(&whole), 1);
    }

    fn text_frame(body: &str) -> Vec<u8> {
        let mut f = vec![0x81, 126];
        f.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
        f.extend_from_slice(body.as_bytes());
        f
    }

    #[test]
    fn a_viewer_applies_its_snapshot_messages_and_gaps() {
        let v = RefCell::new(Viewers::new(2, 2, usize::MAX));
        let mut stream = text_frame(
            r#"{"type":"snapshot","channel":"s:game-1","epoch":"9","offset":4,"entries":[{"type":"message","channel":"s:game-1","epoch":"9","offset":4,"key":"game-1","data":{"seq":0,"ts":10,"x":1}}]}"#,
        );
        stream.extend(text_frame(
            r#"{"type":"gap","channel":"s:game-1","epoch":"9","from":5,"to":6,"reason":"conflated"}"#,
        ));
        stream.extend(text_frame(
            r#"{"type":"message","channel":"s:game-1","epoch":"9","offset":7,"key":"game-1","data":{"seq":3,"ts":160,"x":1}}"#,
        ));
        stream.extend(text_frame(
            r#"{"type":"message","channel":"s:game-1","epoch":"9","offset":8,"key":"game-1","base":7,"patch":{"seq":4,"ts":210,"x":null}}"#,
        ));
        let (used, closed) = process(&v, 1, &stream, &mut Vec::new());
        assert_eq!((used, closed), (stream.len(), false));
        let v = v.borrow();
        assert_eq!(v.errors, 0, "{:?}", v.first_error);
        let r = &v.recs[1];
        assert_eq!((r.messages, r.full_frames, r.delta_frames), (2, 1, 1));
        assert_eq!((r.conflated_gaps, r.conflated_offsets, r.held_seq, r.held_ts_us), (1, 2, 4, 210));
        let held = v.held[1].as_ref().map(|h| h.applied.value.clone());
        assert_eq!(held, Some(serde_json::json!({"seq":4,"ts":210})));
        assert_eq!(v.snapshots, 1);
    }

    #[test]
    fn a_wrong_key_a_bad_base_and_a_close_are_reported() {
        let v = RefCell::new(Viewers::new(1, 1, usize::MAX));
        let mut stream = text_frame(
            r#"{"type":"message","channel":"s:game-0","epoch":"9","offset":7,"key":"game-9","data":{"seq":3,"ts":160}}"#,
        );
        stream.extend(text_frame(
            r#"{"type":"message","channel":"s:game-0","epoch":"9","offset":8,"key":"game-0","base":7,"patch":{}}"#,
        ));
        stream.extend([0x88, 0]);
        let (_, closed) = process(&v, 0, &stream, &mut Vec::new());
        let v = v.borrow();
        assert!(closed);
        assert_eq!(v.errors, 2);
        assert!(v.first_error.as_deref().is_some_and(|e| e.contains("game-9")));
    }
}
