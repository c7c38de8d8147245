//! The socket under a WebSocket session's tungstenite, read without a resident buffer.
//!
//! tungstenite 0.30 reads into a buffer it allocates when the session starts and keeps
//! for the session's life. Its size (`read_buffer_size`) is also the most it asks for per
//! read, and before every read attempt it zero-fills the unused capacity, so the whole
//! buffer is resident on every connection, idle ones included. At 4 KiB it was the
//! largest part of an idle connection's memory (docs/benchmarks.md, finding 4), and a
//! smaller one alone would turn a large frame into a system call per few hundred bytes.
//!
//! So tungstenite's buffer is small ([`crate::session::WS_READ_BUFFER_BYTES`], room for a
//! typical command) and [`LazyRead`] sits between it and the socket. A read goes straight
//! into tungstenite's buffer (no copy, nothing of ours allocated) until one fills it: then
//! more is probably waiting (a large frame), and the next read takes up to
//! [`READ_CHUNK_BYTES`] into a chunk allocated for it, handed to tungstenite in pieces
//! and freed as soon as it is drained, or at once when the socket had nothing. An idle
//! connection holds no chunk; a large frame costs one system call per chunk.
//!
//! Writes pass through untouched. The chunk's bytes are read and handed on in order, and
//! end of stream and errors are passed on when nothing is buffered, so tungstenite sees
//! exactly the byte stream of the socket.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes read from the socket at once while a large frame arrives; allocated only
/// then, and freed once handed on.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// A stream whose reads are buffered only while the data is larger than the caller's
/// buffer (see the module docs).
///
/// Invariant: `chunk` is empty (and unallocated) unless it holds bytes read from `inner`
/// and not yet handed on, which go out before anything read later.
#[derive(Debug)]
pub struct LazyRead<S> {
    inner: S,
    chunk: BytesMut,
    /// The last read filled the caller's buffer: read the next through a chunk.
    bulk: bool,
}

impl<S> LazyRead<S> {
    pub fn new(inner: S) -> LazyRead<S> {
        LazyRead { inner, chunk: BytesMut::new(), bulk: false }
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Bytes read ahead of the caller and not handed on yet.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.chunk.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LazyRead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.chunk.is_empty() {
            let n = out.remaining().min(this.chunk.len());
            out.put_slice(&this.chunk[..n]);
            this.chunk.advance(n);
            if this.chunk.is_empty() {
                // Free it: an idle connection keeps no read buffer of its own.
                this.chunk = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        if !this.bulk || out.remaining() >= READ_CHUNK_BYTES {
            let before = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            this.bulk = out.filled().len() > before && out.remaining() == 0;
            return Poll::Ready(Ok(()));
        }
        let mut chunk = BytesMut::with_capacity(READ_CHUNK_BYTES);
        // On `Pending` the chunk is dropped (nothing was read into it): a connection that
        // falls idle right after a large frame does not keep one.
        let read = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut chunk));
        this.bulk = false;
        let n = read?;
        if n == 0 {
            return Poll::Ready(Ok(())); // end of stream
        }
        // A full chunk means more is likely waiting: keep reading in chunks.
        this.bulk = n == READ_CHUNK_BYTES;
        let take = out.remaining().min(n);
        out.put_slice(&chunk[..take]);
        chunk.advance(take);
        if !chunk.is_empty() {
            this.chunk = chunk;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LazyRead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Reads everything through `LazyRead` in pieces of `piece` bytes, as tungstenite does.
    async fn read_all(source: &[u8], piece: usize) -> (Vec<u8>, usize) {
        let mut r = LazyRead::new(source);
        let mut got = Vec::new();
        let mut most_buffered = 0;
        let mut buf = vec![0u8; piece];
        loop {
            let n = r.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
            most_buffered = most_buffered.max(r.buffered());
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(r.buffered(), 0, "nothing left behind at the end of the stream");
        (got, most_buffered)
    }

    #[tokio::test]
    async fn hands_on_every_byte_in_order() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for piece in [1, 14, 255, 256, 257, 4096, READ_CHUNK_BYTES, READ_CHUNK_BYTES + 1, 300_000] {
            for len in [0, 1, 255, 256, 257, READ_CHUNK_BYTES, READ_CHUNK_BYTES + 7, data.len()] {
                let (got, most_buffered) = read_all(&data[..len], piece).await;
                assert_eq!(got, &data[..len], "piece {piece}, length {len}");
                assert!(most_buffered < READ_CHUNK_BYTES, "piece {piece}, length {len}");
            }
        }
    }

    #[tokio::test]
    async fn small_reads_go_straight_through() {
        let mut r = LazyRead::new(&b"a command"[..]);
        let mut buf = [0u8; 256];
        assert_eq!(r.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}")), 9);
        assert_eq!(&buf[..9], b"a command");
        assert!(!r.bulk && r.chunk.capacity() == 0, "a read that fits allocates nothing");
    }

    #[tokio::test]
    async fn a_large_read_is_chunked_then_freed() {
        let data = vec![7u8; READ_CHUNK_BYTES * 2 + 100];
        let mut r = LazyRead::new(&data[..]);
        let mut buf = [0u8; 256];
        let mut total = r.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(r.bulk, "a read that filled the caller's buffer switches to chunks");
        total += r.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.buffered(), READ_CHUNK_BYTES - 256, "one chunk read, one piece handed on");
        while r.buffered() > 0 {
            total += r.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(r.chunk.capacity(), 0, "a drained chunk is freed");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(total + rest.len(), data.len());
    }
}
