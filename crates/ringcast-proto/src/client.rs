//! The client protocol: one JSON object per WebSocket text frame.
//!
//! [`decode_command`] turns a frame into a [`Request`] or a [`DecodeError`] that already
//! carries the client-visible code, message and (when it could be read) the command's
//! `id`, so the session can answer every bad frame precisely and keep going.
//!
//! The `encode_*` functions build server frames. A `message` push is encoded once per
//! publish and its bytes are shared by history, replay and every subscriber.

use crate::codes::ErrorCode;
use ringcast_core::dedup::MAX_IDEMPOTENCY_KEY_BYTES;
use ringcast_core::{ChannelName, Epoch, NotRecoveredReason, Offset, Pattern, StreamPosition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Largest command id (ids must survive a round trip through a JavaScript number).
pub const MAX_COMMAND_ID: u64 = (1 << 53) - 1;
/// Largest `limit` of a history request.
pub const MAX_HISTORY_LIMIT: u32 = 1000;
/// `limit` of a history request that gives none.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;

/// A decoded command with its id.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: u64,
    pub command: Command,
}

/// Where a resuming subscriber stands. `epoch` is `None` when the client sent an empty or
/// absent epoch: it cannot prove continuity, so recovery answers `epoch_changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    pub epoch: Option<Epoch>,
    pub offset: Offset,
}

/// Client commands. See `proto/client.md` for each one's reply.
#[derive(Debug, Clone)]
pub enum Command {
    /// `since`: where the client was in its registry channel `#user:{sub}` (direct
    /// messages), resumed like a `subscribe` with `since`.
    Connect {
        token: Option<String>,
        since: Option<Since>,
    },
    Refresh {
        token: String,
    },
    /// `snapshot`: with `Some(true)`, a keep-latest channel's state follows the reply
    /// even when resuming; `Some(false)` declines it on a fresh subscribe.
    Subscribe {
        channel: ChannelName,
        since: Option<Since>,
        snapshot: Option<bool>,
        /// Deltas: keyed messages may come as merge patches (`delta = true` namespaces).
        delta: bool,
    },
    /// A keep-latest channel's current state (all keys, or one).
    State {
        channel: ChannelName,
        key: Option<String>,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    /// A pattern subscription (`ringcast_core::pattern`): live messages of every
    /// matching channel; `since` resumes the listed channels like `subscribe` would.
    PSubscribe {
        pattern: Pattern,
        since: Vec<(ChannelName, Since)>,
    },
    PUnsubscribe {
        pattern: Pattern,
    },
    Publish {
        channel: ChannelName,
        data: Box<RawValue>,
        idempotency_key: Option<String>,
        /// The keep-latest key the message updates (`ringcast_core::latest`).
        key: Option<String>,
    },
    History {
        channel: ChannelName,
        before: Option<Offset>,
        limit: u32,
    },
    /// Who is in a presence channel (members and counts).
    Presence {
        channel: ChannelName,
    },
    /// Counts only (cheap for huge channels).
    PresenceStats {
        channel: ChannelName,
    },
    /// An ephemeral "user is typing" notice to the channel's subscribers.
    Typing {
        channel: ChannelName,
    },
    Ping,
}

/// A frame that could not be decoded, with what to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The command's id, when it could be read (errors then echo it).
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    id: u64,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default, borrow)]
    since: Option<&'a RawValue>,
    /// Present (even as `null`) is `Some`; absent is `None`.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    snapshot: Option<bool>,
    #[serde(default)]
    delta: Option<bool>,
    #[serde(default, borrow)]
    pattern: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSince<'a> {
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    offset: u64,
}

/// Deserialises a field that is present, whatever its value (serde maps `null` to `None`
/// for `Option` fields; publish data may legitimately be `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn err(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> DecodeError {
    DecodeError { id, code, message: message.into() }
}

