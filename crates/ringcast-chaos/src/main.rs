//! `ringcast-chaos`: the chaos suite. It runs a real etcd and real `ringcastd` nodes, each
//! in its own Linux network namespace, drives recorded load, applies a nemesis, heals,
//! drains, and checks the recorded history offline. Design: `docs/chaos.md`.
//!
//! Layout: [`net`] (namespaces, bridge, nftables faults), [`cluster`] (etcd, CA, nodes),
//! [`load`] (publishers and subscribers), [`nemesis`] (the scenarios), [`history`] (the
//! recorded events), [`checker`] (pure: history to invariant counts), [`report`], and
//! [`run`] (one scenario end to end). Needs root (namespaces and nftables).
//!
//! Exit status: 0 every scenario passed, 1 a violation or a failed run, 64 bad usage.

mod checker;
mod cluster;
mod docker;
mod history;
mod http;
mod load;
mod nemesis;
mod net;
mod report;
mod run;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use nemesis::Scenario;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "ringcast-chaos", version, about = "Chaos suite for a ringcast cluster (needs root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Tier {
    /// 3 nodes, about 60 s each of kill-loop, pause-owner, partition-peers.
    Quick,
    /// Every scenario at 5 nodes.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Durable {
    /// The `durable` namespace has `durable = true` (RF 2).
    On,
    /// It runs best-effort (to see what replication buys).
    Off,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run scenarios and print a report per scenario.
    Run {
        /// A tier of scenarios (default: quick, unless scenarios are named).
        #[arg(long, value_enum)]
        tier: Option<Tier>,
        /// Scenarios to run by name (see `list`); repeatable.
        #[arg(long = "scenario", short = 's')]
        scenarios: Vec<String>,
        #[arg(long, default_value = "target/debug/ringcastd")]
        ringcastd: PathBuf,
        #[arg(long, default_value = "target/debug/ringcast")]
        ringcast: PathBuf,
        /// Run against the compose cluster (docker/compose.yaml) with Docker as the
        /// nemesis; scenarios are the docker-* ones (see `list`).
        #[arg(long)]
        docker: bool,
        /// Image tag for --docker (images from scripts/docker-build).
        #[arg(long, default_value = "local")]
        image_tag: String,
        /// The compose file for --docker.
        #[arg(long, default_value = "docker/compose.yaml")]
        compose_file: PathBuf,
        /// Nodes (default: 3 for quick, 5 for full).
        #[arg(long)]
        nodes: Option<usize>,
        /// Seconds of faults per scenario (default: 60 quick, 150 full).
        #[arg(long)]
        duration: Option<u64>,
        /// Seconds of quiet after the heal before the final reads.
        #[arg(long, default_value_t = 10)]
        drain: u64,
        /// Lease TTL of every node, in seconds.
        #[arg(long, default_value_t = 3)]
        lease_ttl: u64,
        #[arg(long, value_enum, default_value_t = Durable::On)]
        durable: Durable,
        /// Channels per namespace (durable, besteffort).
        #[arg(long, default_value_t = 8)]
        channels: usize,
        #[arg(long, default_value_t = 6)]
        publishers: usize,
        #[arg(long, default_value_t = 4)]
        subscribers: usize,
        /// Milliseconds between one publisher's operations.
        #[arg(long, default_value_t = 40)]
        interval_ms: u64,
        #[arg(long)]
        seed: Option<u64>,
        /// Where histories, logs and reports go.
        #[arg(long, default_value = "target/chaos")]
        out: PathBuf,
    },
    /// Check a recorded history offline and print its report.
    Check {
        history: PathBuf,
        /// The scenario it came from (for its exemptions).
        #[arg(long)]
        scenario: Option<String>,
    },
    /// Remove namespaces, bridges and rules left by runs that died (`--all`: every run).
    Cleanup {
        #[arg(long)]
        all: bool,
        /// The compose file, to take down compose projects of dead --docker runs.
        #[arg(long, default_value = "docker/compose.yaml")]
        compose_file: PathBuf,
    },
    /// List the scenarios.
    List,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match dispatch(cli.cmd).await {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "ringcast-chaos: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn out(s: &str) {
    let mut o = std::io::stdout();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

fn usage(msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "ringcast-chaos: {msg}");
    ExitCode::from(64)
}

