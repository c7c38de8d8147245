//! The compose cluster (docker/compose.yaml) as the tests drive it: images from
//! `scripts/docker-build`, the cluster from `scripts/cluster --docker`, containers through
//! the `docker` CLI. Used by `tests/tests/docker.rs` and `tests/tests/lb.rs`.
//!
//! A [`Compose`] guard owns one compose project whose name, host ports and subnet are
//! unique to the test process, and runs `docker-compose down -v` when it drops, on every
//! exit, failures included.

use crate::workspace_binary;
use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository root.
#[must_use]
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Builds the images as `TAG` from the binaries the tests run (no second cargo build):
/// `scripts/docker-build --tag TAG --bin-dir DIR`. Returns the script's summary.
pub fn build_images(tag: &str) -> Result<String> {
    let ringcastd = workspace_binary("ringcastd", "RINGCASTD_BIN")?;
    let ringcast = workspace_binary("ringcast", "RINGCAST_BIN")?;
    let bin_dir = ringcastd.parent().context("binary directory")?;
    ensure!(ringcast.parent() == Some(bin_dir), "ringcastd and ringcast must be in one directory");
    let build = Command::new(repo().join("scripts/docker-build"))
        .args(["--tag", tag, "--bin-dir"])
        .arg(bin_dir)
        .stdin(Stdio::null())
        .output()?;
    ensure!(build.status.success(), "scripts/docker-build failed: {}", String::from_utf8_lossy(&build.stderr));
    Ok(String::from_utf8_lossy(&build.stdout).into_owned())
}

/// A compose project of our own: its name, host ports and subnet are unique to this
/// process.
#[derive(Debug, Clone)]
pub struct Project {
    pub project: String,
    pub env: Vec<(String, String)>,
    /// The load balancer's WebSocket endpoint and stats page on the host.
    pub lb: SocketAddr,
    pub lb_stats: SocketAddr,
}

/// Owns a [`Project`]: dropping it removes everything the project made.
#[derive(Debug)]
pub struct Compose(pub Project);

impl std::ops::Deref for Compose {
    type Target = Project;
    fn deref(&self) -> &Project {
        &self.0
    }
}

impl Project {
    /// A project for images `tag` with the server API key `key`. Host ports: ten from
    /// 20000 + (pid % 1270) * 10: eight for nodes, the LB's endpoint, its stats page.
    /// They stay below 32768, where Linux's ephemeral ports start: a container restarted
    /// during a test re-binds its published port, which the test's own client sockets
    /// must not be holding (seen once with 49686).
    #[must_use]
    pub fn new(tag: &str, key: &str) -> Project {
        let pid = std::process::id();
        let base = 20_000 + (pid % 1_270) * 10;
        let project = format!("rctest{pid}");
        let lb = u16::try_from(base + 8).unwrap_or(0);
        let stats = u16::try_from(base + 9).unwrap_or(0);
        let env = vec![
            ("RINGCAST_TAG".to_owned(), tag.to_owned()),
            ("RINGCAST_API_KEY".to_owned(), key.to_owned()),
            ("RINGCAST_HOST_PORTS".to_owned(), format!("{base}-{}", base + 7)),
            ("RINGCAST_LB_PORT".to_owned(), lb.to_string()),
            ("RINGCAST_LB_STATS_PORT".to_owned(), stats.to_string()),
            ("RINGCAST_SUBNET".to_owned(), format!("10.{}.{}.0/24", 200 + pid % 50, (pid / 50) % 250)),
        ];
        Project {
            project,
            env,
            lb: SocketAddr::from(([127, 0, 0, 1], lb)),
            lb_stats: SocketAddr::from(([127, 0, 0, 1], stats)),
        }
    }

    /// Runs `scripts/cluster --docker --project P ARGS...`; returns stdout, or fails with
    /// stderr.
    pub fn cluster(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(repo().join("scripts/cluster"))
            .args(["--docker", "--project", &self.project])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .context("run scripts/cluster")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "scripts/cluster {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    /// `cluster ... --json ARGS`, parsed.
    pub fn cluster_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cluster(&all)?;
        serde_json::from_str(out.trim()).with_context(|| format!("not one JSON object: {out}"))
    }

