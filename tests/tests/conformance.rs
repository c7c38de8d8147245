//! RFC 6455 framing conformance, with a raw-socket client.
//!
//! `tokio-tungstenite` as a client refuses to send malformed frames, so this file does
//! the upgrade by hand on a `TcpStream` and writes frames byte by byte: FIN and RSV bits,
//! opcode, MASK bit, the 7-, 16- and 64-bit length forms and the masking key. Every
//! violation is sent on its own connection to one node, and must be answered with a
//! close frame carrying the RFC's code (and, for closes the server starts, the reason
//! documented in `proto/client.md`); the test then checks that the node still serves a
//! normal client and that no session panicked.
//!
//! Not asserted, because tungstenite does not check it: a length that is not encoded in
//! the minimal number of bytes (RFC 6455 §5.2 requires senders to use the minimal form;
//! the server accepts a longer one). See "RFC 6455 conformance" in `proto/client.md`.

use anyhow::{bail, ensure, Context, Result};
use ringcast_tests::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The masking key of every client frame (the one in RFC 6455 §5.7's examples).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// `limits.max_frame_bytes` in the default config.
const MAX_FRAME_BYTES: usize = 131_072;

/// A masked client frame: `b0` is FIN, RSV and opcode; the length takes its minimal form.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    encode(b0, Some(MASK), payload)
}

fn encode(b0: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![b0];
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=65_535 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Only the header of a masked frame that declares `len` bytes in the 64-bit form; no
/// payload follows, so the server must decide from the header alone.
fn header_64(b0: u8, len: u64) -> Vec<u8> {
    let mut out = vec![b0, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&MASK);
    out
}

/// A close frame's payload: the status code, then the reason bytes.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

/// A frame received from the server.
#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A server close frame, parsed: 1005 stands for "no status code" (an empty payload).
#[derive(Debug, PartialEq, Eq)]
struct Close {
    code: u16,
    reason: String,
}

/// A WebSocket client over a raw TCP stream.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Result<Raw> {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut raw = Raw { s, buf: Vec::new() };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(raw.fill().await?, "connection ended during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        ensure!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "wrong Sec-WebSocket-Accept: {head}");
        raw.buf.drain(..end);
        Ok(raw)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.s.write_all(bytes).await.context("write")
    }

    /// Reads more bytes; `false` at EOF.
    async fn fill(&mut self) -> Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await.context("read timed out")?.context("read")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Buffers at least `n` bytes; `false` at EOF.
    async fn need(&mut self, n: usize) -> Result<bool> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next frame from the server, or `None` at a clean EOF between frames.
    async fn read_frame(&mut self) -> Result<Option<Frame>> {
        if !self.need(2).await? {
            ensure!(self.buf.is_empty(), "connection ended inside a frame header");
            return Ok(None);
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        ensure!(b1 & 0x80 == 0, "a server frame is masked");
        ensure!(b0 & 0x70 == 0, "a server frame has RSV bits set: {b0:#04x}");
        let (len, header) = match b1 & 0x7f {
            126 => {
                ensure!(self.need(4).await?, "connection ended inside a frame header");
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                ensure!(self.need(10).await?, "connection ended inside a frame header");
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len)?;
        ensure!(len <= 16 * 1024 * 1024, "implausible server frame length {len}");
        ensure!(self.need(header + len).await?, "connection ended inside a frame");
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Ok(Some(Frame { fin: b0 & FIN != 0, opcode: b0 & 0x0f, payload }))
    }

    /// Reads until the server's close frame, skipping pings and data frames.
    async fn expect_close(&mut self) -> Result<Close> {
        loop {
            let Some(f) = self.read_frame().await? else {
                bail!("the connection ended without a close frame");
            };
            if f.opcode != CLOSE {
                continue;
            }
            ensure!(f.fin, "a fragmented close frame");
            return match f.payload.len() {
                0 => Ok(Close { code: 1005, reason: String::new() }),
                1 => bail!("a close frame with a 1-byte payload"),
                _ => Ok(Close {
                    code: u16::from_be_bytes([f.payload[0], f.payload[1]]),
                    reason: String::from_utf8(f.payload[2..].to_vec()).context("close reason is not UTF-8")?,
                }),
            };
        }
    }

    /// Sends a masked text frame.
    async fn send_json(&mut self, v: &Value) -> Result<()> {
        self.send(&frame(FIN | TEXT, v.to_string().as_bytes())).await
    }

    /// The next text frame as JSON, skipping the server's pings.
    async fn read_json(&mut self) -> Result<Value> {
        loop {
            let f = self.read_frame().await?.context("connection ended")?;
            match f.opcode {
                TEXT => {
                    ensure!(f.fin, "the server fragmented a message");
                    return Ok(serde_json::from_slice(&f.payload)?);
                }
                PING => continue,
                op => bail!("expected a text frame, got opcode {op:#x} {:?}", String::from_utf8_lossy(&f.payload)),
            }
        }
    }
}

/// What one connection must see after sending its bytes.
#[derive(Debug)]
enum Expect {
    /// A close the server starts: this code and its documented reason.
    Fail(u16),
    /// Exactly this close frame: an echo of the client's close, or tungstenite's answer
    /// to an invalid close code.
    Reply(Close),
}

fn reason(code: u16) -> &'static str {
    ringcast_proto::CloseCode::ALL.iter().find(|c| c.code() == code).map_or("?", |c| c.reason())
}

