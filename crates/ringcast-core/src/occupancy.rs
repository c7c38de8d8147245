//! Channel occupancy, as the channel's owner sees it, for the `channel_occupied` and
//! `channel_vacated` webhooks.
//!
//! A channel is occupied while at least one client anywhere in the cluster is
//! subscribed to it (pattern subscriptions do not count). The owner observes this after
//! every change it knows of (a local subscribe or unsubscribe, a node's interest coming
//! or going) and [`Occupancy`] turns the observations into events:
//! - the first subscriber after a vacancy is one `Occupied`, at once;
//! - the last subscriber leaving starts a grace period; a subscriber coming back within
//!   it (a page reload, a node's link flapping, a gateway re-subscribing after a
//!   handoff) cancels it silently, otherwise one `Vacated` follows when it ends.
//!
//! So events alternate strictly, starting with `Occupied`, and every `Vacated` means the
//! channel stayed empty for the whole grace. Time is an argument; nothing here does I/O.

use crate::time::Millis;
use std::time::Duration;

/// A channel's occupancy at its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Occupancy {
    /// Nobody is subscribed and the backend was told so (or never told otherwise).
    #[default]
    Vacant,
    /// Someone is subscribed and the backend was told so.
    Occupied,
    /// The last subscriber left at `since`; `Vacated` is due when the grace has passed.
    Vacating { since: Millis },
}

/// A change to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OccupancyEvent {
    Occupied,
    Vacated,
}

impl Occupancy {
    /// The state a new owner starts a channel in when it took the channel over from a
    /// crashed owner without its interest sets: assumed occupied, so clients that
    /// re-subscribe within the grace produce no event, and a channel nobody returns to
    /// is reported vacated once.
    #[must_use]
    pub fn after_failover(now: Millis) -> Occupancy {
        Occupancy::Vacating { since: now }
    }

    /// The state a new owner starts a handed-off channel in: what the old owner had
    /// reported (it flushed any pending vacancy before handing off), so nothing is
    /// reported twice.
    #[must_use]
    pub fn inherited(occupied: bool) -> Occupancy {
        if occupied {
            Occupancy::Occupied
        } else {
            Occupancy::Vacant
        }
    }

    /// Whether the backend was last told the channel is vacant (or never told
    /// otherwise) and nothing is pending: the channel's state may be forgotten. Its
    /// negation is what a new owner inherits (`Vacating` was reported occupied).
    #[must_use]
    pub fn is_vacant(self) -> bool {
        self == Occupancy::Vacant
    }

    /// Records whether the channel has subscribers `now`; returns the event to report.
    pub fn observe(&mut self, occupied: bool, now: Millis) -> Option<OccupancyEvent> {
        match (*self, occupied) {
            (Occupancy::Vacant, true) => {
                *self = Occupancy::Occupied;
                Some(OccupancyEvent::Occupied)
            }
            (Occupancy::Vacating { .. }, true) => {
                *self = Occupancy::Occupied;
                None
            }
            (Occupancy::Occupied, false) => {
                *self = Occupancy::Vacating { since: now };
                None
            }
            _ => None,
        }
    }

