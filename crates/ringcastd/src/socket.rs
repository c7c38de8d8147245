//! A client's TCP socket, shared by its session and the producers of its frames.
//!
//! The socket lives in the connection's [`Outbox`] ([`Outbox::attach`]): a flusher task
//! writes the connection's queued messages straight to it while the session holds
//! nothing ("Direct writes" in [`crate::outbox`]), which spares the session a wake-up per
//! delivery, and the session reads it and writes through tungstenite by way of the
//! outbox. Both sides write under the outbox's lock, and no side leaves part of a frame
//! on the socket: what a short write leaves over is kept in the outbox and written
//! before anything else, so the stream stays a sequence of whole frames.

use crate::outbox::Outbox;
use bytes::{Buf as _, Bytes};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The session's side of a client socket (see the module docs).
#[derive(Debug)]
pub struct Socket {
    /// What hyper read past the upgrade request: the client's first frames.
    early: Bytes,
    /// Holds the socket ([`Outbox::attach`]).
    outbox: Arc<Outbox>,
}

impl Socket {
    /// The session's side of the socket `outbox` holds. `early` is copied out: as hyper
    /// hands it over, it is a view of hyper's whole read buffer (kilobytes), which it
    /// would keep alive for the connection's life.
    #[must_use]
    pub fn new(early: &[u8], outbox: Arc<Outbox>) -> Socket {
        Socket { early: Bytes::copy_from_slice(early), outbox }
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            if this.early.is_empty() {
                this.early = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.outbox.poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.outbox.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbox.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbox.poll_shutdown(cx)
    }
}
