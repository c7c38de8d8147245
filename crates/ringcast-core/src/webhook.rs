//! The webhook outbox of one node: events waiting to be sent, the batch in flight and
//! what to do when a send fails. No I/O: the node's sender asks for a batch, posts it
//! and reports how that went.
//!
//! - Events are queued in the order the node produced them, bounded in count and bytes;
//!   an event beyond the bounds is refused (the caller counts it as dropped).
//! - One batch is in flight at a time, so the backend sees a node's events in order.
//!   A batch is retried unchanged (same events, same ids) until it is accepted, a
//!   permanent refusal comes back, or the next attempt would start more than
//!   `retry_for` after the first; then it is dead-lettered: dropped and counted.
//! - Retry delays are full-jitter exponential backoff ([`crate::backoff`]), the
//!   randomness passed in.

use crate::backoff::Backoff;
use crate::time::Millis;
use std::collections::VecDeque;
use std::time::Duration;

/// Bounds and retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchPolicy {
    /// Most events in one batch.
    pub batch_max: usize,
    /// Most bytes of events in one batch (a single larger event still goes alone).
    pub batch_max_bytes: usize,
    /// Most events waiting, the batch in flight included.
    pub max_pending: usize,
    /// Most bytes of events waiting, the batch in flight included.
    pub max_pending_bytes: usize,
    /// How long after its first attempt a batch may still be retried.
    pub retry_for: Duration,
    /// Delays between attempts.
    pub backoff: Backoff,
}

impl Default for DispatchPolicy {
    /// 100 events or 1 MiB per batch, 10,000 events or 16 MiB waiting, retries for
    /// 5 minutes with delays from 0.5 s doubling up to 30 s.
    fn default() -> Self {
        DispatchPolicy {
            batch_max: 100,
            batch_max_bytes: 1024 * 1024,
            max_pending: 10_000,
            max_pending_bytes: 16 * 1024 * 1024,
            retry_for: Duration::from_secs(300),
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(30),
                first: Duration::from_millis(500),
            },
        }
    }
}

/// What happens to a batch whose send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Send the same batch again after this delay.
    Retry { after: Duration, attempt: u32 },
    /// Given up: the batch's events are dropped.
    DeadLettered { events: usize },
}

#[derive(Debug)]
struct InFlight {
    events: Vec<Box<str>>,
    bytes: usize,
    first_attempt: Millis,
    attempts: u32,
}

/// A node's webhook events on their way out.
#[derive(Debug)]
pub struct Dispatch {
    policy: DispatchPolicy,
    queue: VecDeque<Box<str>>,
    queued_bytes: usize,
    in_flight: Option<InFlight>,
}

impl Dispatch {
    #[must_use]
    pub fn new(policy: DispatchPolicy) -> Dispatch {
        Dispatch { policy, queue: VecDeque::new(), queued_bytes: 0, in_flight: None }
    }

    /// Queues an encoded event; `false` when the bounds refuse it.
    pub fn push(&mut self, event: Box<str>) -> bool {
        let (events, bytes) = self.pending();
        if events >= self.policy.max_pending || bytes.saturating_add(event.len()) > self.policy.max_pending_bytes {
            return false;
        }
        self.queued_bytes += event.len();
        self.queue.push_back(event);
        true
    }

    /// Events and bytes waiting, the batch in flight included.
    #[must_use]
    pub fn pending(&self) -> (usize, usize) {
        let (n, b) = self.in_flight.as_ref().map_or((0, 0), |f| (f.events.len(), f.bytes));
        (self.queue.len() + n, self.queued_bytes + b)
    }

    /// Events queued behind the batch in flight.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether a batch was sent and has not been delivered or given up yet.
    #[must_use]
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The batch to send now: the one in flight, or a new one taken from the queue
    /// (first attempt at `now`). `None` when nothing waits. Also returns the attempt
    /// number, from 1.
    pub fn batch(&mut self, now: Millis) -> Option<(&[Box<str>], u32)> {
        if self.in_flight.is_none() {
            let mut events = Vec::new();
            let mut bytes = 0usize;
            while let Some(next) = self.queue.front() {
                let fits = bytes.saturating_add(next.len()) <= self.policy.batch_max_bytes;
                if events.len() >= self.policy.batch_max || (!events.is_empty() && !fits) {
                    break;
                }
                let Some(e) = self.queue.pop_front() else { break };
                bytes += e.len();
                self.queued_bytes -= e.len();
                events.push(e);
            }
            if events.is_empty() {
                return None;
            }
            self.in_flight = Some(InFlight { events, bytes, first_attempt: now, attempts: 0 });
        }
        let f = self.in_flight.as_mut()?;
        f.attempts += 1;
        Some((&f.events, f.attempts))
    }

    /// The batch in flight was accepted; returns how many events it held.
    pub fn delivered(&mut self) -> usize {
        self.in_flight.take().map_or(0, |f| f.events.len())
    }

