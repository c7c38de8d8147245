//! The cluster frame codec: the bytes of one [`PeerFrame`](super::PeerFrame) on a
//! QUIC stream, and the only place bincode is called.
//!
//! ```text
//! frame   = length version payload
//! length  = u32, big-endian: byte count of version + payload, 1..=max_frame_bytes
//! version = u8, CLUSTER_PROTOCOL_VERSION (1)
//! payload = bincode 2, config::standard() (little-endian, varint) with a byte limit
//! ```
//!
//! Pure functions over byte slices ([`encode_frame`], [`frame_len`], [`decode_frame`]):
//! unit tests, property tests and the `peer_frame` fuzz target drive them directly, and
//! `ringcast-cluster`'s transport reads and writes quinn streams with them.
//!
//! Hostile input cannot make a reader allocate more than the frame limit: the length is
//! checked before any of the payload is read (a stream reader buffers the payload only
//! as it arrives, never pre-allocated from the length), and bincode decodes the exact
//! frame body with a byte limit, so a huge length *inside* the payload (a `Vec` claiming
//! 2^60 elements) is refused instead of allocated. A frame must be consumed exactly:
//! trailing bytes are an error, not ignored.

use bincode::config::{Configuration, LittleEndian, Varint};

/// The version byte every frame carries. A receiver refuses other versions.
pub const CLUSTER_PROTOCOL_VERSION: u8 = 1;
/// Bytes of the big-endian length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Bytes before the payload: the length prefix and the version byte.
pub const FRAME_HEADER_BYTES: usize = LENGTH_PREFIX_BYTES + 1;
/// The largest frame limit a [`FrameCodecConfig`] may have (16 MiB), and the default.
/// It is also bincode's byte limit, which is a compile-time constant in bincode 2: a
/// config can lower the frame limit below it, never raise it.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// bincode's standard configuration with the frame ceiling as its byte limit.
type Bincode = Configuration<LittleEndian, Varint, bincode::config::Limit<MAX_FRAME_BYTES>>;
const BINCODE: Bincode = bincode::config::standard().with_limit::<MAX_FRAME_BYTES>();

/// Limits of the frame codec.
///
/// Invariant: `1 <= max_frame_bytes <= MAX_FRAME_BYTES`, where `max_frame_bytes` bounds
/// the length field (version byte + payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodecConfig {
    max_frame_bytes: usize,
}

impl Default for FrameCodecConfig {
    fn default() -> Self {
        FrameCodecConfig { max_frame_bytes: MAX_FRAME_BYTES }
    }
}

/// A frame limit outside `1..=MAX_FRAME_BYTES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("max_frame_bytes must be between 1 and {MAX_FRAME_BYTES}, got {0}")]
pub struct FrameLimitError(pub usize);

impl FrameCodecConfig {
    /// A codec that refuses frames whose length field exceeds `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Result<FrameCodecConfig, FrameLimitError> {
        if (1..=MAX_FRAME_BYTES).contains(&max_frame_bytes) {
            Ok(FrameCodecConfig { max_frame_bytes })
        } else {
            Err(FrameLimitError(max_frame_bytes))
        }
    }

    /// The largest accepted length field (version byte + payload), in bytes.
    #[must_use]
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

/// Why bytes are not a frame, or a value cannot be encoded as one.
///
/// [`CodecError::is_protocol_violation`] tells the peer's mistakes from local encoding
/// failures.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame length is 0; a frame carries at least its version byte")]
    Empty,
    #[error(
        "unknown cluster protocol version {got}; this node speaks version {CLUSTER_PROTOCOL_VERSION} \
         (run the same ringcast version on every node)"
    )]
    UnknownVersion { got: u8 },
    #[error("frame payload does not decode: {reason}")]
    Malformed { reason: String },
    #[error("frame payload has {extra} byte(s) left over after the decoded value")]
    TrailingBytes { extra: usize },
    #[error("frame to send exceeds the limit of {max} bytes; split it")]
    EncodeTooLarge { max: usize },
    #[error("cannot encode frame: {reason}")]
    Encode { reason: String },
}

