//! Counting and record submission: every record goes out through [`record`].

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use npd_common::{
    Hook, RecordHeader, RecordKind, TASK_COMM_LEN,
    counters::{Counter, Detector, counter_index},
    fd::FdExhausted,
    hung_task::HungTask,
    oom::OomKill,
    oops::KernelProblem,
};

use crate::{
    maps::{COUNTERS, RECORDS},
    task,
};

#[inline(always)]
pub(crate) fn count(detector: Detector, counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(detector, counter)) {
        // SAFETY: a per-CPU slot; programs do not nest on one CPU for these hooks.
        unsafe { *slot += 1 };
    }
}

/// A record type: `#[repr(C)]`, starting with its [`RecordHeader`].
pub(crate) trait Record: 'static {}

/// Implements [`Record`], checking at compile time that the header comes first.
macro_rules! records {
    ($($ty:ty),* $(,)?) => {$(
        const _: () = assert!(core::mem::offset_of!($ty, header) == 0);
        impl $crate::emit::Record for $ty {}
    )*};
}
pub(crate) use records;

// A detector's own kinds are declared in its probe file.
records!(FdExhausted, HungTask, OomKill, KernelProblem);

/// Sends one record of type `T` about `subject`: reserves it in the ring buffer (counting a
/// drop if it is full), writes its header stamped now, lets `fill` write every other field
/// through the pointer it is given, then submits and counts it. Returns whether the record
/// was reserved (and so will reach the agent).
#[inline(always)]
pub(crate) fn record<T: Record>(
    detector: Detector,
    kind: RecordKind,
    version: u8,
    hook: Hook,
    subject: Subject,
    fill: impl FnOnce(*mut T),
) -> bool {
    let Some(mut entry) = RECORDS.reserve::<T>(0) else {
        count(detector, Counter::RingFull);
        return false;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points into the reserved entry, exclusively ours until submit, and
    // `T` starts with its header (checked by `records!`).
    unsafe {
        record
            .cast::<RecordHeader>()
            .write(header::<T>(kind, version, hook, subject));
    }
    fill(record);
    entry.submit(0);
    count(detector, Counter::Submitted);
    true
}

/// The task a record is about.
#[derive(Clone, Copy)]
pub(crate) struct Subject {
    /// Process (tgid); 0 where the hook does not know it (the agent fills it in).
    pub(crate) pid: u32,
    pub(crate) tid: u32,
    pub(crate) cgroup_id: u64,
    pub(crate) comm: [u8; TASK_COMM_LEN],
}

impl Subject {
    /// No task (a block completion, in interrupt context): all zero.
    #[inline(always)]
    pub(crate) const fn none() -> Self {
        Self {
            pid: 0,
            tid: 0,
            cgroup_id: 0,
            comm: [0; TASK_COMM_LEN],
        }
    }

    /// The current task.
    #[inline(always)]
    pub(crate) fn current() -> Self {
        let pid_tgid = bpf_get_current_pid_tgid();
        Self {
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            cgroup_id: task::current_cgroup_id(),
            comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        }
    }

    /// `task`, which need not be the current one.
    #[inline(always)]
    pub(crate) fn task(task: *const u8) -> Self {
        Self {
            pid: task::tgid(task),
            tid: task::pid(task),
            cgroup_id: task::cgroup_id(task),
            comm: task::comm(task),
        }
    }
}

/// The header of a record of type `T` about `subject`, stamped now.
#[inline(always)]
fn header<T>(kind: RecordKind, version: u8, hook: Hook, subject: Subject) -> RecordHeader {
    RecordHeader {
        kind: kind as u16,
        version,
        hook: hook as u8,
        size: size_of::<T>() as u32,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid: subject.pid,
        tid: subject.tid,
        cgroup_id: subject.cgroup_id,
        comm: subject.comm,
    }
}
