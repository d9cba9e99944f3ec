//! A per-CPU token bucket per detector, for hooks that can fire in storms (thousands of hung
//! tasks behind one NFS server, a WARN in a hot path). Anything over budget is counted as
//! rate-limited, never silently lost: the agent reports the counters.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use npd_common::counters::{Counter, Detector};

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
