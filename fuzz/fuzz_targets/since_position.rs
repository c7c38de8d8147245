//! `since` positions: the epoch's decimal wire form (`Epoch: FromStr`/serde), the
//! `since` object of a `subscribe` command, and recovery (`ChannelLog::recover`) on a log
//! built from the input, possibly restored from a handoff snapshot as a peer sends it.
//!
//! Properties:
//! - nothing panics;
//! - an accepted epoch is non-zero, came from plain ASCII digits and round-trips through
//!   `Display`/`FromStr` and through JSON (where it is a string);
//! - a `subscribe` whose `since.epoch` is that text is accepted exactly when the epoch
//!   parses (or is empty), and otherwise refused with `invalid_position`; an arbitrary
//!   `since` value is accepted or refused with `invalid_position`, nothing else;
//! - appends hand out `top + 1`, never an offset already handed out (at `u64::MAX` they
//!   are refused); duplicates and conflicts name an offset already handed out;
//! - recovery answers `Recovered` only in the same epoch, with exactly the messages after
//!   `since` up to the top, in order; it refuses a position ahead of the top as
//!   `position_ahead` and another epoch as `epoch_changed`;
//! - history pages are in order, below `before`, and at most `limit` long.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringcast_core::dedup::{DedupEntry, DedupPolicy};
use ringcast_core::log::{AppendError, HistoryPolicy, LogSnapshot};
use ringcast_core::{Appended, ChannelLog, Epoch, Millis, NotRecoveredReason, Offset, Recovery, StreamPosition};
use ringcast_proto::client::{decode_command, Command, Request, Since};
use ringcast_proto::ErrorCode;
use std::time::Duration;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    epoch_text: &'a str,
    since_json: &'a str,
    epoch: u64,
    history_size: u8,
    ttl_ms: u16,
    restore: Option<Snapshot>,
    ops: Vec<Op>,
}

/// A handoff snapshot as `ringcastd` builds it from a peer's `ChannelSnapshotWire`:
/// every number straight off the wire.
#[derive(Debug, Arbitrary)]
struct Snapshot {
    top: u64,
    history: Vec<(u64, u16)>,
    dedup: Vec<(u8, u8, u64, u16)>,
    now: u16,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Append { dt: u16, key: Option<u8>, digest: u8 },
    Recover { dt: u16, other_epoch: Option<u64>, offset: Since_ },
    Page { dt: u16, before: Option<u64>, limit: u8 },
}

/// A `since` offset: near the top (the interesting cases) or anywhere.
#[derive(Debug, Arbitrary)]
#[allow(non_camel_case_types)]
enum Since_ {
    BelowTop(u8),
    AboveTop(u8),
    Anywhere(u64),
}

fuzz_target!(|input: Input<'_>| {
    check_epoch_text(input.epoch_text);
    check_since_json(input.since_json);
    check_log(&input);
});

fn check_epoch_text(text: &str) {
    let parsed = text.parse::<Epoch>();
    if let Ok(e) = parsed {
        assert!(e.get() != 0);
        assert!(!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()), "{text:?} accepted");
        assert_eq!(e.to_string().parse::<Epoch>(), Ok(e));
        assert_eq!(text.trim_start_matches('0'), e.to_string());
        let json = serde_json::to_string(&e).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(json, format!("\"{e}\""));
        assert_eq!(serde_json::from_str::<Epoch>(&json).ok(), Some(e));
    }
    let epoch_json = serde_json::to_string(text).unwrap_or_else(|err| panic!("{err}"));
    let frame = format!(r#"{{"id":1,"type":"subscribe","channel":"c","since":{{"epoch":{epoch_json},"offset":7}}}}"#);
    match (decode_command(&frame), parsed) {
        (Ok(Request { command: Command::Subscribe { since: Some(s), .. }, .. }), Ok(e)) => {
            assert_eq!(s, Since { epoch: Some(e), offset: Offset(7) });
        }
        (Ok(Request { command: Command::Subscribe { since: Some(s), .. }, .. }), Err(_)) => {
            assert!(text.is_empty(), "{text:?} accepted as an epoch");
            assert_eq!(s, Since { epoch: None, offset: Offset(7) });
        }
        (Err(e), Err(_)) => {
            assert!(!text.is_empty());
            assert_eq!(e.code, ErrorCode::InvalidPosition, "{frame}");
        }
        (other, p) => panic!("{frame}: {other:?} (epoch parse: {p:?})"),
    }
}

