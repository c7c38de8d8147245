//! The three protocol drivers: request encoding and incremental parsing of what the
//! server sends, over raw bytes (no client library on any side, so client cost is
//! equal and minimal).
//!
//! - `ringcast`: WebSocket (RFC 6455) framing by hand: masked text frames out, unmasked
//!   frames in; commands and pushes are the JSON of `proto/client.md`.
//! - `redis`: RESP2 `SUBSCRIBE` / `PUBLISH` and the `message` push.
//! - `nats`: the core NATS text protocol (`CONNECT`, `SUB`, `PUB`, `MSG`, `PING`/`PONG`).
//! - `floor`: the `redis` driver, against [`crate::floor`], the null fan-out server.
//!
//! Parsers never allocate for a message push: they return a slice of the input.

use serde::{Deserialize, Serialize};

/// Which server a driver speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Ringcast,
    Redis,
    Nats,
    /// The null fan-out server, `ringcast-bench floor` (RESP2, like Redis): not a peer
    /// but the host's price of one loopback send per delivery.
    Floor,
}

impl System {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            System::Ringcast => "ringcast",
            System::Redis => "redis",
            System::Nats => "nats",
            System::Floor => "floor",
        }
    }
}

/// The WebSocket masking key of every client frame (RFC 6455 requires a mask; its
/// unpredictability protects proxies, not this loopback benchmark).
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x81];

/// One thing the server sent, parsed out of the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A pushed message; the slice is the payload (for ringcast, the inside of the JSON
    /// string `data`).
    Message(&'a [u8]),
    /// A subscription (or, for NATS, the `PONG` after `SUB`) was confirmed.
    Ready,
    /// The server pinged; the bytes are the answer to send.
    Ping(Vec<u8>),
    /// The server refused something.
    Error(String),
    /// The server closed the stream (WebSocket close frame).
    Closed,
    /// Anything else (replies, acks, `INFO`, `+OK`).
    Other,
}

/// An incomplete or malformed input.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Malformed(&'static str),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Malformed(m) => write!(f, "malformed server frame: {m}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses the first complete event of `buf`: `Ok(Some((consumed, event)))`, or
/// `Ok(None)` when more bytes are needed.
pub fn parse(system: System, buf: &[u8]) -> Result<Option<(usize, Event<'_>)>, ParseError> {
    match system {
        System::Ringcast => parse_ws(buf),
        System::Redis | System::Floor => parse_resp(buf),
        System::Nats => parse_nats(buf),
    }
}

