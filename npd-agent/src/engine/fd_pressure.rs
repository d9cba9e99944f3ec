//! FDPressure: the system-wide file table, with hysteresis between a high- and a low-water
//! mark, and a hold after ENFILE (a full table seen by a failing process, which a periodic
//! sample may miss).

use super::{
    condition::NodeCondition,
    config::EngineConfig,
    subject::describe_task,
    time::{Timestamp, duration_ns, human_duration},
};
use crate::event::Event;

/// `/proc/sys/fs/file-nr`: file handles allocated and the system maximum (`fs.file-max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileTableSample {
    pub allocated: u64,
    pub max: u64,
}

impl FileTableSample {
    /// Parses `/proc/sys/fs/file-nr`: `allocated <tab> free <tab> max`.
    pub fn parse_file_nr(text: &str) -> Option<Self> {
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        let allocated = fields.next()?.ok()?;
        let _free = fields.next()?.ok()?;
        let max = fields.next()?.ok()?;
        Some(Self { allocated, max })
    }

    /// Usage in percent; `None` when the maximum is 0 (no meaningful sample).
    pub fn usage_percent(self) -> Option<f64> {
        (self.max > 0).then(|| self.allocated as f64 * 100.0 / self.max as f64)
    }

    fn describe(self, percent: f64) -> String {
        format!(
            "system file table {percent:.0}% full ({} of {} file handles allocated)",
            self.allocated, self.max
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct FdPressureState {
    /// No clearing before this (monotonic ns): set by ENFILE and by a restored True.
    hold_until_ns: Option<u64>,
    last_sample: Option<FileTableSample>,
}

impl FdPressureState {
    pub(crate) fn on_sample(
        &mut self,
        sample: FileTableSample,
        condition: &mut NodeCondition,
        config: &EngineConfig,
        now: Timestamp,
    ) {
        let Some(percent) = sample.usage_percent() else {
            return;
        };
        self.last_sample = Some(sample);
        if percent >= config.fd_pressure_high_percent {
            if !condition.is_true() {
                let message = format!(
                    "{} at or above the high-water mark {}%; clears below {}%",
                    sample.describe(percent),
                    config.fd_pressure_high_percent,
                    config.fd_pressure_low_percent
                );
                condition.set_problem(message, now.wall);
            }
            return;
        }
        let held = self
            .hold_until_ns
            .is_some_and(|until| now.monotonic_ns < until);
        if condition.is_true() && percent < config.fd_pressure_low_percent && !held {
            self.hold_until_ns = None;
            let message = format!(
                "{}, below the low-water mark {}%",
                sample.describe(percent),
                config.fd_pressure_low_percent
            );
            condition.set_healthy(Some(message), now.wall);
        }
    }

    pub(crate) fn on_enfile(
        &mut self,
        event: &Event,
        syscall: &str,
        condition: &mut NodeCondition,
        config: &EngineConfig,
        now: Timestamp,
    ) {
        self.hold_until_ns = Some(
            now.monotonic_ns
                .saturating_add(duration_ns(config.fd_pressure_min_hold)),
        );
        let sampled = self
            .last_sample
            .and_then(|s| {
                s.usage_percent()
                    .map(|p| format!("; last sample: {}", s.describe(p)))
            })
            .unwrap_or_default();
        let message = format!(
            "system file table full: {} failed with ENFILE in process {}{sampled}; clears below \
             {}% and not before {} after the last ENFILE",
            syscall,
            describe_task(&event.task, event.attribution.as_ref()),
            config.fd_pressure_low_percent,
            human_duration(config.fd_pressure_min_hold)
        );
        condition.set_problem(message, now.wall);
    }

    /// A restored True is treated like one after ENFILE (its cause is unknown): it needs a
    /// low sample after the minimum hold to clear.
    pub(crate) fn restore(
        &mut self,
        condition: &NodeCondition,
        config: &EngineConfig,
        now: Timestamp,
    ) {
        if condition.is_true() {
            self.hold_until_ns = Some(
                now.monotonic_ns
                    .saturating_add(duration_ns(config.fd_pressure_min_hold)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_nr() {
        let cases = [
            (
                "1216\t0\t9223372036854775807\n",
                Some((1216, i64::MAX as u64)),
            ),
            ("100 0 1000", Some((100, 1000))),
            ("100 0", None),
            ("", None),
            ("x 0 1000", None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                FileTableSample::parse_file_nr(text).map(|s| (s.allocated, s.max)),
                expected,
                "{text:?}"
            );
        }
        let zero = FileTableSample {
            allocated: 5,
            max: 0,
        };
        assert_eq!(zero.usage_percent(), None);
    }
}
