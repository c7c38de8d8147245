//! Process accounting from `/proc`: CPU time (all threads) and resident memory.

use std::fs;

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture this runs on.
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds of `pid` (`self` for this process).
#[must_use]
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

fn status_field(pid: &str, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Resident set size of `pid` in KiB.
#[must_use]
pub fn rss_kib(pid: &str) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Whether `pid` is still running.
#[must_use]
pub fn alive(pid: &str) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// This process's soft limit on open files (`None` when unlimited or unreadable).
#[must_use]
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(cpu_seconds("self").is_some());
        assert!(rss_kib("self").is_some_and(|k| k > 0));
        assert!(alive("self"));
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
