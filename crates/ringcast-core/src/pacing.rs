//! How far apart a flusher starts its turns: the write pacing of `ringcastd`'s direct
//! writes (its `outbox` module, "Coalesced writes").
//!
//! A flusher writes, in one system call per connection, everything queued for its
//! connections since its last turn. Started as soon as anything is queued, it is
//! work-conserving: an idle node writes each message at once, and a loaded one batches
//! only as much as its own slowness lets pile up. Near saturation that is the worst of
//! both: every spare cycle goes to small writes, the core stays saturated, and the
//! queues (so the latency) grow. Spacing the turns makes each write carry more.
//!
//! Two settings do it:
//! - `min` (`limits.min_write_interval`): turns always start at least this far apart.
//! - `busy` (`limits.busy_write_interval`): turns start at least this far apart while
//!   the flusher is *busy*: it had work at least [`BUSY_SHARE`] of the time over its last
//!   few turns ([`Load`]). Below that it writes at once, so a node that is not loaded
//!   never delays a message. This is the rule of Linux's TCP autocorking (small writes
//!   are held back only while earlier ones still wait in the device queue) and of
//!   NAPI's switch from interrupts to polling under load: batch when the load itself
//!   says batching pays.
//!
//! A flusher that had no turn for the interval writes at once either way (the interval
//! is counted from the previous turn's start).

use std::time::Duration;

/// The share of time with work from which a flusher is busy: three quarters, so a
/// flusher that is idle a quarter of the time or more never waits.
pub const BUSY_SHARE: (u32, u32) = (3, 4);

/// Weight of the newest turn in [`Load`]'s averages (1/`SMOOTHING`): one long turn
/// between idle periods (a single large fan-out) does not make the flusher busy; a few
/// turns in a row with no wait between them do (four, from working half of the time).
pub const SMOOTHING: u32 = 4;

/// A flusher's write pacing: `limits.min_write_interval` and
/// `limits.busy_write_interval`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pacing {
    /// Least time from the start of one turn to the start of the next, always.
    pub min: Duration,
    /// Least time from the start of one turn to the start of the next while the flusher
    /// is busy ([`Load::busy`]); when shorter than `min`, `min` applies
    /// ([`Pacing::interval`]).
    pub busy: Duration,
}

impl Pacing {
    /// Whether no interval is set: the turns are never spaced.
    #[must_use]
    pub fn is_off(&self) -> bool {
        self.min.is_zero() && self.busy.is_zero()
    }

    /// The least time from the start of the last turn to the start of the next, with
    /// the flusher's `load`.
    #[must_use]
    pub fn interval(&self, load: &Load) -> Duration {
        if load.busy() {
            self.min.max(self.busy)
        } else {
            self.min
        }
    }
}

/// How busy a flusher is: moving averages of how long its turns take and of how long it
/// waits for work between them (the time it is held back by its pacing is neither).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Average turn, in nanoseconds.
    working: u64,
    /// Average wait for work between turns, in nanoseconds.
    waiting: u64,
    /// A turn was recorded.
    recorded: bool,
}

impl Load {
    /// Records a turn that took `working`, begun after waiting `waiting` for work since
    /// the end of the previous turn (zero when work was already queued).
    pub fn record(&mut self, working: Duration, waiting: Duration) {
        self.working = smooth(self.working, working);
        self.waiting = smooth(self.waiting, waiting);
        self.recorded = true;
    }

    /// Whether the flusher had work at least [`BUSY_SHARE`] of the time lately. Before
    /// its first recorded turn it is not; one that never waited for work is, however
    /// short its turns.
    #[must_use]
    pub fn busy(&self) -> bool {
        let (num, den) = BUSY_SHARE;
        let (working, total) = (u128::from(self.working), u128::from(self.working) + u128::from(self.waiting));
        // working / total >= num / den, without division.
        self.recorded && working * u128::from(den) >= total * u128::from(num)
    }
}