    /// The batch in flight failed at `now`: retried after a backoff while that stays
    /// within `retry_for` of its first attempt, otherwise (or at once when `permanent`)
    /// dead-lettered. `random` is uniformly random.
    pub fn failed(&mut self, now: Millis, permanent: bool, random: u64) -> AfterFailure {
        let Some(f) = self.in_flight.as_ref() else { return AfterFailure::DeadLettered { events: 0 } };
        let after = self.policy.backoff.delay(f.attempts, random);
        let deadline =
            f.first_attempt.0.saturating_add(u64::try_from(self.policy.retry_for.as_millis()).unwrap_or(u64::MAX));
        let next = now.0.saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        if permanent || next > deadline {
            let events = self.in_flight.take().map_or(0, |f| f.events.len());
            return AfterFailure::DeadLettered { events };
        }
        AfterFailure::Retry { after, attempt: f.attempts + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(s: &str) -> Box<str> {
        s.into()
    }

    fn policy() -> DispatchPolicy {
        DispatchPolicy {
            batch_max: 3,
            batch_max_bytes: 10,
            max_pending: 5,
            max_pending_bytes: 20,
            retry_for: Duration::from_secs(10),
            backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(4),
                first: Duration::from_secs(1),
            },
        }
    }

    #[test]
    fn batches_take_events_in_order_within_both_bounds() {
        let mut d = Dispatch::new(policy());
        for e in ["a", "bb", "ccc", "dddd"] {
            assert!(d.push(ev(e)));
        }
        let (batch, attempt) = d.batch(Millis(0)).expect("test value");
        assert_eq!((batch.to_vec(), attempt), (vec![ev("a"), ev("bb"), ev("ccc")], 1));
        assert_eq!(d.delivered(), 3);
        assert!(d.push(ev("0123456789ab")), "one event larger than a batch still goes, alone");
        assert_eq!(d.batch(Millis(1)).expect("test value").0.to_vec(), vec![ev("dddd")], "10 bytes at most");
        d.delivered();
        assert_eq!(d.batch(Millis(2)).expect("test value").0.to_vec(), vec![ev("0123456789ab")]);
        d.delivered();
        assert!(d.batch(Millis(3)).is_none());
    }

    #[test]
    fn pending_bounds_count_the_batch_in_flight() {
        let mut d = Dispatch::new(policy());
        for _ in 0..5 {
            assert!(d.push(ev("x")));
        }
        assert!(!d.push(ev("x")), "5 events at most");
        d.batch(Millis(0));
        assert!(!d.push(ev("x")), "the batch in flight still counts");
        d.delivered();
        assert!(d.push(ev("0123456789")) && !d.push(ev("0123456789")), "20 bytes at most");
        assert_eq!(d.pending(), (3, 12));
    }

    #[test]
    fn a_failed_batch_is_retried_unchanged_then_dead_lettered() {
        let mut d = Dispatch::new(policy());
        d.push(ev("a"));
        d.push(ev("b"));
        assert_eq!(d.batch(Millis(0)).map(|(b, n)| (b.len(), n)), Some((2, 1)));
        d.push(ev("c"));
        let mut now = 0;
        let mut attempts = 1;
        loop {
            match d.failed(Millis(now), false, u64::MAX) {
                AfterFailure::Retry { after, attempt } => {
                    assert!(after <= Duration::from_secs(4));
                    now += u64::try_from(after.as_millis()).expect("test value");
                    let (batch, n) = d.batch(Millis(now)).expect("test value");
                    assert_eq!((batch.to_vec(), n), (vec![ev("a"), ev("b")], attempt), "the same batch");
                    attempts = n;
                }
                AfterFailure::DeadLettered { events } => {
                    assert_eq!(events, 2);
                    break;
                }
            }
        }
        assert!(now <= 10_000, "no attempt starts after retry_for");
        assert!(attempts >= 3);
        assert_eq!(d.batch(Millis(now)).expect("test value").0.to_vec(), vec![ev("c")], "the next batch goes on");
        assert_eq!(d.failed(Millis(now), true, 0), AfterFailure::DeadLettered { events: 1 }, "permanent");
        assert_eq!(d.pending(), (0, 0));
    }

    proptest! {
        /// Every pushed event accepted by the bounds is either delivered or dead-lettered
        /// exactly once, in push order.
        #[test]
        fn every_event_ends_once_in_order(ops in proptest::collection::vec((0u8..4, any::<u64>()), 1..300)) {
            let mut d = Dispatch::new(policy());
            let (mut next, mut accepted, mut done) = (0u64, Vec::new(), Vec::new());
            let mut now = 0u64;
            let mut sending: Vec<Box<str>> = Vec::new();
            for (op, r) in ops {
                now += r % 3_000;
                match op {
                    0 => {
                        let e: Box<str> = next.to_string().into();
                        next += 1;
                        if d.push(e.clone()) {
                            accepted.push(e);
                        }
                    }
                    1 => {
                        if let Some((b, _)) = d.batch(Millis(now)) {
                            sending = b.to_vec();
                        }
                    }
                    2 => {
                        if d.delivered() > 0 {
                            done.append(&mut sending);
                        }
                    }
                    _ => {
                        if !sending.is_empty() {
                            if let AfterFailure::DeadLettered { events } = d.failed(Millis(now), r % 5 == 0, r) {
                                prop_assert_eq!(events, sending.len());
                                done.append(&mut sending);
                            }
                        }
                    }
                }
            }
            prop_assert!(accepted.starts_with(&done));
        }
    }
}
