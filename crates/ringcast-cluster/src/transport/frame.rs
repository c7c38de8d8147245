//! Frames on cluster streams: quinn drivers around the codec in
//! [`ringcast_proto::cluster::codec`] (which defines the wire format, and is the only
//! place bincode is called).
//!
//! [`write_frame`] encodes and writes one frame; [`read_frame`] reads the length prefix,
//! checks it before buffering anything, then buffers the body only as it arrives (never
//! pre-allocated from the length), so hostile input cannot make a reader allocate more
//! than the frame limit. [`reset_on_error`] answers a refused frame.

use quinn::{ReadExactError, RecvStream, SendStream, VarInt};
use ringcast_proto::cluster::codec::{
    body_len, decode_body, encode_frame, CodecError, FrameCodecConfig, LENGTH_PREFIX_BYTES,
};

/// Stream error code sent (as STOP_SENDING, or RESET_STREAM on a send side) when a peer
/// sends a frame this codec refuses.
pub const RESET_PROTOCOL_ERROR: VarInt = VarInt::from_u32(1);

/// Bytes reserved up front when reading a frame body; the rest grows as data arrives,
/// so a length prefix alone never makes the reader allocate.
const READ_RESERVE_BYTES: usize = 64 * 1024;

/// Why a frame could not be written or read.
///
/// [`FrameError::is_protocol_violation`] tells the peer's mistakes (answer with
/// [`reset_on_error`]) from stream and connection failures (nothing left to answer).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("stream ended inside a frame after {got} of {expected} bytes")]
    Truncated { got: usize, expected: usize },
    #[error("cannot read frame: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("cannot write frame: {0}")]
    Write(#[from] quinn::WriteError),
}

impl FrameError {
    /// True when the peer sent something this codec refuses (as opposed to a local
    /// encoding failure or a stream/connection failure).
    #[must_use]
    pub fn is_protocol_violation(&self) -> bool {
        match self {
            FrameError::Codec(e) => e.is_protocol_violation(),
            FrameError::Truncated { .. } => true,
            FrameError::Read(_) | FrameError::Write(_) => false,
        }
    }
}

/// Writes one frame to `send`.
pub async fn write_frame<T: bincode::Encode>(
    send: &mut SendStream,
    frame: &T,
    cfg: FrameCodecConfig,
) -> Result<(), FrameError> {
    let bytes = encode_frame(frame, cfg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Reads the next frame from `recv`: `Ok(None)` when the peer finished the stream
/// cleanly between frames. On an error that
/// [is a protocol violation](FrameError::is_protocol_violation), answer with
/// [`reset_on_error`] and stop reading the stream.
///
/// Not cancel-safe: a frame partly read when the future is dropped is lost, and the
/// stream is then out of step. Read each stream in its own task and forward decoded
/// frames over a bounded channel rather than racing `read_frame` in a `select!`.
pub async fn read_frame<T: bincode::Decode<()>>(
    recv: &mut RecvStream,
    cfg: FrameCodecConfig,
) -> Result<Option<T>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(got)) => {
            return Err(FrameError::Truncated { got, expected: LENGTH_PREFIX_BYTES });
        }
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = body_len(prefix, cfg)?;
    let mut body = Vec::with_capacity(len.min(READ_RESERVE_BYTES));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => {
                return Err(FrameError::Truncated {
                    got: LENGTH_PREFIX_BYTES + body.len(),
                    expected: LENGTH_PREFIX_BYTES + len,
                });
            }
        }
    }
    Ok(Some(decode_body(&body)?))
}

/// Answers a refused frame: asks the peer to stop sending on this stream with
/// [`RESET_PROTOCOL_ERROR`] (QUIC STOP_SENDING; the peer's writes then fail with that
/// code). Does nothing for errors that are not the peer's protocol violations. Returns
/// whether it stopped the stream; on a bidirectional stream also reset the send half
/// (`send.reset(RESET_PROTOCOL_ERROR)`) when it did.
pub fn reset_on_error(recv: &mut RecvStream, err: &FrameError) -> bool {
    if !err.is_protocol_violation() {
        return false;
    }
    // Err means the stream is already closed on our side: nothing left to refuse.
    let _ = recv.stop(RESET_PROTOCOL_ERROR);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_violations_are_told_apart_from_stream_failures() {
        assert!(FrameError::Codec(CodecError::Empty).is_protocol_violation());
        assert!(FrameError::Truncated { got: 1, expected: 4 }.is_protocol_violation());
        assert!(!FrameError::Codec(CodecError::EncodeTooLarge { max: 1 }).is_protocol_violation());
        assert!(!FrameError::Read(quinn::ReadError::ClosedStream).is_protocol_violation());
    }
}
