//! One scenario from start to verdict: network, cluster, load, nemesis, heal, drain,
//! final reads, offline check.
//!
//! Everything the run creates is owned by locals of [`scenario`] ([`Net`] and
//! [`Cluster`] clean up on drop), so every exit path (an error, a panic unwinding, the
//! future being dropped on Ctrl-C) removes namespaces, rules and processes.

use crate::checker;
use crate::cluster::{Cluster, Settings};
use crate::history::{self, Entry, Event, Recorder};
use crate::load::{self, LoadConfig, Targets};
use crate::nemesis::{self, Scenario};
use crate::net::Net;
use crate::report::Report;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Parameters of one scenario run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub ringcastd: PathBuf,
    pub ringcast: PathBuf,
    pub nodes: usize,
    pub faults: Duration,
    pub drain: Duration,
    pub lease_ttl_s: u64,
    pub durable: bool,
    pub channels_per_namespace: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub publish_interval: Duration,
    pub seed: u64,
    pub out: PathBuf,
}

/// How long publishers get to finish their current operation (all retries) at the end.
const PUBLISHER_STOP: Duration = Duration::from_secs(30);

/// Runs `s` and returns its report (an `Err` only for failures to even record).
pub async fn scenario(s: Scenario, o: &Opts) -> Result<Report> {
    let dir = o.out.join(s.name());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let history_path = dir.join("history.jsonl");
    let rec = Recorder::create(&history_path)?;
    let mut notes = Vec::new();
    if !o.durable {
        notes.push(
            "--durable off: the durable namespace runs best-effort, so I1/I8 violations on it are \
             expected (its channels restart in a new epoch after a crash)"
                .to_owned(),
        );
    }
    let result = drive(s, o, &dir, &rec, &mut notes).await;
    rec.flush();
    let events = history::read(&history_path)?;
    let findings = checker::check(&events);
    Ok(Report {
        scenario: s.name().to_owned(),
        nodes: o.nodes,
        fault_seconds: o.faults.as_secs(),
        durable_enforced: o.durable,
        exempt: s.exempt().iter().map(|x| (*x).to_owned()).collect(),
        findings,
        error: result.err().map(|e| format!("{e:#}")),
        notes,
        history: history_path.display().to_string(),
    })
}