    /// The running node containers: name, node id, host client address, network address.
    pub fn nodes(&self) -> Result<Vec<DockerNode>> {
        let names = docker(&[
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            "label=com.docker.compose.service=node",
            "--format",
            "{{.Names}}",
        ])?;
        let mut out = Vec::new();
        for name in names.lines().filter(|l| !l.is_empty()) {
            let host = docker(&["inspect", "-f", "{{.Config.Hostname}}", name])?;
            let port = docker(&["port", name, "7400/tcp"])?;
            let port = port.lines().next().and_then(|l| l.rsplit(':').next()).context("no published port")?;
            let ip = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name])?;
            out.push(DockerNode {
                container: name.to_owned(),
                id: format!("node-{}", host.trim()),
                host_addr: format!("127.0.0.1:{}", port.trim()).parse()?,
                ip: ip.trim().to_owned(),
            });
        }
        out.sort_by(|a, b| a.container.cmp(&b.container));
        Ok(out)
    }

    /// Everything of the project that still exists (containers, networks, volumes).
    pub fn leftovers(&self) -> Result<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = docker(&["ps", "-a", "--filter", &label, "--format", "container {{.Names}}"])?;
        left += &docker(&["network", "ls", "--filter", &label, "--format", "network {{.Name}}"])?;
        left += &docker(&["volume", "ls", "--filter", &label, "--format", "volume {{.Name}}"])?;
        Ok(left.trim().to_owned())
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let label = format!("label=com.docker.compose.project={}", self.project);
        // Paused containers cannot be removed gracefully; unpause whatever is paused.
        if let Ok(paused) = docker(&["ps", "-q", "--filter", &label, "--filter", "status=paused"]) {
            for id in paused.lines().filter(|l| !l.is_empty()) {
                let _ = docker(&["unpause", id]);
            }
        }
        let _ = compose_command()
            .args(["-p", &self.project, "-f"])
            .arg(repo().join("docker/compose.yaml"))
            .args(["down", "-v", "--remove-orphans", "--timeout", "5"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A running node container.
#[derive(Debug, Clone)]
pub struct DockerNode {
    pub container: String,
    pub id: String,
    /// The node's client port as published on the host.
    pub host_addr: SocketAddr,
    /// Its address on the compose network (reachable from the host on Linux).
    pub ip: String,
}

impl DockerNode {
    #[must_use]
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.host_addr)
    }
}

/// `docker compose` (v2) when the engine has it, else `docker-compose` (v1, Debian's).
#[must_use]
pub fn compose_command() -> Command {
    let v2 = Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if v2 {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    }
}

/// Runs `docker ARGS`; returns stdout, or fails with stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).stdin(Stdio::null()).output().context("run docker")?;
    ensure!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `scripts/cluster rolling-restart` on `project` while `publisher` publishes to
