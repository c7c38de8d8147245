//! Golden client frames under `proto/golden/client/`, checked in both directions.
//!
//! - `commands/*.json`: frames a client may send. Each must decode, as the command named
//!   by the file name's prefix (`subscribe_since.json` is a `subscribe`).
//! - `invalid/*.json`: frames that must be refused, with the code and echoed id listed
//!   in `invalid/expected.json`.
//! - `server/*.json`: frames the server sends. Each is rebuilt here with the matching
//!   `encode_*` function and compared as JSON values, so the files show exactly what the
//!   encoder produces and the encoder cannot drift from the files.
//! - `msgpack/{commands,server}/*.msgpack`: each of those frames in the MessagePack
//!   encoding (`ringcast.msgpack`): a command twin decodes to the same command, a server
//!   twin holds the same value (`RINGCAST_GOLDEN_BLESS=1` rewrites them).
//!
//! Adding a golden file without teaching this test about it (or the reverse) fails.

use ringcast_core::{ChannelName, Epoch, NotRecoveredReason, Offset, Pattern, StreamPosition};
use ringcast_proto::client::{
    decode_command, encode_ack, encode_connected, encode_delta_message, encode_ephemeral, encode_error,
    encode_expiring, encode_gap, encode_history, encode_keyed_message, encode_message, encode_pong, encode_presence,
    encode_presence_stats, encode_psubscribed, encode_punsubscribed, encode_refreshed, encode_resubscribed,
    encode_snapshot, encode_state_reply, encode_subscribed, encode_typing_sent, encode_unsubscribed, Ack, Command,
    Connected, EphemeralKind, GapReason, HistoryReply, PresenceMember, PresenceReply, PresenceStatsReply, Request,
    SubscribeOutcome, DEFAULT_HISTORY_LIMIT,
};
use ringcast_proto::msgpack::{json_to_msgpack, msgpack_to_json};
use ringcast_proto::ErrorCode;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The expectations file inside `invalid/`; every other file there is a frame.
const EXPECTED_FILE: &str = "expected.json";

fn golden_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/golden/client").join(sub)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(file name, contents)` of every `*.json` file in `dir`, sorted; panics when none.
fn json_files(sub: &str) -> Vec<(String, String)> {
    let dir = golden_dir(sub);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<(String, String)> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_else(|| panic!("{}: file name is not UTF-8", p.display()))
                .to_owned();
            let text = read(&p);
            (name, text)
        })
        .collect();
    files.sort();
    assert!(
        files.iter().any(|(name, _)| name != EXPECTED_FILE),
        "{}: no golden *.json frames found (wrong directory, or the files were deleted)",
        dir.display()
    );
    files
}

fn stem(name: &str) -> &str {
    name.strip_suffix(".json").unwrap_or(name)
}

fn kind(command: &Command) -> &'static str {
    match command {
        Command::Connect { .. } => "connect",
        Command::Refresh { .. } => "refresh",
        Command::Subscribe { .. } => "subscribe",
        Command::Unsubscribe { .. } => "unsubscribe",
        Command::Publish { .. } => "publish",
        Command::History { .. } => "history",
        Command::Presence { .. } => "presence",
        Command::PresenceStats { .. } => "presence_stats",
        Command::Typing { .. } => "typing",
        Command::State { .. } => "state",
        Command::PSubscribe { .. } => "psubscribe",
        Command::PUnsubscribe { .. } => "punsubscribe",
        Command::Ping => "ping",
    }
}

/// What the variant files add to their command beyond its kind.
fn check_variant(name: &str, request: &Request) {
    let ok = match (stem(name), &request.command) {
        ("connect", Command::Connect { token, since }) => token.is_some() && since.is_none(),
        ("connect_anonymous", Command::Connect { token, .. }) => token.is_none(),
        ("connect_since", Command::Connect { token, since }) => token.is_some() && since.is_some(),
        ("subscribe", Command::Subscribe { since, .. }) => since.is_none(),
        ("subscribe_since", Command::Subscribe { since, .. }) => since.is_some_and(|s| s.epoch.is_some()),
        ("subscribe_since_no_epoch", Command::Subscribe { since, .. }) => since.is_some_and(|s| s.epoch.is_none()),
        ("publish", Command::Publish { idempotency_key, key, .. }) => idempotency_key.is_none() && key.is_none(),
        ("publish_keyed", Command::Publish { key, .. }) => key.as_deref() == Some("game-17"),
        ("subscribe_snapshot", Command::Subscribe { since, snapshot, .. }) => {
            since.is_some() && *snapshot == Some(true)
        }
        ("subscribe_delta", Command::Subscribe { delta, snapshot, .. }) => *delta && snapshot.is_none(),
        ("state", Command::State { key, .. }) => key.is_none(),
        ("psubscribe", Command::PSubscribe { since, .. }) => since.is_empty(),
        ("psubscribe_since", Command::PSubscribe { pattern, since }) => {
            pattern.as_str() == "scores:>"
                && since.len() == 2
                && since.iter().all(|(c, s)| pattern.matches(c) && s.epoch.is_some())
        }
        ("state_key", Command::State { key, .. }) => key.as_deref() == Some("game-18"),
        ("publish_idempotent", Command::Publish { idempotency_key, .. }) => idempotency_key.is_some(),
        ("history", Command::History { before, limit, .. }) => before.is_none() && *limit == DEFAULT_HISTORY_LIMIT,
        ("history_page", Command::History { before, limit, .. }) => before.is_some() && *limit != DEFAULT_HISTORY_LIMIT,
        _ => true,
    };
    assert!(ok, "commands/{name} decoded to {request:?}, which is not what its name promises");
}

