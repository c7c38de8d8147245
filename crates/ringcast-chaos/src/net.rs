//! The network: one bridge in the root namespace, one network namespace per node joined
//! to it by a veth pair, and faults as nftables rules inside a node's namespace.
//!
//! Names carry the harness's pid (`rcc{pid}br`, `rcc{pid}n{i}`, `rcc{pid}v{i}`) and the
//! subnet is derived from it, so concurrent runs do not collide; `cleanup_stale` removes
//! what a run that died left behind (its pid no longer exists). Root's address on the
//! bridge (`.1`) hosts etcd and the load generator; node `i` is `.{11 + i}`.
//!
//! Faults live in one nftables table per node namespace (`inet rcchaos`), rebuilt
//! whole from the node's current fault set on every change, so healing is deleting the
//! table. Nothing is added to the root namespace except one `iptables FORWARD ACCEPT`
//! rule for the bridge, needed on hosts where `br_netfilter` sends bridged frames
//! through a `FORWARD DROP` policy (Docker hosts); it is removed on teardown.
//!
//! Delay needs `sch_netem`. When the kernel lacks it, [`Net::netem_available`] is false
//! and delay is reported as unavailable; loss is still real (nftables `numgen random`).

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Runs a command; fails with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd).args(args).stdin(Stdio::null()).output().with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn run_quiet(cmd: &str, args: &[&str]) {
    let _ = Command::new(cmd).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// One fault applied to a node's namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cut {
    /// Drop traffic to and from these addresses (peers, or etcd's host).
    From(Ipv4Addr),
    /// Drop TCP traffic to and from this address and port (etcd's client port).
    Tcp(Ipv4Addr, u16),
    /// Drop this percentage of packets arriving from this address.
    Loss(Ipv4Addr, u8),
}

/// The bridge and namespaces of one run.
#[derive(Debug)]
pub struct Net {
    pub tag: String,
    pub bridge: String,
    base: [u8; 3],
    nodes: usize,
    cuts: Vec<BTreeSet<Cut>>,
    netem: bool,
    torn_down: bool,
}

impl Net {
    /// Creates the bridge and `nodes` namespaces.
    pub fn create(nodes: usize) -> Result<Net> {
        let pid = std::process::id();
        let tag = format!("rcc{pid}");
        // 10.100-199.x.0/24 from the pid; refuse if the host already routes it.
        let base = [10, 100 + u8::try_from((pid >> 8) % 100).unwrap_or(0), u8::try_from(pid % 256).unwrap_or(0)];
        let subnet = format!("{}.{}.{}.0/24", base[0], base[1], base[2]);
        let routes = Command::new("ip").args(["route", "show", &subnet]).output()?;
        if !routes.stdout.is_empty() {
            bail!("subnet {subnet} is already routed on this host; run with another pid or clean up");
        }
        let mut net = Net {
            bridge: format!("{tag}br"),
            tag,
            base,
            nodes,
            cuts: vec![BTreeSet::new(); nodes],
            netem: false,
            torn_down: false,
        };
        net.setup().inspect_err(|_| net.teardown())?;
        Ok(net)
    }

