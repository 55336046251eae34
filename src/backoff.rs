//! Retry delays that grow up to a cap with *decorrelated jitter*, so replicas
//! that lost the same database at the same instant do not all knock on it
//! again at the same instant when it recovers.
//!
//! Each delay is drawn uniformly between the base and three times the
//! previous delay, then capped ("Exponential Backoff and Jitter", AWS
//! Architecture Blog, 2015): it grows about as fast as doubling, never drops
//! below the base, and two retriers drift apart after the first attempt.
//!
//! ```
//! use std::time::Duration;
//! use okr_exporter::backoff::Backoff;
//!
//! let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
//! let first = backoff.next_delay();
//! assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(750));
//! backoff.reset(); // after a success
//! ```

use std::time::Duration;

use rand::Rng;

/// A retry schedule: call [`next_delay`](Self::next_delay) after each
/// failure and [`reset`](Self::reset) after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    previous: Duration,
}

impl Backoff {
    /// Delays of at least `base` (or `cap`, if smaller) and at most `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        let base = base.min(cap);
        Self {
            base,
            cap,
            previous: base,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let high = self.previous.saturating_mul(3).min(self.cap);
        let delay = if high > self.base {
            rand::rng().random_range(self.base..=high)
        } else {
            self.base
        };
        self.previous = delay;
        delay
    }

    /// Starts over from the base delay.
    pub fn reset(&mut self) {
        self.previous = self.base;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const BASE: Duration = Duration::from_millis(250);
    const CAP: Duration = Duration::from_secs(30);

    #[test]
    fn delays_stay_within_the_base_the_cap_and_three_times_the_previous() {
        for _ in 0..200 {
            let mut b = Backoff::new(BASE, CAP);
            let mut previous = BASE;
            for _ in 0..40 {
                let d = b.next_delay();
                assert!(d >= BASE, "{d:?} below the base");
                assert!(d <= CAP, "{d:?} above the cap");
                assert!(d <= previous * 3, "{d:?} more than 3 × {previous:?}");
                previous = d;
            }
        }
    }

    #[test]
    fn delays_vary_between_retriers_and_reach_the_cap_region() {
        // Two replicas failing together: their first delays, drawn from
        // [250 ms, 750 ms], differ almost always.
        let firsts: BTreeSet<Duration> = (0..100)
            .map(|_| Backoff::new(BASE, CAP).next_delay())
            .collect();
        assert!(
            firsts.len() > 50,
            "only {} distinct first delays",
            firsts.len()
        );
        // After many failures the delays sit in the upper part of the range
        // but still vary (not all equal to the cap).
        let mut b = Backoff::new(BASE, CAP);
        let late: Vec<Duration> = (0..200).map(|_| b.next_delay()).skip(100).collect();
        let distinct: BTreeSet<_> = late.iter().collect();
        assert!(distinct.len() > 10, "late delays barely vary: {late:?}");
        assert!(late.iter().any(|d| *d > CAP / 2), "never grew: {late:?}");
    }

    #[test]
    fn reset_starts_over_and_a_cap_below_the_base_wins() {
        let mut b = Backoff::new(BASE, CAP);
        for _ in 0..50 {
            b.next_delay();
        }
        b.reset();
        let d = b.next_delay();
        assert!(d >= BASE && d <= BASE * 3, "{d:?} after reset");

        let mut tiny = Backoff::new(Duration::from_secs(1), Duration::from_millis(100));
        for _ in 0..10 {
            assert_eq!(tiny.next_delay(), Duration::from_millis(100));
        }
    }
}
