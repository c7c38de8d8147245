//! The system under test: etcd member(s) in the root namespace on the bridge address, a
//! cluster CA made with the `ringcast` CLI, and N `ringcastd` nodes, each started with
//! `ip netns exec` in its own namespace and bound to that namespace's address.
//!
//! A node is ready when it prints its one-line JSON ready record (no log scraping). Its
//! stderr is appended to `node-{i}.log` across restarts, which the run scans for panics
//! at the end. Every child is spawned with `kill_on_drop`, so dropping the [`Cluster`]
//! (normal exit, error, panic unwinding, Ctrl-C) kills them all.

use crate::http::get_json;
use crate::net::Net;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The API key every node of the chaos cluster uses.
pub const API_KEY: &str = "chaos-api-key-0001";
/// Client (HTTP + WebSocket) port of every node, each on its own address.
pub const CLIENT_PORT: u16 = 7400;
/// QUIC port of every node.
pub const QUIC_PORT: u16 = 7401;
/// How long a node may take to print its ready record.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the cluster may take to settle (every member seen, no vacant slot).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Static settings of a cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ringcastd: PathBuf,
    pub ringcast: PathBuf,
    pub nodes: usize,
    pub etcd_members: usize,
    pub lease_ttl_s: u64,
    /// Whether to write `durable = true` in the durable namespace.
    pub durable: bool,
}

/// One etcd member.
#[derive(Debug)]
pub struct EtcdMember {
    pub client_url: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new("etcd")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("spawn etcd")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL (a crash); the data directory stays for [`EtcdMember::restart`].
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_none() {
            self.spawn()?;
        }
        Ok(())
    }
}

