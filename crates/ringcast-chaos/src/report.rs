//! The per-scenario summary: a table for people, JSON for scripts, and the verdict.
//! A scenario fails when an invariant it is held to is above 0, or when a final history
//! read failed (the run could not check what it claims to check).

use crate::checker::{Findings, INVARIANTS};
use serde::Serialize;
use std::fmt::Write as _;

/// One scenario's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub nodes: usize,
    pub fault_seconds: u64,
    pub durable_enforced: bool,
    /// Invariants the scenario is not held to.
    pub exempt: Vec<String>,
    pub findings: Findings,
    /// A setup or nemesis error that cut the run short.
    pub error: Option<String>,
    pub notes: Vec<String>,
    pub history: String,
}

impl Report {
    /// Whether the scenario passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.findings.final_read_failures == 0
            && INVARIANTS.iter().all(|(id, _)| self.exempt.iter().any(|e| e == id) || self.findings.count(id) == 0)
    }

    /// The human-readable summary.
    #[must_use]
    pub fn table(&self) -> String {
        let f = &self.findings;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== {} ({} nodes, {} s of faults; durable namespace {})",
            self.scenario,
            self.nodes,
            self.fault_seconds,
            if self.durable_enforced { "durable = true" } else { "NOT durable (--durable off)" }
        );
        let _ = writeln!(s, "{:<4} {:<62} {:>7}  held to", "ID", "invariant", "count");
        for (id, name) in INVARIANTS {
            let held = if self.exempt.iter().any(|e| e == id) { "no (exempt)" } else { "yes" };
            let mark = if f.count(id) > 0 && held == "yes" { "  <-- VIOLATED" } else { "" };
            let _ = writeln!(s, "{id:<4} {name:<62} {:>7}  {held}{mark}", f.count(id));
        }
        let rate = f.publish_success_rate().map_or("n/a".to_owned(), |r| format!("{:.2}%", r * 100.0));
        let _ = writeln!(s, "publishes: {} ok, {} fail, {} info; success {rate}", f.ops_ok, f.ops_fail, f.ops_info);
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let _ = writeln!(
            s,
            "failover ms (fault -> first ack on a channel the node owned): n={} p50={} p99={} max={} never={}",
            f.failover.n,
            ms(f.failover.p50_ms),
            ms(f.failover.p99_ms),
            ms(f.failover.max_ms),
            f.failover_never
        );
        let _ = writeln!(
            s,
            "client resume ms (disconnect -> subscribed): n={} p50={} p99={} max={}",
            f.resume.n,
            ms(f.resume.p50_ms),
            ms(f.resume.p99_ms),
            ms(f.resume.max_ms)
        );
        let _ = writeln!(
            s,
            "deliveries {}, gap pushes {}, recovered:false {}, final reads {} ({} failed)",
            f.deliveries, f.gaps, f.recovered_false, f.final_reads, f.final_read_failures
        );
        if f.resequenced_best_effort > 0 {
            let _ = writeln!(
                s,
                "best-effort keys sequenced again after an owner loss (new epoch, no dedup window): {}",
                f.resequenced_best_effort
            );
        }
        for (id, ex) in &f.examples {
            for e in ex.iter().take(3) {
                let _ = writeln!(s, "  {id} e.g. {e}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "ERROR: {e}");
        }
        let _ = writeln!(s, "history: {}", self.history);
        let _ = writeln!(s, "verdict: {}", if self.passed() { "PASS" } else { "FAIL" });
        s
    }
}
