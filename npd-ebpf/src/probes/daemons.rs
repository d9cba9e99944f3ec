//! Node daemons starting and dying: `sched_process_exec` and `sched_process_exit`, both fired
//! in the context of the task concerned, so the current task's comm, pid and tgid are all the
//! programs read (no tracepoint field, no struct offset but `task_struct::exit_code`).
//!
//! Every exec and every thread exit on the node passes here: the filter on the watched names
//! (`DAEMONS_CONFIG`, written by the agent before loading, constants to the verifier) comes
//! first, and everything else returns after comparing its comm with at most 8 names.
//! Preferred: tp_btf; fallback: the classic tracepoints (same code, no field read).

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{btf_tracepoint, map, tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, TracePointContext},
};
use npd_common::{
    Hook, RecordKind, TASK_COMM_LEN,
    counters::{Counter, Detector},
    daemons::{
        DAEMON_EXIT_VERSION, DAEMON_START_VERSION, DaemonExit, DaemonStart, DaemonStartState,
        DaemonsConfig, MAX_WATCHED, STARTS_ENTRIES,
    },
};

use crate::{
    config::read_volatile,
    emit::{self, Subject, count},
    ratelimit::{self, Tally},
    task,
};

emit::records!(DaemonStart, DaemonExit);
ratelimit::windows!(DaemonStartState);

#[unsafe(no_mangle)]
static DAEMONS_CONFIG: DaemonsConfig = DaemonsConfig::new();

#[map]
static DAEMON_STARTS: LruHashMap<[u8; TASK_COMM_LEN], DaemonStartState> =
    LruHashMap::with_max_entries(STARTS_ENTRIES, 0);

/// The current task's comm if it is a watched name.
#[inline(always)]
fn watched_comm() -> Option<[u8; TASK_COMM_LEN]> {
    let comm = bpf_get_current_comm().ok()?;
    let key = words(&comm);
    let count = read_volatile(&raw const DAEMONS_CONFIG.count) as usize;
    let mut i = 0;
    while i < MAX_WATCHED && i < count {
        if words(&read_volatile(&raw const DAEMONS_CONFIG.comms[i])) == key {
            return Some(comm);
        }
        i += 1;
    }
    None
}

/// A comm as two words: two compares instead of a byte loop or a memcmp call.
#[inline(always)]
fn words(comm: &[u8; TASK_COMM_LEN]) -> (u64, u64) {
    let ptr = comm.as_ptr().cast::<u64>();
    // SAFETY: 16 bytes are two u64s; unaligned reads allow any alignment of the array.
    unsafe { (ptr.read_unaligned(), ptr.add(1).read_unaligned()) }
}

#[btf_tracepoint(function = "sched_process_exec")]
fn daemons_exec_btf(_ctx: BtfTracePointContext) -> i32 {
    on_exec(Hook::BtfTracepoint);
    0
}

#[tracepoint]
fn daemons_exec_tp(_ctx: TracePointContext) -> u32 {
    on_exec(Hook::Tracepoint);
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
fn daemons_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    on_exit(Hook::BtfTracepoint);
    0
}

#[tracepoint]
fn daemons_exit_tp(_ctx: TracePointContext) -> u32 {
    on_exit(Hook::Tracepoint);
    0
}

/// A watched name started: counted per name, one record per interval (an exec storm).
#[inline(always)]
fn on_exec(hook: Hook) {
    let Some(comm) = watched_comm() else {
        return;
    };
    ratelimit::per_key(
        Detector::Daemons,
        &DAEMON_STARTS,
        &comm,
        read_volatile(&raw const DAEMONS_CONFIG.start_interval_ns),
        || DaemonStartState {
            first_failure_ns: 0,
            last_record_ns: 0,
            failures: 0,
            reported: 0,
        },
        |_| {},
        |tally| emit_start(hook, &tally),
    );
}

#[inline(always)]
fn emit_start(hook: Hook, tally: &Tally) -> bool {
    emit::record::<DaemonStart>(
        Detector::Daemons,
        RecordKind::DaemonStart,
        DAEMON_START_VERSION,
        hook,
        Subject::current(),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record| unsafe {
            (*record).suppressed = tally.suppressed;
            (*record).starts_total = tally.failures_total;
            (*record).first_start_ns = tally.first_failure_ns;
        },
    )
}

/// A watched process ended: only its thread-group leader's exit counts (a daemon's worker
/// threads come and go). Rare unless something loops: the per-detector token bucket.
#[inline(always)]
fn on_exit(hook: Hook) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 != pid_tgid & 0xffff_ffff || watched_comm().is_none() {
        return;
    }
    count(Detector::Daemons, Counter::Hits);
    if !ratelimit::allow(Detector::Daemons) {
        return;
    }
    let exit_code = task::read::<i32>(
        task::current_task(),
        read_volatile(&raw const DAEMONS_CONFIG.task_exit_code),
    )
    .unwrap_or(-1);
    emit::record::<DaemonExit>(
        Detector::Daemons,
        RecordKind::DaemonExit,
        DAEMON_EXIT_VERSION,
        hook,
        Subject::current(),
        // SAFETY: `record` points into the reserved entry (see `emit::record`).
        |record| unsafe {
            (*record).exit_code = exit_code;
            (*record)._pad = 0;
        },
    );
}
