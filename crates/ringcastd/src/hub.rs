//! The channel hub: this node's channels, as their owner, and its local subscribers.
//!
//! Each channel is a [`ringcast_core::ChannelLog`] plus the outboxes of the local
//! connections subscribed to it, behind one mutex. Everything that must be ordered
//! relative to a channel's stream happens under that lock:
//! - a publish is sequenced, stored in history and pushed to every subscriber's outbox
//!   (one shared, pre-encoded frame; `try`-style pushes that never wait);
//! - a subscribe computes its recovery, queues the `subscribed` reply and the replay, and
//!   joins the subscriber set, so nothing is missed or doubled between replay and live.
//!
//! Channels are spread over shards (by slot) so unrelated channels never contend. A
//! periodic [`Hub::sweep`] expires history and forgets channels that have no subscribers
//! and nothing left to remember; a forgotten channel that is used again starts a new
//! epoch, so resuming readers are told rather than misled.
//!
//! Standalone, this node owns every slot (a one-member ring). The cluster issue puts
//! forwarding in front of these calls for channels owned elsewhere.

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Pushed};
use ringcast_core::dedup::payload_digest;
use ringcast_core::log::AppendError;
use ringcast_core::{
    Appended, ChannelLog, ChannelName, ConnId, Epoch, HistoryPage, Millis, NamespaceOptions, NotRecoveredReason,
    Offset, Recovery, Slot, StreamPosition,
};
use ringcast_proto::client::{encode_message, encode_subscribed, Since, SubscribeOutcome};
use ringcast_proto::ErrorCode;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Number of channel-map shards.
const SHARDS: usize = 64;

/// Hands out epochs for channels whose state starts here: a random 64-bit base chosen
/// at process start plus a counter, so a restarted node never reuses an epoch.
#[derive(Debug)]
pub struct EpochSource {
    base: u64,
    counter: AtomicU64,
}

impl EpochSource {
    #[must_use]
    pub fn new(seed: u64) -> EpochSource {
        EpochSource { base: seed, counter: AtomicU64::new(0) }
    }

    pub fn next(&self) -> Epoch {
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = Epoch::new(self.base.wrapping_add(n)) {
                return e;
            }
        }
    }
}

struct ChannelState {
    log: ChannelLog<Utf8Bytes>,
    subscribers: HashMap<ConnId, Arc<Outbox>>,
    /// Set by the sweeper when it drops the channel from its shard; a caller holding a
    /// stale handle retries with a fresh one.
    removed: bool,
}

struct Channel {
    state: Mutex<ChannelState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its state consistent at each step, so a panic
    // elsewhere does not make the data unusable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A publish that was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub position: StreamPosition,
    /// True when the idempotency window answered with an earlier position.
    pub duplicate: bool,
}

/// Summary of one channel, for operators.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub top: Option<StreamPosition>,
    pub history_len: usize,
    pub local_subscribers: usize,
}

/// This node's channels.
pub struct Hub {
    shards: Vec<Mutex<HashMap<ChannelName, Arc<Channel>>>>,
    epochs: EpochSource,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("epochs", &self.epochs).finish_non_exhaustive()
    }
}

impl Hub {
    #[must_use]
    pub fn new(epochs: EpochSource, metrics: Arc<Metrics>) -> Hub {
        Hub { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), epochs, metrics }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, Arc<Channel>>> {
        &self.shards[usize::from(Slot::of(channel).get()) % SHARDS]
    }

    /// Runs `f` on the channel's state, creating the channel if needed.
    fn with_channel<R>(
        &self,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        f: impl FnOnce(&mut ChannelState) -> R,
    ) -> R {
        let mut f = Some(f);
        loop {
            let cell = {
                let mut shard = lock(self.shard(channel));
                shard
                    .entry(channel.clone())
                    .or_insert_with(|| {
                        self.metrics.channels.fetch_add(1, Ordering::Relaxed);
                        Arc::new(Channel {
                            state: Mutex::new(ChannelState {
                                log: ChannelLog::new(self.epochs.next(), ns.history_policy(), ns.dedup_policy()),
                                subscribers: HashMap::new(),
                                removed: false,
                            }),
                        })
                    })
                    .clone()
            };
            let mut st = lock(&cell.state);
            if st.removed {
                continue;
            }
            // Invariant: `f` is taken exactly once, on the iteration that returns.
            if let Some(f) = f.take() {
                return f(&mut st);
            }
        }
    }

