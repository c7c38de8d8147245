//! Markdown tables of every scenario, as `docs/scale.md` quotes them.

use crate::balance::BalanceRow;
use crate::cost::Figure;
use crate::fanout::FanoutRow;
use crate::hot::{HotBound, HotRow};
use crate::membership::ChangeOutcome;
use crate::storm::StormOutcome;
use std::fmt::Write;

fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn secs(ms: Option<u64>) -> String {
    ms.map_or_else(|| "not within the limit".into(), |m| format!("{:.2} s", m as f64 / 1000.0))
}

/// The cost model's figures.
#[must_use]
pub fn cost(figures: &[Figure]) -> String {
    let mut s = String::from("| Figure | Value | Source |\n|---|---|---|\n");
    for f in figures {
        let _ = writeln!(s, "| {} | {} {} | {} |", f.name, f.value, f.unit, f.source);
    }
    s
}

/// Scenario (a).
#[must_use]
pub fn balance(rows: &[BalanceRow]) -> String {
    let mut s = String::from(
        "| Nodes | Vnodes | Slots mean | Slots min–max | Slots max/mean | Load max/mean (equal channels) | Load max/mean (Zipf) | Nodes without a slot | Ring build ms |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {}–{} | {:.2} | {:.2} | {:.2} | {} | {:.1} |",
            r.nodes,
            r.vnodes,
            r.slots_mean,
            r.slots_min,
            r.slots_max,
            r.slots_max_over_mean,
            r.load_max_over_mean,
            r.zipf_load_max_over_mean,
            r.idle_nodes,
            r.build_ms
        );
    }
    s
}

/// Scenario (b).
#[must_use]
pub fn membership(rows: &[ChangeOutcome]) -> String {
    let mut s = String::from(
        "| Change | Throttle | Slots moved | Ideal | Handoffs | Claims | Rounds | Handoff ms | Converged after | Slot-seconds unserved | etcd writes | Peak writes/s | Watch events | Peak events/s | Violations |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |",
            r.label,
            r.spec.throttle,
            r.slots_moved,
            r.ideal_moved,
            r.handoffs,
            r.claims,
            r.rounds,
            r.handoff_ms,
            secs(r.converged_ms),
            r.vacant_slot_ms as f64 / 1000.0,
            r.etcd_writes,
            r.peak_writes_per_s,
            r.watch_events,
            r.peak_watch_events_per_s,
            r.violations.len()
        );
    }
    s
}

/// Scenario (c).
#[must_use]
pub fn storm(rows: &[StormOutcome]) -> String {
    let mut s = String::from(
        "| Run | Handshakes/s per node | 50 % back | 99 % back | All back | Refused (429) | Peak reconnects/s | Peak interest registrations/s | Peak presence messages/s at owners (peak of joins alone) | Presence events | Peak events/s | Pushes to clients | Peak pushes/s | Node-to-node presence frames | Leaves for users who came back |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {:.1} % |",
            r.label,
            r.spec.handshakes_per_second,
            secs(r.back_50_ms),
            secs(r.back_99_ms),
            secs(r.back_all_ms),
            si(r.refused_total),
            si(r.peak_reconnects_per_s),
            si(r.peak_interest_per_s),
            si(r.peak_presence_messages_per_s),
            si(r.peak_presence_joins_per_s),
            si(r.presence_events_total),
            si(r.peak_presence_events_per_s),
            si(r.pushes_total),
            si(r.peak_pushes_per_s),
            si(r.peer_frames_total),
            r.spurious_leaves_fraction * 100.0
        );
    }
    s
}

/// Scenario (d).
#[must_use]
pub fn fanout(rows: &[FanoutRow]) -> String {
    let mut s = String::from(
        "| Nodes | Owner frames per publish (interest) | Naive frames per publish | Viewers on the busiest node | Owner link limit, publishes/s | Owner CPU limit, publishes/s | Busiest node's local push limit, publishes/s | Naive owner link limit, publishes/s | Viewer memory on the busiest node |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} GiB |",
            r.nodes,
            r.owner_frames_per_publish,
            si(r.naive_frames_per_publish as f64),
            si(r.max_local_viewers as f64),
            si(r.link_limit_publishes_per_s),
            si(r.cpu_limit_publishes_per_s),
            si(r.local_cpu_limit_publishes_per_s),
            si(r.naive_link_limit_publishes_per_s),
            r.max_node_memory_gib
        );
    }
    s
}

/// Scenario (e).
#[must_use]
pub fn hot(rows: &[HotRow], bounds: &[HotBound]) -> String {
    let mut s =
        String::from("| Variant | History | ns per append (best of 3) | Appends/s, one core |\n|---|---|---|---|\n");
    for r in rows {
        let _ =
            writeln!(s, "| {} | {} | {:.0} | {} |", r.variant, r.history, r.best_ns_per_append, si(r.appends_per_s));
    }
    s.push_str(
        "\n| Interested nodes | Publishes/s, unbatched publish and ack | Publishes/s, batched publish and ack |\n|---|---|---|\n",
    );
    for b in bounds {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            b.interested_nodes,
            si(b.publishes_per_s_unbatched),
            si(b.publishes_per_s_batched)
        );
    }
    s
}
