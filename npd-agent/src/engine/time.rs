//! The engine's notion of now, passed in by the caller: it never reads a clock itself, so
//! tests drive it through any timeline.

use std::time::{Duration, SystemTime};

use crate::clock;

/// One moment on both clocks. Windows and holds are measured on the monotonic clock (the one
/// kernel timestamps use, immune to wall-clock steps); transition and event times are
/// reported on the wall clock (what Kubernetes shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// CLOCK_MONOTONIC nanoseconds, comparable with `Event::ts_ns`.
    pub monotonic_ns: u64,
    pub wall: SystemTime,
}

impl Timestamp {
    pub fn new(monotonic_ns: u64, wall: SystemTime) -> Self {
        Self { monotonic_ns, wall }
    }

    /// Reads both clocks. For the caller; the engine only uses the timestamps it is given.
    pub fn now() -> Self {
        Self {
            monotonic_ns: clock::monotonic_ns(),
            wall: SystemTime::now(),
        }
    }

    /// This moment plus `elapsed` on both clocks.
    pub fn after(self, elapsed: Duration) -> Self {
        Self {
            monotonic_ns: self.monotonic_ns.saturating_add(duration_ns(elapsed)),
            wall: self.wall + elapsed,
        }
    }

    /// The wall-clock time of a kernel timestamp, by this moment's pair of readings.
    pub fn wall_at(self, monotonic_ns: u64) -> SystemTime {
        if monotonic_ns <= self.monotonic_ns {
            self.wall - Duration::from_nanos(self.monotonic_ns - monotonic_ns)
        } else {
            self.wall + Duration::from_nanos(monotonic_ns - self.monotonic_ns)
        }
    }

    /// Time elapsed since an earlier monotonic reading (zero if it is not earlier).
    pub(crate) fn since(self, earlier_ns: u64) -> Duration {
        Duration::from_nanos(self.monotonic_ns.saturating_sub(earlier_ns))
    }
}

pub(crate) fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A short human duration for messages: `5m`, `1m30s`, `2h`, `750ms`.
pub(crate) fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn wall_at_maps_kernel_timestamps_both_ways() {
        let now = Timestamp::new(10_000_000_000, UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(
            now.wall_at(4_000_000_000),
            UNIX_EPOCH + Duration::from_secs(994)
        );
        assert_eq!(
            now.wall_at(12_500_000_000),
            UNIX_EPOCH + Duration::from_millis(1_002_500)
        );
        assert_eq!(now.since(4_000_000_000), Duration::from_secs(6));
        assert_eq!(now.since(20_000_000_000), Duration::ZERO);
        let later = now.after(Duration::from_secs(5));
        assert_eq!(later.monotonic_ns, 15_000_000_000);
        assert_eq!(later.wall, UNIX_EPOCH + Duration::from_secs(1005));
    }

    #[test]
    fn human_durations() {
        for (duration, expected) in [
            (Duration::from_millis(750), "750ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(3661), "1h1m1s"),
        ] {
            assert_eq!(human_duration(duration), expected, "{duration:?}");
        }
    }
}