/// Decodes one text frame.
pub fn decode_command(text: &str) -> Result<Request, DecodeError> {
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        // Echo the id if the frame at least has a readable, valid one.
        let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|r| r.id).filter(|&id| id <= MAX_COMMAND_ID);
        err(id, ErrorCode::BadRequest, format!("malformed command: {e}"))
    })?;
    let id = env.id;
    if id > MAX_COMMAND_ID {
        return Err(err(None, ErrorCode::BadRequest, format!("id must be at most {MAX_COMMAND_ID}")));
    }
    let some = Some(id);
    let channel = |c: &Option<Cow<'_, str>>| -> Result<ChannelName, DecodeError> {
        let raw = c
            .as_deref()
            .ok_or_else(|| err(some, ErrorCode::BadRequest, format!("`{}` needs a `channel`", env.kind)))?;
        let name =
            ChannelName::new(raw).map_err(|e| err(some, ErrorCode::InvalidChannel, format!("invalid channel: {e}")))?;
        if name.is_reserved() {
            // The server subscribes a connection to its own registry channel.
            return Err(err(
                some,
                ErrorCode::InvalidChannel,
                "invalid channel: namespaces starting with '#' are reserved for the server",
            ));
        }
        Ok(name)
    };
    let pattern = |p: &Option<Cow<'_, str>>| -> Result<Pattern, DecodeError> {
        let raw = p
            .as_deref()
            .ok_or_else(|| err(some, ErrorCode::BadRequest, format!("`{}` needs a `pattern`", env.kind)))?;
        Pattern::new(raw).map_err(|e| err(some, ErrorCode::InvalidChannel, format!("invalid pattern: {e}")))
    };
    let command = match env.kind.as_ref() {
        "connect" => {
            Command::Connect { token: env.token, since: env.since.map(|raw| decode_since(raw, id)).transpose()? }
        }
        "refresh" => Command::Refresh {
            token: env.token.ok_or_else(|| err(some, ErrorCode::BadRequest, "`refresh` needs a `token`"))?,
        },
        "subscribe" => Command::Subscribe {
            channel: channel(&env.channel)?,
            since: env.since.map(|raw| decode_since(raw, id)).transpose()?,
            snapshot: env.snapshot,
            delta: env.delta.unwrap_or(false),
        },
        "state" => {
            if let Some(key) = &env.key {
                ringcast_core::latest::check_key(key).map_err(|m| err(some, ErrorCode::BadRequest, m))?;
            }
            Command::State { channel: channel(&env.channel)?, key: env.key }
        }
        "unsubscribe" => Command::Unsubscribe { channel: channel(&env.channel)? },
        "psubscribe" => {
            let pattern = pattern(&env.pattern)?;
            let since = env.since.map(|raw| decode_pattern_since(raw, &pattern, id)).transpose()?;
            Command::PSubscribe { pattern, since: since.unwrap_or_default() }
        }
        "punsubscribe" => Command::PUnsubscribe { pattern: pattern(&env.pattern)? },
        "publish" => {
            let channel = channel(&env.channel)?;
            let data = env.data.ok_or_else(|| err(some, ErrorCode::BadRequest, "`publish` needs `data`"))?;
            if let Some(key) = &env.idempotency_key {
                check_idempotency_key(key).map_err(|m| err(some, ErrorCode::InvalidIdempotencyKey, m))?;
            }
            if let Some(key) = &env.key {
                ringcast_core::latest::check_key(key).map_err(|m| err(some, ErrorCode::BadRequest, m))?;
            }
            Command::Publish { channel, data, idempotency_key: env.idempotency_key, key: env.key }
        }
        "history" => Command::History {
            channel: channel(&env.channel)?,
            before: env.before.map(Offset),
            limit: check_history_limit(env.limit).map_err(|m| err(some, ErrorCode::BadRequest, m))?,
        },
        "presence" => Command::Presence { channel: channel(&env.channel)? },
        "presence_stats" => Command::PresenceStats { channel: channel(&env.channel)? },
        "typing" => Command::Typing { channel: channel(&env.channel)? },
        "ping" => Command::Ping,
        other => {
            return Err(err(
                some,
                ErrorCode::UnknownCommand,
                format!("unknown command type {other:?}; see proto/client.md"),
            ))
        }
    };
    Ok(Request { id, command })
}

fn decode_since(raw: &RawValue, id: u64) -> Result<Since, DecodeError> {
    let bad = |m: String| err(Some(id), ErrorCode::InvalidPosition, m);
    let s: RawSince<'_> = serde_json::from_str(raw.get())
        .map_err(|e| bad(format!("`since` must be {{\"epoch\": \"<decimal>\", \"offset\": <0..2^64>}}: {e}")))?;
    let epoch = match s.epoch.as_deref() {
        None | Some("") => None,
        Some(e) => Some(e.parse::<Epoch>().map_err(|e| bad(format!("`since.epoch`: {e}")))?),
    };
    Ok(Since { epoch, offset: Offset(s.offset) })
}

