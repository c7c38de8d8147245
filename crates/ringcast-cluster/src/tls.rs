//! The cluster CA and node identities: who may speak on the cluster port.
//!
//! Every node holds a certificate issued by the cluster CA whose single DNS subject
//! alternative name is its [`NodeId`]. Links between nodes are QUIC with mutual TLS
//! (see [`crate::transport`]): both sides present their certificate, both sides accept
//! only certificates chained to the cluster CA, the dialling side checks that the peer's
//! certificate names the node it meant to reach, and the accepting side learns who dialled
//! from the dialler's certificate ([`peer_node_id`]). Whether that node id matches the
//! node's etcd registration is the router's check, not this module's.
//!
//! What lives here:
//! - [`ca_init`] and [`ca_issue`]: create the CA and issue node certificates (the
//!   `ringcast ca` commands). Keys are ECDSA P-256, written `0600`.
//! - [`ClusterTls`]: a node's loaded identity, checked at load time against the CA (so a
//!   misissued or expired certificate fails at start-up with a hint, not later as an
//!   opaque handshake alert), and the rustls/quinn crypto configs built from it.
//! - [`peer_node_id`]: the verified peer identity of an established connection.
//!
//! What does not: transport parameters (keep-alive, idle timeout, stream limits) belong
//! to [`crate::transport`]; revocation is by re-creating the CA (there is no CRL), which
//! is acceptable for a cluster whose members are all run by one operator.

use ringcast_core::{NameError, NodeId};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

/// ALPN protocol id of the cluster protocol; both configs offer only this one.
pub const ALPN: &[u8] = b"ringcast/1";
/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Common name of the cluster CA.
pub const CA_COMMON_NAME: &str = "ringcast cluster CA";
/// Validity of the cluster CA: ten years (3650 days).
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Validity of a node certificate: one year (365 days), cut to the CA's own expiry.
pub const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before "now", so a peer whose clock is a little behind
/// does not reject a freshly issued certificate as not yet valid.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Mode of private key files (owner read/write only).
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate files (public data).
pub const CERT_FILE_MODE: u32 = 0o644;
/// Mode of directories this module creates (they hold private keys).
pub const DIR_MODE: u32 = 0o700;

/// Why a CA, certificate or key could not be created, loaded or trusted. Each message
/// says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{} already exists; pass --force to overwrite it{hint}", path.display())]
    Exists { path: PathBuf, hint: &'static str },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cluster CA at {}: run `ringcast ca init --dir {}` first", path.display(), dir.display())]
    MissingCa { dir: PathBuf, path: PathBuf },
    #[error("{} is missing: run `ringcast ca issue {node}` and copy {node}.pem and {node}.key to this node", path.display())]
    MissingNodeFile { path: PathBuf, node: String },
    #[error("{} holds no {what} in PEM format", path.display())]
    BadPem { path: PathBuf, what: &'static str },
    #[error("{} is not a usable {what}: {reason}", path.display())]
    Unusable { path: PathBuf, what: &'static str, reason: String },
    #[error("the cluster CA {} expired; run `ringcast ca init --force` and re-issue every node certificate", path.display())]
    CaExpired { path: PathBuf },
    #[error(
        "node id `{node}` cannot be a certificate name ({reason}); use DNS-style labels such as `node-1` or \
         `node-1.eu`: each label 1-63 characters, not starting or ending with '-', the last one not all digits"
    )]
    NodeIdNotDnsName { node: String, reason: &'static str },
    #[error("{cert} names no node (no DNS subject alternative name); re-issue it with `ringcast ca issue NODE`")]
    NoNodeName { cert: String },
    #[error("{cert} names several nodes ({names:?}); a node certificate must name exactly one: re-issue it with `ringcast ca issue NODE`")]
    SeveralNodeNames { cert: String, names: Vec<String> },
    #[error(
        "{cert} names `{name}`, which is not a valid node id ({source}); re-issue it with `ringcast ca issue NODE`"
    )]
    InvalidNodeName {
        cert: String,
        name: String,
        #[source]
        source: NameError,
    },
    #[error(
        "{} is not trusted by the cluster CA {}: {reason}; issue a new one with \
         `ringcast ca issue {node} --ca-dir DIR` from the CA every node uses",
        cert.display(),
        ca.display()
    )]
    Untrusted { cert: PathBuf, ca: PathBuf, node: String, reason: String },
    #[error("{} does not hold the private key of {}: {reason}; use the .key file issued with that certificate", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf, reason: String },
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer's certificate cannot be parsed: {reason}")]
    BadPeerCertificate { reason: String },
    #[error("cannot generate a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build the TLS configuration: {reason}")]
    Config { reason: String },
}

