//! Chaos on containers: the same recorded load and offline checker, against the compose
//! cluster of `docker/compose.yaml`, with Docker as the nemesis (`docker kill`/`start`,
//! `docker pause`/`unpause`, `docker network disconnect`/`connect`).
//!
//! A run is one compose project of its own (`rcchaos<pid>`, a subnet and host ports
//! derived from the pid), started from images built by `scripts/docker-build` with the
//! chaos namespaces in a base config written to the scenario's directory. The load and
//! the history reads reach the nodes at their network addresses (reachable from the host
//! on Linux, and kept across container restarts). [`DockerCluster`] removes the project
//! (`compose down -v`) when dropped, so errors, panics and Ctrl-C clean up too.
//!
//! What differs from the namespace suite: a disconnected container is cut off from
//! everything (peers, etcd, clients), not from one kind of peer; there is no packet-loss
//! or etcd-quorum scenario; etcd runs as three containers.

use crate::checker;
use crate::cluster::API_KEY;
use crate::history::{self, Event, Recorder};
use crate::http::get_json;
use crate::load::{self, Targets};
use crate::report::Report;
use crate::run::{final_read, Api, Opts};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};

/// How long a (re)started container may take to report healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the cluster may take to settle (every member seen, no vacant slot).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long publishers get to finish their current operation at the end.
const PUBLISHER_STOP: Duration = Duration::from_secs(30);

/// The Docker scenarios, in run order.
pub const ALL: [DockerScenario; 3] = [DockerScenario::Kill, DockerScenario::Pause, DockerScenario::Disconnect];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerScenario {
    Kill,
    Pause,
    Disconnect,
}

impl DockerScenario {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            DockerScenario::Kill => "docker-kill-owner",
            DockerScenario::Pause => "docker-pause-owner",
            DockerScenario::Disconnect => "docker-disconnect-owner",
        }
    }

    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            DockerScenario::Kill => "docker kill the hot channel's owner every 15 s, docker start after 3 s",
            DockerScenario::Pause => "docker pause the hot channel's owner for 2x the lease TTL, then unpause",
            DockerScenario::Disconnect => {
                "docker network disconnect the hot owner (from peers, etcd and clients) for 20 s"
            }
        }
    }

    pub fn parse(s: &str) -> Option<DockerScenario> {
        ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Where the compose file and images are.
#[derive(Debug, Clone)]
pub struct DockerOpts {
    /// `docker/compose.yaml` of the repository.
    pub compose_file: PathBuf,
    /// Image tag (`ringcast:TAG`, `ringcast-etcd:TAG`).
    pub tag: String,
}

#[derive(Debug)]
struct DockerNode {
    container: String,
    id: String,
    ip: IpAddr,
    /// Killed or paused or disconnected: not to be asked.
    down: bool,
}

impl DockerNode {
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, crate::cluster::CLIENT_PORT)
    }
}

/// A compose project: 3 etcd containers and `nodes` ringcast containers.
#[derive(Debug)]
pub struct DockerCluster {
    project: String,
    compose: Vec<String>,
    compose_file: PathBuf,
    env: Vec<(String, String)>,
    nodes: Vec<DockerNode>,
}

