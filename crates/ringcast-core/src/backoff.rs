//! Reconnect delays: full-jitter exponential backoff (the AWS architecture blog's
//! "full jitter"), with the randomness passed in so it is deterministic under test.
//!
//! Attempt 0 (the first reconnect after a connection was lost) waits a uniformly random
//! time in `[0, first)`, so a node's clients do not all come back in the same instant;
//! attempt `n >= 1` waits a uniformly random time in `[0, min(cap, base * 2^n))`.

use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub first: Duration,
}

impl Default for Backoff {
    /// Base 0.5 s, cap 8 s, first reconnect spread over 2 s.
    fn default() -> Self {
        Backoff { base: Duration::from_millis(500), cap: Duration::from_secs(8), first: Duration::from_secs(2) }
    }
}

impl Backoff {
    /// The upper bound of the delay before reconnect `attempt`.
    #[must_use]
    pub fn window(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return self.first.min(self.cap);
        }
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.cap).min(self.cap)
    }

    /// The delay before reconnect `attempt`, from a uniformly random `random`.
    #[must_use]
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let window = u64::try_from(self.window(attempt).as_millis()).unwrap_or(u64::MAX);
        if window == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(random % window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_grow_exponentially_to_the_cap() {
        let b = Backoff::default();
        let ms = |a| b.window(a).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3), ms(4), ms(5), ms(40)], [2000, 1000, 2000, 4000, 8000, 8000, 8000]);
        let zero = Backoff { base: Duration::ZERO, cap: Duration::ZERO, first: Duration::ZERO };
        assert_eq!(zero.delay(3, 12345), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn a_delay_is_always_inside_its_window(attempt in 0u32..100, random in any::<u64>()) {
            let b = Backoff::default();
            prop_assert!(b.delay(attempt, random) < b.window(attempt));
        }
    }
}
