//! What a scoreboard viewer reads: the server's text frames, classified without parsing
//! the game state they carry.
//!
//! A `message` push is read by a byte scanner when it has the encoder's layout
//! (`type`, `channel`, `epoch`, `offset`, `key`, then `data`, or `base` and `patch`,
//! last), so a viewer touches only the envelope; any other layout falls back to
//! `serde_json` (slower, same result). The state (`data`) or the merge patch (`patch`)
//! is returned as JSON text, parsed once per distinct frame by the viewer's cache.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A keyed `message` push: a full state or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub offset: u64,
    pub key: &'a str,
    pub body: Body<'a>,
}

/// The payload of a `message` push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// `data`: the key's whole new state (JSON text).
    Full(&'a str),
    /// `base` and `patch`: an RFC 7396 merge patch (JSON text) onto the state of the
    /// message at offset `base`, the last one this connection received for the key.
    Delta { base: u64, patch: &'a str },
}

/// One server text frame, as far as a viewer cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Push<'a> {
    Message(Message<'a>),
    /// A keep-latest channel's state after `subscribed`: its entries are full messages.
    Snapshot(Vec<Message<'a>>),
    /// Offsets `from..=to` will not come; `conflated` when a newer message of the same
    /// key replaced them (the other reasons are losses).
    Gap {
        from: u64,
        to: u64,
        conflated: bool,
        reason: String,
    },
    /// A reply to command `id`: `Ok` (`connected`, `subscribed`) or the error text.
    Reply {
        id: u64,
        result: Result<(), String>,
    },
    /// An `error` push without `id`.
    Error(String),
    /// Anything else (ignored).
    Other,
}

const MESSAGE: &str = r#"{"type":"message","#;

/// Classifies one text frame.
pub fn classify(text: &str) -> Result<Push<'_>, String> {
    if text.starts_with(MESSAGE) {
        return message(text).map(Push::Message);
    }
    if text.starts_with(r#"{"type":"gap","#) {
        #[derive(Deserialize)]
        struct Gap {
            from: u64,
            to: u64,
            reason: String,
        }
        let g: Gap = serde_json::from_str(text).map_err(|e| format!("malformed gap ({e}): {text}"))?;
        return Ok(Push::Gap { from: g.from, to: g.to, conflated: g.reason == "conflated", reason: g.reason });
    }
    if text.starts_with(r#"{"type":"snapshot","#) {
        #[derive(Deserialize)]
        struct Snapshot<'a> {
            #[serde(borrow)]
            entries: Vec<&'a RawValue>,
        }
        let s: Snapshot<'_> = serde_json::from_str(text).map_err(|e| format!("malformed snapshot ({e})"))?;
        return s.entries.iter().map(|e| message(e.get())).collect::<Result<_, _>>().map(Push::Snapshot);
    }
    #[derive(Deserialize)]
    struct Head<'a> {
        id: Option<u64>,
        #[serde(rename = "type", borrow)]
        kind: &'a str,
        error: Option<ErrorBody>,
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        code: String,
        message: String,
    }
    let h: Head<'_> = serde_json::from_str(text).map_err(|e| format!("malformed server frame ({e}): {text}"))?;
    let error = h.error.map(|e| format!("{}: {}", e.code, e.message));
    Ok(match (h.id, h.kind, error) {
        (Some(id), "error", e) => Push::Reply { id, result: Err(e.unwrap_or_else(|| text.to_owned())) },
        (Some(id), _, _) => Push::Reply { id, result: Ok(()) },
        (None, "error", e) => Push::Error(e.unwrap_or_else(|| text.to_owned())),
        _ => Push::Other,
    })
}

/// A keyed `message` frame: the fast scan, or `serde_json` when the layout differs.
fn message(text: &str) -> Result<Message<'_>, String> {
    if let Some(m) = scan(text) {
        return Ok(m);
    }
    #[derive(Deserialize)]
    struct Frame<'a> {
        offset: u64,
        #[serde(borrow)]
        key: Option<&'a str>,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
        base: Option<u64>,
        #[serde(borrow)]
        patch: Option<&'a RawValue>,
    }
    let f: Frame<'_> = serde_json::from_str(text).map_err(|e| format!("malformed message ({e}): {text}"))?;
    let key = f.key.ok_or_else(|| format!("message without a key: {text}"))?;
    let body = match (f.data, f.base, f.patch) {
        (Some(d), None, None) => Body::Full(d.get()),
        (None, Some(base), Some(p)) => Body::Delta { base, patch: p.get() },
        _ => return Err(format!("message with neither `data` nor `base` and `patch`: {text}")),
    };
    Ok(Message { offset: f.offset, key, body })
}

