//! Hung tasks: khungtaskd's `sched_process_hang`, with the blocked task's kernel stack.

use serde::Serialize;

/// A task reported blocked in D state longer than `kernel.hung_task_timeout_secs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HungTask {
    /// The blocked task's kernel stack, innermost first, as `function+0xoff`.
    pub stack: Vec<String>,
    /// Where the stack came from: `kernel` (captured by the hook) or `procfs`
    /// (`/proc/PID/stack`, when the hook cannot reach the task).
    pub stack_source: &'static str,
    /// True on the first report of this hang; khungtaskd re-reports a task every check
    /// interval while it stays blocked, and those are repeats.
    pub first_seen: bool,
    /// Reports of this hang so far (1 on the first).
    pub repeat: u32,
    /// CLOCK_MONOTONIC ns of the first report of this hang.
    pub first_seen_ns: u64,
}

impl HungTask {
    pub fn summary(&self) -> String {
        let top = self.stack.first().map(String::as_str).unwrap_or("?");
        if self.first_seen {
            format!("task blocked in D state (top frame {top})")
        } else {
            format!(
                "task still blocked, report {} (top frame {top})",
                self.repeat
            )
        }
    }
}

/// A task npd saw hung is no longer blocked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HungTaskRecovered {
    /// `running` (left D state) or `exited`.
    pub how: &'static str,
    /// From the first hang report to when npd noticed the recovery.
    pub hung_for_ms: u64,
    /// Hang reports received for it.
    pub reports: u32,
}

impl HungTaskRecovered {
    pub fn summary(&self) -> String {
        format!(
            "no longer blocked ({}) after {:.1}s and {} reports",
            self.how,
            self.hung_for_ms as f64 / 1000.0,
            self.reports
        )
    }
}