/// Channels a `psubscribe` may resume at once.
pub const MAX_PATTERN_SINCE: usize = 1000;

/// A `psubscribe`'s `since`: an object from channel names the pattern matches to
/// positions (`{"scores:nba:g1": {"epoch": "..", "offset": 41}}`).
fn decode_pattern_since(raw: &RawValue, pattern: &Pattern, id: u64) -> Result<Vec<(ChannelName, Since)>, DecodeError> {
    let bad = |code, m: String| err(Some(id), code, m);
    let map: std::collections::BTreeMap<Cow<'_, str>, &RawValue> = serde_json::from_str(raw.get())
        .map_err(|e| bad(ErrorCode::InvalidPosition, format!("`since` must map channel names to positions: {e}")))?;
    if map.len() > MAX_PATTERN_SINCE {
        return Err(bad(ErrorCode::BadRequest, format!("`since` lists at most {MAX_PATTERN_SINCE} channels")));
    }
    map.into_iter()
        .map(|(name, pos)| {
            let channel = ChannelName::new(&name)
                .map_err(|e| bad(ErrorCode::InvalidChannel, format!("`since`: invalid channel {name:?}: {e}")))?;
            if !pattern.matches(&channel) {
                return Err(bad(ErrorCode::InvalidChannel, format!("`since`: {channel} does not match {pattern}")));
            }
            Ok((channel, decode_since(pos, id)?))
        })
        .collect()
}

/// Idempotency keys: 1..=128 bytes of printable ASCII.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("idempotency_key must be 1..={MAX_IDEMPOTENCY_KEY_BYTES} bytes of printable ASCII"));
    }
    Ok(())
}

/// History limits: 1..=1000, default 100.
pub fn check_history_limit(limit: Option<u32>) -> Result<u32, String> {
    match limit {
        None => Ok(DEFAULT_HISTORY_LIMIT),
        Some(l) if (1..=MAX_HISTORY_LIMIT).contains(&l) => Ok(l),
        Some(l) => Err(format!("limit {l} is outside 1..={MAX_HISTORY_LIMIT}")),
    }
}

// ---------------------------------------------------------------------------------------
// Server frames.

/// A `message` push: whole (`data`) or, in `delta` namespaces, as a merge patch
/// against the key's message at `base` (`base` and `patch`).
#[derive(Serialize)]
struct MessagePush<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    epoch: Epoch,
    offset: Offset,
    /// Keep-latest key; the empty key (a channel's single latest message) is not shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<Offset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<&'a serde_json::Value>,
}

impl<'a> MessagePush<'a> {
    fn new(channel: &'a ChannelName, position: StreamPosition, key: Option<&'a str>) -> MessagePush<'a> {
        MessagePush {
            kind: "message",
            channel: channel.as_str(),
            epoch: position.epoch,
            offset: position.offset,
            key: key.filter(|k| !k.is_empty()),
            data: None,
            base: None,
            patch: None,
        }
    }
}

/// The `message` push for one sequenced publish. Encoded once, shared by every reader.
#[must_use]
pub fn encode_message(channel: &ChannelName, position: StreamPosition, data: &RawValue) -> String {
    encode_keyed_message(channel, position, None, data)
}

/// [`encode_message`] of a publish that named a keep-latest `key` (shown in the frame).
#[must_use]
pub fn encode_keyed_message(
    channel: &ChannelName,
    position: StreamPosition,
    key: Option<&str>,
    data: &RawValue,
) -> String {
    to_json(&MessagePush { data: Some(data), ..MessagePush::new(channel, position, key) })
}

/// A keyed `message` as a delta: `patch` (an RFC 7396 merge patch) turns the data of the
/// message at `base` (same channel, epoch and key) into this message's data. The empty
/// key (a keep-latest channel's single latest message) is not shown, as in full frames.
#[must_use]
pub fn encode_delta_message(
    channel: &ChannelName,
    position: StreamPosition,
    key: &str,
    base: Offset,
    patch: &serde_json::Value,
) -> String {
    to_json(&MessagePush { base: Some(base), patch: Some(patch), ..MessagePush::new(channel, position, Some(key)) })
}

/// The `data` of an encoded full `message` frame (read without parsing the frame: the
/// encoder writes `data` last, and nothing before it can contain `,"data":`).
#[must_use]
pub fn message_data(frame: &str) -> Option<&str> {
    let at = frame.find(",\"data\":")? + ",\"data\":".len();
    frame.get(at..frame.len().checked_sub(1)?)
}

