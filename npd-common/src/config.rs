//! Load-time configuration the agent writes into the programs' read-only data before loading.
//!
//! Rust eBPF gets no CO-RE relocations, so no kernel struct offset is compiled in: the agent
//! resolves them from `/sys/kernel/btf/vmlinux` and tracepoint format files on the node it runs
//! on and hands them over here. [`UNKNOWN`] marks an offset this kernel does not have; the
//! programs then leave the dependent fields out rather than read the wrong memory.

use crate::{assert_layout, impl_pod};

/// Structs made only of `u32` offsets: size is 4 per field, no padding.
macro_rules! assert_layout_u32 {
    ($ty:ty, $fields:expr) => {
        const _: () = {
            assert!(core::mem::size_of::<$ty>() == 4 * $fields);
            assert!(core::mem::align_of::<$ty>() == 4);
        };
    };
}

/// An offset the kernel does not provide.
pub const UNKNOWN: u32 = u32::MAX;

/// How a tracepoint stores a string field.
pub mod string_kind {
    /// A kernel `const char *` (read with `bpf_probe_read_kernel_str`).
    pub const POINTER: u32 = 0;
    /// A `__data_loc char[]`: a u32 whose low 16 bits are the string's offset in the record.
    pub const DATA_LOC: u32 = 1;
    /// A NUL-terminated `char[N]` in the record.
    pub const ARRAY: u32 = 2;
}

/// How `RecordHeader::cgroup_id` is read.
pub mod cgroup_mode {
    /// `bpf_get_current_cgroup_id()` / the task's default (v2) cgroup.
    pub const UNIFIED: u32 = 0;
    /// The task's cgroup in the memory controller's hierarchy (cgroup v1 nodes).
    pub const MEMORY_V1: u32 = 1;
}

/// Byte offsets into kernel structures, from BTF. Each is [`UNKNOWN`] when absent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    /// `task_struct::cgroups` (`struct css_set *`).
    pub task_cgroups: u32,
    pub task_signal: u32,
    pub task_mm: u32,
    pub task_real_cred: u32,
    /// `css_set::dfl_cgrp`.
    pub css_set_dfl_cgrp: u32,
    /// `css_set::subsys[memory_cgrp_id]`, the index folded in.
    pub css_set_memory_subsys: u32,
    /// `cgroup_subsys_state::cgroup`.
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `kernfs_node::name` (`const char *`).
    pub kernfs_node_name: u32,
    /// `kernfs_node::parent` (`__parent` since 6.15).
    pub kernfs_node_parent: u32,
    /// `cgroup_subsys_state::parent`.
    pub css_parent: u32,
    /// From a memory controller's `cgroup_subsys_state` to its `mem_cgroup::memory.max` (the
    /// limit in pages): the css's place in `mem_cgroup` folded in.
    pub css_memcg_max: u32,
    /// `signal_struct::rlim[RLIMIT_NOFILE].rlim_cur`, the index folded in.
    pub signal_nofile_cur: u32,
    pub signal_oom_score_adj: u32,
    pub mm_total_vm: u32,
    pub mm_pgtables_bytes: u32,
    /// Page counts of `mm_struct::rss_stat`, each the full offset from the `mm_struct` of a
    /// 64-bit count (an `atomic_long_t` before 6.2, a `percpu_counter`'s `count` after).
    pub mm_rss_file: u32,
    pub mm_rss_anon: u32,
    pub mm_rss_shmem: u32,
    /// `cred::uid`.
    pub cred_uid: u32,
}

assert_layout_u32!(KernelOffsets, 24);

