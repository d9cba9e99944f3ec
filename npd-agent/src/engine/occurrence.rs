//! Each kind of event as an Event occurrence: reason, message, aggregation key, targets.
//!
//! Aggregation keys are `Reason|subject|detail`, the subject being the pod's container (by
//! name when known, so a crash-looping container stays one series), the unit, the cgroup or
//! `node`, and the detail what tells problems of one subject apart (the process, the stack's
//! top function, the kernel's call site).

use super::{
    events::{EventReason, Occurrence},
    oops::describe_problem,
    subject::{describe_task, frame_function, subject_key, targets},
    time::Timestamp,
};
use crate::{
    detectors::{
        fd::FdExhausted,
        hung_task::{HungTask, HungTaskRecovered},
        oom::OomKill,
        oops::KernelProblem,
    },
    event::Event,
};

fn occurrence(
    reason: EventReason,
    event: &Event,
    detail_key: &str,
    message: String,
    count: u64,
    now: Timestamp,
) -> Occurrence {
    let attribution = event.attribution.as_ref();
    Occurrence {
        reason,
        key: format!("{reason}|{}|{detail_key}", subject_key(attribution)),
        message,
        targets: targets(attribution),
        count: count.max(1),
        at: now.wall_at(event.ts_ns),
    }
}

fn who(event: &Event) -> String {
    describe_task(&event.task, event.attribution.as_ref())
}

pub(crate) fn task_hung(event: &Event, hang: &HungTask, now: Timestamp) -> Occurrence {
    let top = hang
        .stack
        .first()
        .map_or("?", |frame| frame_function(frame));
    let stack = if hang.stack.is_empty() {
        String::new()
    } else {
        format!(
            "; stack: {}",
            hang.stack[..hang.stack.len().min(3)].join(", ")
        )
    };
    let message = format!(
        "task {} blocked in D state for more than the hung task timeout{stack}",
        who(event)
    );
    let detail = format!("{}|{top}", event.task.comm);
    occurrence(EventReason::TaskHung, event, &detail, message, 1, now)
}

pub(crate) fn task_hung_recovered(
    event: &Event,
    recovered: &HungTaskRecovered,
    now: Timestamp,
) -> Occurrence {
    let message = format!("task {} {}", who(event), recovered.summary());
    occurrence(
        EventReason::TaskHungRecovered,
        event,
        &event.task.comm,
        message,
        1,
        now,
    )
}

pub(crate) fn oom_killing(event: &Event, kill: &OomKill, now: Timestamp) -> Occurrence {
    let trigger = if kill.trigger.pid != 0 && kill.trigger.pid != event.task.pid {
        format!(
            "; the allocation that ran it was by {} (pid {})",
            kill.trigger.comm, kill.trigger.pid
        )
    } else {
        String::new()
    };
    let message = format!("process {} {}{trigger}", who(event), kill.summary());
    occurrence(
        EventReason::OomKilling,
        event,
        &event.task.comm,
        message,
        1,
        now,
    )
}

pub(crate) fn kernel_problem(
    reason: EventReason,
    event: &Event,
    problem: &KernelProblem,
    now: Timestamp,
) -> Occurrence {
    let what = match reason {
        EventReason::KernelOops => "kernel oops",
        _ => "kernel warning",
    };
    let taint = problem
        .taint_flags
        .as_deref()
        .filter(|flags| !flags.is_empty())
        .map(|flags| format!("; kernel tainted {flags}"))
        .unwrap_or_default();
    let message = format!("{}{taint}", describe_problem(what, event, problem));
    let site = problem
        .caller
        .as_deref()
        .map(frame_function)
        .or(problem.counter)
        .unwrap_or("?");
    occurrence(reason, event, site, message, problem.occurrences, now)
}

pub(crate) fn fd_exhausted(event: &Event, failure: &FdExhausted, now: Timestamp) -> Occurrence {
    let message = format!("process {}: {}", who(event), failure.summary());
    // A record stands for itself and the failures folded into it; a sweep only for those.
    let failures = if failure.flushed {
        failure.suppressed
    } else {
        failure.suppressed + 1
    };
    let detail = format!("{}|{}|{}", event.task.comm, event.task.pid, failure.errno);
    occurrence(
        EventReason::FdExhausted,
        event,
        &detail,
        message,
        failures,
        now,
    )
}
