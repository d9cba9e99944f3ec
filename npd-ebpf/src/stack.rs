//! Kernel stacks into records.

use aya_ebpf::{
    EbpfContext,
    bindings::task_struct,
    helpers::{bpf_get_stack, bpf_get_task_stack},
};
use npd_common::MAX_STACK_DEPTH;

const BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;

/// Clears `stack`, fills it with `task`'s kernel stack and returns the frame count.
/// `task` must be a BTF task pointer (a tp_btf or fentry argument).
#[inline(always)]
pub(crate) fn capture_task_stack(
    task: *mut task_struct,
    stack: &mut [u64; MAX_STACK_DEPTH],
) -> u32 {
    *stack = [0; MAX_STACK_DEPTH];
    // SAFETY: `stack` is writable for BYTES bytes; the helper validates `task`.
    let bytes = unsafe { bpf_get_task_stack(task, stack.as_mut_ptr().cast(), BYTES, 0) };
    frames(bytes)
}

/// Clears `stack`, fills it with the current task's kernel stack and returns the frame count.
#[inline(always)]
pub(crate) fn capture_current_stack<C: EbpfContext>(
    ctx: &C,
    stack: &mut [u64; MAX_STACK_DEPTH],
) -> u32 {
    *stack = [0; MAX_STACK_DEPTH];
    // SAFETY: `stack` is writable for BYTES bytes; flags 0 asks for the kernel stack.
    let bytes = unsafe { bpf_get_stack(ctx.as_ptr(), stack.as_mut_ptr().cast(), BYTES, 0) };
    frames(bytes)
}

#[inline(always)]
fn frames(bytes: i64) -> u32 {
    if bytes > 0 { bytes as u32 / 8 } else { 0 }
}