/// Where [`ca_init`] wrote the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaPaths {
    /// The CA files inside `dir`.
    #[must_use]
    pub fn in_dir(dir: &Path) -> CaPaths {
        CaPaths { cert: dir.join(CA_CERT_FILE), key: dir.join(CA_KEY_FILE) }
    }
}

/// Where [`ca_issue`] wrote a node's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    pub node_id: NodeId,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl NodePaths {
    /// `{node_id}.pem` and `{node_id}.key` inside `dir`.
    #[must_use]
    pub fn in_dir(dir: &Path, node_id: &NodeId) -> NodePaths {
        NodePaths {
            node_id: node_id.clone(),
            cert: dir.join(format!("{node_id}.pem")),
            key: dir.join(format!("{node_id}.key")),
        }
    }
}

/// Creates the cluster CA in `dir` (created `0700` if missing): `ca.pem`, a self-signed
/// CA certificate that may sign node certificates only (path length 0), and `ca.key`
/// (`0600`). Refuses to replace an existing CA unless `force`: a new CA invalidates
/// every node certificate issued by the old one.
pub fn ca_init(dir: &Path, force: bool) -> Result<CaPaths, TlsError> {
    let paths = CaPaths::in_dir(dir);
    if !force {
        refuse_existing(
            &[&paths.cert, &paths.key],
            " (a new CA invalidates every node certificate issued by the old one)",
        )?;
    }
    let now = unix_now();
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    set_validity(&mut params, now.saturating_sub(BACKDATE.as_secs()), now.saturating_add(CA_VALIDITY.as_secs()))?;
    let cert = params.self_signed(&key)?;
    create_dir(dir)?;
    write_atomically(&paths.key, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    write_atomically(&paths.cert, cert.pem().as_bytes(), CERT_FILE_MODE)?;
    Ok(paths)
}

/// Issues `{node_id}.pem` and `{node_id}.key` (`0600`) in `out_dir`, signed by the CA in
/// `ca_dir`: CN and single DNS SAN = the node id, usable for both TLS server and client
/// authentication, valid for [`NODE_VALIDITY`] (never past the CA's own expiry).
pub fn ca_issue(ca_dir: &Path, node_id: &NodeId, out_dir: &Path, force: bool) -> Result<NodePaths, TlsError> {
    let server_name = node_server_name(node_id)?;
    let paths = NodePaths::in_dir(out_dir, node_id);
    if !force {
        refuse_existing(&[&paths.cert, &paths.key], "")?;
    }
    let ca_paths = CaPaths::in_dir(ca_dir);
    let missing_ca = |path: &Path| TlsError::MissingCa { dir: ca_dir.to_path_buf(), path: path.to_path_buf() };
    let ca_pem = read_file(&ca_paths.cert, "read", missing_ca)?;
    let ca_key_pem = read_file(&ca_paths.key, "read", missing_ca)?;
    let ca_der = single_pem_cert(&ca_pem, &ca_paths.cert)?;
    let ca_key = std::str::from_utf8(&ca_key_pem)
        .map_err(|_| TlsError::BadPem { path: ca_paths.key.clone(), what: "private key" })
        .and_then(|pem| {
            rcgen::KeyPair::from_pem(pem).map_err(|e| TlsError::Unusable {
                path: ca_paths.key.clone(),
                what: "CA private key",
                reason: e.to_string(),
            })
        })?;

    let unusable_ca =
        |reason: String| TlsError::Unusable { path: ca_paths.cert.clone(), what: "CA certificate", reason };
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| unusable_ca(e.to_string()))?;
    if !ca.is_ca() {
        return Err(unusable_ca("it is not a CA certificate (basicConstraints CA:FALSE)".into()));
    }
    if ca.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&ca_key).as_slice() {
        return Err(TlsError::KeyMismatch {
            key: ca_paths.key.clone(),
            cert: ca_paths.cert.clone(),
            reason: "the public keys differ".into(),
        });
    }
    let now = unix_now();
    let ca_not_after = u64::try_from(ca.validity().not_after.timestamp()).unwrap_or(0);
    if ca_not_after <= now {
        return Err(TlsError::CaExpired { path: ca_paths.cert.clone() });
    }
    let issuer_params = issuer_params(&ca).map_err(unusable_ca)?;
    let issuer = rcgen::Issuer::new(issuer_params, ca_key);

    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = common_name(node_id.as_str());
    let dns = rcgen::string::Ia5String::try_from(server_name.to_str().as_ref())
        .map_err(|_| TlsError::NodeIdNotDnsName { node: node_id.to_string(), reason: "it is not ASCII" })?;
    params.subject_alt_names = vec![rcgen::SanType::DnsName(dns)];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let not_after = now.saturating_add(NODE_VALIDITY.as_secs()).min(ca_not_after);
    set_validity(&mut params, now.saturating_sub(BACKDATE.as_secs()), not_after)?;
    let cert = params.signed_by(&key, &issuer)?;

    // webpki chains a certificate to its CA by comparing the issuer name with the CA's
    // subject byte for byte; a CA made by another tool may encode its name in a way the
    // rebuilt name does not reproduce, and such a certificate would never verify.
    let (_, issued) = x509_parser::parse_x509_certificate(cert.der()).map_err(|e| TlsError::Unusable {
        path: paths.cert.clone(),
        what: "issued certificate",
        reason: e.to_string(),
    })?;
    if issued.issuer().as_raw() != ca.subject().as_raw() {
        return Err(unusable_ca(
            "its subject name cannot be reproduced exactly; create the CA with `ringcast ca init`".into(),
        ));
    }

    create_dir(out_dir)?;
    write_atomically(&paths.key, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    write_atomically(&paths.cert, cert.pem().as_bytes(), CERT_FILE_MODE)?;
    Ok(paths)
}

