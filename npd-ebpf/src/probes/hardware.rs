//! Hardware errors, from the RAS tracepoints at field offsets read from their format files
//! (`HW_CONFIG`, written by the agent): no struct offset is compiled in.
//!
//! - `mce:mce_record` -> `MachineCheck`;
//! - `ras:mc_event` -> `MemoryError`;
//! - `ras:memory_failure_event` -> `MemoryFailure`;
//! - `ras:aer_event`, `ras:arm_event`, `ras:non_standard_event` -> `PlatformError`.
//!
//! None is on a hot path: they fire only when hardware reports an error. A failing DIMM can
//! still log corrected errors by the thousand, so every error goes through
//! `ratelimit::per_key` (keyed by DIMM, bank, device and severity): the first at once, then at
//! most one record per `HwConfig::rate_limit_ns`; `HwRateState::errors` sums the errors
//! (EDAC's `error_count`) so the agent's sweep accounts for what no record carried.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use npd_common::{
    Hook, RecordKind,
    config::string_kind,
    counters::Detector,
    hardware::{
        HW_RATE_LIMIT_ENTRIES, HwConfig, HwRateKey, HwRateState, HwTally, MACHINE_CHECK_VERSION,
        MEMORY_ERROR_VERSION, MEMORY_FAILURE_VERSION, MachineCheck, MemoryError, MemoryFailure,
        PLATFORM_ERROR_VERSION, PlatformError, PlatformOffsets, RATE_KEY_NAME_LEN, dimm_location,
        mci_status, source,
    },
};

use crate::{
    config::read_volatile,
    emit::{self, Record, Subject},
    ratelimit::{self, Tally},
    tracepoint::{field, string},
};

emit::records!(MachineCheck, MemoryError, MemoryFailure, PlatformError);
ratelimit::windows!(HwRateState);

/// Filled in by the agent before loading (see `npd_common::hardware::HwConfig`).
#[unsafe(no_mangle)]
static HW_CONFIG: HwConfig = HwConfig::new();

/// Reads one field of [`HW_CONFIG`] (volatile: see `config::config!`).
macro_rules! hw_config {
    ($($field:ident).+) => {
        $crate::config::read_volatile(&raw const HW_CONFIG.$($field).+)
    };
}

#[map]
static HW_RATE_LIMIT: LruHashMap<HwRateKey, HwRateState> =
    LruHashMap::with_max_entries(HW_RATE_LIMIT_ENTRIES, 0);

#[tracepoint(category = "mce", name = "mce_record")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn hardware_mce_record(ctx: TracePointContext) -> u32 {
    let Some(status) = field::<u64>(&ctx, hw_config!(offsets.mce.status)) else {
        return 0;
    };
    let cpu = field::<u32>(&ctx, hw_config!(offsets.mce.cpu)).unwrap_or(u32::MAX);
    let bank = field::<u8>(&ctx, hw_config!(offsets.mce.bank)).unwrap_or(u8::MAX);
    let uncorrected = u32::from(status & mci_status::UC != 0);
    let context_corrupt = u32::from(status & mci_status::PCC != 0);
    let key = HwRateKey {
        kind: RecordKind::MachineCheck as u16,
        source: 0,
        severity: uncorrected | context_corrupt << 1,
        unit: u64::from(bank) << 32 | u64::from(cpu),
        name: [0; RATE_KEY_NAME_LEN],
    };
    report::<MachineCheck>(
        RecordKind::MachineCheck,
        MACHINE_CHECK_VERSION,
        &key,
        1,
        Subject::none(),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record, tally| unsafe {
            (*record).status = status;
            (*record).addr = field::<u64>(&ctx, hw_config!(offsets.mce.addr)).unwrap_or(0);
            (*record).misc = field::<u64>(&ctx, hw_config!(offsets.mce.misc)).unwrap_or(0);
            (*record).mcgstatus =
                field::<u64>(&ctx, hw_config!(offsets.mce.mcgstatus)).unwrap_or(0);
            (*record).cpu = cpu;
            (*record).bank = bank;
            (*record)._pad = [0; 3];
            (*record).tally = tally;
        },
    );
    0
}

#[tracepoint(category = "ras", name = "mc_event")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn hardware_mc_event(ctx: TracePointContext) -> u32 {
    let Some(error_type) = field::<u32>(&ctx, hw_config!(offsets.mc_event.error_type)) else {
        return 0;
    };
    let error_count = u32::from(
        field::<u16>(&ctx, hw_config!(offsets.mc_event.error_count))
            .unwrap_or(1)
            .max(1),
    );
    let layer = |offset: u32| field::<u8>(&ctx, offset).map_or(-1, |byte| byte as i8);
    let mc_index = field::<u8>(&ctx, hw_config!(offsets.mc_event.mc_index)).unwrap_or(0);
    let top = layer(hw_config!(offsets.mc_event.top_layer));
    let middle = layer(hw_config!(offsets.mc_event.middle_layer));
    let lower = layer(hw_config!(offsets.mc_event.lower_layer));
    let key = HwRateKey {
        kind: RecordKind::MemoryError as u16,
        source: 0,
        severity: error_type,
        unit: dimm_location(mc_index, top, middle, lower),
        name: [0; RATE_KEY_NAME_LEN],
    };
    report::<MemoryError>(
        RecordKind::MemoryError,
        MEMORY_ERROR_VERSION,
        &key,
        u64::from(error_count),
        Subject::none(),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record, tally| unsafe {
            (*record).address =
                field::<u64>(&ctx, hw_config!(offsets.mc_event.address)).unwrap_or(0);
            (*record).error_type = error_type;
            (*record).error_count = error_count;
            (*record).mc_index = mc_index;
            (*record).top_layer = top;
            (*record).middle_layer = middle;
            (*record).lower_layer = lower;
            (*record).grain_bits =
                field::<u8>(&ctx, hw_config!(offsets.mc_event.grain_bits)).unwrap_or(0);
            (*record)._pad = [0; 3];
            string(
                &ctx,
                hw_config!(offsets.mc_event.label),
                string_kind::DATA_LOC,
                &mut (*record).label,
            );
            string(
                &ctx,
                hw_config!(offsets.mc_event.msg),
                string_kind::DATA_LOC,
                &mut (*record).msg,
            );
            (*record).tally = tally;
        },
    );
    0
}