impl Api for DockerCluster {
    async fn get(&self, path: &str) -> Result<Value> {
        let mut last = None;
        for n in self.nodes.iter().filter(|n| !n.down) {
            match get_json(n.addr(), path, API_KEY).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node is up")))
    }
}

async fn run(program: &str, args: &[String], env: &[(String, String)]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn docker(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    run("docker", &args, &[]).await
}

/// `docker compose` (v2) or `docker-compose` (v1).
async fn compose_program() -> Vec<String> {
    let v2 = Command::new("docker").args(["compose", "version"]).output().await.is_ok_and(|o| o.status.success());
    if v2 {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

impl DockerCluster {
    /// Brings a project up with `o.nodes` nodes and waits until it has settled.
    async fn start(o: &Opts, d: &DockerOpts, dir: &Path) -> Result<DockerCluster> {
        let pid = std::process::id();
        let config = dir.join("node.toml");
        std::fs::write(&config, node_config(o)).context("write node.toml")?;
        let config = std::fs::canonicalize(&config)?;
        let base = 30_000 + (pid % 3_000) * 10;
        let env = vec![
            ("RINGCAST_TAG".to_owned(), d.tag.clone()),
            ("RINGCAST_API_KEY".to_owned(), API_KEY.to_owned()),
            ("RINGCAST_HOST_PORTS".to_owned(), format!("{base}-{}", base + 9)),
            ("RINGCAST_SUBNET".to_owned(), format!("10.{}.{}.0/24", 150 + pid % 50, (pid / 50) % 250)),
            ("RINGCAST_NODE_CONFIG".to_owned(), config.display().to_string()),
        ];
        let mut c = DockerCluster {
            project: format!("rcchaos{pid}"),
            compose: compose_program().await,
            compose_file: d.compose_file.clone(),
            env,
            nodes: Vec::new(),
        };
        // Only `node` (compose starts the etcd members and the CA job it depends on), not
        // the load balancer: the load does not use it, and its default host ports could
        // clash with a cluster already running.
        c.compose(&["up", "-d", "--scale", &format!("node={}", o.nodes), "node"]).await?;
        let names = docker(&[
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={}", c.project),
            "--filter",
            "label=com.docker.compose.service=node",
            "--format",
            "{{.Names}}",
        ])
        .await?;
        for name in names.lines().filter(|l| !l.is_empty()) {
            wait_healthy(name).await?;
            let host = docker(&["inspect", "-f", "{{.Config.Hostname}}", name]).await?;
            let ip =
                docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name]).await?;
            c.nodes.push(DockerNode {
                container: name.to_owned(),
                id: format!("node-{}", host.trim()),
                ip: ip.trim().parse().with_context(|| format!("{name}: address {ip:?}"))?,
                down: false,
            });
        }
        c.nodes.sort_by(|a, b| a.container.cmp(&b.container));
        if c.nodes.len() != o.nodes {
            bail!("{} node containers are running, not {}", c.nodes.len(), o.nodes);
        }
        c.wait_settled().await?;
        Ok(c)
    }

    async fn compose(&self, args: &[&str]) -> Result<String> {
        let mut all: Vec<String> = self.compose[1..].to_vec();
        all.extend(["-p".to_owned(), self.project.clone(), "-f".to_owned()]);
        all.push(self.compose_file.display().to_string());
        all.extend(args.iter().map(|s| (*s).to_owned()));
        run(&self.compose[0], &all, &self.env).await
    }

    fn network(&self) -> String {
        format!("{}_ringcast", self.project)
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Waits until every live node sees every live node and no slot is vacant.
    async fn wait_settled(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let up: Vec<SocketAddr> = self.nodes.iter().filter(|n| !n.down).map(DockerNode::addr).collect();
            if crate::cluster::settled(&up).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the compose cluster did not settle within {SETTLE_TIMEOUT:?}");
            }
            sleep(Duration::from_millis(250)).await;
        }
    }

    async fn owners(&self, channels: &[String]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for c in channels {
            if let Ok(v) = self.get(&format!("/v1/channels/{c}")).await {
                if let Some(o) = v["owner"].as_str() {
                    out.insert(c.clone(), o.to_owned());
                }
            }
        }
        out
    }

    async fn kill(&mut self, i: usize) -> Result<()> {
        self.nodes[i].down = true;
        docker(&["kill", &self.nodes[i].container]).await.map(drop)
    }

    async fn start_node(&mut self, i: usize) -> Result<()> {
        let c = self.nodes[i].container.clone();
        docker(&["start", &c]).await?;
        wait_healthy(&c).await?;
        self.nodes[i].down = false;
        Ok(())
    }

    async fn pause(&mut self, i: usize) -> Result<()> {
        self.nodes[i].down = true;
        docker(&["pause", &self.nodes[i].container]).await.map(drop)
    }

    async fn unpause(&mut self, i: usize) -> Result<()> {
        docker(&["unpause", &self.nodes[i].container]).await?;
        self.nodes[i].down = false;
        Ok(())
    }

    async fn disconnect(&mut self, i: usize) -> Result<()> {
        self.nodes[i].down = true;
        let net = self.network();
        docker(&["network", "disconnect", &net, &self.nodes[i].container]).await.map(drop)
    }

    /// Reconnects at the node's old address, which its peers and etcd still hold.
    async fn connect(&mut self, i: usize) -> Result<()> {
        let net = self.network();
        let ip = self.nodes[i].ip.to_string();
        docker(&["network", "connect", "--ip", &ip, &net, &self.nodes[i].container]).await?;
        self.nodes[i].down = false;
        Ok(())
    }

    /// Undoes every fault: unpause, reconnect, start.
    async fn heal_everything(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            let c = self.nodes[i].container.clone();
            let state = docker(&["inspect", "-f", "{{.State.Paused}} {{.State.Running}}", &c]).await?;
            if state.trim() == "true true" {
                self.unpause(i).await?;
            }
            let nets =
                docker(&["inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", &c]).await?;
            if !nets.split_whitespace().any(|n| n == self.network()) {
                self.connect(i).await?;
            }
            if state.trim().ends_with("false") {
                self.start_node(i).await?;
            }
            self.nodes[i].down = false;
        }
        Ok(())
    }

