//! One channel's stream: sequencing, history, dedup and recovery.
//!
//! [`ChannelLog`] is the state a channel's owner keeps. It assigns each accepted publish
//! the next offset in the current epoch, keeps the last `history.size` messages for at
//! most `history.ttl`, remembers idempotency keys ([`crate::dedup`]) and answers the two
//! read questions: "what did a reader at position P miss?" ([`ChannelLog::recover`]) and
//! "give me a page of history" ([`ChannelLog::page`]).
//!
//! The payload type `P` is chosen by the driver: ringcastd stores the pre-encoded push
//! frame, so history replay and live fan-out share the same bytes and nothing is
//! re-encoded per subscriber.
//!
//! Durable channels sequence before they commit: [`ChannelLog::append_pending`] assigns
//! the offset and stores the message, but readers (recovery, history pages, the visible
//! [`ChannelLog::top`]) see it only once [`ChannelLog::commit_to`] reaches it, after a
//! replica acknowledged it. A replica keeps its copy with
//! [`ChannelLog::append_replicated`], at the owner's positions.
//!
//! Invariants (checked by the tests below and the property test):
//! - offsets handed out are `top+1, top+2, ...` with no gap and no reuse within an epoch;
//! - history holds a contiguous run of offsets ending at `top` (or is empty);
//! - readers never see an offset above the committed one;
//! - an idempotency key inside the window maps to exactly one position.

use crate::dedup::{DedupCheck, DedupPolicy, DedupWindow};
use crate::latest::{LatestEntry, LatestPolicy, LatestState};
use crate::position::{Epoch, Offset, StreamPosition};
use crate::time::Millis;
use std::collections::VecDeque;
use std::time::Duration;

/// How much history a channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Most messages kept (0 keeps none: recovery then only works at the top).
    pub size: usize,
    /// Longest time a message is kept.
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
struct Entry<P> {
    offset: Offset,
    at: Millis,
    payload: P,
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended<P> {
    /// Sequenced now at `position`; `payload` is what was stored (for fan-out).
    Fresh { position: StreamPosition, payload: P },
    /// The idempotency key was seen with the same payload: the original position.
    /// Nothing was stored and nothing must be fanned out.
    Duplicate { position: StreamPosition },
}

/// Why an append was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("idempotency key already used for a different payload (at offset {})", .position.offset)]
    Conflict { position: StreamPosition },
    /// The epoch's offsets are used up (only a handed-off snapshot can get here). Nothing
    /// was sequenced: an offset is never reused. The stream continues once the channel is
    /// forgotten and starts a new epoch.
    #[error("the epoch has no offsets left")]
    OffsetsExhausted,
}

/// A replica's copy is not at the position the owner replicates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replica holds up to {} in epoch {}", .held.offset, .held.epoch)]
pub struct OutOfStep {
    pub held: StreamPosition,
}

/// Why a reader cannot be brought up to date from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecoveredReason {
    /// The stream's epoch differs: its state was lost and restarted since.
    EpochChanged,
    /// Messages after the position have left the history window.
    PositionExpired,
    /// The position is beyond the newest offset: the reader saw a different stream.
    PositionAhead,
}

impl NotRecoveredReason {
    /// The stable wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            NotRecoveredReason::EpochChanged => "epoch_changed",
            NotRecoveredReason::PositionExpired => "position_expired",
            NotRecoveredReason::PositionAhead => "position_ahead",
        }
    }
}

/// The answer to "what did a reader at position P miss?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery<P> {
    /// Every message after the position, in order (possibly none).
    Recovered { replay: Vec<P> },
    /// Continuity cannot be given. History holds `oldest..=newest` (empty when
    /// `oldest > newest`) so the reader can take what is left and page the rest.
    NotRecovered { reason: NotRecoveredReason, oldest: Offset, newest: Offset },
}

/// One page of history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage<P> {
    pub epoch: Epoch,
    /// Oldest offset held (greater than `newest` when history is empty).
    pub oldest: Offset,
    /// Newest offset sequenced.
    pub newest: Offset,
    pub entries: Vec<P>,
    /// Pass as `before` to get the next older page; `None` when this page reaches the
    /// oldest message held.
    pub next_before: Option<Offset>,
}

