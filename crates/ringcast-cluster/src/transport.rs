//! QUIC links between nodes: one endpoint per node, mutual TLS, framed streams.
//!
//! A node binds one [`Transport`] on its cluster port (UDP). The same quinn endpoint
//! accepts links from peers ([`Transport::accept`]) and dials them
//! ([`Transport::connect`]). Both directions use the node's [`ClusterTls`]: TLS 1.3, ALPN
//! `ringcast/1`, certificates chained to the cluster CA on both sides. A link's peer is
//! known by the node id in its certificate; the dialler also insists that it is the node
//! it meant to reach. Whether that id matches the peer's etcd registration is the
//! router's check.
//!
//! Streams carry length-prefixed bincode frames: [`frame`] reads and writes them with
//! the codec in `ringcast_proto::cluster::codec` (the wire format and its limits). The
//! normative description is `proto/cluster.md`.
//!
//! What this module does not do: decide which frames exist (that is
//! `ringcast_proto::cluster`), keep links alive across failures, or queue outbound
//! frames; the per-peer link task that owns a [`quinn::Connection`] does that.
//!
//! Transport parameters: keep-alive every [`KEEP_ALIVE_INTERVAL`] and an
//! [`IDLE_TIMEOUT`], so a silent peer is noticed within seconds (inside the 6 s
//! membership lease); at most [`MAX_CONCURRENT_BIDI_STREAMS`] and
//! [`MAX_CONCURRENT_UNI_STREAMS`] streams open per direction, so what one peer can make
//! us buffer is bounded by those counts times the frame limit.

pub mod frame;

pub use frame::{read_frame, reset_on_error, write_frame, FrameError, RESET_PROTOCOL_ERROR};
pub use ringcast_proto::cluster::codec::{CodecError, FrameCodecConfig, FrameLimitError, MAX_FRAME_BYTES};

use crate::tls::{node_server_name, peer_node_id, ClusterTls, TlsError};
use quinn::{Connection, ConnectionError, VarInt};
use ringcast_core::NodeId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// How often an idle link sends a keep-alive.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A link that hears nothing from its peer for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bidirectional streams a peer may have open towards us at once.
pub const MAX_CONCURRENT_BIDI_STREAMS: u32 = 32;
/// Unidirectional streams a peer may have open towards us at once.
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 32;

/// Connection close code: the node is shutting down.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Connection close code: the peer's certificate does not name a usable node id, or
/// names another node than the one dialled.
pub const CLOSE_BAD_IDENTITY: VarInt = VarInt::from_u32(1);
/// Connection close code: the sender's queue for this peer overflowed (the peer reads
/// too slowly or is stalled); frames queued for it were dropped and it must resync.
pub const CLOSE_OVERLOADED: VarInt = VarInt::from_u32(2);

/// Why a link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind the cluster port {addr}: {source} (is another node running there?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(Box<TlsError>),
    #[error("cannot dial {node} at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        node: NodeId,
        #[source]
        source: quinn::ConnectError,
    },
    #[error(
        "handshake with {} at {addr} failed: {source} (check that both nodes hold certificates from the same \
         cluster CA and that {addr} is that node's cluster address)",
        node.as_ref().map_or("a peer".to_owned(), |n| n.to_string())
    )]
    Handshake {
        addr: SocketAddr,
        node: Option<NodeId>,
        #[source]
        source: ConnectionError,
    },
    #[error("peer at {addr} has an unusable identity: {source}")]
    PeerIdentity {
        addr: SocketAddr,
        #[source]
        source: Box<TlsError>,
    },
    #[error("dialled {expected} at {addr} but reached {actual}")]
    IdentityMismatch { addr: SocketAddr, expected: NodeId, actual: NodeId },
}

impl From<TlsError> for TransportError {
    fn from(err: TlsError) -> Self {
        TransportError::Tls(Box::new(err))
    }
}

/// A node's QUIC endpoint on the cluster port, serving and dialling.
#[derive(Debug)]
pub struct Transport {
    endpoint: quinn::Endpoint,
    node_id: NodeId,
}

