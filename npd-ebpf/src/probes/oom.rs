//! OOM kills: the victim the OOM killer chose, with its memory and its cgroup read from the
//! victim task in the kernel at that moment (afterwards the reaper races any reader of /proc),
//! and the task whose allocation triggered it, with its stack (which tells a memory-cgroup OOM
//! from a system-wide one).
//!
//! Hooks, in order of preference (the agent picks one from BTF and what the kernel allows):
//! - tp_btf `mark_victim` on kernels whose tracepoint passes the `task_struct *` (6.5+);
//! - fentry `mark_oom_victim(struct task_struct *)` where fentry is allowed (older kernels,
//!   whose tracepoint passes only a pid);
//! - the classic `oom:mark_victim` tracepoint: the fields its format file has (only the pid
//!   before 6.5); the agent then reads the victim's cgroup from /proc, best effort.

use aya_ebpf::{
    EbpfContext,
    bindings::task_struct,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{btf_tracepoint, fentry, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, TracePointContext},
};
use npd_common::{
    Hook, RecordKind,
    config::COMM_DATA_LOC_OOM,
    counters::{Counter, Detector},
    oom::{CGROUP_PATH_DEPTH, OOM_KILL_VERSION, OomKill, flags},
};

use crate::{
    config::config,
    emit::{self, Subject, count},
    stack::capture_current_stack,
    task,
    tracepoint::{field, thread_subject},
};

#[btf_tracepoint(function = "mark_victim")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn oom_btf(ctx: BtfTracePointContext) -> i32 {
    let victim: *mut task_struct = ctx.arg(0);
    let uid: u32 = ctx.arg(1);
    from_task(&ctx, victim as *const u8, Hook::BtfTracepoint, Some(uid));
    0
}

#[fentry(function = "mark_oom_victim")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn oom_fentry(ctx: FEntryContext) -> u32 {
    let victim: *mut task_struct = ctx.arg(0);
    from_task(&ctx, victim as *const u8, Hook::Fentry, None);
    0
}

/// What a hook could learn about the victim; `None` where it could not.
#[derive(Clone, Copy)]
struct VictimFacts {
    /// total_vm, anon, file and shmem RSS, in KiB.
    memory_kb: Option<[u64; 4]>,
    pgtables_kb: u64,
    uid: Option<u32>,
    oom_score_adj: Option<i16>,
}

/// Writes the facts into the record and returns the validity flags.
#[inline(always)]
fn write_facts(record: *mut OomKill, facts: VictimFacts) -> u16 {
    let mut valid = 0;
    let [total_vm, anon, file, shmem] = facts.memory_kb.unwrap_or([0; 4]);
    if facts.memory_kb.is_some() {
        valid |= flags::MEMORY;
    }
    if facts.uid.is_some() {
        valid |= flags::UID;
    }
    if facts.oom_score_adj.is_some() {
        valid |= flags::OOM_SCORE_ADJ;
    }
    // SAFETY: `record` points into a reserved ring-buffer entry (see callers).
    unsafe {
        (*record).total_vm_kb = total_vm;
        (*record).anon_rss_kb = anon;
        (*record).file_rss_kb = file;
        (*record).shmem_rss_kb = shmem;
        (*record).pgtables_kb = if facts.memory_kb.is_some() {
            facts.pgtables_kb
        } else {
            0
        };
        (*record).uid = facts.uid.unwrap_or(0);
        (*record).oom_score_adj = facts.oom_score_adj.unwrap_or(0);
    }
    valid
}

/// The validity flags and the trigger (current task) part, shared by every hook.
#[inline(always)]
fn finish<C: EbpfContext>(ctx: &C, record: *mut OomKill, valid: u16) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `record` points into a reserved ring-buffer entry (see callers).
    unsafe {
        (*record).flags = valid;
        (*record).trigger_pid = (pid_tgid >> 32) as u32;
        (*record).trigger_tid = pid_tgid as u32;
        (*record).trigger_cgroup_id = task::current_cgroup_id();
        (*record).trigger_comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*record)._pad = 0;
        (*record).trigger_stack_len = capture_current_stack(ctx, &mut (*record).trigger_stack);
    }
}

