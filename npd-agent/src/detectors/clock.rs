//! Clock synchronisation from the kernel's own state (`adjtimex`), whatever NTP daemon runs
//! (chrony, ntpd, systemd-timesyncd, a cloud agent) or none: NPD's `NTPProblem` condition.
//!
//! The kernel says the clock is unsynchronized (`TIME_ERROR`) while `STA_UNSYNC` is set (no
//! daemon has disciplined it, or one gave up) or its maximum error has grown past 16 s. npd
//! asks once at start and then every [`PERIOD_NS`]: one syscall, no file, no daemon.

use aya::Ebpf;
use serde::Serialize;

use super::{AttachContext, Attached, Detector, DetectorStatus, Sampled, Sampler};
use crate::{
    event::{Event, Source, Task},
    finding,
    metrics::{Level, LevelMetric},
    problem::{Assessment, Change, Clearing, ConditionSpec, ConditionType, EventReason, Report},
};

/// NPD's `NTPProblem` (its plugin asks systemd about ntp; npd asks the kernel).
pub const NTP_PROBLEM: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "ntpProblem",
    type_name: "NTPProblem",
    problem_reason: "NTPIsDown",
    healthy_reason: "NTPIsUp",
    healthy_message: "the kernel's clock is synchronized",
    detector: "clock",
    clearing: Clearing::Keyed,
});

/// An Event when the clock loses synchronisation (repeats join its series).
pub const CLOCK_UNSYNCHRONIZED: EventReason = EventReason::warning("ClockUnsynchronized");

/// How often the kernel is asked.
pub const PERIOD_NS: u64 = 10_000_000_000;

/// The condition's key (one clock per node).
const KEY: &str = "clock";

#[derive(Debug)]
pub struct ClockDetector;

pub static DETECTOR: ClockDetector = ClockDetector;

impl Detector for ClockDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        None
    }

    fn name(&self) -> &'static str {
        "clock"
    }

    fn about(&self) -> &'static str {
        "clock synchronisation from the kernel's adjtimex state -> NTPProblem"
    }

    fn conditions(&self) -> &'static [ConditionType] {
        &[NTP_PROBLEM]
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[CLOCK_UNSYNCHRONIZED]
    }

    fn attach(&self, _ebpf: &mut Ebpf, _ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        let first = ClockState::read();
        status.tried(
            Source::Sampled,
            "adjtimex(2), every 10 s",
            first.as_ref().map(|_| ()).map_err(ToString::to_string),
        );
        Attached {
            status,
            runtime: Sampled::boxed(ClockRuntime { last: None }, PERIOD_NS),
        }
    }
}

/// What the kernel says about its clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClockState {
    /// `adjtimex`'s return: `TIME_ERROR` (5) when unsynchronized.
    pub state: i32,
    /// `STA_UNSYNC` is set.
    pub unsync_flag: bool,
    /// Maximum and estimated error, microseconds.
    pub maxerror_us: i64,
    pub esterror_us: i64,
    /// The last offset the NTP daemon measured (microseconds; nanoseconds under `STA_NANO`,
    /// converted).
    pub offset_us: i64,
}

impl ClockState {
    pub fn read() -> std::io::Result<Self> {
        // SAFETY: an all-zero timex is valid input; modes 0 only reads.
        let mut timex: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: `timex` is a valid, exclusively borrowed timex for the call.
        let state = unsafe { libc::adjtimex(&raw mut timex) };
        if state < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let offset_us = if timex.status & libc::STA_NANO != 0 {
            timex.offset / 1000
        } else {
            timex.offset
        };
        Ok(Self {
            state,
            unsync_flag: timex.status & libc::STA_UNSYNC != 0,
            maxerror_us: timex.maxerror,
            esterror_us: timex.esterror,
            offset_us,
        })
    }

    pub fn synchronized(self) -> bool {
        self.state != libc::TIME_ERROR
    }

    fn describe(self) -> String {
        let why = if self.unsync_flag {
            "STA_UNSYNC is set: no time daemon is disciplining it"
        } else {
            "its maximum error grew past 16 s"
        };
        format!(
            "the kernel's clock is not synchronized ({why}; maxerror {} ms, esterror {} ms, \
             last offset {} ms)",
            self.maxerror_us / 1000,
            self.esterror_us / 1000,
            self.offset_us / 1000
        )
    }
}

