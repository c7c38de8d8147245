//! The client command decoder (`ringcast_proto::client::decode_command`) on arbitrary
//! text frames.
//!
//! Properties:
//! - it never panics, on valid UTF-8 and on what a lossy conversion makes of the rest;
//! - an error carries a code from `ErrorCode::ALL`, and one the decoder is documented to
//!   use; an echoed id is a valid command id; the `error` reply encodes to JSON that
//!   names the same code and id;
//! - a decoded command survives a round trip through a canonical encoding
//!   (decode -> encode -> decode -> encode is a fixed point), `publish` data verbatim;
//! - every decoded channel, key and limit obeys its validation rules, and the `message`
//!   push built from a decoded publish is JSON carrying the same channel and data;
//! - read as a MessagePack frame (`ringcast.msgpack`), the input either is refused or
//!   transcodes to JSON that goes through the same checks, and that JSON survives a
//!   round trip through MessagePack value for value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_core::{ChannelName, Epoch, Offset, StreamPosition};
use ringcast_proto::client::{
    decode_command, encode_error, encode_message, Command, Request, Since, MAX_COMMAND_ID, MAX_HISTORY_LIMIT,
};
use ringcast_proto::ErrorCode;
use serde::Serialize;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    // The session hands the decoder text frames only (tungstenite checks UTF-8; a bad
    // frame closes with 1007), so invalid UTF-8 is fed through the lossy conversion to
    // reach the decoder with the same shape of input.
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
    if let Ok(json) = ringcast_proto::msgpack::msgpack_to_json(data) {
        check(&json);
        let packed = ringcast_proto::msgpack::json_to_msgpack(&json)
            .unwrap_or_else(|e| panic!("transcoded JSON {json} does not encode back: {e}"));
        let again = ringcast_proto::msgpack::msgpack_to_json(&packed)
            .unwrap_or_else(|e| panic!("re-encoded {json} does not decode: {e}"));
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}")),
            serde_json::from_str(&again).unwrap_or_else(|e| panic!("{again}: {e}")),
        );
        assert_eq!(a, b, "MessagePack round trip");
    }
});

/// Codes `decode_command` may answer with (proto/client.md, "Errors").
const DECODER_CODES: [ErrorCode; 5] = [
    ErrorCode::BadRequest,
    ErrorCode::UnknownCommand,
    ErrorCode::InvalidChannel,
    ErrorCode::InvalidPosition,
    ErrorCode::InvalidIdempotencyKey,
];

fn check(text: &str) {
    match decode_command(text) {
        Err(e) => {
            assert!(ErrorCode::ALL.contains(&e.code), "code {:?} is not in ErrorCode::ALL", e.code);
            assert!(DECODER_CODES.contains(&e.code), "decoder answered {:?}", e.code);
            assert!(e.id.is_none_or(|id| id <= MAX_COMMAND_ID), "echoed id {:?} out of range", e.id);
            let reply: serde_json::Value = serde_json::from_str(&encode_error(e.id, e.code, &e.message))
                .unwrap_or_else(|err| panic!("error reply is not JSON: {err}"));
            assert_eq!(reply["type"], "error");
            assert_eq!(reply["error"]["code"], e.code.as_str());
            assert_eq!(reply.get("id").and_then(serde_json::Value::as_u64), e.id);
        }
        Ok(req) => {
            check_fields(&req);
            let once = encode(&req);
            let again = decode_command(&once).unwrap_or_else(|e| panic!("{once} does not decode again: {e:?}"));
            assert_eq!(encode(&again), once, "canonical encoding is not a fixed point");
            assert_eq!(again.id, req.id);
        }
    }
}