async fn drive(s: Scenario, o: &Opts, dir: &Path, rec: &Recorder, notes: &mut Vec<String>) -> Result<()> {
    let mut net = Net::create(o.nodes)?;
    if s == Scenario::PacketFaults && !net.netem_available() {
        notes.push("tc netem is unavailable on this kernel: packet-faults injects loss only, no delay".into());
    }
    let settings = Settings {
        ringcastd: o.ringcastd.clone(),
        ringcast: o.ringcast.clone(),
        nodes: o.nodes,
        etcd_members: s.etcd_members(),
        lease_ttl_s: o.lease_ttl_s,
        durable: o.durable,
    };
    let mut cluster = Cluster::start(settings, &net, dir).await?;
    let (channels, cfg) = start_recording(s.name(), o, rec);
    let targets: Targets = Arc::new(cluster.nodes.iter().map(|n| (n.id.clone(), n.ws_url())).collect());
    let (stop_pub, stop_pub_rx) = watch::channel(false);
    let (stop_sub, stop_sub_rx) = watch::channel(false);
    let mut subs = JoinSet::new();
    for n in 0..cfg.subscribers {
        subs.spawn(load::subscriber(n, cfg.clone(), targets.clone(), rec.clone(), stop_sub_rx.clone()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut pubs = JoinSet::new();
    for n in 0..cfg.publishers {
        pubs.spawn(load::publisher(n, cfg.clone(), targets.clone(), rec.clone(), stop_pub_rx.clone()));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let lease = Duration::from_secs(o.lease_ttl_s);
    let nemesis_result = {
        let mut ctx = nemesis::Ctx::new(&mut cluster, &mut net, rec, &channels, "durable:hot", o.seed, lease);
        nemesis::run(s, &mut ctx, o.faults).await
    };
    let heal_result = nemesis::heal_everything(&mut cluster, &mut net).await;

    // Drain: publishers finish, subscribers keep reading while the cluster settles.
    let _ = stop_pub.send(true);
    let _ = tokio::time::timeout(PUBLISHER_STOP, async { while pubs.join_next().await.is_some() {} }).await;
    pubs.abort_all();
    let settled = cluster.wait_settled().await;
    tokio::time::sleep(o.drain).await;
    for c in &channels {
        final_read(&cluster, rec, c).await;
    }
    let _ = stop_sub.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while subs.join_next().await.is_some() {} }).await;
    subs.abort_all();
    for (node, line) in cluster.panics() {
        rec.record(&Event::Panic { t: rec.now(), node, line });
    }
    cluster.stop().await;
    net.teardown();
    nemesis_result.context("nemesis")?;
    heal_result.context("heal")?;
    settled.context("after the heal")?;
    Ok(())
}

/// The load's channels: `durable:hot`, `durable:c1..`, `besteffort:c0..`, `per_namespace`
/// of each namespace.
/// Records a run's metadata; returns its channels and the load to drive on them.
pub(crate) fn start_recording(scenario: &str, o: &Opts, rec: &Recorder) -> (Vec<String>, LoadConfig) {
    rec.record(&Event::Meta {
        scenario: scenario.to_owned(),
        nodes: o.nodes,
        durable_namespaces: vec!["durable".into()],
        durable_enforced: o.durable,
        fault_grace_ms: (o.lease_ttl_s * 1000) * 2 + 5000,
    });
    let channels = channel_list(o.channels_per_namespace);
    let cfg = LoadConfig {
        publishers: o.publishers,
        subscribers: o.subscribers,
        channels: channels.clone(),
        hot: "durable:hot".into(),
        interval: o.publish_interval,
        seed: o.seed,
    };
    (channels, cfg)
}

pub fn channel_list(per_namespace: usize) -> Vec<String> {
    let mut channels = vec!["durable:hot".to_owned()];
    for i in 1..per_namespace {
        channels.push(format!("durable:c{i}"));
    }
    for i in 0..per_namespace {
        channels.push(format!("besteffort:c{i}"));
    }
    channels
}

/// A cluster whose node API can be asked (any live node answers).
pub trait Api {
    fn get(&self, path: &str) -> impl std::future::Future<Output = Result<Value>>;
}

impl Api for Cluster {
    fn get(&self, path: &str) -> impl std::future::Future<Output = Result<Value>> {
        self.api(path)
    }
}

/// Reads `channel`'s whole history, newest page first, and records it oldest first.
pub async fn final_read(cluster: &impl Api, rec: &Recorder, channel: &str) {
    let mut entries = Vec::new();
    let mut epoch: Option<String> = None;
    let mut before: Option<u64> = None;
    let mut complete = true;
    for _ in 0..1000 {
        let path = match before {
            Some(b) => format!("/v1/channels/{channel}/history?limit=1000&before={b}"),
            None => format!("/v1/channels/{channel}/history?limit=1000"),
        };
        let page: Value = match cluster.get(&path).await {
            Ok(v) => v,
            Err(_) => {
                complete = false;
                break;
            }
        };
        let ep = page["epoch"].as_str().map(str::to_owned);
        if before.is_some() && ep != epoch {
            // The epoch changed between pages: the history we hold is not one stream.
            complete = false;
            break;
        }
        epoch = ep;
        let mut page_entries: Vec<Entry> = page["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| {
                        Some(Entry {
                            offset: m["offset"].as_u64()?,
                            payload: m["data"]["k"].as_str().map(str::to_owned),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        page_entries.append(&mut entries);
        entries = page_entries;
        match page["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    rec.record(&Event::FinalRead { t: rec.now(), channel: channel.to_owned(), epoch, entries, complete });
}
