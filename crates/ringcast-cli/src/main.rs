//! `ringcast`: the operator's command line for a ringcast cluster.
//!
//! One module per command group, each with its clap arguments and a `run` that returns
//! an [`output::Report`] or a [`exit::CliError`]; this file only parses, dispatches and
//! turns the outcome into output and an exit status. To add a group (members, ring,
//! owner, publish, tail, history, drain), add a sibling module and a variant of
//! [`Command`].
//!
//! Output: human-readable text on stdout by default; with `--json`, exactly one line
//! holding one JSON object, for scripts. Errors go to stderr as text in both modes.
//!
//! Exit status: 0 on success, 64 for a bad command line or bad input (an invalid node
//! id, for instance), 1 for any other failure (a file that exists, a missing CA, I/O).

mod ca;
mod exit;
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The cluster certificate authority: create it, issue node certificates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
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
    let result = match cli.command {
        Command::Ca(cmd) => ca::run(cmd),
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
