//! The state of a NodeCondition npd owns (its declaration, [`ConditionType`], comes from the
//! detector that feeds it).

use std::{fmt, time::SystemTime};

pub use crate::problem::ConditionType;

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
        let spec = condition_type.spec();
        Self {
            condition_type,
            status: ConditionStatus::False,
            reason: spec.healthy_reason.to_owned(),
            message: spec.healthy_message.to_owned(),
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

    /// True, with the type's problem reason.
    pub(crate) fn set_problem(&mut self, message: String, now: SystemTime) {
        self.set_problem_as(None, message, now);
    }

    /// True, with `reason` (a component's, see `Assessment::condition_reason`) or else the
    /// type's problem reason.
    pub(crate) fn set_problem_as(
        &mut self,
        reason: Option<&str>,
        message: String,
        now: SystemTime,
    ) {
        let reason = reason.unwrap_or(self.condition_type.spec().problem_reason);
        self.set(ConditionStatus::True, reason, message, now);
    }

    /// Back to healthy, with the type's healthy reason.
    pub(crate) fn set_healthy(&mut self, message: Option<String>, now: SystemTime) {
        let spec = self.condition_type.spec();
        let message = message.unwrap_or_else(|| spec.healthy_message.to_owned());
        self.set(ConditionStatus::False, spec.healthy_reason, message, now);
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
