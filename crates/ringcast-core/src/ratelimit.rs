//! Token buckets on an injected clock, for command, handshake and publish rates.

use crate::time::Millis;

/// A token bucket: `burst` tokens, refilled at `per_second`. Time is an argument.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: u32,
    burst: u32,
    /// Tokens scaled by 1000 so refills of a fraction of a token are not lost.
    milli_tokens: u64,
    last: Millis,
}

impl TokenBucket {
    /// A full bucket. A `per_second` of 0 disables the limit.
    #[must_use]
    pub fn new(per_second: u32, burst: u32, now: Millis) -> TokenBucket {
        let burst = burst.max(1);
        TokenBucket { per_second, burst, milli_tokens: u64::from(burst) * 1000, last: now }
    }

    /// Takes one token if available.
    pub fn try_take(&mut self, now: Millis) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let elapsed = now.0.saturating_sub(self.last.0);
        self.last = self.last.max(now);
        let cap = u64::from(self.burst) * 1000;
        self.milli_tokens = (self.milli_tokens + elapsed * u64::from(self.per_second)).min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_burst_then_refills_at_rate() {
        let mut b = TokenBucket::new(10, 5, Millis(0));
        assert_eq!((0..20).filter(|_| b.try_take(Millis(0))).count(), 5);
        // 10/s: one token per 100 ms.
        assert!(!b.try_take(Millis(99)));
        assert!(b.try_take(Millis(100)));
        assert!(!b.try_take(Millis(150)));
        // A long pause refills only up to the burst.
        assert_eq!((0..20).filter(|_| b.try_take(Millis(100_000))).count(), 5);
        // Time going backwards is ignored, not a panic and not a refill.
        assert!(!b.try_take(Millis(50)));
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let mut b = TokenBucket::new(0, 1, Millis(0));
        assert!((0..1000).all(|_| b.try_take(Millis(0))));
    }
}
