//! Counting for the scoreboard run: per-viewer counters, their totals per class (fast
//! and slow viewers) over the measurement window, and staleness.
//!
//! **Staleness** of a viewer at an instant is the age of the newest game state it holds:
//! `now - ts` of that state, where `ts` is the update's scheduled publish time. A sampler
//! reads every viewer's held `ts` periodically (at a period that is not a multiple of
//! the publish period, so samples fall at every phase of the tick) and records the ages
//! per class. A fast viewer's staleness is its delivery latency plus the time since the
//! last tick; a slow viewer's is how far behind its reading keeps it.

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest age the histograms hold, in microseconds (10 minutes).
const MAX_AGE_US: u64 = 600_000_000;

/// One viewer's counters (cumulative since it connected).
#[derive(Debug, Clone, Default)]
pub struct ViewerRec {
    pub slow: bool,
    /// `ts` of the newest state it holds (0 before the snapshot).
    pub held_ts_us: u64,
    pub held_seq: u64,
    pub messages: u64,
    pub full_frames: u64,
    pub delta_frames: u64,
    /// Bytes read from its socket (WebSocket frames as they came off the wire).
    pub wire_bytes: u64,
    pub conflated_gaps: u64,
    /// Offsets announced as conflated (`to - from + 1` summed).
    pub conflated_offsets: u64,
    /// Gaps for any other reason (losses).
    pub other_gaps: u64,
    /// Times the connection ended (the viewer then reconnects, as a client would).
    pub disconnects: u64,
    /// Reconnects that succeeded.
    pub reconnects: u64,
}

/// Sums of [`ViewerRec`] counters over one class of viewers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub viewers: u64,
    pub messages: u64,
    pub full_frames: u64,
    pub delta_frames: u64,
    pub wire_bytes: u64,
    pub conflated_gaps: u64,
    pub conflated_offsets: u64,
    pub other_gaps: u64,
    pub disconnects: u64,
    pub reconnects: u64,
}

impl Totals {
    /// The totals of the viewers whose `slow` is `slow`.
    #[must_use]
    pub fn of(recs: &[ViewerRec], slow: bool) -> Totals {
        recs.iter().filter(|r| r.slow == slow).fold(Totals::default(), |mut t, r| {
            t.viewers += 1;
            t.messages += r.messages;
            t.full_frames += r.full_frames;
            t.delta_frames += r.delta_frames;
            t.wire_bytes += r.wire_bytes;
            t.conflated_gaps += r.conflated_gaps;
            t.conflated_offsets += r.conflated_offsets;
            t.other_gaps += r.other_gaps;
            t.disconnects += r.disconnects;
            t.reconnects += r.reconnects;
            t
        })
    }

    /// What happened between `before` and `self` (viewers as in `self`).
    #[must_use]
    pub fn since(&self, before: &Totals) -> Totals {
        Totals {
            viewers: self.viewers,
            messages: self.messages.saturating_sub(before.messages),
            full_frames: self.full_frames.saturating_sub(before.full_frames),
            delta_frames: self.delta_frames.saturating_sub(before.delta_frames),
            wire_bytes: self.wire_bytes.saturating_sub(before.wire_bytes),
            conflated_gaps: self.conflated_gaps.saturating_sub(before.conflated_gaps),
            conflated_offsets: self.conflated_offsets.saturating_sub(before.conflated_offsets),
            other_gaps: self.other_gaps.saturating_sub(before.other_gaps),
            disconnects: self.disconnects.saturating_sub(before.disconnects),
            reconnects: self.reconnects.saturating_sub(before.reconnects),
        }
    }
}

/// Staleness samples of one class.
#[derive(Debug, Clone)]
pub struct Staleness {
    ages_us: Histogram<u64>,
}

