//! The null fan-out server: the floor under every pub/sub server on this host.
//!
//! `ringcast-bench floor` speaks the part of RESP2 pub/sub the generator uses
//! (`SUBSCRIBE`, `PUBLISH` and the `message` push) and does nothing else: one thread,
//! blocking sockets, the push encoded once per publish and written to each subscriber
//! with one `send(2)`. No queues, no bounds but the kernel's socket buffer, no
//! bookkeeping beyond who is on which channel. What it spends is the kernel's price of
//! one loopback send per delivery. Where every delivery needs a send of its own (one
//! publish's fan-out, or rates at which no subscriber has two messages waiting) no
//! server goes below it, and what a real server spends above it is its own. At higher
//! rates servers that write several waiting messages in one send do go below it, and
//! the floor, which never batches, falls behind. `scripts/bench` runs it as the system
//! `floor` ([`crate::proto::System::Floor`]), pinned like the others.
//!
//! It is a measuring stick, not a server:
//! - It takes connections one at a time and reads each one's first command: a
//!   `SUBSCRIBE` makes a subscriber (its only command: nothing more is read from it),
//!   a `PUBLISH` makes the run's publisher. A connection that sends nothing within
//!   [`FIRST_COMMAND_WAIT`] is dropped; anything else is answered with an error and
//!   dropped.
//! - Once the publisher is there it accepts no one else and reads only the publisher,
//!   answering each `PUBLISH` with the number of subscribers written to (`:N`).
//! - A subscriber whose socket stays full for [`WRITE_WAIT`], or whose send fails, is
//!   dropped (its bound). Nothing else notices a subscriber leave: it is dropped at the
//!   first send after it closed.
//! - When the publisher closes, the subscribers stay and accepting resumes: the next
//!   publisher serves them too. `scripts/bench` starts it fresh for every run.

use crate::proto::{self, ParseError};
use anyhow::Context as _;
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// How long a new connection may take to send its first command.
pub const FIRST_COMMAND_WAIT: Duration = Duration::from_secs(60);
/// How long a write to a subscriber may block before that subscriber is dropped.
pub const WRITE_WAIT: Duration = Duration::from_secs(1);
/// Consecutive failed accepts, `ACCEPT_BACKOFF` apart, before the floor gives up.
const ACCEPT_FAILURES: u32 = 1000;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The listen backlog: the generator connects up to 200 at a time, and the floor
/// takes them one by one.
const BACKLOG: i32 = 4096;
/// Most arguments in a command (a `SUBSCRIBE` to many channels).
const MAX_ARGS: usize = 100_000;
/// Longest argument (a payload), and the most bytes a connection may send without
/// completing a command.
const MAX_ARG_BYTES: usize = 1 << 20;
const MAX_PENDING_BYTES: usize = 2 * MAX_ARG_BYTES;
const READ_CHUNK: usize = 64 * 1024;

/// A parsed command: the bytes it took and its arguments (slices of the input).
pub type Command<'a> = (usize, Vec<&'a [u8]>);

/// The first complete command of `buf`, an array of bulk strings: `Ok(Some(command))`,
/// or `Ok(None)` when more bytes are needed.
pub fn parse_command(buf: &[u8]) -> Result<Option<Command<'_>>, ParseError> {
    let Some((head, mut at)) = proto::line(buf, 0) else { return Ok(None) };
    let count = head.strip_prefix(b"*").ok_or(ParseError::Malformed("a command is an array (*N)"))?;
    let count = proto::number(count)?;
    if count == 0 || count > MAX_ARGS {
        return Err(ParseError::Malformed("argument count"));
    }
    let mut args = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let Some((head, start)) = proto::line(buf, at) else { return Ok(None) };
        let len = head.strip_prefix(b"$").ok_or(ParseError::Malformed("an argument is a bulk string ($N)"))?;
        let len = proto::number(len)?;
        if len > MAX_ARG_BYTES {
            return Err(ParseError::Malformed("argument too long"));
        }
        let Some((arg, next)) = proto::bulk_body(buf, start, len)? else { return Ok(None) };
        args.push(arg);
        at = next;
    }
    Ok(Some((at, args)))
}

/// The push every subscriber of `channel` gets for a publish of `payload`: what Redis
/// sends, byte for byte.
pub fn message_push(out: &mut Vec<u8>, channel: &[u8], payload: &[u8]) {
    out.clear();
    proto::resp_array(out, &[b"message", channel, payload]);
}

