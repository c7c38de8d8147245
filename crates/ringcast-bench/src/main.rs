//! `ringcast-bench run ...` measures one load point and appends one JSON line to
//! `--out`; `ringcast-bench report ...` turns those lines into the Markdown table, the
//! JSON summary and the PNG chart; `presence-storm` and `scoreboard` run those workloads
//! against a running ringcastd, and `storm-report` / `scoreboard-report` render their
//! JSON lines; `floor` is the null fan-out server the others are measured against.
//! `scripts/bench` starts and pins the servers.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ringcast_bench::floor;
use ringcast_bench::load::{self, Spec};
use ringcast_bench::proto::System;
use ringcast_bench::report;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "ringcast-bench", about = "Load generator: ringcast vs Redis pub/sub vs NATS core")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one load point against a running server.
    Run(RunArgs),
    /// The null fan-out server (RESP2 `SUBSCRIBE`/`PUBLISH`, one send per delivery and
    /// nothing else): the floor the servers are measured against, system `floor`.
    Floor {
        #[arg(long, default_value = "127.0.0.1:6391")]
        listen: SocketAddr,
    },
    /// Build the report from the JSON lines of `run`.
    Report {
        /// JSON lines written by `run --out`.
        #[arg(long)]
        input: PathBuf,
        /// Markdown tables (results section of docs/benchmarks.md).
        #[arg(long)]
        markdown: PathBuf,
        /// Aggregated results and targets as JSON.
        #[arg(long)]
        json: PathBuf,
        /// PNG chart of workload (a).
        #[arg(long)]
        chart: Option<PathBuf>,
        /// A TTF font for the chart's text.
        #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
        font: PathBuf,
    },
    /// The presence storm against a running ringcastd (`scripts/bench --presence`).
    PresenceStorm {
        #[arg(long)]
        addr: SocketAddr,
        /// The HS256 secret of the node's `auth.hmac_secret`.
        #[arg(long)]
        secret: String,
        /// A namespace with `presence` and `join_leave`.
        #[arg(long, default_value = "room")]
        namespace: String,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 20)]
        channels_per_user: usize,
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        /// Seconds every connection stays down.
        #[arg(long, default_value_t = 0.5)]
        blip: f64,
        /// Seconds over which the reconnects are spread (full jitter).
        #[arg(long, default_value_t = 2.0)]
        jitter: f64,
        /// Seconds to keep counting once everyone is back.
        #[arg(long, default_value_t = 5.0)]
        settle: f64,
        #[arg(long, default_value = "storm")]
        label: String,
        /// Append the outcome as one JSON line here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The scoreboard workload against a running ringcastd (`scripts/bench --scoreboard`).
    Scoreboard(ScoreboardArgs),
    /// Markdown tables of scoreboard outcomes (JSON lines of `scoreboard --out`).
    ScoreboardReport {
        #[arg(long)]
        input: PathBuf,
    },
    /// Markdown table of presence storm outcomes (JSON lines of `presence-storm --out`).
    StormReport {
        #[arg(long)]
        input: PathBuf,
    },
}

/// Whether scoreboard viewers ask for deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Delta {
    Off,
    On,
}

#[derive(Debug, clap::Args)]
struct ScoreboardArgs {
    #[arg(long)]
    addr: SocketAddr,
    /// The server's process id, for its CPU and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The node's `api.key` (for `POST /v1/publish/batch`); default from RINGCAST_API_KEY.
    #[arg(long, env = "RINGCAST_API_KEY", hide_env_values = true)]
    api_key: String,
    /// A namespace with `keep_latest = true` and `backpressure = "keep_latest"`.
    #[arg(long, default_value = "scores")]
    namespace: String,
    #[arg(long, default_value_t = 15000)]
    viewers: usize,
    #[arg(long, default_value_t = 50)]
    games: usize,
    /// Updates per second per game.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Share of viewers that read slowly.
    #[arg(long, default_value_t = 0.01)]
    slow_fraction: f64,
    /// Seconds between two frames a slow viewer takes off its socket.
    #[arg(long, default_value_t = 0.5)]
    slow_interval: f64,
    /// SO_RCVBUF of slow viewers' sockets, in bytes.
    #[arg(long, default_value_t = 4096)]
    slow_rcvbuf: u32,
    /// `on`: viewers subscribe with "delta": true (the namespace needs `delta = true`).
    #[arg(long, value_enum, default_value_t = Delta::Off)]
    delta: Delta,
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    #[arg(long, default_value_t = 20.0)]
    measure: f64,
    /// Label for the report (default "delta off" / "delta on").
    #[arg(long)]
    label: Option<String>,
    /// Append the outcome as one JSON line here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    system: System,
    /// Where the subscribers connect (and the publisher, without --publish-addr).
    #[arg(long)]
    addr: SocketAddr,
    /// Where the publisher connects: another node of the cluster (workload g).
    #[arg(long)]
    publish_addr: Option<SocketAddr>,
    /// The server's process id, for CPU and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Another server process whose CPU counts too (the other nodes of a cluster);
    /// repeatable.
    #[arg(long)]
    other_server_pid: Vec<u32>,
    #[arg(long, default_value = "1 thread")]
    config: String,
    #[arg(long, default_value = "a")]
    workload: String,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 1)]
    channels_per_conn: usize,
    /// Workload (c): this many channels, each connection subscribed to
    /// --channels-per-conn of them at random, publishes spread over them (--zipf); 0:
    /// every subscriber on the first --channels-per-conn channels, publishes on the first.
    #[arg(long, default_value_t = 0)]
    channels: usize,
    /// With --channels: the Zipf exponent of the publishes' channels (0: uniform).
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// Publishes per second (in all); 0 measures idle memory.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    #[arg(long, default_value_t = 5.0)]
    measure: f64,
    #[arg(long, default_value_t = 12.0)]
    settle: f64,
    #[arg(long, default_value_t = 0.0)]
    stall_fraction: f64,
    #[arg(long)]
    perf: bool,
    #[arg(long, default_value_t = 1)]
    repetition: u32,
    /// When the first message is due, in ms since the Unix epoch (default: as soon as
    /// the subscribers are ready). The run fails when that time has passed by then.
    #[arg(long, value_name = "UNIX_MS")]
    start_at: Option<u64>,
    /// Append the result as one JSON line here (and print it on stdout).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Prints an outcome as one JSON line, and appends it to `out` when given, in one
