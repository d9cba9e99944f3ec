//! Filesystems and disks: a filesystem reported an error or shut itself down, or a block
//! device failed a request. From classic tracepoints, on the error paths only (except the
//! `block_rq_complete` fallback, which fires on every I/O and is filtered in the kernel first
//! thing).
//!
//! Devices are `dev_t` values as the kernel encodes them inside (`MKDEV`): major =
//! `dev >> 20`, minor = `dev & 0xfffff`. That is not the userspace encoding of `st_dev`
//! (glibc's `makedev`, also what /proc/self/mountinfo's `major:minor` is printed from):
//! convert with [`dev_major`] / [`dev_minor`].
//!
//! Storm safety, like fd exhaustion: per (device, kind, source), the first failure is
//! reported at once, then at most one record per [`FsConfig::rate_limit_ns`] carrying how many
//! failures were folded into it ([`FsTally`]). [`FsRateState::failures`] only ever grows, so
//! the agent's sweep of [`RATE_LIMIT_MAP`] accounts for the tail of a storm that stopped
//! between records.
//!
//! Not covered: btrfs. Its tracepoints on 6.18 (`/sys/kernel/tracing/events/btrfs`) trace
//! allocation, ordered extents, qgroups, delayed refs, locking, transactions committed and
//! space tickets (`btrfs_fail_all_tickets`: ENOSPC for waiting reservations); none marks a
//! transaction abort, a filesystem error (`btrfs_handle_fs_error`) or the switch to read-only,
//! and those functions have no tracepoint. Covering btrfs needs fentry on
//! `__btrfs_abort_transaction` / `__btrfs_handle_fs_error` (refused on this kernel) or the
//! mount table.

use crate::{RecordHeader, assert_layout, config::UNKNOWN, impl_pod};

pub const FS_ERROR_VERSION: u8 = 1;
pub const BLOCK_IO_ERROR_VERSION: u8 = 1;

/// The kernel's `MAJOR(dev)` of a tracepoint's `dev_t`.
pub const fn dev_major(dev: u32) -> u32 {
    dev >> 20
}

/// The kernel's `MINOR(dev)` of a tracepoint's `dev_t`.
pub const fn dev_minor(dev: u32) -> u32 {
    dev & 0xfffff
}

/// Which hook an [`FsError`] or [`BlockIoError`] came from (its `source`).
pub mod source {
    /// `ext4:ext4_error`: ext4 found an error (`ext4_error*()`; with `errors=remount-ro`
    /// the filesystem is now read-only, with `errors=panic` the node is going down). Seen on
    /// 6.18: once the filesystem is in its emergency state (`emergency_ro` in the mount
    /// options, or shut down), later errors return before the tracepoint, so a
    /// `errors=remount-ro` mount gives one record; `errors=continue` gives one per error.
    pub const EXT4_ERROR: u16 = 1;
    /// `ext4:ext4_shutdown`: the filesystem was shut down (`EXT4_IOC_SHUTDOWN`, or the
    /// device went away); `flags` are `EXT4_GOING_FLAGS_*`.
    pub const EXT4_SHUTDOWN: u16 = 2;
    /// `xfs:xfs_force_shutdown`: XFS shut itself down; every write now fails with EIO while
    /// the mount options still say `rw`. `tag` is `XFS_PTAG_*`, `flags` `SHUTDOWN_*`.
    pub const XFS_SHUTDOWN: u16 = 3;
    /// `block:block_rq_error`: a request failed (the error path only; newer kernels, present
    /// on 6.18).
    pub const BLOCK_RQ_ERROR: u16 = 16;
    /// `block:block_rq_complete` with a non-zero error (the fallback: fires on every I/O).
    pub const BLOCK_RQ_COMPLETE: u16 = 17;
}

/// Bytes kept of an [`FsError`]'s code location (function or file name), NUL-padded.
pub const FS_LOCATION_LEN: usize = 64;

/// Bytes kept of a [`BlockIoError`]'s `rwbs` (the kernel's is 8 or 10 with its NUL).
pub const RWBS_LEN: usize = 16;

/// How a record stands for failures folded by the kernel's per-key rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FsTally {
    /// Failures of this key no earlier record carried, this one excluded.
    pub suppressed: u64,
    /// Failures of this key since `first_failure_ns`, this one included.
    pub failures_total: u64,
    /// When the key's rate-limit entry was created: with the key it identifies the running
    /// count `failures_total` belongs to.
    pub first_failure_ns: u64,
}

assert_layout!(FsTally, 24);

