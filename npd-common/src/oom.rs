//! OOM kill: the kernel chose a victim (`mark_oom_victim`).

use crate::{MAX_STACK_DEPTH, RecordHeader, TASK_COMM_LEN, assert_layout, impl_pod};

pub const OOM_KILL_VERSION: u8 = 2;

pub use crate::cgroup::{CGROUP_NAME_LEN, CGROUP_PATH_DEPTH};

/// Set in [`OomKill::flags`] for each group of fields the hook could read.
pub mod flags {
    /// total_vm, RSS counters and pgtables are valid.
    pub const MEMORY: u16 = 1 << 0;
    pub const UID: u16 = 1 << 1;
    pub const OOM_SCORE_ADJ: u16 = 1 << 2;
    /// `header.cgroup_id` is the victim's, read in the kernel.
    pub const VICTIM_CGROUP: u16 = 1 << 3;
    /// `victim_cgroup_names` holds the whole path: the walk reached the hierarchy's root.
    pub const VICTIM_CGROUP_PATH: u16 = 1 << 4;
    /// `limit_cgroup_id` and `limit_pages` name the nearest memory cgroup with a limit.
    pub const LIMIT: u16 = 1 << 5;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomKill {
    /// The victim. Its `cgroup_id` is read from the victim task in the kernel at the kill, so
    /// it does not race with the reaper.
    pub header: RecordHeader,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub uid: u32,
    pub oom_score_adj: i16,
    /// Which fields are valid, see [`flags`].
    pub flags: u16,
    /// The task whose allocation triggered the OOM (the one running the OOM killer).
    pub trigger_pid: u32,
    pub trigger_tid: u32,
    pub trigger_cgroup_id: u64,
    pub trigger_comm: [u8; TASK_COMM_LEN],
    /// Valid frames in `trigger_stack`. The stack tells a memory-cgroup OOM
    /// (`mem_cgroup_out_of_memory`) from a system-wide one.
    pub trigger_stack_len: u32,
    pub _pad: u32,
    pub trigger_stack: [u64; MAX_STACK_DEPTH],
    /// The victim's cgroup path as the kernel names it at the kill, leaf first, one
    /// NUL-terminated directory name per slot: a container that dies within its first
    /// seconds takes its cgroup with it before anyone could look its id up.
    pub victim_cgroup_names: [[u8; CGROUP_NAME_LEN]; CGROUP_PATH_DEPTH],
    /// The kernfs id of each directory in `victim_cgroup_names`, leaf first.
    pub victim_cgroup_ids: [u64; CGROUP_PATH_DEPTH],
    /// Slots of `victim_cgroup_names` filled.
    pub victim_cgroup_depth: u32,
    pub _pad2: u32,
    /// The nearest memory cgroup at or above the victim's with a limit (`memory.max`, or v1's
    /// `limit_in_bytes`), read from its page counter at the kill: the one a memory-cgroup OOM
    /// hit. Its kernfs id, and the limit in pages.
    pub limit_cgroup_id: u64,
    pub limit_pages: u64,
}

assert_layout!(
    OomKill,
    48 + 5 * 8
        + 8
        + 8
        + 8
        + 16
        + 8
        + 8 * MAX_STACK_DEPTH
        + CGROUP_NAME_LEN * CGROUP_PATH_DEPTH
        + 8 * CGROUP_PATH_DEPTH
        + 8
        + 16
);
impl_pod!(OomKill);

/// tp_btf `mark_victim` (6.5+: the victim's `task_struct *`).
pub const BTF_PROGRAM: &str = "oom_btf";
/// fentry `mark_oom_victim`, where the kernel allows fentry.
pub const FENTRY_PROGRAM: &str = "oom_fentry";
/// The classic `oom:mark_victim` tracepoint.
pub const TRACEPOINT_PROGRAM: &str = "oom_tp";

/// The names the agent looks this detector's pieces up by (see [`crate::names`]).
pub const PROGRAMS: &[&str] = &[BTF_PROGRAM, FENTRY_PROGRAM, TRACEPOINT_PROGRAM];
pub const MAPS: &[&str] = &[];
pub const GLOBALS: &[&str] = &[];