/// write: generators that run at once (workload g) append to the same file.
fn emit(outcome: &impl serde::Serialize, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(outcome)?;
    println!("{line}");
    if let Some(path) = out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        line.push('\n');
        f.write_all(line.as_bytes())?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Floor { listen } => {
            let listener = floor::listen(listen)?;
            let mut log = std::io::stderr();
            writeln!(log, "ringcast-bench floor: listening on {}", listener.local_addr()?)?;
            floor::serve(&listener, &mut log)
        }
        Cmd::Run(a) => {
            let spec = Spec {
                system: a.system,
                config: a.config,
                workload: a.workload,
                addr: a.addr,
                publish_addr: a.publish_addr,
                server_pid: a.server_pid,
                other_server_pids: a.other_server_pid,
                subscribers: a.subscribers,
                channels_per_conn: a.channels_per_conn,
                channels: a.channels,
                zipf: a.zipf,
                rate: a.rate,
                payload: a.payload.max(ringcast_bench::payload::HEADER_BYTES),
                warmup: Duration::from_secs_f64(a.warmup),
                measure: Duration::from_secs_f64(a.measure),
                settle: Duration::from_secs_f64(a.settle),
                stall_fraction: a.stall_fraction,
                perf: a.perf,
                repetition: a.repetition,
                start_at_unix_ms: a.start_at,
            };
            let outcome = load::run(spec)?;
            emit(&outcome, a.out.as_deref())
        }
        Cmd::PresenceStorm {
            addr,
            secret,
            namespace,
            users,
            channels_per_user,
            rooms,
            blip,
            jitter,
            settle,
            label,
            out,
        } => {
            let spec = ringcast_bench::storm::StormSpec {
                addr,
                secret,
                namespace,
                users,
                channels_per_user,
                rooms,
                blip: Duration::from_secs_f64(blip),
                backoff_cap: Duration::from_secs_f64(jitter),
                settle: Duration::from_secs_f64(settle),
                label,
            };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let outcome = rt.block_on(ringcast_bench::storm::run(spec))?;
            emit(&outcome, out.as_deref())
        }
        Cmd::Scoreboard(a) => {
            let delta = a.delta == Delta::On;
            let secs = |name: &str, s: f64| {
                Duration::try_from_secs_f64(s)
                    .map_err(|_| anyhow::anyhow!("--{name} must be a non-negative number of seconds"))
            };
            let spec = ringcast_bench::scoreboard::ScoreSpec {
                addr: a.addr,
                server_pid: a.server_pid,
                api_key: a.api_key,
                namespace: a.namespace,
                viewers: a.viewers,
                games: a.games,
                rate: a.rate,
                slow_fraction: a.slow_fraction,
                slow_interval: secs("slow-interval", a.slow_interval)?,
                slow_rcvbuf: a.slow_rcvbuf,
                delta,
                warmup: secs("warmup", a.warmup)?,
                measure: secs("measure", a.measure)?,
                label: a.label.unwrap_or_else(|| if delta { "delta on" } else { "delta off" }.to_owned()),
            };
            let outcome = ringcast_bench::scoreboard::run(spec)?;
            emit(&outcome, a.out.as_deref())
        }
        Cmd::ScoreboardReport { input } => {
            let text = std::fs::read_to_string(&input).with_context(|| format!("cannot read {}", input.display()))?;
            let outcomes = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<Vec<ringcast_bench::scoreboard::ScoreOutcome>, _>>()
                .with_context(|| format!("{} is not JSON lines of `scoreboard --out`", input.display()))?;
            print!("{}", ringcast_bench::scoreboard::markdown(&outcomes));
            Ok(())
        }
        Cmd::StormReport { input } => {
            let text = std::fs::read_to_string(&input).with_context(|| format!("cannot read {}", input.display()))?;
            let outcomes = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<Vec<ringcast_bench::storm::StormOutcome>, _>>()?;
            print!("{}", ringcast_bench::storm::markdown(&outcomes));
            Ok(())
        }
        Cmd::Report { input, markdown, json, chart, font } => {
            let text = std::fs::read_to_string(&input).with_context(|| format!("cannot read {}", input.display()))?;
            let outcomes = report::parse_lines(&text)?;
            let summary = report::summarise(&outcomes);
            std::fs::write(&markdown, report::markdown(&summary))?;
            std::fs::write(&json, serde_json::to_string_pretty(&summary)?)?;
            if let Some(chart) = chart {
                report::chart(&summary, &chart, &font)?;
            }
            println!("{}", report::targets_markdown(&summary.targets));
            Ok(())
        }
    }
}