#[test]
fn every_command_golden_decodes_as_its_named_kind() {
    for (name, text) in json_files("commands") {
        let request = decode_command(&text)
            .unwrap_or_else(|e| panic!("commands/{name} must decode but was refused: {e:?}\n{text}"));
        // The file name is the command's kind, optionally followed by `_variant`.
        let prefix = kind(&request.command);
        let named = stem(&name) == prefix || stem(&name).starts_with(&format!("{prefix}_"));
        assert!(named, "commands/{name}: decoded as {prefix}, which the file name does not start with");
        let frame: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("commands/{name}: {e}"));
        assert_eq!(frame["type"], prefix, "commands/{name}: `type` field vs decoded kind");
        assert_eq!(frame["id"].as_u64(), Some(request.id), "commands/{name}: decoded id");
        check_variant(&name, &request);
    }
}

#[test]
fn every_invalid_golden_is_refused_with_its_code_and_id() {
    let files = json_files("invalid");
    let expected_path = golden_dir("invalid").join(EXPECTED_FILE);
    let expected: BTreeMap<String, Value> =
        serde_json::from_str(&read(&expected_path)).unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
    let frames: BTreeSet<&str> =
        files.iter().map(|(name, _)| name.as_str()).filter(|name| *name != EXPECTED_FILE).collect();
    let listed: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(frames, listed, "invalid/ frames vs the entries of invalid/{EXPECTED_FILE}");

    for (name, text) in files.iter().filter(|(name, _)| name != EXPECTED_FILE) {
        let want = &expected[name.as_str()];
        let want_code =
            want["code"].as_str().unwrap_or_else(|| panic!("invalid/{EXPECTED_FILE}: {name}.code must be a string"));
        let want_id = match &want["id"] {
            Value::Null => None,
            Value::Number(n) => Some(n.as_u64().unwrap_or_else(|| panic!("invalid/{EXPECTED_FILE}: {name}.id"))),
            other => panic!("invalid/{EXPECTED_FILE}: {name}.id must be a number or null, not {other}"),
        };
        match decode_command(text) {
            Ok(request) => panic!("invalid/{name} must be refused but decoded to {request:?}"),
            Err(e) => {
                assert_eq!(e.code.as_str(), want_code, "invalid/{name}: error code ({})", e.message);
                assert_eq!(e.id, want_id, "invalid/{name}: echoed id");
                assert!(!e.message.is_empty(), "invalid/{name}: the error must say what is wrong");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server frames: the values below are the ones written in the golden files.

const EPOCH: u64 = 7_208_313_938_417_610_519;
const CHANNEL: &str = "chat:room-1";

fn epoch() -> Epoch {
    Epoch::new(EPOCH).unwrap_or_else(|| panic!("the golden epoch is non-zero"))
}

fn channel() -> ChannelName {
    ChannelName::new(CHANNEL).unwrap_or_else(|e| panic!("{CHANNEL}: {e}"))
}

fn pattern(p: &str) -> Pattern {
    Pattern::new(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn at(offset: u64) -> StreamPosition {
    StreamPosition { epoch: epoch(), offset: Offset(offset) }
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn message(offset: u64, data: &str) -> String {
    encode_message(&channel(), at(offset), &raw(data))
}

fn keyed(offset: u64, key: &str, data: &str) -> String {
    encode_keyed_message(&channel(), at(offset), Some(key), &raw(data))
}

/// The frame each `server/<name>.json` must equal, built with the encoder.
fn server_frames() -> BTreeMap<&'static str, String> {
    let c = channel();
    let ack = |offset, duplicate| Ack { channel: CHANNEL, epoch: epoch(), offset: Offset(offset), duplicate };
    let history = [message(36, r#"{"text":"hi","from":"bob"}"#), message(37, r#"{"text":"hey","from":"alice"}"#)];
    let alice = raw(r#"{"name":"Alice"}"#);
    BTreeMap::from([
        (
            "connected",
            encode_connected(
                1,
                &Connected {
                    client: "17".into(),
                    node: "standalone",
                    user: Some("alice"),
                    expires_at: Some(1_893_456_000),
                    user_channel: Some("#user:alice"),
                    ping_interval_ms: 25_000,
                    version: "0.1.0",
                },
            ),
        ),
        (
            "connected_anonymous",
            encode_connected(
                1,
                &Connected {
                    client: "18".into(),
                    node: "standalone",
                    user: None,
                    expires_at: None,
                    user_channel: None,
                    ping_interval_ms: 25_000,
                    version: "0.1.0",
                },
            ),
        ),
        ("subscribed_fresh", encode_subscribed(Some(2), &c, at(41), SubscribeOutcome::Fresh)),
        ("subscribed_recovered", encode_subscribed(Some(3), &c, at(44), SubscribeOutcome::Recovered { replayed: 3 })),
        (
            "subscribed_not_recovered",
            encode_subscribed(
                Some(3),
                &c,
                at(1250),
                SubscribeOutcome::NotRecovered {
                    reason: NotRecoveredReason::PositionExpired,
                    oldest: Offset(951),
                    newest: Offset(1250),
                },
            ),
        ),
        ("unsubscribed", encode_unsubscribed(21, &c)),
        ("ack", encode_ack(5, &ack(45, false))),
        ("ack_duplicate", encode_ack(6, &ack(45, true))),
        (
            "history",
            encode_history(
                Some(8),
                &HistoryReply {
                    channel: CHANNEL,
                    epoch: Some(epoch()),
                    oldest: Offset(31),
                    newest: Offset(45),
                    next_before: Some(Offset(36)),
                    messages: &history,
                },
            ),
        ),
        ("refreshed", encode_refreshed(20, Some(1_893_459_600))),
        ("pong", encode_pong(9)),
        (
            "error",
            encode_error(
                Some(14),
                ErrorCode::InvalidChannel,
                "invalid channel: character ' ' at byte 9 is not allowed",
            ),
        ),
        (
            "error_without_id",
            encode_error(
                None,
                ErrorCode::BadRequest,
                "malformed command: EOF while parsing an object at line 1 column 22",
            ),
        ),
        ("message", message(45, r#"{"text":"hello","from":"alice"}"#)),
        ("message_keyed", keyed(45, "game-18", r#"{"home":7,"away":3}"#)),
        (
            "message_delta",
            encode_delta_message(&c, at(46), "game-18", Offset(45), &serde_json::json!({"home": 8, "clock": "3:58"})),
        ),
        (
            "state",
            encode_state_reply(42, &c, Some(at(46)), &[keyed(46, "game-18", r#"{"home":8,"away":3,"clock":"3:58"}"#)]),
        ),
        (
            "snapshot",
            encode_snapshot(
                &c,
                at(45),
                &[keyed(44, "game-17", r#"{"home":101,"away":99}"#), keyed(45, "game-18", r#"{"home":7,"away":3}"#)],
                false,
            ),
        ),
        ("resubscribed", encode_resubscribed(&c, at(0), Offset(1), Offset(0))),
        ("gap", encode_gap(&c, epoch(), Offset(46), Offset(58), GapReason::SlowConsumer)),
        ("gap_unavailable", encode_gap(&c, epoch(), Offset(59), Offset(60), GapReason::Unavailable)),
        (
            "presence",
            encode_presence(
                Some(30),
                &PresenceReply {
                    channel: CHANNEL,
                    clients: 3,
                    users: 2,
                    members: vec![
                        PresenceMember { client: "17".into(), node: "node-0", user: "alice", info: Some(&alice) },
                        PresenceMember { client: "4".into(), node: "node-1", user: "alice", info: Some(&alice) },
                        PresenceMember { client: "9".into(), node: "node-1", user: "bob", info: None },
                    ],
                    truncated: false,
                },
            ),
        ),
        ("presence_stats", encode_presence_stats(31, &PresenceStatsReply { channel: CHANNEL, clients: 3, users: 2 })),
        ("typing_sent", encode_typing_sent(32, &c)),
        (
            "subscribed_registry",
            encode_subscribed(
                None,
                &ChannelName::user("alice").unwrap_or_else(|e| panic!("{e}")),
                at(3),
                SubscribeOutcome::Recovered { replayed: 1 },
            ),
        ),
        ("join", encode_ephemeral(EphemeralKind::Join, &c, "alice", Some(&alice))),
        ("leave", encode_ephemeral(EphemeralKind::Leave, &c, "bob", None)),
        ("typing", encode_ephemeral(EphemeralKind::Typing, &c, "alice", Some(&alice))),
        ("psubscribed", encode_psubscribed(51, &pattern("scores:>"), 2)),
        ("expiring", encode_expiring(1_893_459_600, 29_500)),
        ("punsubscribed", encode_punsubscribed(52, &pattern("scores:nba:*"))),
    ])
}

#[test]
fn every_server_golden_is_what_the_encoder_produces() {
    let files = json_files("server");
    let built = server_frames();
    let on_disk: BTreeSet<&str> = files.iter().map(|(name, _)| stem(name)).collect();
    let known: BTreeSet<&str> = built.keys().copied().collect();
    assert_eq!(on_disk, known, "server/ files vs the frames this test builds (add both or neither)");

    for (name, text) in &files {
        let golden: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("server/{name}: {e}"));
        let encoded = &built[stem(name)];
        let ours: Value =
            serde_json::from_str(encoded).unwrap_or_else(|e| panic!("server/{name}: encoder output is not JSON: {e}"));
        assert_eq!(ours, golden, "server/{name}: the encoder produced\n{encoded}\nbut the golden file holds\n{text}");
        // The file name is the frame's type, optionally followed by `_variant`.
        let kind = golden["type"].as_str().unwrap_or_else(|| panic!("server/{name}: `type` must be a string"));
        let named = stem(name) == kind || stem(name).starts_with(&format!("{kind}_"));
        assert!(named, "server/{name}: `type` {kind:?} vs the file name");
    }
}

// ---------------------------------------------------------------------------------------
// MessagePack twins: `msgpack/commands/*.msgpack` and `msgpack/server/*.msgpack`, one per
// JSON golden, the same frame in the `ringcast.msgpack` encoding. `RINGCAST_GOLDEN_BLESS=1`
// (re)writes them from the JSON files (delete stale ones by hand); without it the test
// only checks.

fn twin_path(sub: &str, json_name: &str) -> PathBuf {
    golden_dir("msgpack").join(sub).join(format!("{}.msgpack", stem(json_name)))
}

/// The twin of each JSON golden in `sub`, after writing them when blessing.
fn twins(sub: &str) -> Vec<(String, String, Vec<u8>)> {
    let bless = std::env::var("RINGCAST_GOLDEN_BLESS").is_ok_and(|v| v == "1");
    let files: Vec<(String, String)> = json_files(sub).into_iter().filter(|(name, _)| name != EXPECTED_FILE).collect();
    let dir = golden_dir("msgpack").join(sub);
    if bless {
        for (name, text) in &files {
            let packed = json_to_msgpack(text).unwrap_or_else(|e| panic!("{sub}/{name}: {e}"));
            let path = twin_path(sub, name);
            std::fs::write(&path, packed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let wanted: BTreeSet<String> = files.iter().map(|(name, _)| format!("{}.msgpack", stem(name))).collect();
    assert_eq!(on_disk, wanted, "msgpack/{sub}/ twins vs the JSON files of {sub}/");
    files
        .into_iter()
        .map(|(name, text)| {
            let path = twin_path(sub, &name);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, text, bytes)
        })
        .collect()
}

#[test]
fn every_command_golden_decodes_the_same_from_its_msgpack_twin() {
    for (name, text, bytes) in twins("commands") {
        let json = msgpack_to_json(&bytes).unwrap_or_else(|e| panic!("msgpack/commands/{name}: {e}"));
        let from_twin = decode_command(&json).unwrap_or_else(|e| panic!("msgpack/commands/{name}: {e:?}"));
        let from_json = decode_command(&text).unwrap_or_else(|e| panic!("commands/{name}: {e:?}"));
        assert_eq!(format!("{from_twin:?}"), format!("{from_json:?}"), "msgpack/commands/{name}");
    }
}

#[test]
fn every_server_golden_has_a_msgpack_twin_with_the_same_value() {
    let built = server_frames();
    for (name, text, bytes) in twins("server") {
        let golden: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("server/{name}: {e}"));
        let twin: Value = serde_json::from_str(&msgpack_to_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")))
            .unwrap_or_else(|e| panic!("msgpack/server/{name}: {e}"));
        assert_eq!(twin, golden, "msgpack/server/{name} vs server/{name}");
        // What the server writes on a MessagePack connection reads back the same.
        let sent = json_to_msgpack(&built[stem(&name)]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let read: Value = serde_json::from_str(&msgpack_to_json(&sent).unwrap_or_else(|e| panic!("{name}: {e}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read, golden, "server/{name} sent as MessagePack");
    }
}
