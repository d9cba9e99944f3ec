//! The configuration file (`--config`, YAML). Every key is optional; what is absent takes
//! its default, and command-line flags win over the file. An unknown key, a wrong type or an
//! impossible value stops the agent at start with a message naming the key.
//!
//! Here the file's shape (its structs, as serde reads them) and its parsing. `resolve` merges
//! flags, file, environment and defaults into the agent's configuration, `validate` refuses
//! what cannot work, `duration` reads `30s` and `1h30m`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use thiserror::Error;

use crate::remediation::{MaxUnhealthy, TaintEffect};

pub mod duration;
mod resolve;
#[cfg(test)]
mod tests;
mod validate;

pub use resolve::{ProbeFlags, RunFlags, defaults};
pub use validate::{KUBELET_CONDITIONS, known_reasons};

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
    #[serde(default)]
    pub daemons: DaemonsConfig,
    /// Tasks vs `kernel.pid_max` / `kernel.threads-max` (`pids` detector).
    #[serde(default)]
    pub pids: WatermarksConfig,
    /// A pod's tasks vs its `pids.max` (`pod_pids` detector).
    #[serde(default)]
    pub pod_pids: WatermarksConfig,
    /// Entries vs `nf_conntrack_max` (`conntrack` detector).
    #[serde(default)]
    pub conntrack: WatermarksConfig,
    #[serde(default)]
    pub zombies: ZombiesConfig,
    #[serde(default)]
    pub pressure: PressureConfig,
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

/// A level's fill of its limit with hysteresis, in percent (`90` or `"90%"`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WatermarksConfig {
    /// A problem at or above this. Default 90.
    #[serde(default, deserialize_with = "percent")]
    pub high_watermark_percent: Option<f64>,
    /// No longer one below this. Default 80.
    #[serde(default, deserialize_with = "percent")]
    pub low_watermark_percent: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZombiesConfig {
    /// Unreaped children of one parent (or of one pod's processes) that make a problem.
    /// Default 100.
    pub threshold: Option<u64>,
}

/// When PSI is a stall (`pressure` detector).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PressureConfig {
    /// Which of the kernel's running averages counts: `10s`, `1m` or `5m`. Default `1m`.
    #[serde(default, with = "duration")]
    pub window: Option<Duration>,
    /// Percent of the window all non-idle tasks stalled on memory. Default 10.
    #[serde(default, deserialize_with = "percent")]
    pub memory_full_percent: Option<f64>,
    /// ... on I/O. Default 10.
    #[serde(default, deserialize_with = "percent")]
    pub io_full_percent: Option<f64>,
    /// Percent of the window at least one task waited for a CPU. Default 50.
    #[serde(default, deserialize_with = "percent")]
    pub cpu_some_percent: Option<f64>,
}

/// A percentage as a YAML number (`90`, `12.5`) or a string with its sign (`"90%"`); the
/// range is validation's.
fn percent<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a percentage (e.g. 90 or \"90%\")")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(v as f64)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(v as f64)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(v)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim()
                .strip_suffix('%')
                .and_then(|number| number.trim().parse().ok())
                .ok_or_else(|| {
                    E::custom(format!(
                        "`{v}` is not a percentage; write a number of percent like 90 or \"90%\""
                    ))
                })
        }
    }
    deserializer.deserialize_any(Visitor).map(Some)
}

/// The node's daemons: where the health probes ask them (`daemon_health`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DaemonsConfig {
    /// CRI sockets, the first that exists is asked. Default
    /// `/run/containerd/containerd.sock`, `/var/run/crio/crio.sock`.
    pub runtime_endpoints: Option<Vec<PathBuf>>,
    /// The kubelet's healthz (plain HTTP). Default `http://127.0.0.1:10248/healthz`.
    pub kubelet_healthz: Option<String>,
    /// Each call's limit. Default `5s`.
    #[serde(default, with = "duration")]
    pub probe_timeout: Option<Duration>,
    /// How often they are asked. Default `10s`.
    #[serde(default, with = "duration")]
    pub probe_period: Option<Duration>,
    /// Executable names whose starts and exits the kernel reports (`daemons` detector; at
    /// most 8, each as the kernel keeps it: 15 bytes). Default kubelet, containerd, dockerd,
    /// crio.
    pub watched: Option<Vec<String>>,
    /// Starts within `restartWindow` that make a restart loop. Default 5 (NPD's).
    pub restart_threshold: Option<u32>,
    /// Default `20m` (NPD's).
    #[serde(default, with = "duration")]
    pub restart_window: Option<Duration>,
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

impl FileConfig {
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
}
