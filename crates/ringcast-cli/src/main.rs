//! `ringcast`: the operator's command line for a ringcast cluster.
//!
//! One module per command group, each with its clap arguments and a `run` that returns
//! an [`output::Report`] or a [`exit::CliError`]; this file only parses, dispatches and
//! turns the outcome into output and an exit status. `ca` works on files; the other
//! commands talk to any node of a cluster (`--node`, `--api-key`, or `RINGCAST_NODE`,
//! `RINGCAST_API_KEY`) over its HTTP API and WebSocket.
//!
//! Output: human-readable text on stdout by default; with `--json`, exactly one line
//! holding one JSON object, for scripts. Errors go to stderr as text in both modes.
//!
//! `container-node` is the odd one out: the entrypoint of the container image, it
//! replaces itself with `ringcastd` (see [`container`]).
//!
//! Exit status: 0 on success, 64 for a bad command line or bad input (an invalid node
//! id, for instance), 1 for any other failure (a file that exists, a missing CA, I/O).

mod ca;
mod channel;
mod cluster;
mod container;
mod demo;
mod exit;
mod node;
mod output;

use clap::Parser;
use output::Output;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "ringcast", version, about = "Operate a ringcast cluster", propagate_version = true)]
struct Cli {
    /// Print one JSON object on one line instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
    /// A node's client address (any node of the cluster). `tail` takes a comma-separated
    /// list and moves between them when a node goes away.
    #[arg(long, global = true, env = "RINGCAST_NODE", default_value = "http://127.0.0.1:7400")]
    node: String,
    /// The server API key (for members, ring, owner, publish, drain).
    #[arg(long, global = true, env = "RINGCAST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The cluster certificate authority: create it, issue node certificates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// List the cluster's members with their roles, addresses and slot counts.
    Members,
    /// Slots per node and the balance (max over mean).
    Ring,
    /// Which node owns a channel, and its slot.
    Owner { channel: String },
    /// Publish one message with the server API. DATA is JSON: '{"home":1}' or '"text"'.
    Publish {
        channel: String,
        data: String,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// A page of a channel's history, oldest first.
    History {
        channel: String,
        /// Messages with offsets below this (from the previous page's hint).
        #[arg(long)]
        before: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Subscribe and print messages as they arrive (Ctrl-C to stop).
    Tail {
        channel: String,
        /// Resume after a position: EPOCH:OFFSET.
        #[arg(long)]
        since: Option<String>,
        /// A client token, for channels that are not anonymous.
        #[arg(long, env = "RINGCAST_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Whether a node is ready: GET PATH on --node; exit 0 when it answers 200, else 1.
    /// The container images' healthcheck (no shell or curl in them).
    Health {
        /// The path to ask (`/readyz` for ringcastd, `/health` for etcd).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Container entrypoint: derive the node id and address, issue the node's
    /// certificate from the mounted CA, write its config, exec ringcastd (docs/docker.md).
    ContainerNode(container::ContainerNode),
    /// Demo publishers: `demo scores` feeds the live scoreboard page at `/`.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Drain a node: it hands its slots to the others, closes its clients and exits.
    Drain {
        node_id: String,
        /// How long to wait for the node to hold no slot (0: do not wait).
        #[arg(long, default_value = "60")]
        wait_secs: u64,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
enum DemoCommand {
    /// Play made-up games on scores:nba and scores:nhl (keep-latest, one key per game)
    /// through the server API; the scoreboard at http://NODE/ shows them.
    Scores {
        /// How many games (1..=8).
        #[arg(long, default_value_t = 6)]
        games: usize,
        /// Milliseconds between updates.
        #[arg(long, default_value_t = 700)]
        interval_ms: u64,
        /// Stop after this many updates (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        ticks: u64,
        /// Seed of the game generator (default: the current time).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// Runs a command that talks to a node.
fn with_node<F, Fut>(cli: &Cli, f: F) -> Result<output::Report, exit::CliError>
where
    F: FnOnce(node::NodeApi) -> Fut,
    Fut: std::future::Future<Output = Result<output::Report, exit::CliError>>,
{
    let first = cli.node.split(',').next().unwrap_or_default();
    let api = node::NodeApi::new(first, cli.api_key.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| exit::CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(f(api))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(exit::EXIT_USAGE),
            };
        }
    };
    let out = Output { json: cli.json };
    let result = match &cli.command {
        Command::Ca(cmd) => ca::run(cmd.clone()),
        Command::Health { path } => with_node(&cli, |api| async move { cluster::health(&api, path).await }),
        Command::ContainerNode(args) => {
            let err = container::run(args);
            exit::report(&err);
            return ExitCode::from(err.exit_code());
        }
        Command::Members => with_node(&cli, |api| async move { cluster::members(&api).await }),
        Command::Ring => with_node(&cli, |api| async move { cluster::ring(&api).await }),
        Command::Owner { channel } => with_node(&cli, |api| async move { cluster::owner(&api, channel).await }),
        Command::Publish { channel, data, idempotency_key } => {
            with_node(
                &cli,
                |api| async move { channel::publish(&api, channel, data, idempotency_key.as_deref()).await },
            )
        }
        Command::History { channel, before, limit } => {
            with_node(&cli, |api| async move { channel::history(&api, channel, *before, *limit).await })
        }
        Command::Tail { channel, since, token, count } => {
            let since = match since.as_deref().map(channel::parse_since).transpose() {
                Ok(s) => s,
                Err(e) => {
                    exit::report(&e);
                    return ExitCode::from(e.exit_code());
                }
            };
            let json_out = cli.json;
            let nodes: Result<Vec<node::NodeApi>, _> =
                cli.node.split(',').map(|n| node::NodeApi::new(n.trim(), cli.api_key.clone())).collect();
            let result = match nodes {
                Ok(nodes) => with_node(&cli, |_| async move {
                    channel::tail(&nodes, channel, since, token.clone(), *count, json_out).await
                }),
                Err(e) => Err(e),
            };
            // Messages were printed as they came; only failures are left to report.
            return match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(err) => {
                    exit::report(&err);
                    ExitCode::from(err.exit_code())
                }
            };
        }
        Command::Demo(DemoCommand::Scores { games, interval_ms, ticks, seed }) => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
            });
            let interval = std::time::Duration::from_millis(*interval_ms);
            with_node(&cli, |api| async move { demo::scores(&api, *games, interval, *ticks, seed).await })
        }
        Command::Drain { node_id, wait_secs } => with_node(&cli, |api| async move {
            cluster::drain(&api, node_id, std::time::Duration::from_secs(*wait_secs)).await
        }),
    };
    match result {
        Ok(report) => match out.print(&report) {
            Ok(()) => ExitCode::SUCCESS,
            // stdout is gone (a closed pipe): nothing useful left to say.
            Err(_) => ExitCode::from(exit::EXIT_FAILURE),
        },
        Err(err) => {
            exit::report(&err);
            ExitCode::from(err.exit_code())
        }
    }
}
