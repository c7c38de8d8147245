//! Process accounting from `/proc`: CPU time (all threads) and resident memory.

use std::fs;

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture this runs on.
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds of `pid` (`self` for this process), all threads: in user space, and in
/// the kernel on its behalf.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

impl CpuTimes {
    #[must_use]
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, o: CpuTimes) -> CpuTimes {
        CpuTimes { user: self.user + o.user, system: self.system + o.system }
    }
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, o: CpuTimes) -> CpuTimes {
        CpuTimes { user: self.user - o.user, system: self.system - o.system }
    }
}

/// `pid`'s user and system CPU time (`utime` and `stime` of `/proc/PID/stat`).
#[must_use]
pub fn cpu_times(pid: &str) -> Option<CpuTimes> {
    parse_cpu_times(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| Some(f.get(i)?.parse::<u64>().ok()? as f64 / CLOCK_TICKS_PER_SECOND);
    Some(CpuTimes { user: ticks(11)?, system: ticks(12)? })
}

/// User plus system CPU seconds of `pid` (`self` for this process).
#[must_use]
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    cpu_times(pid).map(CpuTimes::total)
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
    fn user_and_system_time_are_read_after_a_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_times(stat), Some(CpuTimes { user: 2.5, system: 0.75 }));
        assert_eq!(parse_cpu_times("42 (short) S 1 2"), None);
        assert_eq!(parse_cpu_times("no name"), None);
    }

    #[test]
    fn reads_this_process() {
        assert!(cpu_seconds("self").is_some());
        assert!(rss_kib("self").is_some_and(|k| k > 0));
        assert!(alive("self"));
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