#[allow(clippy::too_many_lines)] // Flag plumbing.
async fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::List => {
            for s in nemesis::ALL {
                out(&format!("{:<24} {}\n", s.name(), s.describe()));
            }
            for s in docker::ALL {
                out(&format!("{:<24} {} (--docker)\n", s.name(), s.describe()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cleanup { all, compose_file } => {
            let docker_removed =
                if compose_file.exists() { docker::cleanup_stale(all, &compose_file) } else { Vec::new() };
            for r in net::cleanup_stale(all).into_iter().chain(docker_removed) {
                out(&format!("removed {r}\n"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { history, scenario } => {
            let events = history::read(&history)?;
            let findings = checker::check(&events);
            let s = scenario.as_deref().and_then(Scenario::parse);
            let (name, nodes, durable) = events
                .iter()
                .find_map(|e| match e {
                    history::Event::Meta { scenario, nodes, durable_enforced, .. } => {
                        Some((scenario.clone(), *nodes, *durable_enforced))
                    }
                    _ => None,
                })
                .unwrap_or_default();
            let exempt = s.or_else(|| Scenario::parse(&name)).map_or(&[][..], Scenario::exempt);
            let r = report::Report {
                scenario: name,
                nodes,
                fault_seconds: 0,
                durable_enforced: durable,
                exempt: exempt.iter().map(|x| (*x).to_owned()).collect(),
                findings,
                error: None,
                notes: Vec::new(),
                history: history.display().to_string(),
            };
            out(&r.table());
            Ok(if r.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Run {
            tier,
            scenarios,
            ringcastd,
            ringcast,
            docker: on_docker,
            image_tag,
            compose_file,
            nodes,
            duration,
            drain,
            lease_ttl,
            durable,
            channels,
            publishers,
            subscribers,
            interval_ms,
            seed,
            out: out_dir,
        } => {
            let mut list = Vec::new();
            let mut docker_list = Vec::new();
            for name in &scenarios {
                match (on_docker, Scenario::parse(name), docker::DockerScenario::parse(name)) {
                    (false, Some(s), _) => list.push(s),
                    (true, _, Some(s)) => docker_list.push(s),
                    _ => {
                        let which = if on_docker { "--docker scenario" } else { "scenario" };
                        return Ok(usage(&format!("unknown {which} '{name}' (see `ringcast-chaos list`)")));
                    }
                }
            }
            let tier = tier.unwrap_or(Tier::Quick);
            if list.is_empty() {
                list = match tier {
                    Tier::Quick => nemesis::QUICK.to_vec(),
                    Tier::Full => nemesis::ALL.to_vec(),
                };
            }
            if docker_list.is_empty() {
                docker_list = docker::ALL.to_vec();
            }
            let full = matches!(tier, Tier::Full);
            let nodes = nodes.unwrap_or(if full { 5 } else { 3 });
            if !(3..=20).contains(&nodes) || channels == 0 || publishers == 0 || subscribers == 0 {
                return Ok(usage("--nodes must be 3..=20; --channels, --publishers, --subscribers at least 1"));
            }
            if !(2..=60).contains(&lease_ttl) {
                return Ok(usage("--lease-ttl must be 2..=60 seconds"));
            }
            let durable = durable == Durable::On;
            let seed = seed.unwrap_or_else(|| {
                let mut b = [0u8; 8];
                let _ = getrandom::fill(&mut b);
                u64::from_le_bytes(b)
            });
            let default_faults = match (on_docker, full) {
                (true, _) => 45,
                (false, true) => 150,
                (false, false) => 60,
            };
            let opts = run::Opts {
                ringcastd,
                ringcast,
                nodes,
                faults: Duration::from_secs(duration.unwrap_or(default_faults)),
                drain: Duration::from_secs(drain),
                lease_ttl_s: lease_ttl,
                durable,
                channels_per_namespace: channels,
                publishers,
                subscribers,
                publish_interval: Duration::from_millis(interval_ms),
                seed,
                out: out_dir.clone(),
            };
            let count = if on_docker { docker_list.len() } else { list.len() };
            out(&format!(
                "ringcast-chaos: {count} scenario(s), {nodes} nodes{}, seed {seed}, output in {}\n",
                if on_docker { " (docker)" } else { "" },
                out_dir.display()
            ));
            let d = docker::DockerOpts { compose_file, tag: image_tag };
            let mut reports = Vec::new();
            let runs: Vec<(&'static str, &'static str)> = if on_docker {
                docker_list.iter().map(|s| (s.name(), s.describe())).collect()
            } else {
                list.iter().map(|s| (s.name(), s.describe())).collect()
            };
            for (k, (name, describe)) in runs.into_iter().enumerate() {
                out(&format!("-- {name}: {describe}\n"));
                let one = async {
                    if on_docker {
                        docker::scenario(docker_list[k], &opts, &d).await
                    } else {
                        run::scenario(list[k], &opts).await
                    }
                };
                let r = tokio::select! {
                    r = one => r?,
                    _ = tokio::signal::ctrl_c() => {
                        // Dropping the scenario future dropped its cluster and network:
                        // processes are killed, namespaces and compose projects removed.
                        let _ = writeln!(std::io::stderr(), "ringcast-chaos: interrupted; cleaned up");
                        return Ok(ExitCode::from(130));
                    }
                };
                out(&r.table());
                std::fs::write(out_dir.join(name).join("report.json"), serde_json::to_string_pretty(&r)?)?;
                reports.push(r);
            }
            let failed: Vec<&str> = reports.iter().filter(|r| !r.passed()).map(|r| r.scenario.as_str()).collect();
            std::fs::write(out_dir.join("report.json"), serde_json::to_string_pretty(&reports)?)?;
            out(&format!(
                "== summary: {} passed, {} failed{}\n",
                reports.len() - failed.len(),
                failed.len(),
                if failed.is_empty() { String::new() } else { format!(" ({})", failed.join(", ")) }
            ));
            Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