fn check_since_json(since: &str) {
    let frame = format!(r#"{{"id":1,"type":"subscribe","channel":"c","since":{since}}}"#);
    let valid_json = serde_json::from_str::<serde::de::IgnoredAny>(since).is_ok();
    match decode_command(&frame) {
        Ok(Request { command: Command::Subscribe { since: Some(s), .. }, .. }) => {
            // Canonical form decodes to the same position.
            let epoch = s.epoch.map(|e| format!(r#""epoch":"{e}","#)).unwrap_or_default();
            let again =
                format!(r#"{{"id":1,"type":"subscribe","channel":"c","since":{{{epoch}"offset":{}}}}}"#, s.offset);
            match decode_command(&again) {
                Ok(Request { command: Command::Subscribe { since: Some(t), .. }, .. }) => assert_eq!(s, t),
                other => panic!("{again}: {other:?}"),
            }
        }
        // `null` is an absent `since`.
        Ok(Request { command: Command::Subscribe { since: None, .. }, .. }) => {
            assert!(!valid_json || since.trim() == "null", "{frame}");
        }
        Ok(other) => panic!("{frame} decoded to {other:?}"),
        Err(e) if valid_json && !since.trim().is_empty() => {
            // A JSON value that does not close the frame early is judged as a position.
            let framing = matches!(e.code, ErrorCode::BadRequest) && e.message.starts_with("malformed command");
            assert!(e.code == ErrorCode::InvalidPosition || framing, "{frame}: {e:?}");
        }
        Err(e) => assert!(matches!(e.code, ErrorCode::BadRequest | ErrorCode::InvalidPosition), "{e:?}"),
    }
}

fn check_log(input: &Input<'_>) {
    let Some(epoch) = Epoch::new(input.epoch) else { return };
    let history_policy = HistoryPolicy {
        size: usize::from(input.history_size),
        ttl: Duration::from_millis(u64::from(input.ttl_ms) + 1),
    };
    let dedup_policy = DedupPolicy { window: Duration::from_millis(500), max_keys: 8 };
    let mut now = Millis(1_000_000);
    let mut log: ChannelLog<u64> = match &input.restore {
        None => ChannelLog::new(epoch, history_policy, dedup_policy),
        Some(snap) => {
            let snap = LogSnapshot {
                epoch,
                top: Offset(snap.top),
                history: snap
                    .history
                    .iter()
                    .map(|&(o, age)| (Offset(o), Duration::from_millis(age.into()), o))
                    .collect(),
                dedup: snap
                    .dedup
                    .iter()
                    .map(|&(key, digest, offset, age)| DedupEntry {
                        key: format!("k{key}"),
                        digest: digest.into(),
                        position: StreamPosition { epoch, offset: Offset(offset) },
                        age: Duration::from_millis(age.into()),
                    })
                    .collect(),
                latest: Vec::new(),
            };
            now = Millis(now.0 + u64::from(input.restore.as_ref().map_or(0, |s| s.now)));
            ChannelLog::restore(snap, history_policy, dedup_policy, now)
        }
    };
    check_history(&log.snapshot(now).history);
    for op in &input.ops {
        let top = log.top();
        assert_eq!(top.epoch, epoch);
        match *op {
            Op::Append { dt, key, digest } => {
                now = Millis(now.0 + u64::from(dt));
                let key = key.map(|k| format!("k{k}"));
                match log.append(now, key.as_deref(), digest.into(), |p| p.offset.0) {
                    Ok(Appended::Fresh { position, payload }) => {
                        assert_eq!(position.epoch, epoch);
                        assert!(
                            position.offset > top.offset,
                            "append reused offset {} (top {})",
                            position.offset,
                            top.offset
                        );
                        assert_eq!(position.offset, Offset(top.offset.0 + 1));
                        assert_eq!(payload, position.offset.0);
                        assert_eq!(log.top(), position);
                    }
                    Ok(Appended::Duplicate { position }) => assert!(position.offset <= top.offset),
                    Err(AppendError::OffsetsExhausted) => assert_eq!(top.offset.0, u64::MAX),
                    Err(AppendError::Conflict { position }) => assert!(position.offset <= top.offset),
                }
            }
            Op::Recover { dt, other_epoch, ref offset } => {
                now = Millis(now.0 + u64::from(dt));
                let since_epoch = other_epoch.and_then(Epoch::new).unwrap_or(epoch);
                let since_offset = match *offset {
                    Since_::BelowTop(d) => Offset(top.offset.0.saturating_sub(d.into())),
                    Since_::AboveTop(d) => Offset(top.offset.0.saturating_add(d.into())),
                    Since_::Anywhere(o) => Offset(o),
                };
                let since = StreamPosition { epoch: since_epoch, offset: since_offset };
                check_recovery(since, top, log.recover(since, now));
            }
            Op::Page { dt, before, limit } => {
                now = Millis(now.0 + u64::from(dt));
                let page = log.page(now, before.map(Offset), limit.into());
                assert!(page.entries.len() <= limit.into());
                assert!(page.entries.windows(2).all(|w| w[1] == w[0] + 1), "page out of order: {:?}", page.entries);
                if let (Some(b), Some(last)) = (before, page.entries.last()) {
                    assert!(*last < b);
                }
                assert!(page.entries.last().is_none_or(|&o| o <= top.offset.0));
            }
        }
    }
}

/// What a snapshot (and so the log) holds: contiguous offsets ending at the top.
fn check_history(history: &[(Offset, Duration, u64)]) {
    for w in history.windows(2) {
        assert_eq!(w[1].0 .0, w[0].0 .0 + 1, "history not contiguous");
    }
    for (o, _, p) in history {
        assert_eq!(o.0, *p);
    }
}

fn check_recovery(since: StreamPosition, top: StreamPosition, r: Recovery<u64>) {
    match r {
        Recovery::Recovered { replay } => {
            assert_eq!(since.epoch, top.epoch, "recovered across epochs");
            assert!(since.offset <= top.offset, "recovered from ahead of the top");
            let missed = top.offset.0 - since.offset.0;
            let expected: Vec<u64> = (since.offset.0..top.offset.0).map(|o| o + 1).take(replay.len() + 1).collect();
            assert_eq!(
                replay.len() as u64,
                missed,
                "reader at {} of top {} got {} messages: {:?}",
                since.offset,
                top.offset,
                replay.len(),
                &replay[..replay.len().min(8)]
            );
            assert_eq!(replay, expected[..replay.len()], "replay out of order");
        }
        Recovery::NotRecovered { reason, oldest: _, newest } => {
            assert_eq!(newest, top.offset);
            match reason {
                NotRecoveredReason::EpochChanged => assert_ne!(since.epoch, top.epoch),
                NotRecoveredReason::PositionAhead => {
                    assert_eq!(since.epoch, top.epoch);
                    assert!(since.offset > top.offset);
                }
                NotRecoveredReason::PositionExpired => {
                    assert_eq!(since.epoch, top.epoch);
                    assert!(since.offset < top.offset);
                }
            }
        }
    }
}