/// One node.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub index: usize,
    pub ns: String,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    #[must_use]
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    #[must_use]
    pub fn is_up(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    /// Whether the process exists (running or paused).
    #[must_use]
    pub fn pid_alive(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn start(&mut self, ringcastd: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(ringcastd)
            .arg("--config")
            .arg(&self.config)
            .env("RINGCAST_LOG", std::env::var("RINGCAST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("spawn ringcastd")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
            .await
            .with_context(|| format!("{} printed no ready record within {READY_TIMEOUT:?}", self.id))??
            .with_context(|| format!("{} exited before it was ready; see {}", self.id, self.log.display()))?;
        let ready: Value = serde_json::from_str(&line).with_context(|| format!("bad ready record {line:?}"))?;
        if ready["event"] != "ready" {
            bail!("{}: unexpected first line {line:?}", self.id);
        }
        // Keep draining stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        self.paused = false;
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.pid().context("node not running")?;
        crate::net::run("kill", &[&format!("-{sig}"), &pid.to_string()])
    }

    pub fn pause(&mut self) -> Result<()> {
        self.signal("STOP")?;
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<()> {
        self.signal("CONT")?;
        self.paused = false;
        Ok(())
    }
}

/// etcd, the CA and the nodes.
#[derive(Debug)]
pub struct Cluster {
    pub settings: Settings,
    pub etcd: Vec<EtcdMember>,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts etcd, issues certificates, writes configs and starts every node, then
    /// waits until the cluster has settled.
    pub async fn start(settings: Settings, net: &Net, dir: &Path) -> Result<Cluster> {
        let host = net.host();
        let mut etcd = Vec::new();
        let mut initial = Vec::new();
        for k in 0..settings.etcd_members {
            let peer = format!("http://{host}:{}", 2380 + 2 * k);
            initial.push(format!("e{k}={peer}"));
        }
        for k in 0..settings.etcd_members {
            let client = format!("http://{host}:{}", 2379 + 2 * k);
            let peer = format!("http://{host}:{}", 2380 + 2 * k);
            let data = dir.join(format!("etcd-{k}"));
            let args = vec![
                "--name".into(),
                format!("e{k}"),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client.clone(),
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer,
                "--initial-cluster".into(),
                initial.join(","),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                net.tag.clone(),
            ];
            let mut m = EtcdMember { client_url: client, args, log: dir.join(format!("etcd-{k}.log")), child: None };
            m.spawn()?;
            etcd.push(m);
        }
        wait_etcd(&etcd[0].client_url).await?;

        let ca = dir.join("ca");
        cli(&settings.ringcast, &["ca", "init", "--dir", &ca.display().to_string()])?;
        let membership: Vec<String> = etcd.iter().map(|m| format!("\"{}\"", m.client_url)).collect();
        let mut nodes = Vec::new();
        for i in 0..settings.nodes {
            let id = format!("node-{i}");
            let ca_s = ca.display().to_string();
            cli(&settings.ringcast, &["ca", "issue", &id, "--ca-dir", &ca_s, "--out", &ca_s, "--force"])?;
            let ip = net.node_ip(i);
            let config = dir.join(format!("{id}.toml"));
            std::fs::write(&config, node_config(&settings, &id, ip, &membership, &ca))?;
            nodes.push(Node {
                id,
                index: i,
                ns: net.ns(i),
                addr: SocketAddr::from((ip, CLIENT_PORT)),
                config,
                log: dir.join(format!("node-{i}.log")),
                child: None,
                paused: false,
            });
        }
        let mut c = Cluster { settings, etcd, nodes };
        for i in 0..c.nodes.len() {
            c.start_node(i).await?;
        }
        c.wait_settled().await?;
        Ok(c)
    }

    pub async fn start_node(&mut self, i: usize) -> Result<()> {
        let bin = self.settings.ringcastd.clone();
        self.nodes[i].start(&bin).await
    }

    /// Live, unpaused nodes' indices.
    #[must_use]
    pub fn up(&self) -> Vec<usize> {
        self.nodes.iter().filter(|n| n.is_up()).map(|n| n.index).collect()
    }

    /// `GET path` on the first live node that answers.
    pub async fn api(&self, path: &str) -> Result<Value> {
        let mut last = None;
        for i in self.up() {
            match get_json(self.nodes[i].addr, path, API_KEY).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node is up")))
    }

    /// The owner of each channel, as the first answering node sees it.
    pub async fn owners(&self, channels: &[String]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for c in channels {
            if let Ok(v) = self.api(&format!("/v1/channels/{c}")).await {
                if let Some(o) = v["owner"].as_str() {
                    out.insert(c.clone(), o.to_owned());
                }
            }
        }
        out
    }

    /// Node index by id.
    #[must_use]
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Waits until every live node sees every live node and no slot is vacant.
    pub async fn wait_settled(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let up: Vec<SocketAddr> = self.up().into_iter().map(|i| self.nodes[i].addr).collect();
            if settled(&up).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cluster did not settle within {SETTLE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Lines of node logs that report a panic.
    #[must_use]
    pub fn panics(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            for l in text.lines().filter(|l| l.contains("panicked at") || l.contains("RUST_BACKTRACE")) {
                out.push((n.id.clone(), l.chars().take(300).collect()));
            }
        }
        out
    }

    /// Kills every node and etcd member (also done by dropping).
    pub async fn stop(&mut self) {
        for n in &mut self.nodes {
            if n.paused {
                let _ = n.resume();
            }
            n.kill().await;
        }
        for m in &mut self.etcd {
            m.kill().await;
        }
    }
}

fn node_config(s: &Settings, id: &str, ip: std::net::Ipv4Addr, membership: &[String], ca: &Path) -> String {
    let durable = if s.durable { "durable = true\n" } else { "" };
    let ns = |name: &str, extra: &str| {
        format!(
            "[namespaces.{name}]\nanonymous = true\nhistory_size = 100000\nhistory_ttl = \"1h\"\n\
             client_publish_rate = 0\n{extra}"
        )
    };
    let keepalive = (s.lease_ttl_s / 3).max(1);
    format!(
        "[node]\nid = \"{id}\"\nlisten = \"{ip}:{CLIENT_PORT}\"\nshutdown_grace = \"2s\"\n\n\
         [api]\nkey = \"{API_KEY}\"\n\n[limits]\ncommands_per_second = 0\n\n\
         [cluster]\nmembership = [{m}]\nname = \"chaos\"\nlisten = \"{ip}:{QUIC_PORT}\"\n\
         ca_file = \"{ca}/ca.pem\"\ncert_file = \"{ca}/{id}.pem\"\nkey_file = \"{ca}/{id}.key\"\n\
         lease_ttl = \"{ttl}s\"\nkeepalive = \"{keepalive}s\"\n\n{d}\n{b}",
        m = membership.join(", "),
        ca = ca.display(),
        ttl = s.lease_ttl_s,
        d = ns("durable", durable),
        b = ns("besteffort", ""),
    )
}

fn cli(bin: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(bin).args(args).output().context("run ringcast")?;
    if !out.status.success() {
        bail!("ringcast {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

async fn wait_etcd(url: &str) -> Result<()> {
    let addr: SocketAddr = url.trim_start_matches("http://").parse()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = crate::http::get(addr, "/health", "").await {
            if body.contains("\"health\":\"true\"") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("etcd at {url} not healthy within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every node at `addrs` sees exactly that many members and no vacant slot.
pub(crate) async fn settled(addrs: &[SocketAddr]) -> bool {
    for addr in addrs {
        match get_json(*addr, "/v1/cluster", API_KEY).await {
            Ok(v) if v["members"].as_array().map_or(0, Vec::len) == addrs.len() && v["vacant"] == 0 => {}
            _ => return false,
        }
    }
    true
}
