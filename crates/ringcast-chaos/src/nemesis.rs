//! The nemeses: each scenario injects its faults for the fault phase, logging a `fault`
//! event when one starts (with the channel owners just before it) and a `heal` event
//! when it ends. Every fault is healed before its scenario returns; the run heals
//! everything once more afterwards in case a scenario stopped early.

use crate::cluster::Cluster;
use crate::history::{Event, Recorder};
use crate::load::Rng;
use crate::net::{Cut, Net};
use anyhow::{bail, Context, Result};
use ringcast_core::name::{ChannelName, NodeId};
use ringcast_core::ring::{Ring, DEFAULT_VNODES};
use ringcast_core::slot::Slot;
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Every scenario, in `--full` order.
pub const ALL: [Scenario; 9] = [
    Scenario::KillLoop,
    Scenario::KillOwner,
    Scenario::KillOwnerReplica,
    Scenario::PauseOwner,
    Scenario::PartitionEtcd,
    Scenario::PartitionPeers,
    Scenario::Split,
    Scenario::PacketFaults,
    Scenario::EtcdQuorum,
];

/// The `--quick` tier.
pub const QUICK: [Scenario; 3] = [Scenario::KillLoop, Scenario::PauseOwner, Scenario::PartitionPeers];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    KillLoop,
    KillOwner,
    KillOwnerReplica,
    PauseOwner,
    PartitionEtcd,
    PartitionPeers,
    Split,
    PacketFaults,
    EtcdQuorum,
}

impl Scenario {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillLoop => "kill-loop",
            Scenario::KillOwner => "kill-owner",
            Scenario::KillOwnerReplica => "kill-owner-replica",
            Scenario::PauseOwner => "pause-owner",
            Scenario::PartitionEtcd => "partition-etcd",
            Scenario::PartitionPeers => "partition-peers",
            Scenario::Split => "split",
            Scenario::PacketFaults => "packet-faults",
            Scenario::EtcdQuorum => "etcd-quorum",
        }
    }

    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::KillLoop => "SIGKILL a random node every 10 s (never the same twice in a row), restart after 3 s",
            Scenario::KillOwner => "SIGKILL the hot channel's owner every 15 s, restart after 3 s",
            Scenario::KillOwnerReplica => "SIGKILL the hot channel's owner and its ring successor together every 30 s",
            Scenario::PauseOwner => "SIGSTOP the hot channel's owner for 2x the lease TTL, then SIGCONT; every 20 s",
            Scenario::PartitionEtcd => "cut the hot owner from etcd only (peers and clients still reach it) for 20 s",
            Scenario::PartitionPeers => "cut the hot owner from its peers only (etcd and clients fine) for 30 s",
            Scenario::Split => "majority|minority split (3|2, or 2|1); the minority also loses etcd; 30 s",
            Scenario::PacketFaults => "10% loss (+100 ms +-50 ms delay when netem exists) on all inter-node links",
            Scenario::EtcdQuorum => "SIGKILL 2 of the 3 etcd members for 30 s, then restart them",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        ALL.into_iter().find(|x| x.name() == s)
    }

    /// Invariants this scenario is not held to (reported anyway).
    #[must_use]
    pub fn exempt(self) -> &'static [&'static str] {
        match self {
            // Two copies lost at once exceed RF 2: loss is allowed, but only signalled.
            Scenario::KillOwnerReplica => &["I1", "I8"],
            _ => &[],
        }
    }

    /// etcd members the scenario needs.
    #[must_use]
    pub fn etcd_members(self) -> usize {
        if self == Scenario::EtcdQuorum {
            3
        } else {
            1
        }
    }
}

/// What a nemesis works on.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub cluster: &'a mut Cluster,
    pub net: &'a mut Net,
    pub rec: &'a Recorder,
    pub channels: &'a [String],
    pub hot: &'a str,
    pub rng: Rng,
    pub lease_ttl: Duration,
    next_fault: u64,
}

