//! Hung task: khungtaskd found a task in uninterruptible sleep (D state) for longer than
//! `kernel.hung_task_timeout_secs`. Reported again every check interval while it stays blocked.

use crate::{MAX_STACK_DEPTH, RecordHeader, assert_layout, impl_pod};

pub const HUNG_TASK_VERSION: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HungTask {
    /// The blocked task (not khungtaskd).
    pub header: RecordHeader,
    /// Valid frames in `stack`; 0 when the hook cannot reach the task (classic tracepoint),
    /// in which case the agent reads `/proc/PID/stack`.
    pub stack_len: u32,
    pub _pad: u32,
    /// Kernel return addresses, innermost first.
    pub stack: [u64; MAX_STACK_DEPTH],
}

assert_layout!(HungTask, 48 + 8 + 8 * MAX_STACK_DEPTH);
impl_pod!(HungTask);

/// tp_btf `sched_process_hang` (preferred: the blocked task's cgroup and stack).
pub const BTF_PROGRAM: &str = "hung_task_btf";
/// The classic `sched:sched_process_hang` tracepoint (fallback).
pub const TRACEPOINT_PROGRAM: &str = "hung_task_tp";

/// The names the agent looks this detector's pieces up by (see [`crate::names`]).
pub const PROGRAMS: &[&str] = &[BTF_PROGRAM, TRACEPOINT_PROGRAM];
pub const MAPS: &[&str] = &[];
pub const GLOBALS: &[&str] = &[];
