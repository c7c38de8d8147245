//! `ringcast-guard [--subscribers N] [--messages N] [--payload BYTES]`: runs the guard's
//! fan-out ([`ringcast_guard::fan_out`]) once and prints what it did as one JSON line.
//! `scripts/bench --guard` runs it under callgrind.

use anyhow::{bail, Context as _};

const USAGE: &str =
    "usage: ringcast-guard [--subscribers N] [--messages N] [--payload BYTES] (defaults 1000, 200, 100)";

fn main() -> anyhow::Result<()> {
    let (mut subscribers, mut messages, mut payload) = (1000usize, 200u64, 100usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            return Ok(());
        }
        let value = args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || value.parse::<u64>().with_context(|| format!("{flag}: '{value}' is not a number\n{USAGE}"));
        match flag.as_str() {
            "--subscribers" => subscribers = usize::try_from(number()?)?,
            "--messages" => messages = number()?,
            "--payload" => payload = usize::try_from(number()?)?,
            _ => bail!("unknown argument '{flag}'\n{USAGE}"),
        }
    }
    let frames = ringcast_guard::fan_out(subscribers, messages, payload)?;
    println!("{{\"subscribers\":{subscribers},\"messages\":{messages},\"frames\":{frames}}}");
    Ok(())
}