/// A filesystem error or shutdown ([`crate::RecordKind::FsError`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FsError {
    /// The task that hit the error (for a shutdown, the one that asked for it or found the
    /// failure).
    pub header: RecordHeader,
    /// The filesystem's device (kernel encoding, see [`dev_major`]).
    pub dev: u32,
    /// A [`source`] value.
    pub source: u16,
    pub _pad: u16,
    /// The source line that raised it (ext4_error: `line`; xfs: `line_num`); 0 if none.
    pub line: u32,
    /// ext4_shutdown: `EXT4_GOING_FLAGS_*`; xfs: `SHUTDOWN_*`; 0 otherwise.
    pub flags: u32,
    /// xfs: `XFS_PTAG_*`; 0 otherwise.
    pub tag: u32,
    pub _pad2: u32,
    /// Where in the kernel: ext4_error's function, xfs's source file (`fname`); empty for
    /// ext4_shutdown. NUL-padded, truncated to fit.
    pub location: [u8; FS_LOCATION_LEN],
    pub tally: FsTally,
}

assert_layout!(FsError, 48 + 24 + FS_LOCATION_LEN + 24);
impl_pod!(FsError);

/// A failed block request ([`crate::RecordKind::BlockIoError`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIoError {
    /// No task: completions run in interrupt context, so pid, tid, cgroup and comm are 0.
    /// Attribute by `dev`.
    pub header: RecordHeader,
    /// The disk (kernel encoding, see [`dev_major`]).
    pub dev: u32,
    /// The request's error as a negative errno (`blk_status_to_errno`: -EIO, -ENOSPC,
    /// -ETIMEDOUT, -ENOLINK, ...).
    pub error: i32,
    pub sector: u64,
    pub nr_sector: u32,
    /// [`source::BLOCK_RQ_ERROR`] or [`source::BLOCK_RQ_COMPLETE`].
    pub source: u16,
    pub _pad: u16,
    /// The request's `rwbs` string (`W`, `R`, `WS`, `FWS`, `D`, ...), NUL-padded.
    pub rwbs: [u8; RWBS_LEN],
    pub tally: FsTally,
}

assert_layout!(BlockIoError, 48 + 8 + 8 + 8 + RWBS_LEN + 24);
impl_pod!(BlockIoError);

/// The key of [`RATE_LIMIT_MAP`]: one window per device, record kind and source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FsRateKey {
    pub dev: u32,
    /// A [`crate::RecordKind`] (`FsError` or `BlockIoError`).
    pub kind: u16,
    /// A [`source`] value.
    pub source: u16,
}

const _: () = assert!(size_of::<FsRateKey>() == 8);

/// Per-key rate-limit state, the value of [`RATE_LIMIT_MAP`]. The first four fields are
/// those of `FdRateState`, with the same meaning.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FsRateState {
    pub first_failure_ns: u64,
    pub last_record_ns: u64,
    /// Every failure of this key since `first_failure_ns` (atomically incremented).
    pub failures: u64,
    /// `failures` as of the last record that reached the ring buffer.
    pub reported: u64,
    /// The last failure's error (a block request's negative errno) or line (a filesystem
    /// error); a last-writer-wins hint for the sweep.
    pub last_error: i32,
    pub _pad: u32,
}

assert_layout!(FsRateState, 40);
impl_pod!(FsRateState, FsRateKey);

/// Keys the rate limiter tracks at once (least recently failing evicted first).
pub const FS_RATE_LIMIT_ENTRIES: u32 = 4096;

/// Field offsets of one filesystem tracepoint, from its format file; [`UNKNOWN`] where the
/// event has no such field (the record then says 0 / an empty string).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FsEventOffsets {
    /// `dev_t dev` (required: without it the program reports nothing).
    pub dev: u32,
    /// The source line: ext4_error's `line`, xfs_force_shutdown's `line_num`.
    pub line: u32,
    /// ext4_shutdown's `flags`, xfs_force_shutdown's `flags`.
    pub flags: u32,
    /// xfs_force_shutdown's `ptag`.
    pub tag: u32,
    /// The code-location string: ext4_error's `function`, xfs_force_shutdown's `fname`.
    pub location: u32,
    /// How `location` is stored: a [`string_kind`] value (ext4_error's `function` is a
    /// `const char *`, xfs_force_shutdown's `fname` a `__data_loc char[]` on current kernels).
    pub location_kind: u32,
}

const _: () = assert!(size_of::<FsEventOffsets>() == 6 * 4);

impl FsEventOffsets {
    pub const fn unknown() -> Self {
        Self {
            dev: UNKNOWN,
            line: UNKNOWN,
            flags: UNKNOWN,
            tag: UNKNOWN,
            location: UNKNOWN,
            location_kind: string_kind::POINTER,
        }
    }
}