/// Every framing violation and close-frame case, each on its own connection.
fn cases() -> Vec<(String, Vec<u8>, Expect)> {
    use Expect::*;
    let mut cases: Vec<(String, Vec<u8>, Expect)> = vec![
        // §5.1: a server MUST fail the connection on an unmasked client frame.
        ("unmasked text frame".into(), encode(FIN | TEXT, None, b"{}"), Fail(1002)),
        ("unmasked ping".into(), encode(FIN | PING, None, b""), Fail(1002)),
        // §5.2: RSV1-3 MUST be 0 without a negotiated extension (none is).
        ("RSV1 on a text frame".into(), frame(FIN | RSV1 | TEXT, b"{}"), Fail(1002)),
        ("RSV2 on a text frame".into(), frame(FIN | RSV2 | TEXT, b"{}"), Fail(1002)),
        ("RSV3 on a text frame".into(), frame(FIN | RSV3 | TEXT, b"{}"), Fail(1002)),
        ("RSV1 on a ping".into(), frame(FIN | RSV1 | PING, b""), Fail(1002)),
        // §5.5: control frames carry at most 125 bytes and are never fragmented.
        ("ping with 126 bytes".into(), frame(FIN | PING, &[b'p'; 126]), Fail(1002)),
        ("pong with 126 bytes".into(), frame(FIN | PONG, &[b'p'; 126]), Fail(1002)),
        ("close with 126 bytes".into(), frame(FIN | CLOSE, &close_payload(1000, &[b'r'; 124])), Fail(1002)),
        ("ping without FIN".into(), frame(PING, b"x"), Fail(1002)),
        ("close without FIN".into(), frame(CLOSE, &close_payload(1000, b"")), Fail(1002)),
        // §5.4: a continuation must continue something, and a new data frame must not
        // start while a fragmented message is open.
        ("continuation with nothing to continue".into(), frame(FIN | CONT, b"x"), Fail(1002)),
        ("unfinished continuation with nothing to continue".into(), frame(CONT, b"x"), Fail(1002)),
        (
            "text frame inside a fragmented message".into(),
            concat(&[frame(TEXT, b"{\"a\":"), frame(FIN | TEXT, b"1}")]),
            Fail(1002),
        ),
        (
            "binary frame inside a fragmented message".into(),
            concat(&[frame(TEXT, b"{\"a\":"), frame(FIN | BINARY, b"1}")]),
            Fail(1002),
        ),
        // §5.2: the most significant bit of a 64-bit length MUST be 0.
        ("64-bit length with the MSB set".into(), header_64(FIN | TEXT, 1 << 63), Fail(1002)),
        ("64-bit length of u64::MAX".into(), header_64(FIN | TEXT, u64::MAX), Fail(1002)),
        // §10.4: a frame over the limit is refused from its header; the payload is never
        // sent, so an answer proves the server did not wait for (or allocate) it.
        ("frame declaring 1 GiB".into(), header_64(FIN | TEXT, 1 << 30), Fail(1009)),
        ("frame declaring the limit + 1".into(), header_64(FIN | TEXT, MAX_FRAME_BYTES as u64 + 1), Fail(1009)),
        // The same with its payload sent: the server fails the connection with unread
        // input, and its close frame must still arrive intact, not be cut off by a reset.
        ("frame over the limit, payload sent".into(), frame(FIN | TEXT, &[b' '; MAX_FRAME_BYTES + 1]), Fail(1009)),
        (
            "fragments adding up to more than the limit".into(),
            concat(&[frame(TEXT, &[b' '; 50_000]), frame(CONT, &[b' '; 50_000]), frame(CONT, &[b' '; 50_000])]),
            Fail(1009),
        ),
        // §8.1: a text message that is not UTF-8 fails the connection with 1007 (§7.4.1).
        ("text frame with 0xFF".into(), frame(FIN | TEXT, b"{\"a\":\"\xff\"}"), Fail(1007)),
        ("text frame with an overlong encoding".into(), frame(FIN | TEXT, b"\xc0\xaf"), Fail(1007)),
        ("text frame with a UTF-16 surrogate".into(), frame(FIN | TEXT, b"\xed\xa0\x80"), Fail(1007)),
        ("text frame ending inside a code point".into(), frame(FIN | TEXT, b"ok\xe2\x82"), Fail(1007)),
        (
            "invalid byte in a later fragment".into(),
            concat(&[frame(TEXT, b"valid"), frame(FIN | CONT, b"\xff")]),
            Fail(1007),
        ),
        (
            "code point split over fragments, then a bad continuation byte".into(),
            concat(&[frame(TEXT, b"\xe2"), frame(FIN | CONT, b"\x82(")]),
            Fail(1007),
        ),
        (
            "fragmented message ending inside a code point".into(),
            concat(&[frame(TEXT, b"ok\xe2\x82"), frame(FIN | CONT, b"")]),
            Fail(1007),
        ),
        // This protocol is text only (proto/client.md).
        ("binary frame".into(), frame(FIN | BINARY, b"\x01\x02"), Fail(1003)),
        ("fragmented binary message".into(), concat(&[frame(BINARY, b"\x01"), frame(FIN | CONT, b"\x02")]), Fail(1003)),
        // §5.5.1: a close body is empty or starts with a 2-byte code.
        ("close with a 1-byte payload".into(), frame(FIN | CLOSE, b"\x03"), Fail(1002)),
        // §5.5.1 and §8.1: the reason is UTF-8; one that is not fails the connection. We
        // answer 1007, the code for data inconsistent with its type (§7.4.1); Autobahn
        // (case 7.5.1) accepts 1007 or 1002 here.
        (
            "close 1000 with a non-UTF-8 reason".into(),
            frame(FIN | CLOSE, &close_payload(1000, b"\xff\xfe")),
            Fail(1007),
        ),
        // A valid close is echoed (§5.5.1): same code, same reason.
        ("close without a body".into(), frame(FIN | CLOSE, b""), Reply(Close { code: 1005, reason: String::new() })),
    ];
    // §5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved.
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        cases.push((format!("reserved opcode {op:#x}"), frame(FIN | op, b""), Fail(1002)));
    }
    // §7.4.1 / §7.4.2: codes below 1000, 1004-1006, 1015, 1016-2999 and above 4999 must
    // not appear in a close frame. tungstenite answers these itself, with 1002 and its own
    // reason rather than ours (documented in proto/client.md).
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65_535] {
        cases.push((
            format!("close with invalid code {code}"),
            frame(FIN | CLOSE, &close_payload(code, b"")),
            Reply(Close { code: 1002, reason: "Protocol violation".into() }),
        ));
    }
    for (code, why) in [(1000, "bye"), (1001, ""), (3000, "registered"), (4999, "private use")] {
        cases.push((
            format!("close with valid code {code}"),
            frame(FIN | CLOSE, &close_payload(code, why.as_bytes())),
            Reply(Close { code, reason: why.into() }),
        ));
    }
    cases
}

