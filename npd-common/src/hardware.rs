//! Hardware errors, from the kernel's RAS tracepoints, each optional (a kernel has those its
//! configuration and architecture build):
//!
//! - `mce:mce_record` -> [`MachineCheck`]: an x86 machine check (corrected ones too, found by
//!   CMCI or polling);
//! - `ras:mc_event` -> [`MemoryError`]: an EDAC memory controller error, with its DIMM;
//! - `ras:memory_failure_event` -> [`MemoryFailure`]: the kernel handled a poisoned page;
//! - `ras:aer_event`, `ras:arm_event`, `ras:non_standard_event` -> [`PlatformError`]: a PCIe
//!   AER error, an ARM processor error or a vendor (CPER) section, by [`source`].
//!
//! Storm safety, as the fs detector does it: per [`HwRateKey`] (a DIMM, an MCE bank of a
//! CPU, a PCI device, with the error's severity), the first error is reported at once, then at
//! most one record per [`HwConfig::rate_limit_ns`] carrying how many were folded into it
//! ([`HwTally`]). A memory error event may stand for several errors (`error_count`), so
//! [`HwRateState::errors`] sums those counts; it only ever grows, and the agent's sweep of
//! [`RATE_LIMIT_MAP`] accounts for the tail of a storm no record carried.

use crate::{RecordHeader, assert_layout, config::UNKNOWN, impl_pod};

pub const MACHINE_CHECK_VERSION: u8 = 1;
pub const MEMORY_ERROR_VERSION: u8 = 1;
pub const MEMORY_FAILURE_VERSION: u8 = 1;
pub const PLATFORM_ERROR_VERSION: u8 = 1;

/// Which hook a [`PlatformError`] came from (its `source`, also in [`HwRateKey::source`]).
pub mod source {
    /// `ras:aer_event`: severity is `AER_NONFATAL` 0, `AER_FATAL` 1, `AER_CORRECTABLE` 2.
    pub const AER: u16 = 1;
    /// `ras:arm_event`: severity is a CPER severity ([`super::cper_severity`]).
    pub const ARM: u16 = 2;
    /// `ras:non_standard_event`: severity is a CPER severity.
    pub const NON_STANDARD: u16 = 3;
}

/// CPER severities (UEFI spec, `CPER_SEV_*`), which `AER_*` happen to share for 0 to 2.
pub mod cper_severity {
    pub const RECOVERABLE: u16 = 0;
    pub const FATAL: u16 = 1;
    pub const CORRECTED: u16 = 2;
    pub const INFORMATIONAL: u16 = 3;
}

/// `MCi_STATUS` bits (Intel SDM vol. 3B, 16.3.2.2; AMD uses the same ones).
pub mod mci_status {
    /// The register holds an error.
    pub const VAL: u64 = 1 << 63;
    /// Another error came before this one was read.
    pub const OVER: u64 = 1 << 62;
    /// Uncorrected.
    pub const UC: u64 = 1 << 61;
    /// `MCi_ADDR` is valid.
    pub const ADDRV: u64 = 1 << 58;
    /// Processor context corrupt: execution cannot go on reliably.
    pub const PCC: u64 = 1 << 57;
}

/// Bytes kept of a DIMM label (EDAC's `label`, e.g. `CPU_SrcID#0_MC#0_Chan#1_DIMM#0`).
pub const DIMM_LABEL_LEN: usize = 64;
/// Bytes kept of an EDAC driver's message (`msg`).
pub const MEMORY_ERROR_MSG_LEN: usize = 64;
/// Bytes kept of a [`PlatformError`]'s name (a PCI device `0000:3b:00.0`, a FRU text).
pub const PLATFORM_NAME_LEN: usize = 32;
/// Bytes of a device name that key its rate-limit window.
pub const RATE_KEY_NAME_LEN: usize = 16;

