//! Kernel oops (BUG, fatal fault) and WARN, from fentry on the kernel's common entry points:
//! `oops_enter()` (every architecture's die path calls it) and `__warn()` (every WARN ends
//! there, with the caller address). Where the kernel refuses fentry the agent watches the
//! kernel's own counters instead; these programs are then never loaded.

use aya_ebpf::{
    EbpfContext, helpers::bpf_probe_read_kernel, macros::fentry, programs::FEntryContext,
};
use npd_common::{
    Hook, RecordKind,
    counters::{Counter, Detector},
    oops::{KERNEL_PROBLEM_VERSION, KernelProblem},
};

use crate::{
    config::config,
    emit::{self, Subject, count},
    ratelimit,
    stack::capture_current_stack,
};

#[fentry(function = "oops_enter")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn oops_fentry(ctx: FEntryContext) -> u32 {
    // An oops is rare and grave: never rate-limited.
    report(&ctx, RecordKind::KernelOops, 0, 0);
    0
}

/// `__warn(const char *file, int line, void *caller, unsigned taint, struct pt_regs *regs,
/// struct warn_args *args)`.
#[fentry(function = "__warn")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn warn_fentry(ctx: FEntryContext) -> u32 {
    count(Detector::Oops, Counter::Hits);
    if !ratelimit::allow(Detector::Oops) {
        return 0;
    }
    let caller: u64 = ctx.arg(2);
    let taint_flag: u32 = ctx.arg(3);
    // __warn adds its taint flag on the way out; report the mask as it will be.
    let added = if taint_flag < 64 {
        1u64 << taint_flag
    } else {
        0
    };
    report(&ctx, RecordKind::KernelWarning, caller, added);
    0
}

#[inline(always)]
fn report<C: EbpfContext>(ctx: &C, kind: RecordKind, caller: u64, added_taint: u64) {
    if kind == RecordKind::KernelOops {
        count(Detector::Oops, Counter::Hits);
    }
    emit::record::<KernelProblem>(
        Detector::Oops,
        kind,
        KERNEL_PROBLEM_VERSION,
        Hook::Fentry,
        Subject::current(),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record| unsafe {
            (*record).caller = caller;
            (*record).taint = current_taint(added_taint);
            (*record)._pad = 0;
            (*record).stack_len = capture_current_stack(ctx, &mut (*record).stack);
        },
    );
}

/// The kernel's taint mask with `added` set, `u64::MAX` if unknown.
#[inline(always)]
fn current_taint(added: u64) -> u64 {
    let tainted_mask = config!(tainted_mask_addr);
    if tainted_mask == 0 {
        u64::MAX
    } else {
        // SAFETY: the address of `tainted_mask` from /proc/kallsyms; the helper checks it.
        match unsafe { bpf_probe_read_kernel(tainted_mask as *const u64) } {
            Ok(mask) => mask | added,
            Err(_) => u64::MAX,
        }
    }
}