impl CodecError {
    /// True when the peer sent something this codec refuses (as opposed to a local
    /// encoding failure).
    #[must_use]
    pub fn is_protocol_violation(&self) -> bool {
        match self {
            CodecError::TooLarge { .. }
            | CodecError::Empty
            | CodecError::UnknownVersion { .. }
            | CodecError::Malformed { .. }
            | CodecError::TrailingBytes { .. } => true,
            CodecError::EncodeTooLarge { .. } | CodecError::Encode { .. } => false,
        }
    }
}

/// Encodes one frame: length prefix, version byte, bincode payload. Refuses, without
/// buffering past the limit, a frame whose length field would exceed the limit.
///
/// To send the same frame to several peers, encode it once and `write_all` the bytes.
pub fn encode_frame<T: bincode::Encode>(frame: &T, cfg: FrameCodecConfig) -> Result<Vec<u8>, CodecError> {
    let mut writer = CappedWriter {
        buf: Vec::with_capacity(128),
        cap: LENGTH_PREFIX_BYTES + cfg.max_frame_bytes,
        overflowed: false,
    };
    writer.buf.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    writer.buf.push(CLUSTER_PROTOCOL_VERSION);
    if let Err(e) = bincode::encode_into_writer(frame, &mut writer, BINCODE) {
        return Err(match writer.overflowed {
            true => CodecError::EncodeTooLarge { max: cfg.max_frame_bytes },
            false => CodecError::Encode { reason: e.to_string() },
        });
    }
    let len = writer.buf.len() - LENGTH_PREFIX_BYTES;
    // `len <= max_frame_bytes <= MAX_FRAME_BYTES < u32::MAX` by the cap above.
    let prefix = u32::try_from(len).map_err(|_| CodecError::EncodeTooLarge { max: cfg.max_frame_bytes })?;
    writer.buf[..LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(writer.buf)
}

/// The total size of the frame starting at `buf` (prefix included), once its length
/// prefix is available: `Ok(None)` while fewer than [`LENGTH_PREFIX_BYTES`] bytes are
/// buffered. A length of 0 or above the limit is refused here, before any payload.
pub fn frame_len(buf: &[u8], cfg: FrameCodecConfig) -> Result<Option<usize>, CodecError> {
    match buf.first_chunk::<LENGTH_PREFIX_BYTES>() {
        Some(prefix) => Ok(Some(LENGTH_PREFIX_BYTES + body_len(*prefix, cfg)?)),
        None => Ok(None),
    }
}

/// Decodes the frame at the start of `buf`: `Ok(Some((frame, consumed)))`, or
/// `Ok(None)` when `buf` holds only part of a frame (read more and call again), or an
/// error for a frame that can never decode. Bytes after the first frame are left alone.
pub fn decode_frame<T: bincode::Decode<()>>(
    buf: &[u8],
    cfg: FrameCodecConfig,
) -> Result<Option<(T, usize)>, CodecError> {
    let Some(total) = frame_len(buf, cfg)? else {
        return Ok(None);
    };
    match buf.get(LENGTH_PREFIX_BYTES..total) {
        Some(body) => Ok(Some((decode_body(body)?, total))),
        None => Ok(None),
    }
}

/// Validates a length prefix and returns the body length (version + payload).
///
/// With [`decode_body`], the two steps of a stream reader: read the prefix, check it
/// here before buffering anything, then read exactly that many bytes and decode them.
pub fn body_len(prefix: [u8; LENGTH_PREFIX_BYTES], cfg: FrameCodecConfig) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix);
    // A u32 that does not fit usize is larger than any limit.
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > cfg.max_frame_bytes {
        return Err(CodecError::TooLarge { len, max: cfg.max_frame_bytes });
    }
    Ok(len)
}

