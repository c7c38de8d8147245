//! Webhooks: the batches a node `POST`s to the application's backend, and their
//! signature (`proto/webhooks.md` is the normative description).
//!
//! A batch is `{"node": ..., "events": [...]}`; each [`Event`] has a unique `id`
//! (unchanged when the batch is retried), a `type`, the `channel` and the time it
//! happened, plus the fields of its type. The body is signed with HMAC-SHA256 under
//! the shared secret: the header [`SIGNATURE_HEADER`] is `t=<unix seconds>,v1=<hex>`
//! where the MAC covers `"<t>.<body>"`, so a captured batch cannot be replayed later
//! with a fresh timestamp. [`verify`] is what a backend written in Rust runs.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-ringcast-signature";
/// The header carrying the attempt number of this batch (1 for the first send).
pub const ATTEMPT_HEADER: &str = "x-ringcast-attempt";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The channel's first subscriber (anywhere in the cluster) arrived.
    ChannelOccupied,
    /// The channel's last subscriber left and nobody came back within the grace.
    ChannelVacated,
    /// A user joined a presence channel (debounced like the `join` push).
    MemberJoined,
    /// A user left a presence channel (after the presence grace).
    MemberLeft,
    /// A message was published (sequenced) on the channel.
    Message,
}

/// One event. Borrowing on the way in: parse the batch from a `&str` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event<'a> {
    /// Unique per event; the same on every attempt, so a backend can drop repeats.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// When it happened (UNIX milliseconds; a `member_left`'s is when the user's last
    /// client left, before the grace).
    pub time_ms: u64,
    /// `member_joined`, `member_left`: the token's `sub`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Cow<'a, str>>,
    /// `member_joined`, `member_left`: the token's `info`, if any.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
    /// `message`: its epoch (a decimal string, as in the client protocol).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Cow<'a, str>>,
    /// `message`: its offset in the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// `message`: its keep-latest key, if it has one.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Cow<'a, str>>,
    /// `message`: its data.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

impl<'a> Event<'a> {
    /// An event of `kind` with no type-specific fields.
    #[must_use]
    pub fn new(id: &'a str, kind: EventType, channel: &'a str, time_ms: u64) -> Event<'a> {
        Event {
            id: Cow::Borrowed(id),
            kind,
            channel: Cow::Borrowed(channel),
            time_ms,
            user: None,
            info: None,
            epoch: None,
            offset: None,
            key: None,
            data: None,
        }
    }

    /// The event as JSON text.
    #[must_use]
    pub fn encode(&self) -> String {
        // Serializing these fields cannot fail: strings, integers and raw JSON.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A batch as the backend receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch<'a> {
    /// The node that sent it (the owner of every channel in it when they happened).
    #[serde(borrow)]
    pub node: Cow<'a, str>,
    #[serde(borrow)]
    pub events: Vec<Event<'a>>,
}

