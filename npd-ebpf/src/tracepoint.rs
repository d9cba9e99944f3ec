//! Reading classic tracepoint records at offsets from their format files.

use aya_ebpf::{
    EbpfContext, helpers::bpf_probe_read_kernel_str_bytes, programs::TracePointContext,
};
use npd_common::{
    TASK_COMM_LEN,
    config::{UNKNOWN, string_kind},
};

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

/// [`field`], read with a direct load (no helper call) when the format file puts it at
/// `USUAL`, where it sits on every kernel seen: for hooks on hot paths. Aligned fields only.
#[inline(always)]
pub(crate) fn hot_field<T: Copy, const USUAL: u32>(
    ctx: &TracePointContext,
    offset: u32,
) -> Option<T> {
    if offset == USUAL {
        // SAFETY: the format file puts the field at this offset of the tracepoint record,
        // which the verifier allows reading directly (a constant offset into the context).
        Some(unsafe { *(ctx.as_ptr() as *const u8).add(USUAL as usize).cast::<T>() })
    } else {
        field::<T>(ctx, offset)
    }
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

/// A `comm` field: a `__data_loc char[]` on newer kernels, a `char[16]` on older ones.
#[inline(always)]
pub(crate) fn comm(ctx: &TracePointContext, offset: u32, data_loc: bool) -> [u8; TASK_COMM_LEN] {
    let mut comm = [0u8; TASK_COMM_LEN];
    let kind = if data_loc {
        string_kind::DATA_LOC
    } else {
        string_kind::ARRAY
    };
    string(ctx, offset, kind, &mut comm);
    comm
}

/// Reads the string field at `offset`, stored as `kind` says (a `string_kind` value), into
/// `dst`: zeroed first, then the string, NUL-terminated, truncated to fit. Left zeroed if the
/// field is unknown or unreadable.
#[inline(always)]
pub(crate) fn string<const N: usize>(
    ctx: &TracePointContext,
    offset: u32,
    kind: u32,
    dst: &mut [u8; N],
) {
    *dst = [0; N];
    if offset == UNKNOWN {
        return;
    }
    let record = ctx.as_ptr() as *const u8;
    let src = match kind {
        string_kind::POINTER => match field::<*const u8>(ctx, offset) {
            Some(pointer) => pointer,
            None => return,
        },
        // The word holds the string's offset in the record in its low 16 bits.
        string_kind::DATA_LOC => match field::<u32>(ctx, offset) {
            Some(loc) => record.wrapping_add((loc & 0xffff) as usize),
            None => return,
        },
        _ => record.wrapping_add(offset as usize),
    };
    // SAFETY: the helper checks the source address and never writes past `dst`.
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, dst) };
}
