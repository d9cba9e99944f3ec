//! The engine's behaviour as tables: timelines of inputs, with the Events each step must emit
//! and the conditions it must leave. Here the fixtures every area shares (time, an event of
//! each kind, the timeline runner and its checks); beside it one file per area.

mod catalog;
mod deadlock;
mod events;
mod fd_pressure;
mod messages;
mod oops;
mod restore;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{subject::fixtures::*, *};
use crate::{
    detectors::{
        self,
        fd::{Errno, FD_EXHAUSTED, FD_PRESSURE, FdExhausted},
        hung_task::{HungTask, HungTaskRecovered, KERNEL_DEADLOCK, TASK_HUNG, TASK_HUNG_RECOVERED},
        oom::{OOM_KILLING, OomKill, OomScope},
        oops::{
            KERNEL_OOPS, KERNEL_OOPS_CONDITION, KERNEL_WARNING, KernelOops, KernelProblem,
            KernelWarning,
        },
    },
    event::{Attribution, Event, Finding, Source, Task},
};

use ConditionStatus::{False, True};

const NS: u64 = 1_000_000_000;
/// CLOCK_MONOTONIC at t = 0 of every timeline.
const BOOT_NS: u64 = 1_000 * NS;

/// Wall time of t seconds into a timeline (t = 0 is 2027-01-15T08:00:00Z).
fn wall(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn mono(secs: u64) -> u64 {
    BOOT_NS + secs * NS
}

fn at(secs: u64) -> Timestamp {
    Timestamp::new(mono(secs), wall(secs))
}

fn config() -> EngineConfig {
    EngineConfig::default()
}

fn engine_with(config: EngineConfig) -> Engine {
    Engine::new(config, detectors::catalog(), at(0)).expect("valid config")
}

fn task(pid: u32, comm: &str) -> Task {
    Task {
        pid,
        tid: pid,
        comm: comm.to_owned(),
        cgroup_id: 7,
    }
}

fn event(secs: u64, task: Task, attribution: Option<Attribution>, detail: impl Finding) -> Event {
    let mut event = Event::new(mono(secs), task, Source::BtfTracepoint, detail);
    event.attribution = attribution;
    event
}

const STACK: [&str; 4] = [
    "percpu_rwsem_wait+0x11d/0x150",
    "__sb_start_write+0x56/0x70",
    "ext4_buffered_write_iter+0x3a/0x160",
    "vfs_write+0x2b5/0x470",
];

/// A khungtaskd report about `pid`, blocked since `since` (first report when `since == secs`).
fn hung(secs: u64, pid: u32, since: u64, attribution: Option<Attribution>) -> Event {
    event(
        secs,
        task(pid, "mysqld"),
        attribution,
        HungTask {
            stack: STACK.iter().map(|f| (*f).to_owned()).collect(),
            stack_source: "kernel",
            first_seen: secs == since,
            repeat: 1 + u32::try_from((secs - since) / 120).unwrap(),
            first_seen_ns: mono(since),
        },
    )
}

fn recovered(secs: u64, pid: u32) -> Event {
    event(
        secs,
        task(pid, "mysqld"),
        None,
        HungTaskRecovered {
            how: "running",
            hung_for_ms: 130_000,
            reports: 2,
        },
    )
}

fn oom(secs: u64, pid: u32, attribution: Option<Attribution>) -> Event {
    event(
        secs,
        task(pid, "mysqld"),
        attribution,
        OomKill {
            total_vm_kb: Some(2_000_000),
            anon_rss_kb: Some(1_000_000),
            file_rss_kb: Some(2_000),
            shmem_rss_kb: Some(0),
            pgtables_kb: Some(2_100),
            uid: Some(999),
            oom_score_adj: Some(999),
            scope: OomScope::Memcg,
            memcg: Some("/kubepods/burstable/podX".to_owned()),
            cgroup_source: "kernel",
            trigger: task(pid, "mysqld"),
            trigger_stack: Vec::new(),
            kernel_cgroup_path: None,
            kernel_memcg: None,
            memcg_limit_kb: None,
        },
    )
}

fn kernel_problem(caller: Option<&str>, since_boot: bool) -> KernelProblem {
    KernelProblem {
        caller: caller.map(str::to_owned),
        taint: Some(128),
        taint_flags: Some("D".to_owned()),
        stack: Vec::new(),
        counter: None,
        count: None,
        occurrences: 1,
        since_boot,
    }
}

fn oops(secs: u64, since_boot: bool) -> Event {
    event(
        secs,
        task(4242, "insmod"),
        None,
        KernelOops(kernel_problem(
            Some("do_the_bug+0x15/0x20 [crasher]"),
            since_boot,
        )),
    )
}

fn warning(secs: u64, caller: &str) -> Event {
    let mut problem = kernel_problem(Some(caller), false);
    problem.taint_flags = Some("W".to_owned());
    event(secs, task(17, "kworker/0:1"), None, KernelWarning(problem))
}

fn fd(secs: u64, pid: u32, errno: Errno, suppressed: u64, flushed: bool) -> Event {
    event(
        secs,
        task(pid, "nginx"),
        None,
        FdExhausted {
            errno,
            syscall: "openat".to_owned(),
            syscall_nr: 257,
            suppressed,
            failures_total: suppressed + 1,
            nofile_limit: Some(1024),
            flushed,
            kernel_cgroup_path: None,
        },
    )
}

fn enfile(secs: u64) -> Event {
    fd(secs, 300, Errno::Enfile, 0, false)
}

#[derive(Debug)]
enum Input {
    Event(Box<Event>),
    /// File table usage: allocated of 1000.
    Sample(u64),
    Tick,
}

impl Input {
    fn ev(event: Event) -> Self {
        Self::Event(Box::new(event))
    }
}

/// What one step must leave behind.
#[derive(Debug)]
enum Check {
    /// Status, reason and the time of the last transition (seconds into the timeline).
    Condition(ConditionType, ConditionStatus, &'static str, u64),
    MessageHas(ConditionType, &'static str),
}

/// (seconds, input, Events it must emit as (reason, count, series update), checks).
type Step = (u64, Input, &'static [(EventReason, u64, bool)], Vec<Check>);

fn run(name: &str, engine: &mut Engine, steps: Vec<Step>) {
    for (secs, input, expected_events, checks) in steps {
        let now = at(secs);
        let emitted = match &input {
            Input::Event(event) => engine.observe(event, now),
            Input::Sample(allocated) => engine.sample_file_table(
                FileTableSample {
                    allocated: *allocated,
                    max: 1000,
                },
                now,
            ),
            Input::Tick => engine.tick(now),
        };
        let emitted: Vec<_> = emitted
            .iter()
            .map(|e| (e.reason, e.count, e.series_update))
            .collect();
        assert_eq!(emitted, expected_events, "{name}: events at t={secs}s");
        for check in checks {
            match check {
                Check::Condition(ty, status, reason, since) => {
                    let condition = engine.condition(ty);
                    assert_eq!(
                        (condition.status, condition.reason.as_str()),
                        (status, reason),
                        "{name}: {ty} at t={secs}s ({})",
                        condition.message
                    );
                    assert_eq!(
                        condition.last_transition_time,
                        wall(since),
                        "{name}: {ty} transition time at t={secs}s"
                    );
                }
                Check::MessageHas(ty, part) => {
                    let message = &engine.condition(ty).message;
                    assert!(
                        message.contains(part),
                        "{name}: {ty} message at t={secs}s is {message:?}, lacks {part:?}"
                    );
                }
            }
        }
    }
}

/// A condition's status and transition time, and its reason: `problem` while True, `healthy`
/// while False.
fn condition_is(
    ty: ConditionType,
    status: ConditionStatus,
    since: u64,
    [problem, healthy]: [&'static str; 2],
) -> Check {
    let reason = if status == True { problem } else { healthy };
    Check::Condition(ty, status, reason, since)
}

fn deadlock(status: ConditionStatus, since: u64) -> Check {
    condition_is(
        KERNEL_DEADLOCK,
        status,
        since,
        ["TaskHung", "KernelHasNoDeadlock"],
    )
}

fn fd_pressure(status: ConditionStatus, since: u64) -> Check {
    condition_is(
        FD_PRESSURE,
        status,
        since,
        ["FDUnderPressure", "NoFDPressure"],
    )
}

const NONE: &[(EventReason, u64, bool)] = &[];
const HUNG: &[(EventReason, u64, bool)] = &[(TASK_HUNG, 1, false)];
const RECOVERED: &[(EventReason, u64, bool)] = &[(TASK_HUNG_RECOVERED, 1, false)];
