//! `ringcast container-node`: the entrypoint of a ringcastd container.
//!
//! A container started from an image (and scaled by `docker compose --scale`) knows
//! neither its node id, nor the address its peers should dial, nor its certificate in
//! advance, and a `FROM scratch` image has no shell to work them out. This command does,
//! then replaces itself with `ringcastd` (exec: the node is PID 1's process, signals and
//! exit status go straight to it):
//!
//! 1. Node id: `--node-id`, else `node-` followed by the container's host name (Docker
//!    sets it to the container id's first 12 hex digits, stable across restarts).
//! 2. Address: the local address of the route to the first etcd endpoint that resolves
//!    (a connected UDP socket; nothing is sent), advertised to peers and tools.
//! 3. Certificate: issued for the node id from the mounted CA directory (`ca.pem`,
//!    `ca.key`), written to the state directory. The CA key is therefore on every node:
//!    acceptable for a demo cluster on one host, not for production (docs/docker.md).
//! 4. Config: the base file (namespaces, limits, `[cluster]` tuning) with `node.id`,
//!    `node.listen`, and the `[cluster]` addresses and files filled in, written to the
//!    state directory. Keys the base sets for listen addresses are kept.
//!
//! It does not supervise the node: Docker's restart policy does that.

use crate::exit::CliError;
use ringcast_cluster::tls;
use ringcast_core::NodeId;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to keep trying to resolve an etcd endpoint (compose starts nodes once etcd
/// is healthy, but Docker's DNS may lag a container start).
const RESOLVE_PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, clap::Args)]
pub struct ContainerNode {
    /// etcd endpoints, comma-separated (`http://etcd-1:2379,http://etcd-2:2379`).
    #[arg(long, env = "RINGCAST_MEMBERSHIP", value_delimiter = ',', required = true)]
    membership: Vec<String>,
    /// The node id (default: `node-` and the container's host name).
    #[arg(long, env = "RINGCAST_NODE_ID")]
    node_id: Option<String>,
    /// Base configuration (TOML) to fill in; without it, every default.
    #[arg(long, env = "RINGCAST_BASE_CONFIG")]
    base_config: Option<PathBuf>,
    /// Directory holding the cluster CA (`ca.pem`, `ca.key`).
    #[arg(long, env = "RINGCAST_CA_DIR", default_value = "/ca")]
    ca_dir: PathBuf,
    /// Writable directory for the generated config, certificate and key.
    #[arg(long, env = "RINGCAST_STATE_DIR", default_value = "/var/lib/ringcast")]
    state_dir: PathBuf,
    /// Client port (HTTP and WebSocket) on every interface, unless the base sets `node.listen`.
    #[arg(long, default_value_t = 7400)]
    client_port: u16,
    /// QUIC port on every interface, unless the base sets `cluster.listen`.
    #[arg(long, default_value_t = 7401)]
    quic_port: u16,
    /// The ringcastd binary to exec.
    #[arg(long, default_value = "/ringcastd")]
    ringcastd: PathBuf,
}

/// Prepares the node and execs ringcastd; returns only on failure.
pub fn run(args: &ContainerNode) -> CliError {
    match prepare(args) {
        Ok(config) => {
            let err = std::process::Command::new(&args.ringcastd).arg("--config").arg(&config).exec();
            CliError::Failed(format!("cannot exec {}: {err}", args.ringcastd.display()))
        }
        Err(e) => e,
    }
}

fn prepare(args: &ContainerNode) -> Result<PathBuf, CliError> {
    let node_id = match &args.node_id {
        Some(id) => id.clone(),
        None => format!("node-{}", hostname()?),
    };
    let node_id = NodeId::new(&node_id).map_err(|e| CliError::Usage(format!("node id {node_id:?}: {e}")))?;
    tls::node_server_name(&node_id).map_err(|e| CliError::Usage(e.to_string()))?;
    let ip = own_ip(&args.membership)?;

    let mut table: toml::Table = match &args.base_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Failed(format!("cannot read {}: {e}", path.display())))?;
            text.parse().map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
        }
        None => toml::Table::new(),
    };
    let node = section(&mut table, "node")?;
    node.insert("id".into(), node_id.as_str().into());
    let listen = listen_addr(node, SocketAddr::from(([0, 0, 0, 0], args.client_port)))?;
    let cluster = section(&mut table, "cluster")?;
    let quic = listen_addr(cluster, SocketAddr::from(([0, 0, 0, 0], args.quic_port)))?;
    let paths = tls::ca_issue(&args.ca_dir, &node_id, &args.state_dir, true)
        .map_err(|e| CliError::Failed(format!("cannot issue this node's certificate: {e}")))?;
    let membership: Vec<toml::Value> = args.membership.iter().map(|m| m.trim().into()).collect();
    cluster.insert("membership".into(), membership.into());
    cluster.insert("advertise".into(), SocketAddr::new(ip, quic.port()).to_string().into());
    cluster.insert("advertise_client".into(), SocketAddr::new(ip, listen.port()).to_string().into());
    cluster.insert("ca_file".into(), path_value(&tls::CaPaths::in_dir(&args.ca_dir).cert));
    cluster.insert("cert_file".into(), path_value(&paths.cert));
    cluster.insert("key_file".into(), path_value(&paths.key));

    let config = args.state_dir.join("ringcast.toml");
    let text = toml::to_string(&table).map_err(|e| CliError::Failed(format!("cannot write the config: {e}")))?;
    std::fs::write(&config, text).map_err(|e| CliError::Failed(format!("cannot write {}: {e}", config.display())))?;
    crate::exit::note(&format!(
        "container-node: node {node_id} at {ip} (client {}, QUIC {}), config {}",
        listen.port(),
        quic.port(),
        config.display()
    ));
    Ok(config)
}

