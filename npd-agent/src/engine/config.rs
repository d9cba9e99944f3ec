//! The engine's tunables, with defaults and validation.

use std::time::Duration;

use thiserror::Error;

#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// KernelDeadlock goes back to False only after no task has been hung for this long, so a
    /// task that unblocks and blocks again does not flap the condition.
    pub hung_task_recovery_window: Duration,
    /// A hung task that neither recovers nor is reported again for this long is forgotten (a
    /// lost recovery record must not pin KernelDeadlock forever). khungtaskd re-reports a
    /// blocked task every check interval (default 120 s), so keep this well above it.
    pub hung_task_forget_after: Duration,
    /// FDPressure turns True when the system file table is at least this full (percent).
    pub fd_pressure_high_percent: f64,
    /// ... and False again only once it is below this (percent), so usage hovering around
    /// one mark does not flap it.
    pub fd_pressure_low_percent: f64,
    /// After an ENFILE failure (the table was full at that instant, whatever the periodic
    /// sample says) FDPressure stays True at least this long.
    pub fd_pressure_min_hold: Duration,
    /// Occurrences with the same aggregation key within this long of the previous one join
    /// its series (one Kubernetes Event with a count) instead of making a new Event.
    pub event_aggregation_window: Duration,
    /// A series that keeps growing is re-sent (count, last timestamp) at most this often.
    pub event_series_update_interval: Duration,
    /// Token bucket per reason and pod (the node's own processes are one more budget), under a
    /// node-wide ceiling per reason, bounding writes of Events to the API server.
    pub event_rate_limit: EventRateLimit,
    /// Series remembered at most (memory bound); beyond it fully reported ones are forgotten
    /// first, then the newcomer's pod's backlog, folded into that pod's next Event.
    pub max_event_series: usize,
}

/// A token bucket: `burst` Events at once, then one per `refill_every`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRateLimit {
    pub burst: u32,
    pub refill_every: Duration,
}

impl Default for EventRateLimit {
    fn default() -> Self {
        Self {
            burst: 25,
            refill_every: Duration::from_secs(10),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            hung_task_recovery_window: Duration::from_secs(5 * 60),
            hung_task_forget_after: Duration::from_secs(30 * 60),
            fd_pressure_high_percent: 90.0,
            fd_pressure_low_percent: 80.0,
            fd_pressure_min_hold: Duration::from_secs(5 * 60),
            // client-go's event correlator uses the same 10 minutes.
            event_aggregation_window: Duration::from_secs(10 * 60),
            event_series_update_interval: Duration::from_secs(60),
            event_rate_limit: EventRateLimit::default(),
            max_event_series: 1024,
        }
    }
}

#[derive(Clone, Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("{field} must be longer than zero")]
    ZeroDuration { field: &'static str },
    #[error("{field} is {value}%, it must be above 0% and at most 100%")]
    PercentOutOfRange { field: &'static str, value: f64 },
    #[error("the fd pressure low-water mark ({low}%) must be below the high-water mark ({high}%)")]
    WaterMarksInverted { low: f64, high: f64 },
    #[error(
        "event_series_update_interval ({update:?}) must not exceed event_aggregation_window \
         ({window:?}): a series would end before it is ever updated"
    )]
    UpdateIntervalBeyondWindow { update: Duration, window: Duration },
    #[error("event_rate_limit.burst must be at least 1, or no Event could ever be sent")]
    ZeroBurst,
    #[error("max_event_series must be at least 1")]
    NoEventSeries,
}

impl EngineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("hung_task_recovery_window", self.hung_task_recovery_window),
            ("hung_task_forget_after", self.hung_task_forget_after),
            ("fd_pressure_min_hold", self.fd_pressure_min_hold),
            ("event_aggregation_window", self.event_aggregation_window),
            (
                "event_series_update_interval",
                self.event_series_update_interval,
            ),
            (
                "event_rate_limit.refill_every",
                self.event_rate_limit.refill_every,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { field });
            }
        }
        for (field, value) in [
            ("fd_pressure_high_percent", self.fd_pressure_high_percent),
            ("fd_pressure_low_percent", self.fd_pressure_low_percent),
        ] {
            // Written so that NaN fails too.
            if !(value > 0.0 && value <= 100.0) {
                return Err(ConfigError::PercentOutOfRange { field, value });
            }
        }
        if self.fd_pressure_low_percent >= self.fd_pressure_high_percent {
            return Err(ConfigError::WaterMarksInverted {
                low: self.fd_pressure_low_percent,
                high: self.fd_pressure_high_percent,
            });
        }
        if self.event_series_update_interval > self.event_aggregation_window {
            return Err(ConfigError::UpdateIntervalBeyondWindow {
                update: self.event_series_update_interval,
                window: self.event_aggregation_window,
            });
        }
        if self.event_rate_limit.burst == 0 {
            return Err(ConfigError::ZeroBurst);
        }
        if self.max_event_series == 0 {
            return Err(ConfigError::NoEventSeries);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(EngineConfig::default().validate(), Ok(()));
    }

    #[test]
    fn impossible_values_are_refused_with_a_clear_error() {
        type Edit = fn(&mut EngineConfig);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "zero recovery window",
                |c| c.hung_task_recovery_window = Duration::ZERO,
                "hung_task_recovery_window must be longer than zero",
            ),
            (
                "zero forget",
                |c| c.hung_task_forget_after = Duration::ZERO,
                "hung_task_forget_after must be longer than zero",
            ),
            (
                "zero hold",
                |c| c.fd_pressure_min_hold = Duration::ZERO,
                "fd_pressure_min_hold must be longer than zero",
            ),
            (
                "zero aggregation window",
                |c| c.event_aggregation_window = Duration::ZERO,
                "event_aggregation_window must be longer than zero",
            ),
            (
                "zero refill",
                |c| c.event_rate_limit.refill_every = Duration::ZERO,
                "event_rate_limit.refill_every must be longer than zero",
            ),
            (
                "low equals high",
                |c| c.fd_pressure_low_percent = 90.0,
                "the fd pressure low-water mark (90%) must be below the high-water mark (90%)",
            ),
            (
                "low above high",
                |c| {
                    c.fd_pressure_low_percent = 95.0;
                    c.fd_pressure_high_percent = 85.0;
                },
                "the fd pressure low-water mark (95%) must be below the high-water mark (85%)",
            ),
            (
                "high above 100",
                |c| c.fd_pressure_high_percent = 120.0,
                "fd_pressure_high_percent is 120%, it must be above 0% and at most 100%",
            ),
            (
                "low zero",
                |c| c.fd_pressure_low_percent = 0.0,
                "fd_pressure_low_percent is 0%, it must be above 0% and at most 100%",
            ),
            (
                "NaN",
                |c| c.fd_pressure_high_percent = f64::NAN,
                "fd_pressure_high_percent is NaN%, it must be above 0% and at most 100%",
            ),
            (
                "update beyond window",
                |c| c.event_series_update_interval = Duration::from_secs(3600),
                "event_series_update_interval (3600s) must not exceed event_aggregation_window \
                 (600s): a series would end before it is ever updated",
            ),
            (
                "zero burst",
                |c| c.event_rate_limit.burst = 0,
                "event_rate_limit.burst must be at least 1, or no Event could ever be sent",
            ),
            (
                "no series",
                |c| c.max_event_series = 0,
                "max_event_series must be at least 1",
            ),
        ];
        for (name, edit, expected) in cases {
            let mut config = EngineConfig::default();
            edit(&mut config);
            let err = config.validate().expect_err(name);
            assert_eq!(err.to_string(), *expected, "{name}");
        }
    }
}
