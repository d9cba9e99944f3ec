//! Counting and record submission.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    maps::ring_buf::RingBufEntry,
};
use npd_common::{
    Hook, RecordHeader, RecordKind, TASK_COMM_LEN,
    counters::{Counter, Detector, counter_index},
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

/// Reserves a record of type `T` in the ring buffer, counting a drop if it is full.
#[inline(always)]
pub(crate) fn reserve<T: 'static>(detector: Detector) -> Option<RingBufEntry<T>> {
    let entry = RECORDS.reserve::<T>(0);
    if entry.is_none() {
        count(detector, Counter::RingFull);
    }
    entry
}

#[inline(always)]
pub(crate) fn submit<T: 'static>(detector: Detector, entry: RingBufEntry<T>) {
    entry.submit(0);
    count(detector, Counter::Submitted);
}

/// The task a record is about.
pub(crate) struct Subject {
    /// Process (tgid); 0 where the hook does not know it (the agent fills it in).
    pub(crate) pid: u32,
    pub(crate) tid: u32,
    pub(crate) cgroup_id: u64,
    pub(crate) comm: [u8; TASK_COMM_LEN],
}

impl Subject {
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
pub(crate) fn header<T>(
    kind: RecordKind,
    version: u8,
    hook: Hook,
    subject: Subject,
) -> RecordHeader {
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
