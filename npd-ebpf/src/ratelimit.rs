//! Storm safety, two ways:
//! - [`allow`]: a per-CPU token bucket per detector, for hooks that can fire in storms
//!   (thousands of hung tasks behind one NFS server, a WARN in a hot path). Anything over
//!   budget is counted as rate-limited, never silently lost: the agent reports the counters.
//! - [`per_key`]: per-key windows in an LRU hash (a process's fd failures, a device's I/O
//!   errors): the first failure of a key is reported at once, then at most one record per
//!   interval carrying how many were folded into it. The key's failure count only ever grows,
//!   so the agent's sweep can account for the tail of a storm no record carried.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use npd_common::{
    counters::{Counter, Detector},
    fd::FdRateState,
};

use crate::emit::count;

/// Sustained records per second per CPU, and the burst allowed on top.
const RATE_PER_SEC: u64 = 16;
const BURST: u64 = 64;
const COST_NS: u64 = 1_000_000_000 / RATE_PER_SEC;

/// Credit in nanoseconds: each record costs `COST_NS`, time earns it back, up to a burst.
#[repr(C)]
pub(crate) struct Bucket {
    credit_ns: u64,
    last_ns: u64,
}

#[map]
static BUCKETS: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(Detector::ALL.len() as u32, 0);

/// Whether `detector` may send a record now; counts a rate-limited event if not.
#[inline(always)]
pub(crate) fn allow(detector: Detector) -> bool {
    let Some(bucket) = BUCKETS.get_ptr_mut(detector as u32) else {
        return true;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a per-CPU slot of this program's map; nothing else writes it concurrently.
    let allowed = unsafe {
        let earned = now.saturating_sub((*bucket).last_ns);
        let credit = (*bucket)
            .credit_ns
            .saturating_add(earned)
            .min(BURST * COST_NS);
        (*bucket).last_ns = now;
        if credit >= COST_NS {
            (*bucket).credit_ns = credit - COST_NS;
            true
        } else {
            (*bucket).credit_ns = credit;
            false
        }
    };
    if !allowed {
        count(detector, Counter::RateLimited);
    }
    allowed
}

/// The fields every per-key state starts with, in this order (checked by `windows!`).
#[repr(C)]
pub(crate) struct Window {
    pub(crate) first_failure_ns: u64,
    pub(crate) last_record_ns: u64,
    /// Every failure of the key since `first_failure_ns` (atomically incremented).
    pub(crate) failures: u64,
    /// `failures` as of the last record that reached the ring buffer.
    pub(crate) reported: u64,
}

/// A per-key state: `#[repr(C)]`, starting with the fields of [`Window`].
pub(crate) trait Windowed: 'static {}

macro_rules! windows {
    ($($ty:ty),* $(,)?) => {$(
        const _: () = {
            use core::mem::offset_of;
            use $crate::ratelimit::Window;
            assert!(offset_of!($ty, first_failure_ns) == offset_of!(Window, first_failure_ns));
            assert!(offset_of!($ty, last_record_ns) == offset_of!(Window, last_record_ns));
            assert!(offset_of!($ty, failures) == offset_of!(Window, failures));
            assert!(offset_of!($ty, reported) == offset_of!(Window, reported));
        };
        impl $crate::ratelimit::Windowed for $ty {}
    )*};
}
pub(crate) use windows;

// A detector's own per-key state is declared in its probe file.
windows!(FdRateState);

/// What one record sent by [`per_key`] stands for.
pub(crate) struct Tally {
    /// Failures of the key no earlier record carried, this one excluded.
    pub(crate) suppressed: u64,
    /// Failures of the key since `first_failure_ns`, this one included.
    pub(crate) failures_total: u64,
    /// When the key's entry was created: identifies the running count.
    pub(crate) first_failure_ns: u64,
}

/// Counts a hit of `detector` for `key` and lets `emit` send a record if the key's window
/// allows: its first failure at once, then at most one per `interval_ns`. `fresh` makes the
/// entry of a new key (its [`Window`] fields are overwritten); `note` updates the
/// last-writer-wins hints of an entry on every failure. `emit` returns whether its record
/// was reserved: only then does `reported` advance, so failures lost to a full ring buffer
/// stay unreported for the next record or the agent's sweep to account for.
#[inline(always)]
pub(crate) fn per_key<K, V: Windowed>(
    detector: Detector,
    map: &LruHashMap<K, V>,
    key: &K,
    interval_ns: u64,
    fresh: impl FnOnce() -> V,
    note: impl FnOnce(*mut V),
    emit: impl FnOnce(Tally) -> bool,
) {
    count(detector, Counter::Hits);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut state = map.get_ptr_mut(key);
    if state.is_none() {
        let mut value = fresh();
        // SAFETY: `V` starts with the fields of `Window` (checked by `windows!`).
        unsafe {
            (&raw mut value).cast::<Window>().write(Window {
                first_failure_ns: now,
                // The window is open: the first failure is reported at once.
                last_record_ns: now.wrapping_sub(interval_ns),
                failures: 0,
                reported: 0,
            });
        }
        // Fails if another CPU created the entry first: then count on theirs.
        let _ = map.insert(key, &value, u64::from(BPF_NOEXIST));
        state = map.get_ptr_mut(key);
    }
    let Some(state) = state else {
        return;
    };
    note(state);
    let window = state.cast::<Window>();
    // SAFETY: a pointer into the map value, valid for this program run, starting with the
    // fields of `Window`; `failures` is only ever changed atomically, the other fields are
    // last-writer-wins.
    unsafe {
        // bpfel has no atomic types; an xadd whose result is unused is BPF_XADD, which every
        // kernel with ring buffers supports.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*window).failures, 1);
        if now.wrapping_sub((*window).last_record_ns) < interval_ns {
            count(detector, Counter::RateLimited);
            return;
        }
        (*window).last_record_ns = now;
        let failures = core::ptr::read_volatile(&raw const (*window).failures);
        let reported = (*window).reported;
        let sent = emit(Tally {
            suppressed: failures.saturating_sub(reported).saturating_sub(1),
            failures_total: failures,
            first_failure_ns: (*window).first_failure_ns,
        });
        if sent && failures > reported {
            (*window).reported = failures;
        }
    }
}
