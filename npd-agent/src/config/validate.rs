//! What the file may not say: values out of range, names npd does not know, condition types
//! the kubelet owns, taint keys that cannot be; each refusal names the file's key.

use super::{ConfigFileError, FileConfig, resolve::condition_by_type};
use crate::{
    detectors,
    engine::{ConditionType, ConfigError as EngineConfigError},
    remediation::plan as taint_plan,
};

/// Condition types the kubelet writes: npd must never write them.
pub const KUBELET_CONDITIONS: [&str; 5] = [
    "Ready",
    "MemoryPressure",
    "DiskPressure",
    "PIDPressure",
    "NetworkUnavailable",
];

impl FileConfig {
    /// Checks what the engine does not: values only the agent uses.
    pub fn validate(&self) -> Result<(), ConfigFileError> {
        let invalid = |key: &str, problem: &str| ConfigFileError::Invalid {
            key: key.to_owned(),
            problem: problem.to_owned(),
        };
        if let Some(size) = self.ring_buffer_bytes
            && (!size.is_power_of_two() || u64::from(size) < crate::kernel::page_size())
        {
            return Err(invalid(
                "ringBufferBytes",
                "must be a power of two of at least the page size",
            ));
        }
        if let Some(list) = &self.detectors {
            if list.is_empty() {
                return Err(invalid(
                    "detectors",
                    &format!("is empty; list at least one of {}", detectors::names()),
                ));
            }
            if let Some(unknown) = list.iter().find(|d| detectors::by_name(d).is_none()) {
                return Err(invalid(
                    "detectors",
                    &format!(
                        "`{unknown}` is not a detector; known: {}",
                        detectors::names()
                    ),
                ));
            }
        }
        for (key, value) in [
            ("kubernetes.heartbeat", self.kubernetes.heartbeat),
            (
                "kubernetes.retryBackoffMax",
                self.kubernetes.retry_backoff_max,
            ),
            (
                "fdPressure.sampleInterval",
                self.fd_pressure.sample_interval,
            ),
            ("fdPressure.rateLimit", self.fd_pressure.rate_limit),
            ("daemons.probeTimeout", self.daemons.probe_timeout),
            ("daemons.probePeriod", self.daemons.probe_period),
            ("daemons.restartWindow", self.daemons.restart_window),
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        if let Some(url) = &self.daemons.kubelet_healthz
            && let Err(problem) = detectors::daemon_health::HealthzUrl::parse(url)
        {
            return Err(invalid("daemons.kubeletHealthz", &problem));
        }
        if let Some(watched) = &self.daemons.watched
            && let Err(problem) = detectors::daemons::check_watched(watched)
        {
            return Err(invalid("daemons.watched", &problem));
        }
        if self.daemons.restart_threshold == Some(0) {
            return Err(invalid("daemons.restartThreshold", "must be at least 1"));
        }
        if self
            .daemons
            .runtime_endpoints
            .as_ref()
            .is_some_and(Vec::is_empty)
        {
            return Err(invalid("daemons.runtimeEndpoints", "is empty"));
        }
        if self.kubernetes.max_pending_events == Some(0) {
            return Err(invalid("kubernetes.maxPendingEvents", "must be at least 1"));
        }
        for (key, value) in [
            ("kubernetes.nodeName", self.kubernetes.node_name.as_deref()),
            (
                "kubernetes.eventNamespace",
                self.kubernetes.event_namespace.as_deref(),
            ),
        ] {
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(key, "is empty"));
            }
        }
        self.validate_condition_names()?;
        for (from, to) in &self.kubernetes.reasons {
            let known = known_reasons();
            if !known.contains(&from.as_str()) {
                return Err(ConfigFileError::Invalid {
                    key: "kubernetes.reasons".to_owned(),
                    problem: format!(
                        "renames unknown reason `{from}`; known: {}",
                        known.join(", ")
                    ),
                });
            }
            if to.trim().is_empty() || to.contains(char::is_whitespace) {
                return Err(ConfigFileError::Invalid {
                    key: "kubernetes.reasons".to_owned(),
                    problem: format!("renames `{from}` to `{to}`, which is not a single word"),
                });
            }
        }
        self.validate_remediation()?;
        self.validate_resources()?;
        self.engine().map(|_| ())
    }

    /// The sampled resource detectors' thresholds: percentages of a limit in (0, 100], each
    /// low-water mark below its high one, a zombie count of at least 1, a PSI window the
    /// kernel keeps.
    fn validate_resources(&self) -> Result<(), ConfigFileError> {
        let invalid = |key: &str, problem: String| ConfigFileError::Invalid {
            key: key.to_owned(),
            problem,
        };
        let pressure = &self.pressure;
        let resolved = self.resource_options();
        for (section, file, marks) in [
            ("pids", &self.pids, resolved.pids),
            ("podPids", &self.pod_pids, resolved.pod_pids),
            ("conntrack", &self.conntrack, resolved.conntrack),
        ] {
            let high = format!("{section}.highWatermarkPercent");
            let low = format!("{section}.lowWatermarkPercent");
            for (key, value) in [
                (&high, file.high_watermark_percent),
                (&low, file.low_watermark_percent),
            ] {
                check_percent(key, value)?;
            }
            if marks.low_percent >= marks.high_percent {
                return Err(invalid(
                    &low,
                    format!(
                        "({} %) must be below {high} ({} %), or the problem never clears",
                        marks.low_percent, marks.high_percent
                    ),
                ));
            }
        }
        for (key, value) in [
            ("pressure.memoryFullPercent", pressure.memory_full_percent),
            ("pressure.ioFullPercent", pressure.io_full_percent),
            ("pressure.cpuSomePercent", pressure.cpu_some_percent),
        ] {
            check_percent(key, value)?;
        }
        if self.zombies.threshold == Some(0) {
            return Err(invalid(
                "zombies.threshold",
                "must be at least 1 (zombie children of one parent)".to_owned(),
            ));
        }
        if let Some(window) = pressure.window
            && detectors::pressure::Window::from_duration(window).is_none()
        {
            return Err(invalid(
                "pressure.window",
                format!(
                    "must be 10s, 1m or 5m, the windows the kernel averages PSI over, not {}",
                    crate::engine::human_duration(window)
                ),
            ));
        }
        Ok(())
    }

    /// `kubernetes.conditions`: known keys, non-empty names, none the kubelet owns and no
    /// two conditions under one type.
    fn validate_condition_names(&self) -> Result<(), ConfigFileError> {
        let conditions = &detectors::catalog().conditions;
        for (key, name) in &self.kubernetes.conditions {
            let invalid = |problem: String| ConfigFileError::Invalid {
                key: format!("kubernetes.conditions.{key}"),
                problem,
            };
            if !conditions.iter().any(|c| c.spec().config_key == key) {
                let known: Vec<&str> = conditions.iter().map(|c| c.spec().config_key).collect();
                return Err(invalid(format!(
                    "is not a condition npd owns; known: {}",
                    known.join(", ")
                )));
            }
            if name.trim().is_empty() {
                return Err(invalid("is empty".to_owned()));
            }
            if KUBELET_CONDITIONS.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "`{name}` is a condition type the kubelet owns; npd never writes it"
                )));
            }
        }
        let mut seen: Vec<(&str, ConditionType)> = Vec::new();
        for &condition in conditions {
            let name = self.condition_name(condition);
            if let Some((_, other)) = seen.iter().find(|(n, _)| *n == name) {
                return Err(ConfigFileError::Invalid {
                    key: format!("kubernetes.conditions.{}", condition.spec().config_key),
                    problem: format!(
                        "`{name}` is already the type of {other}: two conditions cannot share one"
                    ),
                });
            }
            seen.push((name, condition));
        }
        Ok(())
    }

    fn validate_remediation(&self) -> Result<(), ConfigFileError> {
        let taints = &self.remediation.taints;
        if taints.retry_interval.is_some_and(|v| v.is_zero()) {
            return Err(ConfigFileError::Invalid {
                key: "remediation.taints.retryInterval".to_owned(),
                problem: "must be longer than zero".to_owned(),
            });
        }
        for (key, value) in [
            (
                "remediation.taints.leaseNamespace",
                taints.lease_namespace.as_deref(),
            ),
            ("remediation.taints.leaseName", taints.lease_name.as_deref()),
        ] {
            if let Some(value) = value
                && (value.is_empty()
                    || value.len() > 63
                    || !value
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    || value.starts_with('-')
                    || value.ends_with('-'))
            {
                return Err(ConfigFileError::Invalid {
                    key: key.to_owned(),
                    problem: format!(
                        "`{value}` is not a valid name (lowercase letters, digits and `-`, at \
                         most 63)"
                    ),
                });
            }
        }
        let known = || {
            detectors::catalog()
                .conditions
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(list) = &taints.conditions {
            if list.is_empty() {
                return Err(ConfigFileError::Invalid {
                    key: "remediation.taints.conditions".to_owned(),
                    problem: format!(
                        "is empty; list at least one of {} (or set enabled: false)",
                        known()
                    ),
                });
            }
            if let Some(unknown) = list.iter().find(|c| condition_by_type(c).is_none()) {
                return Err(ConfigFileError::Invalid {
                    key: "remediation.taints.conditions".to_owned(),
                    problem: format!(
                        "`{unknown}` is not a condition npd owns; known: {}",
                        known()
                    ),
                });
            }
        }
        // Condition names become taint keys only where remediation is on.
        let enabled = taints.enabled == Some(true);
        for condition in self.remediated_conditions().into_iter().filter(|_| enabled) {
            let name = self.condition_name(condition);
            if let Some(problem) = taint_plan::invalid_key_name(name) {
                return Err(ConfigFileError::Invalid {
                    key: format!("kubernetes.conditions.{}", condition.spec().config_key),
                    problem: format!(
                        "cannot name a taint ({}<name>, as remediation.taints needs): {problem}",
                        taint_plan::TAINT_KEY_PREFIX
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A percentage of a limit: above 0 (0 would always be a problem) and at most 100.
fn check_percent(key: &str, value: Option<f64>) -> Result<(), ConfigFileError> {
    match value {
        Some(percent) if !(percent > 0.0 && percent <= 100.0) => Err(ConfigFileError::Invalid {
            key: key.to_owned(),
            problem: format!("must be above 0 and at most 100 (percent), not {percent}"),
        }),
        _ => Ok(()),
    }
}

/// Every reason npd writes, conditions' and Events'.
pub fn known_reasons() -> Vec<&'static str> {
    let catalog = detectors::catalog();
    let mut all: Vec<&'static str> = catalog
        .conditions
        .iter()
        .flat_map(|c| [c.spec().problem_reason, c.spec().healthy_reason])
        .collect();
    all.extend(catalog.reasons.iter().map(|r| r.as_str()));
    all.extend(&catalog.condition_reasons);
    all.sort_unstable();
    all.dedup();
    all
}

/// The engine's error with the file's key instead of the engine's field name.
pub(super) fn engine_error(err: &EngineConfigError) -> ConfigFileError {
    const KEYS: [(&str, &str); 10] = [
        ("hung_task_recovery_window", "hungTask.recoveryWindow"),
        ("hung_task_forget_after", "hungTask.forgetAfter"),
        (
            "fd_pressure_high_percent",
            "fdPressure.highWatermarkPercent",
        ),
        ("fd_pressure_low_percent", "fdPressure.lowWatermarkPercent"),
        ("fd_pressure_min_hold", "fdPressure.minHold"),
        ("event_aggregation_window", "events.aggregationWindow"),
        (
            "event_series_update_interval",
            "events.seriesUpdateInterval",
        ),
        (
            "event_rate_limit.refill_every",
            "events.rateLimit.refillEvery",
        ),
        ("event_rate_limit.burst", "events.rateLimit.burst"),
        ("max_event_series", "events.maxSeries"),
    ];
    let key = match err {
        EngineConfigError::ZeroDuration { field }
        | EngineConfigError::PercentOutOfRange { field, .. } => KEYS
            .iter()
            .find(|(f, _)| f == field)
            .map_or("?", |(_, k)| k),
        EngineConfigError::WaterMarksInverted { .. } => "fdPressure.lowWatermarkPercent",
        EngineConfigError::UpdateIntervalBeyondWindow { .. } => "events.seriesUpdateInterval",
        EngineConfigError::ZeroBurst => "events.rateLimit.burst",
        EngineConfigError::NoEventSeries => "events.maxSeries",
    };
    let mut problem = err.to_string();
    for (field, file_key) in KEYS {
        problem = problem.replace(field, file_key);
    }
    ConfigFileError::Invalid {
        key: key.to_owned(),
        problem,
    }
}