    /// Lines of node logs that report a panic.
    async fn panics(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let logs = Command::new("docker").args(["logs", &n.container]).output().await;
            let Ok(logs) = logs else { continue };
            let text = String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
            for l in text.lines().filter(|l| l.contains("panicked at") || l.contains("RUST_BACKTRACE")) {
                out.push((n.id.clone(), l.chars().take(300).collect()));
            }
        }
        out
    }

    /// Saves each container's log next to the history.
    async fn save_logs(&self, dir: &Path) {
        for n in &self.nodes {
            if let Ok(out) = Command::new("docker").args(["logs", &n.container]).output().await {
                let _ = std::fs::write(dir.join(format!("{}.log", n.id)), [out.stdout, out.stderr].concat());
            }
        }
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let paused = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter", &label, "--filter", "status=paused"])
            .output();
        if let Ok(p) = paused {
            for id in String::from_utf8_lossy(&p.stdout).lines().filter(|l| !l.is_empty()) {
                let _ = std::process::Command::new("docker").args(["unpause", id]).output();
            }
        }
        let _ = std::process::Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .args(["-p", &self.project, "-f"])
            .arg(&self.compose_file)
            .args(["down", "-v", "--remove-orphans", "--timeout", "2"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output();
    }
}

async fn wait_healthy(container: &str) -> Result<()> {
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        let h = docker(&["inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", container]).await?;
        if h.trim() == "healthy" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{container} not healthy within {HEALTHY_TIMEOUT:?} (last: {})", h.trim());
        }
        sleep(Duration::from_millis(250)).await;
    }
}

/// The base config every node container fills in: the chaos namespaces, short leases.
fn node_config(o: &Opts) -> String {
    let durable = if o.durable { "durable = true\n" } else { "" };
    let ns = |name: &str, extra: &str| {
        format!(
            "[namespaces.{name}]\nanonymous = true\nhistory_size = 100000\nhistory_ttl = \"1h\"\n\
             client_publish_rate = 0\n{extra}"
        )
    };
    format!(
        "[node]\nshutdown_grace = \"2s\"\n\n[limits]\ncommands_per_second = 0\n\n\
         [cluster]\nname = \"chaos\"\nlease_ttl = \"{ttl}s\"\nkeepalive = \"{ka}s\"\n\n{d}\n{b}",
        ttl = o.lease_ttl_s,
        ka = (o.lease_ttl_s / 3).max(1),
        d = ns("durable", durable),
        b = ns("besteffort", ""),
    )
}

/// Runs `s` against a fresh compose project and returns its report.
pub async fn scenario(s: DockerScenario, o: &Opts, d: &DockerOpts) -> Result<Report> {
    let dir = o.out.join(s.name());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let history_path = dir.join("history.jsonl");
    let rec = Recorder::create(&history_path)?;
    let mut notes = vec!["docker nemesis against the compose cluster (docker/compose.yaml)".to_owned()];
    if !o.durable {
        notes.push("--durable off: I1/I8 violations on the durable namespace are expected".to_owned());
    }
    let result = drive(s, o, d, &dir, &rec).await;
    rec.flush();
    let events = history::read(&history_path)?;
    let findings = checker::check(&events);
    Ok(Report {
        scenario: s.name().to_owned(),
        nodes: o.nodes,
        fault_seconds: o.faults.as_secs(),
        durable_enforced: o.durable,
        exempt: Vec::new(),
        findings,
        error: result.err().map(|e| format!("{e:#}")),
        notes,
        history: history_path.display().to_string(),
    })
}

