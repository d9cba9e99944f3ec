//! The problem engine: a pure state machine. Kernel events, file-table samples and the time
//! go in; the NodeConditions npd owns and the Events to write come out. No IO, no clock
//! reads, no Kubernetes types: the exporter maps its decisions onto the API.
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
mod occurrence;
mod oops;
mod subject;
mod time;

#[cfg(test)]
mod tests;

pub use condition::{Boot, ConditionStatus, ConditionType, NodeCondition, reason};
pub use config::{ConfigError, EngineConfig, EventRateLimit};
pub use events::{EventReason, EventStats, EventTarget, EventType, ProblemEvent};
pub use fd_pressure::FileTableSample;
pub use time::Timestamp;

use deadlock::DeadlockState;
use events::EventQueue;
use fd_pressure::FdPressureState;
use oops::OopsState;

use crate::event::{Detail, Event};

#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    /// Indexed by `ConditionType::index`.
    conditions: [NodeCondition; 3],
    deadlock: DeadlockState,
    oops: OopsState,
    fd_pressure: FdPressureState,
    events: EventQueue,
    /// An agent already ran on this boot, so what the kernel counted before this one started
    /// was reported then: not again as Events.
    since_boot_reported: bool,
}

impl Engine {
    /// All conditions start False, transitioned at `now` (unless [`Engine::restore`] finds
    /// them on the Node).
    pub fn new(config: EngineConfig, now: Timestamp) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            conditions: ConditionType::ALL.map(|t| NodeCondition::healthy(t, now.wall)),
            deadlock: DeadlockState::default(),
            oops: OopsState::default(),
            fd_pressure: FdPressureState::default(),
            events: EventQueue::new(&config, now),
            since_boot_reported: false,
            config,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Takes over the conditions found on the Node at start, so a restart neither resets a
    /// True condition nor moves a transition time. Call once, before the first observation.
    ///
    /// - True stays True (reason, message, time as found): KernelDeadlock until the recovery
    ///   window passes with no hung task seen, FDPressure until a low sample after the
    ///   minimum hold, KernelOops until reboot; so on [`Boot::New`] KernelOops turns False.
    /// - False keeps its transition time.
    /// - Unknown, and types npd does not own (pass them or not), are ignored.
    pub fn restore(
        &mut self,
        found: impl IntoIterator<Item = NodeCondition>,
        boot: Boot,
        now: Timestamp,
    ) {
        for found in found {
            let slot = &mut self.conditions[found.condition_type.index()];
            match found.status {
                ConditionStatus::True => {
                    *slot = found;
                    if slot.condition_type == ConditionType::KernelOops && boot == Boot::New {
                        slot.set_healthy(
                            Some("no kernel oops since the node rebooted".to_owned()),
                            now.wall,
                        );
                    }
                }
                ConditionStatus::False => {
                    slot.last_transition_time = found.last_transition_time;
                }
                ConditionStatus::Unknown => {}
            }
        }
        self.deadlock
            .restore(&self.conditions[ConditionType::KernelDeadlock.index()], now);
        self.fd_pressure.restore(
            &self.conditions[ConditionType::FdPressure.index()],
            &self.config,
            now,
        );
        self.since_boot_reported = boot == Boot::Same;
    }

    /// One event from the kernel (attributed or not).
    pub fn observe(&mut self, event: &Event, now: Timestamp) -> Vec<ProblemEvent> {
        let mut out = Vec::new();
        self.advance(now, &mut out);
        let [deadlock, oops, fd_pressure] = &mut self.conditions;
        match &event.detail {
            Detail::HungTask(hang) => {
                if self.deadlock.on_hung_task(event, hang, deadlock, now) {
                    let occurrence = occurrence::task_hung(event, hang, now);
                    self.events.record(occurrence, now, &mut out);
                }
            }
            Detail::HungTaskRecovered(recovered) => {
                self.deadlock
                    .on_recovered(event, deadlock, &self.config, now);
                let occurrence = occurrence::task_hung_recovered(event, recovered, now);
                self.events.record(occurrence, now, &mut out);
            }
            Detail::OomKill(kill) => {
                let occurrence = occurrence::oom_killing(event, kill, now);
                self.events.record(occurrence, now, &mut out);
            }
            Detail::KernelOops(problem) => {
                self.oops.on_oops(event, problem, oops, now);
                if !(problem.since_boot && self.since_boot_reported) {
                    let occurrence =
                        occurrence::kernel_problem(EventReason::KernelOops, event, problem, now);
                    self.events.record(occurrence, now, &mut out);
                }
            }
            Detail::KernelWarning(problem) => {
                if !(problem.since_boot && self.since_boot_reported) {
                    let occurrence =
                        occurrence::kernel_problem(EventReason::KernelWarning, event, problem, now);
                    self.events.record(occurrence, now, &mut out);
                }
            }
            Detail::FdExhausted(failure) => {
                if failure.errno == "ENFILE" {
                    self.fd_pressure
                        .on_enfile(event, failure, fd_pressure, &self.config, now);
                }
                let occurrence = occurrence::fd_exhausted(event, failure, now);
                self.events.record(occurrence, now, &mut out);
            }
        }
        out
    }

    /// A reading of `/proc/sys/fs/file-nr`.
    pub fn sample_file_table(
        &mut self,
        sample: FileTableSample,
        now: Timestamp,
    ) -> Vec<ProblemEvent> {
        let mut out = Vec::new();
        self.advance(now, &mut out);
        self.fd_pressure.on_sample(
            sample,
            &mut self.conditions[ConditionType::FdPressure.index()],
            &self.config,
            now,
        );
        out
    }

    /// Lets time pass: recovery windows end, forgotten hung tasks go, held-back Events and
    /// grown series are sent.
    pub fn tick(&mut self, now: Timestamp) -> Vec<ProblemEvent> {
        let mut out = Vec::new();
        self.advance(now, &mut out);
        out
    }

    /// The desired state of every condition npd owns, in [`ConditionType::ALL`] order.
    pub fn conditions(&self) -> &[NodeCondition] {
        &self.conditions
    }

    pub fn condition(&self, condition_type: ConditionType) -> &NodeCondition {
        &self.conditions[condition_type.index()]
    }

    /// Counters of one Event reason, for metrics.
    pub fn event_stats(&self, reason: EventReason) -> EventStats {
        self.events.stats(reason)
    }

    fn advance(&mut self, now: Timestamp, out: &mut Vec<ProblemEvent>) {
        self.deadlock.advance(
            &mut self.conditions[ConditionType::KernelDeadlock.index()],
            &self.config,
            now,
        );
        self.events.flush(now, out);
    }
}