impl KernelOffsets {
    pub const fn unknown() -> Self {
        Self {
            task_pid: UNKNOWN,
            task_tgid: UNKNOWN,
            task_comm: UNKNOWN,
            task_cgroups: UNKNOWN,
            task_signal: UNKNOWN,
            task_mm: UNKNOWN,
            task_real_cred: UNKNOWN,
            css_set_dfl_cgrp: UNKNOWN,
            css_set_memory_subsys: UNKNOWN,
            css_cgroup: UNKNOWN,
            cgroup_kn: UNKNOWN,
            kernfs_node_id: UNKNOWN,
            kernfs_node_name: UNKNOWN,
            kernfs_node_parent: UNKNOWN,
            css_parent: UNKNOWN,
            css_memcg_max: UNKNOWN,
            signal_nofile_cur: UNKNOWN,
            signal_oom_score_adj: UNKNOWN,
            mm_total_vm: UNKNOWN,
            mm_pgtables_bytes: UNKNOWN,
            mm_rss_file: UNKNOWN,
            mm_rss_anon: UNKNOWN,
            mm_rss_shmem: UNKNOWN,
            cred_uid: UNKNOWN,
        }
    }
}

/// Field offsets of classic tracepoints, from their format files. [`UNKNOWN`] if absent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TracepointOffsets {
    /// `syscalls:sys_exit_*`: `__syscall_nr` and `ret` (identical across the family).
    pub sys_exit_nr: u32,
    pub sys_exit_ret: u32,
    /// `sched:sched_process_hang`: `pid` and the `__data_loc` word of `comm`.
    pub hang_pid: u32,
    pub hang_comm: u32,
    /// `oom:mark_victim`. Kernels before 6.5 only have `pid`.
    pub oom_pid: u32,
    pub oom_comm: u32,
    pub oom_total_vm: u32,
    pub oom_anon_rss: u32,
    pub oom_file_rss: u32,
    pub oom_shmem_rss: u32,
    pub oom_uid: u32,
    pub oom_pgtables: u32,
    pub oom_score_adj: u32,
    /// Which `comm` fields are `__data_loc` strings (newer kernels) rather than `char[16]`:
    /// [`COMM_DATA_LOC_HANG`], [`COMM_DATA_LOC_OOM`].
    pub comm_data_loc: u32,
}

assert_layout_u32!(TracepointOffsets, 14);

pub const COMM_DATA_LOC_HANG: u32 = 1 << 0;
pub const COMM_DATA_LOC_OOM: u32 = 1 << 1;

impl TracepointOffsets {
    pub const fn unknown() -> Self {
        Self {
            sys_exit_nr: UNKNOWN,
            sys_exit_ret: UNKNOWN,
            hang_pid: UNKNOWN,
            hang_comm: UNKNOWN,
            oom_pid: UNKNOWN,
            oom_comm: UNKNOWN,
            oom_total_vm: UNKNOWN,
            oom_anon_rss: UNKNOWN,
            oom_file_rss: UNKNOWN,
            oom_shmem_rss: UNKNOWN,
            oom_uid: UNKNOWN,
            oom_pgtables: UNKNOWN,
            oom_score_adj: UNKNOWN,
            comm_data_loc: 0,
        }
    }
}

/// The programs' global configuration, `PROBE_CONFIG` in the object's .rodata.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// Minimum time between two fd-exhaustion records of one process.
    pub fd_rate_limit_ns: u64,
    /// Address of the kernel's `tainted_mask`, from /proc/kallsyms; 0 if unknown.
    pub tainted_mask_addr: u64,
    /// Bytes per page, to turn mm counters into KiB.
    pub page_size: u64,
    /// A [`cgroup_mode`] value.
    pub cgroup_mode: u32,
    /// Non-zero: the OOM programs read the victim's cgroup path and its limited memory
    /// cgroup in the kernel (loops the 6.1 verifier gives up on: see the agent's
    /// `CGROUP_WALK_SINCE`). Zero: the branch is dead and the verifier never walks it.
    pub cgroup_walk: u32,
    pub offsets: KernelOffsets,
    pub tracepoints: TracepointOffsets,
}

assert_layout!(ProbeConfig, 32 + 96 + 56);
impl_pod!(ProbeConfig, KernelOffsets, TracepointOffsets);

impl ProbeConfig {
    pub const fn new() -> Self {
        Self {
            fd_rate_limit_ns: 1_000_000_000,
            tainted_mask_addr: 0,
            page_size: 4096,
            cgroup_mode: cgroup_mode::UNIFIED,
            cgroup_walk: 0,
            offsets: KernelOffsets::unknown(),
            tracepoints: TracepointOffsets::unknown(),
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self::new()
    }
}
