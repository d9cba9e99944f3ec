//! Reading classic tracepoint records at offsets from their format files.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes},
    programs::TracePointContext,
};
use npd_common::{TASK_COMM_LEN, config::UNKNOWN};

use crate::{config::config, emit::Subject};

/// Reads a field of `T` at `offset`, or `None` if the kernel does not have it.
#[inline(always)]
pub(crate) fn field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == UNKNOWN {
        return None;
    }
    // SAFETY: the offset comes from the format file; the helper checks the read.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// The thread a classic tracepoint names by id (its `pid` field) and `comm`: the process
/// and cgroup are not in the record; the agent fills them in from /proc. `data_loc_flag` is
/// the event's bit in `TracepointOffsets::comm_data_loc`.
#[inline(always)]
pub(crate) fn thread_subject(
    ctx: &TracePointContext,
    tid: i32,
    comm_offset: u32,
    data_loc_flag: u32,
) -> Subject {
    Subject {
        pid: 0,
        tid: tid as u32,
        cgroup_id: 0,
        comm: comm(
            ctx,
            comm_offset,
            config!(tracepoints.comm_data_loc) & data_loc_flag != 0,
        ),
    }
}

/// A `comm` field: a `__data_loc char[]` (its word holds the string's offset in the low 16
/// bits) on newer kernels, a `char[16]` on older ones.
#[inline(always)]
pub(crate) fn comm(ctx: &TracePointContext, offset: u32, data_loc: bool) -> [u8; TASK_COMM_LEN] {
    let mut comm = [0u8; TASK_COMM_LEN];
    if offset == UNKNOWN {
        return comm;
    }
    let start = if data_loc {
        match field::<u32>(ctx, offset) {
            Some(loc) => loc & 0xffff,
            None => return comm,
        }
    } else {
        offset
    };
    let src = (ctx.as_ptr() as *const u8).wrapping_add(start as usize);
    // SAFETY: the helpers check the source address and never write past `comm`.
    unsafe {
        if data_loc {
            let _ = bpf_probe_read_kernel_str_bytes(src, &mut comm);
        } else {
            let _ = bpf_probe_read_kernel_buf(src, &mut comm);
        }
    }
    comm
}