/// What the victim's task, mm, signal and cred say; `uid` from the hook if it has it.
#[inline(always)]
fn victim_facts(victim: *const u8, uid: Option<u32>) -> VictimFacts {
    let kib_per_page = config!(page_size) / 1024;
    let mm = task::read_ptr(victim, config!(offsets.task_mm));
    let total_vm = task::read::<u64>(mm, config!(offsets.mm_total_vm));
    let anon = task::read::<i64>(mm, config!(offsets.mm_rss_anon));
    let file = task::read::<i64>(mm, config!(offsets.mm_rss_file));
    let shmem = task::read::<i64>(mm, config!(offsets.mm_rss_shmem));
    let pgtables = task::read::<u64>(mm, config!(offsets.mm_pgtables_bytes));
    let signal = task::read_ptr(victim, config!(offsets.task_signal));
    let score_adj = task::read::<i16>(signal, config!(offsets.signal_oom_score_adj));
    let uid = uid.or_else(|| {
        let cred = task::read_ptr(victim, config!(offsets.task_real_cred));
        task::read::<u32>(cred, config!(offsets.cred_uid))
    });
    // Per-CPU counters can fold to slightly negative values; the kernel clamps the
    // same way.
    let kib = |pages: Option<i64>| pages.map(|p| if p < 0 { 0 } else { p as u64 * kib_per_page });
    let memory_kb = match (total_vm, kib(anon), kib(file), kib(shmem)) {
        (Some(total_vm), Some(anon), Some(file), Some(shmem)) => {
            Some([total_vm * kib_per_page, anon, file, shmem])
        }
        _ => None,
    };
    VictimFacts {
        memory_kb,
        pgtables_kb: pgtables.unwrap_or(0) / 1024,
        uid,
        oom_score_adj: score_adj,
    }
}

#[inline(always)]
fn from_task<C: EbpfContext>(ctx: &C, victim: *const u8, hook: Hook, uid: Option<u32>) {
    count(Detector::Oom, Counter::Hits);
    let facts = victim_facts(victim, uid);
    emit::record::<OomKill>(
        Detector::Oom,
        RecordKind::OomKill,
        OOM_KILL_VERSION,
        hook,
        Subject::task(victim),
        |record| {
            let mut valid = write_facts(record, facts);
            // SAFETY: `record` points into the reserved entry, its header already written
            // (see `emit::record`).
            if unsafe { (*record).header.cgroup_id } != 0 {
                valid |= flags::VICTIM_CGROUP;
            }
            // Dead code where the agent turned the walk off: the verifier never sees it.
            let (depth, whole, limit) = if config!(cgroup_walk) != 0 {
                let kernfs_node = task::cgroup_kernfs_node(victim);
                // SAFETY: as above.
                let (depth, whole) = task::cgroup_names(
                    kernfs_node,
                    unsafe { &mut (*record).victim_cgroup_names },
                    unsafe { &mut (*record).victim_cgroup_ids },
                );
                (depth, whole, task::memcg_limit(victim, CGROUP_PATH_DEPTH))
            } else {
                (0, false, None)
            };
            // SAFETY: as above.
            unsafe {
                (*record).victim_cgroup_depth = depth;
                (*record)._pad2 = 0;
                let (id, pages) = limit.unwrap_or((0, 0));
                (*record).limit_cgroup_id = id;
                (*record).limit_pages = pages;
            }
            if whole {
                valid |= flags::VICTIM_CGROUP_PATH;
            }
            if limit.is_some() {
                valid |= flags::LIMIT;
            }
            finish(ctx, record, valid);
        },
    );
}

#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn oom_tp(ctx: TracePointContext) -> u32 {
    count(Detector::Oom, Counter::Hits);
    let Some(pid) = field::<i32>(&ctx, config!(tracepoints.oom_pid)) else {
        return 0;
    };
    emit::record::<OomKill>(
        Detector::Oom,
        RecordKind::OomKill,
        OOM_KILL_VERSION,
        Hook::Tracepoint,
        thread_subject(&ctx, pid, config!(tracepoints.oom_comm), COMM_DATA_LOC_OOM),
        |record| {
            let valid = write_facts(record, tracepoint_facts(&ctx));
            // SAFETY: `record` points into the reserved entry (see `emit::record`).
            unsafe {
                (*record).victim_cgroup_depth = 0;
                (*record)._pad2 = 0;
                (*record).limit_cgroup_id = 0;
                (*record).limit_pages = 0;
            }
            finish(&ctx, record, valid);
        },
    );
    0
}

/// What the classic tracepoint's fields say (only the pid before 6.5).
#[inline(always)]
fn tracepoint_facts(ctx: &TracePointContext) -> VictimFacts {
    let total_vm = field::<u64>(ctx, config!(tracepoints.oom_total_vm));
    let anon = field::<u64>(ctx, config!(tracepoints.oom_anon_rss));
    let file = field::<u64>(ctx, config!(tracepoints.oom_file_rss));
    let shmem = field::<u64>(ctx, config!(tracepoints.oom_shmem_rss));
    let pgtables = field::<u64>(ctx, config!(tracepoints.oom_pgtables));
    let uid = field::<u32>(ctx, config!(tracepoints.oom_uid));
    let score_adj = field::<i16>(ctx, config!(tracepoints.oom_score_adj));
    // The format file already gives KiB.
    let memory_kb = match (total_vm, anon, file, shmem) {
        (Some(total_vm), Some(anon), Some(file), Some(shmem)) => {
            Some([total_vm, anon, file, shmem])
        }
        _ => None,
    };
    VictimFacts {
        memory_kb,
        pgtables_kb: pgtables.unwrap_or(0),
        uid,
        oom_score_adj: score_adj,
    }
}
