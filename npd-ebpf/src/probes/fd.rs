//! fd exhaustion. Preferred: one fexit program on each fd-creating syscall's entry function
//! (`__x64_sys_openat`, ...; the agent picks the list), so only those syscalls pay and every
//! failure is seen once, whatever the kernel inlined below them. Where the kernel refuses
//! fexit: one program on the `syscalls:sys_exit_*` tracepoint of the same syscalls; Linux
//! then sends every syscall of every task through its slow path, which the benchmarks
//! measure. Only EMFILE and ENFILE go further; the rest return after one compare.
//!
//! Rate limit per process (`ratelimit::per_key`): the first failure is reported at once, then
//! at most one record per `fd_rate_limit_ns` carrying how many were folded into it.
//! `FdRateState::failures` counts every failure, so the agent can account for the tail of a
//! storm that stopped between records; `reported` advances only when a record was reserved,
//! so failures lost to a full ring buffer are accounted too.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{fexit, map, tracepoint},
    maps::LruHashMap,
    programs::{FExitContext, TracePointContext},
};
use npd_common::{
    Hook, RecordKind,
    counters::Detector,
    fd::{
        EMFILE, ENFILE, FD_EXHAUSTED_VERSION, FD_FEXIT_SLOTS, FD_RATE_LIMIT_ENTRIES, FdExhausted,
        FdRateState,
    },
};

use crate::{
    config::config,
    emit::{self, Subject},
    ratelimit::{self, Tally},
    task,
    tracepoint::hot_field,
};

#[map]
static FD_RATE_LIMIT: LruHashMap<u32, FdRateState> =
    LruHashMap::with_max_entries(FD_RATE_LIMIT_ENTRIES, 0);

/// Where `ret` sits in every `sys_exit_*` record since 2.6.33; the format file is still what
/// decides, this only lets the common case use a direct load instead of a helper call.
const USUAL_RET_OFFSET: u32 = 16;

#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros pass ctx by value"
)]
fn fd_sys_exit(ctx: TracePointContext) -> u32 {
    let Some(ret) = hot_field::<i64, USUAL_RET_OFFSET>(&ctx, config!(tracepoints.sys_exit_ret))
    else {
        return 0;
    };
    if ret != -i64::from(EMFILE) && ret != -i64::from(ENFILE) {
        return 0;
    }
    // SAFETY: the offset comes from the format file; the helper checks the read.
    let syscall_nr =
        unsafe { ctx.read_at::<i32>(config!(tracepoints.sys_exit_nr) as usize) }.unwrap_or(-1);
    on_failure(-(ret as i32), syscall_nr, Hook::Tracepoint);
    0
}

/// The syscall number of each fexit slot, written by the agent before loading (-1: unused).
#[unsafe(no_mangle)]
static FD_FEXIT_SYSCALLS: [i32; FD_FEXIT_SLOTS] = [-1; FD_FEXIT_SLOTS];

/// `long __x64_sys_NAME(const struct pt_regs *regs)`: the return value is argument 1.
#[inline(always)]
fn on_syscall_fexit(ctx: &FExitContext, slot: usize) {
    let ret: i64 = ctx.arg(1);
    if ret == -i64::from(EMFILE) || ret == -i64::from(ENFILE) {
        let syscall_nr = crate::config::read_volatile(&raw const FD_FEXIT_SYSCALLS[slot]);
        on_failure(-(ret as i32), syscall_nr, Hook::Fexit);
    }
}

/// One program per slot: a tracing program is verified for, and attached to, one function.
macro_rules! fd_fexit_slots {
    ($($slot:literal => $name:ident),* $(,)?) => {$(
        #[fexit]
        fn $name(ctx: FExitContext) -> i32 {
            on_syscall_fexit(&ctx, $slot);
            0
        }
    )*};
}