/// The `key` of an encoded `message` frame, if it has one (read without parsing: the
/// encoder writes `key` right after `offset`, and keys need no escaping).
#[must_use]
pub fn message_key(frame: &str) -> Option<&str> {
    let at = frame.find(",\"key\":\"")? + ",\"key\":\"".len();
    let data = frame.find(",\"data\":")?;
    if at > data {
        return None;
    }
    let end = frame[at..].find('"')?;
    Some(&frame[at..at + end])
}

/// A keep-latest channel's state at `top`: `entries` are `message` frames (the newest
/// per key, in offset order). As a push (`id: None`), the `snapshot` that follows a
/// `subscribed` reply; with `http`, the body of `GET /v1/channels/{channel}/state`.
#[must_use]
pub fn encode_snapshot<M: AsRef<str>>(channel: &ChannelName, top: StreamPosition, entries: &[M], http: bool) -> String {
    encode_state_frame(None, (!http).then_some("snapshot"), channel, Some(top), entries)
}

/// The reply to a `state` command: the channel's keep-latest state (all keys, or the one
/// asked for) at (`epoch`, `offset`); `epoch` is `null` and `entries` empty for a channel
/// with no stream.
#[must_use]
pub fn encode_state_reply<M: AsRef<str>>(
    id: u64,
    channel: &ChannelName,
    top: Option<StreamPosition>,
    entries: &[M],
) -> String {
    encode_state_frame(Some(id), Some("state"), channel, top, entries)
}

fn encode_state_frame<M: AsRef<str>>(
    id: Option<u64>,
    kind: Option<&'static str>,
    channel: &ChannelName,
    top: Option<StreamPosition>,
    entries: &[M],
) -> String {
    #[derive(Serialize)]
    struct Head<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        kind: Option<&'static str>,
        channel: &'a str,
        epoch: Option<Epoch>,
        offset: Offset,
    }
    let head = to_json(&Head {
        id,
        kind,
        channel: channel.as_str(),
        epoch: top.map(|t| t.epoch),
        offset: top.map_or(Offset::ZERO, |t| t.offset),
    });
    let body_len: usize = entries.iter().map(|m| m.as_ref().len() + 1).sum();
    let mut out = String::with_capacity(head.len() + body_len + 16);
    out.push_str(head.strip_suffix('}').unwrap_or(&head));
    out.push_str(",\"entries\":[");
    for (i, m) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(m.as_ref());
    }
    out.push_str("]}");
    out
}

#[derive(Serialize)]
struct GapPush<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    epoch: Epoch,
    from: Offset,
    to: Offset,
    reason: &'static str,
}

/// Why messages were skipped, in a `gap` push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The connection's send queue was full and its namespace drops messages.
    SlowConsumer,
    /// The node lost the messages on their way from the channel's owner and the owner's
    /// history no longer holds them.
    Unavailable,
    /// `keep_latest`: a newer message for the same key replaced each of them in the
    /// connection's queue.
    Conflated,
}

impl GapReason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::SlowConsumer => "slow_consumer",
            GapReason::Unavailable => "unavailable",
            GapReason::Conflated => "conflated",
        }
    }
}

/// The `gap` push: offsets `from..=to` of `channel` in `epoch` were not delivered.
#[must_use]
pub fn encode_gap(channel: &ChannelName, epoch: Epoch, from: Offset, to: Offset, reason: GapReason) -> String {
    to_json(&GapPush { kind: "gap", channel: channel.as_str(), epoch, from, to, reason: reason.as_str() })
}

/// Fields of a `connected` reply.
#[derive(Debug, Serialize)]
pub struct Connected<'a> {
    /// Connection id, unique on this node.
    pub client: String,
    pub node: &'a str,
    /// `sub` of the token; absent for anonymous connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// Token expiry (unix seconds); absent when the token does not expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The user's registry channel (`#user:{sub}`) the server subscribes this
    /// connection to; a `subscribed` push (or an `error` push) for it follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_channel: Option<&'a str>,
    pub ping_interval_ms: u64,
    pub version: &'a str,
}

/// The outcome of `subscribe`, as sent in the `subscribed` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// No `since` was given: live messages from `position` on.
    Fresh,
    /// `since` was honoured: `replayed` messages follow this reply, then live ones.
    Recovered { replayed: usize },
    /// `since` could not be honoured; history holds `oldest..=newest`.
    NotRecovered { reason: NotRecoveredReason, oldest: Offset, newest: Offset },
}