    /// Runs `f` on the channel's state if the channel exists.
    fn with_existing<R>(&self, channel: &ChannelName, f: impl FnOnce(&mut ChannelState) -> R) -> Option<R> {
        let cell = lock(self.shard(channel)).get(channel).cloned()?;
        let mut st = lock(&cell.state);
        (!st.removed).then(|| f(&mut st))
    }

    /// Sequences a publish and fans it out to local subscribers.
    pub fn publish(
        &self,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        data: &RawValue,
        idempotency_key: Option<&str>,
        now: Millis,
    ) -> Result<Published, ErrorCode> {
        let digest = payload_digest(data.get().as_bytes());
        self.with_channel(channel, ns, |st| {
            let appended = st
                .log
                .append(now, idempotency_key, digest, |pos| Utf8Bytes::from(encode_message(channel, pos, data)))
                .map_err(|AppendError::Conflict { .. }| ErrorCode::Conflict)?;
            match appended {
                Appended::Duplicate { position } => {
                    self.metrics.publish_duplicates.fetch_add(1, Ordering::Relaxed);
                    Ok(Published { position, duplicate: true })
                }
                Appended::Fresh { position, payload } => {
                    self.fan_out(st, &payload);
                    Ok(Published { position, duplicate: false })
                }
            }
        })
    }