/// A node's TLS identity for the cluster port, loaded and checked: the certificate
/// chains to the CA for both server and client use, it names exactly one valid node
/// id, and the key belongs to it. Cheap to clone.
#[derive(Clone)]
pub struct ClusterTls {
    node_id: NodeId,
    server: Arc<quinn::crypto::rustls::QuicServerConfig>,
    client: Arc<quinn::crypto::rustls::QuicClientConfig>,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configs hold the private key: show who we are, nothing else.
        f.debug_struct("ClusterTls").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Loads the CA certificate, this node's certificate and its private key (PEM).
    pub fn load(ca_pem: &Path, cert_pem: &Path, key_pem: &Path) -> Result<ClusterTls, TlsError> {
        let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "NODE".into());
        let node_hint = stem(cert_pem);
        let ca_der = single_pem_cert(
            &read_file(ca_pem, "read", |p| TlsError::MissingCa {
                dir: p.parent().map(Path::to_path_buf).unwrap_or_default(),
                path: p.to_path_buf(),
            })?,
            ca_pem,
        )?;
        let missing_node = |p: &Path| TlsError::MissingNodeFile { path: p.to_path_buf(), node: node_hint.clone() };
        let chain = CertificateDer::pem_slice_iter(&read_file(cert_pem, "read", missing_node)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TlsError::BadPem { path: cert_pem.to_path_buf(), what: "certificate" })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::BadPem { path: cert_pem.to_path_buf(), what: "certificate" });
        };
        let key = PrivateKeyDer::from_pem_slice(&read_file(key_pem, "read", missing_node)?)
            .map_err(|_| TlsError::BadPem { path: key_pem.to_path_buf(), what: "private key" })?;
        let node_id = node_id_of(leaf, &format!("certificate {}", cert_pem.display()))?;
        let server_name = node_server_name(&node_id)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca_der).map_err(|e| TlsError::Unusable {
            path: ca_pem.to_path_buf(),
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        let roots = Arc::new(roots);
        let config_err = |e: &dyn fmt::Display| TlsError::Config { reason: e.to_string() };
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| config_err(&e))?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| config_err(&e))?;

        // Check our own certificate the way peers will, so a wrong CA or an expired
        // certificate fails here, at start-up, with a hint.
        let untrusted = |e: rustls::Error| TlsError::Untrusted {
            cert: cert_pem.to_path_buf(),
            ca: ca_pem.to_path_buf(),
            node: node_id.to_string(),
            reason: e.to_string(),
        };
        let now = UnixTime::now();
        let intermediates = &chain[1..];
        client_verifier.verify_client_cert(leaf, intermediates, now).map_err(untrusted)?;
        server_verifier.verify_server_cert(leaf, intermediates, &server_name, &[], now).map_err(untrusted)?;

        let key_err = |e: rustls::Error| TlsError::KeyMismatch {
            key: key_pem.to_path_buf(),
            cert: cert_pem.to_path_buf(),
            reason: e.to_string(),
        };
        let versions = [&rustls::version::TLS13];
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| config_err(&e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_err)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| config_err(&e))?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(key_err)?;
        client.alpn_protocols = vec![ALPN.to_vec()];

        let server = quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| config_err(&e))?;
        let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| config_err(&e))?;
        Ok(ClusterTls { node_id, server: Arc::new(server), client: Arc::new(client) })
    }

    /// This node's id, as named by its certificate.
    #[must_use]
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// A quinn server config that requires a client certificate chained to the cluster
    /// CA. Transport parameters are left at quinn's defaults for the caller to set.
    #[must_use]
    pub fn server_config(&self) -> quinn::ServerConfig {
        quinn::ServerConfig::with_crypto(self.server.clone())
    }

    /// A quinn client config that trusts only the cluster CA and presents our
    /// certificate. The server name of each connection must be the expected node id.
    #[must_use]
    pub fn client_config(&self) -> quinn::ClientConfig {
        quinn::ClientConfig::new(self.client.clone())
    }
}