/// `channels` in turn (every 20 ms, idempotent keys, each retried for up to `within`) and
/// `subscriber` follows them (the load starts once it holds every channel). Then checks the rolling restart lost nothing: every
/// acknowledged message reached the subscriber, in order, in one epoch per channel at
/// contiguous offsets, with no `recovered: false`, gap or restarted stream; and the load
/// really ran (more than 50 publishes). Returns the restart's JSON report.
pub async fn rolling_restart_under_load(
    project: &Project,
    mut publisher: ringcast_client::Publisher,
    subscriber: &mut ringcast_client::Subscriber,
    channels: &[String],
    within: std::time::Duration,
) -> Result<Value> {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::{Duration, Instant};
    let mut seen: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut not_recovered = Vec::new();
    // The subscriber holds every channel before the first publish: a message sequenced
    // before its subscription reached the owner was never promised to it (it subscribes
    // from the live edge), so a load started at once could ack one it never sees.
    let mut unsubscribed: BTreeSet<String> = channels.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !unsubscribed.is_empty() {
        let e =
            next_before(subscriber, deadline, || format!("the subscriber did not hold {unsubscribed:?} within 30 s"))
                .await?;
        if let ringcast_client::Event::Subscribed { channel, .. } = &e {
            unsubscribed.remove(channel);
        }
        record(e, &mut seen, &mut not_recovered);
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load_channels = channels.to_vec();
    let load = tokio::spawn(async move {
        let mut acked: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        let mut n = 0u64;
        while !*stop_rx.borrow() {
            let ch = &load_channels[usize::try_from(n).unwrap_or(0) % load_channels.len()];
            let ack = publisher.publish(ch, &serde_json::json!(n), &format!("rr{n}"), within).await?;
            acked.entry(ch.clone()).or_default().push((ack.at.epoch, ack.at.offset));
            n += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = stop_rx.changed() => {}
            }
        }
        anyhow::Ok(acked)
    });
    let restarting = project.clone();
    let restart = tokio::task::spawn_blocking(move || restarting.cluster_json(&["rolling-restart"]));
    tokio::pin!(restart);
    let restarted = loop {
        tokio::select! {
            r = &mut restart => break r??,
            e = subscriber.next() => record(e?, &mut seen, &mut not_recovered),
        }
    };
    let _ = stop_tx.send(true);
    let acked = load.await??;
    ensure!(restarted["rolling_restart"] == "ok", "rolling restart: {restarted}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.iter().any(|(ch, a)| seen.get(ch).map_or(0, Vec::len) < a.len()) {
        // One bound for the whole catch-up, not one per event: the subscriber may be
        // between reconnects (its backoff reaches 8 s, and a dial to a node still
        // starting costs it another), so a single wait can take longer than 10 s.
        let short = || format!("the subscriber fell short within 30 s: acked {acked:?}, seen {seen:?}");
        let e = next_before(subscriber, deadline, short).await?;
        record(e, &mut seen, &mut not_recovered);
    }
    ensure!(not_recovered.is_empty(), "not a lossless resume during the rolling restart: {not_recovered:?}");
    let total: usize = acked.values().map(Vec::len).sum();
    ensure!(total > 50, "the load ran during the restart ({total} publishes)");
    for (ch, a) in &acked {
        ensure!(a.iter().all(|(e, _)| *e == a[0].0), "{ch}: acks in one epoch: {a:?}");
        let offsets: Vec<u64> = a.iter().map(|(_, o)| *o).collect();
        ensure!(offsets == (1..=a.len() as u64).collect::<Vec<u64>>(), "{ch}: acked offsets not contiguous: {a:?}");
        ensure!(seen[ch][..a.len()] == a[..], "{ch}: the subscriber missed or reordered acked messages");
    }
    Ok(restarted)
}

/// The subscriber's next event, or the error `what` says once `deadline` passes.
async fn next_before(
    subscriber: &mut ringcast_client::Subscriber,
    deadline: std::time::Instant,
    what: impl FnOnce() -> String,
) -> Result<ringcast_client::Event> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    Ok(tokio::time::timeout(left, subscriber.next()).await.with_context(what)??)
}

/// Records a subscriber event: messages by channel, and anything that is not a lossless
/// resume (`recovered: false`, a gap, a restarted stream).
pub fn record(
    e: ringcast_client::Event,
    seen: &mut std::collections::BTreeMap<String, Vec<(String, u64)>>,
    bad: &mut Vec<String>,
) {
    use ringcast_client::Event;
    match e {
        Event::Message { channel, at, .. } => seen.entry(channel).or_default().push((at.epoch, at.offset)),
        Event::Subscribed { recovered: Some(false), channel, reason, .. } => {
            bad.push(format!("{channel}: recovered false ({reason:?})"));
        }
        Event::Gap { channel, from, to, reason, .. } => bad.push(format!("{channel}: gap {from}..={to} ({reason})")),
        Event::Restarted { channel, at } => bad.push(format!("{channel}: restarted at {at:?}")),
        Event::RefreshFailed { reason } => bad.push(format!("token refresh failed: {reason}")),
        Event::Connected { .. } | Event::Disconnected { .. } | Event::Subscribed { .. } | Event::Refreshed { .. } => {}
    }
}
