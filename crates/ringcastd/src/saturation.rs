//! Whether the node is saturated, which decides whether producers write messages straight
//! to client sockets ([`crate::outbox`], "Direct writes").
//!
//! A direct write spares the session a wake-up, but it writes one message per system
//! call. Under overload the session path is cheaper per delivery when it batches: a
//! session that waited for its turn writes everything queued meanwhile in one call. So a
//! monitor thread judges every [`WINDOW`]:
//! - writing directly, the node becomes saturated when the process used at least
//!   [`SATURATED`] % of its worker threads' cores over [`ENTER_AFTER`] windows in a row;
//! - saturated (every write left to the sessions), it stays so while the sessions' writes
//!   carry at least [`BATCHING_PAYS`] / 10 messages each on average (batching is what
//!   makes the session path cheaper) and the process is still at least [`RELAXED`] %
//!   busy. A session's write costs about as much as one and a half direct writes (the
//!   wake-up, `select!` and tungstenite's copy come on top of the system call), so
//!   fewer messages per write than that make the direct path the cheaper one however
//!   busy the node is (docs/benchmarks.md, "Direct writes").
//!
//! A large fan-out's burst of direct writes (15,000 take about 170 ms here) fills at most
//! one whole window, so one burst does not count as overload. A thread, not a task: it
//! must not wait for a turn on the workers it judges. `ringcast_saturated` (0 or 1) shows
//! the state.

use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the load is judged, and over what.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Busy share of the workers' cores, in percent, from which direct writes stop.
pub const SATURATED: u64 = 90;
/// Below this busy share, in percent, direct writes resume.
pub const RELAXED: u64 = 75;
/// Messages per session write, in tenths, from which the sessions' batching pays.
pub const BATCHING_PAYS: u64 = 30;
/// Busy windows in a row that make the node saturated.
pub const ENTER_AFTER: u8 = 2;

/// The monitor's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub saturated: bool,
    /// Busy windows in a row so far (while not saturated).
    busy_windows: u8,
}

/// One window's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub wall: Duration,
    /// CPU time of the whole process.
    pub cpu: Duration,
    /// Worker threads (cores they may use).
    pub workers: u64,
    /// Messages the sessions wrote (deliveries that were not direct writes).
    pub queued: u64,
    /// The sessions' writes.
    pub batches: u64,
}

/// The state after `w` (see the module docs).
#[must_use]
pub fn next(state: State, w: &Window) -> State {
    let capacity = w.wall.as_nanos() * u128::from(w.workers.max(1));
    let busy_at_least = |pct: u64| capacity > 0 && w.cpu.as_nanos() * 100 >= capacity * u128::from(pct);
    if !state.saturated {
        let busy_windows = if busy_at_least(SATURATED) { state.busy_windows.saturating_add(1) } else { 0 };
        return if busy_windows >= ENTER_AFTER {
            State { saturated: true, busy_windows: 0 }
        } else {
            State { saturated: false, busy_windows }
        };
    }
    let batching = w.batches > 0 && w.queued * 10 >= w.batches * BATCHING_PAYS;
    State { saturated: batching && busy_at_least(RELAXED), busy_windows: 0 }
}

fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// Judges the node every [`WINDOW`] on a thread of its own, setting
/// `metrics.saturated`, until `shutdown`.
pub fn spawn_monitor(metrics: Arc<Metrics>, workers: usize, shutdown: CancellationToken) -> std::io::Result<()> {
    std::thread::Builder::new().name("ringcast-load".into()).spawn(move || {
        let workers = u64::try_from(workers).unwrap_or(1);
        // (deliveries, direct writes, all writes)
        let counts = |m: &Metrics| {
            (
                m.deliveries.load(Ordering::Relaxed),
                m.client_direct_writes.load(Ordering::Relaxed),
                m.client_writes.load(Ordering::Relaxed),
            )
        };
        let (mut at, mut cpu, mut seen) = (Instant::now(), process_cpu(), counts(&metrics));
        let mut state = State::default();
        while !shutdown.is_cancelled() {
            std::thread::sleep(WINDOW);
            let (now, cpu_now, seen_now) = (Instant::now(), process_cpu(), counts(&metrics));
            let (deliveries, direct, writes) = (
                seen_now.0.saturating_sub(seen.0),
                seen_now.1.saturating_sub(seen.1),
                seen_now.2.saturating_sub(seen.2),
            );
            let w = Window {
                wall: now - at,
                cpu: cpu_now.saturating_sub(cpu),
                workers,
                queued: deliveries.saturating_sub(direct),
                batches: writes.saturating_sub(direct),
            };
            state = next(state, &w);
            metrics.saturated.store(state.saturated, Ordering::Relaxed);
            (at, cpu, seen) = (now, cpu_now, seen_now);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(busy_pct: u64, queued: u64, batches: u64) -> Window {
        Window { wall: WINDOW, cpu: WINDOW * u32::try_from(busy_pct).unwrap_or(0) / 100, workers: 1, queued, batches }
    }

    /// The state after `windows`, from not saturated.
    fn after(windows: &[Window]) -> State {
        windows.iter().fold(State::default(), next)
    }

    const SATURATED_STATE: State = State { saturated: true, busy_windows: 0 };

    #[test]
    fn direct_writes_stop_after_two_windows_of_ninety_percent_busy() {
        assert!(!after(&[window(100, 0, 0)]).saturated, "one window is a burst");
        assert!(after(&[window(90, 0, 0), window(90, 0, 0)]).saturated);
        assert!(after(&[window(50, 0, 0), window(100, 5, 5), window(95, 5, 5)]).saturated);
        assert!(!after(&[window(100, 0, 0), window(89, 0, 0)]).saturated);
        assert!(!after(&[window(100, 0, 0), window(50, 0, 0), window(100, 0, 0)]).saturated, "not in a row");
        // Two workers: 90 % of one core is 45 % of two.
        let two = Window { workers: 2, ..window(90, 0, 0) };
        assert!(!after(&[two, two]).saturated);
        let empty = Window { wall: Duration::ZERO, ..window(90, 0, 0) };
        assert!(!after(&[empty, empty]).saturated);
    }

    #[test]
    fn saturated_stays_while_batching_pays_and_the_node_is_busy() {
        let stays = |w: Window| next(SATURATED_STATE, &w).saturated;
        // Ten messages per write at full load: the sessions' batching is the cheaper path.
        assert!(stays(window(100, 100_000, 10_000)));
        assert!(stays(window(75, 30, 10)), "3 messages per write, 75 % busy");
        // Fewer than three messages per write: batching buys too little, however busy.
        assert!(!stays(window(100, 100_000, 100_000)));
        assert!(!stays(window(100, 29, 10)));
        // The load went away.
        assert!(!stays(window(74, 100_000, 10_000)));
        // Nothing written at all (a connection storm, say).
        assert!(!stays(window(100, 0, 0)));
        // Once out, it takes two busy windows again.
        let out = next(SATURATED_STATE, &window(74, 0, 0));
        assert!(!next(out, &window(100, 0, 0)).saturated);
    }

    #[test]
    fn the_process_cpu_clock_advances_with_work() {
        // Spin until 10 ms of CPU time are counted (however slowly a busy machine gives
        // them), within 10 s.
        let (before, deadline) = (process_cpu(), Instant::now() + Duration::from_secs(10));
        let mut x = 0u64;
        while process_cpu().saturating_sub(before) < Duration::from_millis(10) && Instant::now() < deadline {
            x = x.wrapping_add(1);
        }
        assert!(x > 0 && process_cpu().saturating_sub(before) >= Duration::from_millis(10));
    }
}
