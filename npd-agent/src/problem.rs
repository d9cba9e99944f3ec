//! What a detector tells the problem engine, in the engine's terms: the Event reasons and
//! NodeConditions it declares, and for each observation what it means (an Event to write, a
//! condition to raise or clear). A leaf module: detectors and the engine both depend on it,
//! it depends on neither.

use std::{fmt, hash::Hash};

/// An Event's reason, NPD's name where NPD has one. Declared once, by the detector that
/// reports it; compared by name.
#[derive(Clone, Copy)]
pub struct EventReason {
    name: &'static str,
    event_type: EventType,
}

impl EventReason {
    /// A problem (`type: Warning`).
    pub const fn warning(name: &'static str) -> Self {
        Self {
            name,
            event_type: EventType::Warning,
        }
    }

    /// Good news, e.g. a recovery (`type: Normal`).
    pub const fn normal(name: &'static str) -> Self {
        Self {
            name,
            event_type: EventType::Normal,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.name
    }

    pub fn event_type(self) -> EventType {
        self.event_type
    }
}

impl PartialEq for EventReason {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for EventReason {}

impl Hash for EventReason {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl PartialOrd for EventReason {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventReason {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(other.name)
    }
}

impl fmt::Debug for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// How a condition goes back to False: the state machine the engine runs for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clearing {
    /// True while any task is hung; False once none has been for the recovery window
    /// (`hungTask.recoveryWindow`). Fed by [`Change::TaskHung`] / [`Change::TaskRecovered`].
    HungTasks,
    /// True until the node reboots (the kernel stays tainted, the hardware stays broken). Fed
    /// by [`Change::Oops`]; `after_reboot` is the healthy message when a restart finds it True
    /// on a new boot; `problems` names several of them in the message (`kernel oopses`).
    Reboot {
        after_reboot: &'static str,
        problems: &'static str,
    },
    /// The system file table with hysteresis and a hold after ENFILE (`fdPressure.*`). Fed by
    /// file-table samples and [`Change::FileTableFull`].
    FileTable,
    /// True while any problem raised under a key (a device, a mount) is not cleared by its
    /// detector. Fed by [`Change::Raise`], [`Change::Clear`] and [`Change::Resync`].
    Keyed,
}

/// A NodeCondition npd owns, declared once by the detector that feeds it.
#[derive(Debug)]
pub struct ConditionSpec {
    /// The key under `kubernetes.conditions` that renames it, e.g. `kernelDeadlock`.
    pub config_key: &'static str,
    /// The condition's `type` on the Node by default (NPD's name where NPD has one).
    pub type_name: &'static str,
    /// Reason while True.
    pub problem_reason: &'static str,
    /// Reason and message while False.
    pub healthy_reason: &'static str,
    pub healthy_message: &'static str,
    /// The detector that feeds it (its registry name).
    pub detector: &'static str,
    pub clearing: Clearing,
}

/// A condition type npd owns: a handle on its [`ConditionSpec`], compared by type name.
#[derive(Clone, Copy)]
pub struct ConditionType(&'static ConditionSpec);

impl ConditionType {
    pub const fn new(spec: &'static ConditionSpec) -> Self {
        Self(spec)
    }

    pub fn spec(self) -> &'static ConditionSpec {
        self.0
    }

    /// The default `type` on the Node.
    pub fn as_str(self) -> &'static str {
        self.0.type_name
    }
}

impl PartialEq for ConditionType {
    fn eq(&self, other: &Self) -> bool {
        self.0.type_name == other.0.type_name
    }
}

impl Eq for ConditionType {}

impl Hash for ConditionType {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.type_name.hash(state);
    }
}

impl PartialOrd for ConditionType {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ConditionType {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.type_name.cmp(other.0.type_name)
    }
}

impl fmt::Debug for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.type_name)
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.type_name)
    }
}

/// An Event the observation asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub reason: EventReason,
    /// What tells problems of one subject apart in the aggregation key (the process, the
    /// stack's top function, the device).
    pub detail_key: String,
    pub message: String,
    /// Occurrences it stands for (at least 1).
    pub count: u64,
    /// Counted by the kernel before npd started: not reported again by a restarted agent on
    /// the same boot.
    pub since_boot: bool,
}

/// What an observation does to a condition; which changes a condition takes depends on its
/// [`Clearing`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A task reported hung, blocked since `first_seen_ns`; `first_report` is false for
    /// khungtaskd's repeats.
    TaskHung {
        first_seen_ns: u64,
        stack_top: Vec<String>,
        first_report: bool,
    },
    /// The event's task is no longer hung.
    TaskRecovered,
    /// The kernel oopsed (or hardware failed) `occurrences` times; `description` says what
    /// and where; `taint_flags` the kernel's taint, if it is tainted.
    Oops {
        occurrences: u64,
        description: String,
        taint_flags: Option<String>,
    },
    /// ENFILE: the system file table was full when `syscall` ran.
    FileTableFull { syscall: String },
    /// A problem under `key` (e.g. a device): True until cleared.
    Raise { key: String, message: String },
    /// The problem under `key` is gone.
    Clear { key: String, message: String },
    /// The complete set of current problems (key, message), e.g. found at start: anything
    /// not in it is cleared, including a True condition restored from the Node.
    Resync { current: Vec<(String, String)> },
}

/// What one observation means to the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    pub report: Option<Report>,
    pub condition: Option<(ConditionType, Change)>,
    /// The reason the condition takes for this problem instead of its spec's (one condition,
    /// reasons naming the component, as NPD's `ContainerdUnhealthy` or `DockerHung`); one of
    /// the detector's [`condition_reasons`](crate::detectors::Detector::condition_reasons).
    pub condition_reason: Option<&'static str>,
}

impl Assessment {
    pub fn report(report: Report) -> Self {
        Self {
            report: Some(report),
            condition: None,
            condition_reason: None,
        }
    }

    /// The condition's reason for this problem (see [`Self::condition_reason`]).
    pub fn with_condition_reason(mut self, reason: Option<&'static str>) -> Self {
        self.condition_reason = reason;
        self
    }

    pub fn with_condition(mut self, condition: ConditionType, change: Change) -> Self {
        self.condition = Some((condition, change));
        self
    }
}

/// Every condition and Event reason the engine may meet, from the detector registry.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub conditions: Vec<ConditionType>,
    pub reasons: Vec<EventReason>,
    /// Reasons conditions take besides their specs' (`Detector::condition_reasons`).
    pub condition_reasons: Vec<&'static str>,
}
