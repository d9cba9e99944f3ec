//! Per-CPU counters the programs keep in the `COUNTERS` array, one row per detector.
//!
//! Index = `detector as u32 * COUNTERS_PER_DETECTOR + counter as u32`. The agent sums the
//! per-CPU values; nothing in the kernel ever resets them.

pub use crate::counters_registry::Detector;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// The hook ran and found something to report (before rate limiting).
    Hits = 0,
    /// Records written to the ring buffer.
    Submitted = 1,
    /// Records lost because the ring buffer was full.
    RingFull = 2,
    /// Events folded into a later record by the in-kernel rate limiter.
    RateLimited = 3,
}

impl Counter {
    pub const ALL: [Self; 4] = [
        Self::Hits,
        Self::Submitted,
        Self::RingFull,
        Self::RateLimited,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Hits => "hits",
            Self::Submitted => "submitted",
            Self::RingFull => "ring_full",
            Self::RateLimited => "rate_limited",
        }
    }
}

pub const COUNTERS_PER_DETECTOR: u32 = 4;
pub const COUNTER_SLOTS: u32 = Detector::ALL.len() as u32 * COUNTERS_PER_DETECTOR;

pub const fn counter_index(detector: Detector, counter: Counter) -> u32 {
    detector as u32 * COUNTERS_PER_DETECTOR + counter as u32
}