/// The body of a batch of already encoded events, in order.
#[must_use]
pub fn encode_batch(node: &str, events: &[Box<str>]) -> String {
    let mut body = String::with_capacity(32 + events.iter().map(|e| e.len() + 1).sum::<usize>());
    body.push_str("{\"node\":");
    body.push_str(&serde_json::to_string(node).unwrap_or_else(|_| "\"\"".to_owned()));
    body.push_str(",\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(e);
    }
    body.push_str("]}");
    body
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (UNIX seconds).
#[must_use]
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let mut out = format!("t={timestamp},v1=");
    for b in tag {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not t=<seconds>,v1=<64 hex digits>")]
    Malformed,
    #[error("the signature is {age_secs} s away from now, beyond the tolerance")]
    Stale { age_secs: u64 },
    #[error("the signature does not match the body under this secret")]
    Mismatch,
}

/// Checks a [`SIGNATURE_HEADER`] value against `body`: well formed, its timestamp
/// within `tolerance` of `now_secs`, and the MAC right (compared in constant time).
/// Returns the signed timestamp.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_secs: u64,
    tolerance: Duration,
) -> Result<u64, SignatureError> {
    let (t, v1) = header.split_once(',').ok_or(SignatureError::Malformed)?;
    let t: u64 = t.strip_prefix("t=").and_then(|t| t.parse().ok()).ok_or(SignatureError::Malformed)?;
    let hex = v1.strip_prefix("v1=").filter(|h| h.len() == 64).ok_or(SignatureError::Malformed)?;
    let mut tag = [0u8; 32];
    for (i, byte) in tag.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or(SignatureError::Malformed)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| SignatureError::Malformed)?;
    }
    let age_secs = now_secs.abs_diff(t);
    if age_secs > tolerance.as_secs() {
        return Err(SignatureError::Stale { age_secs });
    }
    mac(secret, t, body).verify_slice(&tag).map_err(|_| SignatureError::Mismatch)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"webhook-secret-0123456789";

    #[test]
    fn signatures_verify_and_refuse_tampering_staleness_and_garbage() {
        let body = br#"{"node":"n1","events":[]}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1=") && header.len() == "t=1700000000,v1=".len() + 64);
        let tol = Duration::from_secs(300);
        assert_eq!(verify(SECRET, &header, body, 1_700_000_100, tol), Ok(1_700_000_000));
        assert_eq!(verify(SECRET, &header, b"{}", 1_700_000_000, tol), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"another secret", &header, body, 1_700_000_000, tol), Err(SignatureError::Mismatch));
        assert_eq!(verify(SECRET, &header, body, 1_700_001_000, tol), Err(SignatureError::Stale { age_secs: 1000 }));
        // A replay with a fresh timestamp: the MAC covers the timestamp.
        let replayed = header.replacen("t=1700000000", "t=1700000500", 1);
        assert_eq!(verify(SECRET, &replayed, body, 1_700_000_500, tol), Err(SignatureError::Mismatch));
        for bad in ["", "t=1", "t=x,v1=00", "v1=00,t=1", "t=1,v1=zz", "t=1,v1=é"] {
            assert_eq!(verify(SECRET, bad, body, 1, tol), Err(SignatureError::Malformed), "{bad:?}");
        }
        let not_hex = format!("t=1,v1={}", "g".repeat(64));
        assert_eq!(verify(SECRET, &not_hex, body, 1, tol), Err(SignatureError::Malformed));
    }

    #[test]
    fn a_known_vector() {
        // HMAC-SHA256(key = "key", "0.The quick brown fox jumps over the lazy dog")
        // computed independently: `printf '0.The quick...' | openssl dgst -sha256 -hmac key`.
        let header = sign(b"key", 0, b"The quick brown fox jumps over the lazy dog");
        assert_eq!(header, "t=0,v1=8511f28f7a1949f0c42772b447d68b2daf760f5f0439a20a17e3b4e7cd395763");
    }

    #[test]
    fn batches_round_trip_through_the_event_types() {
        let data = RawValue::from_string(r#"{"score":[1,2]}"#.to_owned()).expect("test value");
        let msg = Event {
            epoch: Some("123".into()),
            offset: Some(7),
            key: Some("game".into()),
            data: Some(&data),
            ..Event::new("n1.1", EventType::Message, "scores:nba", 5)
        };
        let joined = Event { user: Some("alice".into()), ..Event::new("n1.2", EventType::MemberJoined, "chat:x", 6) };
        let body = encode_batch("n1", &[msg.encode().into(), joined.encode().into()]);
        let batch: Batch<'_> = serde_json::from_str(&body).expect("test value");
        assert_eq!(batch.node, "n1");
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.events[0].kind, EventType::Message);
        assert_eq!(batch.events[0].data.map(RawValue::get), Some(r#"{"score":[1,2]}"#));
        assert_eq!(batch.events[1].user.as_deref(), Some("alice"));
        assert!(serde_json::from_str::<Batch<'_>>(r#"{"node":"n","events":[],"x":1}"#).is_err());
    }
}