#[derive(Serialize)]
struct Reply<'a, T: Serialize> {
    id: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: T,
    #[serde(skip)]
    _p: std::marker::PhantomData<&'a ()>,
}

fn reply<T: Serialize>(id: u64, kind: &'static str, body: T) -> String {
    to_json(&Reply { id, kind, body, _p: std::marker::PhantomData })
}

/// A reply to command `id`, or with `None` the same frame as a push (no `id`).
fn reply_or_push<T: Serialize>(id: Option<u64>, kind: &'static str, body: T) -> String {
    #[derive(Serialize)]
    struct Push<T: Serialize> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        body: T,
    }
    match id {
        Some(id) => reply(id, kind, body),
        None => to_json(&Push { kind, body }),
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Invariant: these types serialise to JSON without fail (no maps with non-string
    // keys, no failing Serialize impls); an empty object is a safe fallback.
    serde_json::to_string(v).unwrap_or_else(|_| String::from("{}"))
}

#[must_use]
pub fn encode_connected(id: u64, c: &Connected<'_>) -> String {
    reply(id, "connected", c)
}

#[must_use]
/// The `subscribed` reply to command `id`; without an id, the push that reports the
/// server's own subscription of a connection to its registry channel (`#user:{sub}`).
pub fn encode_subscribed(
    id: Option<u64>,
    channel: &ChannelName,
    top: StreamPosition,
    outcome: SubscribeOutcome,
) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
        epoch: Epoch,
        offset: Offset,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        replayed: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        oldest: Option<Offset>,
        #[serde(skip_serializing_if = "Option::is_none")]
        newest: Option<Offset>,
    }
    let mut b = Body {
        channel: channel.as_str(),
        epoch: top.epoch,
        offset: top.offset,
        recovered: None,
        replayed: None,
        reason: None,
        oldest: None,
        newest: None,
    };
    match outcome {
        SubscribeOutcome::Fresh => {}
        SubscribeOutcome::Recovered { replayed } => {
            b.recovered = Some(true);
            b.replayed = Some(replayed);
        }
        SubscribeOutcome::NotRecovered { reason, oldest, newest } => {
            b.recovered = Some(false);
            b.reason = Some(reason.as_str());
            b.oldest = Some(oldest);
            b.newest = Some(newest);
        }
    }
    reply_or_push(id, "subscribed", b)
}

/// The `resubscribed` push: a live subscription's stream restarted in a new epoch (its
/// state was lost: a crash without a surviving copy), so continuity cannot be proved.
/// Same fields as a `subscribed` reply with `recovered: false`, without an `id`.
#[must_use]
pub fn encode_resubscribed(channel: &ChannelName, top: StreamPosition, oldest: Offset, newest: Offset) -> String {
    #[derive(Serialize)]
    struct Push<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        epoch: Epoch,
        offset: Offset,
        recovered: bool,
        reason: &'static str,
        oldest: Offset,
        newest: Offset,
    }
    to_json(&Push {
        kind: "resubscribed",
        channel: channel.as_str(),
        epoch: top.epoch,
        offset: top.offset,
        recovered: false,
        reason: ringcast_core::NotRecoveredReason::EpochChanged.as_str(),
        oldest,
        newest,
    })
}

/// The `psubscribed` reply: the pattern is live on every node (messages sequenced from
/// now on reach the client). It follows the pushes for the `resuming` channels of its
/// `since`: each a `subscribed` push (and its replay) or an `error` push naming it.
#[must_use]
pub fn encode_psubscribed(id: u64, pattern: &Pattern, resuming: usize) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        pattern: &'a str,
        resuming: usize,
    }
    reply(id, "psubscribed", Body { pattern: pattern.as_str(), resuming })
}

#[must_use]
pub fn encode_punsubscribed(id: u64, pattern: &Pattern) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        pattern: &'a str,
    }
    reply(id, "punsubscribed", Body { pattern: pattern.as_str() })
}

#[must_use]
pub fn encode_unsubscribed(id: u64, channel: &ChannelName) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
    }
    reply(id, "unsubscribed", Body { channel: channel.as_str() })
}

/// The body of a publish acknowledgement (WebSocket `ack` and HTTP publish).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ack<'a> {
    pub channel: &'a str,
    pub epoch: Epoch,
    pub offset: Offset,
    /// True when this ack repeats an earlier one for the same idempotency key.
    pub duplicate: bool,
}