    fn fan_out(&self, st: &mut ChannelState, frame: &Utf8Bytes) {
        let mut delivered = 0u64;
        let mut dropped: Vec<ConnId> = Vec::new();
        for (conn, outbox) in &st.subscribers {
            match outbox.push(frame.clone()) {
                Pushed::Queued => delivered += 1,
                Pushed::Overflow => {
                    self.metrics.slow_consumer_drops.fetch_add(1, Ordering::Relaxed);
                    dropped.push(*conn);
                }
                Pushed::Closed => dropped.push(*conn),
            }
        }
        for conn in dropped {
            if st.subscribers.remove(&conn).is_some() {
                self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.metrics.deliveries.fetch_add(delivered, Ordering::Relaxed);
    }

    /// Subscribes `conn`: queues the `subscribed` reply (and, with `since`, the replay)
    /// into `outbox`, then adds it to the live fan-out, all under the channel lock.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        since: Option<Since>,
        reply_id: u64,
        now: Millis,
    ) -> Result<(), ErrorCode> {
        self.with_channel(channel, ns, |st| {
            if st.subscribers.contains_key(&conn) {
                return Err(ErrorCode::AlreadySubscribed);
            }
            let top = st.log.top();
            let (outcome, replay) = match since {
                None => (SubscribeOutcome::Fresh, Vec::new()),
                Some(Since { epoch, offset }) => {
                    // No epoch given: continuity cannot be proved, treat as a mismatch.
                    let recovery = match epoch {
                        Some(epoch) => st.log.recover(StreamPosition { epoch, offset }, now),
                        None => {
                            let page = st.log.page(now, None, 0);
                            Recovery::NotRecovered {
                                reason: NotRecoveredReason::EpochChanged,
                                oldest: page.oldest,
                                newest: page.newest,
                            }
                        }
                    };
                    match recovery {
                        Recovery::Recovered { replay } => {
                            (SubscribeOutcome::Recovered { replayed: replay.len() }, replay)
                        }
                        Recovery::NotRecovered { reason, oldest, newest } => {
                            (SubscribeOutcome::NotRecovered { reason, oldest, newest }, Vec::new())
                        }
                    }
                }
            };
            let reply = Utf8Bytes::from(encode_subscribed(reply_id, channel, top, outcome));
            outbox.push_unbounded(std::iter::once(reply).chain(replay));
            st.subscribers.insert(conn, outbox.clone());
            self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Removes `conn` from the channel's subscribers. Returns whether it was subscribed.
    pub fn unsubscribe(&self, channel: &ChannelName, conn: ConnId) -> bool {
        let removed = self.with_existing(channel, |st| st.subscribers.remove(&conn).is_some()).unwrap_or(false);
        if removed {
            self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// A page of history (oldest first) of pre-encoded `message` frames; `None` when the
    /// channel has no stream here. Reading never creates channel state.
    pub fn history(
        &self,
        channel: &ChannelName,
        before: Option<Offset>,
        limit: usize,
        now: Millis,
    ) -> Option<HistoryPage<Utf8Bytes>> {
        self.with_existing(channel, |st| st.log.page(now, before, limit))
    }

    /// What this node holds for a channel (no state is created).
    pub fn info(&self, channel: &ChannelName) -> ChannelInfo {
        self.with_existing(channel, |st| ChannelInfo {
            top: Some(st.log.top()),
            history_len: st.log.history_len(),
            local_subscribers: st.subscribers.len(),
        })
        .unwrap_or(ChannelInfo { top: None, history_len: 0, local_subscribers: 0 })
    }

    /// Expires history and forgets idle channels. Returns how many were forgotten.
    pub fn sweep(&self, now: Millis) -> usize {
        let mut forgotten = 0;
        for shard in &self.shards {
            let mut map = lock(shard);
            map.retain(|_, cell| {
                let mut st = lock(&cell.state);
                if st.subscribers.is_empty() && st.log.is_idle(now) {
                    st.removed = true;
                    forgotten += 1;
                    false
                } else {
                    true
                }
            });
        }
        self.metrics.channels.fetch_sub(forgotten as i64, Ordering::Relaxed);
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_core::dedup::DedupPolicy;
    use std::time::Duration;

    fn hub() -> Hub {
        Hub::new(EpochSource::new(1000), Arc::new(Metrics::default()))
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn frames(o: &Outbox) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        o.drain(&mut out);
        out.iter().map(|f| serde_json::from_str(f.as_str()).unwrap_or_default()).collect()
    }

    #[test]
    fn replay_then_live_without_gap_or_duplicate() {
        let h = hub();
        let ns = NamespaceOptions::default();
        let c = ch("chat:a");
        for i in 1..=5 {
            h.publish(&c, &ns, &raw(&i.to_string()), None, Millis(0)).ok();
        }
        let epoch = h.info(&c).top.map(|t| t.epoch);
        let o = Arc::new(Outbox::new(100, 1 << 20));
        let since = Since { epoch, offset: Offset(2) };
        assert_eq!(h.subscribe(&c, &ns, ConnId(1), &o, Some(since), 9, Millis(0)), Ok(()));
        h.publish(&c, &ns, &raw("6"), None, Millis(0)).ok();
        let got = frames(&o);
        assert_eq!(got[0]["type"], "subscribed");
        assert_eq!(got[0]["recovered"], true);
        assert_eq!(got[0]["replayed"], 3);
        let offsets: Vec<_> = got[1..].iter().map(|m| m["offset"].as_u64().unwrap_or(0)).collect();
        assert_eq!(offsets, vec![3, 4, 5, 6]);
        assert_eq!(h.subscribe(&c, &ns, ConnId(1), &o, None, 10, Millis(0)), Err(ErrorCode::AlreadySubscribed));
    }

    #[test]
    fn idle_channels_are_forgotten_and_restart_in_a_new_epoch() {
        let h = hub();
        let ns = NamespaceOptions {
            history_ttl: Duration::from_secs(1),
            dedup_window: Duration::from_secs(1),
            ..Default::default()
        };
        let c = ch("chat:b");
        let first = h.publish(&c, &ns, &raw("1"), Some("k"), Millis(0)).map(|p| p.position);
        assert_eq!(h.sweep(Millis(500)), 0);
        assert_eq!(h.sweep(Millis(1_000)), 1);
        let second = h.publish(&c, &ns, &raw("1"), Some("k"), Millis(1_000)).map(|p| p.position);
        assert_ne!(first.map(|p| p.epoch), second.map(|p| p.epoch));
        assert_eq!(second.map(|p| p.offset), Ok(Offset(1)));
        let _ = DedupPolicy::default();
    }

    #[test]
    fn slow_subscriber_is_dropped_without_touching_others() {
        let h = hub();
        let ns = NamespaceOptions::default();
        let c = ch("chat:c");
        let slow = Arc::new(Outbox::new(3, 1 << 20));
        let fast = Arc::new(Outbox::new(1000, 1 << 20));
        h.subscribe(&c, &ns, ConnId(1), &slow, None, 1, Millis(0)).ok();
        h.subscribe(&c, &ns, ConnId(2), &fast, None, 1, Millis(0)).ok();
        for i in 0..10 {
            h.publish(&c, &ns, &raw(&i.to_string()), None, Millis(0)).ok();
        }
        let mut out = Vec::new();
        assert_eq!(slow.drain(&mut out), Some(ringcast_proto::CloseCode::SlowConsumer));
        assert_eq!(frames(&fast).len(), 11);
        assert_eq!(h.info(&c).local_subscribers, 1);
    }
}
