//! The configuration file (`--config`, YAML). Every key is optional; what is absent takes
//! its default, and command-line flags win over the file. An unknown key, a wrong type or an
//! impossible value stops the agent at start with a message naming the key.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    detectors,
    engine::{ConditionType, ConfigError as EngineConfigError, EngineConfig, EventRateLimit},
    remediation::{MaxUnhealthy, TaintConfig, TaintEffect, plan as taint_plan},
};

/// Condition types the kubelet writes: npd must never write them.
pub const KUBELET_CONDITIONS: [&str; 5] = [
    "Ready",
    "MemoryPressure",
    "DiskPressure",
    "PIDPressure",
    "NetworkUnavailable",
];

#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// serde's message names the key (`kubernetes.heartbeat: ...`) and the position.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

/// The file's shape. Keys are camelCase, like Kubernetes objects.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// Detectors to run, by registry name (`fd`, `hung_task`, ...). Default: all.
    pub detectors: Option<Vec<String>>,
    /// Address of the metrics and health listener. Default `127.0.0.1:20257`.
    pub listen: Option<SocketAddr>,
    /// Size of the kernel ring buffer in bytes (a power of two, at least a page).
    pub ring_buffer_bytes: Option<u32>,
    /// Where the host's /proc and /sys/fs/cgroup are mounted. Default `/`.
    pub host_root: Option<PathBuf>,
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    #[serde(default)]
    pub hung_task: HungTaskConfig,
    #[serde(default)]
    pub fd_pressure: FdPressureConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub remediation: RemediationConfig,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesConfig {
    /// Report to the cluster (default) or only log (`false`: standalone even in a cluster).
    pub enabled: Option<bool>,
    /// Default: the `NODE_NAME` environment variable, else the hostname.
    pub node_name: Option<String>,
    /// Default: `KUBECONFIG`, else the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// How often `lastHeartbeatTime` is refreshed. Default `1m`.
    #[serde(default, with = "duration")]
    pub heartbeat: Option<Duration>,
    /// Namespace of the Events about the Node. Default `default`.
    pub event_namespace: Option<String>,
    /// Events kept while the API server is unreachable (a series takes one). Default 512.
    pub max_pending_events: Option<usize>,
    /// Ceiling of the retry backoff after API failures (jittered). Default `1m`.
    #[serde(default, with = "duration")]
    pub retry_backoff_max: Option<Duration>,
    /// Condition types as written on the Node, by the condition's key (`kernelDeadlock:
    /// MyDeadlock`); every condition a detector declares has one.
    #[serde(default)]
    pub conditions: std::collections::BTreeMap<String, String>,
    /// Renames of condition and Event reasons (e.g. `TaskHung: MyTaskHung`), for alerts that
    /// expect other names.
    #[serde(default)]
    pub reasons: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HungTaskConfig {
    /// KernelDeadlock clears after no task has been hung this long. Default `5m`.
    #[serde(default, with = "duration")]
    pub recovery_window: Option<Duration>,
    /// A hung task neither recovering nor re-reported this long is forgotten. Default `30m`.
    #[serde(default, with = "duration")]
    pub forget_after: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FdPressureConfig {
    /// FDPressure turns True at this much of fs.file-max (percent). Default 90.
    pub high_watermark_percent: Option<f64>,
    /// ... and False below this (percent). Default 80.
    pub low_watermark_percent: Option<f64>,
    /// After an ENFILE, FDPressure stays True at least this long. Default `5m`.
    #[serde(default, with = "duration")]
    pub min_hold: Option<Duration>,
    /// How often /proc/sys/fs/file-nr is read. Default `10s`.
    #[serde(default, with = "duration")]
    pub sample_interval: Option<Duration>,
    /// At most one fd-exhaustion record per process per this interval (in the kernel; flag
    /// `--fd-rate-limit`). Default `1s`. `perProcessRateLimit` is its old name.
    #[serde(default, with = "duration", alias = "perProcessRateLimit")]
    pub rate_limit: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventsConfig {
    /// Repeats within this window join one Event's count. Default `10m`.
    #[serde(default, with = "duration")]
    pub aggregation_window: Option<Duration>,
    /// A growing series is re-sent at most this often. Default `1m`.
    #[serde(default, with = "duration")]
    pub series_update_interval: Option<Duration>,
    /// Per-reason token bucket.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Series remembered at most. Default 1024.
    pub max_series: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitConfig {
    /// Events sent at once. Default 25.
    pub burst: Option<u32>,
    /// Then one per this interval. Default `10s`.
    #[serde(default, with = "duration")]
    pub refill_every: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RemediationConfig {
    #[serde(default)]
    pub taints: TaintsConfig,
}

/// Opt-in taints on this node while chosen conditions are True (README, "Remediation").
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaintsConfig {
    /// Off unless `true`.
    pub enabled: Option<bool>,
    /// Conditions whose True taints the node, by npd's type names. Default
    /// `[KernelDeadlock, KernelOops]`.
    pub conditions: Option<Vec<String>>,
    /// Default `NoSchedule`; `NoExecute` also evicts running pods (warned about at start).
    pub effect: Option<TaintEffect>,
    /// Nodes npd may keep tainted at once: `3` or `10%` of the Nodes. Default `10%`.
    #[serde(default, deserialize_with = "max_unhealthy")]
    pub max_unhealthy: Option<MaxUnhealthy>,
    /// Log and emit Events about taint changes without making them. Default `false`.
    pub dry_run: Option<bool>,
    /// Where the budget's Lease lives. Default `kube-system`.
    pub lease_namespace: Option<String>,
    /// Default `npd-taint-budget`.
    pub lease_name: Option<String>,
    /// How often the taints are checked again and a refused taint retried. Default `30s`.
    #[serde(default, with = "duration")]
    pub retry_interval: Option<Duration>,
}

/// `maxUnhealthy` as a YAML number (`3`) or string (`10%`).
fn max_unhealthy<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<MaxUnhealthy>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = MaxUnhealthy;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a positive integer or a percentage 1-100% (e.g. 3 or \"10%\")")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            MaxUnhealthy::parse(&v.to_string()).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            MaxUnhealthy::parse(&v.to_string()).map_err(E::custom)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            MaxUnhealthy::parse(&v.to_string()).map_err(E::custom)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            MaxUnhealthy::parse(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(Visitor).map(Some)
}

/// What the command line says about loading the kernel programs; set flags win over the
/// file.
#[derive(Clone, Debug, Default)]
pub struct ProbeFlags {
    pub detectors: Option<Vec<String>>,
    pub ring_buffer_bytes: Option<u32>,
    pub fd_rate_limit: Option<Duration>,
    pub bpf_log: bool,
    pub host_root: Option<PathBuf>,
    pub fallback_hooks_only: bool,
}

/// The rest of `npd-agent run`'s flags.
#[derive(Clone, Debug, Default)]
pub struct RunFlags {
    pub probes: ProbeFlags,
    pub listen: Option<SocketAddr>,
    pub node_name: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub standalone: bool,
    pub heartbeat: Option<Duration>,
    pub event_namespace: Option<String>,
    pub hung_task_recovery_window: Option<Duration>,
    pub dry_run: bool,
}

/// Defaults that are not the engine's (the engine's are `EngineConfig::default`).
pub mod defaults {
    use std::{net::SocketAddr, time::Duration};

    pub const LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        20257,
    ));
    pub const HEARTBEAT: Duration = Duration::from_secs(60);
    pub const EVENT_NAMESPACE: &str = "default";
    pub const MAX_PENDING_EVENTS: usize = 512;
    pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60);
    pub const FILE_TABLE_INTERVAL: Duration = Duration::from_secs(10);
}

impl FileConfig {
    /// The one place flags, this file, the environment and the defaults become the agent's
    /// configuration (flags win), validated.
    pub fn resolve(
        mut self,
        flags: RunFlags,
    ) -> Result<crate::agent::AgentConfig, ConfigFileError> {
        use crate::agent::{AgentConfig, ClusterConfig};
        if let Some(window) = flags.hung_task_recovery_window {
            self.hung_task.recovery_window = Some(window);
        }
        if let Some(heartbeat) = flags.heartbeat {
            self.kubernetes.heartbeat = Some(heartbeat);
        }
        if flags.dry_run {
            self.remediation.taints.dry_run = Some(true);
        }
        self.validate()?;
        let kubernetes = &self.kubernetes;
        Ok(AgentConfig {
            probes: self.load_options(&flags.probes),
            engine: self.engine()?,
            listen: flags.listen.or(self.listen).unwrap_or(defaults::LISTEN),
            file_table_interval: self
                .fd_pressure
                .sample_interval
                .unwrap_or(defaults::FILE_TABLE_INTERVAL),
            cluster: ClusterConfig {
                kubeconfig: flags.kubeconfig.or_else(|| kubernetes.kubeconfig.clone()),
                standalone: flags.standalone || kubernetes.enabled == Some(false),
                node_name: crate::k8s::node_name(
                    flags
                        .node_name
                        .as_deref()
                        .or(kubernetes.node_name.as_deref()),
                ),
                heartbeat: kubernetes.heartbeat.unwrap_or(defaults::HEARTBEAT),
                node_event_namespace: flags
                    .event_namespace
                    .or_else(|| kubernetes.event_namespace.clone())
                    .unwrap_or_else(|| defaults::EVENT_NAMESPACE.to_owned()),
                names: self.condition_names(),
                max_pending_events: kubernetes
                    .max_pending_events
                    .unwrap_or(defaults::MAX_PENDING_EVENTS),
                max_backoff: kubernetes
                    .retry_backoff_max
                    .unwrap_or(defaults::RETRY_BACKOFF_MAX),
                remediation: self.remediation(),
            },
        })
    }

    /// Flags over this file over the defaults: which detectors run and how.
    pub fn load_options(&self, flags: &ProbeFlags) -> crate::probes::LoadOptions {
        let defaults = crate::probes::LoadOptions::default();
        let names = flags.detectors.as_ref().or(self.detectors.as_ref());
        crate::probes::LoadOptions {
            // Registry order, whatever order they were listed in; unknown names were refused
            // by validation (file) or by clap (flags).
            detectors: match names {
                Some(names) => detectors::all()
                    .iter()
                    .filter(|d| names.iter().any(|n| n == d.name()))
                    .map(|d| d.id())
                    .collect(),
                None => defaults.detectors,
            },
            ring_buffer_bytes: flags
                .ring_buffer_bytes
                .or(self.ring_buffer_bytes)
                .unwrap_or(defaults.ring_buffer_bytes),
            fd_rate_limit: flags
                .fd_rate_limit
                .or(self.fd_pressure.rate_limit)
                .unwrap_or(defaults.fd_rate_limit),
            bpf_log: flags.bpf_log,
            host_root: flags
                .host_root
                .clone()
                .or_else(|| self.host_root.clone())
                .unwrap_or(defaults.host_root),
            fallback_hooks_only: flags.fallback_hooks_only,
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &std::path::Path, text: &str) -> Result<Self, ConfigFileError> {
        // An empty file is an empty config (serde would call it "null").
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        // serde_path_to_error names the exact key (`kubernetes.heartbeat`), also for errors
        // raised by custom parsers such as durations.
        serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(
            |err| {
                let key = err.path().to_string();
                let inner = err.into_inner();
                ConfigFileError::Parse {
                    path: path.to_owned(),
                    message: if key == "." {
                        inner.to_string()
                    } else {
                        format!("`{key}`: {inner}")
                    },
                }
            },
        )
    }

    /// The engine's settings from the file (defaults where absent), validated with the
    /// file's key names in any error.
    pub fn engine(&self) -> Result<EngineConfig, ConfigFileError> {
        let defaults = EngineConfig::default();
        let config = EngineConfig {
            hung_task_recovery_window: self
                .hung_task
                .recovery_window
                .unwrap_or(defaults.hung_task_recovery_window),
            hung_task_forget_after: self
                .hung_task
                .forget_after
                .unwrap_or(defaults.hung_task_forget_after),
            fd_pressure_high_percent: self
                .fd_pressure
                .high_watermark_percent
                .unwrap_or(defaults.fd_pressure_high_percent),
            fd_pressure_low_percent: self
                .fd_pressure
                .low_watermark_percent
                .unwrap_or(defaults.fd_pressure_low_percent),
            fd_pressure_min_hold: self
                .fd_pressure
                .min_hold
                .unwrap_or(defaults.fd_pressure_min_hold),
            event_aggregation_window: self
                .events
                .aggregation_window
                .unwrap_or(defaults.event_aggregation_window),
            event_series_update_interval: self
                .events
                .series_update_interval
                .unwrap_or(defaults.event_series_update_interval),
            event_rate_limit: EventRateLimit {
                burst: self
                    .events
                    .rate_limit
                    .burst
                    .unwrap_or(defaults.event_rate_limit.burst),
                refill_every: self
                    .events
                    .rate_limit
                    .refill_every
                    .unwrap_or(defaults.event_rate_limit.refill_every),
            },
            max_event_series: self.events.max_series.unwrap_or(defaults.max_event_series),
        };
        config.validate().map_err(|err| engine_error(&err))?;
        Ok(config)
    }

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
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                return Err(invalid(key, "must be longer than zero"));
            }
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
        self.engine().map(|_| ())
    }

    /// A condition's type as written on the Node (`kubernetes.conditions`).
    pub fn condition_name(&self, condition_type: ConditionType) -> &str {
        self.kubernetes
            .conditions
            .get(condition_type.spec().config_key)
            .map_or(condition_type.as_str(), String::as_str)
    }

    /// Every condition npd owns, with the type written for it and the reason renames.
    pub fn condition_names(&self) -> crate::k8s::node::ConditionNames {
        let conditions = &detectors::catalog().conditions;
        let mut names = crate::k8s::node::ConditionNames::new(conditions);
        for &condition in conditions {
            names
                .types
                .insert(condition, self.condition_name(condition).to_owned());
        }
        names.reasons = self.kubernetes.reasons.clone();
        names
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

    fn remediated_conditions(&self) -> Vec<ConditionType> {
        match &self.remediation.taints.conditions {
            Some(list) => {
                let mut types = Vec::new();
                for condition in list.iter().filter_map(|c| condition_by_type(c)) {
                    if !types.contains(&condition) {
                        types.push(condition);
                    }
                }
                types
            }
            None => TaintConfig::DEFAULT_CONDITIONS
                .iter()
                .filter_map(|c| condition_by_type(c))
                .collect(),
        }
    }

    /// `remediation.taints` with defaults, or `None` unless enabled. Call after
    /// [`FileConfig::validate`].
    pub fn remediation(&self) -> Option<TaintConfig> {
        let taints = &self.remediation.taints;
        if taints.enabled != Some(true) {
            return None;
        }
        Some(TaintConfig {
            conditions: self.remediated_conditions(),
            effect: taints.effect.unwrap_or(TaintEffect::NoSchedule),
            max_unhealthy: taints
                .max_unhealthy
                .unwrap_or(TaintConfig::DEFAULT_MAX_UNHEALTHY),
            dry_run: taints.dry_run.unwrap_or(false),
            lease_namespace: taints
                .lease_namespace
                .clone()
                .unwrap_or_else(|| TaintConfig::DEFAULT_LEASE_NAMESPACE.to_owned()),
            lease_name: taints
                .lease_name
                .clone()
                .unwrap_or_else(|| TaintConfig::DEFAULT_LEASE_NAME.to_owned()),
            retry_interval: taints
                .retry_interval
                .unwrap_or(TaintConfig::DEFAULT_RETRY_INTERVAL),
        })
    }
}

/// The condition npd owns under its own type name (`KernelDeadlock`).
fn condition_by_type(name: &str) -> Option<ConditionType> {
    detectors::catalog()
        .conditions
        .iter()
        .copied()
        .find(|c| c.as_str() == name)
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
    all.sort_unstable();
    all.dedup();
    all
}

/// The engine's error with the file's key instead of the engine's field name.
fn engine_error(err: &EngineConfigError) -> ConfigFileError {
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

/// Durations as `500ms`, `30s`, `5m`, `1h30m`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty duration".to_owned());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| format!("`{text}` has a number without a unit (ms, s, m, h)"))?;
            if digits == 0 {
                return Err(format!("`{text}` is not a duration like 30s, 5m or 1h30m"));
            }
            let value: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("`{text}`: number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = match &rest[..unit_len] {
                "ms" => Duration::from_millis(value),
                "s" => Duration::from_secs(value),
                "m" => Duration::from_secs(value * 60),
                "h" => Duration::from_secs(value * 3600),
                other => {
                    return Err(format!("`{text}` has unit `{other}`; use ms, s, m or h"));
                }
            };
            total += unit;
            rest = &rest[unit_len..];
        }
        Ok(total)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map(Some).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::detectors::{
        fd::FD_PRESSURE, hung_task::KERNEL_DEADLOCK, oops::KERNEL_OOPS_CONDITION,
    };

    fn parse(text: &str) -> Result<FileConfig, String> {
        let config = FileConfig::parse(Path::new("npd.yaml"), text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn the_shipped_default_config_parses_and_equals_the_defaults() {
        let text = include_str!("../../deploy/base/config.yaml");
        let config = parse(text).expect("deploy/base/config.yaml is valid");
        assert_eq!(config.engine().unwrap(), EngineConfig::default());
        assert_eq!(config.detectors, None, "every detector runs by default");
        assert_eq!(parse("").unwrap(), FileConfig::default());
        assert_eq!(config.remediation(), None, "remediation is opt-in");
        // Its documented values are the defaults once enabled.
        let mut enabled = config.clone();
        enabled.remediation.taints.enabled = Some(true);
        let mut defaults = FileConfig::default();
        defaults.remediation.taints.enabled = Some(true);
        assert_eq!(enabled.remediation(), defaults.remediation());
        assert_eq!(
            defaults.remediation(),
            Some(TaintConfig {
                conditions: vec![KERNEL_DEADLOCK, KERNEL_OOPS_CONDITION],
                effect: TaintEffect::NoSchedule,
                max_unhealthy: MaxUnhealthy::Percent(10),
                dry_run: false,
                lease_namespace: "kube-system".into(),
                lease_name: "npd-taint-budget".into(),
                retry_interval: Duration::from_secs(30),
            })
        );
    }

    #[test]
    fn the_remediation_overlay_config_parses_and_enables_a_dry_run() {
        let text = include_str!("../../deploy/overlays/remediation/config.yaml");
        let config = parse(text).expect("the overlay's config.yaml is valid");
        let taints = config.remediation().expect("enabled");
        assert!(taints.dry_run, "the overlay starts in dry-run mode");
        assert_eq!(config.engine().unwrap(), EngineConfig::default());
    }

    #[test]
    fn remediation_settings() {
        let config = parse(
            "remediation:\n  taints:\n    enabled: true\n    conditions: [FDPressure, \
             KernelDeadlock, FDPressure]\n    effect: NoExecute\n    maxUnhealthy: 3\n\
             kubernetes:\n  conditions:\n    fdPressure: NodeFDPressure\n",
        )
        .unwrap();
        let taints = config.remediation().unwrap();
        assert_eq!(taints.conditions, [FD_PRESSURE, KERNEL_DEADLOCK]);
        assert_eq!(taints.effect, TaintEffect::NoExecute);
        assert_eq!(taints.max_unhealthy, MaxUnhealthy::Nodes(3));
        assert_eq!(config.condition_name(FD_PRESSURE), "NodeFDPressure");
        let percent = parse("remediation:\n  taints:\n    maxUnhealthy: 25%\n").unwrap();
        assert_eq!(
            percent.remediation.taints.max_unhealthy,
            Some(MaxUnhealthy::Percent(25))
        );
        // A condition name that cannot be a taint key only matters once remediation is on.
        let spaced = "kubernetes:\n  conditions:\n    kernelDeadlock: Kernel Deadlock\n";
        assert!(parse(spaced).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration::parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration::parse("45s"), Ok(Duration::from_secs(45)));
        for bad in ["", "5", "m", "5x", "1.5m", "-3s"] {
            assert!(duration::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_key_and_what_is_allowed() {
        let cases = [
            ("hungTask:\n  recoverWindow: 5m\n", "recoverWindow"),
            ("kubernetes:\n  heartbeat: 5\n", "kubernetes.heartbeat"),
            ("kubernetes:\n  heartbeat: fast\n", "kubernetes.heartbeat"),
            ("detectors: [fd, disk]\n", "detectors"),
            ("listen: not-an-address\n", "listen"),
            (
                "fdPressure:\n  lowWatermarkPercent: 95\n",
                "fdPressure.lowWatermarkPercent",
            ),
            (
                "fdPressure:\n  highWatermarkPercent: 120\n",
                "fdPressure.highWatermarkPercent",
            ),
            (
                "events:\n  rateLimit:\n    burst: 0\n",
                "events.rateLimit.burst",
            ),
            (
                "hungTask:\n  recoveryWindow: 0s\n",
                "hungTask.recoveryWindow",
            ),
            ("ringBufferBytes: 1000\n", "ringBufferBytes"),
            ("detectors: []\n", "detectors"),
            (
                "kubernetes:\n  reasons:\n    Oops: X\n",
                "kubernetes.reasons",
            ),
            (
                "kubernetes:\n  maxPendingEvents: 0\n",
                "kubernetes.maxPendingEvents",
            ),
            (
                "remediation:\n  taints:\n    maxUnhealthy: 0\n",
                "remediation.taints.maxUnhealthy",
            ),
            (
                "remediation:\n  taints:\n    maxUnhealthy: -2\n",
                "remediation.taints.maxUnhealthy",
            ),
            (
                "remediation:\n  taints:\n    maxUnhealthy: 150%\n",
                "remediation.taints.maxUnhealthy",
            ),
            (
                "remediation:\n  taints:\n    maxUnhealthy: 0.5\n",
                "remediation.taints.maxUnhealthy",
            ),
            (
                "remediation:\n  taints:\n    conditions: [Disk]\n",
                "remediation.taints.conditions",
            ),
            (
                "remediation:\n  taints:\n    conditions: []\n",
                "remediation.taints.conditions",
            ),
            (
                "remediation:\n  taints:\n    effect: Evict\n",
                "remediation.taints.effect",
            ),
            (
                "remediation:\n  taints:\n    retryInterval: 0s\n",
                "remediation.taints.retryInterval",
            ),
            (
                "remediation:\n  taints:\n    leaseName: Bad_Name\n",
                "remediation.taints.leaseName",
            ),
            (
                "remediation:\n  taints:\n    enable: true\n",
                "remediation.taints",
            ),
            (
                "remediation:\n  taints:\n    enabled: true\n\
                 kubernetes:\n  conditions:\n    kernelDeadlock: Kernel Deadlock\n",
                "kubernetes.conditions.kernelDeadlock",
            ),
            (
                "kubernetes:\n  conditions:\n    kernelDeadlock: Ready\n",
                "kubernetes.conditions.kernelDeadlock",
            ),
            (
                "kubernetes:\n  conditions:\n    fdPressure: KernelOops\n",
                "kubernetes.conditions",
            ),
            (
                "kubernetes:\n  conditions:\n    diskPressure: Disk\n",
                "kubernetes.conditions.diskPressure",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).expect_err(text);
            assert!(
                err.contains(key),
                "{text:?}: the error should name `{key}`: {err}"
            );
        }
        // The unknown-key error lists what is allowed.
        let err = parse("hungTask:\n  recoverWindow: 5m\n").unwrap_err();
        assert!(err.contains("recoveryWindow"), "{err}");
        let err = parse("detectors: [fd, disk]\n").unwrap_err();
        assert!(err.contains("hung_task"), "{err}");
    }
}