/// The kernel's clock state on /metrics.
pub static SYNCHRONIZED: LevelMetric = LevelMetric::gauge(
    "clock_synchronized",
    "1 while the kernel says its clock is synchronized (adjtimex(2) is not TIME_ERROR)",
);
pub static MAX_ERROR_SECONDS: LevelMetric = LevelMetric::gauge(
    "clock_max_error_seconds",
    "The kernel's maximum error of its clock (adjtimex maxerror); past 16 s it counts \
           as unsynchronized",
);
pub static OFFSET_SECONDS: LevelMetric = LevelMetric::gauge(
    "clock_offset_seconds",
    "The last clock offset the time daemon gave the kernel (adjtimex offset)",
);

impl ClockState {
    fn levels(self, levels: &mut Vec<Level>) {
        levels.extend([
            Level::new(&SYNCHRONIZED, f64::from(u8::from(self.synchronized()))),
            Level::new(&MAX_ERROR_SECONDS, self.maxerror_us as f64 / 1e6),
            Level::new(&OFFSET_SECONDS, self.offset_us as f64 / 1e6),
        ]);
    }
}

/// A reading that changed the clock's synchronisation (or the first one).
#[derive(Clone, Debug, Serialize)]
pub struct ClockSync {
    #[serde(flatten)]
    pub clock: ClockState,
    pub synchronized: bool,
}

finding!(ClockSync, "clock_sync", {
    fn summary(&self) -> String {
        if self.synchronized {
            "the kernel's clock is synchronized".to_owned()
        } else {
            self.clock.describe()
        }
    }

    fn assess(&self, _event: &Event) -> Assessment {
        if self.synchronized {
            // Resync, not Clear: it also clears a True condition restored from the Node.
            return Assessment::default().with_condition(
                NTP_PROBLEM,
                Change::Resync {
                    current: Vec::new(),
                },
            );
        }
        let message = self.clock.describe();
        Assessment::report(Report {
            reason: CLOCK_UNSYNCHRONIZED,
            detail_key: KEY.to_owned(),
            message: message.clone(),
            count: 1,
            since_boot: false,
        })
        .with_condition(
            NTP_PROBLEM,
            Change::Resync {
                current: vec![(KEY.to_owned(), message)],
            },
        )
    }
});

#[derive(Debug)]
struct ClockRuntime {
    last: Option<bool>,
}

impl Sampler for ClockRuntime {
    fn sample(&mut self, now_ns: u64, levels: &mut Vec<Level>) -> Vec<Event> {
        let Ok(clock) = ClockState::read() else {
            return Vec::new();
        };
        clock.levels(levels);
        let synchronized = clock.synchronized();
        // Only changes (and the first reading, which resyncs a restored condition).
        if self.last == Some(synchronized) {
            return Vec::new();
        }
        self.last = Some(synchronized);
        vec![Event::new(
            now_ns,
            Task::default(),
            Source::Sampled,
            ClockSync {
                clock,
                synchronized,
            },
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(unsync: bool) -> ClockState {
        ClockState {
            state: if unsync {
                libc::TIME_ERROR
            } else {
                libc::TIME_OK
            },
            unsync_flag: unsync,
            maxerror_us: 16_000_000,
            esterror_us: 16_000_000,
            offset_us: 0,
        }
    }

    fn assess(synchronized: bool) -> Assessment {
        let detail = ClockSync {
            clock: state(!synchronized),
            synchronized,
        };
        Event::new(1, Task::default(), Source::Sampled, detail).assess()
    }

    #[test]
    fn unsynchronized_raises_ntp_problem_and_synchronized_clears_it() {
        let down = assess(false);
        assert_eq!(down.report.as_ref().unwrap().reason, CLOCK_UNSYNCHRONIZED);
        let Some((condition, Change::Resync { current })) = &down.condition else {
            panic!("{down:?}");
        };
        assert_eq!(*condition, NTP_PROBLEM);
        assert!(current[0].1.contains("STA_UNSYNC"), "{current:?}");
        let up = assess(true);
        assert!(up.report.is_none());
        assert_eq!(
            up.condition,
            Some((NTP_PROBLEM, Change::Resync { current: vec![] }))
        );
    }

    #[test]
    fn this_kernel_answers() {
        let clock = ClockState::read().expect("adjtimex(2) reads without privileges");
        assert_eq!(clock.synchronized(), clock.state != libc::TIME_ERROR);
    }
}
