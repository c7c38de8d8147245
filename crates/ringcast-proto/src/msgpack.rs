//! The MessagePack encoding of the client protocol.
//!
//! A client picks its encoding at the WebSocket upgrade with `Sec-WebSocket-Protocol`:
//! [`SUBPROTOCOL_JSON`] (text frames; also what a client that names no subprotocol gets)
//! or [`SUBPROTOCOL_MSGPACK`] (binary frames). The frames are the same objects with the
//! same fields and semantics in either encoding: a MessagePack frame is its JSON frame
//! transcoded value by value (objects become maps with string keys, arrays arrays,
//! strings strings, integers the smallest MessagePack integer, other numbers float 64,
//! `true`/`false`/`null` themselves). Epochs stay decimal strings, as in JSON.
//!
//! The server builds every frame once as JSON and transcodes it per MessagePack
//! connection when writing ([`json_to_msgpack`]); commands from a MessagePack client are
//! transcoded to JSON ([`msgpack_to_json`]) and decoded like any other, so both
//! encodings share one decoder, one set of checks and one set of error codes.

/// The subprotocol of JSON text frames (the default).
pub const SUBPROTOCOL_JSON: &str = "ringcast.json";
/// The subprotocol of MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "ringcast.msgpack";
/// Deepest nesting a MessagePack command may have (as for JSON commands, whose parser
/// stops at 128 levels).
pub const MAX_DEPTH: usize = 128;

/// A frame's encoding on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Json,
    MsgPack,
}

impl Encoding {
    /// The encoding a client asked for in `Sec-WebSocket-Protocol` (a comma-separated
    /// list, in order of preference): the first one ringcast speaks, with the name to
    /// answer. No header: JSON, answered without a subprotocol. A list with nothing
    /// ringcast speaks: `None` (the upgrade is refused).
    #[must_use]
    pub fn negotiate(offered: Option<&str>) -> Option<(Encoding, Option<&'static str>)> {
        let Some(list) = offered else { return Some((Encoding::Json, None)) };
        list.split(',').map(str::trim).find_map(|p| match p {
            SUBPROTOCOL_JSON => Some((Encoding::Json, Some(SUBPROTOCOL_JSON))),
            SUBPROTOCOL_MSGPACK => Some((Encoding::MsgPack, Some(SUBPROTOCOL_MSGPACK))),
            _ => None,
        })
    }
}

/// One JSON frame as MessagePack. Fails only for text that is not JSON (never for a
/// frame the server built).
pub fn json_to_msgpack(json: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(json.len());
    let mut de = serde_json::Deserializer::from_str(json);
    let mut ser = rmp_serde::Serializer::new(&mut out);
    serde_transcode::transcode(&mut de, &mut ser).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(out)
}

/// One MessagePack frame as JSON text, for the command decoder. Refused: anything that
/// is not exactly one MessagePack value, and nesting deeper than [`MAX_DEPTH`]. What JSON
/// has no type for is read as JSON would carry it: integer map keys as strings
/// (`{1: 2}` is `{"1": 2}`), binary values as arrays of bytes, extension values as
/// `[type, [bytes]]`.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<String, String> {
    let mut rest = bytes;
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 2);
    {
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        de.set_max_depth(MAX_DEPTH);
        let mut ser = serde_json::Serializer::new(&mut out);
        serde_transcode::transcode(&mut de, &mut ser)
            .map_err(|e| format!("not a MessagePack value ringcast reads: {e}"))?;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the MessagePack value", rest.len()));
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn frames_round_trip_value_for_value() {
        let frame = json!({"type":"message","channel":"scores:nba","epoch":"7208313938417610519","offset":45,
            "data":{"home":7,"away":-3,"ratio":0.5,"tags":["a",null,true],"big":18446744073709551615u64}});
        let text = frame.to_string();
        let packed = json_to_msgpack(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(packed.len() < text.len(), "MessagePack is the smaller encoding");
        let back: Value = serde_json::from_str(&msgpack_to_json(&packed).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, frame);
    }

    /// Found by the `client_command` fuzz target: a float 32 read to JSON text, parsed,
    /// packed and read again changed in its last digit while serde_json parsed floats
    /// best-effort (the workspace enables `float_roundtrip`).
    #[test]
    fn floats_survive_every_hop() {
        let value = |t: &str| serde_json::from_str::<Value>(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        for frame in [&[0xca, 0x97, 0x97, 0x97, 0x97][..], &[0xcb, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]] {
            let json = msgpack_to_json(frame).unwrap_or_else(|e| panic!("{e}"));
            let again = msgpack_to_json(&json_to_msgpack(&json).unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(value(&again), value(&json), "{json} -> {again}");
        }
    }

    #[test]
    fn what_json_cannot_carry_is_refused() {
        // Integer map keys read as JSON keys; bin and ext values as arrays of bytes.
        let read = |b: &[u8]| msgpack_to_json(b).unwrap_or_else(|e| e);
        assert_eq!(read(&[0x81, 0x01, 0x02]), r#"{"1":2}"#);
        assert_eq!(read(&[0xc4, 0x01, 0xff]), "[255]");
        assert_eq!(read(&[0xd4, 0x01, 0x02]), "[1,[2]]");
        // Trailing bytes, deep nesting and nothing at all are refused.
        assert!(msgpack_to_json(&[0xc0, 0xc0]).is_err());
        assert!(msgpack_to_json(&[0x91; 200].iter().copied().chain([0xc0]).collect::<Vec<_>>()).is_err());
        assert!(msgpack_to_json(&[]).is_err());
        assert!(json_to_msgpack("{nope").is_err());
    }

    #[test]
    fn the_first_offered_subprotocol_ringcast_speaks_wins() {
        assert_eq!(Encoding::negotiate(None), Some((Encoding::Json, None)));
        assert_eq!(
            Encoding::negotiate(Some("mqtt, ringcast.msgpack, ringcast.json")),
            Some((Encoding::MsgPack, Some(SUBPROTOCOL_MSGPACK)))
        );
        assert_eq!(Encoding::negotiate(Some("ringcast.json")), Some((Encoding::Json, Some(SUBPROTOCOL_JSON))));
        assert_eq!(Encoding::negotiate(Some("graphql-ws")), None);
    }
}
