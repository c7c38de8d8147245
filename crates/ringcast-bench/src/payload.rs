//! The benchmark payload: the same bytes for every system.
//!
//! `size` bytes of printable ASCII: the scheduled send time (nanoseconds since the load
//! generator's start, 16 hex digits), the per-channel sequence number (16 hex digits),
//! then `x` filler. ASCII because ringcast carries it inside a JSON string (`data`)
//! without escapes; Redis and NATS carry the same bytes as an opaque payload. So the
//! "first 16 bytes" of the issue (two `u64`s) are hex-encoded in the first 32 bytes.

/// Bytes taken by the header (two `u64`s in hex).
pub const HEADER_BYTES: usize = 32;

/// Writes the payload for message `seq` scheduled at `ts_ns` into `out` (replacing it).
pub fn encode(out: &mut Vec<u8>, ts_ns: u64, seq: u64, size: usize) {
    out.clear();
    out.extend_from_slice(format!("{ts_ns:016x}{seq:016x}").as_bytes());
    out.resize(size.max(HEADER_BYTES), b'x');
}

fn hex_u64(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |acc, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(d))
    })
}

/// The `(ts_ns, seq)` of a payload, or `None` when it is not one of ours.
#[must_use]
pub fn decode(p: &[u8]) -> Option<(u64, u64)> {
    if p.len() < HEADER_BYTES {
        return None;
    }
    Some((hex_u64(&p[..16])?, hex_u64(&p[16..32])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let mut p = Vec::new();
        encode(&mut p, 123_456_789, 42, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(decode(&p), Some((123_456_789, 42)));
        encode(&mut p, u64::MAX, 0, 1024);
        assert_eq!(p.len(), 1024);
        assert_eq!(decode(&p), Some((u64::MAX, 0)));
        assert_eq!(decode(b"zz"), None);
    }
}
