//! The outcome of one scoreboard run (one JSON line) and the Markdown tables
//! `ringcast-bench scoreboard-report` renders from those lines.

use super::stats::{AgeSummary, Totals};
use serde::{Deserialize, Serialize};

/// One class of viewers (fast or slow) over the measurement window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClassReport {
    /// Counters summed over the class, for the window only.
    pub window: Totals,
    pub messages_per_viewer_per_s: f64,
    pub wire_bytes_per_viewer_per_s: f64,
    /// Wire bytes per `message` frame (frames of every kind included in the bytes).
    pub wire_bytes_per_message: f64,
    /// Age of the newest state held (see `stats`).
    pub staleness: AgeSummary,
    /// Viewers whose rebuilt state at the end equals the publisher's last state of their
    /// game (slow viewers read at full speed once publishing stops).
    pub converged: u64,
    /// Connections that ended during the whole run (not only the window), and rejoins.
    pub disconnects: u64,
    pub reconnects: u64,
}

/// What one `ringcast-bench scoreboard` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreOutcome {
    pub label: String,
    /// Viewers asked for deltas (`"delta": true`).
    pub delta: bool,
    pub viewers: usize,
    pub slow_viewers: usize,
    pub games: usize,
    /// Updates per second per game.
    pub rate: f64,
    pub warmup_s: f64,
    pub measure_s: f64,
    pub connected: usize,
    pub connect_failures: usize,
    pub connect_s: f64,
    /// `POST /v1/publish/batch` calls made (one per tick) and answered.
    pub batches: u64,
    pub batches_answered: u64,
    /// Calls answered with an error, or with an error for some item.
    pub batch_errors: u64,
    /// Longest the publisher was behind its schedule when it wrote a batch.
    pub publisher_max_lag_ms: f64,
    /// `viewers × rate`.
    pub offered_deliveries_per_s: f64,
    /// `message` frames received by viewers in the window.
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub fast: ClassReport,
    pub slow: ClassReport,
    /// Distinct frames the generator parsed, and frames it answered from its cache.
    pub frames_parsed: u64,
    pub frames_shared: u64,
    /// Busy share of the generator's core over the window.
    pub generator_cpu: f64,
    pub server_cpu: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub valid: bool,
    pub invalid_because: Vec<String>,
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// The Markdown tables of scoreboard outcomes (traffic, then staleness), and a line
/// comparing bytes per viewer with and without deltas when both runs are there.
#[must_use]
pub fn markdown(outcomes: &[ScoreOutcome]) -> String {
    let mut out = String::from(
        "| run | viewers (slow) | games × updates/s | deliveries/s (offered) | fast: B/viewer/s | fast: B/message | full / delta frames | slow: B/viewer/s | conflated gaps (offsets) | gen CPU | server CPU | valid |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let frames = |c: &ClassReport| (c.window.full_frames, c.window.delta_frames);
        let (ff, fd) = frames(&o.fast);
        let (sf, sd) = frames(&o.slow);
        out.push_str(&format!(
            "| {} | {} ({}) | {} × {} | {:.0} ({:.0}) | {:.0} | {:.0} | {} / {} | {:.0} | {} ({}) | {} | {} | {} |\n",
            o.label,
            o.connected,
            o.slow_viewers,
            o.games,
            o.rate,
            o.deliveries_per_s,
            o.offered_deliveries_per_s,
            o.fast.wire_bytes_per_viewer_per_s,
            o.fast.wire_bytes_per_message,
            ff + sf,
            fd + sd,
            o.slow.wire_bytes_per_viewer_per_s,
            o.slow.window.conflated_gaps,
            o.slow.window.conflated_offsets,
            pct(o.generator_cpu),
            o.server_cpu.map_or_else(|| "–".to_owned(), pct),
            if o.valid { "yes".to_owned() } else { format!("no: {}", o.invalid_because.join("; ")) },
        ));
    }
    out.push_str(
        "\n| run | fast staleness p50 / p99 / max ms | slow staleness p50 / p99 / max ms | messages/viewer/s fast / slow | disconnects fast / slow | converged fast / slow |\n\
         |---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let age = |a: &AgeSummary| format!("{:.0} / {:.0} / {:.0}", a.p50_ms, a.p99_ms, a.max_ms);
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} / {:.1} | {} / {} | {} of {} / {} of {} |\n",
            o.label,
            age(&o.fast.staleness),
            age(&o.slow.staleness),
            o.fast.messages_per_viewer_per_s,
            o.slow.messages_per_viewer_per_s,
            o.fast.disconnects,
            o.slow.disconnects,
            o.fast.converged,
            o.fast.window.viewers,
            o.slow.converged,
            o.slow.window.viewers,
        ));
    }
    let off = outcomes.iter().find(|o| !o.delta && o.fast.wire_bytes_per_viewer_per_s > 0.0);
    let on = outcomes.iter().find(|o| o.delta && o.fast.wire_bytes_per_viewer_per_s > 0.0);
    if let (Some(off), Some(on)) = (off, on) {
        let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.1}×", a / b) } else { "–".to_owned() };
        out.push_str(&format!(
            "\nWire bytes per viewer without / with deltas: fast {:.0} / {:.0} B/s ({} less), slow {:.0} / {:.0} B/s ({} less).\n",
            off.fast.wire_bytes_per_viewer_per_s,
            on.fast.wire_bytes_per_viewer_per_s,
            ratio(off.fast.wire_bytes_per_viewer_per_s, on.fast.wire_bytes_per_viewer_per_s),
            off.slow.wire_bytes_per_viewer_per_s,
            on.slow.wire_bytes_per_viewer_per_s,
            ratio(off.slow.wire_bytes_per_viewer_per_s, on.slow.wire_bytes_per_viewer_per_s),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(label: &str, delta: bool, fast_bps: f64) -> ScoreOutcome {
        ScoreOutcome {
            label: label.into(),
            delta,
            viewers: 100,
            slow_viewers: 1,
            games: 5,
            rate: 20.0,
            warmup_s: 1.0,
            measure_s: 2.0,
            connected: 100,
            connect_failures: 0,
            connect_s: 1.0,
            batches: 60,
            batches_answered: 60,
            batch_errors: 0,
            publisher_max_lag_ms: 1.0,
            offered_deliveries_per_s: 2000.0,
            deliveries: 3960,
            deliveries_per_s: 1980.0,
            fast: ClassReport { wire_bytes_per_viewer_per_s: fast_bps, ..ClassReport::default() },
            slow: ClassReport { wire_bytes_per_viewer_per_s: fast_bps / 10.0, ..ClassReport::default() },
            frames_parsed: 10,
            frames_shared: 3950,
            generator_cpu: 0.5,
            server_cpu: None,
            server_rss_kib: None,
            errors: 0,
            first_error: None,
            valid: !delta,
            invalid_because: if delta { vec!["1 errors".into()] } else { vec![] },
        }
    }

    #[test]
    fn one_row_per_run_in_both_tables_and_the_delta_ratio() {
        let md = markdown(&[outcome("delta off", false, 10_000.0), outcome("delta on", true, 2_500.0)]);
        assert_eq!(md.matches("| delta off |").count(), 2, "{md}");
        assert_eq!(md.matches("| delta on |").count(), 2, "{md}");
        assert!(md.contains("| 100 (1) | 5 × 20 | 1980 (2000) | 10000 |"), "{md}");
        assert!(md.contains("no: 1 errors"), "{md}");
        assert!(md.contains("fast 10000 / 2500 B/s (4.0× less), slow 1000 / 250 B/s (4.0× less)"), "{md}");
        let only_off = markdown(&[outcome("delta off", false, 10_000.0)]);
        assert!(!only_off.contains("without / with deltas"));
    }

    #[test]
    fn outcomes_round_trip_as_json_lines() {
        let o = outcome("delta off", false, 1.0);
        let line = serde_json::to_string(&o).unwrap_or_else(|e| panic!("{e}"));
        let back: ScoreOutcome = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.label, "delta off");
        assert_eq!(back.deliveries, 3960);
    }
}
