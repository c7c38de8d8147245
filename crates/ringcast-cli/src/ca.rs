//! `ringcast ca`: the cluster certificate authority.
//!
//! `init` creates the CA (`ca.pem`, `ca.key`); `issue NODE_ID` signs a node certificate
//! (`NODE_ID.pem`, `NODE_ID.key`) that the node presents on its cluster port. Keep
//! `ca.key` off the nodes: each node needs `ca.pem` and its own pair only. The work is
//! done by `ringcast_cluster::tls`; this module is arguments and wording.

use crate::exit::CliError;
use crate::output::Report;
use ringcast_cluster::tls::{self, TlsError};
use ringcast_core::NodeId;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Where the CA lives when no directory is given.
const DEFAULT_DIR: &str = "./ringcast-ca";

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CaCommand {
    /// Create the cluster CA: DIR/ca.pem (certificate, 10 years) and DIR/ca.key (0600).
    Init {
        /// Directory to write the CA into (created 0700 if missing).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Replace an existing CA; every node certificate it issued stops being trusted.
        #[arg(long, conflicts_with = "if_missing")]
        force: bool,
        /// Succeed without writing anything when DIR already holds a CA (for a
        /// container that creates the CA on a cluster's first start only).
        #[arg(long)]
        if_missing: bool,
    },
    /// Issue a node certificate: OUT/NODE_ID.pem (1 year) and OUT/NODE_ID.key (0600).
    Issue {
        /// The node's id, as in its configuration and etcd registration (DNS-style, such
        /// as node-1 or node-1.eu).
        #[arg(value_name = "NODE_ID", value_parser = parse_node_id)]
        node_id: NodeId,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
        ca_dir: PathBuf,
        /// Directory to write the node's files into (created 0700 if missing).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
        out: PathBuf,
        /// Replace the node's existing certificate and key.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: CaCommand) -> Result<Report, CliError> {
    match cmd {
        CaCommand::Init { dir, if_missing: true, .. } if existing(&dir) => Ok(Report {
            human: format!("kept the existing cluster CA in {}", dir.display()),
            json: json!({ "ca_cert": text(&tls::CaPaths::in_dir(&dir).cert), "created": false }),
        }),
        CaCommand::Init { dir, force, .. } => init(&dir, force),
        CaCommand::Issue { node_id, ca_dir, out, force } => issue(&node_id, &ca_dir, &out, force),
    }
}

/// Whether `dir` holds both CA files.
fn existing(dir: &Path) -> bool {
    let paths = tls::CaPaths::in_dir(dir);
    paths.cert.is_file() && paths.key.is_file()
}

fn init(dir: &Path, force: bool) -> Result<Report, CliError> {
    let paths = tls::ca_init(dir, force).map_err(cli_error)?;
    Ok(Report {
        human: format!(
            "created the cluster CA\n  certificate  {}\n  private key  {} (keep it off the nodes)\n\
             next: ringcast ca issue NODE_ID --ca-dir {}",
            paths.cert.display(),
            paths.key.display(),
            dir.display()
        ),
        json: json!({ "ca_cert": text(&paths.cert), "ca_key": text(&paths.key), "created": true }),
    })
}

fn issue(node_id: &NodeId, ca_dir: &Path, out: &Path, force: bool) -> Result<Report, CliError> {
    let paths = tls::ca_issue(ca_dir, node_id, out, force).map_err(cli_error)?;
    let ca_cert = tls::CaPaths::in_dir(ca_dir).cert;
    Ok(Report {
        human: format!(
            "issued a certificate for node {node_id}\n  certificate  {}\n  private key  {}\n\
             copy both and {} to the node",
            paths.cert.display(),
            paths.key.display(),
            ca_cert.display()
        ),
        json: json!({
            "node_id": node_id.as_str(),
            "cert": text(&paths.cert),
            "key": text(&paths.key),
            "ca_cert": text(&ca_cert),
        }),
    })
}

/// A path as JSON text (lossy for non-UTF-8 paths, which serde would refuse).
fn text(path: &Path) -> String {
    path.display().to_string()
}

/// A node id that can also be a certificate name.
fn parse_node_id(s: &str) -> Result<NodeId, String> {
    let node = NodeId::new(s).map_err(|e| format!("not a valid node id: {e}"))?;
    tls::node_server_name(&node).map_err(|e| e.to_string())?;
    Ok(node)
}

fn cli_error(err: TlsError) -> CliError {
    match err {
        TlsError::NodeIdNotDnsName { .. } => CliError::Usage(err.to_string()),
        other => CliError::Failed(other.to_string()),
    }
}
