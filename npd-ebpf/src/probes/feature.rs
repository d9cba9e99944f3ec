//! Programs that are only ever loaded, never attached: `npd-agent check` loads them to learn
//! whether this kernel accepts tp_btf and fentry programs at all.

use aya_ebpf::{
    macros::{btf_tracepoint, fentry},
    programs::{BtfTracePointContext, FEntryContext},
};

#[btf_tracepoint(function = "sched_switch")]
fn feature_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[fentry(function = "vfs_read")]
fn feature_fentry(_ctx: FEntryContext) -> u32 {
    0
}
