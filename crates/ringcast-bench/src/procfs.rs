//! Process accounting from `/proc`: CPU time (all threads) and resident memory, and
//! the time the hypervisor took from each CPU.

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
    parse_status_field(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?, key)
}

fn parse_status_field(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Times the threads of `pid` (`self` for this process) gave up their CPU to wait, in
/// all: the `voluntary_ctxt_switches` of every `/proc/PID/task/TID/status`. A reader
/// that drains its sockets faster than data comes sleeps and is woken again, and on
/// loopback the writer's `send` pays for that wake-up.
#[must_use]
pub fn voluntary_switches(pid: &str) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = 0;
    // A thread that ended between the listing and the read is skipped.
    for status in tasks.flatten().filter_map(|t| fs::read_to_string(t.path().join("status")).ok()) {
        sum += parse_status_field(&status, "voluntary_ctxt_switches:")?;
    }
    Some(sum)
}

/// Seconds the hypervisor ran something else while each CPU wanted to run (the `steal`
/// column of `/proc/stat`'s `cpuN` lines), in CPU order; empty where the kernel does not
/// count it.
#[must_use]
pub fn steal_seconds_by_cpu() -> Vec<f64> {
    fs::read_to_string("/proc/stat").map(|s| parse_steal(&s)).unwrap_or_default()
}

fn parse_steal(stat: &str) -> Vec<f64> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        // cpuN user nice system idle iowait irq softirq steal ...
        .map_while(|l| Some(l.split_whitespace().nth(8)?.parse::<u64>().ok()? as f64 / CLOCK_TICKS_PER_SECOND))
        .collect()
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
    fn steal_is_read_per_cpu_and_not_from_the_total_line() {
        let stat = "cpu  99822 0 6614 70226 436 0 472 3307 0 0\n\
                    cpu0 49939 0 3286 35170 270 0 300 1327 0 0\n\
                    cpu1 49882 0 3327 35056 166 0 171 1980 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_steal(stat), vec![13.27, 19.8]);
        assert_eq!(parse_steal("cpu0 1 2 3\n"), Vec::<f64>::new());
    }

    #[test]
    fn reads_this_process() {
        assert!(cpu_seconds("self").is_some());
        assert!(rss_kib("self").is_some_and(|k| k > 0));
        assert!(alive("self"));
        assert!(open_files_limit().is_some_and(|n| n > 0));
        assert!(!steal_seconds_by_cpu().is_empty());
        assert!(voluntary_switches("self").is_some());
    }

    #[test]
    fn a_status_field_is_read_by_its_whole_key() {
        let status = "Name:\tx\nnonvoluntary_ctxt_switches:\t7\nvoluntary_ctxt_switches:\t42\n";
        assert_eq!(parse_status_field(status, "voluntary_ctxt_switches:"), Some(42));
        assert_eq!(parse_status_field(status, "nonvoluntary_ctxt_switches:"), Some(7));
        assert_eq!(parse_status_field(status, "VmRSS:"), None);
    }
}
