//! Ordered delivery at a subscriber node.
//!
//! A node with local subscribers on a channel owned elsewhere keeps a [`Mirror`]: the
//! position it has delivered up to. Messages from the owner usually arrive in order on
//! one stream, but not always: after a handoff or a reconnect the old and new owner's
//! streams can interleave, and a re-subscription replays what may already have arrived.
//! The mirror turns whatever arrives into exactly-once, in-order delivery:
//! - an offset at or below the position is a duplicate and is dropped;
//! - the next offset is delivered, followed by any buffered successors;
//! - a later offset is buffered (bounded) and opens a gap; if the gap is still open
//!   after a patience period, [`Mirror::fill_due`] says which range to fetch from the
//!   owner's history, and [`Mirror::offer`] takes the fetched messages like any other.
//!
//! A message in another epoch means the owner's stream restarted (state was lost): the
//! mirror reports it and the caller re-bases, telling subscribers through the epoch.
//!
//! Two more inputs keep a mirror live when the stream itself goes quiet or loses more
//! than history holds:
//! - [`Mirror::expect`]: the owner says its stream reaches some offset (after a
//!   re-subscription, for example). Anything beyond the position opens a gap that is
//!   filled like any other, even if no later message ever arrives.
//! - [`Mirror::skip_to`]: a fill found that the owner's history no longer holds part of
//!   a gap. The mirror gives those offsets up and reports the range, so the caller can
//!   tell its subscribers (`gap`) instead of waiting forever.

use crate::position::{Epoch, Offset, StreamPosition};
use crate::time::Millis;
use std::collections::BTreeMap;
use std::time::Duration;

/// Most out-of-order messages a mirror buffers while it waits for a gap to fill.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// What happened to an offered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Delivered now (with any buffered successors).
    Delivered,
    /// Already delivered or already buffered: dropped.
    Duplicate,
    /// Buffered behind a gap starting after the current position.
    Buffered,
    /// The gap buffer is full: the message was dropped; a fill will bring it back.
    Overflow,
    /// The message belongs to another epoch: the stream restarted. Nothing was done.
    EpochChanged,
}

/// A range of messages to fetch: everything after `after` and before `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub after: Offset,
    /// The first buffered offset (fetch up to it, exclusive).
    pub before: Offset,
}

/// The delivery position of one channel at one subscriber node.
#[derive(Debug)]
pub struct Mirror<P> {
    epoch: Epoch,
    last: Offset,
    pending: BTreeMap<Offset, P>,
    gap_since: Option<Millis>,
    /// The highest offset the owner said its stream reached (see [`Mirror::expect`]).
    expected: Offset,
    max_pending: usize,
}

impl<P> Mirror<P> {
    /// A mirror that has delivered everything up to `position`.
    #[must_use]
    pub fn new(position: StreamPosition, max_pending: usize) -> Mirror<P> {
        Mirror {
            epoch: position.epoch,
            last: position.offset,
            pending: BTreeMap::new(),
            gap_since: None,
            expected: position.offset,
            max_pending,
        }
    }

