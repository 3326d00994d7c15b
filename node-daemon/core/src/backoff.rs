//! Exponential backoff with full jitter, without a clock or a random source of its own.
//!
//! After the `n`th failure in a row the wait is uniform in `0 ..= min(max, base * 2^n)`
//! ("full jitter"): retries that failed together (a fleet that lost its orchestrator, workloads
//! that lost the network) spread out instead of returning in lockstep, and the expected load
//! on whatever they retry against stays flat as they back off.
//!
//! [`Backoff`] only counts failures and turns a random draw into a delay. The caller supplies
//! the draw (any uniformly random `u64`: from a seeded generator in a state machine, so a
//! schedule is reproducible from its seed) and adds the delay to its own `now`. Nothing here
//! reads the clock or draws randomness.
//!
//! ```
//! # use node_core::backoff::{Backoff, BackoffPolicy};
//! # use std::time::Duration;
//! let mut backoff = Backoff::new(BackoffPolicy::default());
//! let mut rng = fastrand::Rng::with_seed(7);
//! let first = backoff.next_delay(rng.u64(..));
//! assert!(first <= Duration::from_millis(250));
//! backoff.reset(); // it worked: the next failure starts from `base` again
//! ```

use std::time::Duration;

/// How a [`Backoff`] grows: the ceiling starts at `base` and doubles with every failure in a
/// row, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    /// Reconnecting to a peer: 250 ms doubling to 30 s.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

/// Failures in a row, and the delay before the next attempt. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            failures: 0,
        }
    }

    /// Failures since the last [`reset`](Self::reset): how many delays were handed out.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The largest delay the next [`next_delay`](Self::next_delay) can return:
    /// `min(max, base * 2^failures)`.
    pub fn ceiling(&self) -> Duration {
        self.policy
            .base
            .checked_mul(1u32 << self.failures.min(31))
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// Another failure: the delay before the next attempt, uniform in `0 ..= ceiling()`, taken
    /// from `draw`, a uniformly random `u64`. The ceiling doubles for the next one.
    pub fn next_delay(&mut self, draw: u64) -> Duration {
        let delay = jitter(self.ceiling(), draw);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// It worked: the next failure waits at most `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A duration uniform in `0 ..= max` (to the nanosecond), taken from `draw`, a uniformly random
/// `u64`. For waits that are jittered but do not grow, e.g. `half + jitter(half, draw)`.
pub fn jitter(max: Duration, draw: u64) -> Duration {
    let span = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    // `draw * (span + 1) / 2^64`: scales the draw onto 0..=span without a division; the bias
    // is at most span / 2^64, far below a nanosecond's worth for any wait we use.
    let scaled = (u128::from(draw) * (u128::from(span) + 1)) >> 64;
    // Invariant: `draw < 2^64`, so `scaled <= span`, which fits.
    Duration::from_nanos(u64::try_from(scaled).unwrap_or(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        base: Duration::from_millis(500),
        max: Duration::from_secs(300),
    };

    #[test]
    fn the_ceiling_doubles_to_the_max_and_reset_starts_over() {
        let mut b = Backoff::new(POLICY);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(b.ceiling());
            b.next_delay(u64::MAX);
        }
        assert_eq!(ceilings[0], POLICY.base);
        assert_eq!(ceilings[1], POLICY.base * 2);
        assert_eq!(ceilings[9], Duration::from_millis(256_000));
        assert_eq!(ceilings[10], POLICY.max);
        assert_eq!(ceilings[11], POLICY.max);
        assert_eq!(b.failures(), 12);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.ceiling(), POLICY.base);
    }

    #[test]
    fn delays_span_zero_to_the_ceiling() {
        let mut b = Backoff::new(POLICY);
        assert_eq!(b.next_delay(0), Duration::ZERO);
        let mut b = Backoff::new(POLICY);
        assert_eq!(b.next_delay(u64::MAX), POLICY.base);
        let mut b = Backoff::new(POLICY);
        let half = b.next_delay(1 << 63);
        assert!(
            half.abs_diff(POLICY.base / 2) <= Duration::from_nanos(1),
            "{half:?}"
        );
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut b = Backoff::new(BackoffPolicy {
            base: Duration::from_secs(u64::MAX / 2),
            max: Duration::MAX,
        });
        for _ in 0..100 {
            b.next_delay(u64::MAX);
        }
        assert_eq!(b.ceiling(), Duration::MAX);
        assert_eq!(
            jitter(Duration::MAX, u64::MAX),
            Duration::from_nanos(u64::MAX)
        );
    }

    #[test]
    fn jitter_is_spread_over_the_whole_span() {
        let mut rng = fastrand::Rng::with_seed(1);
        let max = Duration::from_secs(10);
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let d = jitter(max, rng.u64(..));
            assert!(d <= max);
            buckets[usize::try_from(d.as_secs()).unwrap_or(9).min(9)] += 1;
        }
        // Uniform: about 1,000 a second; none empty or doubled.
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
    }
}
