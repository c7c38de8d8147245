//! A real cluster for black-box tests: one etcd (the Debian `etcd` binary), a cluster
//! CA made with the `ringcast ca` CLI as an operator would, and N `ringcastd`
//! processes joined over QUIC with mutual TLS. Everything runs on loopback with free
//! ports and is killed and removed on drop.

use crate::etcd::EtcdServer;
use crate::{base_config, http, Ringcastd, API_KEY, WAIT};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn cli() -> Result<PathBuf> {
    crate::workspace_binary("ringcast", "RINGCAST_BIN")
}

/// Runs the `ringcast` CLI; fails with its output when it fails.
pub fn ringcast(args: &[&str]) -> Result<String> {
    let out = Command::new(cli()?).args(args).output().context("run ringcast")?;
    if !out.status.success() {
        bail!(
            "ringcast {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running cluster.
#[derive(Debug)]
pub struct TestCluster {
    pub etcd: EtcdServer,
    pub nodes: Vec<Ringcastd>,
    pub name: String,
    ca: tempfile::TempDir,
    extra: String,
    /// Lines of every node's `[cluster]` table besides the addresses and certificates.
    cluster_extra: String,
}

/// The `[cluster]` settings tests use unless they say otherwise: a short lease so that
/// membership changes are quick.
pub const DEFAULT_CLUSTER_EXTRA: &str = "lease_ttl = \"3s\"\nkeepalive = \"1s\"\n";

impl TestCluster {
    /// Starts etcd, a CA and `n` core nodes `node-0..n`, and waits until every slot
    /// is claimed and every node sees every member.
    pub async fn start(n: usize, extra_config: &str) -> Result<TestCluster> {
        TestCluster::start_with(n, extra_config, DEFAULT_CLUSTER_EXTRA).await
    }

    /// [`TestCluster::start`] with `cluster_extra` as the rest of each `[cluster]` table
    /// (it replaces [`DEFAULT_CLUSTER_EXTRA`], so set the lease there too).
    pub async fn start_with(n: usize, extra_config: &str, cluster_extra: &str) -> Result<TestCluster> {
        let etcd = EtcdServer::start()?;
        let ca = tempfile::tempdir()?;
        ringcast(&["ca", "init", "--dir", &ca.path().display().to_string()])?;
        let name = format!("test{}", std::process::id());
        let mut c = TestCluster {
            etcd,
            nodes: Vec::new(),
            name,
            ca,
            extra: extra_config.to_owned(),
            cluster_extra: cluster_extra.to_owned(),
        };
        for i in 0..n {
            c.add_node(&format!("node-{i}"), "core")?;
        }
        c.wait_settled().await?;
        Ok(c)
    }

    /// The config of a member `id` with `role`.
    pub fn node_config(&self, id: &str, role: &str) -> Result<String> {
        let dir = self.ca.path();
        ringcast(&[
            "ca",
            "issue",
            id,
            "--ca-dir",
            &dir.display().to_string(),
            "--out",
            &dir.display().to_string(),
            "--force",
        ])?;
        let file = |ext: &str| -> String { Path::new(dir).join(format!("{id}.{ext}")).display().to_string() };
        Ok(format!(
            "{base}\n[cluster]\nmembership = [\"{etcd}\"]\nname = \"{name}\"\nrole = \"{role}\"\nlisten = \"127.0.0.1:0\"\n\
             ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n{cluster_extra}",
            base = base_config(&self.extra),
            etcd = self.etcd.endpoint(),
            name = self.name,
            ca = Path::new(dir).join("ca.pem").display(),
            cert = file("pem"),
            key = file("key"),
            cluster_extra = self.cluster_extra,
        ))
    }

    /// Starts one more member.
    pub fn add_node(&mut self, id: &str, role: &str) -> Result<()> {
        let config = self.node_config(id, role)?;
        self.nodes.push(Ringcastd::start_with(&config, &["--node-id", id])?);
        Ok(())
    }

    /// `GET /v1/cluster` on node `i`.
    pub async fn view(&self, i: usize) -> Result<Value> {
        let r = http(self.nodes[i].addr, "GET", "/v1/cluster", &[("Authorization", &format!("Bearer {API_KEY}"))], "")
            .await?;
        Ok(r.json())
    }

    /// The last `n` info-or-louder lines ringcastd logged on each node (for a failing
    /// test's error).
    #[must_use]
    pub fn node_logs(&self, n: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let err = node.stderr();
            let lines: Vec<&str> = err.lines().filter(|l| l.contains("ringcastd") && !l.contains("DEBUG")).collect();
            out.push_str(&format!("---- {}\n{}\n", node.node, lines[lines.len().saturating_sub(n)..].join("\n")));
        }
        out
    }

    /// The node holding `channel`'s slot, as node 0 reports it.
    pub async fn owner_of(&self, channel: &str) -> Result<String> {
        let r = http(
            self.nodes[0].addr,
            "GET",
            &format!("/v1/channels/{channel}"),
            &[("Authorization", &format!("Bearer {API_KEY}"))],
            "",
        )
        .await?;
        Ok(r.json()["owner"].as_str().unwrap_or_default().to_owned())
    }

    /// A channel of `namespace` (`{namespace}:c{i}`) whose slot `owner` holds.
    pub async fn channel_owned_by(&self, namespace: &str, owner: &str) -> Result<String> {
        for i in 0..10_000 {
            let channel = format!("{namespace}:c{i}");
            if self.owner_of(&channel).await? == owner {
                return Ok(channel);
            }
        }
        bail!("no {namespace} channel owned by {owner}")
    }

    /// Drains node `i` (`POST /v1/admin/drain`, which answers 202 and hands its slots off).
    pub async fn drain(&self, i: usize) -> Result<()> {
        let auth = format!("Bearer {API_KEY}");
        let r = http(self.nodes[i].addr, "POST", "/v1/admin/drain", &[("Authorization", &auth)], "").await?;
        anyhow::ensure!(r.status == 202, "drain node {i}: {} {}", r.status, r.body);
        Ok(())
    }

    /// Drains node `i` and waits until `channel`'s slot is claimed by another node.
    pub async fn drain_moving(&self, i: usize, channel: &str) -> Result<()> {
        self.drain(i).await?;
        let deadline = Instant::now() + WAIT * 3;
        let drained = format!("node-{i}");
        while [drained.as_str(), ""].contains(&self.owner_of(channel).await?.as_str()) {
            anyhow::ensure!(Instant::now() < deadline, "{channel} never moved off {drained}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits until every node sees every node and no slot is vacant.
    pub async fn wait_settled(&self) -> Result<()> {
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let mut settled = true;
            for i in 0..self.nodes.len() {
                let v = self.view(i).await?;
                let members = v["members"].as_array().map_or(0, Vec::len);
                settled &= members == self.nodes.len() && v["vacant"] == 0;
            }
            if settled {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cluster did not settle: {}", self.view(0).await?);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