    #[must_use]
    pub fn position(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch, offset: self.last }
    }

    /// Takes a message; appends what became deliverable, in order, to `out`.
    pub fn offer(
        &mut self,
        epoch: Epoch,
        offset: Offset,
        payload: P,
        now: Millis,
        out: &mut Vec<(Offset, P)>,
    ) -> Offer {
        if epoch != self.epoch {
            return Offer::EpochChanged;
        }
        if offset <= self.last || self.pending.contains_key(&offset) {
            return Offer::Duplicate;
        }
        if offset != self.last.next() {
            if self.pending.len() >= self.max_pending {
                return Offer::Overflow;
            }
            self.pending.insert(offset, payload);
            self.gap_since.get_or_insert(now);
            return Offer::Buffered;
        }
        out.push((offset, payload));
        self.last = offset;
        self.drain_ready(out);
        self.gap_since = self.has_gap().then_some(now);
        Offer::Delivered
    }

    /// Moves buffered successors of the position to `out`.
    fn drain_ready(&mut self, out: &mut Vec<(Offset, P)>) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.last.next() {
                break;
            }
            self.last = *entry.key();
            out.push((self.last, entry.remove()));
        }
    }

    fn has_gap(&self) -> bool {
        !self.pending.is_empty() || self.expected > self.last
    }

    /// The owner's stream reaches `top` (in `epoch`): offsets past the position up to it
    /// are a gap to fill, even if no later message arrives. Ignored for another epoch.
    pub fn expect(&mut self, epoch: Epoch, top: Offset, now: Millis) {
        if epoch != self.epoch || top <= self.expected {
            return;
        }
        self.expected = top;
        if self.gap_since.is_none() && self.has_gap() {
            self.gap_since = Some(now);
        }
    }

    /// Gives up on every offset up to `offset` (the owner's history no longer holds
    /// them): the position moves there, buffered messages at or below it are dropped
    /// with the rest of the range, and buffered successors are delivered to `out`.
    /// Returns the range given up, or `None` when everything up to `offset` was
    /// delivered already.
    pub fn skip_to(&mut self, offset: Offset, now: Millis, out: &mut Vec<(Offset, P)>) -> Option<(Offset, Offset)> {
        if offset <= self.last {
            return None;
        }
        let skipped = (self.last.next(), offset);
        self.last = offset;
        self.expected = self.expected.max(offset);
        self.pending.retain(|o, _| *o > offset);
        self.drain_ready(out);
        self.gap_since = self.has_gap().then_some(now);
        Some(skipped)
    }

    /// The range to fetch when a gap has stayed open for `patience`. Restarts the
    /// patience clock, so a lost fill is asked again later rather than in a loop.
    pub fn fill_due(&mut self, now: Millis, patience: Duration) -> Option<Fill> {
        let since = self.gap_since?;
        if now.since(since) < patience {
            return None;
        }
        let before = match self.pending.keys().next() {
            Some(first) => *first,
            None if self.expected > self.last => self.expected.next(),
            None => return None,
        };
        self.gap_since = Some(now);
        Some(Fill { after: self.last, before })
    }

    /// Starts over in a new stream: what is buffered belonged to the old one.
    pub fn rebase(&mut self, position: StreamPosition) {
        self.epoch = position.epoch;
        self.last = position.offset;
        self.expected = position.offset;
        self.pending.clear();
        self.gap_since = None;
    }

    /// Messages buffered behind a gap.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(n: u64) -> Epoch {
        Epoch::new(n).unwrap_or_else(|| unreachable!())
    }

    fn pos(o: u64) -> StreamPosition {
        StreamPosition { epoch: e(1), offset: Offset(o) }
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut m: Mirror<u64> = Mirror::new(pos(10), 100);
        let mut out = Vec::new();
        assert_eq!(m.offer(e(1), Offset(11), 11, Millis(0), &mut out), Offer::Delivered);
        assert_eq!(m.offer(e(1), Offset(11), 11, Millis(0), &mut out), Offer::Duplicate);
        assert_eq!(m.offer(e(1), Offset(9), 9, Millis(0), &mut out), Offer::Duplicate);
        assert_eq!(m.offer(e(1), Offset(14), 14, Millis(0), &mut out), Offer::Buffered);
        assert_eq!(m.offer(e(1), Offset(13), 13, Millis(5), &mut out), Offer::Buffered);
        assert_eq!(m.fill_due(Millis(100), Duration::from_millis(200)), None);
        assert_eq!(
            m.fill_due(Millis(200), Duration::from_millis(200)),
            Some(Fill { after: Offset(11), before: Offset(13) })
        );
        assert_eq!(m.fill_due(Millis(201), Duration::from_millis(200)), None, "not asked again at once");
        assert_eq!(m.offer(e(1), Offset(12), 12, Millis(300), &mut out), Offer::Delivered);
        assert_eq!(
            out.iter().map(|(o, p)| (o.0, *p)).collect::<Vec<_>>(),
            vec![(11, 11), (12, 12), (13, 13), (14, 14)]
        );
        assert_eq!(m.position(), pos(14));
        assert_eq!(m.offer(e(2), Offset(1), 1, Millis(0), &mut out), Offer::EpochChanged);
        m.rebase(StreamPosition { epoch: e(2), offset: Offset(0) });
        assert_eq!(m.offer(e(2), Offset(1), 1, Millis(0), &mut out), Offer::Delivered);
    }

    #[test]
    fn the_gap_buffer_is_bounded() {
        let mut m: Mirror<u64> = Mirror::new(pos(0), 2);
        let mut out = Vec::new();
        assert_eq!(m.offer(e(1), Offset(3), 3, Millis(0), &mut out), Offer::Buffered);
        assert_eq!(m.offer(e(1), Offset(4), 4, Millis(0), &mut out), Offer::Buffered);
        assert_eq!(m.offer(e(1), Offset(5), 5, Millis(0), &mut out), Offer::Overflow);
        assert_eq!(m.pending(), 2);
    }

    #[test]
    fn an_expected_top_opens_a_gap_without_any_later_message() {
        let mut m: Mirror<u64> = Mirror::new(pos(10), 100);
        let mut out = Vec::new();
        m.expect(e(2), Offset(50), Millis(0));
        assert_eq!(m.fill_due(Millis(1_000), Duration::from_millis(1)), None, "another epoch is ignored");
        m.expect(e(1), Offset(10), Millis(0));
        assert_eq!(m.fill_due(Millis(1_000), Duration::from_millis(1)), None, "nothing beyond the position");
        m.expect(e(1), Offset(13), Millis(0));
        assert_eq!(m.fill_due(Millis(1), Duration::from_millis(5)), None, "patience first");
        assert_eq!(
            m.fill_due(Millis(5), Duration::from_millis(5)),
            Some(Fill { after: Offset(10), before: Offset(14) })
        );
        for o in 11..=13 {
            m.offer(e(1), Offset(o), o, Millis(6), &mut out);
        }
        assert_eq!(m.fill_due(Millis(100), Duration::from_millis(5)), None, "the gap closed");
        assert_eq!(m.position(), pos(13));
    }

    #[test]
    fn skipping_reports_the_lost_range_and_delivers_what_follows() {
        let mut m: Mirror<u64> = Mirror::new(pos(10), 100);
        let mut out = Vec::new();
        m.offer(e(1), Offset(12), 12, Millis(0), &mut out);
        m.offer(e(1), Offset(21), 21, Millis(0), &mut out);
        m.offer(e(1), Offset(22), 22, Millis(0), &mut out);
        assert!(out.is_empty());
        assert_eq!(m.skip_to(Offset(20), Millis(1), &mut out), Some((Offset(11), Offset(20))));
        assert_eq!(out.iter().map(|(o, _)| o.0).collect::<Vec<_>>(), vec![21, 22]);
        assert_eq!(m.position(), pos(22));
        assert_eq!(m.skip_to(Offset(5), Millis(1), &mut out), None, "already past");
        assert_eq!(m.fill_due(Millis(100), Duration::from_millis(1)), None);
    }

    proptest! {
        /// Whatever order and however many copies arrive, each offset is delivered
        /// exactly once, in order.
        #[test]
        fn any_arrival_order_delivers_exactly_once_in_order(
            order in Just((1u64..=60).collect::<Vec<_>>()).prop_shuffle(),
            dups in proptest::collection::vec(1u64..=60, 0..40),
        ) {
            let mut m: Mirror<u64> = Mirror::new(pos(0), 1000);
            let mut out = Vec::new();
            for o in order.iter().chain(dups.iter()) {
                m.offer(e(1), Offset(*o), *o, Millis(0), &mut out);
            }
            prop_assert!(out.iter().all(|(o, p)| o.0 == *p));
            prop_assert_eq!(out.into_iter().map(|(_, p)| p).collect::<Vec<u64>>(), (1..=60).collect::<Vec<u64>>());
        }
    }
}
