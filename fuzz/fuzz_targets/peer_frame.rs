//! The cluster frame codec (`ringcast_proto::cluster::codec`) decoding
//! `ringcast_proto::cluster::PeerFrame`s: raw bytes, and structured frames built with
//! `arbitrary`.
//!
//! Input: the first byte picks the codec's frame limit (the default 16 MiB, or a small
//! one so limit checks are reached); the rest is the receive buffer, and is also read as
//! an `arbitrary` `PeerFrame`.
//!
//! Properties:
//! - decoding never panics and every error is a protocol violation (never a local one);
//! - `Ok(None)` ("read more") only when the buffer holds less than the announced frame;
//!   a decoded frame consumed exactly `frame_len` bytes, within the limit, and every
//!   strict prefix of it is `Ok(None)`;
//! - decode(encode(x)) == x for every frame that decoded, and the canonical encoding is
//!   no longer than the bytes it came from (bincode varints may be over-long on input);
//! - decode(encode(x)) == x for structured frames, and the length prefix is exact;
//! - decoding allocates at most the codec's 16 MiB ceiling (plus bookkeeping), whatever
//!   the length prefix or the lengths inside the payload claim.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ringcast_proto::cluster::codec::{
    decode_frame, encode_frame, frame_len, CodecError, FrameCodecConfig, LENGTH_PREFIX_BYTES, MAX_FRAME_BYTES,
};
use ringcast_proto::cluster::PeerFrame;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Slack over the ceiling for the decoder's own bookkeeping (error strings and the like).
const ALLOC_SLACK: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, buf)) = data.split_first() else { return };
    let cfg = match mode {
        0..=127 => FrameCodecConfig::default(),
        small => FrameCodecConfig::new(usize::from(small) * 4).unwrap_or_else(|e| panic!("{e}")),
    };
    raw(buf, cfg);
    structured(buf);
});

fn raw(buf: &[u8], cfg: FrameCodecConfig) {
    let (decoded, peak) = measure(|| decode_frame::<PeerFrame>(buf, cfg));
    assert!(peak <= MAX_FRAME_BYTES + ALLOC_SLACK, "decoding {} bytes allocated {peak} bytes at peak", buf.len());
    match decoded {
        Err(e) => assert!(e.is_protocol_violation(), "decode produced a local error: {e}"),
        Ok(None) => match frame_len(buf, cfg) {
            Ok(None) => assert!(buf.len() < LENGTH_PREFIX_BYTES),
            Ok(Some(total)) => assert!(total > buf.len(), "complete frame of {total} bytes reported incomplete"),
            Err(e) => panic!("decode said incomplete but frame_len refuses: {e}"),
        },
        Ok(Some((frame, used))) => {
            assert_eq!(frame_len(buf, cfg).ok().flatten(), Some(used));
            assert!(used <= buf.len() && used <= LENGTH_PREFIX_BYTES + cfg.max_frame_bytes());
            for cut in [0, 1, LENGTH_PREFIX_BYTES, used / 2, used - 1] {
                if cut < used {
                    let partial = decode_frame::<PeerFrame>(&buf[..cut], cfg);
                    assert!(matches!(partial, Ok(None)), "prefix of {cut} bytes gave {partial:?}");
                }
            }
            let bytes = round_trip(&frame);
            assert!(bytes.len() <= used, "re-encoding grew the frame from {used} to {} bytes", bytes.len());
        }
    }
}

fn structured(buf: &[u8]) {
    let mut u = Unstructured::new(buf);
    if let Ok(frame) = PeerFrame::arbitrary(&mut u) {
        let bytes = round_trip(&frame);
        let len = u32::from_be_bytes(bytes[..LENGTH_PREFIX_BYTES].try_into().unwrap_or_default());
        assert_eq!(usize::try_from(len).ok(), Some(bytes.len() - LENGTH_PREFIX_BYTES));
    }
}

/// Encodes `frame`, decodes it again, and checks that nothing changed. Returns the bytes.
fn round_trip(frame: &PeerFrame) -> Vec<u8> {
    let cfg = FrameCodecConfig::default();
    let bytes = match encode_frame(frame, cfg) {
        Ok(bytes) => bytes,
        Err(CodecError::EncodeTooLarge { .. }) => return Vec::new(),
        Err(e) => panic!("a decodable frame does not encode: {e}"),
    };
    match decode_frame::<PeerFrame>(&bytes, cfg) {
        Ok(Some((back, used))) => {
            assert_eq!(&back, frame, "decode(encode(x)) != x");
            assert_eq!(used, bytes.len());
        }
        other => panic!("encoded frame does not decode: {other:?}"),
    }
    bytes
}

/// Runs `f` and returns its result with the most bytes it held allocated at once.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their high-water mark.
struct Counting;

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; the counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: forwarded verbatim (see the impl).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: forwarded verbatim (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded verbatim (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grow(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded verbatim (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOC: Counting = Counting;
