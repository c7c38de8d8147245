//! `ringcast-guard [--subscribers N] [--messages N] [--payload BYTES]`: runs the guard's
//! fan-out ([`ringcast_guard::fan_out`]) once and prints what it did as one JSON line.
//! `scripts/bench --guard` runs it under callgrind. Exit status: 0 done, 1 the fan-out
//! failed, 64 bad usage (the message names the argument).

use std::io::Write as _;
use std::process::ExitCode;

const USAGE: &str =
    "usage: ringcast-guard [--subscribers N] [--messages N] [--payload BYTES] (defaults 1000, 200, 100)";

/// What to run: subscribers, messages, payload bytes.
struct Args {
    subscribers: usize,
    messages: u64,
    payload: usize,
}

/// `Ok(None)` for `--help`; `Err` names the argument that is wrong.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args { subscribers: 1000, messages: 200, payload: 100 };
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("{flag}: '{value}' is not a number"));
        let size = || usize::try_from(number()?).map_err(|_| format!("{flag}: '{value}' is too large"));
        match flag.as_str() {
            "--subscribers" => a.subscribers = size()?,
            "--messages" => a.messages = number()?,
            "--payload" => a.payload = size()?,
            _ => return Err(format!("unknown argument '{flag}'")),
        }
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    let mut stderr = std::io::stderr();
    let a = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = writeln!(stderr, "ringcast-guard: {e}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    match ringcast_guard::fan_out(a.subscribers, a.messages, a.payload) {
        Ok(frames) => {
            println!("{{\"subscribers\":{},\"messages\":{},\"frames\":{frames}}}", a.subscribers, a.messages);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(stderr, "ringcast-guard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Option<Args>, String> {
        parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn defaults_flags_and_help() {
        let a = parsed(&[]).ok().flatten().unwrap_or_else(|| panic!("defaults"));
        assert_eq!((a.subscribers, a.messages, a.payload), (1000, 200, 100));
        let a = parsed(&["--messages", "5", "--payload", "7"]).ok().flatten().unwrap_or_else(|| panic!("flags"));
        assert_eq!((a.subscribers, a.messages, a.payload), (1000, 5, 7));
        assert!(matches!(parsed(&["--help"]), Ok(None)));
    }

    #[test]
    fn bad_arguments_are_named() {
        for (args, says) in [
            (&["--subscribers"][..], "--subscribers needs a value"),
            (&["--messages", "x"][..], "--messages: 'x' is not a number"),
            (&["--payload", "-1"][..], "--payload: '-1' is not a number"),
            (&["--fast", "1"][..], "unknown argument '--fast'"),
        ] {
            match parsed(args) {
                Err(e) => assert_eq!(e, says),
                Ok(_) => panic!("{args:?} was accepted"),
            }
        }
    }
}