fn smooth(average: u64, sample: Duration) -> u64 {
    let sample = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
    let k = u64::from(SMOOTHING);
    average - average / k + sample / k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn after(turns: &[(u64, u64)]) -> Load {
        let mut load = Load::default();
        for &(working, waiting) in turns {
            load.record(Duration::from_millis(working), Duration::from_millis(waiting));
        }
        load
    }

    #[test]
    fn a_new_flusher_is_not_busy() {
        assert!(!Load::default().busy());
        let p = Pacing { min: Duration::ZERO, busy: 10 * MS };
        assert_eq!(p.interval(&Load::default()), Duration::ZERO);
    }

    #[test]
    fn four_turns_without_a_wait_make_a_half_busy_flusher_busy() {
        let mut load = after(&[(5, 5); 16]);
        assert!(!load.busy());
        for _ in 0..3 {
            load.record(5 * MS, Duration::ZERO);
        }
        assert!(!load.busy(), "three are not enough");
        load.record(5 * MS, Duration::ZERO);
        assert!(load.busy());
    }

    #[test]
    fn back_to_back_turns_make_it_busy_and_idle_time_ends_it() {
        let p = Pacing { min: Duration::ZERO, busy: 10 * MS };
        // Saturated: every turn finds work already queued.
        let mut load = after(&[(5, 0); 4]);
        assert!(load.busy());
        assert_eq!(p.interval(&load), 10 * MS);
        // The load falls: the flusher waits as long as it works, so it is not busy.
        for _ in 0..8 {
            load.record(5 * MS, 5 * MS);
        }
        assert!(!load.busy());
        assert_eq!(p.interval(&load), Duration::ZERO);
    }

    #[test]
    fn a_flusher_that_never_waits_is_busy_however_short_its_turns() {
        assert!(after(&[(0, 0)]).busy());
        assert!(!after(&[(0, 1)]).busy());
    }

    #[test]
    fn the_threshold_is_three_quarters_of_the_time() {
        assert!(after(&[(76, 24); 16]).busy(), "76 % of the time is busy");
        assert!(!after(&[(74, 26); 16]).busy(), "74 % is not");
    }

    #[test]
    fn one_large_fan_out_between_idle_periods_is_not_busy() {
        // A burst to 15,000 subscribers: a 250 ms turn once a second.
        let load = after(&[(250, 750), (250, 750), (250, 750), (250, 750)]);
        assert!(!load.busy());
        // A single long turn after a quiet time does not tip it either.
        let mut quiet = after(&[(1, 100); 8]);
        quiet.record(250 * MS, Duration::ZERO);
        assert!(!quiet.busy());
    }

    #[test]
    fn min_always_applies_and_busy_never_lowers_it() {
        let p = Pacing { min: 20 * MS, busy: 10 * MS };
        assert_eq!(p.interval(&Load::default()), 20 * MS);
        assert_eq!(p.interval(&after(&[(5, 0); 4])), 20 * MS);
        let p = Pacing { min: 5 * MS, busy: 10 * MS };
        assert_eq!(p.interval(&Load::default()), 5 * MS);
        assert_eq!(p.interval(&after(&[(5, 0); 4])), 10 * MS);
        assert!(Pacing::default().is_off());
        assert!(!p.is_off());
    }

    proptest! {
        /// Whatever the history, the averages stay within the samples' range, so
        /// nothing overflows and a flusher that never waits is busy.
        #[test]
        fn averages_stay_within_the_samples(turns in proptest::collection::vec((0u64..u64::MAX / 2, 0u64..u64::MAX / 2), 1..64)) {
            let mut load = Load::default();
            for &(w, i) in &turns {
                load.record(Duration::from_nanos(w), Duration::from_nanos(i));
            }
            let max_w = turns.iter().map(|t| t.0).max().unwrap_or(0);
            let max_i = turns.iter().map(|t| t.1).max().unwrap_or(0);
            prop_assert!(load.working <= max_w && load.waiting <= max_i);
            let mut never_waits = Load::default();
            for &(w, _) in &turns {
                never_waits.record(Duration::from_nanos(w), Duration::ZERO);
            }
            prop_assert!(never_waits.busy());
        }
    }
}