/// Field offsets of the block completion tracepoint the agent attaches
/// (`block:block_rq_error`, or `block:block_rq_complete` where that is absent; one event
/// class, one layout). [`UNKNOWN`] where absent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockEventOffsets {
    /// `dev_t dev` (required).
    pub dev: u32,
    /// `sector_t sector` (8 bytes).
    pub sector: u32,
    /// `unsigned int nr_sector`.
    pub nr_sector: u32,
    /// `int error` (`errors` before 4.13; required).
    pub error: u32,
    /// `char rwbs[N]` (N = 8 or 10), NUL-terminated.
    pub rwbs: u32,
}

const _: () = assert!(size_of::<BlockEventOffsets>() == 5 * 4);

impl BlockEventOffsets {
    pub const fn unknown() -> Self {
        Self {
            dev: UNKNOWN,
            sector: UNKNOWN,
            nr_sector: UNKNOWN,
            error: UNKNOWN,
            rwbs: UNKNOWN,
        }
    }
}

pub use crate::config::string_kind;

/// The field offsets of every tracepoint the detector reads, one set per event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FsTracepointOffsets {
    /// `ext4:ext4_error`: `dev`, `function` (location), `line`.
    pub ext4_error: FsEventOffsets,
    /// `ext4:ext4_shutdown`: `dev`, `flags`.
    pub ext4_shutdown: FsEventOffsets,
    /// `xfs:xfs_force_shutdown`: `dev`, `ptag` (tag), `flags`, `fname` (location),
    /// `line_num` (line).
    pub xfs_shutdown: FsEventOffsets,
    pub block: BlockEventOffsets,
}

const _: () = assert!(size_of::<FsTracepointOffsets>() == (3 * 6 + 5) * 4);

impl FsTracepointOffsets {
    pub const fn unknown() -> Self {
        Self {
            ext4_error: FsEventOffsets::unknown(),
            ext4_shutdown: FsEventOffsets::unknown(),
            xfs_shutdown: FsEventOffsets::unknown(),
            block: BlockEventOffsets::unknown(),
        }
    }
}

/// The detector's load-time configuration, the global [`CONFIG_GLOBAL`] in .rodata, which
/// the agent overrides before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FsConfig {
    /// Minimum time between two records of one [`FsRateKey`]; default 1 s.
    pub rate_limit_ns: u64,
    pub offsets: FsTracepointOffsets,
    pub _pad: u32,
}

assert_layout!(FsConfig, 8 + (3 * 6 + 5) * 4 + 4);
impl_pod!(
    FsConfig,
    FsTracepointOffsets,
    FsEventOffsets,
    BlockEventOffsets
);

impl FsConfig {
    pub const fn new() -> Self {
        Self {
            rate_limit_ns: 1_000_000_000,
            offsets: FsTracepointOffsets::unknown(),
            _pad: 0,
        }
    }
}

impl Default for FsConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// `ext4:ext4_error`.
pub const EXT4_ERROR_PROGRAM: &str = "fs_ext4_error";
/// `ext4:ext4_shutdown`.
pub const EXT4_SHUTDOWN_PROGRAM: &str = "fs_ext4_shutdown";
/// `xfs:xfs_force_shutdown`.
pub const XFS_SHUTDOWN_PROGRAM: &str = "fs_xfs_shutdown";
/// `block:block_rq_error` (preferred).
pub const BLOCK_RQ_ERROR_PROGRAM: &str = "fs_block_rq_error";
/// `block:block_rq_complete` (fallback where `block_rq_error` is absent; attach only one).
pub const BLOCK_RQ_COMPLETE_PROGRAM: &str = "fs_block_rq_complete";
/// The rate-limit map ([`FsRateKey`] -> [`FsRateState`]), which the agent sweeps.
pub const RATE_LIMIT_MAP: &str = "FS_RATE_LIMIT";
/// The [`FsConfig`] global.
pub const CONFIG_GLOBAL: &str = "FS_CONFIG";

/// The names the agent looks this detector's pieces up by (see [`crate::names`]).
pub const PROGRAMS: &[&str] = &[
    EXT4_ERROR_PROGRAM,
    EXT4_SHUTDOWN_PROGRAM,
    XFS_SHUTDOWN_PROGRAM,
    BLOCK_RQ_ERROR_PROGRAM,
    BLOCK_RQ_COMPLETE_PROGRAM,
];
pub const MAPS: &[&str] = &[RATE_LIMIT_MAP];
pub const GLOBALS: &[&str] = &[CONFIG_GLOBAL];