/// Summary of staleness samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AgeSummary {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Staleness {
    pub fn new() -> anyhow::Result<Staleness> {
        Ok(Staleness { ages_us: Histogram::new_with_bounds(1, MAX_AGE_US, 3).context("histogram bounds")? })
    }

    pub fn record(&mut self, age_us: u64) {
        // Clamped into the histogram's range, so it cannot fail.
        let _ = self.ages_us.record(age_us.clamp(1, MAX_AGE_US));
    }

    #[must_use]
    pub fn summary(&self) -> AgeSummary {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.ages_us.is_empty() {
            return AgeSummary::default();
        }
        AgeSummary {
            samples: self.ages_us.len(),
            p50_ms: ms(self.ages_us.value_at_quantile(0.5)),
            p99_ms: ms(self.ages_us.value_at_quantile(0.99)),
            max_ms: ms(self.ages_us.max()),
        }
    }
}

/// One sampling pass: the age at `now_us` of what every viewer holds, into `fast` or
/// `slow`. A viewer that lost its connection still holds (and shows) its last state until
/// it has reconnected, so it is sampled too; one that holds nothing yet is skipped.
pub fn sample(recs: &[ViewerRec], now_us: u64, fast: &mut Staleness, slow: &mut Staleness) {
    for r in recs.iter().filter(|r| r.held_ts_us > 0) {
        let age = now_us.saturating_sub(r.held_ts_us);
        if r.slow {
            slow.record(age);
        } else {
            fast.record(age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(slow: bool, held_ts_us: u64) -> ViewerRec {
        ViewerRec { slow, held_ts_us, ..ViewerRec::default() }
    }

    #[test]
    fn samples_go_to_their_class_and_summarise_in_ms() {
        let mut recs: Vec<ViewerRec> = (1..=100).map(|i| rec(false, 1_000_000 - i * 1000)).collect();
        recs.push(rec(true, 1)); // about a second behind
        recs.push(rec(true, 0)); // holds nothing yet
        recs.push(ViewerRec { disconnects: 1, ..rec(true, 500_000) }); // still shows its state
        let new = || Staleness::new().unwrap_or_else(|e| panic!("{e}"));
        let (mut fast, mut slow) = (new(), new());
        sample(&recs, 1_000_000, &mut fast, &mut slow);
        let f = fast.summary();
        assert_eq!(f.samples, 100);
        assert!((f.p50_ms - 50.0).abs() < 0.1, "{f:?}");
        assert!((f.p99_ms - 99.0).abs() < 0.1, "{f:?}");
        assert!((f.max_ms - 100.0).abs() < 0.1, "{f:?}");
        let s = slow.summary();
        assert_eq!(s.samples, 2);
        assert!((s.max_ms - 999.999).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn an_empty_class_summarises_to_zero_and_ages_are_clamped() {
        let mut s = Staleness::new().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.summary(), AgeSummary::default());
        s.record(0);
        s.record(u64::MAX);
        let sum = s.summary();
        assert_eq!(sum.samples, 2);
        assert!(sum.max_ms >= 599_000.0);
    }

    #[test]
    fn totals_per_class_and_over_a_window() {
        let mut recs = vec![
            ViewerRec { messages: 10, wire_bytes: 1000, full_frames: 2, delta_frames: 8, ..rec(false, 1) },
            ViewerRec { messages: 5, wire_bytes: 500, conflated_gaps: 2, conflated_offsets: 9, ..rec(true, 1) },
        ];
        let before = (Totals::of(&recs, false), Totals::of(&recs, true));
        recs[0].messages += 4;
        recs[0].wire_bytes += 400;
        recs[1].conflated_gaps += 1;
        recs[1].disconnects += 1;
        let fast = Totals::of(&recs, false).since(&before.0);
        let slow = Totals::of(&recs, true).since(&before.1);
        assert_eq!((fast.viewers, fast.messages, fast.wire_bytes, fast.full_frames), (1, 4, 400, 0));
        assert_eq!((slow.viewers, slow.conflated_gaps, slow.disconnects, slow.messages), (1, 1, 1, 0));
    }
}
