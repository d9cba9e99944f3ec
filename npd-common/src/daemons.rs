//! Node daemons starting and dying: `sched_process_exec` and `sched_process_exit`, filtered in
//! the kernel to the watched executable names (kubelet, containerd, dockerd, crio by default),
//! so the agent hears only of those. Starts are counted per name in the kernel
//! (`ratelimit::per_key`): an exec storm of a watched name sends a record per interval, each
//! carrying how many starts it stands for.

use crate::{RecordHeader, TASK_COMM_LEN, assert_layout, impl_pod};

pub const DAEMON_START_VERSION: u8 = 1;
pub const DAEMON_EXIT_VERSION: u8 = 1;

/// Watched names at most.
pub const MAX_WATCHED: usize = 8;

/// A watched name was exec'd (the header's comm is the new name).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaemonStart {
    pub header: RecordHeader,
    /// Starts of this name not reported since its previous record.
    pub suppressed: u64,
    /// Starts of this name since `first_start_ns`, this one included.
    pub starts_total: u64,
    /// When the kernel's count for this name began.
    pub first_start_ns: u64,
}

assert_layout!(DaemonStart, 72);

/// A watched process ended: its thread-group leader exited (other threads' exits are not
/// sent).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaemonExit {
    pub header: RecordHeader,
    /// `task_struct::exit_code` as `wait(2)` encodes it: `(code << 8) | signal`, the core-dump
    /// bit 0x80; -1 if this kernel's offset is unknown.
    pub exit_code: i32,
    pub _pad: u32,
}

assert_layout!(DaemonExit, 56);

/// Per-name start counting, the value of the `DAEMON_STARTS` LRU hash keyed by comm.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaemonStartState {
    pub first_failure_ns: u64,
    pub last_record_ns: u64,
    /// Every start of the name (atomically incremented).
    pub failures: u64,
    /// `failures` as of the last record sent.
    pub reported: u64,
}

assert_layout!(DaemonStartState, 32);

/// The load-time configuration (`DAEMONS_CONFIG`, in .rodata).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaemonsConfig {
    /// The watched names, NUL-padded to TASK_COMM_LEN (as the kernel cuts them: 15 bytes).
    pub comms: [[u8; TASK_COMM_LEN]; MAX_WATCHED],
    pub count: u32,
    /// `task_struct::exit_code`, from BTF; `config::UNKNOWN` if absent.
    pub task_exit_code: u32,
    /// At most one start record per name per this interval; the rest are counted.
    pub start_interval_ns: u64,
}

assert_layout!(DaemonsConfig, 16 * MAX_WATCHED + 16);
impl_pod!(DaemonStart, DaemonExit, DaemonStartState, DaemonsConfig);

impl DaemonsConfig {
    pub const fn new() -> Self {
        Self {
            comms: [[0; TASK_COMM_LEN]; MAX_WATCHED],
            count: 0,
            task_exit_code: crate::config::UNKNOWN,
            start_interval_ns: 1_000_000_000,
        }
    }
}

impl Default for DaemonsConfig {
    fn default() -> Self {
        Self::new()
    }
}

pub const EXEC_BTF_PROGRAM: &str = "daemons_exec_btf";
pub const EXEC_TRACEPOINT_PROGRAM: &str = "daemons_exec_tp";
pub const EXIT_BTF_PROGRAM: &str = "daemons_exit_btf";
pub const EXIT_TRACEPOINT_PROGRAM: &str = "daemons_exit_tp";

pub const STARTS_MAP: &str = "DAEMON_STARTS";
pub const CONFIG_GLOBAL: &str = "DAEMONS_CONFIG";

/// Names counted at once (least recently started evicted first): a few watched ones.
pub const STARTS_ENTRIES: u32 = 64;

/// The names the agent looks this detector's pieces up by (see [`crate::names`]).
pub const PROGRAMS: &[&str] = &[
    EXEC_BTF_PROGRAM,
    EXEC_TRACEPOINT_PROGRAM,
    EXIT_BTF_PROGRAM,
    EXIT_TRACEPOINT_PROGRAM,
];
pub const MAPS: &[&str] = &[STARTS_MAP];
pub const GLOBALS: &[&str] = &[CONFIG_GLOBAL];
