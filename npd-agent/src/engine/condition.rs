//! The NodeConditions npd owns, with NPD's type and reason names so existing alerts and
//! dashboards keep working.

use std::{fmt, time::SystemTime};

/// A NodeCondition type npd owns. Each is always present on the Node (False when healthy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionType {
    /// A task is stuck in uninterruptible sleep (NPD's `KernelDeadlock`).
    KernelDeadlock,
    /// The kernel oopsed this boot and is tainted until reboot (NPD's `KernelOops`).
    KernelOops,
    /// The system-wide file table is (nearly) full.
    FdPressure,
}

impl ConditionType {
    pub const ALL: [Self; 3] = [Self::KernelDeadlock, Self::KernelOops, Self::FdPressure];

    /// The condition's `type` on the Node.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KernelDeadlock => "KernelDeadlock",
            Self::KernelOops => "KernelOops",
            Self::FdPressure => "FDPressure",
        }
    }

    /// The type named by a Node condition's `type`; `None` for types npd does not own.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::KernelDeadlock => 0,
            Self::KernelOops => 1,
            Self::FdPressure => 2,
        }
    }

    /// Reason and message while the problem is absent.
    fn healthy(self) -> (&'static str, &'static str) {
        match self {
            Self::KernelDeadlock => (reason::KERNEL_HAS_NO_DEADLOCK, "kernel has no deadlock"),
            Self::KernelOops => (reason::NO_KERNEL_OOPS, "no kernel oops this boot"),
            Self::FdPressure => (
                reason::NO_FD_PRESSURE,
                "system file table has enough free file handles",
            ),
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Condition reasons, NPD's where NPD has them.
pub mod reason {
    pub const TASK_HUNG: &str = "TaskHung";
    pub const KERNEL_HAS_NO_DEADLOCK: &str = "KernelHasNoDeadlock";
    pub const KERNEL_OOPS: &str = "KernelOops";
    pub const NO_KERNEL_OOPS: &str = "NoKernelOops";
    pub const FD_UNDER_PRESSURE: &str = "FDUnderPressure";
    pub const NO_FD_PRESSURE: &str = "NoFDPressure";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    True,
    False,
    /// Only ever found on a Node (set by someone else); the engine decides True or False.
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }

    /// Kubernetes' spelling; anything else is `Unknown`.
    pub fn from_name(name: &str) -> Self {
        match name {
            "True" => Self::True,
            "False" => Self::False,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A NodeCondition as the engine wants it on the Node (and as found there at start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCondition {
    pub condition_type: ConditionType,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    /// Changes only when `status` changes.
    pub last_transition_time: SystemTime,
}

impl NodeCondition {
    pub(crate) fn healthy(condition_type: ConditionType, since: SystemTime) -> Self {
        let (reason, message) = condition_type.healthy();
        Self {
            condition_type,
            status: ConditionStatus::False,
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: since,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }

    /// Sets the condition; the transition time moves only if the status changes.
    pub(crate) fn set(
        &mut self,
        status: ConditionStatus,
        reason: &str,
        message: String,
        now: SystemTime,
    ) {
        if self.status != status {
            self.status = status;
            self.last_transition_time = now;
        }
        if self.reason != reason {
            reason.clone_into(&mut self.reason);
        }
        self.message = message;
    }

    pub(crate) fn set_true(&mut self, reason: &str, message: String, now: SystemTime) {
        self.set(ConditionStatus::True, reason, message, now);
    }

    /// Back to healthy, with the type's healthy reason.
    pub(crate) fn set_healthy(&mut self, message: Option<String>, now: SystemTime) {
        let (reason, default_message) = self.condition_type.healthy();
        let message = message.unwrap_or_else(|| default_message.to_owned());
        self.set(ConditionStatus::False, reason, message, now);
    }
}

/// Whether the node still runs the boot during which the restored conditions were written,
/// as the exporter tells from the Node's boot id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// Same boot: an earlier agent wrote the conditions and reported what the kernel had
    /// counted before it started.
    Same,
    /// The node rebooted since: per-boot problems (an oops) are gone.
    New,
    /// Cannot tell (no boot id recorded): keep what was found, like `Same`, but do not
    /// assume anything was reported.
    Unknown,
}