/// How a record stands for errors folded by the kernel's per-key rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HwTally {
    /// Tracepoint hits of this key no earlier record carried, this one excluded.
    pub suppressed: u64,
    /// Hits of this key since `first_failure_ns`, this one included.
    pub failures_total: u64,
    /// Errors of this key since `first_failure_ns` (a memory error event's `error_count`
    /// summed, one per hit for the others), this one included.
    pub errors_total: u64,
    /// When the key's rate-limit entry was created: with the key it identifies the running
    /// counts.
    pub first_failure_ns: u64,
}

assert_layout!(HwTally, 32);

/// An x86 machine check ([`crate::RecordKind::MachineCheck`]). No task: machine checks are
/// handled in exception, interrupt or polling context.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MachineCheck {
    pub header: RecordHeader,
    /// `MCi_STATUS` (see [`mci_status`]).
    pub status: u64,
    /// `MCi_ADDR` (meaningful when `status` has ADDRV).
    pub addr: u64,
    pub misc: u64,
    /// `MCG_STATUS` (RIPV, EIPV, MCIP).
    pub mcgstatus: u64,
    /// The CPU that logged it (`extcpu`).
    pub cpu: u32,
    /// The MCA bank.
    pub bank: u8,
    pub _pad: [u8; 3],
    pub tally: HwTally,
}

assert_layout!(MachineCheck, 48 + 40 + 32);
impl_pod!(MachineCheck);

/// An EDAC memory controller error ([`crate::RecordKind::MemoryError`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemoryError {
    pub header: RecordHeader,
    /// The physical address, as the driver decoded it (may be 0).
    pub address: u64,
    /// `HW_EVENT_ERR_*`: 0 corrected, 1 uncorrected, 2 deferred, 3 fatal, 4 info.
    pub error_type: u32,
    /// Errors this event stands for (`error_count`).
    pub error_count: u32,
    pub mc_index: u8,
    /// The DIMM's location in the controller's layers (-1 where a layer is not used).
    pub top_layer: i8,
    pub middle_layer: i8,
    pub lower_layer: i8,
    pub grain_bits: u8,
    pub _pad: [u8; 3],
    /// NUL-padded, truncated to fit.
    pub label: [u8; DIMM_LABEL_LEN],
    pub msg: [u8; MEMORY_ERROR_MSG_LEN],
    pub tally: HwTally,
}

assert_layout!(
    MemoryError,
    48 + 24 + DIMM_LABEL_LEN + MEMORY_ERROR_MSG_LEN + 32
);
impl_pod!(MemoryError);

/// The kernel handled a poisoned page ([`crate::RecordKind::MemoryFailure`]). The header's
/// task is the one running `memory_failure()`: the task that touched the poison (an
/// action-required machine check) or poisoned it (`madvise(MADV_HWPOISON)`), or a kworker.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemoryFailure {
    pub header: RecordHeader,
    pub pfn: u64,
    /// `enum mf_action_page_type`, numbered per kernel: named from the format file.
    pub page_type: u32,
    /// `enum mf_result`: `MF_IGNORED` 0, `MF_FAILED` 1, `MF_DELAYED` 2, `MF_RECOVERED` 3.
    pub result: u32,
    pub tally: HwTally,
}

assert_layout!(MemoryFailure, 48 + 16 + 32);
impl_pod!(MemoryFailure);

/// A PCIe AER error or a firmware-reported (CPER) error
/// ([`crate::RecordKind::PlatformError`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PlatformError {
    pub header: RecordHeader,
    /// A [`source`] value.
    pub source: u16,
    /// AER's or CPER's severity (see [`source`]).
    pub severity: u16,
    /// AER: the status register's bits; 0 otherwise.
    pub status: u32,
    /// ARM: the CPU; -1 otherwise.
    pub cpu: i32,
    pub _pad: u32,
    /// ARM: `MPIDR`; 0 otherwise.
    pub mpidr: u64,
    /// AER: the device (`dev_name`); non-standard: the FRU text. NUL-padded.
    pub name: [u8; PLATFORM_NAME_LEN],
    pub tally: HwTally,
}

assert_layout!(PlatformError, 48 + 24 + PLATFORM_NAME_LEN + 32);
impl_pod!(PlatformError);