fn check_fields(req: &Request) {
    assert!(req.id <= MAX_COMMAND_ID);
    let channel_ok = |c: &ChannelName| {
        let back = ChannelName::new(c.as_str()).unwrap_or_else(|e| panic!("decoded channel {c} is invalid: {e}"));
        assert_eq!(&back, c);
    };
    match &req.command {
        Command::Subscribe { channel, .. }
        | Command::Unsubscribe { channel }
        | Command::Presence { channel }
        | Command::PresenceStats { channel }
        | Command::Typing { channel } => channel_ok(channel),
        Command::State { channel, key } => {
            channel_ok(channel);
            if let Some(k) = key {
                assert!(ringcast_core::latest::check_key(k).is_ok(), "an accepted state key is valid");
            }
        }
        Command::History { channel, limit, .. } => {
            channel_ok(channel);
            assert!((1..=MAX_HISTORY_LIMIT).contains(limit), "limit {limit}");
        }
        Command::Publish { channel, data, idempotency_key, key: state_key } => {
            channel_ok(channel);
            for key in [idempotency_key, state_key].into_iter().flatten() {
                assert!((1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()), "key {key:?}");
            }
            // The push frame every subscriber receives carries the data verbatim.
            let epoch = Epoch::new(1).unwrap_or_else(|| unreachable!("1 is a live epoch"));
            let push = encode_message(channel, StreamPosition { epoch, offset: Offset(1) }, data);
            let v: serde_json::Value = match serde_json::from_str(&push) {
                Ok(v) => v,
                // serde_json's Value refuses numbers beyond f64 that RawValue keeps; the
                // push is still the client's JSON, verbatim.
                Err(_) if serde_json::from_str::<serde_json::Value>(data.get()).is_err() => return,
                Err(e) => panic!("message push is not JSON: {e}: {push}"),
            };
            assert_eq!(v["channel"], channel.as_str());
            if let Ok(d) = serde_json::from_str::<serde_json::Value>(data.get()) {
                assert_eq!(v["data"], d);
            }
            assert!(push.contains(data.get()), "data is not spliced verbatim");
            // Deltas read the previous version back out of the frame.
            assert_eq!(ringcast_proto::client::message_data(&push), Some(data.get()));
        }
        Command::PSubscribe { pattern, since } => {
            let back = ringcast_core::Pattern::new(pattern.as_str()).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(&back, pattern);
            assert!(since.len() <= ringcast_proto::client::MAX_PATTERN_SINCE);
            for (channel, _) in since {
                channel_ok(channel);
                assert!(pattern.matches(channel), "a resumed channel {channel} matches {pattern}");
            }
        }
        Command::PUnsubscribe { pattern } => {
            assert!(ringcast_core::Pattern::new(pattern.as_str()).is_ok());
        }
        Command::Connect { .. } | Command::Refresh { .. } | Command::Ping => {}
    }
}

/// A canonical client frame for a decoded request (the protocol has no command encoder:
/// clients build these; this one follows proto/client.md).
#[derive(Serialize)]
struct Wire<'a> {
    id: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pattern: Option<&'a str>,
    /// A position, or for `psubscribe` an object of positions by channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<bool>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delta: bool,
}

#[derive(Serialize)]
struct SinceWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
    offset: u64,
}

fn encode(req: &Request) -> String {
    let mut w = Wire {
        id: req.id,
        kind: "ping",
        channel: None,
        pattern: None,
        token: None,
        since: None,
        data: None,
        idempotency_key: None,
        before: None,
        limit: None,
        key: None,
        snapshot: None,
        delta: false,
    };
    let position = |Since { epoch, offset }: Since| {
        serde_json::to_value(SinceWire { epoch: epoch.map(|e| e.to_string()), offset: offset.0 })
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let since_wire = |s: &Option<Since>| s.map(position);
    match &req.command {
        Command::Connect { token, since } => {
            w.kind = "connect";
            w.token = token.as_deref();
            w.since = since_wire(since);
        }
        Command::Refresh { token } => {
            w.kind = "refresh";
            w.token = Some(token);
        }
        Command::Subscribe { channel, since, snapshot, delta } => {
            w.kind = "subscribe";
            w.channel = Some(channel.as_str());
            w.since = since_wire(since);
            w.snapshot = *snapshot;
            w.delta = *delta;
        }
        Command::State { channel, key } => {
            w.kind = "state";
            w.channel = Some(channel.as_str());
            w.key = key.as_deref();
        }
        Command::Unsubscribe { channel } => {
            w.kind = "unsubscribe";
            w.channel = Some(channel.as_str());
        }
        Command::Publish { channel, data, idempotency_key, key } => {
            w.kind = "publish";
            w.channel = Some(channel.as_str());
            w.data = Some(data);
            w.idempotency_key = idempotency_key.as_deref();
            w.key = key.as_deref();
        }
        Command::Presence { channel } => {
            w.kind = "presence";
            w.channel = Some(channel.as_str());
        }
        Command::PresenceStats { channel } => {
            w.kind = "presence_stats";
            w.channel = Some(channel.as_str());
        }
        Command::Typing { channel } => {
            w.kind = "typing";
            w.channel = Some(channel.as_str());
        }
        Command::History { channel, before, limit } => {
            w.kind = "history";
            w.channel = Some(channel.as_str());
            w.before = before.map(|b| b.0);
            w.limit = Some(*limit);
        }
        Command::PSubscribe { pattern, since } => {
            w.kind = "psubscribe";
            w.pattern = Some(pattern.as_str());
            if !since.is_empty() {
                let map: serde_json::Map<String, serde_json::Value> =
                    since.iter().map(|(c, s)| (c.as_str().to_owned(), position(*s))).collect();
                w.since = Some(serde_json::Value::Object(map));
            }
        }
        Command::PUnsubscribe { pattern } => {
            w.kind = "punsubscribe";
            w.pattern = Some(pattern.as_str());
        }
        Command::Ping => {}
    }
    serde_json::to_string(&w).unwrap_or_else(|e| panic!("canonical frame does not encode: {e}"))
}
