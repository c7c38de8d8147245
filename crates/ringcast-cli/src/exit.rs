//! Exit statuses and the error every command returns.

use std::fmt;

/// Bad command line or input (EX_USAGE from sysexits.h).
pub const EXIT_USAGE: u8 = 64;
/// Any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// A command's failure, already worded for the operator.
#[derive(Debug)]
pub enum CliError {
    /// The input is wrong: fixing the command line fixes it (exit 64).
    Usage(String),
    /// The input is fine but the command could not do its work (exit 1).
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_FAILURE,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

/// Prints an error on stderr.
#[allow(clippy::print_stderr)]
pub fn report(err: &CliError) {
    eprintln!("ringcast: error: {err}");
}

/// Prints a progress note on stderr (stdout is kept for reports).
#[allow(clippy::print_stderr)]
pub fn note(msg: &str) {
    eprintln!("{msg}");
}