fd_fexit_slots! {
    0 => fd_fexit_0, 1 => fd_fexit_1, 2 => fd_fexit_2, 3 => fd_fexit_3, 4 => fd_fexit_4,
    5 => fd_fexit_5, 6 => fd_fexit_6, 7 => fd_fexit_7, 8 => fd_fexit_8, 9 => fd_fexit_9,
    10 => fd_fexit_10, 11 => fd_fexit_11, 12 => fd_fexit_12, 13 => fd_fexit_13,
    14 => fd_fexit_14, 15 => fd_fexit_15, 16 => fd_fexit_16, 17 => fd_fexit_17,
    18 => fd_fexit_18, 19 => fd_fexit_19, 20 => fd_fexit_20, 21 => fd_fexit_21,
    22 => fd_fexit_22, 23 => fd_fexit_23, 24 => fd_fexit_24, 25 => fd_fexit_25,
    26 => fd_fexit_26, 27 => fd_fexit_27, 28 => fd_fexit_28, 29 => fd_fexit_29,
    30 => fd_fexit_30, 31 => fd_fexit_31, 32 => fd_fexit_32, 33 => fd_fexit_33,
    34 => fd_fexit_34, 35 => fd_fexit_35, 36 => fd_fexit_36, 37 => fd_fexit_37,
    38 => fd_fexit_38, 39 => fd_fexit_39, 40 => fd_fexit_40, 41 => fd_fexit_41,
    42 => fd_fexit_42, 43 => fd_fexit_43, 44 => fd_fexit_44, 45 => fd_fexit_45,
    46 => fd_fexit_46, 47 => fd_fexit_47,
}

#[inline(always)]
fn on_failure(errno: i32, syscall_nr: i32, hook: Hook) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    ratelimit::per_key(
        Detector::Fd,
        &FD_RATE_LIMIT,
        &tgid,
        config!(fd_rate_limit_ns),
        || FdRateState {
            first_failure_ns: 0,
            last_record_ns: 0,
            failures: 0,
            reported: 0,
            last_errno: errno,
            last_syscall_nr: syscall_nr,
            last_tid: tid,
            _pad: 0,
            cgroup_id: task::current_cgroup_id(),
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        },
        // SAFETY: a pointer into the map value (see `ratelimit::per_key`); these fields are
        // last-writer-wins hints.
        |state| unsafe {
            (*state).last_errno = errno;
            (*state).last_syscall_nr = syscall_nr;
            (*state).last_tid = tid;
        },
        |tally| emit(errno, syscall_nr, hook, &tally),
    );
}

#[inline(always)]
fn emit(errno: i32, syscall_nr: i32, hook: Hook, tally: &Tally) -> bool {
    emit::record::<FdExhausted>(
        Detector::Fd,
        RecordKind::FdExhausted,
        FD_EXHAUSTED_VERSION,
        hook,
        Subject::current(),
        |record| {
            let current = task::current_task();
            let signal = task::read_ptr(current, config!(offsets.task_signal));
            let nofile_limit =
                task::read::<u64>(signal, config!(offsets.signal_nofile_cur)).unwrap_or(u64::MAX);
            // Dead code where the agent turned the walk off: the verifier never sees it.
            let (depth, whole) = if config!(cgroup_walk) != 0 {
                // SAFETY: `record` points into the reserved entry (see `emit::record`).
                task::cgroup_names(
                    task::cgroup_kernfs_node(current),
                    unsafe { &mut (*record).cgroup.names },
                    unsafe { &mut (*record).cgroup.ids },
                )
            } else {
                (0, false)
            };
            // SAFETY: `record` points into the reserved entry (see `emit::record`).
            unsafe {
                (*record).errno = errno;
                (*record).syscall_nr = syscall_nr;
                (*record).suppressed = tally.suppressed;
                (*record).failures_total = tally.failures_total;
                (*record).first_failure_ns = tally.first_failure_ns;
                (*record).nofile_limit = nofile_limit;
                (*record).cgroup.depth = depth;
                (*record).cgroup.whole = u32::from(whole);
            }
        },
    )
}