/// Decodes a frame body (version byte + payload, without the length prefix), which must
/// be consumed exactly.
pub fn decode_body<T: bincode::Decode<()>>(body: &[u8]) -> Result<T, CodecError> {
    let Some((&version, payload)) = body.split_first() else {
        return Err(CodecError::Empty);
    };
    if version != CLUSTER_PROTOCOL_VERSION {
        return Err(CodecError::UnknownVersion { got: version });
    }
    let (frame, used) = bincode::decode_from_slice::<T, _>(payload, BINCODE).map_err(|e| CodecError::Malformed {
        reason: match e {
            bincode::error::DecodeError::LimitExceeded => {
                format!("a length inside the payload exceeds the {MAX_FRAME_BYTES}-byte decode limit")
            }
            other => other.to_string(),
        },
    })?;
    match payload.len() - used {
        0 => Ok(frame),
        extra => Err(CodecError::TrailingBytes { extra }),
    }
}

/// A bincode writer that refuses to grow past `cap` bytes.
///
/// Invariant: `buf.len() <= cap`. It starts with the header, `FRAME_HEADER_BYTES <=
/// LENGTH_PREFIX_BYTES + max_frame_bytes` since `max_frame_bytes >= 1`, and only grows
/// within `cap`.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl bincode::enc::write::Writer for CappedWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if bytes.len() > self.cap.saturating_sub(self.buf.len()) {
            self.overflowed = true;
            return Err(bincode::error::EncodeError::Other("frame limit exceeded"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
    enum TestFrame {
        Ping { seq: u64 },
        Publish { channel: String, offset: u64, data: Vec<u8> },
        Batch(Vec<(u32, Option<String>)>),
        Ack(i64, bool),
        Shutdown,
    }

    fn test_frame() -> impl Strategy<Value = TestFrame> {
        prop_oneof![
            any::<u64>().prop_map(|seq| TestFrame::Ping { seq }),
            ("\\PC{0,40}", any::<u64>(), proptest::collection::vec(any::<u8>(), 0..512))
                .prop_map(|(channel, offset, data)| TestFrame::Publish { channel, offset, data }),
            proptest::collection::vec((any::<u32>(), proptest::option::of("[a-z]{0,12}")), 0..20)
                .prop_map(TestFrame::Batch),
            (any::<i64>(), any::<bool>()).prop_map(|(a, b)| TestFrame::Ack(a, b)),
            Just(TestFrame::Shutdown),
        ]
    }

    fn cfg(max: usize) -> FrameCodecConfig {
        FrameCodecConfig::new(max).unwrap_or_else(|e| panic!("{e}"))
    }

    fn encode(frame: &TestFrame) -> Vec<u8> {
        encode_frame(frame, FrameCodecConfig::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn decode(buf: &[u8], cfg: FrameCodecConfig) -> Result<Option<(TestFrame, usize)>, CodecError> {
        decode_frame::<TestFrame>(buf, cfg)
    }

    #[test]
    fn the_wire_format_is_length_version_payload() {
        let bytes = encode(&TestFrame::Ping { seq: 7 });
        // length 3 = version + variant index 0 + varint 7.
        assert_eq!(bytes, [0, 0, 0, 3, CLUSTER_PROTOCOL_VERSION, 0, 7]);
        assert_eq!(FRAME_HEADER_BYTES, 5);
    }

    #[test]
    fn each_malformed_shape_has_its_error() {
        let c = FrameCodecConfig::default();
        assert!(matches!(decode(&[0, 0, 0, 0], c), Err(CodecError::Empty)));
        assert!(matches!(decode(&[0, 0, 0, 2, 9, 0], c), Err(CodecError::UnknownVersion { got: 9 })));
        // Variant index 200 does not exist.
        assert!(matches!(decode(&[0, 0, 0, 3, 1, 200, 1], c), Err(CodecError::Malformed { .. })));
        assert!(matches!(decode(&[0, 0, 0, 3, 1, 4, 0], c), Err(CodecError::TrailingBytes { extra: 1 })));
        assert!(matches!(decode(&[0, 0, 0, 1, 1], c), Err(CodecError::Malformed { .. })));
        assert!(matches!(decode(&[0, 0, 0, 9, 1, 0], c), Ok(None)));
        assert!(matches!(decode(&[0, 0], c), Ok(None)));
        let small = cfg(16);
        match decode(&[0, 0, 0, 17], small) {
            Err(CodecError::TooLarge { len: 17, max: 16 }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_huge_length_inside_the_payload_is_refused_not_allocated() {
        // Publish { channel: "", offset: 0, data: <2^60 bytes> } in a 13-byte frame.
        let mut body = vec![CLUSTER_PROTOCOL_VERSION, 1, 0, 0, 0xfd];
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut frame = u32::try_from(body.len()).unwrap_or_else(|e| panic!("{e}")).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        match decode(&frame, FrameCodecConfig::default()) {
            Err(CodecError::Malformed { reason }) => assert!(reason.contains("decode limit"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_over_the_limit_are_not_encoded() {
        let big = TestFrame::Publish { channel: "c".into(), offset: 0, data: vec![0; 100] };
        assert!(matches!(encode_frame(&big, cfg(64)), Err(CodecError::EncodeTooLarge { max: 64 })));
        let bytes = encode_frame(&big, cfg(200)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(decode(&bytes, cfg(100)), Err(CodecError::TooLarge { .. })));
        assert_eq!(decode(&bytes, cfg(200)).ok().flatten().map(|(f, _)| f), Some(big));
    }

    #[test]
    fn limits_outside_the_ceiling_are_refused() {
        assert_eq!(FrameCodecConfig::new(0), Err(FrameLimitError(0)));
        assert_eq!(FrameCodecConfig::new(MAX_FRAME_BYTES + 1), Err(FrameLimitError(MAX_FRAME_BYTES + 1)));
        assert_eq!(FrameCodecConfig::default().max_frame_bytes(), MAX_FRAME_BYTES);
    }

    #[test]
    fn protocol_violations_are_told_apart_from_local_errors() {
        assert!(CodecError::Empty.is_protocol_violation());
        assert!(!CodecError::EncodeTooLarge { max: 1 }.is_protocol_violation());
        assert!(!CodecError::Encode { reason: String::new() }.is_protocol_violation());
        assert!(CodecError::TrailingBytes { extra: 1 }.is_protocol_violation());
    }

    proptest! {
        #[test]
        fn frames_round_trip(frame in test_frame(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut bytes = encode(&frame);
            let len = bytes.len();
            prop_assert_eq!(frame_len(&bytes, FrameCodecConfig::default()).ok().flatten(), Some(len));
            // Whatever follows the frame (the next frame) is not consumed.
            bytes.extend_from_slice(&tail);
            let decoded = decode(&bytes, FrameCodecConfig::default());
            prop_assert!(matches!(&decoded, Ok(Some((f, n))) if *f == frame && *n == len), "{decoded:?}");
        }

        #[test]
        fn every_strict_prefix_of_a_frame_is_incomplete(frame in test_frame()) {
            let bytes = encode(&frame);
            for cut in 0..bytes.len() {
                prop_assert!(matches!(decode(&bytes[..cut], FrameCodecConfig::default()), Ok(None)), "cut {}", cut);
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 1usize..300) {
            let _ = decode(&bytes, cfg(max));
        }

        #[test]
        fn random_payloads_behind_a_valid_header_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = u32::try_from(payload.len() + 1).unwrap_or_else(|e| panic!("{e}")).to_be_bytes().to_vec();
            bytes.push(CLUSTER_PROTOCOL_VERSION);
            bytes.extend_from_slice(&payload);
            // A complete frame is never "incomplete": it decodes or is refused.
            prop_assert!(!matches!(decode(&bytes, FrameCodecConfig::default()), Ok(None)));
        }

        #[test]
        fn a_length_above_the_limit_is_refused_from_the_prefix_alone(
            max in 1usize..=MAX_FRAME_BYTES,
            excess in 1u64..=u64::from(u32::MAX),
        ) {
            let len = (max as u64).saturating_add(excess).min(u64::from(u32::MAX));
            prop_assume!(len > max as u64);
            let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
            let refused = matches!(decode(&prefix, cfg(max)), Err(CodecError::TooLarge { .. }));
            prop_assert!(refused, "length {} accepted under limit {}", len, max);
        }
    }
}