/// The key of [`RATE_LIMIT_MAP`]: one window per error source and severity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HwRateKey {
    /// A [`crate::RecordKind`].
    pub kind: u16,
    /// A [`source`] value (platform errors); 0 otherwise.
    pub source: u16,
    /// MCE: `UC | PCC << 1`; EDAC: `error_type`; memory failure: `result`; platform: the
    /// severity.
    pub severity: u32,
    /// MCE: `bank << 32 | cpu`; EDAC: [`dimm_location`]; memory failure: the pfn; ARM: the
    /// CPU; 0 otherwise.
    pub unit: u64,
    /// AER: the start of the device name; zero otherwise.
    pub name: [u8; RATE_KEY_NAME_LEN],
}

const _: () = assert!(size_of::<HwRateKey>() == 32);

/// An EDAC DIMM's place, packed: `mc_index << 24 | top << 16 | middle << 8 | lower` (each
/// layer as its byte, so -1 is 0xff).
pub const fn dimm_location(mc_index: u8, top: i8, middle: i8, lower: i8) -> u64 {
    ((mc_index as u64) << 24)
        | ((top as u8 as u64) << 16)
        | ((middle as u8 as u64) << 8)
        | (lower as u8 as u64)
}

/// Per-key rate-limit state, the value of [`RATE_LIMIT_MAP`]. The first four fields are
/// those of `FdRateState`, with the same meaning.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HwRateState {
    pub first_failure_ns: u64,
    pub last_record_ns: u64,
    /// Every hit of this key since `first_failure_ns` (atomically incremented).
    pub failures: u64,
    /// `failures` as of the last record that reached the ring buffer.
    pub reported: u64,
    /// Errors of this key since `first_failure_ns` (atomically added): `error_count` for
    /// memory errors, one per hit otherwise.
    pub errors: u64,
}

assert_layout!(HwRateState, 40);
impl_pod!(HwRateState, HwRateKey);

/// Keys the rate limiter tracks at once (least recently failing evicted first).
pub const HW_RATE_LIMIT_ENTRIES: u32 = 1024;

/// `mce:mce_record` field offsets, from its format file ([`UNKNOWN`] where absent).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MceOffsets {
    /// Required: without it the program reports nothing.
    pub status: u32,
    pub addr: u32,
    pub misc: u32,
    pub mcgstatus: u32,
    pub cpu: u32,
    pub bank: u32,
}

/// `ras:mc_event` field offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct McEventOffsets {
    /// Required.
    pub error_type: u32,
    pub error_count: u32,
    pub mc_index: u32,
    pub top_layer: u32,
    pub middle_layer: u32,
    pub lower_layer: u32,
    pub address: u32,
    pub grain_bits: u32,
    /// `__data_loc char[]` words.
    pub label: u32,
    pub msg: u32,
}

/// `ras:memory_failure_event` field offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemoryFailureOffsets {
    /// Required.
    pub pfn: u32,
    pub page_type: u32,
    pub result: u32,
}

/// Field offsets of `ras:aer_event`, `ras:arm_event` or `ras:non_standard_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PlatformOffsets {
    /// Required (a `u8`): AER's `severity`, ARM's and non-standard's `sev`.
    pub severity: u32,
    /// AER: `status`.
    pub status: u32,
    /// ARM: `cpu`, `mpidr`.
    pub cpu: u32,
    pub mpidr: u32,
    /// The `__data_loc char[]` word of AER's `dev_name` or non-standard's `fru_text`.
    pub name: u32,
}

impl MceOffsets {
    pub const fn unknown() -> Self {
        Self {
            status: UNKNOWN,
            addr: UNKNOWN,
            misc: UNKNOWN,
            mcgstatus: UNKNOWN,
            cpu: UNKNOWN,
            bank: UNKNOWN,
        }
    }
}

