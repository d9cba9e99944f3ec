//! KernelOops: True from the first oops until reboot (the kernel stays tainted).

use super::{
    condition::{NodeCondition, reason},
    subject::describe_task,
    time::Timestamp,
};
use crate::{detectors::oops::KernelProblem, event::Event};

#[derive(Debug, Default)]
pub(crate) struct OopsState {
    /// Oopses seen by this engine (a record may stand for several).
    seen: u64,
}

/// `kernel oops at page_fault_oops+0x1/0x2 in task ...`: what the kernel reported, where.
pub(crate) fn describe_problem(what: &str, event: &Event, problem: &KernelProblem) -> String {
    let at = problem
        .caller
        .as_deref()
        .map(|caller| format!(" at {caller}"))
        .unwrap_or_default();
    let task = describe_task(&event.task, event.attribution.as_ref());
    let task = if task.is_empty() {
        String::new()
    } else {
        format!(" in task {task}")
    };
    let counted = match (problem.counter, problem.count) {
        (Some(counter), Some(count)) => format!(" ({counter} now {count})"),
        _ => String::new(),
    };
    let boot = if problem.since_boot {
        " before npd started"
    } else {
        ""
    };
    let times = if problem.occurrences > 1 {
        format!(", {} times", problem.occurrences)
    } else {
        String::new()
    };
    format!("{what}{at}{task}{times}{counted}{boot}")
}

impl OopsState {
    pub(crate) fn on_oops(
        &mut self,
        event: &Event,
        problem: &KernelProblem,
        condition: &mut NodeCondition,
        now: Timestamp,
    ) {
        self.seen += problem.occurrences.max(1);
        let taint = problem
            .taint_flags
            .as_deref()
            .filter(|flags| !flags.is_empty())
            .map(|flags| format!(" ({flags})"))
            .unwrap_or_default();
        // Name the tally only when earlier oopses were seen too.
        let count = if self.seen > problem.occurrences.max(1) {
            format!("{} kernel oopses seen this boot, the last: ", self.seen)
        } else {
            String::new()
        };
        let message = format!(
            "{count}{}; the kernel is tainted{taint} and the node needs a reboot",
            describe_problem("kernel oops", event, problem)
        );
        condition.set_true(reason::KERNEL_OOPS, message, now.wall);
    }
}
