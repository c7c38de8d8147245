//! The accept loop: TCP connections to HTTP/1.1 (with upgrades) on the client port.
//!
//! A semaphore caps open connections (`limits.max_connections`) before `accept`, so a
//! flood waits in the kernel backlog instead of exhausting file descriptors. Each
//! connection is served by hyper with explicit limits: request-head read timeout
//! (slowloris), header count and header bytes (431 beyond). The connection's permit
//! travels into a WebSocket session if the connection upgrades, so the cap counts
//! sessions too.

use crate::node::Node;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;
use tracing::{debug, warn};

/// Pause after a failed `accept` (for example EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A share of `limits.max_connections`, held by a connection and by the WebSocket
/// session it upgrades into.
#[derive(Debug, Clone)]
pub struct ConnPermit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// The peer address of the request's connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Accepts connections until `node.shutdown` is cancelled.
pub async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(node.config.limits.max_connections));
    let app = crate::http::router(node.clone());
    loop {
        let permit = tokio::select! {
            biased;
            () = node.shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // the semaphore is never closed
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = node.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = node.config.limits.socket_send_buffer {
            if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(bytes) {
                debug!(error = %e, "could not set the socket's send buffer");
            }
        }
        let (node2, app) = (node.clone(), app.clone());
        node.tracker.spawn(serve_connection(node2, stream, peer, app, ConnPermit(Arc::new(permit))));
    }
}

async fn serve_connection(node: Arc<Node>, stream: TcpStream, peer: SocketAddr, app: axum::Router, permit: ConnPermit) {
    let limits = &node.config.limits;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(permit.clone());
        req.extensions_mut().insert(PeerAddr(peer));
        let mut app = app.clone();
        async move { app.call(req).await }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_headers(limits.max_header_count)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = node.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "http connection ended with an error");
    }
}