/// Redis's confirmation of the `nth` channel of a `SUBSCRIBE`.
fn subscribe_reply(out: &mut Vec<u8>, channel: &[u8], nth: usize) {
    out.extend_from_slice(b"*3\r\n");
    proto::resp_bulk(out, b"subscribe");
    proto::resp_bulk(out, channel);
    out.extend_from_slice(format!(":{nth}\r\n").as_bytes());
}

/// Binds `addr` with a backlog deep enough for the generator's connect bursts.
pub fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into()).with_context(|| format!("bind {addr}"))?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Serves `listener` until it fails, with a line on `log` when a publisher leaves or
/// an accept fails.
pub fn serve(listener: &TcpListener, log: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let mut state = Floor::default();
    loop {
        let (publisher, pending) = state.accept_until_publisher(listener, log)?;
        let published = state.publish(publisher, pending);
        writeln!(
            log,
            "ringcast-bench floor: publisher gone after {published} publish(es); {} subscriber(s), {} of them dropped",
            state.subscribers.len(),
            state.subscribers.iter().filter(|s| s.is_none()).count()
        )?;
    }
}

/// The subscribers (`None` once dropped) and, per channel, theirs.
#[derive(Default)]
struct Floor {
    subscribers: Vec<Option<TcpStream>>,
    channels: HashMap<Vec<u8>, Vec<usize>>,
}

/// A connection's first command, read whole.
enum First {
    Subscribe(Vec<Vec<u8>>),
    /// The publisher, with every byte it sent so far (the `PUBLISH` included).
    Publish(Vec<u8>),
}

