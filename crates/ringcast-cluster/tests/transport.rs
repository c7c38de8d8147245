//! Real QUIC links on 127.0.0.1 with certificates issued into temporary directories:
//! who may connect, who is refused, and what a malformed frame does to a stream (and
//! does not do to the endpoint).

use ringcast_cluster::tls::{ca_init, ca_issue, peer_node_id, ClusterTls, ALPN};
use ringcast_cluster::transport::{
    read_frame, reset_on_error, write_frame, CodecError, FrameCodecConfig, FrameError, Transport, TransportError,
    RESET_PROTOCOL_ERROR,
};
use ringcast_core::NodeId;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
enum TestFrame {
    Ping { seq: u64 },
    Publish { channel: String, data: Vec<u8> },
    Ack(u64),
}

const LOCALHOST: &str = "127.0.0.1:0";

/// Fails the test instead of hanging it.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut).await.unwrap_or_else(|_| panic!("timed out"))
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap_or_else(|e| panic!("{id}: {e}"))
}

/// A CA in `{root}/{name}` with certificates issued into `{root}/{name}-certs`.
struct Ca {
    dir: PathBuf,
    certs: PathBuf,
}

impl Ca {
    fn new(root: &Path, name: &str) -> Ca {
        let dir = root.join(name);
        ca_init(&dir, false).unwrap_or_else(|e| panic!("ca init: {e}"));
        Ca { certs: root.join(format!("{name}-certs")), dir }
    }

    fn pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `id` and returns (cert, key) paths.
    fn issue(&self, id: &str) -> (PathBuf, PathBuf) {
        let paths = ca_issue(&self.dir, &node(id), &self.certs, true).unwrap_or_else(|e| panic!("issue {id}: {e}"));
        (paths.cert, paths.key)
    }

    fn tls(&self, id: &str) -> ClusterTls {
        let (cert, key) = self.issue(id);
        ClusterTls::load(&self.pem(), &cert, &key).unwrap_or_else(|e| panic!("load {id}: {e}"))
    }

    fn transport(&self, id: &str) -> Transport {
        let addr: SocketAddr = LOCALHOST.parse().unwrap_or_else(|e| panic!("{e}"));
        Transport::bind(addr, &self.tls(id)).unwrap_or_else(|e| panic!("bind {id}: {e}"))
    }
}