impl McEventOffsets {
    pub const fn unknown() -> Self {
        Self {
            error_type: UNKNOWN,
            error_count: UNKNOWN,
            mc_index: UNKNOWN,
            top_layer: UNKNOWN,
            middle_layer: UNKNOWN,
            lower_layer: UNKNOWN,
            address: UNKNOWN,
            grain_bits: UNKNOWN,
            label: UNKNOWN,
            msg: UNKNOWN,
        }
    }
}

impl MemoryFailureOffsets {
    pub const fn unknown() -> Self {
        Self {
            pfn: UNKNOWN,
            page_type: UNKNOWN,
            result: UNKNOWN,
        }
    }
}

impl PlatformOffsets {
    pub const fn unknown() -> Self {
        Self {
            severity: UNKNOWN,
            status: UNKNOWN,
            cpu: UNKNOWN,
            mpidr: UNKNOWN,
            name: UNKNOWN,
        }
    }
}

/// Every hooked tracepoint's field offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HwOffsets {
    pub mce: MceOffsets,
    pub mc_event: McEventOffsets,
    pub memory_failure: MemoryFailureOffsets,
    pub aer: PlatformOffsets,
    pub arm: PlatformOffsets,
    pub non_standard: PlatformOffsets,
}

const HW_OFFSET_FIELDS: usize = 6 + 10 + 3 + 3 * 5;
const _: () = assert!(size_of::<HwOffsets>() == HW_OFFSET_FIELDS * 4);

/// The detector's load-time configuration, the global [`CONFIG_GLOBAL`] in .rodata, which the
/// agent overrides before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HwConfig {
    /// Minimum time between two records of one [`HwRateKey`]; default 1 s.
    pub rate_limit_ns: u64,
    pub offsets: HwOffsets,
}

assert_layout!(HwConfig, 8 + HW_OFFSET_FIELDS * 4);
impl_pod!(
    HwConfig,
    HwOffsets,
    MceOffsets,
    McEventOffsets,
    MemoryFailureOffsets,
    PlatformOffsets
);

impl HwConfig {
    pub const fn new() -> Self {
        Self {
            rate_limit_ns: 1_000_000_000,
            offsets: HwOffsets {
                mce: MceOffsets::unknown(),
                mc_event: McEventOffsets::unknown(),
                memory_failure: MemoryFailureOffsets::unknown(),
                aer: PlatformOffsets::unknown(),
                arm: PlatformOffsets::unknown(),
                non_standard: PlatformOffsets::unknown(),
            },
        }
    }
}

impl Default for HwConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// `mce:mce_record`.
pub const MCE_RECORD_PROGRAM: &str = "hardware_mce_record";
/// `ras:mc_event`.
pub const MC_EVENT_PROGRAM: &str = "hardware_mc_event";
/// `ras:memory_failure_event`.
pub const MEMORY_FAILURE_PROGRAM: &str = "hardware_memory_failure";
/// `ras:aer_event`.
pub const AER_EVENT_PROGRAM: &str = "hardware_aer_event";
/// `ras:arm_event`.
pub const ARM_EVENT_PROGRAM: &str = "hardware_arm_event";
/// `ras:non_standard_event`.
pub const NON_STANDARD_EVENT_PROGRAM: &str = "hardware_non_standard_event";
/// The rate-limit map ([`HwRateKey`] -> [`HwRateState`]), which the agent sweeps.
pub const RATE_LIMIT_MAP: &str = "HW_RATE_LIMIT";
/// The [`HwConfig`] global.
pub const CONFIG_GLOBAL: &str = "HW_CONFIG";

/// The names the agent looks this detector's pieces up by (see [`crate::names`]).
pub const PROGRAMS: &[&str] = &[
    MCE_RECORD_PROGRAM,
    MC_EVENT_PROGRAM,
    MEMORY_FAILURE_PROGRAM,
    AER_EVENT_PROGRAM,
    ARM_EVENT_PROGRAM,
    NON_STANDARD_EVENT_PROGRAM,
];
pub const MAPS: &[&str] = &[RATE_LIMIT_MAP];
pub const GLOBALS: &[&str] = &[CONFIG_GLOBAL];