#[must_use]
pub fn encode_ack(id: u64, ack: &Ack<'_>) -> String {
    reply(id, "ack", ack)
}

/// A page of history. `messages` are `message` push frames, oldest first. `epoch` is
/// `None` for a channel with no stream (nothing published, or all of it forgotten).
#[derive(Debug)]
pub struct HistoryReply<'a, M> {
    pub channel: &'a str,
    pub epoch: Option<Epoch>,
    pub oldest: Offset,
    pub newest: Offset,
    pub next_before: Option<Offset>,
    pub messages: &'a [M],
}

/// Encodes a page of history whose messages are already-encoded push frames.
/// With `id`, a WebSocket `history` reply; without, the HTTP response body.
#[must_use]
pub fn encode_history<M: AsRef<str>>(id: Option<u64>, h: &HistoryReply<'_, M>) -> String {
    #[derive(Serialize)]
    struct Head<'a> {
        channel: &'a str,
        epoch: Option<Epoch>,
        oldest: Offset,
        newest: Offset,
        next_before: Option<Offset>,
    }
    let head =
        Head { channel: h.channel, epoch: h.epoch, oldest: h.oldest, newest: h.newest, next_before: h.next_before };
    let head = match id {
        Some(id) => reply(id, "history", head),
        None => to_json(&head),
    };
    // Splice the pre-encoded messages in without re-parsing them.
    let body_len: usize = h.messages.iter().map(|m| m.as_ref().len() + 1).sum();
    let mut out = String::with_capacity(head.len() + body_len + 16);
    out.push_str(head.strip_suffix('}').unwrap_or(&head));
    out.push_str(",\"messages\":[");
    for (i, m) in h.messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(m.as_ref());
    }
    out.push_str("]}");
    out
}

/// One client in a `presence` reply (and the HTTP presence body).
#[derive(Debug, Serialize)]
pub struct PresenceMember<'a> {
    /// The connection id, unique on its node.
    pub client: String,
    pub node: &'a str,
    /// The token's `sub`; empty for an anonymous client.
    pub user: &'a str,
    /// The token's `info` claim, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

/// A channel's presence: counts and up to a page of members.
#[derive(Debug, Serialize)]
pub struct PresenceReply<'a> {
    pub channel: &'a str,
    /// Subscribed clients, anonymous ones included.
    pub clients: u64,
    /// Distinct users with at least one client.
    pub users: u64,
    pub members: Vec<PresenceMember<'a>>,
    /// True when `members` holds only the first [`MAX_PRESENCE_MEMBERS`] clients.
    pub truncated: bool,
}

/// Most members one `presence` answer lists; `presence_stats` counts them all.
pub const MAX_PRESENCE_MEMBERS: usize = 1000;

/// With `id`, the WebSocket `presence` reply; without, the HTTP body.
#[must_use]
pub fn encode_presence(id: Option<u64>, p: &PresenceReply<'_>) -> String {
    match id {
        Some(id) => reply(id, "presence", p),
        None => to_json(p),
    }
}

/// Counts of a channel's presence.
#[derive(Debug, Serialize)]
pub struct PresenceStatsReply<'a> {
    pub channel: &'a str,
    pub clients: u64,
    pub users: u64,
}

#[must_use]
pub fn encode_presence_stats(id: u64, p: &PresenceStatsReply<'_>) -> String {
    reply(id, "presence_stats", p)
}

/// The reply to `typing`: the notice went to the channel's owner (which drops it when
/// the user typed less than a second ago).
#[must_use]
pub fn encode_typing_sent(id: u64, channel: &ChannelName) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
    }
    reply(id, "typing_sent", Body { channel: channel.as_str() })
}

/// Which ephemeral push an [`encode_ephemeral`] frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EphemeralKind {
    Join,
    Leave,
    Typing,
}

impl EphemeralKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EphemeralKind::Join => "join",
            EphemeralKind::Leave => "leave",
            EphemeralKind::Typing => "typing",
        }
    }
}

/// A `join`, `leave` or `typing` push: no position, never stored or replayed. `info`
/// is the user's token `info` claim (JSON text), when it has one.
#[must_use]
pub fn encode_ephemeral(kind: EphemeralKind, channel: &ChannelName, user: &str, info: Option<&RawValue>) -> String {
    #[derive(Serialize)]
    struct Push<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        user: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a RawValue>,
    }
    to_json(&Push { kind: kind.as_str(), channel: channel.as_str(), user, info })
}