/// Everything a channel's log holds, for moving it to another node (graceful handoff).
/// Ages instead of timestamps: monotonic clocks are per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSnapshot<P> {
    pub epoch: Epoch,
    pub top: Offset,
    /// `(offset, age, payload)`, oldest first, contiguous and ending at `top`.
    pub history: Vec<(Offset, Duration, P)>,
    pub dedup: Vec<crate::dedup::DedupEntry>,
    /// Keep-latest state (`crate::latest`): `(key, offset, age, payload)`; empty when the
    /// channel keeps none.
    pub latest: Vec<LatestEntry<P>>,
}

/// One channel's sequenced stream. See the module docs for its invariants.
#[derive(Debug)]
pub struct ChannelLog<P> {
    epoch: Epoch,
    /// Last offset sequenced.
    top: Offset,
    /// Last offset readers may see (`<= top`).
    committed: Offset,
    history: VecDeque<Entry<P>>,
    dedup: DedupWindow,
    history_policy: HistoryPolicy,
    dedup_policy: DedupPolicy,
    /// Keep-latest channels: the newest committed message per key.
    latest: Option<LatestState<P>>,
}

impl<P: Clone> ChannelLog<P> {
    /// An empty stream in `epoch`.
    #[must_use]
    pub fn new(epoch: Epoch, history_policy: HistoryPolicy, dedup_policy: DedupPolicy) -> Self {
        ChannelLog {
            epoch,
            top: Offset::ZERO,
            committed: Offset::ZERO,
            history: VecDeque::new(),
            dedup: DedupWindow::default(),
            history_policy,
            dedup_policy,
            latest: None,
        }
    }

    /// Keeps (with `Some`) or drops the newest message per key (`crate::latest`).
    pub fn set_latest(&mut self, policy: Option<LatestPolicy>) {
        match (policy, self.latest.as_mut()) {
            (None, _) => self.latest = None,
            (Some(p), Some(l)) => l.set_policy(p),
            (Some(p), None) => self.latest = Some(LatestState::new(p)),
        }
    }

    /// The keep-latest state readers may see, in offset order; empty without it.
    pub fn latest(&mut self, now: Millis) -> Vec<(std::sync::Arc<str>, Offset, P)> {
        self.latest.as_mut().map(|l| l.entries(now)).unwrap_or_default()
    }

    /// The newest message sequenced for a keep-latest `key` (see
    /// [`LatestState::newest`]); `None` without keep-latest.
    #[must_use]
    pub fn latest_for(&self, key: &str, now: Millis) -> Option<(Offset, &P)> {
        self.latest.as_ref().and_then(|l| l.newest(key, now))
    }

    fn note_latest(&mut self, key: Option<&str>, offset: Offset, now: Millis, payload: &P, committed: bool) {
        if let (Some(l), Some(k)) = (self.latest.as_mut(), key) {
            l.note(k, offset, now, payload.clone(), committed);
        }
    }

