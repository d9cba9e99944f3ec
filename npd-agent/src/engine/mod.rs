//! The problem engine: a pure state machine. Kernel events, file-table samples and the time
//! go in; the NodeConditions npd owns and the Events to write come out. No IO, no clock
//! reads, no Kubernetes types: the exporter maps its decisions onto the API.
//!
//! What each detector's events mean comes from the detectors themselves
//! ([`crate::event::Finding::assess`]); the engine runs one state machine per condition, chosen
//! by how the condition clears ([`Clearing`]).
//!
//! Use: [`Engine::new`], then [`Engine::restore`] with the conditions found on the Node, then
//! feed [`Engine::observe`] (each event), [`Engine::sample_file_table`] (every few seconds)
//! and [`Engine::tick`] (at least every few seconds: windows and holds end, and held-back
//! Events go out, only when time is passed in). Each returns the Events to write now;
//! [`Engine::conditions`] is the desired state of the conditions at any time.

mod condition;
mod config;
mod deadlock;
mod events;
mod fd_pressure;
mod keyed;
mod occurrence;
mod oops;
mod subject;
mod time;

#[cfg(test)]
mod tests;

pub use condition::{Boot, ConditionStatus, ConditionType, NodeCondition};
pub use config::{ConfigError, EngineConfig, EventRateLimit};
pub use events::{EventReason, EventStats, EventTarget, EventType, ProblemEvent};
pub use fd_pressure::FileTableSample;
pub(crate) use subject::{describe_task, frame_function};
pub use time::Timestamp;
pub(crate) use time::human_duration;

use deadlock::DeadlockState;
use events::EventQueue;
use fd_pressure::FdPressureState;
use keyed::KeyedState;
use oops::OopsState;

use crate::{
    event::Event,
    problem::{Catalog, Change, Clearing},
};

/// The state machine behind one condition, by how it clears.
#[derive(Debug)]
enum Machine {
    HungTasks(DeadlockState),
    Reboot(OopsState),
    FileTable(FdPressureState),
    Keyed(KeyedState),
}

impl Machine {
    fn for_clearing(clearing: Clearing) -> Self {
        match clearing {
            Clearing::HungTasks => Self::HungTasks(DeadlockState::default()),
            Clearing::Reboot { .. } => Self::Reboot(OopsState::default()),
            Clearing::FileTable => Self::FileTable(FdPressureState::default()),
            Clearing::Keyed => Self::Keyed(KeyedState::default()),
        }
    }
}

#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    /// In catalog order; `machines[i]` drives `conditions[i]`.
    conditions: Vec<NodeCondition>,
    machines: Vec<Machine>,
    events: EventQueue,
    /// An agent already ran on this boot, so what the kernel counted before this one started
    /// was reported then: not again as Events.
    since_boot_reported: bool,
}

