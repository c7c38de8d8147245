//! Scenario (e): the hot-channel limit. A channel's publishes are sequenced by its one
//! owner, under the channel's lock, so one channel can never go faster than one core of
//! one node appends to its [`ChannelLog`].
//!
//! This measures that ceiling on the real log, single-threaded, on this machine: `append`
//! of a pre-encoded 100 B frame (`Bytes`, as ringcastd stores it) with the default
//! history (300 messages, 60 s), with and without an idempotency key per publish, and the
//! durable path (`append_pending` then `commit_to`). It is the sequencing ceiling before
//! any network or encoding cost. The realistic bound adds the measured per-message server
//! costs of [`crate::cost`]: reading the publish and writing its ack (an unbatched
//! delivery each) and one batched `Deliver` per interested node.
//!
//! The only wall-clock scenario: figures vary with the machine's load (the run records
//! the best of three repetitions).

use crate::cost::{CPU_PER_DELIVERY_BATCHED_US, CPU_PER_DELIVERY_UNBATCHED_US};
use bytes::Bytes;
use ringcast_core::dedup::DedupPolicy;
use ringcast_core::log::HistoryPolicy;
use ringcast_core::{ChannelLog, Epoch, Millis};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One measured variant.
#[derive(Debug, Clone, Serialize)]
pub struct HotRow {
    pub variant: String,
    pub history: usize,
    pub appends: u64,
    pub best_ns_per_append: f64,
    pub appends_per_s: f64,
}

/// What an owner can sequence once I/O is priced in.
#[derive(Debug, Clone, Serialize)]
pub struct HotBound {
    pub interested_nodes: u64,
    /// Publish read and ack write at the unbatched price (many publishers, each
    /// publishing rarely).
    pub publishes_per_s_unbatched: f64,
    /// The same at the batched price (a few pipelining publishers).
    pub publishes_per_s_batched: f64,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Plain,
    Keyed,
    Durable,
}

fn measure(mode: Mode, history: usize, appends: u64) -> anyhow::Result<f64> {
    let epoch = Epoch::new(1).ok_or_else(|| anyhow::anyhow!("epoch 1 is valid"))?;
    let mut log: ChannelLog<Bytes> =
        ChannelLog::new(epoch, HistoryPolicy { size: history, ttl: Duration::from_secs(60) }, DedupPolicy::default());
    let frame = Bytes::from(vec![b'x'; 100]);
    let keys: Vec<String> = match mode {
        Mode::Keyed => (0..appends).map(|i| format!("k{i}")).collect(),
        _ => Vec::new(),
    };
    let start = Instant::now();
    for i in 0..appends {
        // 10 publishes per virtual millisecond: the dedup window and TTL prune as they
        // would at 10k/s.
        let now = Millis(i / 10);
        let r = match mode {
            Mode::Plain => log.append(now, None, 0, |_| frame.clone()),
            Mode::Keyed => log.append(now, Some(&keys[i as usize]), i, |_| frame.clone()),
            Mode::Durable => {
                let r = log.append_pending(now, None, 0, |_| frame.clone());
                let top = log.sequenced().offset;
                log.commit_to(top);
                r
            }
        };
        r?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e9 / appends as f64)
}

/// Measures every variant; `appends` per repetition.
pub fn run(appends: u64) -> anyhow::Result<Vec<HotRow>> {
    let mut rows = Vec::new();
    for (mode, name) in [
        (Mode::Plain, "append"),
        (Mode::Keyed, "append + idempotency key"),
        (Mode::Durable, "durable: pending + commit"),
    ] {
        for history in [0usize, 300, 10_000] {
            let mut best = f64::MAX;
            for _ in 0..3 {
                best = best.min(measure(mode, history, appends)?);
            }
            rows.push(HotRow {
                variant: name.to_string(),
                history,
                appends,
                best_ns_per_append: best,
                appends_per_s: 1e9 / best,
            });
        }
    }
    Ok(rows)
}

/// The realistic bound for one owner core: `append + read publish + write ack +
/// interested x Deliver` (the `Deliver`s at the batched price).
#[must_use]
pub fn bounds(append_ns: f64, interested: &[u64]) -> Vec<HotBound> {
    interested
        .iter()
        .map(|&k| {
            let fan = k as f64 * CPU_PER_DELIVERY_BATCHED_US;
            let base = append_ns / 1000.0 + fan;
            HotBound {
                interested_nodes: k,
                publishes_per_s_unbatched: 1e6 / (base + 2.0 * CPU_PER_DELIVERY_UNBATCHED_US),
                publishes_per_s_batched: 1e6 / (base + 2.0 * CPU_PER_DELIVERY_BATCHED_US),
            }
        })
        .collect()
}
