//! KernelDeadlock: True while any task is hung, False once none has been for the recovery
//! window.

use std::{collections::BTreeMap, time::SystemTime};

use super::{
    condition::NodeCondition,
    config::EngineConfig,
    subject::describe_task,
    time::{Timestamp, duration_ns, human_duration},
};
use crate::{
    clock::rfc3339,
    event::{Event, Task},
};

#[derive(Debug)]
struct HungTaskEntry {
    /// `comm (pid N) in pod ...`.
    description: String,
    stack_top: Vec<String>,
    first_seen_ns: u64,
    first_seen_wall: SystemTime,
    last_report_ns: u64,
    /// The condition's reason for this task (`DockerHung`), when it names a component.
    reason: Option<&'static str>,
}

impl HungTaskEntry {
    fn describe(&self) -> String {
        let stack = if self.stack_top.is_empty() {
            String::new()
        } else {
            format!("; stack: {}", self.stack_top.join(", "))
        };
        format!(
            "task {} blocked in D state since {}{stack}",
            self.description,
            rfc3339(self.first_seen_wall)
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct DeadlockState {
    /// Hung tasks by thread id (the kernel's pid: khungtaskd reports threads).
    hung: BTreeMap<u32, HungTaskEntry>,
    /// Start of the recovery window: when the last hung task went away, or when a True
    /// condition was restored. `None` while a task is hung or the condition is False.
    quiet_since_ns: Option<u64>,
}

/// Key of a task: its thread id, or its pid if the record has no thread id.
fn task_key(task: &Task) -> u32 {
    if task.tid != 0 { task.tid } else { task.pid }
}

/// One report of a hung task (`Change::TaskHung`, and the condition's reason for it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HangReport<'a> {
    pub(crate) first_seen_ns: u64,
    pub(crate) stack_top: &'a [String],
    pub(crate) first_report: bool,
    pub(crate) reason: Option<&'static str>,
}

impl DeadlockState {
    /// Returns true when the report starts a hang npd has not reported (a TaskHung Event is
    /// due); repeats only refresh the condition.
    pub(crate) fn on_hung_task(
        &mut self,
        event: &Event,
        hang: HangReport<'_>,
        condition: &mut NodeCondition,
        now: Timestamp,
    ) -> bool {
        let HangReport {
            first_seen_ns,
            stack_top,
            first_report,
            reason,
        } = hang;
        let first_seen_ns = if first_seen_ns != 0 {
            first_seen_ns
        } else {
            event.ts_ns
        };
        let key = task_key(&event.task);
        let new_hang = match self.hung.get_mut(&key) {
            // A different first report under the same id is a new hang (or a reused id).
            Some(entry) if entry.first_seen_ns == first_seen_ns => {
                entry.last_report_ns = now.monotonic_ns;
                if entry.stack_top.is_empty() {
                    entry.stack_top = stack_top.to_vec();
                }
                false
            }
            _ => {
                self.hung.insert(
                    key,
                    HungTaskEntry {
                        description: describe_task(&event.task, event.attribution.as_ref()),
                        stack_top: stack_top.to_vec(),
                        first_seen_ns,
                        first_seen_wall: now.wall_at(first_seen_ns),
                        last_report_ns: now.monotonic_ns,
                        reason,
                    },
                );
                first_report
            }
        };
        self.quiet_since_ns = None;
        condition.set_problem_as(self.reason(), self.message(), now.wall);
        new_hang
    }

    pub(crate) fn on_recovered(
        &mut self,
        event: &Event,
        condition: &mut NodeCondition,
        config: &EngineConfig,
        now: Timestamp,
    ) {
        let Some(entry) = self.hung.remove(&task_key(&event.task)) else {
            return;
        };
        let what = format!("task {} recovered", entry.description);
        self.after_removal(&what, condition, config, now);
    }

    /// Forgets tasks no longer reported, and clears the condition once the recovery window
    /// has passed with no hung task.
    pub(crate) fn advance(
        &mut self,
        condition: &mut NodeCondition,
        config: &EngineConfig,
        now: Timestamp,
    ) {
        let forget_ns = duration_ns(config.hung_task_forget_after);
        let stale: Vec<u32> = self
            .hung
            .iter()
            .filter(|(_, entry)| now.monotonic_ns.saturating_sub(entry.last_report_ns) > forget_ns)
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            if let Some(entry) = self.hung.remove(&key) {
                let what = format!(
                    "task {} was not reported hung for {} (its recovery was not seen)",
                    entry.description,
                    human_duration(config.hung_task_forget_after)
                );
                self.after_removal(&what, condition, config, now);
            }
        }
        if let Some(quiet_since_ns) = self.quiet_since_ns
            && self.hung.is_empty()
            && now.since(quiet_since_ns) >= config.hung_task_recovery_window
        {
            self.quiet_since_ns = None;
            let message = format!(
                "no task hung for {}",
                human_duration(config.hung_task_recovery_window)
            );
            condition.set_healthy(Some(message), now.wall);
        }
    }

    /// A True condition found on the Node stays True until the recovery window passes with
    /// no hung task seen.
    pub(crate) fn restore(&mut self, condition: &NodeCondition, now: Timestamp) {
        if condition.is_true() {
            self.quiet_since_ns = Some(now.monotonic_ns);
        }
    }

    fn after_removal(
        &mut self,
        what: &str,
        condition: &mut NodeCondition,
        config: &EngineConfig,
        now: Timestamp,
    ) {
        if !condition.is_true() {
            return;
        }
        if !self.hung.is_empty() {
            condition.set_problem_as(self.reason(), self.message(), now.wall);
            return;
        }
        self.quiet_since_ns = Some(now.monotonic_ns);
        let clears_at = now.wall + config.hung_task_recovery_window;
        let message = format!(
            "no task hung now ({what} at {}); clears at {} if no task hangs again",
            rfc3339(now.wall),
            rfc3339(clears_at)
        );
        condition.set_problem(message, now.wall);
    }

    /// A component's reason if any hung task has one (a hung runtime or kubelet is the news,
    /// whichever task hung longest), the longest-hung such task's.
    fn reason(&self) -> Option<&'static str> {
        self.hung
            .iter()
            .filter_map(|(key, entry)| Some(((entry.first_seen_ns, *key), entry.reason?)))
            .min_by_key(|(order, _)| *order)
            .map(|(_, reason)| reason)
    }

    fn message(&self) -> String {
        let Some(longest) = self
            .hung
            .iter()
            .min_by_key(|(key, entry)| (entry.first_seen_ns, **key))
            .map(|(_, entry)| entry)
        else {
            return String::new();
        };
        match self.hung.len() {
            1 => longest.describe(),
            n => format!("{n} tasks hung; the longest: {}", longest.describe()),
        }
    }
}