impl Floor {
    /// Accepts and registers subscribers until a connection publishes; returns it.
    fn accept_until_publisher(
        &mut self,
        listener: &TcpListener,
        log: &mut dyn std::io::Write,
    ) -> anyhow::Result<(TcpStream, Vec<u8>)> {
        let mut failures = 0;
        loop {
            let mut s = match listener.accept() {
                Ok((s, _)) => {
                    failures = 0;
                    s
                }
                // Out of descriptors, or a connection reset before it was taken: the
                // next one may do. A listener that fails `ACCEPT_FAILURES` times in a
                // row (10 s) is broken.
                Err(e) if failures < ACCEPT_FAILURES => {
                    failures += 1;
                    if failures == 1 {
                        writeln!(log, "ringcast-bench floor: accept: {e}")?;
                    }
                    std::thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
                Err(e) => return Err(e).context(format!("accept failed {ACCEPT_FAILURES} times in a row")),
            };
            match first_command(&mut s) {
                Ok(First::Publish(pending)) => return Ok((s, pending)),
                Ok(First::Subscribe(channels)) => {
                    let mut reply = Vec::new();
                    for (i, c) in channels.iter().enumerate() {
                        subscribe_reply(&mut reply, c, i + 1);
                    }
                    if s.write_all(&reply).is_err() {
                        continue;
                    }
                    let id = self.subscribers.len();
                    for c in channels {
                        self.channels.entry(c).or_default().push(id);
                    }
                    self.subscribers.push(Some(s));
                }
                Err(why) => {
                    // Best effort: the connection is dropped either way.
                    let _ = s.write_all(format!("-ERR floor: {why}\r\n").as_bytes());
                }
            }
        }
    }

    /// Reads the publisher until it closes, fanning each `PUBLISH` out; returns how
    /// many it served.
    fn publish(&mut self, mut publisher: TcpStream, mut pending: Vec<u8>) -> u64 {
        let mut published = 0;
        let mut push = Vec::new();
        let mut replies = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        if publisher.set_read_timeout(None).is_err() {
            return 0;
        }
        loop {
            let mut pos = 0;
            loop {
                match parse_command(&pending[pos..]) {
                    Ok(Some((n, args))) => {
                        pos += n;
                        match args.as_slice() {
                            [cmd, channel, payload] if cmd.eq_ignore_ascii_case(b"PUBLISH") => {
                                let n = self.fan_out(channel, payload, &mut push);
                                published += 1;
                                replies.extend_from_slice(format!(":{n}\r\n").as_bytes());
                            }
                            _ => replies.extend_from_slice(b"-ERR floor: the publisher may only PUBLISH\r\n"),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = publisher.write_all(format!("-ERR floor: {e}\r\n").as_bytes());
                        return published;
                    }
                }
            }
            pending.drain(..pos);
            if pending.len() > MAX_PENDING_BYTES {
                let _ = publisher.write_all(b"-ERR floor: command too long\r\n");
                return published;
            }
            if !replies.is_empty() {
                if publisher.write_all(&replies).is_err() {
                    return published;
                }
                replies.clear();
            }
            match publisher.read(&mut chunk) {
                Ok(0) | Err(_) => return published,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Writes one publish to every subscriber of `channel`: one `send` each, the push
    /// encoded once. Returns how many took it.
    fn fan_out(&mut self, channel: &[u8], payload: &[u8], push: &mut Vec<u8>) -> usize {
        let Floor { subscribers, channels } = self;
        let Some(ids) = channels.get(channel) else { return 0 };
        message_push(push, channel, payload);
        let mut written = 0;
        for &id in ids {
            if let Some(s) = subscribers.get_mut(id).and_then(Option::as_mut) {
                if s.write_all(push).is_ok() {
                    written += 1;
                } else {
                    subscribers[id] = None;
                }
            }
        }
        written
    }
}

/// Reads `s`'s first command (with the waits of a new connection set on `s`).
fn first_command(s: &mut TcpStream) -> Result<First, String> {
    let setup = |s: &TcpStream| -> std::io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(FIRST_COMMAND_WAIT))?;
        s.set_write_timeout(Some(WRITE_WAIT))
    };
    setup(s).map_err(|e| format!("socket options: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match parse_command(&buf) {
            Ok(Some((_, args))) => {
                return match args.split_first() {
                    Some((cmd, channels)) if cmd.eq_ignore_ascii_case(b"SUBSCRIBE") && !channels.is_empty() => {
                        Ok(First::Subscribe(channels.iter().map(|c| c.to_vec()).collect()))
                    }
                    Some((cmd, _)) if cmd.eq_ignore_ascii_case(b"PUBLISH") => Ok(First::Publish(buf)),
                    _ => Err("a connection starts with SUBSCRIBE or PUBLISH".into()),
                };
            }
            Ok(None) if buf.len() > MAX_PENDING_BYTES => return Err("command too long".into()),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed before its first command".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("no first command: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{parse, publish, subscribe, Event, System};

    #[test]
    fn the_generators_commands_parse_whole_and_not_before() {
        let mut sub = subscribe(System::Floor, &["a".into(), "bc".into()]);
        let mut pub1 = Vec::new();
        publish(System::Floor, &mut pub1, "a", b"xyz", 0);
        let n = sub.len();
        sub.extend_from_slice(&pub1);
        let Ok(Some((used, args))) = parse_command(&sub) else { panic!("no command") };
        assert_eq!(used, n);
        assert_eq!(args, vec![&b"SUBSCRIBE"[..], b"a", b"bc"]);
        assert_eq!(parse_command(&sub[n..]), Ok(Some((pub1.len(), vec![&b"PUBLISH"[..], b"a", b"xyz"]))));
        for cut in 0..pub1.len() {
            assert_eq!(parse_command(&pub1[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_commands_are_errors() {
        for (bad, why) in [
            (&b"PING\r\n"[..], "a command is an array (*N)"),
            (b"*0\r\n", "argument count"),
            (b"*1\r\n:5\r\n", "an argument is a bulk string ($N)"),
            (b"*1\r\n$2\r\nabcd\r\n", "a bulk string ends with CRLF"),
            (b"*1\r\n$99999999\r\n", "argument too long"),
            (b"*x\r\n", "number"),
        ] {
            assert_eq!(parse_command(bad), Err(ParseError::Malformed(why)), "{bad:?}");
        }
    }

    #[test]
    fn the_push_and_the_confirmation_are_what_the_redis_driver_reads() {
        let mut push = Vec::new();
        message_push(&mut push, b"bench:c0", b"hello");
        assert_eq!(parse(System::Floor, &push), Ok(Some((push.len(), Event::Message(b"hello")))));
        let mut reply = Vec::new();
        subscribe_reply(&mut reply, b"bench:c0", 1);
        assert_eq!(parse(System::Floor, &reply), Ok(Some((reply.len(), Event::Ready))));
    }
}