/// Sends one case on a fresh connection and describes any mismatch.
async fn run_case(addr: SocketAddr, bytes: &[u8], expect: &Expect) -> Result<()> {
    let mut c = Raw::open(addr).await?;
    c.send(bytes).await?;
    let got = c.expect_close().await.context("before the close frame")?;
    if let Expect::Fail(_) = expect {
        // Answer the server's close like a well-behaved client (§5.5.1), so a server that
        // waits for the answer need not time out. It may have stopped reading: ignore errors.
        let _ = c.send(&frame(FIN | CLOSE, &close_payload(got.code, b""))).await;
    }
    match expect {
        Expect::Fail(code) => {
            ensure!(got == Close { code: *code, reason: reason(*code).into() }, "got {got:?}, want {code}");
        }
        Expect::Reply(want) => ensure!(got == *want, "got {got:?}, want {want:?}"),
    }
    // The server then ends the TCP connection cleanly (FIN, not a reset).
    ensure!(c.read_frame().await.context("after the close frame")?.is_none(), "a frame after the close");
    Ok(())
}

/// Valid but unusual framing is accepted: pings with payloads are answered with the same
/// payload, also between the fragments of a message, and a code point split across
/// fragment boundaries is reassembled.
async fn valid_edge_cases(addr: SocketAddr) -> Result<()> {
    let mut c = Raw::open(addr).await?;
    for payload in [&b""[..], b"hello", &[0xa5; 125]] {
        c.send(&frame(FIN | PING, payload)).await?;
        let f = c.read_frame().await?.context("connection ended")?;
        ensure!(f.opcode == PONG && f.fin && f.payload == payload, "ping {} answered with {f:?}", payload.len());
    }
    // An unsolicited pong is ignored (§5.5.3).
    c.send(&frame(FIN | PONG, b"unsolicited")).await?;

    c.send_json(&json!({"id": 1, "type": "connect"})).await?;
    ensure!(c.read_json().await?["type"] == "connected", "connect");
    c.send_json(&json!({"id": 2, "type": "subscribe", "channel": "chat:utf8"})).await?;
    ensure!(c.read_json().await?["type"] == "subscribed", "subscribe");

    // "€" is E2 82 AC and "😀" is F0 9F 98 80: both are cut between fragments, and a
    // ping with a payload arrives between two fragments.
    let text = json!({"id": 3, "type": "publish", "channel": "chat:utf8", "data": "€😀"}).to_string();
    let bytes = text.as_bytes();
    let euro = text.find('€').context("euro")?;
    let (a, rest) = bytes.split_at(euro + 1);
    let (b, c3) = rest.split_at(4);
    c.send(&concat(&[frame(TEXT, a), frame(CONT, b), frame(FIN | PING, b"mid"), frame(FIN | CONT, c3)])).await?;
    let (mut pong, mut ack, mut message) = (false, false, false);
    while !(pong && ack && message) {
        let f = c.read_frame().await?.context("connection ended")?;
        match f.opcode {
            PONG => {
                ensure!(f.payload == b"mid", "pong payload {:?}", f.payload);
                pong = true;
            }
            TEXT => {
                let v: Value = serde_json::from_slice(&f.payload)?;
                match v["type"].as_str() {
                    Some("ack") if v["id"] == 3 => ack = true,
                    Some("message") => {
                        ensure!(v["data"] == "€😀", "the data came back as {v}");
                        message = true;
                    }
                    _ => bail!("unexpected frame {v}"),
                }
            }
            PING => {}
            op => bail!("unexpected opcode {op:#x}"),
        }
    }
    c.send(&frame(FIN | CLOSE, &close_payload(1000, b""))).await?;
    let got = c.expect_close().await?;
    ensure!(got == Close { code: 1000, reason: String::new() }, "close echoed as {got:?}");
    Ok(())
}

async fn still_serving(node: &Ringcastd) -> Result<()> {
    let (mut sub, r) = WsClient::connect(&node.ws_url(), None).await?;
    assert_eq!(r["type"], "connected");
    assert_eq!(sub.subscribe("chat:after", None).await?["type"], "subscribed");
    let (mut publisher, _) = WsClient::connect(&node.ws_url(), None).await?;
    assert_eq!(publisher.publish("chat:after", json!("still here")).await?["type"], "ack");
    assert_eq!(sub.messages(1).await?[0]["data"], "still here");
    Ok(())
}

#[tokio::test]
async fn framing_violations_get_their_rfc_close_codes_and_the_node_keeps_serving() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let mut failures = Vec::new();
    for (name, bytes, expect) in cases() {
        if let Err(e) = run_case(node.addr, &bytes, &expect).await {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    if let Err(e) = valid_edge_cases(node.addr).await {
        failures.push(format!("valid edge cases: {e:#}"));
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
    still_serving(&node).await?;
    let log = node.stderr();
    assert!(!log.contains("panicked"), "a task panicked:\n{log}");
    Ok(())
}
