//! fd exhaustion: an fd-creating syscall failed with EMFILE (the process hit RLIMIT_NOFILE)
//! or ENFILE (the system file table is full).

use crate::{RecordHeader, TASK_COMM_LEN, assert_layout, cgroup::KernelCgroupPath, impl_pod};

pub const EMFILE: i32 = 24;
pub const ENFILE: i32 = 23;

pub const FD_EXHAUSTED_VERSION: u8 = 2;

/// One reported failure, standing for `suppressed` more of the same process since the
/// previous record (the kernel rate-limits per process).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdExhausted {
    pub header: RecordHeader,
    /// EMFILE or ENFILE (positive).
    pub errno: i32,
    /// The failing syscall's number on this architecture.
    pub syscall_nr: i32,
    /// Failures of this process not reported since its previous record.
    pub suppressed: u64,
    /// Failures counted for this process since `first_failure_ns`, this one included.
    pub failures_total: u64,
    /// When the rate-limit entry for this process was created: with `header.pid` it
    /// identifies the running count `failures_total` belongs to.
    pub first_failure_ns: u64,
    /// The process's RLIMIT_NOFILE soft limit at the failure; `u64::MAX` if unknown.
    pub nofile_limit: u64,
    /// The process's cgroup path, read in the kernel at the failure where the agent turned
    /// the walk on (`depth` 0 otherwise): a container that fails and exits at once takes its
    /// cgroup with it before the agent could look its id up.
    pub cgroup: KernelCgroupPath,
}

assert_layout!(FdExhausted, 88 + size_of::<KernelCgroupPath>());
impl_pod!(FdExhausted);

/// Per-process rate-limit state, the value of the `FD_RATE_LIMIT` LRU hash keyed by tgid.
///
/// `failures` only grows; the agent reads it to account for failures suppressed after a
/// process's last record (a storm that stopped), so nothing is lost between records.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdRateState {
    pub first_failure_ns: u64,
    pub last_record_ns: u64,
    /// Every failure of this process since `first_failure_ns` (atomically incremented).
    pub failures: u64,
    /// `failures` as of the last record sent.
    pub reported: u64,
    pub last_errno: i32,
    pub last_syscall_nr: i32,
    pub last_tid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

assert_layout!(FdRateState, 72);
impl_pod!(FdRateState);

/// fexit programs the object carries for fd syscalls, one per syscall entry function (a
/// tracing program is loaded for one target). More than any architecture's fd syscalls.
pub const FD_FEXIT_SLOTS: usize = 48;

/// The name of the global array the agent fills with each fexit slot's syscall number.
pub const FD_FEXIT_SYSCALLS: &str = "FD_FEXIT_SYSCALLS";

/// The `syscalls:sys_exit_*` tracepoint program (the fallback), attached to each fd syscall.
pub const SYS_EXIT_PROGRAM: &str = "fd_sys_exit";

/// `["fd_fexit_0", ...]`.
macro_rules! fexit_programs {
    ($($slot:literal)*) => {
        [$(concat!("fd_fexit_", $slot)),*]
    };
}

/// The fexit program of each slot (`FD_FEXIT_SYSCALLS[slot]` says which syscall it is for).
pub const FEXIT_PROGRAMS: [&str; FD_FEXIT_SLOTS] = fexit_programs!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23
    24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47
);

/// The per-process rate-limit map ([`FdRateState`] by tgid), which the agent sweeps.
pub const RATE_LIMIT_MAP: &str = "FD_RATE_LIMIT";

/// The names the agent looks this detector's pieces up by (see [`crate::names`]).
pub const PROGRAMS: &[&str] =
    &crate::names::concat::<{ 1 + FD_FEXIT_SLOTS }>(&[&[SYS_EXIT_PROGRAM], &FEXIT_PROGRAMS]);
pub const MAPS: &[&str] = &[RATE_LIMIT_MAP];
pub const GLOBALS: &[&str] = &[FD_FEXIT_SYSCALLS];

/// Processes the rate limiter tracks at once (least recently failing evicted first).
pub const FD_RATE_LIMIT_ENTRIES: u32 = 16384;
