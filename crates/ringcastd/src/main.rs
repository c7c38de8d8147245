//! `ringcastd`: run one ringcast node.
//!
//! Exit status: 0 after a clean shutdown, 64 for a bad command line or config (the
//! message says what is wrong), 1 when the node cannot start (for example the port is
//! taken).

use anyhow::Context as _;
use clap::Parser;
use ringcastd::config::{Config, ConfigError, FlagOverrides, ENV_VARS};
use ringcastd::node::{serve, Node};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// EX_USAGE from sysexits.h.
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "ringcastd", version, about = "ringcast node: a clustered real-time pub/sub router")]
#[command(
    after_help = "Environment: RINGCAST_LOG (log filter, default info) and the overrides listed in docs/configuration.md.\n\
Without --config the built-in development config is used (loopback only, demo namespaces, dev API key)."
)]
struct Args {
    /// TOML configuration file (default: the built-in development config).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Client address (HTTP + WebSocket), overrides node.listen. Port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Node id, overrides node.id.
    #[arg(long)]
    node_id: Option<String>,
    /// Server API key, overrides api.key (prefer RINGCAST_API_KEY: flags show in `ps`).
    #[arg(long)]
    api_key: Option<String>,
    /// Join a cluster through these etcd endpoints: etcd://HOST:PORT[,HOST:PORT...].
    /// Needs the [cluster] section's certificate files. Without it: standalone.
    #[arg(long)]
    membership: Option<String>,
    /// Cluster name (etcd key prefix), overrides cluster.name.
    #[arg(long)]
    cluster: Option<String>,
    /// `core` owns slots and serves clients; `edge` serves clients only.
    #[arg(long, value_enum)]
    role: Option<RoleArg>,
    /// QUIC address for peers, overrides cluster.listen.
    #[arg(long)]
    quic_listen: Option<SocketAddr>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Validate the configuration (including key files), print a one-line summary, exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Core,
    Edge,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    init_tracing(args.log_format, env.get("RINGCAST_LOG").map(String::as_str));

    let config = match load_config(&args, &env) {
        Ok(c) => c,
        Err(e) => {
            report(&format!("ringcastd: configuration error: {e}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Key files are part of the configuration: unreadable or invalid ones are usage
    // errors too, caught before anything starts.
    if let Err(e) = ringcast_auth::Verifier::from_config(&config.auth) {
        report(&format!("ringcastd: configuration error: {e}"));
        return ExitCode::from(EXIT_USAGE);
    }
    if args.check_config {
        println!(
            "configuration OK: node {} on {}, {} namespace(s)",
            config.node.id,
            config.node.listen,
            config.namespaces.len()
        );
        return ExitCode::SUCCESS;
    }
    if args.worker_threads == Some(0) {
        report("ringcastd: --worker-threads must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.worker_threads {
        rt.worker_threads(n);
    }
    let result = rt
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(config, config_path(&args, &env).is_none())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&format!("ringcastd: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stderr)]
fn report(message: &str) {
    eprintln!("{message}");
}

/// The config file to read: `--config`, else `$RINGCAST_CONFIG`, else none (the
/// built-in development config).
fn config_path(args: &Args, env: &HashMap<String, String>) -> Option<PathBuf> {
    args.config.clone().or_else(|| env.get("RINGCAST_CONFIG").map(PathBuf::from))
}

fn load_config(args: &Args, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let membership = match &args.membership {
        Some(m) => Some(
            ringcastd::config::parse_membership(m)
                .map_err(|problem| ConfigError::Invalid { field: "--membership".into(), problem })?,
        ),
        None => None,
    };
    let flags = FlagOverrides {
        listen: args.listen,
        node_id: args.node_id.clone(),
        api_key: args.api_key.clone(),
        membership,
        cluster_name: args.cluster.clone(),
        role: args.role.map(|r| match r {
            RoleArg::Core => ringcast_cluster::membership::Role::Core,
            RoleArg::Edge => ringcast_cluster::membership::Role::Edge,
        }),
        quic_listen: args.quic_listen,
    };
    match config_path(args, env) {
        Some(path) => {
            let text =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            Config::load(Some((&text, &path.display().to_string())), env, &flags)
        }
        None => Config::load(None, env, &flags),
    }
}

fn init_tracing(format: LogFormat, filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config, demo: bool) -> anyhow::Result<()> {
    let listen = config.node.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (node.listen / --listen)"))?;
    let local = listener.local_addr().context("cannot read the bound address")?;
    let drain = CancellationToken::new();
    let seed = getrandom::u64().context("cannot read OS randomness for the epoch seed")?;
    let node = Node::start(config, seed, drain.clone(), local).await?;
    if demo {
        warn!(
            "running the built-in development config: anonymous demo namespaces, API key \"dev-api-key\"; \
             pass --config for anything else"
        );
        if !local.ip().is_loopback() {
            warn!(addr = %local, "the development config is listening on a non-loopback address");
        }
    }
    // Signal handlers are installed before the ready record: a supervisor that stops the
    // node right after it said ready gets a drain, not the default action (exit).
    let signals = install_signal_handlers();
    let env_note: Vec<&str> = ENV_VARS.iter().map(|(k, _)| *k).collect();
    info!(node = %node.node_id, client_addr = %local, env_overrides = ?env_note, "ringcastd ready");
    // One JSON line on stdout: how scripts and tests learn the bound address.
    let ready = serde_json::json!({
        "event": "ready",
        "node": node.node_id.as_str(),
        "client_addr": local.to_string(),
        "quic_addr": node.router.cluster().and_then(|c| c.quic_addr()).map(|a| a.to_string()),
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ready}");
        let _ = out.flush();
    }
    tokio::spawn(wait_for_signal(signals, drain));
    serve(node, listener).await;
    Ok(())
}

type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;

/// SIGTERM and SIGINT streams; from here on neither kills the process by default.
fn install_signal_handlers() -> Signals {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => {
            warn!("cannot install signal handlers; stop the node with SIGKILL");
            None
        }
    }
}

/// Cancels `drain` on SIGTERM or SIGINT; a second signal exits at once.
async fn wait_for_signal(signals: Signals, drain: CancellationToken) {
    let Some((mut term, mut int)) = signals else { return };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "draining"),
        _ = int.recv() => info!(signal = "SIGINT", "draining"),
    }
    drain.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    warn!("second signal: exiting without waiting");
    std::process::exit(130);
}
