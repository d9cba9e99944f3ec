//! Reading kernel structures at offsets the agent resolved from this kernel's BTF.
//! Every offset may be `UNKNOWN`; readers then return a neutral value instead of guessing.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel, generated,
};
use npd_common::{
    TASK_COMM_LEN,
    config::{UNKNOWN, cgroup_mode},
};

use crate::config::config;

/// Reads a `T` at `base + offset`, or `None` if the offset is unknown or the read faults.
#[inline(always)]
pub(crate) fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    if offset == UNKNOWN || base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()).ok() }
}

#[inline(always)]
pub(crate) fn read_ptr(base: *const u8, offset: u32) -> *const u8 {
    read::<*const u8>(base, offset).unwrap_or(core::ptr::null())
}

/// Reads a `T` at `base + offset` with no branch on the outcome: zero if the read fails (the
/// helper zeroes its destination). For walks in loops, where each branch on a read's result
/// doubles what an older verifier (6.1) explores. `offset` must be known.
#[inline(always)]
fn peek<T: Copy>(base: *const u8, offset: u32) -> T {
    let mut value = core::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: the helper checks the address and fails (zeroing `value`) instead of faulting;
    // every T used here is an integer or a pointer, valid when zero.
    unsafe {
        generated::bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            base.wrapping_add(offset as usize).cast(),
        );
        value.assume_init()
    }
}

pub(crate) fn current_task() -> *const u8 {
    // SAFETY: no preconditions; the result is only ever passed to bpf_probe_read_kernel.
    unsafe { bpf_get_current_task() as *const u8 }
}

#[inline(always)]
pub(crate) fn pid(task: *const u8) -> u32 {
    read::<u32>(task, config!(offsets.task_pid)).unwrap_or(0)
}

#[inline(always)]
pub(crate) fn tgid(task: *const u8) -> u32 {
    read::<u32>(task, config!(offsets.task_tgid)).unwrap_or(0)
}

#[inline(always)]
pub(crate) fn comm(task: *const u8) -> [u8; TASK_COMM_LEN] {
    read::<[u8; TASK_COMM_LEN]>(task, config!(offsets.task_comm)).unwrap_or([0; TASK_COMM_LEN])
}

/// The kernfs node (directory) of the task's cgroup in the hierarchy the agent attributes by
/// (see `cgroup_mode`); null if unknown.
#[inline(always)]
pub(crate) fn cgroup_kernfs_node(task: *const u8) -> *const u8 {
    let css_set = read_ptr(task, config!(offsets.task_cgroups));
    let cgroup = if config!(cgroup_mode) == cgroup_mode::MEMORY_V1 {
        let css = read_ptr(css_set, config!(offsets.css_set_memory_subsys));
        read_ptr(css, config!(offsets.css_cgroup))
    } else {
        read_ptr(css_set, config!(offsets.css_set_dfl_cgrp))
    };
    read_ptr(cgroup, config!(offsets.cgroup_kn))
}

/// The task's cgroup id in the hierarchy the agent attributes by (see `cgroup_mode`).
#[inline(always)]
pub(crate) fn cgroup_id(task: *const u8) -> u64 {
    read::<u64>(cgroup_kernfs_node(task), config!(offsets.kernfs_node_id)).unwrap_or(0)
}

/// Writes the names and ids of the cgroup directory `kernfs_node` and its ancestors below
/// the hierarchy's root into `names` and `ids`, leaf first. Returns the slots written and
/// whether the walk reached the root (the path is whole). Straight-line per level, one way
/// out: older verifiers (6.1) gave up on a version with an exit per outcome.
/// A name that fills its slot may be cut: the agent refuses such a path.
#[inline(always)]
pub(crate) fn cgroup_names<const N: usize, const LEN: usize>(
    kernfs_node: *const u8,
    names: &mut [[u8; LEN]; N],
    ids: &mut [u64; N],
) -> (u32, bool) {
    let parent_offset = config!(offsets.kernfs_node_parent);
    let name_offset = config!(offsets.kernfs_node_name);
    let id_offset = config!(offsets.kernfs_node_id);
    if parent_offset == UNKNOWN || name_offset == UNKNOWN || id_offset == UNKNOWN {
        return (0, false);
    }
    let mut node = kernfs_node;
    let mut depth = 0_u32;
    for (slot, id) in names.iter_mut().zip(ids.iter_mut()) {
        let parent: *const u8 = peek(node, parent_offset);
        // `node` is the root (its name is not part of the path), or unreadable.
        if parent.is_null() {
            break;
        }
        let name: *const u8 = peek(node, name_offset);
        // SAFETY: the helper checks the source address and fails (writing an empty string)
        // instead of faulting; the destination is the slot, LEN bytes.
        unsafe {
            generated::bpf_probe_read_kernel_str(slot.as_mut_ptr().cast(), LEN as u32, name.cast());
        }
        *id = peek(node, id_offset);
        depth += 1;
        node = parent;
    }
    let parent: *const u8 = peek(node, parent_offset);
    let whole = !node.is_null() && parent.is_null();
    (depth, whole)
}

#[inline(always)]
pub(crate) fn current_cgroup_id() -> u64 {
    if config!(cgroup_mode) == cgroup_mode::MEMORY_V1 {
        cgroup_id(current_task())
    } else {
        // SAFETY: no preconditions.
        unsafe { bpf_get_current_cgroup_id() }
    }
}

/// The nearest memory cgroup at or above the task's whose limit is finite, as (its cgroup's
/// kernfs id, the limit in pages), walking up to `levels` controller states. A memory-cgroup
/// OOM is that cgroup at its limit.
#[inline(always)]
pub(crate) fn memcg_limit(task: *const u8, levels: usize) -> Option<(u64, u64)> {
    if config!(offsets.css_memcg_max) == UNKNOWN || config!(offsets.css_parent) == UNKNOWN {
        return None;
    }
    // The kernel's PAGE_COUNTER_MAX: no limit. (`checked_div`: a plain division brings a
    // panic path the verifier rejects.)
    let unlimited = (i64::MAX as u64).checked_div(config!(page_size))?;
    let css_set = read_ptr(task, config!(offsets.task_cgroups));
    let mut css = read_ptr(css_set, config!(offsets.css_set_memory_subsys));
    // One way out per level and no branch on a read's outcome, as in `cgroup_names`.
    let (max_offset, parent_offset) = (config!(offsets.css_memcg_max), config!(offsets.css_parent));
    let mut limited = core::ptr::null();
    let mut limit = 0;
    for _ in 0..levels {
        let max: u64 = peek(css, max_offset);
        // 0: unreadable (a real limit of 0 pages cannot hold a task to kill).
        if max != 0 && max < unlimited {
            limited = css;
            limit = max;
            break;
        }
        css = peek(css, parent_offset);
    }
    let cgroup = read_ptr(limited, config!(offsets.css_cgroup));
    let kernfs_node = read_ptr(cgroup, config!(offsets.cgroup_kn));
    let id = read::<u64>(kernfs_node, config!(offsets.kernfs_node_id))?;
    Some((id, limit))
}