/// The encoder's layout: `..."offset":O,"key":"K","data":D}` or
/// `..."offset":O,"key":"K","base":B,"patch":P}`.
fn scan(text: &str) -> Option<Message<'_>> {
    let at = text.find(r#","offset":"#)? + r#","offset":"#.len();
    let (offset, rest) = number(&text[at..])?;
    let rest = rest.strip_prefix(r#","key":""#)?;
    let end = rest.find('"')?;
    let (key, rest) = (&rest[..end], &rest[end + 1..]);
    let rest = rest.strip_suffix('}')?;
    if let Some(data) = rest.strip_prefix(r#","data":"#) {
        return Some(Message { offset, key, body: Body::Full(data) });
    }
    let (base, rest) = number(rest.strip_prefix(r#","base":"#)?)?;
    let patch = rest.strip_prefix(r#","patch":"#)?;
    Some(Message { offset, key, body: Body::Delta { base, patch } })
}

/// A leading decimal `u64` and what follows it.
fn number(s: &str) -> Option<(u64, &str)> {
    let end = s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Push<'_> {
        classify(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_full_keyed_message_is_scanned() {
        let text = r#"{"type":"message","channel":"scores:game-7","epoch":"7208313938417610519","offset":45,"key":"game-7","data":{"seq":3,"home":{"score":2}}}"#;
        let want = Message { offset: 45, key: "game-7", body: Body::Full(r#"{"seq":3,"home":{"score":2}}"#) };
        assert_eq!(ok(text), Push::Message(want));
        assert_eq!(scan(text), Some(want));
    }

    #[test]
    fn a_delta_message_is_scanned() {
        let text = r#"{"type":"message","channel":"scores:game-7","epoch":"72","offset":46,"key":"game-7","base":45,"patch":{"seq":4,"clock":null}}"#;
        let want =
            Message { offset: 46, key: "game-7", body: Body::Delta { base: 45, patch: r#"{"seq":4,"clock":null}"# } };
        assert_eq!(ok(text), Push::Message(want));
    }

    #[test]
    fn another_field_order_falls_back_to_serde() {
        let text = r#"{"type":"message","channel":"c:x","epoch":"72","base":45,"offset":46,"patch":{"a":1},"key":"k"}"#;
        assert_eq!(scan(text), None);
        let want = Message { offset: 46, key: "k", body: Body::Delta { base: 45, patch: r#"{"a":1}"# } };
        assert_eq!(ok(text), Push::Message(want));
        let keyless = r#"{"type":"message","channel":"c:x","epoch":"72","offset":46,"data":1}"#;
        assert!(classify(keyless).is_err_and(|e| e.contains("without a key")));
        let neither = r#"{"type":"message","channel":"c:x","epoch":"72","offset":46,"key":"k","base":4}"#;
        assert!(classify(neither).is_err());
    }

    #[test]
    fn snapshot_gap_replies_and_errors() {
        let snap = r#"{"type":"snapshot","channel":"scores:game-1","epoch":"72","offset":45,"entries":[{"type":"message","channel":"scores:game-1","epoch":"72","offset":44,"key":"game-1","data":{"seq":0}}]}"#;
        let entry = Message { offset: 44, key: "game-1", body: Body::Full(r#"{"seq":0}"#) };
        assert_eq!(ok(snap), Push::Snapshot(vec![entry]));
        let gap = r#"{"type":"gap","channel":"scores:game-1","epoch":"72","from":46,"to":58,"reason":"conflated"}"#;
        assert_eq!(ok(gap), Push::Gap { from: 46, to: 58, conflated: true, reason: "conflated".into() });
        let loss = r#"{"type":"gap","channel":"c:x","epoch":"72","from":1,"to":1,"reason":"slow_consumer"}"#;
        assert!(matches!(ok(loss), Push::Gap { conflated: false, .. }));
        let sub = r#"{"id":2,"type":"subscribed","channel":"scores:game-1","epoch":"72","offset":41}"#;
        assert_eq!(ok(sub), Push::Reply { id: 2, result: Ok(()) });
        let refused = r#"{"id":2,"type":"error","error":{"code":"bad_request","message":"unknown field `delta`"}}"#;
        assert_eq!(ok(refused), Push::Reply { id: 2, result: Err("bad_request: unknown field `delta`".into()) });
        let push = r#"{"type":"error","error":{"code":"internal","message":"x"}}"#;
        assert_eq!(ok(push), Push::Error("internal: x".into()));
        assert_eq!(ok(r#"{"type":"pong","id":3}"#), Push::Reply { id: 3, result: Ok(()) });
        assert_eq!(ok(r#"{"type":"join","channel":"c:x","user":"u"}"#), Push::Other);
        assert!(classify("not json").is_err());
    }
}