fn addr_of(t: &Transport) -> SocketAddr {
    t.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

/// Dials `to` from `from` while `to` accepts; returns both ends.
async fn link(from: &Transport, to: &Transport) -> (quinn::Connection, NodeId, quinn::Connection) {
    let (dialled, accepted) =
        within(async { tokio::join!(from.connect(addr_of(to), to.node_id()), to.accept()) }).await;
    let dialled = dialled.unwrap_or_else(|e| panic!("connect: {e}"));
    let (peer, accepted) = accepted.unwrap_or_else(|| panic!("endpoint closed")).unwrap_or_else(|e| panic!("{e}"));
    (dialled, peer, accepted)
}

/// A raw quinn client that trusts `trust` and presents `identity` (or nothing): what a
/// misconfigured or hostile node could run, outside `ClusterTls`'s own checks.
fn raw_client(trust: &Path, identity: Option<(&Path, &Path)>) -> (quinn::Endpoint, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(trust).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap_or_else(|e| panic!("{e}"))],
                PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap_or_else(|e| panic!("{e}"));
    let addr: SocketAddr = LOCALHOST.parse().unwrap_or_else(|e| panic!("{e}"));
    let endpoint = quinn::Endpoint::client(addr).unwrap_or_else(|e| panic!("{e}"));
    (endpoint, quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Dials `server` (which must refuse) with a raw client; returns the server's verdict
/// after checking the client's link does not survive.
async fn refused_raw_dial(
    server: &Transport,
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
) -> TransportError {
    let connecting =
        endpoint.connect_with(config, addr_of(server), server.node_id().as_str()).unwrap_or_else(|e| panic!("{e}"));
    let (client, accepted) = within(async { tokio::join!(connecting, server.accept()) }).await;
    // TLS 1.3: the client may finish its side before the server refuses its
    // certificate; then the connection closes right after.
    if let Ok(conn) = client {
        let reason = within(conn.closed()).await;
        assert!(!matches!(reason, quinn::ConnectionError::LocallyClosed), "{reason}");
    }
    match accepted {
        Some(Err(e)) => e,
        Some(Ok((peer, _))) => panic!("server accepted {peer}"),
        None => panic!("endpoint closed"),
    }
}

/// The endpoint still serves: a fresh node connects and a frame goes through.
async fn still_serving(ca: &Ca, server: &Transport, new_id: &str) {
    let newcomer = ca.transport(new_id);
    let (conn, peer, accepted) = link(&newcomer, server).await;
    assert_eq!(peer, node(new_id));
    let cfg = FrameCodecConfig::default();
    let mut send = within(conn.open_uni()).await.unwrap_or_else(|e| panic!("{e}"));
    within(write_frame(&mut send, &TestFrame::Ack(1), cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    let mut recv = within(accepted.accept_uni()).await.unwrap_or_else(|e| panic!("{e}"));
    let got = within(read_frame::<TestFrame>(&mut recv, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, Some(TestFrame::Ack(1)));
}

#[tokio::test]
async fn two_nodes_exchange_frames_both_ways_and_know_each_other() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = Ca::new(tmp.path(), "ca");
    let a = ca.transport("node-a");
    let b = ca.transport("node-b.eu");
    assert_eq!(a.node_id(), &node("node-a"));
    let (a_conn, a_seen_by_b, b_conn) = link(&a, &b).await;
    assert_eq!(a_seen_by_b, node("node-a"));
    assert_eq!(peer_node_id(&a_conn).unwrap_or_else(|e| panic!("{e}")), node("node-b.eu"));
    let cfg = FrameCodecConfig::default();

    // Bidirectional: a asks, b answers.
    let (mut a_send, mut a_recv) = within(a_conn.open_bi()).await.unwrap_or_else(|e| panic!("{e}"));
    let publish = TestFrame::Publish { channel: "scores:nba".into(), data: vec![7; 100_000] };
    within(write_frame(&mut a_send, &TestFrame::Ping { seq: 1 }, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    within(write_frame(&mut a_send, &publish, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    let (mut b_send, mut b_recv) = within(b_conn.accept_bi()).await.unwrap_or_else(|e| panic!("{e}"));
    let first = within(read_frame::<TestFrame>(&mut b_recv, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first, Some(TestFrame::Ping { seq: 1 }));
    let second = within(read_frame::<TestFrame>(&mut b_recv, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second, Some(publish));
    within(write_frame(&mut b_send, &TestFrame::Ack(2), cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    b_send.finish().unwrap_or_else(|e| panic!("{e}"));
    let reply = within(read_frame::<TestFrame>(&mut a_recv, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply, Some(TestFrame::Ack(2)));
    let end = within(read_frame::<TestFrame>(&mut a_recv, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(end, None, "a finished stream ends cleanly between frames");

    // Unidirectional, each way.
    for (from, to, seq) in [(&a_conn, &b_conn, 10), (&b_conn, &a_conn, 20)] {
        let mut send = within(from.open_uni()).await.unwrap_or_else(|e| panic!("{e}"));
        within(write_frame(&mut send, &TestFrame::Ping { seq }, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
        send.finish().unwrap_or_else(|e| panic!("{e}"));
        let mut recv = within(to.accept_uni()).await.unwrap_or_else(|e| panic!("{e}"));
        let got = within(read_frame::<TestFrame>(&mut recv, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, Some(TestFrame::Ping { seq }));
        let end = within(read_frame::<TestFrame>(&mut recv, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(end, None);
    }

    within(b.close()).await;
    assert!(within(b.accept()).await.is_none(), "a closed endpoint accepts nothing");
    let reason = within(a_conn.closed()).await;
    assert!(matches!(reason, quinn::ConnectionError::ApplicationClosed(_)), "{reason}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = Ca::new(tmp.path(), "ca");
    let other = Ca::new(tmp.path(), "other-ca");
    let b = ca.transport("node-b");

    // Inbound: the intruder trusts our (public) CA certificate, so only its own
    // certificate is at stake, and it claims a name of ours.
    let (intruder_cert, intruder_key) = other.issue("node-a");
    let (endpoint, config) = raw_client(&ca.pem(), Some((&intruder_cert, &intruder_key)));
    let err = refused_raw_dial(&b, &endpoint, config).await;
    assert!(matches!(err, TransportError::Handshake { node: None, .. }), "{err}");
    // Both CAs are called "ringcast cluster CA": the name matches, the signature does not.
    assert!(err.to_string().contains("invalid peer certificate"), "{err}");

    // Outbound: we dial a node of the other CA that names the node we expect.
    let impostor = other.transport("node-c");
    let a = ca.transport("node-a");
    let node_c = node("node-c");
    let (dialled, _) = within(async { tokio::join!(a.connect(addr_of(&impostor), &node_c), impostor.accept()) }).await;
    match &dialled {
        Err(TransportError::Handshake { node: Some(n), .. }) => assert_eq!(n, &node("node-c")),
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    let err = dialled.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("invalid peer certificate"), "{err}");

    still_serving(&ca, &b, "node-d").await;
}

#[tokio::test]
async fn a_node_dialled_under_another_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = Ca::new(tmp.path(), "ca");
    let a = ca.transport("node-a");
    let b = ca.transport("node-b");
    let node_c = node("node-c");
    let (dialled, accepted) = within(async { tokio::join!(a.connect(addr_of(&b), &node_c), b.accept()) }).await;
    match dialled {
        Err(e @ TransportError::Handshake { .. }) => {
            assert!(e.to_string().contains(r#"not valid for name "node-c""#), "{e}");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    assert!(matches!(accepted, Some(Err(_))), "{accepted:?}");
    still_serving(&ca, &b, "node-d").await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = Ca::new(tmp.path(), "ca");
    let b = ca.transport("node-b");
    let (endpoint, config) = raw_client(&ca.pem(), None);
    let err = refused_raw_dial(&b, &endpoint, config).await;
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("no certificates"), "{err}");
    still_serving(&ca, &b, "node-a").await;
}

#[tokio::test]
async fn malformed_frames_reset_their_stream_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = Ca::new(tmp.path(), "ca");
    let a = ca.transport("node-a");
    let b = ca.transport("node-b");
    let (a_conn, _, b_conn) = link(&a, &b).await;
    let cfg = FrameCodecConfig::default();

    type Check = fn(&FrameError) -> bool;
    // (name, bytes, finish the stream after them, expected error)
    let cases: [(&str, Vec<u8>, bool, Check); 7] = [
        ("truncated body", vec![0, 0, 0, 10, 1, 0, 7], true, |e| {
            matches!(e, FrameError::Truncated { got: 7, expected: 14 })
        }),
        ("truncated prefix", vec![0, 0], true, |e| matches!(e, FrameError::Truncated { got: 2, expected: 4 })),
        // Not finished: the length alone must be refused, without waiting for a payload.
        ("oversized length", vec![0xff, 0xff, 0xff, 0xff, 1, 0], false, |e| {
            matches!(e, FrameError::Codec(CodecError::TooLarge { len: 0xffff_ffff, .. }))
        }),
        ("just over the limit", vec![0x01, 0, 0, 1, 1], false, |e| {
            matches!(e, FrameError::Codec(CodecError::TooLarge { .. }))
        }),
        ("zero length", vec![0, 0, 0, 0, 9, 9], false, |e| matches!(e, FrameError::Codec(CodecError::Empty))),
        ("unknown version", vec![0, 0, 0, 3, 2, 0, 7], false, |e| {
            matches!(e, FrameError::Codec(CodecError::UnknownVersion { got: 2 }))
        }),
        // Variant 200 of a three-variant enum.
        ("garbage payload", vec![0, 0, 0, 4, 1, 200, 1, 1], false, |e| {
            matches!(e, FrameError::Codec(CodecError::Malformed { .. }))
        }),
    ];
    for (name, bytes, finish, check) in cases {
        let mut send = within(a_conn.open_uni()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        within(send.write_all(&bytes)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        if finish {
            send.finish().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let mut recv = within(b_conn.accept_uni()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = match within(read_frame::<TestFrame>(&mut recv, cfg)).await {
            Err(e) => e,
            Ok(frame) => panic!("{name}: decoded {frame:?}"),
        };
        assert!(check(&err), "{name}: {err}");
        assert!(reset_on_error(&mut recv, &err), "{name}: {err} is a protocol violation");
        if !finish {
            let stopped = within(send.stopped()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(stopped, Some(RESET_PROTOCOL_ERROR), "{name}: the sender learns why");
        }
    }

    // The link itself is fine: a good frame still goes through it ...
    let mut send = within(a_conn.open_uni()).await.unwrap_or_else(|e| panic!("{e}"));
    within(write_frame(&mut send, &TestFrame::Ack(9), cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    let mut recv = within(b_conn.accept_uni()).await.unwrap_or_else(|e| panic!("{e}"));
    let got = within(read_frame::<TestFrame>(&mut recv, cfg)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, Some(TestFrame::Ack(9)));
    // ... and the endpoint keeps accepting other nodes.
    still_serving(&ca, &b, "node-c").await;
}