impl Transport {
    /// Binds the cluster port (port 0 picks a free one). Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr, tls: &ClusterTls) -> Result<Transport, TransportError> {
        let transport = Arc::new(transport_config());
        let mut server = tls.server_config();
        server.transport_config(transport.clone());
        let mut client = tls.client_config();
        client.transport_config(transport);
        let mut endpoint =
            quinn::Endpoint::server(server, addr).map_err(|source| TransportError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        Ok(Transport { endpoint, node_id: tls.node_id().clone() })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This node's id.
    #[must_use]
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Dials `expected` at `addr`. TLS refuses a peer whose certificate does not name
    /// `expected` (the server name is the node id), and the established link is
    /// checked again.
    ///
    /// With TLS 1.3 the dialler finishes its handshake before the peer has checked the
    /// dialler's certificate: if the peer refuses it, the connection returned here
    /// closes at once and the first stream operation fails.
    pub async fn connect(&self, addr: SocketAddr, expected: &NodeId) -> Result<Connection, TransportError> {
        node_server_name(expected)?;
        let connecting = self.endpoint.connect(addr, expected.as_str()).map_err(|source| TransportError::Connect {
            addr,
            node: expected.clone(),
            source,
        })?;
        let conn = connecting.await.map_err(|source| {
            let err = TransportError::Handshake { addr, node: Some(expected.clone()), source };
            log_handshake_failure(&err);
            err
        })?;
        let actual = match peer_node_id(&conn) {
            Ok(actual) => actual,
            Err(source) => {
                conn.close(CLOSE_BAD_IDENTITY, b"unusable node identity");
                return Err(TransportError::PeerIdentity { addr, source: Box::new(source) });
            }
        };
        if actual != *expected {
            conn.close(CLOSE_BAD_IDENTITY, b"not the node dialled");
            return Err(TransportError::IdentityMismatch { addr, expected: expected.clone(), actual });
        }
        Ok(conn)
    }

    /// The next incoming link with its peer's verified node id; `None` once the
    /// endpoint is closed. A failed handshake is an error for that link only: call
    /// again for the next one.
    ///
    /// The handshake runs inside this call, so a slow peer delays the next accept by
    /// up to [`IDLE_TIMEOUT`]; a loop that must not wait uses [`Transport::accept_inbound`]
    /// and completes each [`Inbound::handshake`] in its own task.
    pub async fn accept(&self) -> Option<Result<(NodeId, Connection), TransportError>> {
        let inbound = self.accept_inbound().await?;
        Some(inbound.handshake().await)
    }

    /// The next incoming link before its handshake; `None` once the endpoint is closed.
    pub async fn accept_inbound(&self) -> Option<Inbound> {
        self.endpoint.accept().await.map(|incoming| Inbound { incoming })
    }

    /// Closes every link with [`CLOSE_SHUTDOWN`] and waits for the peers to be told
    /// (bounded by QUIC's draining period).
    pub async fn close(&self) {
        self.endpoint.close(CLOSE_SHUTDOWN, b"node shutting down");
        self.endpoint.wait_idle().await;
    }
}

/// An incoming link whose handshake has not run yet.
#[derive(Debug)]
pub struct Inbound {
    incoming: quinn::Incoming,
}

impl Inbound {
    /// The peer's address.
    #[must_use]
    pub fn remote_addr(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Runs the handshake: the peer must present a certificate chained to the cluster
    /// CA that names a valid node id.
    pub async fn handshake(self) -> Result<(NodeId, Connection), TransportError> {
        let addr = self.incoming.remote_address();
        let result = match self.incoming.await {
            Ok(conn) => match peer_node_id(&conn) {
                Ok(node) => {
                    debug!(peer = %node, remote = %addr, "cluster link accepted");
                    Ok((node, conn))
                }
                Err(source) => {
                    conn.close(CLOSE_BAD_IDENTITY, b"unusable node identity");
                    Err(TransportError::PeerIdentity { addr, source: Box::new(source) })
                }
            },
            Err(source) => Err(TransportError::Handshake { addr, node: None, source }),
        };
        if let Err(err) = &result {
            log_handshake_failure(err);
        }
        result
    }
}

/// TLS refusals and identity problems are misconfigurations an operator must fix:
/// `warn`. Timeouts and resets are ordinary network weather: `debug`.
fn log_handshake_failure(err: &TransportError) {
    let misconfigured = matches!(
        err,
        TransportError::PeerIdentity { .. }
            | TransportError::IdentityMismatch { .. }
            | TransportError::Handshake {
                source: ConnectionError::TransportError(_) | ConnectionError::ConnectionClosed(_),
                ..
            }
    );
    if misconfigured {
        warn!(error = %err, "cluster handshake refused");
    } else {
        debug!(error = %err, "cluster handshake failed");
    }
}

fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        // IDLE_TIMEOUT is a few seconds, far below QUIC's 2^62 ms ceiling.
        .max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_CONCURRENT_UNI_STREAMS))
        // Frames travel on streams only.
        .datagram_receive_buffer_size(None);
    config
}