/// The node id of the peer of an established connection, from its certificate (which
/// TLS has already verified against the cluster CA): the certificate's single DNS
/// subject alternative name, parsed as a [`NodeId`].
pub fn peer_node_id(conn: &quinn::Connection) -> Result<NodeId, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::BadPeerCertificate { reason: "not an X.509 certificate chain".into() })?;
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    node_id_of(leaf, "the peer's certificate")
}

/// The TLS server name for `node`, which is also what its certificate's DNS SAN holds.
/// The [`NodeId`] grammar admits a few names that are not DNS names (`123`, `a..b`,
/// `-a`, a 64-character label); those cannot be certificate names.
pub fn node_server_name(node: &NodeId) -> Result<ServerName<'static>, TlsError> {
    let not_dns = |reason| TlsError::NodeIdNotDnsName { node: node.to_string(), reason };
    let s = node.as_str();
    if s.ends_with('.') {
        // DnsName would silently drop a trailing dot and then name another node.
        return Err(not_dns("it ends with '.'"));
    }
    let dns = DnsName::try_from(s.to_owned()).map_err(|_| not_dns("it is not a valid DNS name"))?;
    Ok(ServerName::DnsName(dns))
}

/// The node id named by a DER certificate: exactly one DNS SAN, a valid [`NodeId`].
fn node_id_of(der: &CertificateDer<'_>, what: &str) -> Result<NodeId, TlsError> {
    let bad = |reason: String| TlsError::BadPeerCertificate { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| bad(e.to_string()))?;
    let names: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(*d),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match names.as_slice() {
        [] => Err(TlsError::NoNodeName { cert: what.to_owned() }),
        [name] => NodeId::new(name).map_err(|source| TlsError::InvalidNodeName {
            cert: what.to_owned(),
            name: (*name).to_owned(),
            source,
        }),
        several => Err(TlsError::SeveralNodeNames {
            cert: what.to_owned(),
            names: several.iter().map(|s| (*s).to_owned()).collect(),
        }),
    }
}

/// The parameters rcgen needs to sign as the CA `ca`: its subject name (rebuilt
/// attribute by attribute, string types preserved), its key identifier and key usages.
fn issuer_params(ca: &X509Certificate<'_>) -> Result<rcgen::CertificateParams, String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = rcgen::DistinguishedName::new();
    for rdn in ca.subject().iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("its subject has a multi-valued or empty name component".into());
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or("its subject has an unreadable attribute type")?.collect();
        let data = attr.attr_value().data;
        let text = std::str::from_utf8(data).map_err(|_| "its subject has a non-UTF-8 attribute".to_owned())?;
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => rcgen::DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => rcgen::DnValue::PrintableString(text.try_into().map_err(|e| format!("{e}"))?),
            Tag::Ia5String => rcgen::DnValue::Ia5String(text.try_into().map_err(|e| format!("{e}"))?),
            other => return Err(format!("its subject uses an unsupported string type ({other})")),
        };
        dn.push(rcgen::DnType::from_oid(&oid), value);
    }
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = dn;
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.key_identifier_method = ca
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(rcgen::KeyIdMethod::PreSpecified(id.0.to_vec())),
            _ => None,
        })
        .unwrap_or(rcgen::KeyIdMethod::Sha256);
    Ok(params)
}

fn common_name(cn: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    dn
}

