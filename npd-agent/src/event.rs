//! Decoded, enriched observations: what `event-dump` prints and the problem engine consumes.
//! One variant per kind; the kernel ABI stays in npd-common, this is the agent's own model.

use serde::Serialize;

use crate::{clock, detectors};

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A classic tracepoint.
    Tracepoint,
    /// A BTF-typed raw tracepoint.
    #[serde(rename = "tp_btf")]
    BtfTracepoint,
    Fentry,
    Fexit,
    /// The kernel's own problem counters (oops_count, warn_count, taint), read by the agent.
    Counters,
    /// The agent's accounting of rate-limited kernel records (a storm's tail).
    Sweep,
}

impl Source {
    pub fn from_hook(hook: npd_common::Hook) -> Self {
        match hook {
            npd_common::Hook::Tracepoint => Self::Tracepoint,
            npd_common::Hook::BtfTracepoint => Self::BtfTracepoint,
            npd_common::Hook::Fentry => Self::Fentry,
            npd_common::Hook::Fexit => Self::Fexit,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::BtfTracepoint => "tp_btf",
            Self::Fentry => "fentry",
            Self::Fexit => "fexit",
            Self::Counters => "counters",
            Self::Sweep => "sweep",
        }
    }
}

/// The task an event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

impl Task {
    pub fn from_header(header: &npd_common::RecordHeader) -> Self {
        Self {
            pid: header.pid,
            tid: header.tid,
            comm: comm_string(&header.comm),
            cgroup_id: header.cgroup_id,
        }
    }
}

pub fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Who a problem belongs to, from its cgroup: a container of a pod, or a systemd unit.
/// Filled in by attribution; empty in records straight from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// The cgroup's path below the hierarchy root, e.g. `/kubepods/burstable/pod<uid>/<id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// The systemd unit of a process outside pods, e.g. `containerd.service`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodRef {
    pub uid: String,
    /// From the API server; absent until the pod is known (or in standalone mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`, from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// The container runtime's id, from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container's name, from the pod's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub kind: &'static str,
    /// CLOCK_MONOTONIC nanoseconds when the kernel saw it.
    pub ts_ns: u64,
    /// Wall-clock time of `ts_ns`, RFC 3339.
    pub time: String,
    #[serde(flatten)]
    pub task: Task,
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
    #[serde(flatten)]
    pub detail: Detail,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Detail {
    FdExhausted(detectors::fd::FdExhausted),
    HungTask(detectors::hung_task::HungTask),
    HungTaskRecovered(detectors::hung_task::HungTaskRecovered),
    OomKill(detectors::oom::OomKill),
    KernelOops(detectors::oops::KernelProblem),
    KernelWarning(detectors::oops::KernelProblem),
}

impl Detail {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::FdExhausted(_) => "fd_exhausted",
            Self::HungTask(_) => "hung_task",
            Self::HungTaskRecovered(_) => "hung_task_recovered",
            Self::OomKill(_) => "oom_kill",
            Self::KernelOops(_) => "kernel_oops",
            Self::KernelWarning(_) => "kernel_warning",
        }
    }
}

impl Event {
    pub fn new(ts_ns: u64, task: Task, source: Source, detail: Detail) -> Self {
        Self {
            kind: detail.kind(),
            ts_ns,
            time: clock::rfc3339(clock::wall_time(ts_ns)),
            task,
            source,
            attribution: None,
            detail,
        }
    }

    /// One line for people: what, who, and the kind's own summary.
    pub fn summary(&self) -> String {
        match &self.detail {
            Detail::FdExhausted(detail) => detail.summary(),
            Detail::HungTask(detail) => detail.summary(),
            Detail::HungTaskRecovered(detail) => detail.summary(),
            Detail::OomKill(detail) => detail.summary(),
            Detail::KernelOops(detail) => format!("kernel oops {}", detail.summary()),
            Detail::KernelWarning(detail) => format!("kernel warning {}", detail.summary()),
        }
    }
}
