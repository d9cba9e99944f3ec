//! Flags, the file, the environment and the defaults become the agent's configuration: the
//! one place they are merged (flags win over the file, the file over the defaults).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{ConfigFileError, FileConfig, validate::engine_error};
use crate::{
    detectors,
    engine::{ConditionType, EngineConfig, EventRateLimit},
    remediation::{TaintConfig, TaintEffect},
};

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
                    .copied()
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
            health: self.health_options(),
            daemons: self.daemon_options(),
            resources: self.resource_options(),
        }
    }

    /// `pids`, `podPids`, `conntrack`, `zombies`, `pressure` over the defaults. Call after
    /// [`FileConfig::validate`] (a window the kernel does not keep falls back to the default).
    pub fn resource_options(&self) -> detectors::ResourceOptions {
        let defaults = detectors::ResourceOptions::default();
        let marks = |file: &super::WatermarksConfig, default: detectors::Watermarks| {
            detectors::Watermarks {
                high_percent: file.high_watermark_percent.unwrap_or(default.high_percent),
                low_percent: file.low_watermark_percent.unwrap_or(default.low_percent),
            }
        };
        let pressure = &self.pressure;
        let default_pressure = defaults.pressure;
        detectors::ResourceOptions {
            pids: marks(&self.pids, defaults.pids),
            pod_pids: marks(&self.pod_pids, defaults.pod_pids),
            conntrack: marks(&self.conntrack, defaults.conntrack),
            zombies: self.zombies.threshold.unwrap_or(defaults.zombies),
            pressure: detectors::pressure::PressureOptions {
                window: pressure
                    .window
                    .and_then(detectors::pressure::Window::from_duration)
                    .unwrap_or(default_pressure.window),
                memory_full_percent: pressure
                    .memory_full_percent
                    .unwrap_or(default_pressure.memory_full_percent),
                io_full_percent: pressure
                    .io_full_percent
                    .unwrap_or(default_pressure.io_full_percent),
                cpu_some_percent: pressure
                    .cpu_some_percent
                    .unwrap_or(default_pressure.cpu_some_percent),
            },
        }
    }

    /// `daemons.*` (the kernel detector's) over the defaults.
    fn daemon_options(&self) -> detectors::daemons::DaemonOptions {
        let defaults = detectors::daemons::DaemonOptions::default();
        let file = &self.daemons;
        detectors::daemons::DaemonOptions {
            watched: file.watched.clone().unwrap_or(defaults.watched),
            restart_threshold: file.restart_threshold.unwrap_or(defaults.restart_threshold),
            restart_window: file.restart_window.unwrap_or(defaults.restart_window),
        }
    }

    /// `daemons.*` over the defaults.
    fn health_options(&self) -> detectors::daemon_health::HealthOptions {
        let defaults = detectors::daemon_health::HealthOptions::default();
        let file = &self.daemons;
        detectors::daemon_health::HealthOptions {
            runtime_endpoints: file
                .runtime_endpoints
                .clone()
                .unwrap_or(defaults.runtime_endpoints),
            kubelet_healthz: file
                .kubelet_healthz
                .clone()
                .unwrap_or(defaults.kubelet_healthz),
            timeout: file.probe_timeout.unwrap_or(defaults.timeout),
            period: file.probe_period.unwrap_or(defaults.period),
        }
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

    /// The conditions whose True taints the node: those `remediation.taints.conditions` names
    /// (each once) or the default ones.
    pub(super) fn remediated_conditions(&self) -> Vec<ConditionType> {
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
pub(super) fn condition_by_type(name: &str) -> Option<ConditionType> {
    detectors::catalog()
        .conditions
        .iter()
        .copied()
        .find(|c| c.as_str() == name)
}
