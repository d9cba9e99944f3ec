//! The maps every detector shares.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use npd_common::counters::COUNTER_SLOTS;

/// Every record, all kinds. The agent may resize it before loading.
#[map]
pub(crate) static RECORDS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// See `npd_common::counters`.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