async fn drive(s: DockerScenario, o: &Opts, d: &DockerOpts, dir: &Path, rec: &Recorder) -> Result<()> {
    let mut cluster = DockerCluster::start(o, d, dir).await?;
    let (channels, cfg) = crate::run::start_recording(s.name(), o, rec);
    let targets: Targets =
        Arc::new(cluster.nodes.iter().map(|n| (n.id.clone(), format!("ws://{}/ws", n.addr()))).collect());
    let (stop_pub, stop_pub_rx) = watch::channel(false);
    let (stop_sub, stop_sub_rx) = watch::channel(false);
    let mut subs = JoinSet::new();
    for n in 0..cfg.subscribers {
        subs.spawn(load::subscriber(n, cfg.clone(), targets.clone(), rec.clone(), stop_sub_rx.clone()));
    }
    sleep(Duration::from_secs(2)).await;
    let mut pubs = JoinSet::new();
    for n in 0..cfg.publishers {
        pubs.spawn(load::publisher(n, cfg.clone(), targets.clone(), rec.clone(), stop_pub_rx.clone()));
    }
    sleep(Duration::from_secs(3)).await;

    let nemesis_result = nemesis(s, &mut cluster, rec, &channels, o).await;
    let heal_result = cluster.heal_everything().await;

    let _ = stop_pub.send(true);
    let _ = tokio::time::timeout(PUBLISHER_STOP, async { while pubs.join_next().await.is_some() {} }).await;
    pubs.abort_all();
    let settled = cluster.wait_settled().await;
    sleep(o.drain).await;
    for c in &channels {
        final_read(&cluster, rec, c).await;
    }
    let _ = stop_sub.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while subs.join_next().await.is_some() {} }).await;
    subs.abort_all();
    for (node, line) in cluster.panics().await {
        rec.record(&Event::Panic { t: rec.now(), node, line });
    }
    cluster.save_logs(dir).await;
    drop(cluster);
    nemesis_result.context("nemesis")?;
    heal_result.context("heal")?;
    settled.context("after the heal")?;
    Ok(())
}

/// The fault loop of `s` for `o.faults`, each fault logged with the owners before it.
async fn nemesis(
    s: DockerScenario,
    c: &mut DockerCluster,
    rec: &Recorder,
    channels: &[String],
    o: &Opts,
) -> Result<()> {
    let end = Instant::now() + o.faults;
    let ttl = Duration::from_secs(o.lease_ttl_s);
    let (hold, rest, kind) = match s {
        DockerScenario::Kill => (Duration::from_secs(3), Duration::from_secs(12), "docker_kill"),
        DockerScenario::Pause => (ttl * 2, Duration::from_secs(10), "docker_pause"),
        DockerScenario::Disconnect => (Duration::from_secs(20), Duration::from_secs(10), "docker_disconnect"),
    };
    let mut id = 0;
    while Instant::now() + hold + rest <= end {
        let owners = c.owners(channels).await;
        rec.record(&Event::Owners { t: rec.now(), owners: owners.clone() });
        let owner = owners.get("durable:hot").context("the hot channel has no owner")?;
        let i = c.index_of(owner).with_context(|| format!("unknown owner {owner}"))?;
        id += 1;
        rec.record(&Event::Fault {
            t: rec.now(),
            id,
            kind: kind.to_owned(),
            nodes: vec![owner.clone()],
            faulted: 1,
            detail: format!("{} ({}) for {hold:?}", s.describe(), c.nodes[i].container),
        });
        match s {
            DockerScenario::Kill => c.kill(i).await?,
            DockerScenario::Pause => c.pause(i).await?,
            DockerScenario::Disconnect => c.disconnect(i).await?,
        }
        sleep(hold).await;
        match s {
            DockerScenario::Kill => c.start_node(i).await?,
            DockerScenario::Pause => c.unpause(i).await?,
            DockerScenario::Disconnect => c.connect(i).await?,
        }
        rec.record(&Event::Heal { t: rec.now(), id });
        sleep(rest).await;
    }
    Ok(())
}

/// Removes compose projects left by chaos runs that died (`all`: every chaos project),
/// returning what was removed.
pub fn cleanup_stale(all: bool, compose_file: &Path) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "--filter", "label=com.docker.compose.project", "--format"])
        .arg("{{.Label \"com.docker.compose.project\"}}")
        .output();
    let Ok(out) = out else { return Vec::new() };
    let mut projects: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter(|p| p.starts_with("rcchaos")).map(str::to_owned).collect();
    projects.sort();
    projects.dedup();
    let mut removed = Vec::new();
    for p in projects {
        let alive = p
            .strip_prefix("rcchaos")
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if alive && !all {
            continue;
        }
        let compose = if std::process::Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            vec!["docker", "compose"]
        } else {
            vec!["docker-compose"]
        };
        let done = std::process::Command::new(compose[0])
            .args(&compose[1..])
            .args(["-p", &p, "-f"])
            .arg(compose_file)
            .args(["down", "-v", "--remove-orphans", "--timeout", "2"])
            .output()
            .is_ok_and(|o| o.status.success());
        if done {
            removed.push(format!("compose project {p}"));
        }
    }
    removed
}
