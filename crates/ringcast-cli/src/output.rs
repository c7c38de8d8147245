//! What a successful command prints: text for people, or one JSON line for scripts.

use std::io::Write as _;

/// A command's result, in both forms. The JSON value is an object whose fields are the
/// command's documented script interface.
#[derive(Debug)]
pub struct Report {
    pub human: String,
    pub json: serde_json::Value,
}

/// Where and how reports are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn print(&self, report: &Report) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            // serde_json's compact form has no newlines: one object, one line.
            writeln!(stdout, "{}", report.json)?;
        } else {
            writeln!(stdout, "{}", report.human.trim_end())?;
        }
        stdout.flush()
    }
}