/// Bytes that subscribe one connection to `channels` (after [`ws_upgrade`] for ringcast).
#[must_use]
pub fn subscribe(system: System, channels: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    match system {
        System::Ringcast => {
            ws_text(&mut out, br#"{"id":1,"type":"connect"}"#);
            for (i, c) in channels.iter().enumerate() {
                let cmd = format!(r#"{{"id":{},"type":"subscribe","channel":"{c}"}}"#, i + 2);
                ws_text(&mut out, cmd.as_bytes());
            }
        }
        System::Redis | System::Floor => {
            let args: Vec<&[u8]> =
                std::iter::once(&b"SUBSCRIBE"[..]).chain(channels.iter().map(|c| c.as_bytes())).collect();
            resp_array(&mut out, &args);
        }
        System::Nats => {
            out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n");
            for (i, c) in channels.iter().enumerate() {
                out.extend_from_slice(format!("SUB {c} {}\r\n", i + 1).as_bytes());
            }
            out.extend_from_slice(b"PING\r\n");
        }
    }
    out
}

/// How many [`Event::Ready`] confirm a [`subscribe`] of `n` channels (or, with `n`
/// 0, a [`publisher_hello`]).
#[must_use]
pub fn ready_count(system: System, n: usize) -> usize {
    match system {
        System::Nats => 1,
        System::Ringcast | System::Redis | System::Floor => n,
    }
}

/// Bytes that make a connection a publisher (nothing to subscribe to).
#[must_use]
pub fn publisher_hello(system: System) -> Vec<u8> {
    let mut out = Vec::new();
    match system {
        System::Ringcast => ws_text(&mut out, br#"{"id":1,"type":"connect"}"#),
        System::Redis | System::Floor => {}
        // The PING's PONG tells the generator the server has taken the CONNECT.
        System::Nats => out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n"),
    }
    out
}

/// Appends one publish of `payload` (ASCII, see [`crate::payload`]) on `channel`.
pub fn publish(system: System, out: &mut Vec<u8>, channel: &str, payload: &[u8], id: u64) {
    match system {
        System::Ringcast => {
            // `data` is a JSON string whose text, quotes included, is `payload.len() + 2`
            // bytes; the payload module sizes it so the stored `data` has the nominal size.
            let mut cmd = Vec::with_capacity(payload.len() + 80);
            cmd.extend_from_slice(format!(r#"{{"id":{id},"type":"publish","channel":"{channel}","data":""#).as_bytes());
            cmd.extend_from_slice(payload);
            cmd.extend_from_slice(b"\"}");
            ws_text(out, &cmd);
        }
        System::Redis | System::Floor => resp_array(out, &[b"PUBLISH", channel.as_bytes(), payload]),
        System::Nats => {
            out.extend_from_slice(format!("PUB {channel} {}\r\n", payload.len()).as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The HTTP/1.1 upgrade request for `GET /ws`.
#[must_use]
pub fn ws_upgrade(host: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// The length of a complete HTTP response head in `buf` and whether it is `101`.
#[must_use]
pub fn ws_upgrade_reply(buf: &[u8]) -> Option<(usize, bool)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some((end, buf.starts_with(b"HTTP/1.1 101")))
}

/// Appends a RESP2 array of bulk strings: a command, or a push such as `message`.
pub(crate) fn resp_array(out: &mut Vec<u8>, items: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
    for item in items {
        resp_bulk(out, item);
    }
}

/// Appends a RESP2 bulk string: `$len\r\nbytes\r\n`.
pub(crate) fn resp_bulk(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

/// Appends a masked client frame with opcode `op`.
fn ws_frame_out(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    out.push(0x80 | op);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if let Ok(n16) = u16::try_from(n) {
        out.push(0x80 | 126);
        out.extend_from_slice(&n16.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
}

/// Appends a masked text frame.
pub fn ws_text(out: &mut Vec<u8>, payload: &[u8]) {
    ws_frame_out(out, WS_TEXT, payload);
}

/// WebSocket opcodes the drivers act on.
pub const WS_TEXT: u8 = 0x1;
pub const WS_CLOSE: u8 = 0x8;
pub const WS_PING: u8 = 0x9;

/// One server frame: (bytes consumed from the buffer, opcode, payload).
pub type WsFrame<'a> = (usize, u8, &'a [u8]);

/// The first complete server frame of `buf`, or `Ok(None)` when more bytes are needed.
/// Server frames are never masked.
pub fn ws_frame(buf: &[u8]) -> Result<Option<WsFrame<'_>>, ParseError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let op = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        return Err(ParseError::Malformed("masked server frame"));
    }
    let (len, head): (usize, usize) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (usize::try_from(u64::from_be_bytes(b)).map_err(|_| ParseError::Malformed("frame length"))?, 10)
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    let Some(end) = head.checked_add(len) else { return Err(ParseError::Malformed("frame length")) };
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((end, op, &buf[head..end])))
}

/// Appends the masked pong that answers a ping carrying `body`.
pub fn ws_pong(out: &mut Vec<u8>, body: &[u8]) {
    ws_frame_out(out, 0xA, body);
}

fn parse_ws(buf: &[u8]) -> Result<Option<(usize, Event<'_>)>, ParseError> {
    let Some((end, op, body)) = ws_frame(buf)? else { return Ok(None) };
    let event = match op {
        WS_TEXT => ws_text_event(body),
        WS_CLOSE => Event::Closed,
        WS_PING => {
            let mut pong = Vec::with_capacity(body.len() + 6);
            ws_pong(&mut pong, body);
            Event::Ping(pong)
        }
        _ => Event::Other,
    };
    Ok(Some((end, event)))
}

fn ws_text_event(body: &[u8]) -> Event<'_> {
    const MESSAGE: &[u8] = br#"{"type":"message","#;
    const DATA: &[u8] = br#","data":""#;
    if body.starts_with(MESSAGE) {
        // The data string is last; its content is ASCII without escapes (see payload).
        static DATA_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(DATA));
        if let Some(at) = DATA_FINDER.find(body) {
            let start = at + DATA.len();
            if body.len() >= start + 2 {
                return Event::Message(&body[start..body.len() - 2]);
            }
        }
        return Event::Error("message push without a string `data`".into());
    }
    if find(body, br#""type":"subscribed""#).is_some() {
        Event::Ready
    } else if find(body, br#""type":"error""#).is_some() || find(body, br#""type":"gap""#).is_some() {
        Event::Error(String::from_utf8_lossy(body).into_owned())
    } else {
        Event::Other
    }
}

/// Where `needle` first occurs in `hay`, for the rare pushes that are not messages. A
/// message's own search ([`ws_text_event`]) uses a finder built once: building one per
/// call was a good share of the generator's CPU (its own CPU decides whether a run is
/// valid).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Reads a `\r\n`-terminated line starting at `at`: (line without CRLF, index after it).
/// A byte search for the `\n`: RESP and NATS lines are short and every message has
/// several, and a substring search (a finder built per call) was a quarter of the
/// generator's CPU against Redis (docs/benchmarks.md, "Not done").
pub(crate) fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let mut from = 0;
    loop {
        let i = from + memchr::memchr(b'\n', rest.get(from..)?)?;
        if i > 0 && rest[i - 1] == b'\r' {
            return Some((&rest[..i - 1], at + i + 1));
        }
        from = i + 1;
    }
}

/// A decimal length field (one or more ASCII digits, no sign), read byte by byte: it
/// is read several times per message.
pub(crate) fn number(s: &[u8]) -> Result<usize, ParseError> {
    if s.is_empty() {
        return Err(ParseError::Malformed("number"));
    }
    s.iter().try_fold(0usize, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9).ok_or(ParseError::Malformed("number"))?;
        n.checked_mul(10).and_then(|n| n.checked_add(usize::from(digit))).ok_or(ParseError::Malformed("number"))
    })
}

/// The `len` bytes of a bulk string starting at `start` (after its `$len` line) and the
/// index after their CRLF; `None` when incomplete.
pub(crate) fn bulk_body(buf: &[u8], start: usize, len: usize) -> Result<Option<(&[u8], usize)>, ParseError> {
    let end = start.checked_add(len).ok_or(ParseError::Malformed("number"))?;
    let Some(crlf) = buf.get(end..).and_then(|rest| rest.get(..2)) else { return Ok(None) };
    if crlf != b"\r\n" {
        return Err(ParseError::Malformed("a bulk string ends with CRLF"));
    }
    Ok(Some((&buf[start..end], end + 2)))
}

/// A parsed RESP2 value (a bulk string's bytes, `None` for other kinds) and the index
/// after it; `None` when incomplete.
type RespValue<'a> = Option<(Option<&'a [u8]>, usize)>;

/// One RESP2 value starting at `at`.
fn resp_value(buf: &[u8], at: usize) -> Result<RespValue<'_>, ParseError> {
    let Some((l, next)) = line(buf, at) else { return Ok(None) };
    match l.first() {
        Some(b'$') => Ok(bulk_body(buf, next, number(&l[1..])?)?.map(|(b, end)| (Some(b), end))),
        Some(b':' | b'+') => Ok(Some((None, next))),
        _ => Err(ParseError::Malformed("unexpected RESP value")),
    }
}

fn parse_resp(buf: &[u8]) -> Result<Option<(usize, Event<'_>)>, ParseError> {
    let Some((l, mut at)) = line(buf, 0) else { return Ok(None) };
    match l.first() {
        Some(b':' | b'+') => Ok(Some((at, Event::Other))),
        Some(b'-') => Ok(Some((at, Event::Error(String::from_utf8_lossy(l).into_owned())))),
        Some(b'*') => {
            let n = number(&l[1..])?;
            let mut items: [Option<&[u8]>; 3] = [None; 3];
            for i in 0..n {
                let Some((v, next)) = resp_value(buf, at)? else { return Ok(None) };
                if let Some(slot) = items.get_mut(i) {
                    *slot = v;
                }
                at = next;
            }
            let event = match items {
                [Some(b"message"), _, Some(payload)] => Event::Message(payload),
                [Some(b"subscribe"), _, _] => Event::Ready,
                _ => Event::Other,
            };
            Ok(Some((at, event)))
        }
        _ => Err(ParseError::Malformed("unexpected RESP type")),
    }
}

fn parse_nats(buf: &[u8]) -> Result<Option<(usize, Event<'_>)>, ParseError> {
    let Some((l, at)) = line(buf, 0) else { return Ok(None) };
    if let Some(rest) = l.strip_prefix(b"MSG ") {
        let len_field = rest.rsplit(|b| *b == b' ').next().ok_or(ParseError::Malformed("MSG line"))?;
        let n = number(len_field)?;
        if buf.len() < at + n + 2 {
            return Ok(None);
        }
        return Ok(Some((at + n + 2, Event::Message(&buf[at..at + n]))));
    }
    let event = if l == b"PING" {
        Event::Ping(b"PONG\r\n".to_vec())
    } else if l == b"PONG" {
        Event::Ready
    } else if l.starts_with(b"-ERR") {
        Event::Error(String::from_utf8_lossy(l).into_owned())
    } else {
        Event::Other
    };
    Ok(Some((at, event)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> Vec<u8> {
        let (len, head) = match frame[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            n => (usize::from(n), 2),
        };
        let mask = &frame[head..head + 4];
        frame[head + 4..head + 4 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect()
    }

    #[test]
    fn ws_publish_is_a_masked_text_frame_with_the_payload_as_a_string() {
        let mut out = Vec::new();
        publish(System::Ringcast, &mut out, "bench:c0", b"abc", 7);
        assert_eq!(out[0], 0x81);
        assert_eq!(unmask(&out), br#"{"id":7,"type":"publish","channel":"bench:c0","data":"abc"}"#.to_vec());
    }

    #[test]
    fn ws_message_push_yields_the_data_string() {
        let body = br#"{"type":"message","channel":"bench:c0","epoch":"9","offset":3,"data":"0123abc"}"#;
        let mut frame = vec![0x81, body.len() as u8];
        frame.extend_from_slice(body);
        frame.extend_from_slice(&[0x81]); // the start of the next frame
        let (n, ev) = parse(System::Ringcast, &frame).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!());
        assert_eq!(n, body.len() + 2);
        assert_eq!(ev, Event::Message(b"0123abc"));
        assert_eq!(parse(System::Ringcast, &frame[..10]), Ok(None));
    }

    #[test]
    fn ws_extended_length_and_ping() {
        let body = vec![b'x'; 300];
        let mut frame = vec![0x81, 126, 1, 44];
        frame.extend_from_slice(&body);
        assert!(matches!(parse(System::Ringcast, &frame), Ok(Some((304, Event::Other)))));
        let ping = [0x89, 1, b'p'];
        let Ok(Some((3, Event::Ping(pong)))) = parse(System::Ringcast, &ping) else { panic!("no ping") };
        assert_eq!(pong[0], 0x8A);
        assert_eq!(unmask(&pong), b"p".to_vec());
    }

    #[test]
    fn resp_message_subscribe_and_integer() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$8\r\nbench:c0\r\n$5\r\nhello\r\n";
        assert_eq!(parse(System::Redis, msg), Ok(Some((msg.len(), Event::Message(b"hello")))));
        assert_eq!(parse(System::Redis, &msg[..msg.len() - 3]), Ok(None));
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$8\r\nbench:c0\r\n:1\r\n";
        assert_eq!(parse(System::Redis, sub), Ok(Some((sub.len(), Event::Ready))));
        assert_eq!(parse(System::Redis, b":1000\r\n"), Ok(Some((7, Event::Other))));
        let unframed = b"*3\r\n$7\r\nmessage\r\n$8\r\nbench:c0\r\n$5\r\nhelloXY";
        assert_eq!(parse(System::Redis, unframed), Err(ParseError::Malformed("a bulk string ends with CRLF")));
        let huge = format!("*1\r\n${}\r\n", usize::MAX);
        assert_eq!(parse(System::Redis, huge.as_bytes()), Err(ParseError::Malformed("number")));
        let mut out = Vec::new();
        publish(System::Redis, &mut out, "c", b"xy", 0);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$2\r\nxy\r\n".to_vec());
    }

    #[test]
    fn numbers_are_digits_only_and_fit() {
        assert_eq!(number(b"0"), Ok(0));
        assert_eq!(number(b"1024"), Ok(1024));
        for bad in [&b""[..], b"-1", b"+1", b"1a", b" 1", b"99999999999999999999999"] {
            assert_eq!(number(bad), Err(ParseError::Malformed("number")), "{bad:?}");
        }
    }

    #[test]
    fn a_line_ends_at_the_first_crlf_and_not_at_a_bare_newline() {
        assert_eq!(line(b"ab\ncd\r\nef", 0), Some((&b"ab\ncd"[..], 7)));
        assert_eq!(line(b"\n\r\n", 0), Some((&b"\n"[..], 3)));
        assert_eq!(line(b"\r\n", 0), Some((&b""[..], 2)));
        assert_eq!(line(b"xx\r\nab\r", 4), None, "incomplete");
        assert_eq!(line(b"ab", 5), None);
    }

    #[test]
    fn nats_msg_ping_pong() {
        let msg = b"MSG bench:c0 1 5\r\nhello\r\nPING\r\n";
        assert_eq!(parse(System::Nats, msg), Ok(Some((25, Event::Message(b"hello")))));
        assert_eq!(parse(System::Nats, &msg[25..]), Ok(Some((6, Event::Ping(b"PONG\r\n".to_vec())))));
        assert_eq!(parse(System::Nats, b"PONG\r\n"), Ok(Some((6, Event::Ready))));
        assert_eq!(parse(System::Nats, b"MSG a 1 5\r\nhel"), Ok(None));
        let mut out = Vec::new();
        publish(System::Nats, &mut out, "c", b"xy", 0);
        assert_eq!(out, b"PUB c 2\r\nxy\r\n".to_vec());
    }
}