#[tracepoint(category = "ras", name = "memory_failure_event")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn hardware_memory_failure(ctx: TracePointContext) -> u32 {
    let Some(pfn) = field::<u64>(&ctx, hw_config!(offsets.memory_failure.pfn)) else {
        return 0;
    };
    let result = field::<u32>(&ctx, hw_config!(offsets.memory_failure.result)).unwrap_or(u32::MAX);
    let key = HwRateKey {
        kind: RecordKind::MemoryFailure as u16,
        source: 0,
        severity: result,
        unit: pfn,
        name: [0; RATE_KEY_NAME_LEN],
    };
    report::<MemoryFailure>(
        RecordKind::MemoryFailure,
        MEMORY_FAILURE_VERSION,
        &key,
        1,
        // The task handling the poison: the one that touched it, or a kworker.
        Subject::current(),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record, tally| unsafe {
            (*record).pfn = pfn;
            (*record).page_type = field::<u32>(&ctx, hw_config!(offsets.memory_failure.page_type))
                .unwrap_or(u32::MAX);
            (*record).result = result;
            (*record).tally = tally;
        },
    );
    0
}

#[tracepoint(category = "ras", name = "aer_event")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn hardware_aer_event(ctx: TracePointContext) -> u32 {
    platform_error(&ctx, source::AER, &HW_CONFIG.offsets.aer);
    0
}

#[tracepoint(category = "ras", name = "arm_event")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn hardware_arm_event(ctx: TracePointContext) -> u32 {
    platform_error(&ctx, source::ARM, &HW_CONFIG.offsets.arm);
    0
}

#[tracepoint(category = "ras", name = "non_standard_event")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn hardware_non_standard_event(ctx: TracePointContext) -> u32 {
    platform_error(&ctx, source::NON_STANDARD, &HW_CONFIG.offsets.non_standard);
    0
}

/// An AER or CPER error, its fields at `offsets` (the event's part of `HW_CONFIG`).
#[inline(always)]
fn platform_error(ctx: &TracePointContext, source: u16, offsets: &PlatformOffsets) {
    let Some(severity) = field::<u8>(ctx, read_volatile(&offsets.severity)) else {
        return;
    };
    let cpu = field::<i32>(ctx, read_volatile(&offsets.cpu)).unwrap_or(-1);
    let name_offset = read_volatile(&offsets.name);
    let mut key = HwRateKey {
        kind: RecordKind::PlatformError as u16,
        source,
        severity: u32::from(severity),
        unit: u64::from(cpu as u32),
        name: [0; RATE_KEY_NAME_LEN],
    };
    // A device's errors count apart from another's (AER: `0000:3b:00.0`).
    if source == source::AER {
        string(ctx, name_offset, string_kind::DATA_LOC, &mut key.name);
    }
    report::<PlatformError>(
        RecordKind::PlatformError,
        PLATFORM_ERROR_VERSION,
        &key,
        1,
        Subject::none(),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record, tally| unsafe {
            (*record).source = source;
            (*record).severity = u16::from(severity);
            (*record).status = field::<u32>(ctx, read_volatile(&offsets.status)).unwrap_or(0);
            (*record).cpu = cpu;
            (*record)._pad = 0;
            (*record).mpidr = field::<u64>(ctx, read_volatile(&offsets.mpidr)).unwrap_or(0);
            string(ctx, name_offset, string_kind::DATA_LOC, &mut (*record).name);
            (*record).tally = tally;
        },
    );
}

/// Counts `errors` for `key` and, when its window allows (`ratelimit::per_key`), sends a
/// record of `kind`, which `fill` completes with the tally of what it stands for.
#[inline(always)]
fn report<T: Record>(
    kind: RecordKind,
    version: u8,
    key: &HwRateKey,
    errors: u64,
    subject: Subject,
    fill: impl FnOnce(*mut T, HwTally),
) {
    ratelimit::per_key(
        Detector::Hardware,
        &HW_RATE_LIMIT,
        key,
        hw_config!(rate_limit_ns),
        || HwRateState {
            first_failure_ns: 0,
            last_record_ns: 0,
            failures: 0,
            reported: 0,
            errors: 0,
        },
        // SAFETY: a pointer into the map value (see `ratelimit::per_key`); `errors` is only
        // ever changed atomically.
        |state| unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).errors, errors);
        },
        |tally: Tally| {
            // The entry exists: `per_key` created it before calling this.
            let errors_total = HW_RATE_LIMIT.get_ptr(key).map_or(errors, |state| {
                // SAFETY: a pointer into the map value, valid for this program run.
                unsafe { core::ptr::read_volatile(&raw const (*state).errors) }
            });
            emit::record::<T>(
                Detector::Hardware,
                kind,
                version,
                Hook::Tracepoint,
                subject,
                |record| {
                    fill(
                        record,
                        HwTally {
                            suppressed: tally.suppressed,
                            failures_total: tally.failures_total,
                            errors_total,
                            first_failure_ns: tally.first_failure_ns,
                        },
                    );
                },
            )
        },
    );
}