#[must_use]
pub fn encode_refreshed(id: u64, expires_at: Option<u64>) -> String {
    #[derive(Serialize)]
    struct Body {
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    }
    reply(id, "refreshed", Body { expires_at })
}

/// The `expiring` push: the session's token expires at `expires_at` (UNIX seconds), in
/// `in_ms`; send `refresh` with a new token before then or the session closes with 4002.
#[must_use]
pub fn encode_expiring(expires_at: u64, in_ms: u64) -> String {
    #[derive(Serialize)]
    struct Push {
        #[serde(rename = "type")]
        kind: &'static str,
        expires_at: u64,
        in_ms: u64,
    }
    to_json(&Push { kind: "expiring", expires_at, in_ms })
}

#[must_use]
pub fn encode_pong(id: u64) -> String {
    #[derive(Serialize)]
    struct Body {}
    reply(id, "pong", Body {})
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

/// An `error` reply. `id` is absent when the frame's id could not be read.
#[must_use]
pub fn encode_error(id: Option<u64>, code: ErrorCode, message: &str) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(rename = "type")]
        kind: &'static str,
        error: ErrorBody<'a>,
    }
    to_json(&Frame { id, kind: "error", error: ErrorBody { code: code.as_str(), message } })
}

/// The HTTP API's error body: `{"error": {"code", "message"}}`.
#[must_use]
pub fn encode_http_error(code: ErrorCode, message: &str) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        error: ErrorBody<'a>,
    }
    to_json(&Frame { error: ErrorBody { code: code.as_str(), message } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_of_a_message_frame_is_read_without_parsing() {
        let c = ChannelName::new("scores:k").unwrap_or_else(|e| panic!("{e}"));
        let at = StreamPosition { epoch: Epoch::new(3).unwrap_or_else(|| unreachable!()), offset: Offset(9) };
        let data = RawValue::from_string(r#"{"key":"not-this","s":1}"#.into()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(message_key(&encode_keyed_message(&c, at, Some("game-7"), &data)), Some("game-7"));
        assert_eq!(message_key(&encode_message(&c, at, &data)), None, "a key inside data is not the frame's");
        assert_eq!(message_data(&encode_keyed_message(&c, at, Some("game-7"), &data)), Some(data.get()));
        let nested =
            RawValue::from_string(r#"{"x":{"data":1},"y":",\"data\":"}"#.into()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(message_data(&encode_message(&c, at, &nested)), Some(nested.get()));
    }

    #[test]
    fn a_delta_frame_names_its_base_and_carries_the_patch() {
        let c = ChannelName::new("scores:k").unwrap_or_else(|e| panic!("{e}"));
        let at = StreamPosition { epoch: Epoch::new(3).unwrap_or_else(|| unreachable!()), offset: Offset(9) };
        let patch = serde_json::json!({"home": 3});
        let f = encode_delta_message(&c, at, "game-7", Offset(4), &patch);
        assert_eq!(
            f,
            r#"{"type":"message","channel":"scores:k","epoch":"3","offset":9,"key":"game-7","base":4,"patch":{"home":3}}"#
        );
        assert_eq!(message_key(&f), None, "a delta frame has no data; its key is passed along, not read back");
    }

    fn dec(s: &str) -> Result<Request, DecodeError> {
        decode_command(s)
    }

    fn code(s: &str) -> (Option<u64>, ErrorCode) {
        match dec(s) {
            Err(e) => (e.id, e.code),
            Ok(r) => panic!("{s} decoded to {r:?}"),
        }
    }

    #[test]
    fn each_bad_frame_gets_its_code_and_keeps_the_id_when_readable() {
        assert_eq!(code("not json"), (None, ErrorCode::BadRequest));
        assert_eq!(code("[]"), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"ping"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"id":"1","type":"ping"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"id":-1,"type":"ping"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"id":9007199254740992,"type":"ping"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"id":3,"type":"fly"}"#), (Some(3), ErrorCode::UnknownCommand));
        assert_eq!(code(r#"{"id":3,"type":"ping","extra":1}"#), (Some(3), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"id":4,"type":"subscribe"}"#), (Some(4), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"id":4,"type":"subscribe","channel":"a b"}"#), (Some(4), ErrorCode::InvalidChannel));
        assert_eq!(code(r#"{"id":4,"type":"subscribe","channel":7}"#), (Some(4), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"id":5,"type":"publish","channel":"c"}"#), (Some(5), ErrorCode::BadRequest));
        assert_eq!(
            code(r#"{"id":5,"type":"publish","channel":"c","data":1,"idempotency_key":""}"#),
            (Some(5), ErrorCode::InvalidIdempotencyKey)
        );
        let long = "k".repeat(129);
        assert_eq!(
            code(&format!(r#"{{"id":5,"type":"publish","channel":"c","data":1,"idempotency_key":"{long}"}}"#)),
            (Some(5), ErrorCode::InvalidIdempotencyKey)
        );
        assert_eq!(code(r#"{"id":6,"type":"history","channel":"c","limit":0}"#), (Some(6), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"id":6,"type":"refresh"}"#), (Some(6), ErrorCode::BadRequest));
    }

    #[test]
    fn an_id_above_the_limit_is_not_echoed_from_a_malformed_frame() {
        // Found by the client_command fuzz target (fuzz/regressions/client_command/).
        assert_eq!(code("{\"id\":9007199254740992,\"dype\":\"ping\"}\n"), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"id":9007199254740991,"dype":"ping"}"#), (Some(MAX_COMMAND_ID), ErrorCode::BadRequest));
    }

    #[test]
    fn since_positions_are_checked() {
        let sub = |since: &str| dec(&format!(r#"{{"id":1,"type":"subscribe","channel":"c","since":{since}}}"#));
        let ok = |since: &str| match sub(since) {
            Ok(Request { command: Command::Subscribe { since: Some(s), .. }, .. }) => s,
            other => panic!("{since}: {other:?}"),
        };
        assert_eq!(ok(r#"{"epoch":"9","offset":3}"#), Since { epoch: Epoch::new(9), offset: Offset(3) });
        assert_eq!(ok(r#"{"epoch":"","offset":3}"#), Since { epoch: None, offset: Offset(3) });
        assert_eq!(ok(r#"{"offset":18446744073709551615}"#), Since { epoch: None, offset: Offset(u64::MAX) });
        for bad in [
            r#"{"epoch":"9","offset":-1}"#,
            r#"{"epoch":"9","offset":18446744073709551616}"#,
            r#"{"epoch":"x","offset":1}"#,
            r#"{"epoch":9,"offset":1}"#,
            r#"{"epoch":"9"}"#,
            r#"{"epoch":"9","offset":1,"x":1}"#,
            r#""9:1""#,
        ] {
            assert_eq!(sub(bad).err().map(|e| e.code), Some(ErrorCode::InvalidPosition), "{bad}");
        }
    }

    #[test]
    fn null_data_is_data() {
        match dec(r#"{"id":2,"type":"publish","channel":"c","data":null}"#) {
            Ok(Request { command: Command::Publish { data, .. }, .. }) => assert_eq!(data.get(), "null"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_keeps_data_verbatim() {
        let r = dec(r#"{"id":2,"type":"publish","channel":"chat:x","data":{"b":[1, 2],"a":"\u00e9"}}"#);
        match r {
            Ok(Request { id: 2, command: Command::Publish { data, .. } }) => {
                assert_eq!(data.get(), r#"{"b":[1, 2],"a":"\u00e9"}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn history_splices_encoded_messages() {
        let e = Epoch::new(5).unwrap_or_else(|| unreachable!());
        let c = ChannelName::new("c").unwrap_or_else(|e| panic!("{e}"));
        let data = RawValue::from_string("1".into()).unwrap_or_else(|e| panic!("{e}"));
        let m = encode_message(&c, StreamPosition { epoch: e, offset: Offset(1) }, &data);
        let h = HistoryReply {
            channel: "c",
            epoch: Some(e),
            oldest: Offset(1),
            newest: Offset(1),
            next_before: None,
            messages: &[m],
        };
        let v: serde_json::Value = serde_json::from_str(&encode_history(Some(9), &h)).unwrap_or_default();
        assert_eq!(v["id"], 9);
        assert_eq!(v["messages"][0]["offset"], 1);
        assert_eq!(v["messages"][0]["epoch"], "5");
        let v: serde_json::Value =
            serde_json::from_str(&encode_history::<String>(None, &HistoryReply { messages: &[], ..h }))
                .unwrap_or_default();
        assert_eq!(v["messages"], serde_json::json!([]));
        assert!(v.get("id").is_none());
    }
}