impl Engine {
    /// Every condition of `catalog` starts False, transitioned at `now` (unless
    /// [`Engine::restore`] finds it on the Node).
    pub fn new(
        config: EngineConfig,
        catalog: &Catalog,
        now: Timestamp,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            conditions: catalog
                .conditions
                .iter()
                .map(|&t| NodeCondition::healthy(t, now.wall))
                .collect(),
            machines: catalog
                .conditions
                .iter()
                .map(|t| Machine::for_clearing(t.spec().clearing))
                .collect(),
            events: EventQueue::new(&config, &catalog.reasons, now),
            since_boot_reported: false,
            config,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn index(&self, condition_type: ConditionType) -> Option<usize> {
        self.conditions
            .iter()
            .position(|c| c.condition_type == condition_type)
    }

    /// Takes over the conditions found on the Node at start, so a restart neither resets a
    /// True condition nor moves a transition time. Call once, before the first observation.
    ///
    /// - True stays True (reason, message, time as found) until its machine clears it:
    ///   KernelDeadlock after the recovery window with no hung task seen, FDPressure after a
    ///   low sample past the minimum hold, a keyed condition when its detector resyncs, one
    ///   cleared by reboot only on [`Boot::New`].
    /// - False keeps its transition time.
    /// - Unknown, and types npd does not own (pass them or not), are ignored.
    pub fn restore(
        &mut self,
        found: impl IntoIterator<Item = NodeCondition>,
        boot: Boot,
        now: Timestamp,
    ) {
        for found in found {
            let Some(i) = self.index(found.condition_type) else {
                continue;
            };
            let slot = &mut self.conditions[i];
            match found.status {
                ConditionStatus::True => {
                    *slot = found;
                    if let Clearing::Reboot { after_reboot, .. } =
                        slot.condition_type.spec().clearing
                        && boot == Boot::New
                    {
                        slot.set_healthy(Some(after_reboot.to_owned()), now.wall);
                    }
                }
                ConditionStatus::False => {
                    slot.last_transition_time = found.last_transition_time;
                }
                ConditionStatus::Unknown => {}
            }
        }
        for (machine, condition) in self.machines.iter_mut().zip(&self.conditions) {
            match machine {
                Machine::HungTasks(state) => state.restore(condition, now),
                Machine::FileTable(state) => state.restore(condition, &self.config, now),
                Machine::Keyed(state) => state.restore(condition, now),
                Machine::Reboot(_) => {}
            }
        }
        self.since_boot_reported = boot == Boot::Same;
    }

    /// One event from the kernel (attributed or not).
    pub fn observe(&mut self, event: &Event, now: Timestamp) -> Vec<ProblemEvent> {
        let mut out = Vec::new();
        self.advance(now, &mut out);
        let assessment = event.assess();
        let mut report_due = true;
        if let Some((condition_type, change)) = &assessment.condition {
            report_due = self.apply(
                *condition_type,
                change,
                assessment.condition_reason,
                event,
                now,
            );
        }
        if let Some(report) = assessment.report
            && report_due
            && !(report.since_boot && self.since_boot_reported)
        {
            let occurrence = occurrence::occurrence(report, event, now);
            self.events.record(occurrence, now, &mut out);
        }
        out
    }

    /// Applies a change to a condition; false when it says the event is only a repeat and
    /// needs no Event of its own (a hang reported again).
    fn apply(
        &mut self,
        condition_type: ConditionType,
        change: &Change,
        reason: Option<&'static str>,
        event: &Event,
        now: Timestamp,
    ) -> bool {
        let Some(i) = self.index(condition_type) else {
            return true;
        };
        let condition = &mut self.conditions[i];
        match (&mut self.machines[i], change) {
            (
                Machine::HungTasks(state),
                Change::TaskHung {
                    first_seen_ns,
                    stack_top,
                    first_report,
                },
            ) => state.on_hung_task(
                event,
                deadlock::HangReport {
                    first_seen_ns: *first_seen_ns,
                    stack_top,
                    first_report: *first_report,
                    reason,
                },
                condition,
                now,
            ),
            (Machine::HungTasks(state), Change::TaskRecovered) => {
                state.on_recovered(event, condition, &self.config, now);
                true
            }
            (
                Machine::Reboot(state),
                Change::Oops {
                    occurrences,
                    description,
                    taint_flags,
                },
            ) => {
                state.on_oops(
                    *occurrences,
                    description,
                    taint_flags.as_deref(),
                    condition,
                    now,
                );
                true
            }
            (Machine::FileTable(state), Change::FileTableFull { syscall }) => {
                state.on_enfile(event, syscall, condition, &self.config, now);
                true
            }
            (Machine::Keyed(state), Change::Raise { key, message }) => {
                state.raise(key, message.clone(), reason, condition, now);
                true
            }
            (Machine::Keyed(state), Change::Clear { key, message }) => {
                state.clear(key, message.clone(), condition, now);
                true
            }
            (Machine::Keyed(state), Change::Resync { current }) => {
                state.resync(current, reason, condition, now);
                true
            }
            (machine, change) => {
                // A detector asked a condition for a change its clearing does not take: a
                // programming error, caught by the tests; a release agent ignores it.
                if cfg!(debug_assertions) {
                    panic!("{condition_type} is driven by {machine:?} and cannot take {change:?}");
                }
                true
            }
        }
    }

    /// A reading of `/proc/sys/fs/file-nr`, for every condition that follows the file table.
    pub fn sample_file_table(
        &mut self,
        sample: FileTableSample,
        now: Timestamp,
    ) -> Vec<ProblemEvent> {
        let mut out = Vec::new();
        self.advance(now, &mut out);
        for (machine, condition) in self.machines.iter_mut().zip(&mut self.conditions) {
            if let Machine::FileTable(state) = machine {
                state.on_sample(sample, condition, &self.config, now);
            }
        }
        out
    }

    /// Lets time pass: recovery windows end, forgotten hung tasks go, held-back Events and
    /// grown series are sent.
    pub fn tick(&mut self, now: Timestamp) -> Vec<ProblemEvent> {
        let mut out = Vec::new();
        self.advance(now, &mut out);
        out
    }

    /// The desired state of every condition npd owns, in catalog order.
    pub fn conditions(&self) -> &[NodeCondition] {
        &self.conditions
    }

    /// # Panics
    /// If `condition_type` is not in the engine's catalog.
    pub fn condition(&self, condition_type: ConditionType) -> &NodeCondition {
        let i = self
            .index(condition_type)
            .unwrap_or_else(|| panic!("{condition_type} is not in the engine's catalog"));
        &self.conditions[i]
    }

    /// Counters of one Event reason, for metrics.
    pub fn event_stats(&self, reason: EventReason) -> EventStats {
        self.events.stats(reason)
    }

    fn advance(&mut self, now: Timestamp, out: &mut Vec<ProblemEvent>) {
        for (machine, condition) in self.machines.iter_mut().zip(&mut self.conditions) {
            if let Machine::HungTasks(state) = machine {
                state.advance(condition, &self.config, now);
            }
        }
        self.events.flush(now, out);
    }
}