    fn setup(&mut self) -> Result<()> {
        let br = self.bridge.clone();
        // Leftovers of an earlier scenario of this run (a namespace whose processes had
        // not exited yet keeps its veth alive after `ip netns del`): remove them first.
        for i in 0..self.nodes {
            run_quiet("ip", &["link", "del", &format!("{}v{i}", self.tag)]);
            run_quiet("ip", &["netns", "del", &self.ns(i)]);
        }
        run_quiet("ip", &["link", "del", &br]);
        run_quiet("iptables", &["-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"]);
        run("ip", &["link", "add", &br, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{}/24", self.host()), "dev", &br])?;
        run("ip", &["link", "set", &br, "up"])?;
        run("iptables", &["-I", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            let veth = format!("{}v{i}", self.tag);
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run("ip", &["link", "set", &veth, "master", &br, "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &format!("{}/24", self.node_ip(i)), "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Probe netem once on node 0's interface.
        let ns0 = self.ns(0);
        self.netem =
            run("ip", &["netns", "exec", &ns0, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms"])
                .is_ok();
        if self.netem {
            run_quiet("ip", &["netns", "exec", &ns0, "tc", "qdisc", "del", "dev", "eth0", "root"]);
        }
        Ok(())
    }

    /// Whether `tc netem` works on this kernel.
    #[must_use]
    pub fn netem_available(&self) -> bool {
        self.netem
    }

    /// Root's address on the bridge (etcd and the load generator).
    #[must_use]
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.base[0], self.base[1], self.base[2], 1)
    }

    #[must_use]
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.base[0], self.base[1], self.base[2], 11 + u8::try_from(i).unwrap_or(0))
    }

    #[must_use]
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Adds a fault to node `i` and re-renders its rules.
    pub fn cut(&mut self, i: usize, cut: Cut) -> Result<()> {
        self.cuts[i].insert(cut);
        self.render(i)
    }

    /// Removes every fault of node `i`.
    pub fn heal(&mut self, i: usize) -> Result<()> {
        self.cuts[i].clear();
        self.render(i)
    }

    /// Removes every fault of every node.
    pub fn heal_all(&mut self) -> Result<()> {
        for i in 0..self.nodes {
            self.heal(i)?;
        }
        Ok(())
    }

    /// Delay on node `i`'s interface with netem (outbound), when available.
    pub fn delay(&self, i: usize, ms: u32, jitter_ms: u32) -> Result<()> {
        if !self.netem {
            bail!("tc netem is not available on this kernel (sch_netem missing)");
        }
        let ns = self.ns(i);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                &format!("{ms}ms"),
                &format!("{jitter_ms}ms"),
            ],
        )
    }

    /// Removes a netem qdisc from node `i` (no-op when there is none).
    pub fn undelay(&self, i: usize) {
        run_quiet("ip", &["netns", "exec", &self.ns(i), "tc", "qdisc", "del", "dev", "eth0", "root"]);
    }

    fn render(&self, i: usize) -> Result<()> {
        let ns = self.ns(i);
        let mut input = String::new();
        let mut output = String::new();
        for c in &self.cuts[i] {
            match c {
                Cut::From(ip) => {
                    input.push_str(&format!("    ip saddr {ip} drop\n"));
                    output.push_str(&format!("    ip daddr {ip} drop\n"));
                }
                Cut::Tcp(ip, port) => {
                    input.push_str(&format!("    ip saddr {ip} tcp sport {port} drop\n"));
                    output.push_str(&format!("    ip daddr {ip} tcp dport {port} drop\n"));
                }
                Cut::Loss(ip, pct) => {
                    input.push_str(&format!("    ip saddr {ip} numgen random mod 100 < {pct} drop\n"));
                }
            }
        }
        // Declaring then deleting makes the delete succeed whether or not the table exists.
        let mut script = String::from("table inet rcchaos {}\ndelete table inet rcchaos\n");
        if !self.cuts[i].is_empty() {
            script.push_str(&format!(
                "table inet rcchaos {{\n  chain in {{\n    type filter hook input priority -10; policy accept;\n{input}  }}\n  \
                 chain out {{\n    type filter hook output priority -10; policy accept;\n{output}  }}\n}}\n"
            ));
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn nft")?;
        child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft in {ns} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Removes the namespaces (their veths and rules go with them), the bridge and the
    /// FORWARD rule. Idempotent; errors are ignored (this runs on every exit path).
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for i in 0..self.nodes {
            run_quiet("ip", &["netns", "del", &self.ns(i)]);
        }
        run_quiet("ip", &["link", "del", &self.bridge]);
        run_quiet("iptables", &["-D", "FORWARD", "-i", &self.bridge, "-o", &self.bridge, "-j", "ACCEPT"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Removes namespaces, bridges and FORWARD rules of runs whose pid is gone, or of every
/// run when `all`. Returns what it removed.
pub fn cleanup_stale(all: bool) -> Vec<String> {
    let mut removed = Vec::new();
    let dead = |tag: &str| -> bool {
        let pid = tag.trim_start_matches("rcc");
        all || !std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    let tag_of = |name: &str| -> Option<String> {
        let rest = name.strip_prefix("rcc")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (!digits.is_empty()).then(|| format!("rcc{digits}"))
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if let Some(tag) = tag_of(name) {
                if dead(&tag) {
                    // Processes still inside (nodes of a crashed run) go first.
                    if let Ok(p) = Command::new("ip").args(["netns", "pids", name]).output() {
                        for pid in String::from_utf8_lossy(&p.stdout).split_whitespace() {
                            run_quiet("kill", &["-KILL", pid]);
                        }
                    }
                    run_quiet("ip", &["netns", "del", name]);
                    removed.push(format!("netns {name}"));
                }
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show", "type", "bridge"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            if let Some(tag) = tag_of(name) {
                if name == format!("{tag}br") && dead(&tag) {
                    run_quiet("ip", &["link", "del", name]);
                    removed.push(format!("bridge {name}"));
                }
            }
        }
    }
    if let Ok(out) = Command::new("iptables").args(["-S", "FORWARD"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() != Some(&"-A") {
                continue;
            }
            let Some(br) = words.windows(2).find(|w| w[0] == "-i").map(|w| w[1]) else { continue };
            if let Some(tag) = tag_of(br) {
                if br == format!("{tag}br") && dead(&tag) {
                    let mut args = vec!["-D"];
                    args.extend(&words[1..]);
                    run_quiet("iptables", &args);
                    removed.push(format!("iptables FORWARD rule for {br}"));
                }
            }
        }
    }
    removed
}