    /// `Vacated` when the grace that started with the last subscriber has passed.
    pub fn tick(&mut self, now: Millis, grace: Duration) -> Option<OccupancyEvent> {
        match *self {
            Occupancy::Vacating { since }
                if since.0.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)) <= now.0 =>
            {
                *self = Occupancy::Vacant;
                Some(OccupancyEvent::Vacated)
            }
            _ => None,
        }
    }

    /// The owner is handing the channel off: a pending vacancy is reported now (the new
    /// owner starts from [`Occupancy::inherited`]); returns it.
    pub fn flush(&mut self) -> Option<OccupancyEvent> {
        match *self {
            Occupancy::Vacating { .. } => {
                *self = Occupancy::Vacant;
                Some(OccupancyEvent::Vacated)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GRACE: Duration = Duration::from_secs(5);

    #[test]
    fn first_subscriber_occupies_and_the_last_vacates_after_the_grace() {
        let mut o = Occupancy::default();
        assert_eq!(o.observe(true, Millis(0)), Some(OccupancyEvent::Occupied));
        assert_eq!(o.observe(true, Millis(10)), None, "a second subscriber is no news");
        assert_eq!(o.observe(false, Millis(100)), None, "the grace starts");
        assert_eq!(o.tick(Millis(5_099), GRACE), None);
        assert_eq!(o.tick(Millis(5_100), GRACE), Some(OccupancyEvent::Vacated));
        assert_eq!(o.tick(Millis(9_000), GRACE), None, "once");
        assert!(o.is_vacant());
        assert_eq!(o.observe(true, Millis(10_000)), Some(OccupancyEvent::Occupied));
    }

    #[test]
    fn a_subscriber_back_within_the_grace_cancels_the_vacancy_silently() {
        let mut o = Occupancy::default();
        o.observe(true, Millis(0));
        o.observe(false, Millis(100));
        assert_eq!(o.observe(true, Millis(4_000)), None);
        assert_eq!(o.tick(Millis(60_000), GRACE), None);
        assert_eq!(o, Occupancy::Occupied);
    }

    #[test]
    fn a_handoff_flushes_a_pending_vacancy_and_the_new_owner_inherits() {
        let mut old = Occupancy::default();
        old.observe(true, Millis(0));
        old.observe(false, Millis(100));
        assert!(!old.is_vacant(), "still reported occupied while vacating");
        assert_eq!(old.flush(), Some(OccupancyEvent::Vacated));
        let mut new = Occupancy::inherited(!old.is_vacant());
        assert_eq!(new.observe(true, Millis(200)), Some(OccupancyEvent::Occupied));

        let mut old = Occupancy::default();
        old.observe(true, Millis(0));
        assert_eq!(old.flush(), None);
        let mut new = Occupancy::inherited(!old.is_vacant());
        assert_eq!(new.observe(true, Millis(200)), None, "the backend already knows");
    }

    #[test]
    fn after_a_failover_returning_subscribers_are_silent_and_absence_is_reported_once() {
        let mut o = Occupancy::after_failover(Millis(1_000));
        assert_eq!(o.observe(true, Millis(2_000)), None);
        let mut o = Occupancy::after_failover(Millis(1_000));
        assert_eq!(o.tick(Millis(6_000), GRACE), Some(OccupancyEvent::Vacated));
        assert_eq!(o.tick(Millis(12_000), GRACE), None);
    }

    proptest! {
        /// Whatever the observations and ticks, events alternate starting with
        /// `Occupied`, and every `Vacated` follows a full grace without subscribers.
        #[test]
        fn events_alternate_and_vacancies_last_a_full_grace(
            steps in proptest::collection::vec((any::<bool>(), 0u64..3_000, any::<bool>()), 1..200)
        ) {
            let mut o = Occupancy::default();
            let mut now = 0u64;
            let mut last = None;
            let mut empty_since: Option<u64> = None;
            for (occupied, advance, tick) in steps {
                now += advance;
                let event = if tick {
                    o.tick(Millis(now), GRACE)
                } else {
                    let e = o.observe(occupied, Millis(now));
                    empty_since = if occupied { None } else { empty_since.or(Some(now)) };
                    e
                };
                if let Some(e) = event {
                    prop_assert_ne!(Some(e), last, "events alternate");
                    if last.is_none() {
                        prop_assert_eq!(e, OccupancyEvent::Occupied);
                    }
                    if e == OccupancyEvent::Vacated {
                        let since = empty_since.unwrap_or(now);
                        prop_assert!(now - since >= 5_000, "vacated after {} ms empty", now - since);
                    }
                    last = Some(e);
                }
            }
        }
    }
}