    /// The newest position readers may see (offset 0 when nothing was committed in this
    /// epoch).
    #[must_use]
    pub fn top(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch, offset: self.committed }
    }

    /// The newest position sequenced, committed or not.
    #[must_use]
    pub fn sequenced(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch, offset: self.top }
    }

    /// Makes everything up to `offset` visible to readers (at most what was sequenced).
    pub fn commit_to(&mut self, offset: Offset) {
        self.committed = self.committed.max(offset.min(self.top));
        if let Some(l) = self.latest.as_mut() {
            l.commit_to(self.committed);
        }
    }

    /// Sequences a message visible at once (best-effort channels). See
    /// [`ChannelLog::append_pending`].
    pub fn append(
        &mut self,
        now: Millis,
        idempotency_key: Option<&str>,
        digest: u64,
        encode: impl FnOnce(StreamPosition) -> P,
    ) -> Result<Appended<P>, AppendError> {
        self.append_keyed(now, idempotency_key, digest, None, encode)
    }

    /// [`ChannelLog::append`] of a message with a keep-latest `key`.
    pub fn append_keyed(
        &mut self,
        now: Millis,
        idempotency_key: Option<&str>,
        digest: u64,
        key: Option<&str>,
        encode: impl FnOnce(StreamPosition) -> P,
    ) -> Result<Appended<P>, AppendError> {
        let appended = self.append_pending_keyed(now, idempotency_key, digest, key, encode)?;
        self.commit_to(self.top);
        Ok(appended)
    }

    /// A replica's copy: stores the message the owner sequenced at `position`. A
    /// position at or below the top is already held (`Ok`); anything but the next offset
    /// in this epoch means the copy is out of step and needs a fresh snapshot.
    pub fn append_replicated(
        &mut self,
        position: StreamPosition,
        now: Millis,
        idempotency_key: Option<&str>,
        digest: u64,
        payload: P,
    ) -> Result<(), OutOfStep> {
        self.append_replicated_keyed(position, now, idempotency_key, digest, None, payload)
    }

    /// [`ChannelLog::append_replicated`] of a message with a keep-latest `key`.
    pub fn append_replicated_keyed(
        &mut self,
        position: StreamPosition,
        now: Millis,
        idempotency_key: Option<&str>,
        digest: u64,
        key: Option<&str>,
        payload: P,
    ) -> Result<(), OutOfStep> {
        if position.epoch != self.epoch || position.offset > self.top.next() {
            return Err(OutOfStep { held: self.sequenced() });
        }
        if position.offset <= self.top {
            return Ok(());
        }
        self.prune(now);
        self.top = position.offset;
        self.committed = self.top;
        self.note_latest(key, position.offset, now, &payload, true);
        self.store(now, payload);
        if let Some(key) = idempotency_key {
            self.dedup.record(key, digest, position, &self.dedup_policy, now);
        }
        Ok(())
    }

    fn store(&mut self, now: Millis, payload: P) {
        if self.history_policy.size > 0 {
            self.history.push_back(Entry { offset: self.top, at: now, payload });
            while self.history.len() > self.history_policy.size {
                self.history.pop_front();
            }
        }
    }

    #[must_use]
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Sequences a message without making it visible to readers (durable channels commit
    /// it once a replica holds it). `digest` identifies the payload for idempotency
    /// checks; `encode` builds the stored payload once its position is known. A duplicate
    /// may name a position not yet committed.
    pub fn append_pending(
        &mut self,
        now: Millis,
        idempotency_key: Option<&str>,
        digest: u64,
        encode: impl FnOnce(StreamPosition) -> P,
    ) -> Result<Appended<P>, AppendError> {
        self.append_pending_keyed(now, idempotency_key, digest, None, encode)
    }

    /// [`ChannelLog::append_pending`] of a message with a keep-latest `key` (part of the
    /// state once committed).
    pub fn append_pending_keyed(
        &mut self,
        now: Millis,
        idempotency_key: Option<&str>,
        digest: u64,
        key: Option<&str>,
        encode: impl FnOnce(StreamPosition) -> P,
    ) -> Result<Appended<P>, AppendError> {
        self.prune(now);
        if let Some(key) = idempotency_key {
            match self.dedup.check(key, digest, &self.dedup_policy, now) {
                DedupCheck::New => {}
                DedupCheck::Duplicate(position) => return Ok(Appended::Duplicate { position }),
                DedupCheck::Conflict(position) => return Err(AppendError::Conflict { position }),
            }
        }
        if self.top.0 == u64::MAX {
            return Err(AppendError::OffsetsExhausted);
        }
        self.top = self.top.next();
        let position = self.sequenced();
        let payload = encode(position);
        self.note_latest(key, position.offset, now, &payload, false);
        self.store(now, payload.clone());
        if let Some(key) = idempotency_key {
            self.dedup.record(key, digest, position, &self.dedup_policy, now);
        }
        Ok(Appended::Fresh { position, payload })
    }

    /// Whether the idempotency window holds `key`: a publish with it would be answered
    /// from the window (or refused as a conflict), not sequenced.
    pub fn remembers(&mut self, key: &str, now: Millis) -> bool {
        self.dedup.contains(key, &self.dedup_policy, now)
    }

    /// Drops history and idempotency keys that have outlived their windows.
    pub fn prune(&mut self, now: Millis) {
        while let Some(front) = self.history.front() {
            if front.at.saturating_add(self.history_policy.ttl) > now {
                break;
            }
            self.history.pop_front();
        }
        self.dedup.expire(&self.dedup_policy, now);
    }

    /// Oldest offset held; `committed + 1` when no committed message is held.
    fn oldest(&self) -> Offset {
        self.history.front().map_or(self.committed.next(), |e| e.offset).min(self.committed.next())
    }

    /// What a reader at `since` missed, as of `now` (committed messages only).
    pub fn recover(&mut self, since: StreamPosition, now: Millis) -> Recovery<P> {
        self.prune(now);
        let (oldest, newest) = (self.oldest(), self.committed);
        let not = |reason| Recovery::NotRecovered { reason, oldest, newest };
        if since.epoch != self.epoch {
            return not(NotRecoveredReason::EpochChanged);
        }
        if since.offset > newest {
            return not(NotRecoveredReason::PositionAhead);
        }
        if since.offset == newest {
            return Recovery::Recovered { replay: Vec::new() };
        }
        // Here `since.offset < top`, so `next()` cannot saturate. An empty history holds
        // nothing after `since` (`oldest()` itself saturates when `top` is `u64::MAX`).
        if self.history.is_empty() || since.offset.next() < oldest {
            return not(NotRecoveredReason::PositionExpired);
        }
        let replay = self
            .history
            .iter()
            .filter(|e| e.offset > since.offset && e.offset <= newest)
            .map(|e| e.payload.clone())
            .collect();
        Recovery::Recovered { replay }
    }

    /// Up to `limit` committed messages with offsets below `before` (default: all),
    /// oldest first.
    pub fn page(&mut self, now: Millis, before: Option<Offset>, limit: usize) -> HistoryPage<P> {
        self.prune(now);
        let before = before.unwrap_or(self.committed.next()).min(self.committed.next());
        let below = self.history.partition_point(|e| e.offset < before);
        let start = below.saturating_sub(limit);
        let entries: Vec<P> = self.history.range(start..below).map(|e| e.payload.clone()).collect();
        let next_before = (start > 0 && !entries.is_empty()).then(|| self.history[start].offset);
        HistoryPage { epoch: self.epoch, oldest: self.oldest(), newest: self.committed, entries, next_before }
    }

    /// True when the log holds nothing worth keeping: no history and no idempotency keys.
    /// A channel with no subscribers and an idle log can be forgotten; if it is used
    /// again it starts a new epoch, so no reader can mistake it for the old stream.
    pub fn is_idle(&mut self, now: Millis) -> bool {
        self.prune(now);
        let latest = self.latest.as_mut().is_none_or(|l| {
            l.prune(now);
            l.is_empty()
        });
        self.history.is_empty() && self.dedup.is_empty() && latest
    }

    /// Everything needed to continue this stream elsewhere, as of `now`: every message
    /// sequenced, committed or not (a message a replica or a new owner holds is
    /// committed there).
    pub fn snapshot(&mut self, now: Millis) -> LogSnapshot<P> {
        self.prune(now);
        LogSnapshot {
            epoch: self.epoch,
            top: self.top,
            history: self.history.iter().map(|e| (e.offset, now.since(e.at), e.payload.clone())).collect(),
            dedup: self.dedup.export(now),
            latest: self.latest.as_mut().map(|l| l.export(now)).unwrap_or_default(),
        }
    }

    /// Continues a stream from a snapshot taken elsewhere: same epoch, next offset
    /// `top + 1`, same history and idempotency keys. Entries that break the snapshot's
    /// invariants (history not contiguous or not ending at `top`, keys naming a position
    /// outside `1..=top` of this epoch) are dropped rather than trusted.
    #[must_use]
    pub fn restore(
        snap: LogSnapshot<P>,
        history_policy: HistoryPolicy,
        dedup_policy: DedupPolicy,
        now: Millis,
    ) -> Self {
        let mut history: VecDeque<Entry<P>> = VecDeque::new();
        for (offset, age, payload) in snap.history.into_iter().rev() {
            let expected = history.front().map_or(snap.top, |e: &Entry<P>| Offset(e.offset.0.saturating_sub(1)));
            if offset != expected || offset == Offset::ZERO {
                break;
            }
            let at = Millis(now.0.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
            history.push_front(Entry { offset, at, payload });
        }
        while history.len() > history_policy.size {
            history.pop_front();
        }
        // A key can only name a message of this stream that was sequenced: `1..=top`.
        let sequenced = |e: &crate::dedup::DedupEntry| {
            e.position.epoch == snap.epoch && e.position.offset != Offset::ZERO && e.position.offset <= snap.top
        };
        let dedup = DedupWindow::import(snap.dedup.into_iter().filter(sequenced).collect(), &dedup_policy, now);
        // Keep-latest state comes back under the default policy; the driver sets the
        // namespace's with `set_latest` (or drops it).
        let latest =
            (!snap.latest.is_empty()).then(|| LatestState::import(snap.latest, snap.top, LatestPolicy::default(), now));
        let mut log = ChannelLog {
            epoch: snap.epoch,
            top: snap.top,
            committed: snap.top,
            history,
            dedup,
            history_policy,
            dedup_policy,
            latest,
        };
        log.prune(now);
        log
    }

    /// Number of messages currently held.
    #[must_use]
    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keep_latest_follows_commits_and_snapshots() {
        let policy = HistoryPolicy { size: 2, ttl: Duration::from_secs(60) };
        let mut l: ChannelLog<u64> = ChannelLog::new(epoch(3), policy, DedupPolicy::default());
        l.set_latest(Some(LatestPolicy::default()));
        for (i, key) in ["g1", "g2", "g1", "g3", "g1"].iter().enumerate() {
            l.append_keyed(Millis(0), None, 0, Some(key), |p| p.offset.0 * 10 + i as u64).ok();
        }
        let held = |l: &mut ChannelLog<u64>| -> Vec<(String, u64)> {
            l.latest(Millis(0)).into_iter().map(|(k, o, _)| (k.to_string(), o.0)).collect()
        };
        // History keeps 2 messages, the state every key's newest.
        assert_eq!(held(&mut l), [("g2".into(), 2), ("g3".into(), 4), ("g1".into(), 5)]);
        // Durable: pending until committed, and carried by snapshots.
        l.append_pending_keyed(Millis(0), None, 0, Some("g2"), |_| 60).ok();
        assert_eq!(held(&mut l)[0], ("g2".into(), 2));
        let snap = l.snapshot(Millis(0));
        let mut moved = ChannelLog::restore(snap, policy, DedupPolicy::default(), Millis(0));
        assert_eq!(held(&mut moved), [("g3".into(), 4), ("g1".into(), 5), ("g2".into(), 6)]);
        l.commit_to(Offset(6));
        assert_eq!(held(&mut l), held(&mut moved), "the same state once committed");
        assert!(!l.is_idle(Millis(1_000_000)), "state keeps the channel after its history expires");
    }

    use super::*;
    use proptest::prelude::*;

    fn epoch(n: u64) -> Epoch {
        Epoch::new(n).unwrap_or_else(|| unreachable!("test epochs are non-zero"))
    }

    fn log(size: usize, ttl_s: u64) -> ChannelLog<u64> {
        ChannelLog::new(
            epoch(7),
            HistoryPolicy { size, ttl: Duration::from_secs(ttl_s) },
            DedupPolicy { window: Duration::from_secs(120), max_keys: 100 },
        )
    }

    fn push(l: &mut ChannelLog<u64>, now: u64, key: Option<&str>, digest: u64) -> Result<Appended<u64>, AppendError> {
        l.append(Millis(now), key, digest, |p| p.offset.0)
    }

    fn at(e: u64, o: u64) -> StreamPosition {
        StreamPosition { epoch: epoch(e), offset: Offset(o) }
    }

    #[test]
    fn offsets_are_gapless_from_one() {
        let mut l = log(10, 60);
        for i in 1..=25 {
            match push(&mut l, 0, None, 0) {
                Ok(Appended::Fresh { position, payload }) => {
                    assert_eq!(position, at(7, i));
                    assert_eq!(payload, i);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(l.history_len(), 10);
        assert_eq!(l.top(), at(7, 25));
    }

    #[test]
    fn idempotent_retry_returns_original_and_conflict_is_refused() {
        let mut l = log(10, 60);
        let first = push(&mut l, 0, Some("k1"), 11);
        assert_eq!(first, Ok(Appended::Fresh { position: at(7, 1), payload: 1 }));
        push(&mut l, 1, None, 0).ok();
        assert_eq!(push(&mut l, 2, Some("k1"), 11), Ok(Appended::Duplicate { position: at(7, 1) }));
        assert_eq!(push(&mut l, 2, Some("k1"), 12), Err(AppendError::Conflict { position: at(7, 1) }));
        assert_eq!(l.top(), at(7, 2), "duplicates and conflicts sequence nothing");
        assert!(l.remembers("k1", Millis(2)) && !l.remembers("k2", Millis(2)));
        // After the window the key is new again.
        assert!(!l.remembers("k1", Millis(120_000)));
        assert!(matches!(push(&mut l, 121_000, Some("k1"), 11), Ok(Appended::Fresh { .. })));
    }

    #[test]
    fn pending_messages_are_invisible_until_committed() {
        let mut l = log(10, 60);
        push(&mut l, 0, None, 0).ok();
        let pending = l.append_pending(Millis(0), Some("k"), 5, |p| p.offset.0);
        assert!(matches!(pending, Ok(Appended::Fresh { position, .. }) if position == at(7, 2)));
        l.append_pending(Millis(0), None, 0, |p| p.offset.0).ok();
        assert_eq!((l.top(), l.sequenced()), (at(7, 1), at(7, 3)));
        assert_eq!(l.recover(at(7, 0), Millis(0)), Recovery::Recovered { replay: vec![1] });
        assert_eq!(l.page(Millis(0), None, 10).entries, vec![1]);
        assert_eq!(
            l.append_pending(Millis(0), Some("k"), 5, |p| p.offset.0),
            Ok(Appended::Duplicate { position: at(7, 2) }),
            "a retry names the pending position; the caller waits for its commit"
        );
        l.commit_to(Offset(2));
        assert_eq!(l.recover(at(7, 0), Millis(0)), Recovery::Recovered { replay: vec![1, 2] });
        l.commit_to(Offset(99));
        assert_eq!(l.top(), at(7, 3), "never beyond what was sequenced");
        let snap = l.snapshot(Millis(0));
        assert_eq!(snap.top, Offset(3));
    }

    #[test]
    fn a_replica_copies_the_owners_positions_in_order_only() {
        let mut r = log(10, 60);
        assert_eq!(r.append_replicated(at(7, 1), Millis(0), Some("k"), 5, 1), Ok(()));
        assert_eq!(r.append_replicated(at(7, 1), Millis(0), Some("k"), 5, 1), Ok(()), "already held");
        assert_eq!(r.append_replicated(at(7, 3), Millis(0), None, 0, 3), Err(OutOfStep { held: at(7, 1) }));
        assert_eq!(r.append_replicated(at(8, 2), Millis(0), None, 0, 2), Err(OutOfStep { held: at(7, 1) }));
        assert_eq!(r.append_replicated(at(7, 2), Millis(0), None, 0, 2), Ok(()));
        assert_eq!(r.top(), at(7, 2));
        assert!(r.remembers("k", Millis(0)), "idempotency keys are replicated too");
        let mut promoted = ChannelLog::restore(
            r.snapshot(Millis(0)),
            HistoryPolicy { size: 10, ttl: Duration::from_secs(60) },
            DedupPolicy::default(),
            Millis(0),
        );
        assert_eq!(push(&mut promoted, 1, Some("k"), 5), Ok(Appended::Duplicate { position: at(7, 1) }));
        assert!(
            matches!(push(&mut promoted, 1, None, 0), Ok(Appended::Fresh { position, .. }) if position == at(7, 3))
        );
    }

    #[test]
    fn recovery_inside_window_replays_in_order() {
        let mut l = log(5, 60);
        for _ in 0..8 {
            push(&mut l, 0, None, 0).ok();
        }
        // History holds 4..=8.
        assert_eq!(l.recover(at(7, 8), Millis(0)), Recovery::Recovered { replay: vec![] });
        assert_eq!(l.recover(at(7, 5), Millis(0)), Recovery::Recovered { replay: vec![6, 7, 8] });
        assert_eq!(l.recover(at(7, 3), Millis(0)), Recovery::Recovered { replay: vec![4, 5, 6, 7, 8] });
    }

    #[test]
    fn recovery_outside_window_says_why_and_what_is_left() {
        let mut l = log(5, 60);
        for _ in 0..8 {
            push(&mut l, 0, None, 0).ok();
        }
        let nr =
            |reason, oldest, newest| Recovery::NotRecovered { reason, oldest: Offset(oldest), newest: Offset(newest) };
        assert_eq!(l.recover(at(7, 2), Millis(0)), nr(NotRecoveredReason::PositionExpired, 4, 8));
        assert_eq!(l.recover(at(7, 0), Millis(0)), nr(NotRecoveredReason::PositionExpired, 4, 8));
        assert_eq!(l.recover(at(8, 8), Millis(0)), nr(NotRecoveredReason::EpochChanged, 4, 8));
        assert_eq!(l.recover(at(7, 9), Millis(0)), nr(NotRecoveredReason::PositionAhead, 4, 8));
        assert_eq!(l.recover(at(7, u64::MAX), Millis(0)), nr(NotRecoveredReason::PositionAhead, 4, 8));
        // TTL: everything expires after 60 s; a reader at the top is still current.
        assert_eq!(l.recover(at(7, 8), Millis(60_000)), Recovery::Recovered { replay: vec![] });
        assert_eq!(l.recover(at(7, 7), Millis(60_000)), nr(NotRecoveredReason::PositionExpired, 9, 8));
    }

    #[test]
    fn pages_walk_backwards_to_the_oldest() {
        let mut l = log(10, 60);
        for _ in 0..25 {
            push(&mut l, 0, None, 0).ok();
        }
        let p1 = l.page(Millis(0), None, 4);
        assert_eq!(p1.entries, vec![22, 23, 24, 25]);
        assert_eq!((p1.oldest, p1.newest, p1.next_before), (Offset(16), Offset(25), Some(Offset(22))));
        let p2 = l.page(Millis(0), p1.next_before, 4);
        assert_eq!(p2.entries, vec![18, 19, 20, 21]);
        let p3 = l.page(Millis(0), p2.next_before, 4);
        assert_eq!((p3.entries, p3.next_before), (vec![16, 17], None));
        assert_eq!(l.page(Millis(0), Some(Offset(1)), 4).entries, Vec::<u64>::new());
        assert_eq!(l.page(Millis(0), Some(Offset(u64::MAX)), 2).entries, vec![24, 25]);
        assert_eq!(l.page(Millis(0), None, 0).entries, Vec::<u64>::new());
    }

    #[test]
    fn idle_only_when_history_and_keys_are_gone() {
        let mut l = log(10, 1);
        push(&mut l, 0, Some("k"), 1).ok();
        assert!(!l.is_idle(Millis(500)));
        assert!(!l.is_idle(Millis(1_000)), "the key outlives the history");
        assert!(l.is_idle(Millis(120_000)));
    }

    #[test]
    fn a_restored_snapshot_continues_the_same_stream() {
        let mut a = log(10, 60);
        for i in 0..15u64 {
            let key = format!("k{i}");
            a.append(Millis(i * 1000), Some(&key), i, |p| p.offset.0).ok();
        }
        let snap = a.snapshot(Millis(20_000));
        assert_eq!((snap.top, snap.history.len(), snap.dedup.len()), (Offset(15), 10, 15));
        // Another node, another clock.
        let mut b = ChannelLog::restore(snap, a.history_policy, a.dedup_policy, Millis(500_000));
        assert_eq!(b.top(), a.top());
        assert_eq!(b.recover(at(7, 8), Millis(500_000)), Recovery::Recovered { replay: (9..=15).collect() });
        // A retry of a key sequenced before the handoff gets the original position.
        assert_eq!(push(&mut b, 500_000, Some("k3"), 3), Ok(Appended::Duplicate { position: at(7, 4) }));
        assert_eq!(push(&mut b, 500_000, None, 0), Ok(Appended::Fresh { position: at(7, 16), payload: 16 }));
        // History now holds 7..=16. Ages carry over: offset 7 was 14 s old at the snapshot,
        // so it expires 46 s after the restore, and offset 8 one second later.
        assert_eq!(b.page(Millis(545_999), None, 100).entries.first(), Some(&7));
        assert_eq!(b.page(Millis(546_000), None, 100).entries.first(), Some(&8));
    }

    #[test]
    fn a_corrupt_snapshot_keeps_only_its_contiguous_tail() {
        let snap = LogSnapshot {
            epoch: epoch(7),
            top: Offset(10),
            history: vec![
                (Offset(3), Duration::ZERO, 3),
                (Offset(9), Duration::ZERO, 9),
                (Offset(10), Duration::ZERO, 10),
            ],
            dedup: vec![],
            latest: vec![],
        };
        let l = ChannelLog::restore(
            snap,
            HistoryPolicy { size: 10, ttl: Duration::from_secs(60) },
            DedupPolicy::default(),
            Millis(0),
        );
        assert_eq!(l.history_len(), 2);
    }

    /// Found by the since_position fuzz target (fuzz/regressions/since_position/): an
    /// idempotency key in a handed-off snapshot naming an offset past `top` made a retry
    /// "acknowledge" a message that was never sequenced.
    #[test]
    fn a_snapshot_key_outside_the_sequenced_offsets_is_dropped() {
        let entry = |key: &str, e: u64, o: u64| crate::dedup::DedupEntry {
            key: key.into(),
            digest: 255,
            position: at(e, o),
            age: Duration::from_millis(255),
        };
        let snap = LogSnapshot {
            epoch: epoch(7),
            top: Offset(5),
            history: vec![],
            dedup: vec![entry("ahead", 7, u64::MAX), entry("zero", 7, 0), entry("other", 8, 3), entry("ok", 7, 5)],
            latest: vec![],
        };
        let policy = HistoryPolicy { size: 10, ttl: Duration::from_secs(60) };
        let mut l = ChannelLog::restore(snap, policy, DedupPolicy::default(), Millis(65_281));
        assert_eq!(push(&mut l, 65_281, Some("ok"), 255), Ok(Appended::Duplicate { position: at(7, 5) }));
        for (i, key) in ["ahead", "zero", "other"].into_iter().enumerate() {
            let fresh = Appended::Fresh { position: at(7, 6 + i as u64), payload: 6 + i as u64 };
            assert_eq!(push(&mut l, 65_281, Some(key), 255), Ok(fresh), "{key}");
        }
    }

    /// Found by the since_position fuzz target (fuzz/regressions/since_position/): a
    /// handed-off snapshot at the last offset made `append` hand that offset out again,
    /// and a reader one behind it "recover" without the message it missed.
    #[test]
    fn a_snapshot_at_the_last_offset_never_reuses_it_nor_skips_it_in_replay() {
        let top = Offset(u64::MAX);
        let policy = HistoryPolicy { size: 255, ttl: Duration::from_millis(65_536) };
        let snap = |history| LogSnapshot { epoch: epoch(u64::MAX), top, history, dedup: vec![], latest: vec![] };
        let full = snap(vec![(top, Duration::from_millis(65_535), u64::MAX)]);
        let mut l = ChannelLog::restore(full, policy, DedupPolicy::default(), Millis(1_055_255));
        assert_eq!(l.append(Millis(1_055_255), None, 0, |p| p.offset.0), Err(AppendError::OffsetsExhausted));
        assert_eq!(l.top().offset, top);
        let behind = StreamPosition { epoch: epoch(u64::MAX), offset: Offset(u64::MAX - 1) };
        assert_eq!(l.recover(behind, Millis(1_055_255)), Recovery::Recovered { replay: vec![u64::MAX] });
        // The message has expired: the reader cannot be brought up to date.
        let mut empty = ChannelLog::restore(snap(vec![]), policy, DedupPolicy::default(), Millis(0));
        assert!(matches!(
            empty.recover(behind, Millis(0)),
            Recovery::NotRecovered { reason: NotRecoveredReason::PositionExpired, .. }
        ));
    }

    proptest! {
        /// Model test: any mix of appends (with and without keys), waits, recoveries and
        /// pages keeps offsets gapless, history contiguous and replays complete.
        #[test]
        fn stream_invariants_hold(ops in proptest::collection::vec((0u8..4, 0u64..5, 0u64..3_000), 1..200)) {
            let mut l = log(16, 5);
            let mut now = 0u64;
            let mut sequenced = 0u64;
            for (op, k, dt) in ops {
                now += dt;
                match op {
                    0 | 1 => {
                        let key = (op == 1).then(|| format!("k{k}"));
                        match l.append(Millis(now), key.as_deref(), k, |p| p.offset.0) {
                            Ok(Appended::Fresh { position, .. }) => {
                                sequenced += 1;
                                prop_assert_eq!(position.offset, Offset(sequenced));
                            }
                            Ok(Appended::Duplicate { position }) => prop_assert!(position.offset.0 <= sequenced),
                            Err(AppendError::Conflict { .. }) => prop_assert!(false, "same digest per key"),
                            Err(AppendError::OffsetsExhausted) => prop_assert!(false, "a few appends from 0"),
                        }
                    }
                    2 => {
                        let since = at(7, k.min(sequenced));
                        if let Recovery::Recovered { replay } = l.recover(since, Millis(now)) {
                            let expect: Vec<u64> = (since.offset.0 + 1..=sequenced).collect();
                            prop_assert_eq!(replay, expect);
                        }
                    }
                    _ => {
                        let page = l.page(Millis(now), None, 1 + k as usize);
                        for w in page.entries.windows(2) {
                            prop_assert_eq!(w[0] + 1, w[1]);
                        }
                        if let Some(last) = page.entries.last() {
                            prop_assert_eq!(*last, sequenced);
                        }
                    }
                }
            }
        }
    }
}
