//! `ringcast-guard`: CI's performance regression guard, a fixed, in-process fan-out
//! whose instruction count (under `valgrind --tool=callgrind`, `scripts/bench --guard`)
//! is compared with a committed baseline (`callgrind-baseline.txt`).
//!
//! It runs the per-publish and per-subscriber work of ringcastd's hot path without
//! sockets, threads or clocks, so the count is deterministic for a given binary: each
//! message is encoded once (`encode_message`, as the hub does) into one shared
//! [`QueuedMessage`], which is pushed into every subscriber's [`SendQueue`] under the
//! namespace policy (as the hub's fan-out does), and every `DRAIN_EVERY` messages each
//! queue is drained (as a writer does). Wall-clock time is never compared: on a shared 2-core
//! machine it is noise; an instruction count moves only when the code does (or the
//! build: docs/benchmarks.md, "Regression guard").
//!
//! It is a crate of its own, with few dependencies, so that CI's release build of it
//! takes seconds rather than the minutes `ringcast-bench` takes.

use bytes::Bytes;
use ringcast_core::send_queue::{Bounds, Drained, MessagePolicy, Pushed, QueuedMessage, SendQueue};
use ringcast_core::{BackpressurePolicy, ChannelName, Epoch, Offset, StreamPosition};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Messages per drain, about what a busy writer finds queued per wake-up.
pub const DRAIN_EVERY: u64 = 16;

/// Runs `messages` publishes of `payload`-byte data to `subscribers` queues; returns the
/// number of frames drained (a checksum that the work was done).
pub fn fan_out(subscribers: usize, messages: u64, payload: usize) -> anyhow::Result<u64> {
    let channel = ChannelName::new("bench:c0").map_err(|e| anyhow::anyhow!("{e}"))?;
    let epoch = Epoch::new(7).ok_or_else(|| anyhow::anyhow!("epoch 0"))?;
    let data = RawValue::from_string(format!("\"{}\"", "x".repeat(payload)))?;
    let bounds = Bounds { messages: 1000, bytes: 1 << 20 };
    let policy = MessagePolicy { policy: BackpressurePolicy::Disconnect, bounds };
    let mut queues: Vec<SendQueue<Bytes>> = (0..subscribers).map(|_| SendQueue::new(bounds)).collect();
    let mut out = Vec::new();
    let mut drained = 0u64;
    for m in 1..=messages {
        let position = StreamPosition { epoch, offset: Offset(m) };
        let frame = Bytes::from(ringcast_proto::client::encode_message(&channel, position, &data));
        let len = frame.len();
        let msg = Arc::new(QueuedMessage::new(frame, len, channel.clone(), position));
        for q in &mut queues {
            if !matches!(q.push_message(&msg, false, policy), Pushed::Queued { .. }) {
                anyhow::bail!("a queue refused a message");
            }
        }
        if m % DRAIN_EVERY == 0 || m == messages {
            for q in &mut queues {
                q.drain(&mut out);
                drained += out.iter().filter(|d| matches!(d, Drained::Message { .. })).count() as u64;
                out.clear();
            }
        }
    }
    Ok(drained)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_frame_reaches_every_queue() {
        assert_eq!(super::fan_out(10, 40, 100).ok(), Some(400));
    }
}
