//! Counting and record submission.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    maps::ring_buf::RingBufEntry,
};
use npd_common::{
    Hook, RecordHeader, RecordKind,
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

/// A header for a record about the current task.
#[inline(always)]
pub(crate) fn current_header<T>(kind: RecordKind, version: u8, hook: Hook) -> RecordHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    RecordHeader {
        kind: kind as u16,
        version,
        hook: hook as u8,
        size: core::mem::size_of::<T>() as u32,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        cgroup_id: task::current_cgroup_id(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// A header for a record about `task`, which need not be the current one.
#[inline(always)]
pub(crate) fn task_header<T>(
    kind: RecordKind,
    version: u8,
    hook: Hook,
    task: *const u8,
) -> RecordHeader {
    RecordHeader {
        kind: kind as u16,
        version,
        hook: hook as u8,
        size: core::mem::size_of::<T>() as u32,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid: task::tgid(task),
        tid: task::pid(task),
        cgroup_id: task::cgroup_id(task),
        comm: task::comm(task),
    }
}
