//! Hung tasks: khungtaskd's `sched_process_hang`, fired for a task in D state longer than
//! `kernel.hung_task_timeout_secs`, before (and regardless of) its `hung_task_warnings` cap.
//!
//! Preferred: tp_btf, which hands over the `task_struct *`, so the record carries the blocked
//! task's own cgroup and kernel stack. Fallback: the classic tracepoint (pid and comm only;
//! the agent reads the stack from /proc).

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::debug;
use npd_common::{
    Hook, MAX_STACK_DEPTH, RecordKind,
    config::COMM_DATA_LOC_HANG,
    counters::{Counter, Detector},
    hung_task::{HUNG_TASK_VERSION, HungTask},
};

use crate::{
    config::config,
    emit::{self, Subject, count},
    ratelimit,
    stack::capture_task_stack,
    tracepoint::thread_subject,
};

#[btf_tracepoint(function = "sched_process_hang")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn hung_task_btf(ctx: BtfTracePointContext) -> i32 {
    count(Detector::HungTask, Counter::Hits);
    if !ratelimit::allow(Detector::HungTask) {
        return 0;
    }
    let task: *mut aya_ebpf::bindings::task_struct = ctx.arg(0);
    emit::record::<HungTask>(
        Detector::HungTask,
        RecordKind::HungTask,
        HUNG_TASK_VERSION,
        Hook::BtfTracepoint,
        Subject::task(task as *const u8),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record| unsafe {
            (*record)._pad = 0;
            (*record).stack_len = capture_task_stack(task, &mut (*record).stack);
            debug!(
                &ctx,
                "hung task pid {} ({} frames)",
                (*record).header.tid,
                (*record).stack_len
            );
        },
    );
    0
}

#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn hung_task_tp(ctx: TracePointContext) -> u32 {
    count(Detector::HungTask, Counter::Hits);
    if !ratelimit::allow(Detector::HungTask) {
        return 0;
    }
    // SAFETY: offsets from the format file; the helper checks every read.
    let pid: i32 = match unsafe { ctx.read_at(config!(tracepoints.hang_pid) as usize) } {
        Ok(pid) => pid,
        Err(_) => return 0,
    };
    emit::record::<HungTask>(
        Detector::HungTask,
        RecordKind::HungTask,
        HUNG_TASK_VERSION,
        Hook::Tracepoint,
        thread_subject(
            &ctx,
            pid,
            config!(tracepoints.hang_comm),
            COMM_DATA_LOC_HANG,
        ),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record| unsafe {
            (*record).stack_len = 0;
            (*record)._pad = 0;
            (*record).stack = [0; MAX_STACK_DEPTH];
        },
    );
    0
}