impl<'a> Ctx<'a> {
    pub fn new(
        cluster: &'a mut Cluster,
        net: &'a mut Net,
        rec: &'a Recorder,
        channels: &'a [String],
        hot: &'a str,
        seed: u64,
        lease_ttl: Duration,
    ) -> Ctx<'a> {
        Ctx { cluster, net, rec, channels, hot, rng: Rng::new(seed), lease_ttl, next_fault: 0 }
    }

    async fn snapshot(&mut self) -> std::collections::BTreeMap<String, String> {
        let owners = self.cluster.owners(self.channels).await;
        self.rec.record(&Event::Owners { t: self.rec.now(), owners: owners.clone() });
        owners
    }

    async fn hot_owner(&mut self) -> Result<usize> {
        let owners = self.snapshot().await;
        let id = owners.get(self.hot).context("the hot channel has no owner")?;
        self.cluster.index_of(id).with_context(|| format!("unknown owner {id}"))
    }

    fn fault(&mut self, kind: &str, nodes: &[usize], faulted: u32, detail: &str) -> u64 {
        self.next_fault += 1;
        let ids = nodes.iter().map(|&i| self.cluster.nodes[i].id.clone()).collect();
        self.rec.record(&Event::Fault {
            t: self.rec.now(),
            id: self.next_fault,
            kind: kind.to_owned(),
            nodes: ids,
            faulted,
            detail: detail.to_owned(),
        });
        self.next_fault
    }

    fn heal(&self, id: u64) {
        self.rec.record(&Event::Heal { t: self.rec.now(), id });
    }

    async fn restart(&mut self, i: usize) -> Result<()> {
        let mut last = None;
        for _ in 0..3 {
            match self.cluster.start_node(i).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            sleep(Duration::from_secs(1)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("restart failed")))
    }

    /// The hot channel's ring successor other than `owner` (the replica under RF 2).
    async fn replica_of(&self, owner: usize) -> Result<usize> {
        let view = self.cluster.api("/v1/cluster").await?;
        let mut ids = Vec::new();
        for m in view["members"].as_array().context("members")? {
            let id = m["node_id"].as_str().context("node_id")?;
            ids.push(NodeId::new(id).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        let ring = Ring::build(&ids, DEFAULT_VNODES).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let channel = ChannelName::new(self.hot).map_err(|e| anyhow::anyhow!("{e}"))?;
        let owner_id = &self.cluster.nodes[owner].id;
        let replicas = ring.replicas(Slot::of(&channel), 3);
        let pick = replicas.iter().find(|r| r.as_str() != owner_id).context("no replica candidate")?;
        self.cluster.index_of(pick.as_str()).context("replica is not one of ours")
    }

    fn pick_other(&mut self, not: Option<usize>) -> usize {
        let up = self.cluster.up();
        let choices: Vec<usize> = up.iter().copied().filter(|&i| Some(i) != not).collect();
        if choices.is_empty() {
            return up.first().copied().unwrap_or(0);
        }
        choices[self.rng.below(choices.len())]
    }
}

/// Runs `scenario`'s faults for `duration`.
pub async fn run(s: Scenario, ctx: &mut Ctx<'_>, duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    let ttl = ctx.lease_ttl;
    match s {
        Scenario::KillLoop => {
            let mut last = None;
            while Instant::now() + Duration::from_secs(10) <= end {
                let i = ctx.pick_other(last);
                last = Some(i);
                ctx.snapshot().await;
                let f = ctx.fault("kill", &[i], 1, "SIGKILL, restart after 3 s");
                ctx.cluster.nodes[i].kill().await;
                sleep(Duration::from_secs(3)).await;
                ctx.restart(i).await?;
                ctx.heal(f);
                sleep(Duration::from_secs(7)).await;
            }
        }
        Scenario::KillOwner => {
            while Instant::now() + Duration::from_secs(15) <= end {
                let i = ctx.hot_owner().await?;
                let f = ctx.fault("kill_owner", &[i], 1, "SIGKILL the hot owner, restart after 3 s");
                ctx.cluster.nodes[i].kill().await;
                sleep(Duration::from_secs(3)).await;
                ctx.restart(i).await?;
                ctx.heal(f);
                sleep(Duration::from_secs(12)).await;
            }
        }
        Scenario::KillOwnerReplica => {
            while Instant::now() + Duration::from_secs(30) <= end {
                let o = ctx.hot_owner().await?;
                let r = ctx.replica_of(o).await?;
                let f = ctx.fault("kill_owner_replica", &[o, r], 2, "SIGKILL owner and replica, restart after 5 s");
                ctx.cluster.nodes[o].kill().await;
                ctx.cluster.nodes[r].kill().await;
                sleep(Duration::from_secs(5)).await;
                ctx.restart(o).await?;
                ctx.restart(r).await?;
                ctx.heal(f);
                sleep(Duration::from_secs(25)).await;
            }
        }
        Scenario::PauseOwner => {
            let pause = ttl * 2;
            while Instant::now() + pause + Duration::from_secs(8) <= end {
                let i = ctx.hot_owner().await?;
                let f = ctx.fault("pause", &[i], 1, &format!("SIGSTOP the hot owner for {pause:?}"));
                ctx.cluster.nodes[i].pause()?;
                sleep(pause).await;
                ctx.cluster.nodes[i].resume()?;
                ctx.heal(f);
                sleep(Duration::from_secs(20).saturating_sub(pause).max(Duration::from_secs(8))).await;
            }
        }
        Scenario::PartitionEtcd => {
            while Instant::now() + Duration::from_secs(30) <= end {
                let i = ctx.hot_owner().await?;
                let f = ctx.fault("partition_etcd", &[i], 1, "hot owner cannot reach etcd for 20 s");
                let host = ctx.net.host();
                for m in 0..ctx.cluster.etcd.len() {
                    ctx.net.cut(i, Cut::Tcp(host, 2379 + 2 * u16::try_from(m).unwrap_or(0)))?;
                }
                sleep(Duration::from_secs(20)).await;
                ctx.net.heal(i)?;
                ctx.heal(f);
                sleep(Duration::from_secs(10)).await;
            }
        }
        Scenario::PartitionPeers => {
            while Instant::now() + Duration::from_secs(40) <= end {
                let i = ctx.hot_owner().await?;
                let f = ctx.fault("partition_peers", &[i], 1, "hot owner cannot reach its peers for 30 s");
                for p in 0..ctx.cluster.nodes.len() {
                    if p != i {
                        let ip = ctx.net.node_ip(p);
                        ctx.net.cut(i, Cut::From(ip))?;
                    }
                }
                sleep(Duration::from_secs(30)).await;
                ctx.net.heal(i)?;
                ctx.heal(f);
                sleep(Duration::from_secs(10)).await;
            }
        }
        Scenario::Split => {
            let n = ctx.cluster.nodes.len();
            if n < 3 {
                bail!("split needs at least 3 nodes");
            }
            while Instant::now() + Duration::from_secs(45) <= end {
                let o = ctx.hot_owner().await?;
                let mut minority = vec![o];
                while minority.len() < (n - 1) / 2 {
                    let c = ctx.rng.below(n);
                    if !minority.contains(&c) {
                        minority.push(c);
                    }
                }
                let faulted = u32::try_from(minority.len()).unwrap_or(u32::MAX);
                let f = ctx.fault("split", &minority, faulted, "minority cut from the majority and from etcd, 30 s");
                let host = ctx.net.host();
                for &m in &minority {
                    for p in (0..n).filter(|p| !minority.contains(p)) {
                        let ip = ctx.net.node_ip(p);
                        ctx.net.cut(m, Cut::From(ip))?;
                    }
                    for e in 0..ctx.cluster.etcd.len() {
                        ctx.net.cut(m, Cut::Tcp(host, 2379 + 2 * u16::try_from(e).unwrap_or(0)))?;
                    }
                }
                sleep(Duration::from_secs(30)).await;
                for &m in &minority {
                    ctx.net.heal(m)?;
                }
                ctx.heal(f);
                sleep(Duration::from_secs(15)).await;
            }
        }
        Scenario::PacketFaults => {
            let n = ctx.cluster.nodes.len();
            let delay = if ctx.net.netem_available() {
                "100 ms +-50 ms delay (netem)"
            } else {
                "delay UNAVAILABLE (kernel lacks sch_netem): loss only"
            };
            let all: Vec<usize> = (0..n).collect();
            ctx.snapshot().await;
            let f = ctx.fault("packet_faults", &all, 0, &format!("10% loss on inter-node links (nftables); {delay}"));
            for i in 0..n {
                for p in (0..n).filter(|&p| p != i) {
                    let ip = ctx.net.node_ip(p);
                    ctx.net.cut(i, Cut::Loss(ip, 10))?;
                }
                if ctx.net.netem_available() {
                    ctx.net.delay(i, 100, 50)?;
                }
            }
            sleep(end.saturating_duration_since(Instant::now())).await;
            ctx.net.heal_all()?;
            for i in 0..n {
                ctx.net.undelay(i);
            }
            ctx.heal(f);
        }
        Scenario::EtcdQuorum => {
            if ctx.cluster.etcd.len() < 3 {
                bail!("etcd-quorum needs 3 etcd members");
            }
            while Instant::now() + Duration::from_secs(50) <= end {
                ctx.snapshot().await;
                let f = ctx.fault("etcd_quorum", &[], 0, "2 of 3 etcd members SIGKILLed for 30 s");
                ctx.cluster.etcd[1].kill().await;
                ctx.cluster.etcd[2].kill().await;
                sleep(Duration::from_secs(30)).await;
                ctx.cluster.etcd[1].restart()?;
                ctx.cluster.etcd[2].restart()?;
                ctx.heal(f);
                sleep(Duration::from_secs(20)).await;
            }
        }
    }
    Ok(())
}

/// Undoes every fault: rules, delays, paused and dead nodes, dead etcd members.
pub async fn heal_everything(cluster: &mut Cluster, net: &mut Net) -> Result<()> {
    net.heal_all()?;
    for i in 0..cluster.nodes.len() {
        net.undelay(i);
    }
    for m in &mut cluster.etcd {
        m.restart()?;
    }
    for i in 0..cluster.nodes.len() {
        let n = &mut cluster.nodes[i];
        if !n.is_up() {
            if n.pid_alive() {
                n.resume()?;
            } else {
                cluster.start_node(i).await?;
            }
        }
    }
    Ok(())
}