fn unix_now() -> u64 {
    // A clock before 1970 is a broken machine; 0 then yields certificates that peers
    // reject as expired, which the operator will notice.
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Sets a certificate's validity from seconds since the epoch. The dates go through
/// x509-parser, whose `ASN1Time` hands out the `time` crate's type that rcgen takes;
/// that saves a direct dependency on `time`.
fn set_validity(params: &mut rcgen::CertificateParams, not_before: u64, not_after: u64) -> Result<(), TlsError> {
    let at = |unix_secs: u64| {
        i64::try_from(unix_secs)
            .ok()
            .and_then(|secs| x509_parser::time::ASN1Time::from_timestamp(secs).ok())
            .map(|t| t.to_datetime())
            .ok_or_else(|| TlsError::Config { reason: format!("date {unix_secs} (seconds since 1970) out of range") })
    };
    params.not_before = at(not_before)?;
    params.not_after = at(not_after)?;
    Ok(())
}

fn single_pem_cert(pem: &[u8], path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem).map_err(|_| TlsError::BadPem { path: path.to_path_buf(), what: "certificate" })
}

fn read_file(path: &Path, action: &'static str, missing: impl Fn(&Path) -> TlsError) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => missing(path),
        _ => TlsError::Io { action, path: path.to_path_buf(), source },
    })
}

fn refuse_existing(paths: &[&Path], hint: &'static str) -> Result<(), TlsError> {
    for path in paths {
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Err(TlsError::Exists { path: path.to_path_buf(), hint }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(TlsError::Io { action: "inspect", path: path.to_path_buf(), source }),
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(|source| TlsError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `path` through a temporary file in the same directory, created with `mode`
/// (so a key is never readable by others, not even while being written), synced, then
/// renamed over `path`.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
        move |source| TlsError::Io { action, path: path.to_path_buf(), source }
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))
        .and_then(|mut file| {
            file.write_all(contents).map_err(io_err("write", &tmp))?;
            file.sync_all().map_err(io_err("sync", &tmp))
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err("write", path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn node_ids_that_are_not_dns_names_are_refused_as_certificate_names() {
        for ok in ["node-1", "node-1.eu", "n", "node.a1"] {
            assert!(node_server_name(&node(ok)).is_ok(), "{ok}");
        }
        // NodeId itself follows the DNS host-name grammar, so ids that could not be
        // certificate names never get this far.
        for bad in ["123", "node.1", "a..b", "-a", "a-", "a.", ".a", "0x1f", "a_b", &"a".repeat(65)] {
            assert!(NodeId::new(bad).is_err(), "{bad} is a NodeId");
        }
    }

    #[test]
    fn issued_certificates_load_and_name_their_node() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = ca_init(&dir.path().join("ca"), false).unwrap_or_else(|e| panic!("{e}"));
        let issued = ca_issue(&dir.path().join("ca"), &node("node-1"), &dir.path().join("certs"), false)
            .unwrap_or_else(|e| panic!("{e}"));
        let tls = ClusterTls::load(&ca.cert, &issued.cert, &issued.key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tls.node_id().as_str(), "node-1");
        assert!(format!("{tls:?}").contains("node-1"));
    }

    #[test]
    fn a_certificate_from_another_ca_or_with_the_wrong_key_does_not_load() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path();
        let ca1 = ca_init(&p.join("ca1"), false).unwrap_or_else(|e| panic!("{e}"));
        ca_init(&p.join("ca2"), false).unwrap_or_else(|e| panic!("{e}"));
        let a = ca_issue(&p.join("ca2"), &node("node-a"), p, false).unwrap_or_else(|e| panic!("{e}"));
        let err = ClusterTls::load(&ca1.cert, &a.cert, &a.key).err().unwrap_or_else(|| panic!("loaded"));
        assert!(matches!(err, TlsError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("ringcast ca issue node-a"), "{err}");

        let b = ca_issue(&p.join("ca1"), &node("node-b"), p, false).unwrap_or_else(|e| panic!("{e}"));
        let err = ClusterTls::load(&ca1.cert, &b.cert, &a.key).err().unwrap_or_else(|| panic!("loaded"));
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn existing_files_are_kept_without_force() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = ca_init(dir.path(), false).unwrap_or_else(|e| panic!("{e}"));
        let before = std::fs::read(&ca.key).unwrap_or_else(|e| panic!("{e}"));
        let err = ca_init(dir.path(), false).err().unwrap_or_else(|| panic!("overwrote"));
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&ca.key).unwrap_or_else(|e| panic!("{e}")), before);
        ca_init(dir.path(), true).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(std::fs::read(&ca.key).unwrap_or_else(|e| panic!("{e}")), before);
    }

    #[test]
    fn issuing_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let err = ca_issue(&dir.path().join("nope"), &node("node-1"), dir.path(), false)
            .err()
            .unwrap_or_else(|| panic!("issued"));
        assert!(err.to_string().contains("ringcast ca init"), "{err}");
    }
}
