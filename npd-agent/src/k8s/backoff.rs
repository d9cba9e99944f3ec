//! Exponential backoff with jitter, for API calls that failed transiently: many nodes losing
//! the API server at once must not come back in lockstep.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        // Per-process seed: pid and start time, enough to spread a fleet.
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        Self {
            initial,
            max,
            failures: 0,
            seed: seed | 1,
        }
    }

    /// The wait before the next attempt after one more failure: initial * 2^failures, capped,
    /// then scaled by a random factor in [0.5, 1.0] ("equal jitter").
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << self.failures.min(16));
        let capped = exp.min(self.max);
        self.failures = self.failures.saturating_add(1);
        // xorshift64*
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        let random = self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        let fraction = 0.5 + (random as f64 / (1u64 << 53) as f64) * 0.5;
        capped.mul_f64(fraction)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        for (i, delay) in delays.iter().enumerate() {
            let ceiling = Duration::from_secs(1u64 << i).min(Duration::from_secs(60));
            assert!(*delay <= ceiling && *delay >= ceiling / 2, "{i}: {delay:?}");
        }
        assert_eq!(backoff.failures(), 10);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_secs(1));
    }
}