/// The container's host name, from the kernel (`/proc/sys/kernel/hostname`), else `$HOSTNAME`.
fn hostname() -> Result<String, CliError> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    name.ok_or_else(|| CliError::Failed("no host name to derive the node id from; pass --node-id".into()))
}

/// The table `name` of `table`, created when missing.
fn section<'a>(table: &'a mut toml::Table, name: &str) -> Result<&'a mut toml::Table, CliError> {
    table
        .entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| CliError::Usage(format!("base config: `{name}` must be a table")))
}

/// `listen` of a section: kept when set (and parsed), else `default`, written back.
fn listen_addr(section: &mut toml::Table, default: SocketAddr) -> Result<SocketAddr, CliError> {
    if let Some(v) = section.get("listen") {
        return v
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CliError::Usage(format!("base config: listen = {v} is not IP:PORT")));
    }
    section.insert("listen".into(), default.to_string().into());
    Ok(default)
}

fn path_value(p: &Path) -> toml::Value {
    p.display().to_string().into()
}

/// The local address of the route towards the first etcd endpoint that resolves.
fn own_ip(membership: &[String]) -> Result<IpAddr, CliError> {
    let started = Instant::now();
    let mut last = String::from("no etcd endpoint given");
    loop {
        for m in membership {
            let hostport = m.trim().trim_start_matches("http://").trim_start_matches("etcd://").trim_end_matches('/');
            let resolved = hostport.to_socket_addrs().map(|mut a| a.next());
            match resolved {
                Ok(Some(addr)) => {
                    let local = UdpSocket::bind(SocketAddr::new(unspecified(addr.ip()), 0))
                        .and_then(|s| s.connect(addr).and_then(|()| s.local_addr()));
                    match local {
                        Ok(l) => return Ok(l.ip()),
                        Err(e) => last = format!("no route to {addr} ({m}): {e}"),
                    }
                }
                Ok(None) => last = format!("{m} resolved to no address"),
                Err(e) => last = format!("cannot resolve {m}: {e}"),
            }
        }
        if started.elapsed() > RESOLVE_PATIENCE {
            return Err(CliError::Failed(format!("cannot find this container's address: {last}")));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn addr(s: &str) -> SocketAddr {
        ok(s.parse())
    }

    #[test]
    fn listen_kept_from_the_base_or_defaulted() {
        let mut t: toml::Table = ok("listen = \"0.0.0.0:9000\"".parse());
        assert_eq!(ok(listen_addr(&mut t, addr("0.0.0.0:7400"))).port(), 9000);
        let mut empty = toml::Table::new();
        assert_eq!(ok(listen_addr(&mut empty, addr("0.0.0.0:7400"))).port(), 7400);
        assert_eq!(empty["listen"].as_str(), Some("0.0.0.0:7400"));
        let mut bad: toml::Table = ok("listen = \"nope\"".parse());
        assert!(listen_addr(&mut bad, addr("0.0.0.0:7400")).is_err());
    }

    #[test]
    fn own_ip_is_the_route_to_etcd() {
        assert!(ok(own_ip(&["http://127.0.0.1:2379".into()])).is_loopback());
    }

    #[test]
    fn prepare_fills_in_the_base_config() {
        let dir = ok(tempfile::tempdir());
        let ca = dir.path().join("ca");
        ok(tls::ca_init(&ca, false));
        let base = dir.path().join("base.toml");
        ok(std::fs::write(&base, "[namespaces.chat]\nanonymous = true\n[cluster]\nlease_ttl = \"4s\"\n"));
        let args = ContainerNode {
            membership: vec!["http://127.0.0.1:2379".into()],
            node_id: Some("node-abc123".into()),
            base_config: Some(base),
            ca_dir: ca.clone(),
            state_dir: dir.path().to_path_buf(),
            client_port: 7400,
            quic_port: 7401,
            ringcastd: "/nonexistent".into(),
        };
        let config = ok(prepare(&args));
        let t: toml::Table = ok(ok(std::fs::read_to_string(config)).parse());
        assert_eq!(t["node"]["id"].as_str(), Some("node-abc123"));
        assert_eq!(t["node"]["listen"].as_str(), Some("0.0.0.0:7400"));
        assert_eq!(t["cluster"]["lease_ttl"].as_str(), Some("4s"));
        assert_eq!(t["cluster"]["advertise"].as_str(), Some("127.0.0.1:7401"));
        assert_eq!(t["cluster"]["advertise_client"].as_str(), Some("127.0.0.1:7400"));
        assert_eq!(t["namespaces"]["chat"]["anonymous"].as_bool(), Some(true));
        assert!(dir.path().join("node-abc123.pem").exists());
        let bad = ContainerNode { node_id: Some("Not_A_Name".into()), ..args };
        assert!(matches!(prepare(&bad), Err(CliError::Usage(_))));
    }
}
